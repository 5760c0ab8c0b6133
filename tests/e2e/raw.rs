//! A bare-bones wire-protocol client for tests that must send exactly the
//! bytes a misbehaving or unusual client would.

use std::sync::Arc;
use std::time::Duration;

use pgward::net::backend::ErrorFields;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::Proxy;

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub struct Raw {
    pub io: Box<dyn Io>,
}

pub fn startup_packet(version: u32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut p = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    p.extend(body);
    p
}

pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

pub fn query(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    message(b'Q', &body)
}

impl Raw {
    pub async fn plain(proxy: &Proxy) -> Raw {
        let tcp = TcpStream::connect(("127.0.0.1", proxy.port))
            .await
            .expect("connect");
        Raw { io: Box::new(tcp) }
    }

    /// SSLRequest and a verified TLS handshake.
    pub async fn tls(proxy: &Proxy) -> Raw {
        let mut tcp = TcpStream::connect(("127.0.0.1", proxy.port))
            .await
            .expect("connect");
        tcp.write_all(&[0, 0, 0, 8, 4, 210, 22, 47])
            .await
            .expect("ssl request");
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await.expect("ssl answer");
        assert_eq!(&answer, b"S");
        let connector = tokio_rustls::TlsConnector::from(Arc::new(proxy.tls_config()));
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let tls = connector.connect(name, tcp).await.expect("tls handshake");
        Raw { io: Box::new(tls) }
    }

    /// TLS, startup and password; returns after the first ReadyForQuery with
    /// the frames received on the way.
    pub async fn login(proxy: &Proxy, user: &str, password: &str) -> (Raw, Vec<(u8, Vec<u8>)>) {
        Raw::login_with(proxy, &[("user", user), ("database", "clinic")], password).await
    }

    /// TLS with no SSLRequest, as PostgreSQL 17's `sslnegotiation=direct`.
    pub async fn direct_tls(proxy: &Proxy, alpn: bool) -> Option<Raw> {
        let tcp = TcpStream::connect(("127.0.0.1", proxy.port))
            .await
            .expect("connect");
        let mut config = proxy.tls_config();
        if alpn {
            config.alpn_protocols = vec![b"postgresql".to_vec()];
        }
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let tls = connector.connect(name, tcp).await.ok()?;
        Some(Raw { io: Box::new(tls) })
    }

    pub async fn login_with(
        proxy: &Proxy,
        params: &[(&str, &str)],
        password: &str,
    ) -> (Raw, Vec<(u8, Vec<u8>)>) {
        let mut raw = Raw::tls(proxy).await;
        raw.send(&startup_packet(3 << 16, params)).await;
        let (tag, body) = raw.read().await.expect("auth request");
        assert_eq!(
            (tag, &body[..]),
            (b'R', &[0, 0, 0, 3][..]),
            "cleartext password request"
        );
        let mut pw = password.as_bytes().to_vec();
        pw.push(0);
        raw.send(&message(b'p', &pw)).await;
        let frames = raw.until_ready().await;
        assert!(
            frames.iter().all(|(t, _)| *t != b'E'),
            "login failed: {:?}",
            frames
                .iter()
                .find(|(t, _)| *t == b'E')
                .map(|(_, b)| ErrorFields::parse(b))
        );
        (raw, frames)
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.expect("send");
        self.io.flush().await.expect("flush");
    }

    /// Next message, or `None` when the connection closes (or 10 s pass).
    pub async fn read(&mut self) -> Option<(u8, Vec<u8>)> {
        let fut = async {
            let mut header = [0u8; 5];
            self.io.read_exact(&mut header).await.ok()?;
            let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
            let mut body = vec![0u8; len.checked_sub(4)?];
            self.io.read_exact(&mut body).await.ok()?;
            Some((header[0], body))
        };
        tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .ok()
            .flatten()
    }

    /// Reads until ReadyForQuery (inclusive).
    pub async fn until_ready(&mut self) -> Vec<(u8, Vec<u8>)> {
        let mut frames = Vec::new();
        while let Some((tag, body)) = self.read().await {
            let done = tag == b'Z';
            frames.push((tag, body));
            if done {
                break;
            }
        }
        frames
    }

    /// Reads the single ErrorResponse a refused connection gets, and checks
    /// the connection is closed after it.
    pub async fn expect_fatal(&mut self) -> ErrorFields {
        let (tag, body) = self.read().await.expect("an error response");
        assert_eq!(tag, b'E', "expected ErrorResponse, got {:?}", tag as char);
        let fields = ErrorFields::parse(&body);
        assert_eq!(fields.severity, "FATAL");
        assert!(self.read().await.is_none(), "connection closed after FATAL");
        fields
    }

    /// True if the peer closed the connection within `timeout`.
    pub async fn closed_within(&mut self, timeout: Duration) -> bool {
        let mut buf = [0u8; 64];
        loop {
            match tokio::time::timeout(timeout, self.io.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }
}

pub fn errors(frames: &[(u8, Vec<u8>)]) -> Vec<ErrorFields> {
    frames
        .iter()
        .filter(|(t, _)| *t == b'E')
        .map(|(_, b)| ErrorFields::parse(b))
        .collect()
}
