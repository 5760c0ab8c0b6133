//! The CA certificates a TLS sink (syslog over TLS, https webhooks)
//! trusts: a PEM bundle named in its settings, or the system's roots.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::SinkError;

pub(super) fn trusted_roots(
    ca_file: Option<&Path>,
) -> Result<Vec<CertificateDer<'static>>, SinkError> {
    let certs = match ca_file {
        Some(path) => CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| SinkError::Setup(format!("reading {}: {e}", path.display())))?,
        // Certificates the system bundle holds that rustls cannot parse
        // are skipped when added: that only narrows what is trusted.
        None => rustls_native_certs::load_native_certs().certs,
    };
    if certs.is_empty() {
        return Err(SinkError::Setup(match ca_file {
            Some(path) => format!("{} holds no certificate", path.display()),
            None => "no system CA certificates found; set ca_file".into(),
        }));
    }
    Ok(certs)
}
