//! `postgres://USER:PASSWORD@HOST:PORT/DATABASE` URLs, as given to `pgward init`.

use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct PgUrl {
    pub user: String,
    pub password: Option<String>,
    pub host: String,
    pub port: u16,
    pub database: Option<String>,
}

impl fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgUrl")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .finish()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid upstream URL: {0} (expected postgres://USER:PASSWORD@HOST:PORT)")]
pub struct UrlError(String);

fn percent_decode(s: &str) -> Result<String, UrlError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| UrlError(format!("bad percent-escape in {s:?}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| UrlError("escaped text is not UTF-8".into()))
}

impl PgUrl {
    pub fn parse(url: &str) -> Result<PgUrl, UrlError> {
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or_else(|| UrlError("it must start with postgres://".into()))?;
        let rest = rest.split(['?', '#']).next().unwrap_or("");
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hostport) = authority
            .rsplit_once('@')
            .ok_or_else(|| UrlError("it names no user".into()))?;
        let (user, password) = match userinfo.split_once(':') {
            Some((u, p)) => (percent_decode(u)?, Some(percent_decode(p)?)),
            None => (percent_decode(userinfo)?, None),
        };
        if user.is_empty() {
            return Err(UrlError("the user is empty".into()));
        }
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| UrlError("unterminated [IPv6] host".into()))?;
            (host.to_string(), after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err(UrlError("the host is empty".into()));
        }
        let port = match port {
            Some(p) => p.parse().map_err(|_| UrlError(format!("bad port {p:?}")))?,
            None => 5432,
        };
        let database = (!path.is_empty())
            .then(|| percent_decode(path))
            .transpose()?;
        Ok(PgUrl {
            user,
            password,
            host,
            port,
            database,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_url() {
        let u = PgUrl::parse("postgres://postgres:p%40ss@127.0.0.1:5433/clinic?sslmode=require")
            .unwrap();
        assert_eq!(u.user, "postgres");
        assert_eq!(u.password.as_deref(), Some("p@ss"));
        assert_eq!(u.host, "127.0.0.1");
        assert_eq!(u.port, 5433);
        assert_eq!(u.database.as_deref(), Some("clinic"));
        assert!(!format!("{u:?}").contains("p@ss"));
    }

    #[test]
    fn defaults_and_errors() {
        let u = PgUrl::parse("postgresql://app@[::1]").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.password), ("::1", 5432, None));
        assert!(PgUrl::parse("mysql://a@b").is_err());
        assert!(PgUrl::parse("postgres://host:5432").is_err());
        assert!(PgUrl::parse("postgres://a@h:notaport").is_err());
    }
}
