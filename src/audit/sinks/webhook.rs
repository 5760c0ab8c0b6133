//! The webhook sink: each batch is POSTed as a JSON array of events
//! (`Content-Type: application/json`). Only a 2xx answer moves the cursor;
//! anything else, a redirect included, is a failure and the same events
//! are sent again later. With `kinds: [alert]` this is how alerts reach a
//! pager or chat bridge.
//!
//! HTTP is ureq's, not pgward's own: a blocking client fits a sink's own
//! thread, and it runs on the rustls and ring pgward already trusts. It
//! is given pgward's roots (the `ca_file` or the system's) rather than a
//! bundled list. Like most HTTP clients it honours `HTTPS_PROXY` and
//! friends from the environment. Error messages never include the URL,
//! which may carry a token.

use std::sync::Arc;

use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};

use super::roots::trusted_roots;
use super::{Deliver, Record, SinkError, WebhookConfig};

pub(super) struct WebhookSink {
    agent: ureq::Agent,
    url: String,
    headers: Vec<(String, String)>,
}

impl WebhookSink {
    pub fn new(cfg: &WebhookConfig) -> Result<WebhookSink, SinkError> {
        let roots: Vec<Certificate<'static>> = if cfg.url.starts_with("https://") {
            trusted_roots(cfg.ca_file.as_deref())?
                .iter()
                .map(|c| Certificate::from_der(c.as_ref()).to_owned())
                .collect()
        } else {
            Vec::new()
        };
        let tls = TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .root_certs(RootCerts::new_with_certs(&roots))
            .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .build();
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .timeout_global(Some(cfg.timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("pgward/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Ok(WebhookSink {
            agent,
            url: cfg.url.clone(),
            headers: cfg
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }
}

impl Deliver for WebhookSink {
    fn deliver(&mut self, records: &[Record]) -> Result<(), SinkError> {
        let mut body =
            Vec::with_capacity(records.iter().map(|r| r.json.len() + 1).sum::<usize>() + 2);
        body.push(b'[');
        for (i, r) in records.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&r.json);
        }
        body.push(b']');
        let mut request = self
            .agent
            .post(&self.url)
            .header("Content-Type", "application/json");
        for (k, v) in &self.headers {
            request = request.header(k, v);
        }
        let response = request.send(&body[..]).map_err(describe)?;
        let status = response.status().as_u16();
        // Read the answer so the connection can be reused.
        let _ = response
            .into_body()
            .with_config()
            .limit(64 * 1024)
            .read_to_vec();
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(SinkError::Status(status))
        }
    }
}

/// A ureq error as a message safe to log.
fn describe(e: ureq::Error) -> SinkError {
    match e {
        ureq::Error::Io(e) => SinkError::Io(e),
        ureq::Error::StatusCode(code) => SinkError::Status(code),
        ureq::Error::BadUri(_) => SinkError::Http("invalid URL".into()),
        ureq::Error::Http(_) => SinkError::Http("invalid request".into()),
        other => SinkError::Http(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;

    /// Answers each request on one connection with the next status.
    fn receiver(statuses: Vec<u16>) -> (String, std::thread::JoinHandle<Vec<(String, String)>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "http://{}/hook?token=secret",
            listener.local_addr().unwrap()
        );
        let thread = std::thread::spawn(move || {
            let mut got = Vec::new();
            for status in statuses {
                let (tcp, _) = listener.accept().unwrap();
                let mut r = BufReader::new(tcp);
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    r.read_line(&mut line).unwrap();
                    if line == "\r\n" {
                        break;
                    }
                    head.push_str(&line);
                }
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(|v| v.parse().unwrap())
                    })
                    .unwrap();
                let mut body = vec![0u8; len];
                r.read_exact(&mut body).unwrap();
                write!(
                    r.get_mut(),
                    "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
                .unwrap();
                got.push((head, String::from_utf8(body).unwrap()));
            }
            got
        });
        (url, thread)
    }

    fn record(id: u64) -> Record {
        Record {
            id,
            time_us: 0,
            kind: "alert".into(),
            hash: "00".into(),
            json: format!(r#"{{"id":{id}}}"#).into_bytes(),
        }
    }

    #[test]
    fn posts_a_json_array_and_counts_only_2xx() {
        let (url, thread) = receiver(vec![503, 204]);
        let cfg: WebhookConfig = serde_yaml::from_str(&format!(
            "{{url: '{url}', headers: {{Authorization: Bearer abc}}}}"
        ))
        .unwrap();
        let mut sink = WebhookSink::new(&cfg).unwrap();
        let err = sink
            .deliver(&[record(1), record(2)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("503") && !err.contains("secret"), "{err}");
        sink.deliver(&[record(1), record(2)]).unwrap();
        let got = thread.join().unwrap();
        assert_eq!(got[1].1, r#"[{"id":1},{"id":2}]"#);
        let head = got[1].0.to_ascii_lowercase();
        assert!(
            head.starts_with("post /hook?token=secret http/1.1"),
            "{head}"
        );
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(head.contains("authorization: bearer abc"), "{head}");
    }

    #[test]
    fn a_receiver_that_is_down_is_an_error_without_the_url() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg: WebhookConfig = serde_yaml::from_str(&format!(
            "{{url: 'http://127.0.0.1:{port}/h?token=secret', timeout: 2s}}"
        ))
        .unwrap();
        let mut sink = WebhookSink::new(&cfg).unwrap();
        let err = sink.deliver(&[record(1)]).unwrap_err().to_string();
        assert!(!err.contains("secret"), "{err}");
    }
}
