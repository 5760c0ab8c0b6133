//! TLS configuration for both sides of the proxy, built on rustls.
//!
//! Clients get TLS 1.2 or 1.3 with rustls' default (modern, AEAD-only) cipher
//! suites; nothing older is compiled in. Towards the database, the four
//! libpq-style modes decide whether TLS is attempted and how much of the
//! server's certificate is checked.
//!
//! Client certificates are asked for but never required, and the handshake
//! only checks that the client holds the certificate's key. Whether pgward's
//! CA issued it is decided after the StartupMessage ([`ClientCa::verify`]),
//! so a bad certificate gets a PostgreSQL error that says what is wrong
//! instead of a TLS alert that says nothing.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{0} holds no certificate")]
    NoCertificate(String),
    #[error("invalid TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("no trusted CA certificates available for verify-full: {0}")]
    NoRoots(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Read {
            path: path.display().to_string(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.display().to_string()));
    }
    Ok(certs)
}

/// The server side: what clients of pgward see, without client certificates.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_with_clients(cert, key, None)
}

/// The server side, asking clients for a certificate from `clients` when
/// given (see the module documentation for what is checked when).
pub fn server_config_with_clients(
    cert: &Path,
    key: &Path,
    clients: Option<&ClientCa>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Read {
        path: key.display().to_string(),
        source,
    })?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match clients {
        Some(ca) => builder.with_client_cert_verifier(Arc::new(ProofOfPossession {
            ca: Arc::clone(&ca.verifier),
            provider: provider(),
        })),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key)?;
    // The ALPN name PostgreSQL 17 clients send; required for direct TLS.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(Arc::new(config))
}

/// The CA client certificates must chain to: pgward's own.
#[derive(Clone, Debug)]
pub struct ClientCa {
    verifier: Arc<dyn ClientCertVerifier>,
}

impl ClientCa {
    /// Trusts the certificates in the PEM file `path`, and nothing else.
    pub fn load(path: &Path) -> Result<ClientCa, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in load_certs(path)? {
            roots.add(cert)?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
        Ok(ClientCa { verifier })
    }

    /// Checks a presented chain (end entity first) as webpki does: signed
    /// by the CA, valid at `now`, meant for client authentication.
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        self.verifier
            .verify_client_cert(end_entity, intermediates, now)
            .map(|_| ())
    }
}

/// The handshake half of client authentication: offered, optional, and
/// the CertificateVerify signature checked with webpki's algorithms, so
/// the client proves it holds the key. The chain is accepted here and
/// judged by [`ClientCa::verify`] once pgward can answer in PostgreSQL's
/// own terms.
#[derive(Debug)]
struct ProofOfPossession {
    ca: Arc<dyn ClientCertVerifier>,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for ProofOfPossession {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Names pgward's CA, so clients holding several certificates pick
        // the right one.
        self.ca.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// How pgward secures its connection to the database, as libpq's `sslmode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTlsMode {
    /// Never use TLS.
    Disable,
    /// Use TLS if the server offers it, without verifying the certificate.
    #[default]
    Prefer,
    /// Require TLS, without verifying the certificate.
    Require,
    /// Require TLS, a certificate chain to a trusted CA, and a matching host name.
    VerifyFull,
}

/// The client side: how pgward connects to the database.
pub fn upstream_config(
    mode: UpstreamTlsMode,
    ca_file: Option<&Path>,
) -> Result<Option<Arc<ClientConfig>>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let config = match mode {
        UpstreamTlsMode::Disable => return Ok(None),
        UpstreamTlsMode::Prefer | UpstreamTlsMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider())))
            .with_no_client_auth(),
        UpstreamTlsMode::VerifyFull => {
            let mut roots = RootCertStore::empty();
            match ca_file {
                Some(path) => {
                    for cert in load_certs(path)? {
                        roots.add(cert)?;
                    }
                }
                None => {
                    let native = rustls_native_certs::load_native_certs();
                    for cert in native.certs {
                        // A system bundle may hold certificates rustls cannot
                        // parse; skipping them only narrows what is trusted.
                        let _ = roots.add(cert);
                    }
                }
            }
            if roots.is_empty() {
                return Err(TlsError::NoRoots(
                    "set upstream.ca_file to the CA that signed the database's certificate".into(),
                ));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(Some(Arc::new(config)))
}

/// Turns a host into the name TLS verifies against.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_string()).map_err(|_| {
        TlsError::Rustls(rustls::Error::General(format!(
            "invalid host name {host:?}"
        )))
    })
}

/// `prefer` and `require` encrypt without authenticating the server, exactly as
/// libpq does in those modes. Signatures are still checked so the handshake
/// itself is sound; the chain and the name are not.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
