//! pgward's own certificate authority, made with rcgen.
//!
//! `pgward init` creates a CA and a server certificate for localhost so TLS
//! works from the first minute; operators replace `server.crt`/`server.key`
//! with their organisation's certificate when they have one. Private keys are
//! written with mode 0600. The same CA issues client certificates
//! ([`client`]).

pub mod client;

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
};
use rustls::pki_types::pem::PemObject;
use time::{Duration, OffsetDateTime};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot read pgward's CA from {path}: {why}")]
    ReadCa { path: PathBuf, why: String },
    #[error("no user named {0:?}")]
    NoSuchUser(String),
    #[error("account {0:?} is disabled; it gets no certificate")]
    Disabled(String),
    #[error("{0:?} is not a service account; only service accounts get --service certificates")]
    NotService(String),
    #[error(
        "a {kind} certificate may live at most {max} (certs.{kind}_max_ttl); asked for {asked}"
    )]
    TooLong {
        kind: &'static str,
        max: String,
        asked: String,
    },
    #[error("a certificate must live longer than 0s")]
    ZeroTtl,
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// PEM text of a certificate and its private key.
pub struct Pem {
    pub cert: String,
    pub key: String,
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "pgward");
    dn.push(DnType::CommonName, common_name);
    dn
}

/// A CA that can sign: its PEM and an rcgen issuer.
pub struct Ca {
    pub pem: Pem,
    issuer: Issuer<'static, KeyPair>,
}

/// Loads the CA `pgward init` made, to sign with it.
pub fn load_ca(cert: &Path, key: &Path) -> Result<Ca, CertError> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|e| CertError::ReadCa {
            path: path.to_path_buf(),
            why: e.to_string(),
        })
    };
    let pem = Pem {
        cert: read(cert)?,
        key: read(key)?,
    };
    let invalid = |path: &Path, e: rcgen::Error| CertError::ReadCa {
        path: path.to_path_buf(),
        why: e.to_string(),
    };
    let signing_key = KeyPair::from_pem(&pem.key).map_err(|e| invalid(key, e))?;
    // A key that does not match would sign certificates nothing verifies.
    let der =
        rustls::pki_types::CertificateDer::from_pem_slice(pem.cert.as_bytes()).map_err(|e| {
            CertError::ReadCa {
                path: cert.to_path_buf(),
                why: e.to_string(),
            }
        })?;
    let matches = x509_parser::parse_x509_certificate(&der)
        .is_ok_and(|(_, x509)| x509.public_key().raw == signing_key.subject_public_key_info());
    if !matches {
        return Err(CertError::ReadCa {
            path: key.to_path_buf(),
            why: format!("it is not the key of {}", cert.display()),
        });
    }
    let issuer = Issuer::from_ca_cert_pem(&pem.cert, signing_key).map_err(|e| invalid(cert, e))?;
    Ok(Ca { pem, issuer })
}

/// A new self-signed CA, valid for ten years.
pub fn new_ca(common_name: &str) -> Result<Ca, CertError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = dn(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(3650);
    let cert = params.self_signed(&key)?;
    let pem = Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    };
    Ok(Ca {
        pem,
        issuer: Issuer::new(params, key),
    })
}

/// A server certificate for `names` (DNS names or IP addresses), signed by
/// the CA, valid for 825 days (the longest browsers and most clients accept).
pub fn new_server_cert(ca: &Ca, names: &[&str]) -> Result<Pem, CertError> {
    let key = KeyPair::generate()?;
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
    params.distinguished_name = dn(names.first().copied().unwrap_or("pgward"));
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(825);
    let cert = params.signed_by(&key, &ca.issuer)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// Writes a file with the given mode, refusing to overwrite.
pub fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), CertError> {
    let wrap = |source| CertError::Write {
        path: path.display().to_string(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(wrap)?;
    file.write_all(contents.as_bytes()).map_err(wrap)
}

/// Writes `ca.crt`, `ca.key`, `server.crt`, `server.key` into `dir`.
pub fn write_ca_and_server(dir: &Path, names: &[&str]) -> Result<(), CertError> {
    let ca = new_ca("pgward CA")?;
    let server = new_server_cert(&ca, names)?;
    write_new(&dir.join("ca.crt"), &ca.pem.cert, 0o644)?;
    write_new(&dir.join("ca.key"), &ca.pem.key, 0o600)?;
    write_new(&dir.join("server.crt"), &server.cert, 0o644)?;
    write_new(&dir.join("server.key"), &server.key, 0o600)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_a_usable_chain_with_private_keys_0600() {
        let dir = tempfile::tempdir().unwrap();
        write_ca_and_server(dir.path(), &["localhost", "127.0.0.1"]).unwrap();
        for key in ["ca.key", "server.key"] {
            let mode = std::fs::metadata(dir.path().join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
        // The server certificate loads into a rustls server config.
        crate::net::tls::server_config(
            &dir.path().join("server.crt"),
            &dir.path().join("server.key"),
        )
        .unwrap();
        assert!(
            write_ca_and_server(dir.path(), &["localhost"]).is_err(),
            "never overwrites"
        );
    }
}
