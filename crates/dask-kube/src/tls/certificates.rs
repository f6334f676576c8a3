//! A cluster's certificate set ([`ClusterTls::issue`], pure but for its random keys) and the
//! Secret that carries it into the scheduler and worker pods.

use crate::manifests::{APP_LABEL, Owner, USER_LABEL, service_name};
use crate::{Error, Result};
use dask_worker_spec::labels;
use k8s_openapi::ByteString;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The Secret's keys, as a `kubernetes.io/tls` Secret names them.
pub const CA_KEY: &str = "ca.crt";
/// The certificate's key in the Secret.
pub const CERT_KEY: &str = "tls.crt";
/// The private key's key in the Secret.
pub const KEY_KEY: &str = "tls.key";

/// How long the certificates are valid. Longer than any cluster runs: a cluster's CA
/// signs nothing but the cluster's own certificate and its key is gone, so the
/// certificate is worth nothing once its cluster is deleted, whatever its validity; a
/// shorter one would only stop a long-running cluster from accepting its own workers.
pub const VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Accepted clock skew between the machine that issues and the nodes that check.
const CLOCK_SKEW: Duration = Duration::from_secs(3600);

/// The Secret holding cluster `cluster`'s certificates: `<cluster>-tls`.
pub fn secret_name(cluster: &str) -> String {
    format!("{cluster}-tls")
}

/// A cluster's certificate set, PEM-encoded: its CA's certificate (what every side trusts)
/// and the one certificate with its key that the scheduler, the workers and the client
/// present. The CA's key is not kept.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterTls {
    /// The CA certificate.
    pub ca_pem: String,
    /// The certificate the scheduler, workers and clients present.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for ClusterTls {
    /// Without the key, so a log line never carries it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTls")
            .field("ca_pem", &self.ca_pem)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl ClusterTls {
    /// A new CA for cluster `cluster` in `namespace` and the certificate it signs, valid
    /// from `now` (less an hour of clock skew) for [`VALIDITY`]: ECDSA P-256 keys; the
    /// certificate names the scheduler's Service in every form a pod resolves it
    /// (`<svc>`, `<svc>.<ns>`, `<svc>.<ns>.svc`, `<svc>.<ns>.svc.cluster.local`) and the
    /// local end of a port-forward (`localhost`, `127.0.0.1`), and serves both TLS ends
    /// (server and client authentication), since Dask uses one certificate per role and
    /// dask-kube one for all. Dask does not check host names (`check_hostname = False`: a
    /// worker is reached at its pod IP), so the names are for other TLS clients.
    ///
    /// # Example
    /// ```
    /// let tls = dask_kube::ClusterTls::issue("etl", "team", std::time::SystemTime::now()).unwrap();
    /// assert!(tls.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    /// assert!(tls.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    /// ```
    pub fn issue(cluster: &str, namespace: &str, now: SystemTime) -> Result<Self> {
        let invalid = |what: &str, e: rcgen::Error| Error::Tls {
            what: format!("issue the {what} of cluster {namespace}/{cluster}"),
            reason: e.to_string(),
        };
        let (not_before, not_after) = validity(now)?;
        let ca_key = KeyPair::generate().map_err(|e| invalid("CA key", e))?;
        let mut ca = CertificateParams::default();
        ca.distinguished_name = distinguished_name(&format!("dask-kube CA {namespace}/{cluster}"));
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca.not_before = not_before;
        ca.not_after = not_after;
        let ca_cert = ca
            .self_signed(&ca_key)
            .map_err(|e| invalid("CA certificate", e))?;
        let issuer = Issuer::new(ca, ca_key);

        let key = KeyPair::generate().map_err(|e| invalid("key", e))?;
        let service = service_name(cluster);
        let dns = [
            service.clone(),
            format!("{service}.{namespace}"),
            format!("{service}.{namespace}.svc"),
            format!("{service}.{namespace}.svc.cluster.local"),
            "localhost".to_owned(),
        ];
        let mut leaf = CertificateParams::default();
        leaf.distinguished_name = distinguished_name(&format!("dask {namespace}/{cluster}"));
        leaf.subject_alt_names = dns
            .into_iter()
            .map(|name| {
                name.try_into()
                    .map(SanType::DnsName)
                    .map_err(|e| invalid("certificate's names", e))
            })
            .collect::<Result<Vec<_>>>()?;
        leaf.subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        leaf.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        leaf.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        leaf.use_authority_key_identifier_extension = true;
        leaf.not_before = not_before;
        leaf.not_after = not_after;
        let cert = leaf
            .signed_by(&key, &issuer)
            .map_err(|e| invalid("certificate", e))?;
        Ok(ClusterTls {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
        // `issuer`, and with it the CA's key, is dropped here: nothing can sign again.
    }

    /// The Secret that carries the set into the scheduler and worker pods (`immutable`, a
    /// `kubernetes.io/tls` Secret with `ca.crt`), owned by the scheduler pod.
    pub fn secret(&self, cluster: &str, namespace: &str, user: &str, owner: &Owner) -> Value {
        let data: BTreeMap<&str, ByteString> = [
            (CA_KEY, &self.ca_pem),
            (CERT_KEY, &self.cert_pem),
            (KEY_KEY, &self.key_pem),
        ]
        .into_iter()
        .map(|(k, pem)| (k, ByteString(pem.as_bytes().to_vec())))
        .collect();
        secret_manifest(cluster, namespace, user, owner, json!(data))
    }

    /// The set read back from a Secret's `data` (what a client reconnecting by name gets:
    /// `dask-kube tls NAME`, Python's `KubeCluster.from_name`).
    pub fn from_secret_data(cluster: &str, data: &BTreeMap<String, ByteString>) -> Result<Self> {
        let field = |key: &str| -> Result<String> {
            let problem = |reason: String| Error::Tls {
                what: format!("read the certificates of cluster {cluster}"),
                reason,
            };
            let bytes = data
                .get(key)
                .ok_or_else(|| problem(format!("Secret {} has no {key}", secret_name(cluster))))?;
            String::from_utf8(bytes.0.clone()).map_err(|_| {
                problem(format!(
                    "{key} of Secret {} is not PEM text",
                    secret_name(cluster)
                ))
            })
        };
        Ok(ClusterTls {
            ca_pem: field(CA_KEY)?,
            cert_pem: field(CERT_KEY)?,
            key_pem: field(KEY_KEY)?,
        })
    }
}

/// The Secret manifest around `data`: named [`secret_name`], the cluster's labels,
/// immutable, owned by the scheduler pod.
pub(crate) fn secret_manifest(
    cluster: &str,
    namespace: &str,
    user: &str,
    owner: &Owner,
    data: Value,
) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "immutable": true,
        "metadata": {
            "name": secret_name(cluster),
            "namespace": namespace,
            "labels": {
                labels::CLUSTER_NAME: cluster,
                APP_LABEL.0: APP_LABEL.1,
                USER_LABEL: user,
            },
            "ownerReferences": [owner.reference()],
        },
        "data": data,
    })
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

fn validity(now: SystemTime) -> Result<(time::OffsetDateTime, time::OffsetDateTime)> {
    let at = |t: SystemTime| -> Result<time::OffsetDateTime> {
        let seconds = t
            .duration_since(UNIX_EPOCH)
            .ok()
            .and_then(|d| i64::try_from(d.as_secs()).ok())
            .ok_or_else(|| Error::Tls {
                what: "issue certificates".into(),
                reason: "the clock is before 1970".into(),
            })?;
        time::OffsetDateTime::from_unix_timestamp(seconds).map_err(|e| Error::Tls {
            what: "issue certificates".into(),
            reason: e.to_string(),
        })
    };
    let start = now.checked_sub(CLOCK_SKEW).unwrap_or(UNIX_EPOCH);
    let end = now.checked_add(VALIDITY).ok_or_else(|| Error::Tls {
        what: "issue certificates".into(),
        reason: "the clock is too far in the future".into(),
    })?;
    Ok((at(start)?, at(end)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
    use std::sync::Arc;
    use std::time::Duration;
    use x509_parser::prelude::*;

    const NOW: Duration = Duration::from_secs(1_800_000_000);

    fn issued() -> ClusterTls {
        ClusterTls::issue("etl", "team", UNIX_EPOCH + NOW).unwrap()
    }

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn roots(ca_pem: &str) -> Arc<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der(ca_pem)).unwrap();
        Arc::new(roots)
    }

    #[test]
    fn the_ca_signs_only_the_clusters_certificate() {
        let tls = issued();
        let (ca_der, leaf_der) = (der(&tls.ca_pem), der(&tls.cert_pem));
        let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
        let constraints = ca.basic_constraints().unwrap().unwrap().value;
        assert!(constraints.ca);
        assert_eq!(constraints.path_len_constraint, Some(0));
        assert!(ca.key_usage().unwrap().unwrap().value.key_cert_sign());
        assert_eq!(
            ca.subject().to_string(),
            "CN=dask-kube CA team/etl",
            "the CA names its cluster"
        );
        let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
        assert!(!leaf.is_ca());
        assert_eq!(leaf.issuer(), ca.subject());
        let eku = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth, "both TLS ends");
        assert!(
            leaf.extensions().iter().any(|e| matches!(
                e.parsed_extension(),
                ParsedExtension::AuthorityKeyIdentifier(_)
            )),
            "Python's strict X.509 checks want the AKI"
        );
    }

    #[test]
    fn the_certificate_names_the_service_and_the_forwards_local_end() {
        let tls = issued();
        let leaf_der = der(&tls.cert_pem);
        let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
        let names: Vec<String> = leaf
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(d) => (*d).to_owned(),
                GeneralName::IPAddress(ip) => format!("ip:{ip:?}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            names,
            [
                "etl-scheduler",
                "etl-scheduler.team",
                "etl-scheduler.team.svc",
                "etl-scheduler.team.svc.cluster.local",
                "localhost",
                "ip:[127, 0, 0, 1]",
            ]
        );
    }

    #[test]
    fn validity_starts_before_now_and_outlasts_any_cluster() {
        let tls = issued();
        for pem in [&tls.ca_pem, &tls.cert_pem] {
            let cert_der = der(pem);
            let (_, cert) = X509Certificate::from_der(&cert_der).unwrap();
            let validity = cert.validity();
            let now = i64::try_from(NOW.as_secs()).unwrap();
            assert_eq!(validity.not_before.timestamp(), now - 3600);
            assert_eq!(
                validity.not_after.timestamp(),
                now + i64::try_from(VALIDITY.as_secs()).unwrap()
            );
        }
    }

    #[test]
    fn every_cluster_gets_its_own_ca_and_keys() {
        let a = issued();
        let b = issued();
        assert_ne!(a.ca_pem, b.ca_pem);
        assert_ne!(a.key_pem, b.key_pem);
        // One cluster's certificate is worth nothing to another's CA.
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots(&b.ca_pem),
            provider(),
        )
        .build()
        .unwrap();
        let now = UnixTime::since_unix_epoch(NOW);
        assert!(
            verifier
                .verify_client_cert(&der(&a.cert_pem), &[], now)
                .is_err()
        );
    }

    /// The certificate passes rustls's (webpki's) checks for both ends, against the CA, at
    /// the time it was issued: as a server under each name a pod uses, and as a client.
    #[rstest]
    #[case::short_service("etl-scheduler")]
    #[case::namespaced("etl-scheduler.team")]
    #[case::svc("etl-scheduler.team.svc")]
    #[case::fqdn("etl-scheduler.team.svc.cluster.local")]
    #[case::port_forward("127.0.0.1")]
    fn the_certificate_verifies_as_server_under_every_name(#[case] name: &str) {
        let tls = issued();
        let now = UnixTime::since_unix_epoch(NOW);
        let server = rustls::client::WebPkiServerVerifier::builder_with_provider(
            roots(&tls.ca_pem),
            provider(),
        )
        .build()
        .unwrap();
        server
            .verify_server_cert(
                &der(&tls.cert_pem),
                &[],
                &ServerName::try_from(name.to_owned()).unwrap(),
                &[],
                now,
            )
            .unwrap();
        let client = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots(&tls.ca_pem),
            provider(),
        )
        .build()
        .unwrap();
        client
            .verify_client_cert(&der(&tls.cert_pem), &[], now)
            .unwrap();
    }

    /// A handshake as Dask's listeners do it (the CA's certificate required of the peer):
    /// a client with the cluster's certificate is in; one with none, or with another
    /// cluster's, is refused during the handshake.
    #[rstest]
    #[case::with_the_certificate(Some(false), true)]
    #[case::without_a_certificate(None, false)]
    #[case::with_another_clusters_certificate(Some(true), false)]
    #[tokio::test]
    async fn only_a_client_with_the_clusters_certificate_completes_the_handshake(
        #[case] client_cert: Option<bool>,
        #[case] accepted: bool,
    ) {
        let tls = ClusterTls::issue("etl", "team", SystemTime::now()).unwrap();
        let other = ClusterTls::issue("other", "team", SystemTime::now()).unwrap();
        let key = |pem: &str| PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap();
        let server_config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    roots(&tls.ca_pem),
                    provider(),
                )
                .build()
                .unwrap(),
            )
            .with_single_cert(vec![der(&tls.cert_pem)], key(&tls.key_pem))
            .unwrap();
        let client_builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots(&tls.ca_pem));
        let client_config = match client_cert {
            None => client_builder.with_no_client_auth(),
            Some(foreign) => {
                let set = if foreign { &other } else { &tls };
                client_builder
                    .with_client_auth_cert(vec![der(&set.cert_pem)], key(&set.key_pem))
                    .unwrap()
            }
        };
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
        // The server echoes one byte: the client reads it back only through a completed
        // handshake, and keeps its end open meanwhile.
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut stream = acceptor.accept(server_io).await?;
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await?;
            stream.write_all(&byte).await?;
            stream.flush().await?;
            Ok::<(), std::io::Error>(())
        });
        let client = async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut stream = connector
                .connect(ServerName::try_from("127.0.0.1").unwrap(), client_io)
                .await?;
            stream.write_all(&[42]).await?;
            stream.flush().await?;
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await?;
            Ok::<u8, std::io::Error>(byte[0])
        };
        let echoed = tokio::time::timeout(Duration::from_secs(10), client)
            .await
            .unwrap();
        let served = server.await.unwrap();
        assert_eq!(
            echoed.as_ref().is_ok_and(|b| *b == 42),
            accepted,
            "client: {echoed:?}, server: {served:?}"
        );
        assert_eq!(served.is_ok(), accepted, "server: {served:?}");
    }

    #[test]
    fn the_secret_round_trips_and_is_owned_by_the_scheduler_pod() {
        let tls = issued();
        let owner = Owner {
            name: "etl".into(),
            uid: "uid-1".into(),
        };
        let secret = tls.secret("etl", "team", "alice", &owner);
        assert_eq!(secret["metadata"]["name"], "etl-tls");
        assert_eq!(secret["type"], "kubernetes.io/tls");
        assert_eq!(secret["immutable"], true);
        assert_eq!(secret["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        assert_eq!(secret["metadata"]["labels"]["dask.org/cluster-name"], "etl");
        let typed: k8s_openapi::api::core::v1::Secret =
            serde_json::from_value(secret.clone()).unwrap();
        let data = typed.data.unwrap();
        assert_eq!(ClusterTls::from_secret_data("etl", &data).unwrap(), tls);
        let mut missing = data.clone();
        missing.remove(KEY_KEY);
        let err = ClusterTls::from_secret_data("etl", &missing).unwrap_err();
        assert!(err.to_string().contains("has no tls.key"), "{err}");
    }

    #[test]
    fn the_debug_form_never_shows_the_key() {
        let tls = issued();
        let shown = format!("{tls:?}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    }
}
