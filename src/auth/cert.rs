//! Logging in with a client certificate from pgward's CA.
//!
//! The TLS handshake has already proved that the client holds the
//! certificate's key; here pgward decides whether the certificate counts:
//! issued by its CA for client authentication, in date, on record and not
//! revoked, for the name the client logs in as, and that account enabled.
//! Each refusal says which of these failed. A refused certificate is not a
//! failed password: it never counts towards lockout, and lockout (which
//! stops password guessing) does not stop a valid certificate.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::CertificateError;
use x509_parser::certificate::X509Certificate;

use super::identity::LoginName;
use super::login::{Person, SecondFactor};
use crate::certs::client::serial_hex;
use crate::error::{PgError, SqlState};
use crate::net::tls::ClientCa;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum CertFailure {
    #[error("client certificate was not issued by pgward's CA")]
    Untrusted,
    #[error("client certificate for {user:?} expired at {}", when(*at))]
    Expired { user: String, at: SystemTime },
    #[error("client certificate for {user:?} is not valid before {}", when(*from))]
    NotYetValid { user: String, from: SystemTime },
    #[error("client certificate {serial} is not on record")]
    Unknown { serial: String },
    #[error("client certificate {serial} was revoked")]
    Revoked { serial: String },
    #[error("client certificate {serial} was issued to a service account, and {user:?} is no longer one")]
    NoLongerService { serial: String, user: String },
    #[error("certificate is for {cert:?}, not {login:?}")]
    Mismatch { cert: String, login: String },
    #[error("account {0:?} is disabled")]
    Disabled(String),
    #[error("login store unavailable: {0}")]
    Store(#[from] StoreError),
}

impl CertFailure {
    /// A label for metrics and login events.
    pub fn outcome(&self) -> &'static str {
        match self {
            CertFailure::Untrusted | CertFailure::NotYetValid { .. } => "cert_untrusted",
            CertFailure::Expired { .. } => "cert_expired",
            CertFailure::Unknown { .. }
            | CertFailure::Revoked { .. }
            | CertFailure::NoLongerService { .. } => "cert_revoked",
            CertFailure::Mismatch { .. } => "cert_mismatch",
            CertFailure::Disabled(_) => "disabled",
            CertFailure::Store(_) => "store_error",
        }
    }

    /// What the client is told.
    pub fn to_pg_error(&self) -> PgError {
        let hint = match self {
            CertFailure::Store(_) => {
                return PgError::fatal(
                    SqlState::CONNECTION_REJECTED,
                    "pgward: login is temporarily unavailable (the user store cannot be read)",
                )
            }
            CertFailure::Expired { .. } => "; issue a new one",
            CertFailure::NotYetValid { .. } => "; check the clock of the client or of pgward",
            CertFailure::Unknown { .. }
            | CertFailure::Revoked { .. }
            | CertFailure::NoLongerService { .. } => "; issue a new one, or connect without it",
            _ => "",
        };
        PgError::fatal(
            SqlState::INVALID_AUTHORIZATION,
            format!("pgward: {self}{hint}"),
        )
    }
}

fn when(t: SystemTime) -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_seconds(t)
}

/// What pgward reads from a presented certificate before trusting it.
struct Presented {
    user: Option<String>,
    serial: String,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl Presented {
    fn parse(der: &CertificateDer<'_>) -> Option<Presented> {
        let (_, x509) = x509_parser::parse_x509_certificate(der).ok()?;
        let time = |t: i64| {
            SystemTime::UNIX_EPOCH
                .checked_add(Duration::from_secs(u64::try_from(t).unwrap_or(0)))
                .unwrap_or(SystemTime::UNIX_EPOCH)
        };
        Some(Presented {
            user: common_name(&x509),
            serial: serial_hex(x509.raw_serial()),
            not_before: time(x509.validity().not_before.timestamp()),
            not_after: time(x509.validity().not_after.timestamp()),
        })
    }
}

/// The one common name, if there is exactly one.
fn common_name(x509: &X509Certificate<'_>) -> Option<String> {
    let mut names = x509.subject().iter_common_name();
    let first = names.next()?.as_str().ok()?.to_string();
    names.next().is_none().then_some(first)
}

/// How a certificate appears in audit events: its subject and serial
/// (capped in length: an untrusted certificate's subject is anyone's text).
pub fn describe(chain: &[CertificateDer<'_>]) -> Option<String> {
    let (_, x509) = x509_parser::parse_x509_certificate(chain.first()?).ok()?;
    let subject: String = x509.subject().to_string().chars().take(200).collect();
    Some(format!(
        "{subject}; serial {}",
        serial_hex(x509.raw_serial())
    ))
}

/// Logs `login` in with the presented `chain`, off the async threads.
pub async fn login(
    store: Arc<dyn Store>,
    ca: Option<Arc<ClientCa>>,
    chain: &[CertificateDer<'static>],
    login: &LoginName,
) -> Result<Person, CertFailure> {
    let Some(ca) = ca else {
        return Err(CertFailure::Untrusted);
    };
    let chain = chain.to_vec();
    let user = login.user.clone();
    tokio::task::spawn_blocking(move || {
        check(store.as_ref(), &ca, &chain, &user, SystemTime::now())
    })
    .await
    .unwrap_or_else(|e| {
        Err(CertFailure::Store(StoreError::Corrupt(format!(
            "certificate check failed: {e}"
        ))))
    })
}

/// The decision, at `now`. Blocking (reads the store).
pub fn check(
    store: &dyn Store,
    ca: &ClientCa,
    chain: &[CertificateDer<'_>],
    login_user: &str,
    now: SystemTime,
) -> Result<Person, CertFailure> {
    let (end_entity, intermediates) = chain.split_first().ok_or(CertFailure::Untrusted)?;
    let presented = Presented::parse(end_entity).ok_or(CertFailure::Untrusted)?;
    verify_chain(ca, end_entity, intermediates, &presented, now)?;
    let user = presented.user.ok_or(CertFailure::Untrusted)?;
    if user != login_user {
        return Err(CertFailure::Mismatch {
            cert: user,
            login: login_user.chars().take(64).collect(),
        });
    }
    let serial = presented.serial;
    let record = match store.cert(&serial)? {
        Some(record) if record.user == user => record,
        _ => return Err(CertFailure::Unknown { serial }),
    };
    if record.revoked_at.is_some() {
        return Err(CertFailure::Revoked { serial });
    }
    let account = store.user(&user)?.ok_or_else(|| CertFailure::Unknown {
        serial: serial.clone(),
    })?;
    if account.disabled {
        return Err(CertFailure::Disabled(user));
    }
    if record.service && !account.service {
        return Err(CertFailure::NoLongerService { serial, user });
    }
    store.cert_login(&user, now)?;
    Ok(Person {
        user: account.name,
        roles: account.roles,
        attrs: account.attrs,
        second_factor: SecondFactor::Certificate,
    })
}

/// Checks the chain against pgward's CA. Out of date is reported as such
/// only for a certificate that is otherwise good: asking again at a moment
/// inside its validity tells the two apart, so a stranger's certificate is
/// always "not issued by pgward's CA".
fn verify_chain(
    ca: &ClientCa,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    presented: &Presented,
    now: SystemTime,
) -> Result<(), CertFailure> {
    let at = |t: SystemTime| {
        UnixTime::since_unix_epoch(t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default())
    };
    let good_at = |t: SystemTime| ca.verify(end_entity, intermediates, at(t)).is_ok();
    let user = || presented.user.clone().unwrap_or_default();
    match ca.verify(end_entity, intermediates, at(now)) {
        Ok(()) => Ok(()),
        Err(rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        )) if good_at(presented.not_after - Duration::from_secs(1)) => Err(CertFailure::Expired {
            user: user(),
            at: presented.not_after,
        }),
        Err(rustls::Error::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        )) if good_at(presented.not_before) => Err(CertFailure::NotYetValid {
            user: user(),
            from: presented.not_before,
        }),
        Err(e) => {
            tracing::debug!(error = %e, "client certificate refused");
            Err(CertFailure::Untrusted)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rustls::pki_types::pem::PemObject;
    use time::OffsetDateTime;

    use super::*;
    use crate::certs::client::{issue_client_cert, sign_client_cert};
    use crate::config::CertsConfig;
    use crate::policy::RoleName;
    use crate::store::certs::CertStore;
    use crate::store::{NewUser, SqliteStore};

    const HOUR: Duration = Duration::from_secs(3600);

    struct Fixture {
        dir: tempfile::TempDir,
        certs: CertsConfig,
        store: SqliteStore,
        ca: ClientCa,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            crate::certs::write_ca_and_server(dir.path(), &["localhost"]).unwrap();
            let certs = CertsConfig {
                ca_cert: dir.path().join("ca.crt"),
                ca_key: dir.path().join("ca.key"),
                ..CertsConfig::default()
            };
            let store = SqliteStore::in_memory().unwrap();
            for name in ["alice", "bob"] {
                store
                    .add_user(&NewUser {
                        name: name.into(),
                        password_hash: "$argon2id$fake".into(),
                        roles: vec![RoleName::parse("dba").unwrap()],
                        attrs: BTreeMap::new(),
                    })
                    .unwrap();
            }
            let ca = ClientCa::load(&certs.ca_cert).unwrap();
            Fixture {
                dir,
                certs,
                store,
                ca,
            }
        }

        /// An issued certificate's chain and serial.
        fn issue(&self, user: &str) -> (Vec<CertificateDer<'static>>, String) {
            let issued =
                issue_client_cert(&self.certs, &self.store, user, HOUR, "root", false).unwrap();
            (chain(&issued.pem.cert), issued.serial)
        }

        fn check(&self, chain: &[CertificateDer<'_>], login: &str) -> Result<Person, CertFailure> {
            check(&self.store, &self.ca, chain, login, SystemTime::now())
        }
    }

    fn chain(pem: &str) -> Vec<CertificateDer<'static>> {
        vec![CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()]
    }

    fn message(failure: CertFailure) -> (String, &'static str) {
        let err = failure.to_pg_error();
        assert_eq!(err.code, SqlState::INVALID_AUTHORIZATION);
        (err.message, failure.outcome())
    }

    #[test]
    fn an_issued_certificate_logs_in_without_a_password() {
        let f = Fixture::new();
        let (alices, _) = f.issue("alice");
        let person = f.check(&alices, "alice").unwrap();
        assert_eq!(person.user, "alice");
        assert_eq!(person.roles[0].as_str(), "dba");
        assert_eq!(person.second_factor, SecondFactor::Certificate);
        assert!(f.store.user("alice").unwrap().unwrap().last_login.is_some());
        let described = describe(&alices).unwrap();
        assert!(described.contains("CN=alice"), "{described}");
    }

    #[test]
    fn revoked_and_unrecorded_serials_are_refused() {
        let f = Fixture::new();
        let (issued, serial) = f.issue("alice");
        f.store.revoke_cert(&serial, SystemTime::now()).unwrap();
        let (msg, outcome) = message(f.check(&issued, "alice").unwrap_err());
        assert_eq!(outcome, "cert_revoked");
        assert!(
            msg.contains(&format!("client certificate {serial} was revoked")),
            "{msg}"
        );
        // Signed by the CA but never recorded (a stolen CA key, say).
        let ca = crate::certs::load_ca(&f.certs.ca_cert, &f.certs.ca_key).unwrap();
        let now = OffsetDateTime::now_utc();
        let (pem, serial) = sign_client_cert(&ca, "alice", now - HOUR, now + HOUR).unwrap();
        let (msg, outcome) = message(f.check(&chain(&pem.cert), "alice").unwrap_err());
        assert_eq!(outcome, "cert_revoked");
        assert!(msg.contains(&format!("{serial} is not on record")), "{msg}");
    }

    #[test]
    fn expired_means_ours_and_out_of_date() {
        let f = Fixture::new();
        let ca = crate::certs::load_ca(&f.certs.ca_cert, &f.certs.ca_key).unwrap();
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        let (pem, _) = sign_client_cert(&ca, "alice", now - 2 * HOUR, now - HOUR).unwrap();
        let (msg, outcome) = message(f.check(&chain(&pem.cert), "alice").unwrap_err());
        assert_eq!(outcome, "cert_expired");
        let at = humantime::format_rfc3339_seconds((now - HOUR).into());
        assert_eq!(
            msg,
            format!("pgward: client certificate for \"alice\" expired at {at}; issue a new one")
        );
        // Someone else's CA, equally out of date: just not ours.
        let other = crate::certs::new_ca("another CA").unwrap();
        let (pem, _) = sign_client_cert(&other, "alice", now - 2 * HOUR, now - HOUR).unwrap();
        let (msg, outcome) = message(f.check(&chain(&pem.cert), "alice").unwrap_err());
        assert_eq!(outcome, "cert_untrusted");
        assert_eq!(
            msg,
            "pgward: client certificate was not issued by pgward's CA"
        );
    }

    #[test]
    fn server_certificates_and_strangers_are_untrusted() {
        let f = Fixture::new();
        let server = std::fs::read_to_string(f.dir.path().join("server.crt")).unwrap();
        let (_, outcome) = message(f.check(&chain(&server), "localhost").unwrap_err());
        assert_eq!(
            outcome, "cert_untrusted",
            "not meant for client authentication"
        );
        let other = crate::certs::new_ca("another CA").unwrap();
        let now = OffsetDateTime::now_utc();
        let (pem, _) = sign_client_cert(&other, "alice", now - HOUR, now + HOUR).unwrap();
        let (_, outcome) = message(f.check(&chain(&pem.cert), "alice").unwrap_err());
        assert_eq!(outcome, "cert_untrusted");
        assert!(matches!(f.check(&[], "alice"), Err(CertFailure::Untrusted)));
    }

    #[test]
    fn the_certificate_names_the_person_and_the_account_must_be_enabled() {
        let f = Fixture::new();
        let (bobs, _) = f.issue("bob");
        let (msg, outcome) = message(f.check(&bobs, "alice").unwrap_err());
        assert_eq!(outcome, "cert_mismatch");
        assert_eq!(msg, "pgward: certificate is for \"bob\", not \"alice\"");
        let (alices, _) = f.issue("alice");
        f.store.set_disabled("alice", true).unwrap();
        let (msg, outcome) = message(f.check(&alices, "alice").unwrap_err());
        assert_eq!(outcome, "disabled");
        assert_eq!(msg, "pgward: account \"alice\" is disabled");
    }

    #[test]
    fn a_service_certificate_ends_with_the_service_account() {
        let f = Fixture::new();
        f.store.set_service_for_tests("bob", true);
        let issued =
            issue_client_cert(&f.certs, &f.store, "bob", 90 * 24 * HOUR, "root", true).unwrap();
        let bobs = chain(&issued.pem.cert);
        f.check(&bobs, "bob").unwrap();
        f.store.set_service_for_tests("bob", false);
        let (_, outcome) = message(f.check(&bobs, "bob").unwrap_err());
        assert_eq!(outcome, "cert_revoked");
    }
}
