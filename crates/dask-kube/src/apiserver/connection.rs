//! Credentials and the connection they give: [`KubeConnection`] is a client with the
//! namespace its credentials default to and the server it talks to, named, so the three
//! never swap silently. Where credentials come from is a [`Credentials`] value the shells
//! fill from their arguments (`--kubeconfig`/`--context`, Python's `auth=`).

use super::http2::build_client;
use crate::{Error, Result};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use std::path::{Path, PathBuf};

/// The service account token of a pod (its presence means "running in a pod").
const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// The service account's namespace inside a pod.
const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// A Kubernetes client, the namespace its credentials default to (service account
/// namespace, kubeconfig context, or `default`), and the server URL (for messages).
#[derive(Clone)]
pub struct KubeConnection {
    /// The client (HTTP/2 to the API server, see [`build_client`]).
    pub client: Client,
    /// The credentials' default namespace; a cluster request or `--namespace` overrides it.
    pub namespace: String,
    /// The API server's URL.
    pub server_url: String,
}

impl std::fmt::Debug for KubeConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeConnection")
            .field("namespace", &self.namespace)
            .field("server_url", &self.server_url)
            .finish_non_exhaustive()
    }
}

/// Where credentials come from, as dask-kubernetes' `auth=` lists them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Credentials {
    /// The in-cluster service account inside a pod, else `$KUBECONFIG` / `~/.kube/config`
    /// (classic's `[InCluster(), KubeConfig()]`).
    #[default]
    Default,
    /// The pod's service account only (`InCluster()`).
    InCluster,
    /// A kubeconfig file and/or context (`KubeConfig(config_file=, context=)`,
    /// `--kubeconfig`, `--context`); `None` means `$KUBECONFIG` or `~/.kube/config` and its
    /// current context.
    Kubeconfig {
        /// The file.
        #[serde(default)]
        path: Option<PathBuf>,
        /// The context.
        #[serde(default)]
        context: Option<String>,
    },
    /// An explicit server and credentials (`KubeAuth(host=, ...)`).
    Explicit(ExplicitCredentials),
}

/// A server and how to authenticate to it, given field by field (classic's `KubeAuth`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExplicitCredentials {
    /// The API server URL (`https://host:6443`).
    pub host: String,
    /// A bearer token.
    pub token: Option<String>,
    /// HTTP basic user name.
    pub username: Option<String>,
    /// HTTP basic password.
    pub password: Option<String>,
    /// A PEM file of the CA that signed the server's certificate.
    pub ssl_ca_cert: Option<PathBuf>,
    /// A PEM client certificate file.
    pub cert_file: Option<PathBuf>,
    /// Its key file.
    pub key_file: Option<PathBuf>,
    /// `false` skips verifying the server's certificate.
    pub verify_ssl: Option<bool>,
    /// The namespace to default to (else `default`).
    pub namespace: Option<String>,
}

/// Selects rustls' ring provider for TLS to the API server (the workspace builds rustls
/// with ring only; naming it keeps working if another provider gets compiled in).
pub fn install_crypto_provider() {
    // Already installed (by us or the embedding program) is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn running_in_a_pod() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        && Path::new(SERVICE_ACCOUNT_TOKEN).exists()
}

impl KubeConnection {
    /// A connection from parts (an embedding program's own client, a mock in tests).
    pub fn new(
        client: Client,
        namespace: impl Into<String>,
        server_url: impl Into<String>,
    ) -> Self {
        KubeConnection {
            client,
            namespace: namespace.into(),
            server_url: server_url.into(),
        }
    }

    /// The same client working in `namespace`.
    #[must_use]
    pub fn in_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Opens a connection with `credentials`.
    ///
    /// # Example
    /// ```no_run
    /// # async fn f() -> dask_kube::Result<()> {
    /// use dask_kube::{Credentials, KubeConnection};
    /// let connection = KubeConnection::open(&Credentials::Kubeconfig {
    ///     path: None,
    ///     context: Some("kind-dask".into()),
    /// })
    /// .await?;
    /// println!("{} in {}", connection.server_url, connection.namespace);
    /// # Ok(()) }
    /// ```
    pub async fn open(credentials: &Credentials) -> Result<Self> {
        install_crypto_provider();
        let config = match credentials {
            Credentials::Default if running_in_a_pod() => in_cluster_config()?,
            Credentials::Default => kubeconfig_config(None, None).await?,
            Credentials::InCluster => in_cluster_config()?,
            Credentials::Kubeconfig { path, context } => {
                kubeconfig_config(path.as_deref(), context.as_deref()).await?
            }
            Credentials::Explicit(explicit) => explicit_config(explicit)?,
        };
        Self::from_config(config)
    }

    /// Opens the first of `candidates` that loads (classic's `ClusterAuth.load_first`);
    /// the last failure when none does. An empty list is [`Credentials::Default`].
    pub async fn open_first(candidates: &[Credentials]) -> Result<Self> {
        let mut last = None;
        for credentials in candidates {
            match Self::open(credentials).await {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        match last {
            Some(e) => Err(e),
            None => Self::open(&Credentials::Default).await,
        }
    }

    /// A connection from a kube `Config` (its default namespace and cluster URL).
    pub fn from_config(config: Config) -> Result<Self> {
        let namespace = config.default_namespace.clone();
        let server_url = config.cluster_url.to_string();
        Ok(KubeConnection {
            client: build_client(config)?,
            namespace,
            server_url,
        })
    }
}

fn in_cluster_config() -> Result<Config> {
    Config::incluster().map_err(|e| Error::Credentials {
        reason: format!("in-cluster service account: {e}"),
    })
}

async fn kubeconfig_config(path: Option<&Path>, context: Option<&str>) -> Result<Config> {
    let options = KubeConfigOptions {
        context: context.map(str::to_owned),
        ..KubeConfigOptions::default()
    };
    let in_context = context.map_or(String::new(), |c| format!(" (context {c:?})"));
    let file = path.map_or_else(
        || "from $KUBECONFIG or ~/.kube/config".to_owned(),
        |p| p.display().to_string(),
    );
    let loaded = match path {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path).map_err(|e| Error::Credentials {
                reason: format!("kubeconfig {}: {e}", path.display()),
            })?;
            Config::from_custom_kubeconfig(kubeconfig, &options).await
        }
        None => Config::from_kubeconfig(&options).await,
    };
    loaded.map_err(|e| Error::Credentials {
        reason: format!("kubeconfig {file}{in_context}: {e}"),
    })
}

fn explicit_config(explicit: &ExplicitCredentials) -> Result<Config> {
    let invalid = |reason: String| Error::Credentials {
        reason: format!("KubeAuth(host={:?}): {reason}", explicit.host),
    };
    let url = explicit
        .host
        .parse::<http::Uri>()
        .map_err(|e| invalid(format!("not a URL: {e}")))?;
    let mut config = Config::new(url);
    config.default_namespace = explicit
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    config.accept_invalid_certs = explicit.verify_ssl == Some(false);
    let read =
        |path: &Path| std::fs::read(path).map_err(|e| invalid(format!("{}: {e}", path.display())));
    if let Some(ca) = &explicit.ssl_ca_cert {
        config.root_cert = Some(pem_certificates(&read(ca)?).map_err(invalid)?);
    }
    let mut auth = kube::config::AuthInfo::default();
    if let Some(token) = &explicit.token {
        auth.token = Some(token.clone().into());
    }
    auth.username.clone_from(&explicit.username);
    if let Some(password) = &explicit.password {
        auth.password = Some(password.clone().into());
    }
    if let Some(cert) = &explicit.cert_file {
        auth.client_certificate = Some(cert.display().to_string());
    }
    if let Some(key) = &explicit.key_file {
        auth.client_key = Some(key.display().to_string());
    }
    config.auth_info = auth;
    Ok(config)
}

/// The DER certificates of a PEM bundle.
fn pem_certificates(pem: &[u8]) -> std::result::Result<Vec<Vec<u8>>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let certificates = CertificateDer::pem_slice_iter(pem)
        .map(|c| c.map(|c| c.as_ref().to_vec()))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| format!("the CA file is not PEM: {e}"))?;
    if certificates.is_empty() {
        return Err("the CA file holds no PEM certificate".into());
    }
    Ok(certificates)
}

/// The default namespace without contacting the cluster (for `render`): the service
/// account's namespace file, the kubeconfig context's namespace, or `default`.
pub fn offline_default_namespace(credentials: &Credentials) -> String {
    if matches!(credentials, Credentials::Default | Credentials::InCluster)
        && let Ok(ns) = std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE)
        && !ns.trim().is_empty()
    {
        return ns.trim().to_owned();
    }
    let (path, context) = match credentials {
        Credentials::Kubeconfig { path, context } => (path.clone(), context.clone()),
        Credentials::Explicit(e) => {
            return e.namespace.clone().unwrap_or_else(|| "default".to_owned());
        }
        _ => (None, None),
    };
    let kubeconfig = match path {
        Some(p) => Kubeconfig::read_from(p).ok(),
        None => Kubeconfig::read().ok(),
    };
    kubeconfig
        .and_then(|config| {
            let wanted = context.or_else(|| config.current_context.clone())?;
            config
                .contexts
                .into_iter()
                .find(|c| c.name == wanted)
                .and_then(|c| c.context)
                .and_then(|c| c.namespace)
        })
        .unwrap_or_else(|| "default".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const KUBECONFIG: &str = "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: 'https://127.0.0.1:6443'}\n- name: d\n  cluster: {server: 'https://127.0.0.2:6443'}\nusers:\n- name: u\n  user: {token: t}\ncontexts:\n- name: one\n  context: {cluster: c, user: u, namespace: team-one}\n- name: two\n  context: {cluster: d, user: u}\ncurrent-context: one\n";

    fn kubeconfig_file() -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(file.path(), KUBECONFIG).unwrap_or_else(|e| panic!("{e}"));
        file
    }

    #[rstest]
    #[case::current_context(None, "https://127.0.0.1:6443/", "team-one")]
    #[case::named_context(Some("two"), "https://127.0.0.2:6443/", "default")]
    #[tokio::test]
    async fn a_kubeconfig_and_context_name_server_and_namespace(
        #[case] context: Option<&str>,
        #[case] server: &str,
        #[case] namespace: &str,
    ) {
        let file = kubeconfig_file();
        let credentials = Credentials::Kubeconfig {
            path: Some(file.path().to_owned()),
            context: context.map(str::to_owned),
        };
        let connection = KubeConnection::open(&credentials)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(connection.server_url, server);
        assert_eq!(connection.namespace, namespace);
        assert_eq!(offline_default_namespace(&credentials), namespace);
    }

    #[rstest]
    #[case::missing_file(Credentials::Kubeconfig { path: Some("/nonexistent/kubeconfig".into()), context: None }, "/nonexistent/kubeconfig")]
    #[case::unknown_context(Credentials::Kubeconfig { path: None, context: Some("nope".into()) }, "context \"nope\"")]
    #[case::explicit_bad_url(Credentials::Explicit(ExplicitCredentials { host: "not a url".into(), ..Default::default() }), "KubeAuth(host=\"not a url\")")]
    #[tokio::test]
    async fn credentials_that_do_not_load_say_which(
        #[case] credentials: Credentials,
        #[case] needle: &str,
    ) {
        let file = kubeconfig_file();
        let credentials = match credentials {
            Credentials::Kubeconfig {
                path: None,
                context,
            } => Credentials::Kubeconfig {
                path: Some(file.path().to_owned()),
                context,
            },
            other => other,
        };
        let err = KubeConnection::open(&credentials).await.unwrap_err();
        assert_eq!(err.exit_code(), crate::error::exit::USAGE);
        assert!(err.to_string().contains(needle), "{err}");
    }

    #[tokio::test]
    async fn the_first_credentials_that_load_win() {
        let file = kubeconfig_file();
        let connection = KubeConnection::open_first(&[
            Credentials::Kubeconfig {
                path: Some("/nonexistent".into()),
                context: None,
            },
            Credentials::Kubeconfig {
                path: Some(file.path().to_owned()),
                context: Some("two".into()),
            },
        ])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(connection.server_url, "https://127.0.0.2:6443/");
    }

    #[tokio::test]
    async fn explicit_credentials_name_the_server_and_namespace() {
        let connection = KubeConnection::open(&Credentials::Explicit(ExplicitCredentials {
            host: "https://10.0.0.1:6443".into(),
            token: Some("secret".into()),
            namespace: Some("team".into()),
            ..Default::default()
        }))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(connection.server_url, "https://10.0.0.1:6443/");
        assert_eq!(connection.namespace, "team");
    }

    #[test]
    fn pem_bundles_decode_to_der() {
        // "hello" base64-encoded, in a PEM frame.
        let pem = b"-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n";
        assert_eq!(pem_certificates(pem), Ok(vec![b"hello".to_vec()]));
        assert!(pem_certificates(b"nothing").is_err());
    }
}
