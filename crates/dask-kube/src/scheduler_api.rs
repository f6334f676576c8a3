//! The Dask scheduler's HTTP API (port 8787): the adaptive target, the connected workers and
//! retiring them. Behind the [`SchedulerApi`] trait so scaling logic is tested with a fake;
//! [`HttpSchedulerApi`] speaks HTTP/1 over any [`Connect`]or: a port-forward stream (from
//! outside the cluster, and from inside when TLS keeps the HTTP port on the scheduler pod's
//! loopback), plain TCP to the Service from inside a cluster without TLS.

use crate::scaling::SchedulerWorker;
use crate::{Error, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Mutex;
use tracing::debug;

/// Bound on one ordinary API call.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on `retire_workers`: the scheduler moves the workers' data before answering.
pub const RETIRE_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest body quoted in an error.
const MAX_QUOTED_BODY: usize = 300;

/// What scaling needs from a Dask scheduler.
pub trait SchedulerApi: Send + Sync {
    /// The scheduler's desired number of workers.
    fn adaptive_target(&self) -> impl Future<Output = Result<u32>> + Send;
    /// The connected workers.
    fn workers(&self) -> impl Future<Output = Result<Vec<SchedulerWorker>>> + Send;
    /// Retires workers by address; returns the addresses the scheduler confirms retired.
    fn retire_workers(
        &self,
        addresses: &[String],
    ) -> impl Future<Output = Result<BTreeSet<String>>> + Send;
    /// Since when the scheduler has been idle (seconds since the epoch, `GET
    /// /api/v1/check_idle`), `None` while it has work or clients: what an idle timeout
    /// that the scheduler does not enforce itself (the operator's `spec.idleTimeout`)
    /// is measured with.
    fn idle_since(&self) -> impl Future<Output = Result<Option<f64>>> + Send;
    /// Where the scheduler is reached, for messages.
    fn endpoint(&self) -> String;
}

/// Opens byte streams to the scheduler's HTTP port.
pub trait Connect: Send + Sync + 'static {
    /// The stream.
    type Io: AsyncRead + AsyncWrite + Send + Unpin + 'static;
    /// Opens a new stream.
    fn connect(&self) -> impl Future<Output = Result<Self::Io>> + Send;
    /// Where it connects, for messages (`pod/x:8787 via port-forward`).
    fn describe(&self) -> String;
}

/// Plain TCP to `host:port` (the Service from inside the cluster, or a scheduler that runs
/// elsewhere).
#[derive(Debug, Clone)]
pub struct TcpConnect {
    /// `host:port`.
    pub address: String,
}

impl Connect for TcpConnect {
    type Io = tokio::net::TcpStream;

    async fn connect(&self) -> Result<Self::Io> {
        tokio::net::TcpStream::connect(&self.address)
            .await
            .map_err(|e| Error::SchedulerUnreachable {
                endpoint: self.describe(),
                reason: e.to_string(),
            })
    }

    fn describe(&self) -> String {
        format!("http://{}", self.address)
    }
}

/// The scheduler's HTTP API over a [`Connect`]or, keeping one HTTP/1 connection alive
/// between calls (a port-forward stream costs a round trip to the API server to open).
pub struct HttpSchedulerApi<C: Connect> {
    connector: C,
    connection: Mutex<Option<SendRequest<Full<Bytes>>>>,
    request_timeout: Duration,
    retire_timeout: Duration,
}

impl<C: Connect> HttpSchedulerApi<C> {
    /// A client that connects through `connector`.
    pub fn new(connector: C) -> Self {
        HttpSchedulerApi {
            connector,
            connection: Mutex::new(None),
            request_timeout: REQUEST_TIMEOUT,
            retire_timeout: RETIRE_TIMEOUT,
        }
    }

    /// Other bounds than [`REQUEST_TIMEOUT`] and [`RETIRE_TIMEOUT`] (a test's scheduler that
    /// never answers need not take 300 s to say so).
    #[must_use]
    pub fn with_timeouts(mut self, request: Duration, retire: Duration) -> Self {
        self.request_timeout = request;
        self.retire_timeout = retire;
        self
    }

    async fn open(&self) -> Result<SendRequest<Full<Bytes>>> {
        let io = self.connector.connect().await?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| self.unreachable(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(error = %e, "scheduler HTTP connection ended");
            }
        });
        Ok(sender)
    }

    fn unreachable(&self, reason: String) -> Error {
        Error::SchedulerUnreachable {
            endpoint: self.connector.describe(),
            reason,
        }
    }

    /// Sends one request; reconnects once when the kept connection turns out closed. A
    /// new connection that fails is not retried: while the scheduler starts, every poll
    /// would otherwise cost two port-forwards (two handshakes through the apiserver).
    async fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> Result<Value> {
        let work = async {
            let mut guard = self.connection.lock().await;
            for attempt in 0..2 {
                let (mut sender, kept) = match guard.take() {
                    Some(s) if !s.is_closed() => (s, true),
                    _ => (self.open().await?, false),
                };
                let may_retry = attempt == 0 && kept;
                if sender.ready().await.is_err() {
                    if may_retry {
                        continue;
                    }
                    return Err(self.unreachable("the connection closed".into()));
                }
                let payload = body.as_ref().map(Value::to_string).unwrap_or_default();
                let request = http::Request::builder()
                    .method(method.clone())
                    .uri(path)
                    .header(http::header::HOST, "scheduler")
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from(payload)))
                    .map_err(|e| self.unreachable(e.to_string()))?;
                let response = match sender.send_request(request).await {
                    Ok(r) => r,
                    // A kept-alive connection the server closed meanwhile: retry on a new one.
                    Err(e)
                        if may_retry
                            && (e.is_canceled() || e.is_closed() || e.is_incomplete_message()) =>
                    {
                        continue;
                    }
                    Err(e) => return Err(self.unreachable(e.to_string())),
                };
                let status = response.status();
                let bytes = response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| self.unreachable(e.to_string()))?
                    .to_bytes();
                *guard = Some(sender);
                if !status.is_success() {
                    let text = String::from_utf8_lossy(&bytes);
                    return Err(Error::SchedulerHttp {
                        path: path.to_owned(),
                        status: status.as_u16(),
                        body: text.chars().take(MAX_QUOTED_BODY).collect(),
                    });
                }
                return serde_json::from_slice(&bytes).map_err(|source| Error::SchedulerAnswer {
                    path: path.to_owned(),
                    source,
                });
            }
            Err(self.unreachable("the connection closed".into()))
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| Error::Timeout {
                what: format!(
                    "the Dask scheduler to answer {path} at {}",
                    self.connector.describe()
                ),
                seconds: timeout.as_secs(),
            })?
    }

    async fn get<T: for<'de> Deserialize<'de>>(&self, path: &str) -> Result<T> {
        let value = self
            .call(http::Method::GET, path, None, self.request_timeout)
            .await?;
        serde_json::from_value(value).map_err(|source| Error::SchedulerAnswer {
            path: path.to_owned(),
            source,
        })
    }
}

/// `check_idle`'s answer: `{"idle_since": 1700000000.5}` is `Some`, `{"idle_since": null}`
/// `None`; anything else is not the scheduler's answer.
fn parse_idle_since(path: &str, answer: &Value) -> Result<Option<f64>> {
    let refused = |body: String| Error::SchedulerHttp {
        path: path.to_owned(),
        status: 200,
        body,
    };
    match answer.get("idle_since") {
        Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| refused(format!("idle_since {v} is not a number"))),
        None => Err(refused(format!("{answer} has no idle_since"))),
    }
}

#[derive(Deserialize)]
struct AdaptiveTarget {
    workers: u32,
}

#[derive(Deserialize)]
struct Counts {
    desired_workers: u32,
}

#[derive(Deserialize)]
struct GetWorkers {
    workers: Vec<NamedWorker>,
}

#[derive(Deserialize)]
struct NamedWorker {
    name: Value,
    address: String,
}

#[derive(Deserialize, Default)]
struct Identity {
    #[serde(default)]
    workers: BTreeMap<String, WorkerIdentity>,
}

#[derive(Deserialize, Default)]
struct WorkerIdentity {
    #[serde(default)]
    metrics: WorkerMetrics,
    /// The nanny's address (`null` for a worker without one).
    nanny: Option<String>,
}

#[derive(Deserialize, Default)]
struct WorkerMetrics {
    managed_bytes: Option<u64>,
    task_counts: Option<BTreeMap<String, u64>>,
}

/// Dask worker names are strings or numbers.
fn name_text(name: &Value) -> String {
    match name {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Merges `get_workers` with the `identity.json` metrics (pure, for tests).
fn merge_workers(listed: Vec<NamedWorker>, identity: &Identity) -> Vec<SchedulerWorker> {
    listed
        .into_iter()
        .map(|w| {
            let known = identity.workers.get(&w.address);
            let metrics = known.map(|i| &i.metrics);
            SchedulerWorker {
                name: name_text(&w.name),
                nanny: known.and_then(|i| i.nanny.clone()),
                managed_bytes: metrics.and_then(|m| m.managed_bytes),
                busy: metrics.and_then(|m| m.task_counts.as_ref()).map(|counts| {
                    ["executing", "ready", "constrained", "long-running"]
                        .iter()
                        .any(|k| counts.get(*k).copied().unwrap_or(0) > 0)
                }),
                address: w.address,
            }
        })
        .collect()
}

impl<C: Connect> SchedulerApi for HttpSchedulerApi<C> {
    async fn adaptive_target(&self) -> Result<u32> {
        match self.get::<AdaptiveTarget>("/api/v1/adaptive_target").await {
            Ok(t) => Ok(t.workers),
            // The JSON API is off (a scheduler template that replaced the routes): the
            // default routes still carry the target.
            Err(Error::SchedulerHttp { status: 404, .. }) => Ok(self
                .get::<Counts>("/json/counts.json")
                .await?
                .desired_workers),
            Err(e) => Err(e),
        }
    }

    async fn workers(&self) -> Result<Vec<SchedulerWorker>> {
        let listed: GetWorkers = self.get("/api/v1/get_workers").await?;
        // Metrics only rank which workers to retire; without them every worker ranks the same.
        let identity = match self.get::<Identity>("/json/identity.json").await {
            Ok(i) => i,
            Err(e) => {
                debug!(error = %e, "no worker metrics from /json/identity.json");
                Identity::default()
            }
        };
        Ok(merge_workers(listed.workers, &identity))
    }

    async fn retire_workers(&self, addresses: &[String]) -> Result<BTreeSet<String>> {
        if addresses.is_empty() {
            return Ok(BTreeSet::new());
        }
        let answer = self
            .call(
                http::Method::POST,
                "/api/v1/retire_workers",
                Some(serde_json::json!({ "workers": addresses })),
                self.retire_timeout,
            )
            .await?;
        match answer {
            Value::Object(map) => Ok(map.keys().cloned().collect()),
            other => Err(Error::SchedulerHttp {
                path: "/api/v1/retire_workers".into(),
                status: 200,
                body: format!("expected a mapping of retired workers, got {other}"),
            }),
        }
    }

    async fn idle_since(&self) -> Result<Option<f64>> {
        const PATH: &str = "/api/v1/check_idle";
        let answer = self
            .call(http::Method::GET, PATH, None, self.request_timeout)
            .await?;
        parse_idle_since(PATH, &answer)
    }

    fn endpoint(&self) -> String {
        self.connector.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const GET_WORKERS: &str = include_str!("../tests/fixtures/scheduler/get_workers.json");
    const IDENTITY: &str = include_str!("../tests/fixtures/scheduler/identity.json");
    const RETIRE: &str = include_str!("../tests/fixtures/scheduler/retire.json");
    const ADAPTIVE: &str = include_str!("../tests/fixtures/scheduler/adaptive_target.json");
    const COUNTS: &str = include_str!("../tests/fixtures/scheduler/counts.json");

    type Routes = Arc<dyn Fn(&str, &str, &str) -> (u16, String) + Send + Sync>;

    /// A real HTTP server on 127.0.0.1 answering like the scheduler; counts connections.
    async fn serve(routes: Routes) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                let routes = routes.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let routes = routes.clone();
                            async move {
                                let method = req.method().to_string();
                                let path = req.uri().path().to_owned();
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                let (status, text) =
                                    routes(&method, &path, &String::from_utf8_lossy(&body));
                                Ok::<_, std::convert::Infallible>(
                                    http::Response::builder()
                                        .status(status)
                                        .body(Full::new(Bytes::from(text)))
                                        .unwrap(),
                                )
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (addr, connections)
    }

    fn api(addr: SocketAddr) -> HttpSchedulerApi<TcpConnect> {
        HttpSchedulerApi::new(TcpConnect {
            address: addr.to_string(),
        })
    }

    fn scheduler_routes() -> Routes {
        Arc::new(|method, path, body| match (method, path) {
            ("GET", "/api/v1/adaptive_target") => (200, ADAPTIVE.into()),
            ("GET", "/api/v1/get_workers") => (200, GET_WORKERS.into()),
            ("GET", "/json/identity.json") => (200, IDENTITY.into()),
            ("POST", "/api/v1/retire_workers") => {
                let asked: Value = serde_json::from_str(body).unwrap();
                assert_eq!(
                    asked,
                    serde_json::json!({"workers": ["tcp://127.0.0.1:38473"]})
                );
                (200, RETIRE.into())
            }
            _ => (404, "404: Not Found".into()),
        })
    }

    #[tokio::test]
    async fn reads_target_and_workers_over_one_connection() {
        let (addr, connections) = serve(scheduler_routes()).await;
        let api = api(addr);
        assert_eq!(api.adaptive_target().await.unwrap(), 6);
        let workers = api.workers().await.unwrap();
        assert_eq!(
            workers.iter().map(|w| w.name.as_str()).collect::<Vec<_>>(),
            ["wpod-multi-0", "wpod-multi-1", "wpod-abcde"]
        );
        assert_eq!(workers[2].address, "tcp://127.0.0.1:38473");
        assert_eq!(workers[0].managed_bytes, Some(933_464));
        assert_eq!(workers[0].busy, Some(false));
        assert_eq!(workers[0].nanny.as_deref(), Some("tcp://127.0.0.1:36115"));
        assert_eq!(
            connections.load(Ordering::SeqCst),
            1,
            "the connection is kept alive"
        );
    }

    /// `check_idle` as distributed's HTTP API answers it: a timestamp while idle, `null`
    /// while busy; anything else is refused, never read as "idle since 0".
    #[rstest::rstest]
    #[case::idle(r#"{"idle_since": 1700000000.5}"#, Some(Some(1_700_000_000.5)))]
    #[case::busy(r#"{"idle_since": null}"#, Some(None))]
    #[case::integer(r#"{"idle_since": 17}"#, Some(Some(17.0)))]
    #[case::no_field(r#"{"x": 1}"#, None)]
    #[case::a_string(r#"{"idle_since": "soon"}"#, None)]
    #[case::not_an_object("[]", None)]
    fn idle_since_is_read(#[case] answer: &str, #[case] expected: Option<Option<f64>>) {
        let answer: Value = serde_json::from_str(answer).unwrap();
        let read = parse_idle_since("/api/v1/check_idle", &answer);
        match expected {
            Some(since) => assert_eq!(read.unwrap(), since),
            None => assert!(
                matches!(read, Err(Error::SchedulerHttp { status: 200, .. })),
                "{read:?}"
            ),
        }
    }

    #[tokio::test]
    async fn idle_since_asks_check_idle() {
        let (addr, _) = serve(Arc::new(|method, path, _| match (method, path) {
            ("GET", "/api/v1/check_idle") => (200, r#"{"idle_since": 1700000000.25}"#.into()),
            _ => (404, "404: Not Found".into()),
        }))
        .await;
        assert_eq!(
            api(addr).idle_since().await.unwrap(),
            Some(1_700_000_000.25)
        );
    }

    #[tokio::test]
    async fn retire_returns_confirmed_addresses() {
        let (addr, _) = serve(scheduler_routes()).await;
        let retired = api(addr)
            .retire_workers(&["tcp://127.0.0.1:38473".into()])
            .await
            .unwrap();
        assert_eq!(
            retired,
            BTreeSet::from(["tcp://127.0.0.1:38473".to_owned()])
        );
    }

    #[tokio::test]
    async fn target_falls_back_to_counts_without_the_json_api() {
        let (addr, _) = serve(Arc::new(|_, path, _| match path {
            "/json/counts.json" => (200, COUNTS.into()),
            _ => (404, "404: Not Found".into()),
        }))
        .await;
        assert_eq!(api(addr).adaptive_target().await.unwrap(), 2);
    }

    #[tokio::test]
    async fn workers_without_metrics_still_listed() {
        let (addr, _) = serve(Arc::new(|_, path, _| match path {
            "/api/v1/get_workers" => (
                200,
                r#"{"num_workers": 1, "workers": [{"name": 0, "address": "tcp://a:1"}]}"#.into(),
            ),
            _ => (500, "boom".into()),
        }))
        .await;
        let workers = api(addr).workers().await.unwrap();
        assert_eq!(
            workers,
            vec![SchedulerWorker {
                name: "0".into(),
                address: "tcp://a:1".into(),
                nanny: None,
                managed_bytes: None,
                busy: None
            }]
        );
    }

    #[tokio::test]
    async fn errors_say_what_the_scheduler_answered() {
        let (addr, _) = serve(Arc::new(|_, path, _| match path {
            "/api/v1/get_workers" => (200, "not json".into()),
            _ => (500, r#"{"Error": "Internal Server Error"}"#.into()),
        }))
        .await;
        let api = api(addr);
        let err = api
            .retire_workers(&["tcp://x:1".into()])
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("answered 500 to /api/v1/retire_workers"),
            "{err}"
        );
        let err = api.workers().await.unwrap_err().to_string();
        assert!(
            err.contains("unexpected answer from the Dask scheduler to /api/v1/get_workers"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn unreachable_scheduler_names_the_endpoint() {
        // Bind then drop, so the port is (very likely) closed.
        let addr = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let err = api(addr).adaptive_target().await.unwrap_err().to_string();
        assert!(err.contains(&format!("http://{addr}")), "{err}");
        assert!(err.contains("unreachable"), "{err}");
    }

    #[tokio::test]
    async fn a_new_connection_that_fails_is_not_retried() {
        // As a port-forward to a scheduler not listening yet: accepted, then closed.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        });
        let api = api(addr);
        for polls in 1..=3 {
            let e = api.adaptive_target().await.unwrap_err();
            assert!(matches!(e, Error::SchedulerUnreachable { .. }), "{e}");
            assert_eq!(
                connections.load(Ordering::SeqCst),
                polls,
                "one connection per poll"
            );
        }
    }

    #[tokio::test]
    async fn reconnects_after_the_server_closes_the_connection() {
        let (addr, connections) = serve(scheduler_routes()).await;
        let api = api(addr);
        api.adaptive_target().await.unwrap();
        // Drop the kept connection as a server restart would.
        *api.connection.lock().await = None;
        api.adaptive_target().await.unwrap();
        assert_eq!(connections.load(Ordering::SeqCst), 2);
    }
}
