//! The syslog sink: RFC 5424 messages, framed by octet counting (RFC 6587)
//! over TCP, or over TLS as RFC 5425 describes.
//!
//! ```text
//! <PRI>1 TIMESTAMP HOST pgward PROCID KIND [pgward@32473 id="…" hash="…"] BOM{…json…}
//! ```
//!
//! PRI is the facility (`authpriv` unless configured) times 8 plus the
//! severity: warning for alerts, notice for refused statements and failed
//! logins, informational for everything else. MSGID is the event kind, so
//! a SIEM can route on it without parsing the JSON.
//!
//! Syslog over TCP has no acknowledgements. Before each batch the sink
//! checks, without blocking, whether the receiver has closed the
//! connection (and reconnects if so), and after any failed write it
//! reconnects and resends from the cursor. What it cannot know is whether
//! a receiver that crashed hard processed the bytes its kernel had
//! already accepted: the last batch in flight can be lost then, or, after
//! a failed write, partly sent twice. Each message carries the event id
//! and chain hash for receivers that need to de-duplicate or check.
//! UDP is deliberately not offered: it loses messages silently.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use super::config::host_of;
use super::roots::trusted_roots;
use super::{Deliver, Facility, Record, SinkError, SyslogConfig, Transport};
use crate::audit::event::format_time;

const BOM: &[u8] = b"\xEF\xBB\xBF";

pub(super) struct SyslogSink {
    address: String,
    timeout: Duration,
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    header: Header,
    conn: Option<Conn>,
}

/// What every message of this pgward has in common.
struct Header {
    facility: Facility,
    enterprise_id: u32,
    hostname: String,
    procid: String,
}

enum Conn {
    Tcp(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl SyslogSink {
    pub fn new(cfg: &SyslogConfig, instance: &str) -> Result<SyslogSink, SinkError> {
        let tls = match cfg.transport {
            Transport::Tcp => None,
            Transport::Tls => {
                let mut roots = RootCertStore::empty();
                let (added, _) =
                    roots.add_parsable_certificates(trusted_roots(cfg.ca_file.as_deref())?);
                if added == 0 {
                    return Err(SinkError::Setup("no usable CA certificate".into()));
                }
                let config = ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
                .with_root_certificates(roots)
                .with_no_client_auth();
                let name = cfg
                    .server_name
                    .clone()
                    .unwrap_or_else(|| host_of(&cfg.address));
                let name = ServerName::try_from(name.clone()).map_err(|_| {
                    SinkError::Setup(format!("{name:?} is not a valid TLS server name"))
                })?;
                Some((Arc::new(config), name))
            }
        };
        Ok(SyslogSink {
            address: cfg.address.clone(),
            timeout: cfg.timeout,
            tls,
            header: Header {
                facility: cfg.facility,
                enterprise_id: cfg.enterprise_id,
                hostname: instance.to_string(),
                procid: std::process::id().to_string(),
            },
            conn: None,
        })
    }

    fn connect(&self) -> Result<Conn, SinkError> {
        let mut last = None;
        let mut tcp = None;
        for addr in self.address.to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, self.timeout) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let tcp = match (tcp, last) {
            (Some(s), _) => s,
            (None, Some(e)) => return Err(e.into()),
            (None, None) => {
                return Err(SinkError::Setup(format!(
                    "{} resolves to no address",
                    self.address
                )))
            }
        };
        tcp.set_nodelay(true)?;
        tcp.set_write_timeout(Some(self.timeout))?;
        tcp.set_read_timeout(Some(self.timeout))?;
        let Some((config, name)) = &self.tls else {
            return Ok(Conn::Tcp(tcp));
        };
        let conn = ClientConnection::new(Arc::clone(config), name.clone())?;
        let mut tls = StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(Conn::Tls(Box::new(tls)))
    }
}

impl Deliver for SyslogSink {
    fn deliver(&mut self, records: &[Record]) -> Result<(), SinkError> {
        let mut frames = Vec::new();
        for r in records {
            frame(&mut frames, &self.header.message(r));
        }
        if self.conn.as_mut().is_some_and(|c| !c.is_open()) {
            self.conn = None;
        }
        let conn = match &mut self.conn {
            Some(c) => c,
            None => self.conn.insert(self.connect()?),
        };
        if let Err(e) = conn.write_all(&frames).and_then(|()| conn.flush()) {
            self.conn = None;
            return Err(e.into());
        }
        Ok(())
    }
}

impl Conn {
    fn socket(&self) -> &TcpStream {
        match self {
            Conn::Tcp(s) => s,
            Conn::Tls(s) => &s.sock,
        }
    }

    /// Whether the receiver still has the connection open, found out
    /// without blocking (anything it sent is read and dropped).
    fn is_open(&mut self) -> bool {
        if self.socket().set_nonblocking(true).is_err() {
            return false;
        }
        let open = match self {
            Conn::Tcp(s) => drain(s),
            Conn::Tls(s) => drain_tls(s),
        };
        open && self.socket().set_nonblocking(false).is_ok()
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

/// Reads until the socket would block: `false` at end of stream or error.
fn drain(s: &mut impl Read) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return false,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}

/// [`drain`] through TLS: TLS 1.3 servers send session tickets after the
/// handshake, and a closing one sends close_notify before its FIN.
fn drain_tls(s: &mut StreamOwned<ClientConnection, TcpStream>) -> bool {
    loop {
        match s.conn.read_tls(&mut s.sock) {
            Ok(0) => return false,
            Ok(_) => match s.conn.process_new_packets() {
                Ok(state) if state.peer_has_closed() => return false,
                Ok(_) => {
                    let mut buf = [0u8; 1024];
                    loop {
                        match s.conn.reader().read(&mut buf) {
                            Ok(0) => return false,
                            Ok(_) => continue,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(_) => return false,
                        }
                    }
                }
                Err(_) => return false,
            },
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}

impl Header {
    /// One RFC 5424 message.
    fn message(&self, r: &Record) -> Vec<u8> {
        let pri = u16::from(self.facility.code()) * 8 + u16::from(severity(r));
        let mut m = format!(
            "<{pri}>1 {time} {host} pgward {procid} {msgid} [pgward@{eid} id=\"{id}\" hash=\"{hash}\"] ",
            time = format_time(r.time_us),
            host = header_field(&self.hostname, 255),
            procid = header_field(&self.procid, 128),
            msgid = header_field(&r.kind, 32),
            eid = self.enterprise_id,
            id = r.id,
            hash = sd_escape(&r.hash),
        )
        .into_bytes();
        m.extend_from_slice(BOM);
        m.extend_from_slice(&r.json);
        m
    }
}

/// RFC 5424 severities: 4 warning, 5 notice, 6 informational.
fn severity(r: &Record) -> u8 {
    #[derive(serde::Deserialize)]
    struct Facts {
        decision: Option<String>,
        outcome: Option<String>,
    }
    let facts = || serde_json::from_slice::<Facts>(&r.json).ok();
    match r.kind.as_str() {
        "alert" => 4,
        "statement" if facts().is_some_and(|f| f.decision.as_deref() == Some("denied")) => 5,
        "login" if facts().is_some_and(|f| f.outcome.as_deref().is_some_and(|o| o != "ok")) => 5,
        _ => 6,
    }
}

/// A header field: printable US-ASCII without spaces, at most `max`
/// characters, `-` (the NILVALUE) when empty.
fn header_field(s: &str, max: usize) -> String {
    let clean: String = s
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .take(max)
        .collect();
    if clean.is_empty() {
        "-".into()
    } else {
        clean
    }
}

/// Escapes an SD-PARAM value: `"`, `\` and `]` take a backslash.
fn sd_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// RFC 6587 octet counting: `MSG-LEN SP SYSLOG-MSG`.
fn frame(out: &mut Vec<u8>, message: &[u8]) {
    out.extend_from_slice(message.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(message);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn record(id: u64, kind: &str, body: &str) -> Record {
        Record {
            id,
            time_us: 1_700_000_000_000_001,
            kind: kind.into(),
            hash: "ab01".into(),
            json: body.as_bytes().to_vec(),
        }
    }

    fn header() -> Header {
        Header {
            facility: Facility::Authpriv,
            enterprise_id: 32473,
            hostname: "db proxy-1".into(),
            procid: "42".into(),
        }
    }

    #[test]
    fn formats_rfc5424_messages() {
        let r = record(
            7,
            "statement",
            r#"{"id":7,"kind":"statement","hash":"ab01"}"#,
        );
        let m = header().message(&r);
        let want = "<86>1 2023-11-14T22:13:20.000001Z db_proxy-1 pgward 42 statement \
                    [pgward@32473 id=\"7\" hash=\"ab01\"] \u{feff}{\"id\":7,\"kind\":\"statement\",\"hash\":\"ab01\"}";
        assert_eq!(String::from_utf8(m).unwrap(), want);
    }

    #[test]
    fn severity_follows_what_happened() {
        let pri = |kind: &str, body: &str| {
            let m = header().message(&record(1, kind, body));
            String::from_utf8(m).unwrap()[..5].to_string()
        };
        // authpriv (10) * 8 = 80, plus the severity.
        assert_eq!(pri("alert", "{}"), "<84>1");
        assert_eq!(pri("statement", r#"{"decision":"denied"}"#), "<85>1");
        assert_eq!(pri("statement", r#"{"decision":"allowed"}"#), "<86>1");
        assert_eq!(pri("login", r#"{"outcome":"bad_password"}"#), "<85>1");
        assert_eq!(pri("login", r#"{"outcome":"ok"}"#), "<86>1");
        assert_eq!(pri("session_end", r#"{"outcome":"idle"}"#), "<86>1");
        assert_eq!(pri("statement", "not json"), "<86>1");
    }

    #[test]
    fn escapes_sd_values_and_cleans_header_fields() {
        assert_eq!(sd_escape(r#"a"b\c]d"#), r#"a\"b\\c\]d"#);
        assert_eq!(header_field("", 32), "-");
        assert_eq!(header_field("häst x", 32), "h_st_x");
        assert_eq!(header_field(&"k".repeat(40), 32).len(), 32);
    }

    #[test]
    fn frames_by_octet_count() {
        let mut out = Vec::new();
        frame(&mut out, "héllo".as_bytes());
        frame(&mut out, b"x");
        assert_eq!(out, "6 héllo1 x".as_bytes());
    }

    /// Reads octet-counted frames until the peer closes.
    fn read_frames(mut r: impl Read) -> Vec<String> {
        let mut all = Vec::new();
        let _ = r.read_to_end(&mut all);
        let mut out = Vec::new();
        let mut rest = &all[..];
        while let Some(sp) = rest.iter().position(|&b| b == b' ') {
            let n: usize = std::str::from_utf8(&rest[..sp]).unwrap().parse().unwrap();
            out.push(String::from_utf8(rest[sp + 1..sp + 1 + n].to_vec()).unwrap());
            rest = &rest[sp + 1 + n..];
        }
        out
    }

    fn config(address: String, extra: &str) -> SyslogConfig {
        let mut cfg: SyslogConfig =
            serde_yaml::from_str(&format!("{{address: 'x:1'{extra}}}")).unwrap();
        cfg.address = address;
        cfg
    }

    #[test]
    fn reconnects_when_the_receiver_closed_the_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mut sink = SyslogSink::new(&config(addr, ""), "h").unwrap();
        sink.deliver(&[record(1, "login", "{}")]).unwrap();
        let (first, _) = listener.accept().unwrap();
        // The receiver reads what came and hangs up.
        first.shutdown(std::net::Shutdown::Write).unwrap();
        first
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let got = read_frames(&first);
        assert_eq!(got.len(), 1);
        drop(first);
        std::thread::sleep(Duration::from_millis(50));
        sink.deliver(&[record(2, "login", "{}")]).unwrap();
        listener.set_nonblocking(true).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        let second = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("the sink did not reconnect: {e}"),
            }
        };
        second.set_nonblocking(false).unwrap();
        drop(sink);
        let got = read_frames(second);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].contains("id=\"2\""), "{got:?}");
    }

    #[test]
    fn delivers_over_tls_verifying_the_receiver() {
        let dir = tempfile::tempdir().unwrap();
        crate::certs::write_ca_and_server(dir.path(), &["localhost"]).unwrap();
        let server = crate::net::tls::server_config(
            &dir.path().join("server.crt"),
            &dir.path().join("server.key"),
        )
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let receiver = std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            let conn = rustls::ServerConnection::new(server).unwrap();
            read_frames(rustls::StreamOwned::new(conn, tcp))
        });
        let ca = dir.path().join("ca.crt");
        let cfg = config(
            format!("localhost:{port}"),
            &format!(", transport: tls, ca_file: '{}'", ca.display()),
        );
        let mut sink = SyslogSink::new(&cfg, "h").unwrap();
        sink.deliver(&[record(1, "login", "{}"), record(2, "alert", "{}")])
            .unwrap();
        drop(sink);
        let got = receiver.join().unwrap();
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[1].starts_with("<84>1 ") && got[1].contains("id=\"2\""));

        // A receiver whose certificate the CA did not sign is refused.
        let other = tempfile::tempdir().unwrap();
        crate::certs::write_ca_and_server(other.path(), &["localhost"]).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = crate::net::tls::server_config(
            &dir.path().join("server.crt"),
            &dir.path().join("server.key"),
        )
        .unwrap();
        let impostor = std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            let conn = rustls::ServerConnection::new(server).unwrap();
            read_frames(rustls::StreamOwned::new(conn, tcp))
        });
        let cfg = config(
            format!("localhost:{port}"),
            &format!(
                ", transport: tls, ca_file: '{}'",
                other.path().join("ca.crt").display()
            ),
        );
        let mut sink = SyslogSink::new(&cfg, "h").unwrap();
        let err = sink.deliver(&[record(3, "login", "{}")]).unwrap_err();
        assert!(err.to_string().contains("certificate"), "{err}");
        drop(sink);
        assert!(impostor.join().unwrap().is_empty());
    }
}
