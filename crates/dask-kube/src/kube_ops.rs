//! The thin layer that talks to the Kubernetes API: credentials, batched pod creation with
//! bounded concurrency, a client-side rate limit and retries, deletions, waits, and the
//! translation of API errors into messages that say what to do (403 names the missing
//! permission, a missing namespace says so, an unreachable server names its URL).

use crate::{Error, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{Condition, await_condition};
use kube::{Client, Config};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::{debug, warn};

/// Field manager of the objects dask-kube applies.
pub const FIELD_MANAGER: &str = "dask-kube";
/// Field manager of the supervisor's annotations (applying nothing removes them).
pub const SUPERVISOR_FIELD_MANAGER: &str = "dask-kube-supervisor";
/// First retry delay.
pub const RETRY_INITIAL: Duration = Duration::from_millis(200);
/// Longest retry delay.
pub const RETRY_MAX_DELAY: Duration = Duration::from_secs(5);
/// Attempts per call (the first plus retries).
pub const RETRY_ATTEMPTS: u32 = 6;
/// Default number of pod creations in flight.
pub const DEFAULT_CREATE_CONCURRENCY: usize = 8;
/// Default client-side rate of pod creations per second (runaway scale-ups stay gentle on
/// the API server).
pub const DEFAULT_CREATE_RATE: f64 = 20.0;

/// How a batch of creations is paced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CreateLimits {
    /// Calls in flight.
    pub concurrency: usize,
    /// Calls started per second.
    pub rate_per_second: f64,
}

impl Default for CreateLimits {
    fn default() -> Self {
        CreateLimits {
            concurrency: DEFAULT_CREATE_CONCURRENCY,
            rate_per_second: DEFAULT_CREATE_RATE,
        }
    }
}

/// Selects rustls' ring provider for TLS to the API server (the workspace builds rustls
/// with ring only; naming it keeps working if another provider gets compiled in).
pub fn install_crypto_provider() {
    // Already installed (by us or the embedding program) is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Loads credentials: the in-cluster service account when running in a pod, else
/// `$KUBECONFIG` / `~/.kube/config`. Returns the client, its default namespace (service
/// account namespace file, kubeconfig context, or `default`) and the server URL.
pub async fn connect() -> Result<(Client, String, String)> {
    install_crypto_provider();
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        && std::path::Path::new("/var/run/secrets/kubernetes.io/serviceaccount/token").exists();
    let config = if in_cluster {
        Config::incluster().map_err(|e| Error::Credentials {
            reason: format!("in-cluster service account: {e}"),
        })?
    } else {
        Config::from_kubeconfig(&kube::config::KubeConfigOptions::default())
            .await
            .map_err(|e| Error::Credentials {
                reason: e.to_string(),
            })?
    };
    let namespace = config.default_namespace.clone();
    let url = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(|e| Error::Credentials {
        reason: e.to_string(),
    })?;
    Ok((client, namespace, url))
}

/// The default namespace without contacting the cluster (for `render`): the service
/// account's namespace file, the kubeconfig context's namespace, or `default`.
pub fn offline_default_namespace() -> String {
    if let Ok(ns) =
        std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        && !ns.trim().is_empty()
    {
        return ns.trim().to_owned();
    }
    kube::config::Kubeconfig::read()
        .ok()
        .and_then(|config| {
            let current = config.current_context.clone()?;
            config
                .contexts
                .into_iter()
                .find(|c| c.name == current)
                .and_then(|c| c.context)
                .and_then(|c| c.namespace)
        })
        .unwrap_or_else(|| "default".to_owned())
}

/// A short description of an API error (`403 Forbidden: pods is forbidden: ...`).
pub fn describe_kube_error(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => {
            format!("{} {}: {}", status.code, status.reason, status.message)
        }
        other => other.to_string(),
    }
}

/// Whether a call may succeed when repeated: throttling, server errors, conflicts (a
/// `generateName` collision), and transport errors.
pub fn is_retryable(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => matches!(status.code, 409 | 429 | 500 | 502 | 503 | 504),
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

fn is_transport(error: &kube::Error) -> bool {
    matches!(error, kube::Error::HyperError(_) | kube::Error::Service(_))
}

/// The API server's namespace, for errors about a call.
#[derive(Debug, Clone)]
pub struct CallSite<'a> {
    /// Verb (`create`, `list`, ...).
    pub verb: &'a str,
    /// Resource (`pods`, `services`, `pods/log`).
    pub resource: &'a str,
    /// Namespace.
    pub namespace: &'a str,
    /// Server URL.
    pub url: &'a str,
}

/// Turns an API error into this crate's error, by what it means to the user.
pub fn map_kube_error(error: kube::Error, at: &CallSite<'_>) -> Error {
    let action = format!("{} {} in namespace {}", at.verb, at.resource, at.namespace);
    if let kube::Error::Api(status) = &error {
        if status.code == 403 {
            // The server names what it checked (an apply that creates checks `create`).
            let (verb, resource) = forbidden_verb_resource(&status.message)
                .unwrap_or_else(|| (at.verb.to_owned(), at.resource.to_owned()));
            return Error::Forbidden {
                verb,
                resource,
                namespace: at.namespace.to_owned(),
                message: status.message.clone(),
            };
        }
        let about_namespace = status
            .details
            .as_ref()
            .is_some_and(|d| d.kind == "namespaces" && d.name == at.namespace);
        if status.code == 404 && about_namespace {
            return Error::NamespaceNotFound(at.namespace.to_owned());
        }
    }
    if is_transport(&error) {
        return Error::Unreachable {
            url: at.url.to_owned(),
            action,
            source: Box::new(error),
        };
    }
    Error::Kube {
        action,
        source: Box::new(error),
    }
}

/// `(verb, resource)` from an RBAC message: `... cannot create resource "services" ...`
/// (with `/subresource` when the message names one).
fn forbidden_verb_resource(message: &str) -> Option<(String, String)> {
    let rest = message.split_once("cannot ")?.1;
    let (verb, rest) = rest.split_once(' ')?;
    let rest = rest.strip_prefix("resource \"")?;
    let (resource, rest) = rest.split_once('"')?;
    let resource = match rest
        .split_once("subresource \"")
        .and_then(|(_, r)| r.split_once('"'))
    {
        Some((sub, _)) => format!("{resource}/{sub}"),
        None => resource.to_owned(),
    };
    Some((verb.to_owned(), resource))
}

/// Runs `call` until it succeeds, fails for good, or [`RETRY_ATTEMPTS`] are used, with
/// exponential backoff (honouring the server's `retryAfterSeconds`).
pub async fn with_retry<T, F, Fut>(what: &str, mut call: F) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let mut delay = RETRY_INITIAL;
    let mut attempt = 1;
    loop {
        match call().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt < RETRY_ATTEMPTS && is_retryable(&e) => {
                let server_hint = match &e {
                    kube::Error::Api(s) => s
                        .details
                        .as_ref()
                        .map(|d| Duration::from_secs(u64::from(d.retry_after_seconds)))
                        .filter(|d| !d.is_zero()),
                    _ => None,
                };
                let wait = server_hint.unwrap_or(delay).min(RETRY_MAX_DELAY);
                debug!(what, attempt, error = %describe_kube_error(&e), ?wait, "retrying");
                tokio::time::sleep(wait).await;
                delay = (delay * 2).min(RETRY_MAX_DELAY);
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Paces calls to a rate: each caller gets the next free slot.
#[derive(Debug)]
struct RateLimiter {
    next: Mutex<Instant>,
    spacing: Duration,
}

impl RateLimiter {
    fn new(rate_per_second: f64) -> Self {
        let spacing = if rate_per_second > 0.0 && rate_per_second.is_finite() {
            Duration::from_secs_f64(1.0 / rate_per_second)
        } else {
            Duration::ZERO
        };
        RateLimiter {
            next: Mutex::new(Instant::now()),
            spacing,
        }
    }

    async fn acquire(&self) {
        let slot = {
            let mut next = self.next.lock().await;
            let slot = (*next).max(Instant::now());
            *next = slot + self.spacing;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

/// The outcome of a batch: what succeeded and what failed, never silently.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BatchReport {
    /// Names done.
    pub done: Vec<String>,
    /// Failures, each `name: reason`.
    pub failed: Vec<String>,
}

impl BatchReport {
    /// An error when anything failed.
    pub fn into_result(self, action: &str) -> Result<Vec<String>> {
        if self.failed.is_empty() {
            Ok(self.done)
        } else {
            Err(Error::Partial {
                action: action.to_owned(),
                done: self.done.len(),
                wanted: self.done.len() + self.failed.len(),
                failures: self.failed,
            })
        }
    }
}

/// Pod and Service calls in one namespace.
#[derive(Clone)]
pub struct ClusterApi {
    client: Client,
    namespace: String,
    url: String,
}

impl ClusterApi {
    /// Calls in `namespace` through `client`; `url` is the server, for messages.
    pub fn new(client: Client, namespace: impl Into<String>, url: impl Into<String>) -> Self {
        ClusterApi {
            client,
            namespace: namespace.into(),
            url: url.into(),
        }
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The pods API of the namespace.
    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn services(&self) -> Api<Service> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn at<'a>(&'a self, verb: &'a str, resource: &'a str) -> CallSite<'a> {
        CallSite {
            verb,
            resource,
            namespace: &self.namespace,
            url: &self.url,
        }
    }

    /// Creates one pod (with retries).
    pub async fn create_pod(&self, pod: &Pod) -> Result<Pod> {
        let pods = self.pods();
        let params = PostParams::default();
        with_retry("create pod", || pods.create(&params, pod))
            .await
            .map_err(|e| map_kube_error(e, &self.at("create", "pods")))
    }

    /// Creates pods with bounded concurrency and a client-side rate limit; each failure is
    /// reported. Permission and namespace errors stop the batch (they fail every call).
    pub async fn create_pods(
        &self,
        pods: Vec<Pod>,
        limits: CreateLimits,
    ) -> (BatchReport, Option<Error>) {
        let limiter = Arc::new(RateLimiter::new(limits.rate_per_second));
        let fatal: Arc<Mutex<Option<Error>>> = Arc::new(Mutex::new(None));
        let results: Vec<Result<String, String>> = futures::stream::iter(pods)
            .map(|pod| {
                let limiter = limiter.clone();
                let fatal = fatal.clone();
                async move {
                    if fatal.lock().await.is_some() {
                        return Err("not attempted after an earlier fatal error".to_owned());
                    }
                    limiter.acquire().await;
                    match self.create_pod(&pod).await {
                        Ok(created) => Ok(created.metadata.name.unwrap_or_default()),
                        Err(e) => {
                            let text = e.to_string();
                            if matches!(
                                e,
                                Error::Forbidden { .. }
                                    | Error::NamespaceNotFound(_)
                                    | Error::Unreachable { .. }
                            ) {
                                let mut slot = fatal.lock().await;
                                if slot.is_none() {
                                    *slot = Some(e);
                                }
                            }
                            Err(text)
                        }
                    }
                }
            })
            .buffer_unordered(limits.concurrency.max(1))
            .collect()
            .await;
        let mut report = BatchReport::default();
        for r in results {
            match r {
                Ok(name) => report.done.push(name),
                Err(reason) => report.failed.push(reason),
            }
        }
        let fatal = fatal.lock().await.take();
        (report, fatal)
    }

    /// Deletes pods by name; a pod already gone counts as deleted.
    pub async fn delete_pods(&self, names: &[String], grace_seconds: Option<u32>) -> BatchReport {
        let pods = self.pods();
        let params = DeleteParams {
            grace_period_seconds: grace_seconds,
            ..DeleteParams::background()
        };
        let results: Vec<(String, Result<(), String>)> =
            futures::stream::iter(names.iter().cloned())
                .map(|name| {
                    let pods = pods.clone();
                    let params = params.clone();
                    async move {
                        let result = with_retry("delete pod", || pods.delete(&name, &params)).await;
                        let outcome = match result {
                            Ok(_) => Ok(()),
                            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                            Err(e) => Err(format!(
                                "{name}: {}",
                                map_kube_error(e, &self.at("delete", "pods"))
                            )),
                        };
                        (name, outcome)
                    }
                })
                .buffer_unordered(DEFAULT_CREATE_CONCURRENCY)
                .collect()
                .await;
        let mut report = BatchReport::default();
        for (name, outcome) in results {
            match outcome {
                Ok(()) => report.done.push(name),
                Err(reason) => report.failed.push(reason),
            }
        }
        report
    }

    /// Lists pods matching a label selector.
    pub async fn list_pods(&self, selector: &str) -> Result<Vec<Pod>> {
        let pods = self.pods();
        let params = ListParams::default().labels(selector);
        with_retry("list pods", || pods.list(&params))
            .await
            .map(|list| list.items)
            .map_err(|e| map_kube_error(e, &self.at("list", "pods")))
    }

    /// Lists pods matching a label selector in every namespace.
    pub async fn list_pods_all_namespaces(&self, selector: &str) -> Result<Vec<Pod>> {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let params = ListParams::default().labels(selector);
        with_retry("list pods", || pods.list(&params))
            .await
            .map(|list| list.items)
            .map_err(|e| {
                map_kube_error(
                    e,
                    &CallSite {
                        verb: "list",
                        resource: "pods",
                        namespace: "(all namespaces)",
                        url: &self.url,
                    },
                )
            })
    }

    /// Gets a pod; `None` when it does not exist.
    pub async fn get_pod(&self, name: &str) -> Result<Option<Pod>> {
        let pods = self.pods();
        with_retry("get pod", || pods.get_opt(name))
            .await
            .map_err(|e| map_kube_error(e, &self.at("get", "pods")))
    }

    /// Creates or updates the Service by server-side apply.
    pub async fn apply_service(&self, service: &Service) -> Result<Service> {
        let name = service.metadata.name.clone().unwrap_or_default();
        let services = self.services();
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let patch = Patch::Apply(service);
        with_retry("apply service", || services.patch(&name, &params, &patch))
            .await
            .map_err(|e| map_kube_error(e, &self.at("patch", "services")))
    }

    /// Deletes the Service; gone already is fine.
    pub async fn delete_service(&self, name: &str) -> Result<()> {
        let services = self.services();
        let params = DeleteParams::background();
        match with_retry("delete service", || services.delete(name, &params)).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(map_kube_error(e, &self.at("delete", "services"))),
        }
    }

    /// Gets the Service; `None` when it does not exist.
    pub async fn get_service(&self, name: &str) -> Result<Option<Service>> {
        let services = self.services();
        with_retry("get service", || services.get_opt(name))
            .await
            .map_err(|e| map_kube_error(e, &self.at("get", "services")))
    }

    /// Sets the supervisor's annotations on the scheduler pod by server-side apply; an
    /// empty map removes the ones it set before.
    pub async fn apply_supervisor_annotations(
        &self,
        pod: &str,
        annotations: &std::collections::BTreeMap<String, String>,
    ) -> Result<()> {
        let patch = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod, "annotations": annotations},
        });
        let pods = self.pods();
        let params = PatchParams::apply(SUPERVISOR_FIELD_MANAGER).force();
        let patch = Patch::Apply(&patch);
        with_retry("annotate pod", || pods.patch(pod, &params, &patch))
            .await
            .map(|_| ())
            .map_err(|e| map_kube_error(e, &self.at("patch", "pods")))
    }

    /// A pod's logs (all containers' first, or `container`).
    pub async fn logs(&self, pod: &str, container: Option<&str>) -> Result<String> {
        let pods = self.pods();
        let params = LogParams {
            container: container.map(str::to_owned),
            ..LogParams::default()
        };
        with_retry("read logs", || pods.logs(pod, &params))
            .await
            .map_err(|e| map_kube_error(e, &self.at("get", "pods/log")))
    }

    /// Waits until `cond` holds for pod `name`, at most `timeout`.
    pub async fn wait_pod(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        cond: impl Condition<Pod>,
    ) -> Result<Option<Pod>> {
        match tokio::time::timeout(timeout, await_condition(self.pods(), name, cond)).await {
            Ok(Ok(pod)) => Ok(pod),
            Ok(Err(e)) => Err(Error::Kube {
                action: format!("watch pod {name} in namespace {}", self.namespace),
                source: Box::new(match e {
                    kube::runtime::wait::Error::ProbeFailed(w) => match w {
                        kube::runtime::watcher::Error::InitialListFailed(e)
                        | kube::runtime::watcher::Error::WatchStartFailed(e)
                        | kube::runtime::watcher::Error::WatchFailed(e) => e,
                        other => kube::Error::Service(Box::new(other)),
                    },
                }),
            }),
            Err(_) => Err(Error::Timeout {
                what: what.to_owned(),
                seconds: timeout.as_secs(),
            }),
        }
    }

    /// Waits until every pod in `names` is gone, at most `timeout` in total; returns those
    /// still there.
    pub async fn wait_pods_gone(&self, names: &[String], timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut left = Vec::new();
        for name in names {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let gone = tokio::time::timeout(
                remaining,
                await_condition(self.pods(), name, |p: Option<&Pod>| p.is_none()),
            )
            .await;
            if !matches!(gone, Ok(Ok(_))) {
                warn!(pod = %name, "pod still present");
                left.push(name.clone());
            }
        }
        left
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;
    use tower_test::mock;

    pub(crate) type Handle = mock::Handle<Request<Body>, Response<Body>>;

    /// A client whose every call goes to the returned handle (the "API server verifier").
    pub(crate) fn mock_client() -> (Client, Handle) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        (Client::new(service, "default"), handle)
    }

    pub(crate) fn status(
        code: u16,
        reason: &str,
        message: &str,
        details: serde_json::Value,
    ) -> Response<Body> {
        let body = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "details": details, "code": code,
        });
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap()
    }

    pub(crate) fn ok_json(value: serde_json::Value) -> Response<Body> {
        Response::builder()
            .status(200)
            .body(Body::from(serde_json::to_vec(&value).unwrap()))
            .unwrap()
    }

    pub(crate) async fn body_json(request: Request<Body>) -> serde_json::Value {
        let bytes = http_body_util::BodyExt::collect(request.into_body())
            .await
            .unwrap()
            .to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn worker(n: usize) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"generateName": "c-worker-", "labels": {"n": n.to_string()}},
            "spec": {"containers": [{"name": "w", "image": "i"}]}
        }))
        .unwrap()
    }

    fn created(request_body: &serde_json::Value, name: &str) -> Response<Body> {
        let mut pod = request_body.clone();
        pod["metadata"]["name"] = json!(name);
        ok_json(pod)
    }

    #[tokio::test(start_paused = true)]
    async fn creation_retries_throttling_and_conflicts_then_succeeds() {
        let (client, mut handle) = mock_client();
        let api = ClusterApi::new(client, "team", "https://127.0.0.1:6443");
        let server = tokio::spawn(async move {
            for answer in [429u16, 409, 503] {
                let (request, send) = handle.next_request().await.unwrap();
                assert_eq!(request.method(), http::Method::POST);
                assert_eq!(request.uri().path(), "/api/v1/namespaces/team/pods");
                send.send_response(status(answer, "Retry", "try again", json!({})));
            }
            let (request, send) = handle.next_request().await.unwrap();
            let body = body_json(request).await;
            assert_eq!(body["metadata"]["generateName"], "c-worker-");
            send.send_response(created(&body, "c-worker-abcde"));
        });
        let (report, fatal) = api
            .create_pods(vec![worker(0)], CreateLimits::default())
            .await;
        server.await.unwrap();
        assert!(fatal.is_none());
        assert_eq!(
            report,
            BatchReport {
                done: vec!["c-worker-abcde".into()],
                failed: vec![]
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn partial_failure_is_reported_not_hidden() {
        let (client, mut handle) = mock_client();
        let api = ClusterApi::new(client, "team", "https://127.0.0.1:6443");
        let server = tokio::spawn(async move {
            let mut n = 0;
            while let Some((request, send)) = handle.next_request().await {
                let body = body_json(request).await;
                if body["metadata"]["labels"]["n"] == "1" {
                    send.send_response(status(
                        422,
                        "Invalid",
                        "spec.containers[0].image: Required value",
                        json!({}),
                    ));
                } else {
                    n += 1;
                    send.send_response(created(&body, &format!("c-worker-{n}")));
                }
            }
        });
        let limits = CreateLimits {
            concurrency: 2,
            rate_per_second: 100.0,
        };
        let (report, fatal) = api.create_pods((0..3).map(worker).collect(), limits).await;
        drop(api);
        server.abort();
        assert!(fatal.is_none());
        assert_eq!(report.done.len(), 2);
        assert_eq!(report.failed.len(), 1);
        assert!(
            report.failed[0].contains("Required value"),
            "{:?}",
            report.failed
        );
        let err = report.into_result("create workers").unwrap_err();
        assert_eq!(err.exit_code(), crate::error::exit::PARTIAL);
        assert!(err.to_string().contains("2 of 3 done"), "{err}");
    }

    #[tokio::test]
    async fn forbidden_names_the_missing_permission_and_stops_the_batch() {
        let (client, mut handle) = mock_client();
        let api = ClusterApi::new(client, "team", "https://127.0.0.1:6443");
        let server = tokio::spawn(async move {
            let (_, send) = handle.next_request().await.unwrap();
            send.send_response(status(403, "Forbidden", "pods is forbidden: User \"system:serviceaccount:team:x\" cannot create resource \"pods\"", json!({"kind": "pods"})));
            handle
        });
        let limits = CreateLimits {
            concurrency: 1,
            rate_per_second: 1000.0,
        };
        let (report, fatal) = api.create_pods((0..3).map(worker).collect(), limits).await;
        let _handle = server.await.unwrap();
        let fatal = fatal.expect("forbidden is fatal");
        let text = fatal.to_string();
        assert!(
            text.contains("lacks permission to create pods in namespace team"),
            "{text}"
        );
        assert!(text.contains("crates/dask-kube/deploy/rbac.yaml"), "{text}");
        assert_eq!(report.done.len(), 0);
        assert_eq!(
            report.failed.len(),
            3,
            "later pods are reported as not attempted"
        );
    }

    #[tokio::test]
    async fn missing_namespace_says_so() {
        let (client, mut handle) = mock_client();
        let api = ClusterApi::new(client, "nope", "https://127.0.0.1:6443");
        let server = tokio::spawn(async move {
            let (_, send) = handle.next_request().await.unwrap();
            send.send_response(status(
                404,
                "NotFound",
                "namespaces \"nope\" not found",
                json!({"name": "nope", "kind": "namespaces"}),
            ));
        });
        let err = api.create_pod(&worker(0)).await.unwrap_err();
        server.await.unwrap();
        assert!(
            matches!(err, Error::NamespaceNotFound(ref ns) if ns == "nope"),
            "{err}"
        );
        assert_eq!(err.exit_code(), crate::error::exit::NOT_FOUND);
    }

    #[tokio::test]
    async fn deleting_a_pod_that_is_gone_counts_as_done() {
        let (client, mut handle) = mock_client();
        let api = ClusterApi::new(client, "team", "https://127.0.0.1:6443");
        let server = tokio::spawn(async move {
            for _ in 0..2 {
                let (request, send) = handle.next_request().await.unwrap();
                assert_eq!(request.method(), http::Method::DELETE);
                if request.uri().path().ends_with("/gone") {
                    send.send_response(status(
                        404,
                        "NotFound",
                        "pods \"gone\" not found",
                        json!({"name": "gone", "kind": "pods"}),
                    ));
                } else {
                    send.send_response(ok_json(
                        json!({"metadata": {"name": "here"}, "spec": {"containers": []}}),
                    ));
                }
            }
        });
        let mut report = api.delete_pods(&["gone".into(), "here".into()], None).await;
        server.await.unwrap();
        report.done.sort();
        assert_eq!(
            report,
            BatchReport {
                done: vec!["gone".into(), "here".into()],
                failed: vec![]
            }
        );
    }

    #[tokio::test]
    async fn service_is_server_side_applied_with_the_field_manager() {
        let (client, mut handle) = mock_client();
        let api = ClusterApi::new(client, "team", "https://127.0.0.1:6443");
        let server = tokio::spawn(async move {
            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(request.method(), http::Method::PATCH);
            assert_eq!(request.uri().path(), "/api/v1/namespaces/team/services/c");
            let query = request.uri().query().unwrap_or_default().to_owned();
            assert!(query.contains("fieldManager=dask-kube"), "{query}");
            assert!(query.contains("force=true"), "{query}");
            assert_eq!(
                request.headers()["content-type"],
                "application/apply-patch+yaml"
            );
            let body = body_json(request).await;
            send.send_response(ok_json(body));
        });
        let svc: Service = serde_json::from_value(
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "c"}}),
        )
        .unwrap();
        api.apply_service(&svc).await.unwrap();
        server.await.unwrap();
    }

    #[rstest::rstest]
    #[case::plain("services \"x\" is forbidden: User \"u\" cannot create resource \"services\" in API group \"\" in the namespace \"n\"", Some(("create", "services")))]
    #[case::subresource("pods \"x\" is forbidden: User \"u\" cannot create resource \"pods/portforward\" in API group \"\"", Some(("create", "pods/portforward")))]
    #[case::named_subresource("User \"u\" cannot get resource \"pods\" in API group \"\" with subresource \"log\"", Some(("get", "pods/log")))]
    #[case::other("something else", None)]
    fn reads_the_verb_rbac_checked(#[case] message: &str, #[case] expected: Option<(&str, &str)>) {
        assert_eq!(
            forbidden_verb_resource(message),
            expected.map(|(v, r)| (v.to_owned(), r.to_owned()))
        );
    }

    #[test]
    fn retryable_errors() {
        let api_err = |code| {
            kube::Error::Api(Box::new(
                kube::core::Status::failure("x", "y").with_code(code),
            ))
        };
        for code in [409, 429, 500, 503] {
            assert!(is_retryable(&api_err(code)), "{code}");
        }
        for code in [400, 403, 404, 422] {
            assert!(!is_retryable(&api_err(code)), "{code}");
        }
    }
}
