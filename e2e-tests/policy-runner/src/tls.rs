//! Webhook TLS: a self-signed CA and a server certificate for `127.0.0.1`/`localhost`,
//! generated once into the cert dir (`ca.crt` becomes the webhook's `caBundle`), and
//! the rustls server configuration (ring provider, HTTP/1.1).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::{Error, Result};

/// The files of a cert dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    /// The CA certificate (PEM): the webhook configuration's `caBundle`.
    pub ca_cert: PathBuf,
    /// The server certificate chain (PEM).
    pub server_cert: PathBuf,
    /// The server private key (PEM, PKCS#8).
    pub server_key: PathBuf,
}

impl CertPaths {
    /// The file names inside `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca_cert: dir.join("ca.crt"),
            server_cert: dir.join("tls.crt"),
            server_key: dir.join("tls.key"),
        }
    }

    fn all_present(&self) -> bool {
        [&self.ca_cert, &self.server_cert, &self.server_key]
            .iter()
            .all(|p| p.is_file())
    }
}

/// Reuses the certificates in `dir` or, when any is missing, generates a new CA and a
/// server certificate for 127.0.0.1, ::1 and localhost (valid for decades: this is a
/// throwaway test CA whose key stays in the state dir).
pub fn ensure_certs(dir: &Path) -> Result<CertPaths> {
    let paths = CertPaths::in_dir(dir);
    if paths.all_present() {
        return Ok(paths);
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;

    let ca_key = KeyPair::generate().map_err(Error::CertGen)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(Error::CertGen)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "dask-on-k8s policy webhook CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(Error::CertGen)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().map_err(Error::CertGen)?;
    let mut params =
        CertificateParams::new(vec!["localhost".to_owned()]).map_err(Error::CertGen)?;
    params.subject_alt_names.extend([
        SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
        SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()),
    ]);
    params
        .distinguished_name
        .push(DnType::CommonName, "policy-runner webhook");
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = params
        .signed_by(&server_key, &issuer)
        .map_err(Error::CertGen)?;

    write_private(&paths.server_key, server_key.serialize_pem().as_bytes())?;
    write_file(&paths.server_cert, server_cert.pem().as_bytes())?;
    // Written last: its presence marks a complete set.
    write_file(&paths.ca_cert, ca_cert.pem().as_bytes())?;
    Ok(paths)
}

/// A rustls server configuration from the PEM files (ring provider, ALPN http/1.1).
pub fn server_config(paths: &CertPaths) -> Result<Arc<rustls::ServerConfig>> {
    let certs = CertificateDer::pem_file_iter(&paths.server_cert)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| Error::Tls {
            path: paths.server_cert.clone(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(Error::Tls {
            path: paths.server_cert.clone(),
            message: "no certificate found".to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&paths.server_key).map_err(|e| Error::Tls {
        path: paths.server_key.clone(),
        message: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| Error::Tls {
            path: paths.server_cert.clone(),
            message: e.to_string(),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A rustls client configuration trusting only `ca.crt` (for tests and probes).
pub fn client_config(ca_cert: &Path) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_cert).map_err(|e| Error::Tls {
        path: ca_cert.to_owned(),
        message: e.to_string(),
    })? {
        let cert = cert.map_err(|e| Error::Tls {
            path: ca_cert.to_owned(),
            message: e.to_string(),
        })?;
        roots.add(cert).map_err(|e| Error::Tls {
            path: ca_cert.to_owned(),
            message: e.to_string(),
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls {
            path: ca_cert.to_owned(),
            message: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn write_file(path: &Path, contents: &[u8]) -> Result<()> {
    std::fs::write(path, contents).map_err(|e| Error::io(path, e))
}

/// Writes a key readable by the owner only.
fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    file.write_all(contents).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_then_reuses() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let paths = ensure_certs(dir.path())?;
        let ca = std::fs::read(&paths.ca_cert)?;
        assert!(ca.starts_with(b"-----BEGIN CERTIFICATE-----"));
        server_config(&paths)?;
        client_config(&paths.ca_cert)?;

        let again = ensure_certs(dir.path())?;
        assert_eq!(again, paths);
        assert_eq!(
            std::fs::read(&again.ca_cert)?,
            ca,
            "existing CA must be kept"
        );
        Ok(())
    }

    #[test]
    fn regenerates_an_incomplete_set() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let first = std::fs::read(ensure_certs(dir.path())?.ca_cert)?;
        std::fs::remove_file(dir.path().join("tls.key"))?;
        let paths = ensure_certs(dir.path())?;
        assert_ne!(std::fs::read(&paths.ca_cert)?, first);
        server_config(&paths)?;
        Ok(())
    }

    #[test]
    fn garbage_key_is_a_clear_error() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let paths = ensure_certs(dir.path())?;
        std::fs::write(&paths.server_key, "not a key")?;
        match server_config(&paths) {
            Err(Error::Tls { path, .. }) => assert_eq!(path, paths.server_key),
            other => panic!("expected a TLS error, got {other:?}"),
        }
        Ok(())
    }
}
