//! A proxy in front of the local cluster's API server that loses answers: it forwards every
//! request (HTTP/2, and HTTP/1.1 with the upgrades port-forward uses), and for the first
//! `losses` `POST .../pods` it waits for the API server's answer, so the pod is stored, and
//! then cuts the stream (HTTP/2 `RST_STREAM`, HTTP/1.1 connection closed) instead of
//! passing the answer on: the client sees a create whose outcome it cannot know. dask-kube
//! is pointed at it through a copy of the cluster's kubeconfig ([`LossyProxy::kubeconfig`]).

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

type Upstream = Client<hyper_rustls::HttpsConnector<HttpConnector>, Incoming>;
type Answer = http::Response<BoxBody<Bytes, hyper::Error>>;

/// The proxy; stops when dropped.
pub struct LossyProxy {
    /// The copy of the cluster's kubeconfig that points at the proxy.
    pub kubeconfig: PathBuf,
    lost: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl LossyProxy {
    /// Starts a proxy of the cluster whose kubeconfig is at `kubeconfig` on 127.0.0.1 that
    /// loses the answers of the first `losses` pod creations; its kubeconfig copy (and its
    /// certificate) go into `dir`.
    pub async fn start(kubeconfig: &Path, losses: usize, dir: &Path) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let text = std::fs::read_to_string(kubeconfig).unwrap();
        let parsed = kube::config::Kubeconfig::from_yaml(&text).unwrap();
        let config = kube::Config::from_custom_kubeconfig(
            parsed.clone(),
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .unwrap();
        let upstream_url = config.cluster_url.clone();
        let mut roots = rustls::RootCertStore::empty();
        for der in config.root_cert.clone().unwrap_or_default() {
            roots.add(der.into()).unwrap();
        }
        let tls = || {
            rustls::ClientConfig::builder()
                .with_root_certificates(roots.clone())
                .with_no_client_auth()
        };
        let connector = |h2: bool| {
            let mut http = HttpConnector::new();
            http.enforce_http(false);
            let builder = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls())
                .https_only();
            if h2 {
                builder.enable_all_versions().wrap_connector(http)
            } else {
                builder.enable_http1().wrap_connector(http)
            }
        };
        let http2: Upstream = Client::builder(TokioExecutor::new()).build(connector(true));
        let http1: Upstream = Client::builder(TokioExecutor::new()).build(connector(false));

        // The proxy's own certificate, trusted by the kubeconfig copy.
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let cert_file = dir.join("proxy.crt");
        std::fs::write(&cert_file, cert.cert.pem()).unwrap();
        let mut server_tls = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into()),
            )
            .unwrap();
        server_tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();

        let mut copy = parsed;
        for named in &mut copy.clusters {
            if let Some(cluster) = named.cluster.as_mut() {
                cluster.server = Some(format!("https://{address}"));
                cluster.certificate_authority_data = None;
                cluster.certificate_authority = Some(cert_file.display().to_string());
            }
        }
        let copy_path = dir.join("proxied.kubeconfig");
        std::fs::write(&copy_path, serde_norway::to_string(&copy).unwrap()).unwrap();

        let lost = Arc::new(AtomicUsize::new(0));
        let shared = Arc::new(Shared {
            upstream_url,
            http2,
            http1,
            losses,
            lost: lost.clone(),
        });
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let shared = shared.clone();
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |request| {
                        let shared = shared.clone();
                        async move { shared.forward(request).await }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        LossyProxy {
            kubeconfig: copy_path,
            lost,
            task,
        }
    }

    /// Answers lost so far.
    pub fn lost(&self) -> usize {
        self.lost.load(Ordering::SeqCst)
    }
}

impl Drop for LossyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Shared {
    upstream_url: http::Uri,
    http2: Upstream,
    http1: Upstream,
    losses: usize,
    lost: Arc<AtomicUsize>,
}

/// Whether a request creates a pod: `POST /api/v1/namespaces/<ns>/pods`.
fn creates_a_pod(request: &http::Request<Incoming>) -> bool {
    let segments: Vec<&str> = request.uri().path().trim_matches('/').split('/').collect();
    request.method() == http::Method::POST
        && matches!(segments.as_slice(), ["api", "v1", "namespaces", _, "pods"])
}

impl Shared {
    async fn forward(
        &self,
        mut request: http::Request<Incoming>,
    ) -> Result<Answer, std::io::Error> {
        let path = request
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default();
        let mut parts = self.upstream_url.clone().into_parts();
        parts.path_and_query = Some(path.parse().map_err(std::io::Error::other)?);
        *request.uri_mut() = http::Uri::from_parts(parts).map_err(std::io::Error::other)?;
        request.headers_mut().remove(http::header::HOST);
        let upgrade = request.headers().contains_key(http::header::UPGRADE);
        if upgrade {
            // Port-forward: HTTP/1.1 both ways, then the two upgraded connections joined.
            *request.version_mut() = http::Version::HTTP_11;
            let downstream = hyper::upgrade::on(&mut request);
            let mut answer = self
                .http1
                .request(request)
                .await
                .map_err(std::io::Error::other)?;
            if answer.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                let upstream = hyper::upgrade::on(&mut answer);
                tokio::spawn(async move {
                    if let (Ok(down), Ok(up)) = (downstream.await, upstream.await) {
                        let _ = tokio::io::copy_bidirectional(
                            &mut TokioIo::new(down),
                            &mut TokioIo::new(up),
                        )
                        .await;
                    }
                });
            }
            return Ok(answer.map(|b| b.boxed()));
        }
        let lose = creates_a_pod(&request)
            && self
                .lost
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    (n < self.losses).then_some(n + 1)
                })
                .is_ok();
        *request.version_mut() = http::Version::HTTP_2;
        let answer = self
            .http2
            .request(request)
            .await
            .map_err(std::io::Error::other)?;
        if lose {
            // The API server answered (the pod is stored); the answer never arrives.
            let status = answer.status();
            let _ = answer.into_body().collect().await;
            return Err(std::io::Error::other(format!(
                "answer {status} to a pod creation lost on purpose"
            )));
        }
        Ok(answer.map(|b| b.boxed()))
    }
}
