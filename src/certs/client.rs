//! Client certificates from pgward's CA.
//!
//! Holding one replaces the password at login, so a person's certificate is
//! short-lived (`certs.person_max_ttl`, a working day by default); service
//! accounts, which have no second factor to offer, may hold one for up to
//! `certs.service_max_ttl`. Every certificate is recorded in the store by
//! serial: login refuses serials that are unknown or revoked.

use std::time::{Duration, SystemTime};

use rand::Rng;
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose, SerialNumber};
use time::OffsetDateTime;

use super::{dn, Ca, CertError, Pem};
use crate::config::CertsConfig;
use crate::store::certs::CertRecord;
use crate::store::Store;

/// Clients' clocks may run a little behind pgward's.
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// A certificate just issued, with the only copy of its private key.
pub struct IssuedCert {
    pub user: String,
    /// Lower-case hex, as `pgward cert list` shows and `revoke` takes it.
    pub serial: String,
    pub expires_at: SystemTime,
    pub service: bool,
    pub pem: Pem,
}

/// Issues a client certificate for `user`, valid for `ttl`, and records it.
///
/// `service` asks for a service account's certificate (the user must be
/// one); the lifetime cap follows from it. `issued_by` names who asked, for
/// `cert list` and the store. Blocking (files and the store): async
/// callers run it with `spawn_blocking`. The caller records the admin event.
pub fn issue_client_cert(
    certs: &CertsConfig,
    store: &dyn Store,
    user: &str,
    ttl: Duration,
    issued_by: &str,
    service: bool,
) -> Result<IssuedCert, CertError> {
    if ttl.is_zero() {
        return Err(CertError::ZeroTtl);
    }
    let record = store
        .user(user)?
        .ok_or_else(|| CertError::NoSuchUser(user.to_string()))?;
    if record.disabled {
        return Err(CertError::Disabled(user.to_string()));
    }
    if service && !record.service {
        return Err(CertError::NotService(user.to_string()));
    }
    let (kind, max) = if service {
        ("service", certs.service_max_ttl)
    } else {
        ("person", certs.person_max_ttl)
    };
    if ttl > max {
        return Err(CertError::TooLong {
            kind,
            max: humantime::format_duration(max).to_string(),
            asked: humantime::format_duration(ttl).to_string(),
        });
    }
    let ca = super::load_ca(&certs.ca_cert, &certs.ca_key)?;
    // Whole seconds: what X.509 can say is what the store records.
    let now = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| OffsetDateTime::now_utc());
    let not_after = now + ttl_seconds(ttl);
    let (pem, serial) = sign_client_cert(&ca, user, now - CLOCK_SKEW, not_after)?;
    let issued = IssuedCert {
        user: user.to_string(),
        serial,
        expires_at: not_after.into(),
        service,
        pem,
    };
    store.add_cert(&CertRecord {
        serial: issued.serial.clone(),
        user: issued.user.clone(),
        issued_at: now.into(),
        expires_at: issued.expires_at,
        service,
        issued_by: issued_by.to_string(),
        revoked_at: None,
    })?;
    Ok(issued)
}

fn ttl_seconds(ttl: Duration) -> time::Duration {
    time::Duration::seconds(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2))
}

/// Signs a certificate for `user` (CN=user, O=pgward, clientAuth, a new
/// key, a random serial) valid from `not_before` to `not_after`; returns it
/// with its serial. Records nothing: [`issue_client_cert`] does.
pub fn sign_client_cert(
    ca: &Ca,
    user: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<(Pem, String), CertError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = dn(user);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = not_before;
    params.not_after = not_after;
    // 128 random bits. The first byte is 01..7f so the DER integer is
    // exactly these bytes (no sign byte, no leading zero to strip) and the
    // hex recorded is the hex a reader of the certificate computes.
    let mut serial = [0u8; 16];
    rand::thread_rng().fill(&mut serial);
    serial[0] = (serial[0] & 0x7f).max(1);
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    let cert = params.signed_by(&key, &ca.issuer)?;
    let pem = Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    };
    Ok((pem, serial_hex(&serial)))
}

/// The canonical form of a serial: lower-case hex of the integer's bytes,
/// without leading zero bytes.
pub fn serial_hex(raw: &[u8]) -> String {
    let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
    hex::encode(&raw[start..])
}

/// A serial as someone typed or pasted it (`0A:1B…`, `0a1b…`), canonical.
pub fn parse_serial(typed: &str) -> Result<String, String> {
    let digits: String = typed
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    let bytes = hex::decode(if digits.len() % 2 == 1 {
        format!("0{digits}")
    } else {
        digits
    })
    .map_err(|_| format!("{typed:?} is not a serial (hex digits, as `pgward cert list` shows)"))?;
    Ok(serial_hex(&bytes))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

    use super::*;
    use crate::net::tls::ClientCa;
    use crate::policy::RoleName;
    use crate::store::certs::CertStore;
    use crate::store::{NewUser, SqliteStore};

    const HOUR: Duration = Duration::from_secs(3600);
    const DAY: Duration = Duration::from_secs(86400);

    fn setup() -> (tempfile::TempDir, CertsConfig, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        super::super::write_ca_and_server(dir.path(), &["localhost"]).unwrap();
        let certs = CertsConfig {
            ca_cert: dir.path().join("ca.crt"),
            ca_key: dir.path().join("ca.key"),
            ..CertsConfig::default()
        };
        let store = SqliteStore::in_memory().unwrap();
        for name in ["alice", "robot"] {
            store
                .add_user(&NewUser {
                    name: name.into(),
                    password_hash: "$argon2id$fake".into(),
                    roles: vec![RoleName::parse("dba").unwrap()],
                    attrs: BTreeMap::new(),
                })
                .unwrap();
        }
        store.set_service_for_tests("robot", true);
        (dir, certs, store)
    }

    #[test]
    fn an_issued_certificate_is_recorded_and_loads_into_rustls() {
        let (_dir, certs, store) = setup();
        let before = SystemTime::now();
        let issued = issue_client_cert(&certs, &store, "alice", 8 * HOUR, "root", false).unwrap();

        let der = CertificateDer::from_pem_slice(issued.pem.cert.as_bytes()).unwrap();
        let ca = ClientCa::load(&certs.ca_cert).unwrap();
        ca.verify(&der, &[], UnixTime::now())
            .expect("pgward's CA verifies it for client authentication");
        let key = PrivateKeyDer::from_pem_slice(issued.pem.key.as_bytes()).unwrap();
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_client_auth_cert(vec![der.clone()], key)
        .expect("key and certificate belong together");

        let (_, x509) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(serial_hex(x509.raw_serial()), issued.serial);
        assert_eq!(issued.serial.len(), 32);
        let cn: Vec<_> = x509
            .subject()
            .iter_common_name()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(cn, ["alice"]);
        let not_before = x509.validity().not_before.timestamp();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        assert!(
            (now - 310..=now - 290).contains(&not_before),
            "five minutes of skew"
        );

        let record = store.cert(&issued.serial).unwrap().expect("recorded");
        assert_eq!(record.user, "alice");
        assert_eq!(record.issued_by, "root");
        assert!(!record.service);
        assert_eq!(record.expires_at, issued.expires_at);
        let ttl = record.expires_at.duration_since(before).unwrap();
        assert!(ttl <= 8 * HOUR && ttl > 8 * HOUR - Duration::from_secs(5));
        assert_eq!(
            x509.validity().not_after.timestamp(),
            OffsetDateTime::from(record.expires_at).unix_timestamp()
        );
    }

    #[test]
    fn lifetimes_are_capped_by_kind_of_account() {
        let (_dir, certs, store) = setup();
        let err = issue_client_cert(&certs, &store, "alice", 13 * HOUR, "root", false)
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .contains("a person certificate may live at most 12h"),
            "{err}"
        );
        issue_client_cert(&certs, &store, "alice", 12 * HOUR, "root", false).unwrap();
        let err = issue_client_cert(&certs, &store, "alice", HOUR, "root", true)
            .err()
            .unwrap();
        assert!(matches!(err, CertError::NotService(_)), "{err}");
        // A service account is a person unless --service is asked for.
        assert!(issue_client_cert(&certs, &store, "robot", 30 * DAY, "root", false).is_err());
        let issued = issue_client_cert(&certs, &store, "robot", 365 * DAY, "root", true).unwrap();
        assert!(store.cert(&issued.serial).unwrap().unwrap().service);
        assert!(issue_client_cert(&certs, &store, "robot", 366 * DAY, "root", true).is_err());
        assert!(matches!(
            issue_client_cert(&certs, &store, "alice", Duration::ZERO, "root", false),
            Err(CertError::ZeroTtl)
        ));
        assert_eq!(
            store.certs(None).unwrap().len(),
            2,
            "refusals record nothing"
        );
    }

    #[test]
    fn disabled_and_unknown_users_get_none() {
        let (_dir, certs, store) = setup();
        store.set_disabled("alice", true).unwrap();
        assert!(matches!(
            issue_client_cert(&certs, &store, "alice", HOUR, "root", false),
            Err(CertError::Disabled(_))
        ));
        assert!(matches!(
            issue_client_cert(&certs, &store, "nobody", HOUR, "root", false),
            Err(CertError::NoSuchUser(_))
        ));
    }

    #[test]
    fn a_ca_key_that_does_not_match_is_refused() {
        let (_dir, certs, store) = setup();
        let other = tempfile::tempdir().unwrap();
        super::super::write_ca_and_server(other.path(), &["localhost"]).unwrap();
        let mixed = CertsConfig {
            ca_key: other.path().join("ca.key"),
            ..certs
        };
        let err = issue_client_cert(&mixed, &store, "alice", HOUR, "root", false)
            .err()
            .unwrap();
        assert!(err.to_string().contains("it is not the key of"), "{err}");
    }

    #[test]
    fn serials_are_read_as_typed() {
        assert_eq!(parse_serial("0A:1B:ff").unwrap(), "0a1bff");
        assert_eq!(parse_serial("00a1").unwrap(), "a1");
        assert_eq!(parse_serial("a1b").unwrap(), "0a1b");
        assert!(parse_serial("xyz").is_err());
        assert_eq!(serial_hex(&[0, 0, 0x12]), "12");
    }
}
