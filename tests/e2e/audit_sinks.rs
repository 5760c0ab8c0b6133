//! Audit sinks, end to end: a real `pgward serve` delivers its trail to a
//! syslog receiver that is not there yet, goes away and comes back, to a
//! rotating JSON-lines file, and (logins only) to a webhook that fails its
//! first request — and across all of that and a restart of pgward, every
//! stored event arrives exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use pgward::audit::store::{AuditStore, AuditStoreError};
use pgward::pgcluster::free_port;

use crate::harness::{eventually, Proxy, Setup, PASSWORD};
use crate::restricted::run_script;

/// (id, kind) of every event in the proxy's audit store.
fn stored(proxy: &Proxy) -> Vec<(u64, String)> {
    let store =
        AuditStore::open_read_only(&proxy.dir.path().join("audit.db")).expect("audit store");
    let mut out = Vec::new();
    store
        .scan(1, None, |e| -> Result<(), AuditStoreError> {
            out.push((e.id, e.kind));
            Ok(())
        })
        .expect("scan");
    out
}

/// How often each id arrived.
fn counts(ids: &[u64]) -> BTreeMap<u64, usize> {
    let mut c = BTreeMap::new();
    for id in ids {
        *c.entry(*id).or_insert(0) += 1;
    }
    c
}

/// Every id once, and nothing else.
fn assert_once(what: &str, got: &[u64], want: &[u64]) {
    let twice: Vec<_> = counts(got).into_iter().filter(|&(_, n)| n > 1).collect();
    assert!(
        twice.is_empty(),
        "{what}: ids delivered more than once: {twice:?}"
    );
    let mut sorted = got.to_vec();
    sorted.sort_unstable();
    assert_eq!(sorted, want, "{what}: not every stored event, or others");
}

/// An RFC 5425/6587 receiver: octet-counted frames over TCP. What it
/// received outlives it, so a restarted receiver adds to the same list.
struct SyslogReceiver {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl SyslogReceiver {
    fn start(port: u16, ids: Arc<Mutex<Vec<u64>>>) -> SyslogReceiver {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the syslog port");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = Arc::clone(&stop);
            move || {
                let mut conns: Vec<(TcpStream, Vec<u8>)> = Vec::new();
                loop {
                    // One last read after the stop, so nothing that
                    // arrived is dropped unread.
                    let stopping = stop.load(Ordering::SeqCst);
                    if let Ok((s, _)) = listener.accept() {
                        s.set_nonblocking(true).expect("nonblocking");
                        conns.push((s, Vec::new()));
                    }
                    conns.retain_mut(|(s, buf)| {
                        let mut chunk = [0u8; 16384];
                        loop {
                            match s.read(&mut chunk) {
                                Ok(0) => return false,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                                Err(_) => return false,
                            }
                        }
                        let mut got = ids.lock().expect("ids");
                        while let Some(message) = take_frame(buf) {
                            got.push(check_message(&message));
                        }
                        true
                    });
                    if stopping {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                // Dropping the listener and the connections closes them.
            }
        });
        SyslogReceiver { stop, thread }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("syslog receiver");
    }
}

/// One complete `LEN SP MSG` frame off the front of `buf`.
fn take_frame(buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let sp = buf.iter().position(|&b| b == b' ')?;
    let len: usize = std::str::from_utf8(&buf[..sp])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad frame length in {:?}", String::from_utf8_lossy(buf)));
    if buf.len() < sp + 1 + len {
        return None;
    }
    let message = buf[sp + 1..sp + 1 + len].to_vec();
    buf.drain(..sp + 1 + len);
    Some(message)
}

/// Checks one RFC 5424 message and returns its event id.
fn check_message(message: &[u8]) -> u64 {
    let bom = message
        .windows(3)
        .position(|w| w == b"\xEF\xBB\xBF")
        .expect("a BOM before the JSON");
    let header = std::str::from_utf8(&message[..bom]).expect("ascii header");
    let json: serde_json::Value =
        serde_json::from_slice(&message[bom + 3..]).expect("JSON after the BOM");
    let fields: Vec<&str> = header.splitn(7, ' ').collect();
    assert!(
        fields[0].starts_with('<') && fields[0].ends_with(">1"),
        "{header}"
    );
    assert_eq!(fields[3], "pgward", "{header}");
    assert_eq!(fields[5], json["kind"].as_str().expect("kind"), "{header}");
    let id = json["id"].as_u64().expect("id");
    let hash = json["hash"].as_str().expect("hash");
    assert_eq!(hash.len(), 64);
    assert_eq!(
        fields[6].trim_end(),
        format!("[pgward@32473 id=\"{id}\" hash=\"{hash}\"]"),
        "{header}"
    );
    id
}

/// A webhook receiver: answers the first request 500 and the rest 200,
/// and keeps the ids of the accepted ones.
struct WebhookReceiver {
    port: u16,
    accepted: Arc<Mutex<Vec<u64>>>,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl WebhookReceiver {
    fn start() -> WebhookReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        std::thread::spawn({
            let (accepted, requests, stop) = (
                Arc::clone(&accepted),
                Arc::clone(&requests),
                Arc::clone(&stop),
            );
            move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            let (accepted, requests) =
                                (Arc::clone(&accepted), Arc::clone(&requests));
                            std::thread::spawn(move || serve_http(s, &accepted, &requests));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            }
        });
        WebhookReceiver {
            port,
            accepted,
            requests,
            stop,
        }
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve_http(s: TcpStream, accepted: &Mutex<Vec<u64>>, requests: &AtomicUsize) {
    s.set_nonblocking(false).expect("blocking");
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let mut r = BufReader::new(s);
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" => break,
                Ok(_) => head.push_str(&line),
            }
        }
        assert!(head.starts_with("POST /in "), "{head}");
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .and_then(|v| v.trim().parse().ok())
            })
            .expect("content-length");
        let mut body = vec![0u8; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let status = if requests.fetch_add(1, Ordering::SeqCst) == 0 {
            500
        } else {
            let events: Vec<serde_json::Value> =
                serde_json::from_slice(&body).expect("a JSON array");
            let mut got = accepted.lock().expect("accepted");
            for e in events {
                assert_eq!(e["kind"], "login", "kinds: [login] only: {e}");
                got.push(e["id"].as_u64().expect("id"));
            }
            200
        };
        let answer = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
        if r.get_mut().write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// Ids in the file sink's current and rotated files.
fn file_ids(dir: &Path) -> (Vec<u64>, usize) {
    let mut ids = Vec::new();
    let mut files = 0;
    for entry in std::fs::read_dir(dir).expect("sink dir") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !name.starts_with("audit.jsonl") {
            continue;
        }
        files += 1;
        let text = std::fs::read_to_string(&path).expect("read");
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            assert!(v["hash"].as_str().is_some_and(|h| h.len() == 64), "{line}");
            ids.push(v["id"].as_u64().expect("id"));
        }
    }
    (ids, files)
}

/// Some sessions through pgward: logins, statements, a refused login.
fn traffic(proxy: &Proxy, round: u32) {
    let conn = proxy.conninfo("sinker", PASSWORD);
    for i in 0..3 {
        let script = format!("SELECT {round} AS round, {i} AS n;\nSELECT count(*) FROM visits;\n");
        let (ok, out) = run_script(&conn, &script);
        assert!(ok, "{out}");
    }
    let bad = proxy.conninfo("sinker", "not-the-password");
    assert!(!run_script(&bad, "SELECT 1;").0);
}

#[test]
fn a_sink_that_is_down_and_comes_back_receives_everything_once() {
    let syslog_port = free_port().expect("port");
    let hook = WebhookReceiver::start();
    let sinks = format!(
        r#"[
          {{name: siem, type: syslog, address: "127.0.0.1:{syslog_port}", start: oldest, poll: 50ms, timeout: 2s}},
          {{name: logs, type: file, path: sink/audit.jsonl, rotate_size: 4KiB, keep: 1000, start: oldest, poll: 50ms}},
          {{name: hook, type: webhook, url: "http://127.0.0.1:{}/in", kinds: [login], start: oldest, poll: 50ms}}
        ]"#,
        hook.port
    );
    let mut proxy = Proxy::with(Setup::default().set("audit.sinks", sinks));
    proxy.add_user("sinker", &["dba"]);
    let all = |proxy: &Proxy| {
        stored(proxy)
            .into_iter()
            .map(|(id, _)| id)
            .collect::<Vec<_>>()
    };
    let logins = |proxy: &Proxy| {
        stored(proxy)
            .into_iter()
            .filter(|(_, k)| k == "login")
            .map(|(id, _)| id)
            .collect::<Vec<_>>()
    };

    // Nothing listens on the syslog port yet; the proxy works regardless.
    traffic(&proxy, 1);
    let failures = "pgward_audit_sink_failures_total{sink=\"siem\"}";
    eventually(Duration::from_secs(10), "syslog delivery failures", || {
        proxy.metric(failures) > 0.0
    });

    // The receiver comes up and gets everything from the oldest event on.
    let received = Arc::new(Mutex::new(Vec::new()));
    let receiver = SyslogReceiver::start(syslog_port, Arc::clone(&received));
    let syslog_has_all = |proxy: &Proxy| {
        let got: BTreeSet<u64> = received.lock().expect("ids").iter().copied().collect();
        all(proxy).iter().all(|id| got.contains(id))
    };
    // Until the store is quiet too (session ends follow a client's exit).
    let wait_for_all = |proxy: &Proxy, what: &str| {
        for _ in 0..2 {
            eventually(Duration::from_secs(20), what, || syslog_has_all(proxy));
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    wait_for_all(&proxy, "the syslog receiver to get every stored event");
    let first = received.lock().expect("ids").clone();
    assert_once("syslog, first period", &first, &all(&proxy));
    assert_eq!(first[0], 1, "start: oldest");
    assert!(
        first.windows(2).all(|w| w[1] == w[0] + 1),
        "in order: {first:?}"
    );

    // It goes away; more happens; it comes back on the same port.
    receiver.stop();
    let before = proxy.metric(failures);
    traffic(&proxy, 2);
    eventually(
        Duration::from_secs(10),
        "failures while the receiver is down",
        || proxy.metric(failures) > before,
    );
    let receiver = SyslogReceiver::start(syslog_port, Arc::clone(&received));
    wait_for_all(&proxy, "the syslog receiver to catch up");
    assert_once(
        "syslog, both periods",
        &received.lock().expect("ids"),
        &all(&proxy),
    );
    eventually(Duration::from_secs(5), "syslog lag 0", || {
        proxy.metric("pgward_audit_sink_lag{sink=\"siem\"}") == 0.0
    });

    // pgward restarts: every sink resumes from its cursor, nothing twice.
    proxy.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(
        proxy.wait_exit(Duration::from_secs(20)),
        Some(true),
        "{}",
        proxy.log()
    );
    proxy.spawn();
    traffic(&proxy, 3);
    wait_for_all(&proxy, "syslog after the restart");
    receiver.stop();
    assert_once(
        "syslog, across a restart",
        &received.lock().expect("ids"),
        &all(&proxy),
    );

    let sink_dir = proxy.dir.path().join("sink");
    eventually(
        Duration::from_secs(20),
        "the file sink to hold every event",
        || {
            let (mut ids, _) = file_ids(&sink_dir);
            ids.sort_unstable();
            ids.len() >= all(&proxy).len()
        },
    );
    let (ids, files) = file_ids(&sink_dir);
    assert_once("file sink", &ids, &all(&proxy));
    assert!(files >= 3, "rotated by size into {files} files");

    eventually(
        Duration::from_secs(20),
        "the webhook to get every login",
        || hook.accepted.lock().expect("accepted").len() >= logins(&proxy).len(),
    );
    assert_once(
        "webhook",
        &hook.accepted.lock().expect("accepted"),
        &logins(&proxy),
    );
    assert!(
        hook.requests.load(Ordering::SeqCst) >= 2,
        "the refused request was retried"
    );
}
