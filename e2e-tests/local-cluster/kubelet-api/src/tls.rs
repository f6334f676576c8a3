//! The kubelet's serving certificate: self-signed, made at start.
//!
//! kube-apiserver verifies kubelet serving certificates only with
//! `--kubelet-certificate-authority` (our control plane sets none, so its kubelet
//! transport is `Insecure`), and presents a client certificate only with
//! `--kubelet-client-certificate`; so any certificate works and any client is accepted.
//! ALPN offers only `http/1.1`: port-forward needs HTTP/1.1 upgrades.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::{Error, Result};

/// A TLS server configuration with a fresh self-signed certificate for `localhost` and
/// `127.0.0.1`.
pub(crate) fn self_signed_config() -> Result<Arc<ServerConfig>> {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .map_err(Error::CertGen)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(Error::Tls)?
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key)
            .map_err(Error::Tls)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
