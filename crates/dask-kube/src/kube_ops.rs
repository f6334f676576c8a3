//! The thin layer that talks to the Kubernetes API: credentials, batched pod creation and
//! deletion under flow control driven by the API server ([`crate::flow`]), retries that
//! never duplicate a pod, lean pod lists, waits, and the translation of API errors into
//! messages that say what to do (403 names the missing permission, a missing namespace says
//! so, an unreachable server names its URL).

use crate::flow::{
    CallOutcome, DEFAULT_INITIAL_IN_FLIGHT, DEFAULT_MAX_IN_FLIGHT, FlowControl, FlowLimiter,
};
use crate::{Error, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ContainerState, Pod, PodIP, PodStatus, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{
    Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams, Preconditions,
};
use kube::runtime::wait::{Condition, await_condition};
use kube::{Client, Config};
use serde::Deserialize;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::{debug, info, warn};

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
/// How long a call keeps being retried while an API server that answered this client before
/// does not answer now (connections refused, 503/504, throttled, timeouts): a restart of the
/// API server, a rolling upgrade of the control plane or a load balancer's failover takes seconds
/// to a minute, and a batch that waits it out leaves an exact count where one that gives up
/// leaves half a scale-up. Before the first answer an unreachable server is reported after
/// [`RETRY_ATTEMPTS`] (a wrong address should not make the user wait).
pub const RETRY_BUDGET: Duration = Duration::from_secs(120);
/// Attempts per pod of a batch: throttling is waited out by flow control, so a batch on a
/// busy API server gets more tries than a single call.
pub const BATCH_ATTEMPTS: u32 = 10;
/// Bound on one create or delete call of a batch; a call that takes longer has an unknown
/// outcome, which is then checked before any retry.
pub const BATCH_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Pods per page of a list (bounds the memory a list of thousands of pods takes).
pub const LIST_PAGE: u32 = 250;
/// Annotation with a random token per created pod: when a create's answer is lost, the pod
/// found under its name is ours only if it carries our token.
pub const CREATE_TOKEN_ANNOTATION: &str = "dask.org/create-token";
/// Time between checks while waiting for pods to go.
const GONE_POLL: Duration = Duration::from_millis(250);

/// How batches of creations and deletions are paced: calls in flight at the start and at
/// most. Flow control ([`crate::flow`]) moves between 1 and `max_in_flight` on the API
/// server's signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreateLimits {
    /// Calls in flight when a batch starts.
    pub initial_in_flight: usize,
    /// Most calls in flight (a cap for clusters whose API Priority and Fairness is strict).
    pub max_in_flight: usize,
}

impl Default for CreateLimits {
    fn default() -> Self {
        CreateLimits {
            initial_in_flight: DEFAULT_INITIAL_IN_FLIGHT,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }
}

impl CreateLimits {
    /// At most `max` calls in flight (starting there too, or lower).
    pub fn with_max_in_flight(max: usize) -> Self {
        let max = max.max(1);
        CreateLimits {
            initial_in_flight: DEFAULT_INITIAL_IN_FLIGHT.min(max),
            max_in_flight: max,
        }
    }

    /// The limits `kubernetes.max-in-flight` asks for (the defaults when unset).
    pub fn from_setting(max_in_flight: Option<u32>) -> Self {
        max_in_flight.map_or_else(Self::default, |m| Self::with_max_in_flight(m as usize))
    }

    fn limiter(&self) -> FlowLimiter {
        FlowLimiter::new(FlowControl::new(self.initial_in_flight, self.max_in_flight))
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
    let client = crate::http_client::build_client(config)?;
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

/// Whether an error says the API server is away or shedding load (not that the request is
/// wrong): no connection, 503/504, 429. These are retried for [`RETRY_BUDGET`] once the server
/// has answered; a 500 (a failing admission webhook, for one) is not an outage and gets
/// [`RETRY_ATTEMPTS`] only.
fn is_outage(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => matches!(status.code, 429 | 503 | 504),
        other => is_transport(other),
    }
}

/// Attempts for a create an admission webhook could not be called for: a webhook that is down
/// (with `failurePolicy: Fail`) is a configuration problem the user must see at once, not load
/// to wait out; three tries ride over a blip.
pub const WEBHOOK_ATTEMPTS: u32 = 3;

/// Whether the API server could not call an admission webhook (`failed calling webhook`).
fn is_webhook_failure(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(s) if s.code == 500 && s.message.contains("failed calling webhook"))
}

/// When a failed call is sent again, and after how long.
#[derive(Debug)]
struct Retries {
    failures: u32,
    max_attempts: u32,
    first_failure: Option<Instant>,
}

impl Retries {
    fn new(max_attempts: u32) -> Self {
        Retries {
            failures: 0,
            max_attempts,
            first_failure: None,
        }
    }

    /// Counts a failure; whether to try again: within the attempts, or during an outage of a
    /// server that has answered before, within [`RETRY_BUDGET`] of the first failure.
    fn again(&mut self, outage: bool, server_answered_before: bool) -> bool {
        let first = *self.first_failure.get_or_insert_with(Instant::now);
        self.failures += 1;
        self.failures < self.max_attempts
            || (outage && server_answered_before && first.elapsed() < RETRY_BUDGET)
    }

    /// The wait before the next attempt: doubling from [`RETRY_INITIAL`] to
    /// [`RETRY_MAX_DELAY`], 50-100% of it at random so that a batch's calls do not all come
    /// back at the same instant; the server's `retryAfterSeconds` when it gave one.
    fn delay(&self, server_hint: Option<Duration>) -> Duration {
        if let Some(hint) = server_hint {
            return hint.min(RETRY_MAX_DELAY);
        }
        let exponent = self.failures.saturating_sub(1).min(16);
        let full = RETRY_INITIAL
            .saturating_mul(1 << exponent)
            .min(RETRY_MAX_DELAY);
        let jitter = f64::from(uuid::Uuid::new_v4().as_bytes()[0]) / 255.0;
        full.mul_f64(0.5 + jitter / 2.0)
    }
}

/// The server's `retryAfterSeconds`, when it sent one.
fn retry_after(error: &kube::Error) -> Option<Duration> {
    match error {
        kube::Error::Api(s) => s
            .details
            .as_ref()
            .map(|d| Duration::from_secs(u64::from(d.retry_after_seconds)))
            .filter(|d| !d.is_zero()),
        _ => None,
    }
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
    if let Some(forbidden) = forbidden(&error, at.verb, at.resource, at.namespace) {
        return forbidden;
    }
    if let kube::Error::Api(status) = &error {
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

/// A 403 as [`Error::Forbidden`], `None` for anything else. The server names what it
/// checked (an apply that creates checks `create`); `verb` and `resource` (the call's) are
/// the fallback. Also for calls without a [`CallSite`] (a port-forward upgrade).
pub fn forbidden(
    error: &kube::Error,
    verb: &str,
    resource: &str,
    namespace: &str,
) -> Option<Error> {
    let kube::Error::Api(status) = error else {
        return None;
    };
    if status.code != 403 {
        return None;
    }
    let (verb, resource) = forbidden_verb_resource(&status.message)
        .unwrap_or_else(|| (verb.to_owned(), resource.to_owned()));
    Some(Error::Forbidden {
        verb,
        resource,
        namespace: namespace.to_owned(),
        message: status.message.clone(),
    })
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

/// Runs `call` until it succeeds, fails for good, or its retries are used ([`Retries`]:
/// [`RETRY_ATTEMPTS`], or [`RETRY_BUDGET`] through an outage of a server that answered
/// before), with exponential backoff honouring the server's `retryAfterSeconds`.
/// `answered` records that the server answered (any success).
pub async fn with_retry<T, F, Fut>(
    what: &str,
    answered: &AtomicBool,
    mut call: F,
) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let mut retries = Retries::new(RETRY_ATTEMPTS);
    loop {
        match call().await {
            Ok(v) => {
                answered.store(true, Ordering::Relaxed);
                return Ok(v);
            }
            Err(e)
                if is_retryable(&e)
                    && retries.again(is_outage(&e), answered.load(Ordering::Relaxed)) =>
            {
                let wait = retries.delay(retry_after(&e));
                debug!(what, failures = retries.failures, error = %describe_kube_error(&e), ?wait, "retrying");
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The outcome of a batch: what succeeded and what failed, never silently.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BatchReport {
    /// Names done.
    pub done: Vec<String>,
    /// Failures, each `name: reason`.
    pub failed: Vec<String>,
    /// Calls sent again after the server failed to answer, throttled or erred (each pod is
    /// still created or deleted once).
    pub retried: usize,
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
    limits: CreateLimits,
    /// Whether the server has answered a call of this API (then an outage is waited out).
    answered: Arc<AtomicBool>,
}

impl ClusterApi {
    /// Calls in `namespace` through `client`; `url` is the server, for messages.
    pub fn new(client: Client, namespace: impl Into<String>, url: impl Into<String>) -> Self {
        ClusterApi {
            client,
            namespace: namespace.into(),
            url: url.into(),
            limits: CreateLimits::default(),
            answered: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Paces this API's batches of creations and deletions.
    #[must_use]
    pub fn with_limits(mut self, limits: CreateLimits) -> Self {
        self.limits = limits;
        self
    }

    /// How batches are paced.
    pub fn limits(&self) -> CreateLimits {
        self.limits
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
        with_retry("create pod", &self.answered, || pods.create(&params, pod))
            .await
            .map_err(|e| map_kube_error(e, &self.at("create", "pods")))
    }

    /// Creates pods under flow control; each failure is reported, and each pod that exists
    /// is reported once. Pods with a `generateName` get their name here (the same random
    /// suffix the API server would pick) and a [`CREATE_TOKEN_ANNOTATION`], so a create
    /// whose answer is lost (timeout, broken connection, 5xx) is checked by name before it
    /// is sent again: a retry never makes a second pod. Permission, namespace and
    /// unreachable-server errors stop the batch (they fail every call).
    /// `pods` is consumed as calls start, so a lazy iterator keeps only the pods in flight in
    /// memory.
    pub async fn create_pods<I>(&self, pods: I) -> (BatchReport, Option<Error>)
    where
        I: IntoIterator<Item = Pod>,
        I::IntoIter: Send,
    {
        let limiter = self.limits.limiter();
        let retried = AtomicUsize::new(0);
        let fatal: Arc<Mutex<Option<Error>>> = Arc::new(Mutex::new(None));
        let started = Instant::now();
        let pods = pods.into_iter();
        let wanted = pods.size_hint().0;
        let results: Vec<Result<String, String>> = futures::stream::iter(pods)
            .map(|pod| {
                let limiter = limiter.clone();
                let fatal = fatal.clone();
                let retried = &retried;
                async move {
                    if fatal.lock().await.is_some() {
                        return Err("not attempted after an earlier fatal error".to_owned());
                    }
                    match self.create_one(pod, &limiter, retried).await {
                        Ok(name) => Ok(name),
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
            .buffer_unordered(self.limits.max_in_flight.max(1))
            .collect()
            .await;
        let mut report = BatchReport {
            retried: retried.into_inner(),
            ..BatchReport::default()
        };
        for r in results {
            match r {
                Ok(name) => report.done.push(name),
                Err(reason) => report.failed.push(reason),
            }
        }
        if report.retried > 0 {
            warn!(
                retried = report.retried,
                created = report.done.len(),
                failed = report.failed.len(),
                "the API server failed to answer or throttled some creates; they were retried (each pod is created once)"
            );
        }
        let (limit, _) = limiter.snapshot();
        info!(
            wanted,
            created = report.done.len(),
            failed = report.failed.len(),
            seconds = started.elapsed().as_secs_f64(),
            final_in_flight_limit = limit,
            "created pods"
        );
        let fatal = fatal.lock().await.take();
        (report, fatal)
    }

    /// One pod of a batch, retried under flow control ([`Retries`]) without ever creating it
    /// twice: a create whose answer is lost is looked up by name and token before it is sent
    /// again, and when the lookup fails too the same name is sent (a 409 then tells).
    async fn create_one(
        &self,
        mut pod: Pod,
        limiter: &FlowLimiter,
        retried: &AtomicUsize,
    ) -> Result<String> {
        let mut token = assign_name(&mut pod);
        let pods = self.pods();
        let params = PostParams::default();
        let mut retries = Retries::new(BATCH_ATTEMPTS);
        let last_error = loop {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let permit = limiter.acquire().await;
            let result = tokio::time::timeout(BATCH_CALL_TIMEOUT, pods.create(&params, &pod)).await;
            let latency = permit.started().elapsed();
            let error = match result {
                Ok(Ok(created)) => {
                    permit.finish(CallOutcome::Done { latency });
                    self.answered.store(true, Ordering::Relaxed);
                    return Ok(created.metadata.name.unwrap_or(name));
                }
                Ok(Err(e)) => {
                    permit.finish(outcome_of(&e, latency));
                    Some(e)
                }
                Err(_) => {
                    permit.finish(CallOutcome::Failed);
                    debug!(pod = %name, "create timed out; checking before retrying");
                    None
                }
            };
            let error = match error {
                Some(e) if !is_retryable(&e) => {
                    return Err(map_kube_error(e, &self.at("create", "pods")));
                }
                other => other,
            };
            match &error {
                Some(kube::Error::Api(s)) if s.code == 409 => {
                    // Ours, from an attempt whose answer was lost; or a name another pod
                    // has, and then a new name. Unknown (the lookup failed): ask again.
                    match self.created_by_us(&name, &token).await {
                        Ok(true) => return Ok(name),
                        Ok(false) => {
                            debug!(pod = %name, "name taken by another pod; picking a new one");
                            pod.metadata.name = None;
                            pod.metadata.generate_name = Some(
                                name.get(..name.len().saturating_sub(SUFFIX_LEN))
                                    .unwrap_or_default()
                                    .to_owned(),
                            );
                            token = assign_name(&mut pod);
                            continue;
                        }
                        Err(_) => {}
                    }
                }
                Some(e) if ambiguous(e) => {
                    if let Ok(true) = self.created_by_us(&name, &token).await {
                        return Ok(name);
                    }
                }
                None => {
                    if let Ok(true) = self.created_by_us(&name, &token).await {
                        return Ok(name);
                    }
                }
                Some(_) => {}
            }
            let outage = error.as_ref().is_none_or(is_outage);
            let webhook = error.as_ref().is_some_and(is_webhook_failure);
            if !retries.again(outage, self.answered.load(Ordering::Relaxed))
                || (webhook && retries.failures >= WEBHOOK_ATTEMPTS)
            {
                break error;
            }
            retried.fetch_add(1, Ordering::Relaxed);
            let wait = retries.delay(error.as_ref().and_then(retry_after));
            debug!(pod = %name, failures = retries.failures, error = ?error.as_ref().map(describe_kube_error), ?wait, "retrying create");
            tokio::time::sleep(wait).await;
        };
        let name = pod.metadata.name.clone().unwrap_or_default();
        if self.created_by_us(&name, &token).await? {
            return Ok(name);
        }
        Err(match last_error {
            Some(e) => map_kube_error(e, &self.at("create", "pods")),
            None => Error::Timeout {
                what: format!(
                    "creating pod {name} ({} attempts; it does not exist)",
                    retries.failures
                ),
                seconds: BATCH_CALL_TIMEOUT.as_secs(),
            },
        })
    }

    /// Whether pod `name` exists and carries our create token.
    async fn created_by_us(&self, name: &str, token: &str) -> Result<bool> {
        let pods = self.pods();
        let found = with_retry("get pod", &self.answered, || pods.get_metadata_opt(name))
            .await
            .map_err(|e| map_kube_error(e, &self.at("get", "pods")))?;
        Ok(found.is_some_and(|p| {
            p.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(CREATE_TOKEN_ANNOTATION))
                .is_some_and(|t| t == token)
        }))
    }

    /// Deletes pods by name under flow control; a pod already gone counts as deleted.
    pub async fn delete_pods(&self, names: &[String], grace_seconds: Option<u32>) -> BatchReport {
        let params = DeleteParams {
            grace_period_seconds: grace_seconds,
            ..DeleteParams::background()
        };
        let pods: Vec<(String, DeleteParams)> = names
            .iter()
            .map(|name| (name.clone(), params.clone()))
            .collect();
        self.delete_batch(pods).await.0
    }

    /// Deletes each pod only if it is unchanged since it was listed: the delete carries the
    /// listed `resourceVersion` as a precondition, which the API server checks in the same
    /// write. A pod that changed meanwhile (a container started, so a worker may be in it now)
    /// is left alone and returned in the second list, without retrying; one already gone
    /// counts as deleted; one listed without a version is deleted as it is.
    pub async fn delete_pods_unchanged(
        &self,
        pods: &[(String, Option<String>)],
    ) -> (BatchReport, Vec<String>) {
        let pods: Vec<(String, DeleteParams)> = pods
            .iter()
            .map(|(name, version)| {
                let params = DeleteParams {
                    preconditions: version.as_ref().map(|v| Preconditions {
                        resource_version: Some(v.clone()),
                        uid: None,
                    }),
                    ..DeleteParams::background()
                };
                (name.clone(), params)
            })
            .collect();
        self.delete_batch(pods).await
    }

    async fn delete_batch(&self, pods: Vec<(String, DeleteParams)>) -> (BatchReport, Vec<String>) {
        let limiter = self.limits.limiter();
        let retried = AtomicUsize::new(0);
        let results: Vec<(String, Result<(), DeleteFailure>)> = futures::stream::iter(pods)
            .map(|(name, params)| {
                let limiter = limiter.clone();
                let retried = &retried;
                async move {
                    let outcome = self.delete_one(&name, &params, &limiter, retried).await;
                    (name, outcome)
                }
            })
            .buffer_unordered(self.limits.max_in_flight.max(1))
            .collect()
            .await;
        let mut report = BatchReport {
            retried: retried.into_inner(),
            ..BatchReport::default()
        };
        let mut changed = Vec::new();
        for (name, outcome) in results {
            match outcome {
                Ok(()) => report.done.push(name),
                Err(DeleteFailure::Changed) => changed.push(name),
                Err(DeleteFailure::Failed(reason)) => report.failed.push(reason),
            }
        }
        if report.retried > 0 {
            warn!(
                retried = report.retried,
                deleted = report.done.len(),
                failed = report.failed.len(),
                "the API server failed to answer or throttled some deletes; they were retried"
            );
        }
        (report, changed)
    }

    async fn delete_one(
        &self,
        name: &str,
        params: &DeleteParams,
        limiter: &FlowLimiter,
        retried: &AtomicUsize,
    ) -> Result<(), DeleteFailure> {
        let pods = self.pods();
        let mut retries = Retries::new(BATCH_ATTEMPTS);
        loop {
            let permit = limiter.acquire().await;
            let result = tokio::time::timeout(BATCH_CALL_TIMEOUT, pods.delete(name, params)).await;
            let latency = permit.started().elapsed();
            let error = match result {
                Ok(Ok(_)) => {
                    permit.finish(CallOutcome::Done { latency });
                    self.answered.store(true, Ordering::Relaxed);
                    return Ok(());
                }
                Ok(Err(kube::Error::Api(s))) if s.code == 404 => {
                    permit.finish(CallOutcome::Done { latency });
                    return Ok(());
                }
                // A failed precondition: the pod is not as it was listed. Sending the same
                // precondition again cannot succeed.
                Ok(Err(kube::Error::Api(s))) if s.code == 409 && params.preconditions.is_some() => {
                    permit.finish(CallOutcome::Done { latency });
                    self.answered.store(true, Ordering::Relaxed);
                    debug!(pod = %name, message = %s.message, "not deleted: changed since listed");
                    return Err(DeleteFailure::Changed);
                }
                Ok(Err(e)) => {
                    permit.finish(outcome_of(&e, latency));
                    Some(e)
                }
                Err(_) => {
                    // Deleting again is harmless: a 404 then means the first one worked.
                    permit.finish(CallOutcome::Failed);
                    None
                }
            };
            let retryable = error.as_ref().is_none_or(is_retryable);
            let outage = error.as_ref().is_none_or(is_outage);
            if !(retryable && retries.again(outage, self.answered.load(Ordering::Relaxed))) {
                return Err(DeleteFailure::Failed(match error {
                    Some(e) => format!("{name}: {}", map_kube_error(e, &self.at("delete", "pods"))),
                    None => format!(
                        "{name}: not deleted after {} attempts (timeouts)",
                        retries.failures
                    ),
                }));
            }
            retried.fetch_add(1, Ordering::Relaxed);
            let wait = retries.delay(error.as_ref().and_then(retry_after));
            debug!(pod = %name, failures = retries.failures, error = ?error.as_ref().map(describe_kube_error), ?wait, "retrying delete");
            tokio::time::sleep(wait).await;
        }
    }

    /// Lists pods matching a label selector, lean: only the metadata and status fields
    /// dask-kube reads (no spec, no managedFields), a page at a time, so listing thousands of
    /// pods takes little memory.
    pub async fn list_pods(&self, selector: &str) -> Result<Vec<Pod>> {
        self.list_lean(Some(&self.namespace), selector, "list pods")
            .await
            .map_err(|e| map_kube_error(e, &self.at("list", "pods")))
    }

    async fn list_lean(
        &self,
        namespace: Option<&str>,
        selector: &str,
        what: &str,
    ) -> Result<Vec<Pod>, kube::Error> {
        let path = match namespace {
            Some(ns) => format!("/api/v1/namespaces/{ns}/pods"),
            None => "/api/v1/pods".to_owned(),
        };
        let mut out = Vec::new();
        let mut continue_token: Option<String> = None;
        loop {
            let mut params = ListParams::default().labels(selector).limit(LIST_PAGE);
            if let Some(token) = &continue_token {
                params = params.continue_token(token);
            }
            let request = kube::core::Request::new(&path)
                .list(&params)
                .map_err(kube::Error::BuildRequest)?;
            let client = self.client.clone();
            let page: LeanPodList = with_retry(what, &self.answered, || {
                let request = clone_request(&request);
                let client = client.clone();
                async move { client.request::<LeanPodList>(request).await }
            })
            .await?;
            out.extend(page.items.into_iter().map(LeanPod::into_pod));
            match page.metadata.continue_token.filter(|t| !t.is_empty()) {
                Some(token) => continue_token = Some(token),
                None => return Ok(out),
            }
        }
    }

    /// Lists pods matching a label selector in every namespace (lean, as [`Self::list_pods`]).
    pub async fn list_pods_all_namespaces(&self, selector: &str) -> Result<Vec<Pod>> {
        self.list_lean(None, selector, "list pods")
            .await
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
        with_retry("get pod", &self.answered, || pods.get_opt(name))
            .await
            .map_err(|e| map_kube_error(e, &self.at("get", "pods")))
    }

    /// Creates or updates the Service by server-side apply.
    pub async fn apply_service(&self, service: &Service) -> Result<Service> {
        let name = service.metadata.name.clone().unwrap_or_default();
        let services = self.services();
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let patch = Patch::Apply(service);
        with_retry("apply service", &self.answered, || {
            services.patch(&name, &params, &patch)
        })
        .await
        .map_err(|e| map_kube_error(e, &self.at("patch", "services")))
    }

    /// Deletes the Service; gone already is fine.
    pub async fn delete_service(&self, name: &str) -> Result<()> {
        let services = self.services();
        let params = DeleteParams::background();
        match with_retry("delete service", &self.answered, || {
            services.delete(name, &params)
        })
        .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(map_kube_error(e, &self.at("delete", "services"))),
        }
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
        with_retry("annotate pod", &self.answered, || {
            pods.patch(pod, &params, &patch)
        })
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
        with_retry("read logs", &self.answered, || pods.logs(pod, &params))
            .await
            .map_err(|e| map_kube_error(e, &self.at("get", "pods/log")))
    }

    /// Follows the log of `pod`'s only container from its start until a line satisfies
    /// `is_wanted` (true) or the log ends (false: the container exited). One streaming
    /// request, however long it takes, instead of asking again and again.
    pub async fn follow_log_until(
        &self,
        pod: &str,
        is_wanted: impl Fn(&str) -> bool,
    ) -> Result<bool> {
        use futures::{AsyncBufReadExt, TryStreamExt};
        let params = LogParams {
            follow: true,
            ..LogParams::default()
        };
        let at = self.at("get", "pods/log");
        let stream = self
            .pods()
            .log_stream(pod, &params)
            .await
            .map_err(|e| map_kube_error(e, &at))?;
        let mut lines = std::pin::pin!(stream.lines());
        while let Some(line) = lines.try_next().await.map_err(|source| Error::Io {
            context: format!("reading the log of pod {pod}"),
            source,
        })? {
            if is_wanted(&line) {
                return Ok(true);
            }
        }
        Ok(false)
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
            // A 403 names the verb the server checked (`list` for the watcher's first
            // list, `watch` after), as every other call's does.
            Ok(Err(e)) => Err(map_kube_error(
                match e {
                    kube::runtime::wait::Error::ProbeFailed(w) => match w {
                        kube::runtime::watcher::Error::InitialListFailed(e)
                        | kube::runtime::watcher::Error::WatchStartFailed(e)
                        | kube::runtime::watcher::Error::WatchFailed(e) => e,
                        other => kube::Error::Service(Box::new(other)),
                    },
                },
                &self.at("watch", "pods"),
            )),
            Err(_) => Err(Error::Timeout {
                what: what.to_owned(),
                seconds: timeout.as_secs(),
            }),
        }
    }

    /// Waits until every pod in `names` is gone, at most `timeout` in total; returns those
    /// still there. One lean list per check of the pods matching `selector` (the cluster's
    /// label), however many pods are awaited.
    pub async fn wait_pods_gone(
        &self,
        selector: &str,
        names: &[String],
        timeout: Duration,
    ) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut left: BTreeSet<String> = names.iter().cloned().collect();
        loop {
            if left.is_empty() {
                return Vec::new();
            }
            match self.list_pods(selector).await {
                Ok(pods) => {
                    let present: BTreeSet<String> =
                        pods.into_iter().filter_map(|p| p.metadata.name).collect();
                    left.retain(|n| present.contains(n));
                    if left.is_empty() {
                        return Vec::new();
                    }
                }
                // Waiting cannot grant a permission: report them as not seen gone now.
                Err(e @ Error::Forbidden { .. }) => {
                    warn!(error = %e, "cannot check which pods are gone");
                    return left.into_iter().collect();
                }
                Err(e) => warn!(error = %e, "cannot check which pods are gone"),
            }
            if Instant::now() >= deadline {
                for name in &left {
                    warn!(pod = %name, "pod still present");
                }
                return left.into_iter().collect();
            }
            tokio::time::sleep(GONE_POLL).await;
        }
    }
}

/// Gives a pod that has only a `generateName` its name, as the API server would (the same
/// alphabet and length), and a fresh create token; returns the token.
fn assign_name(pod: &mut Pod) -> String {
    let token = uuid::Uuid::new_v4().simple().to_string();
    if pod.metadata.name.is_none()
        && let Some(prefix) = pod.metadata.generate_name.clone()
    {
        pod.metadata.name = Some(format!("{prefix}{}", random_suffix()));
        pod.metadata.generate_name = None;
    }
    pod.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(CREATE_TOKEN_ANNOTATION.to_owned(), token.clone());
    token
}

/// Length of the random suffix of a generated name.
const SUFFIX_LEN: usize = 5;

/// [`SUFFIX_LEN`] characters of the API server's `generateName` alphabet (no vowels, no
/// look-alikes).
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes = *uuid::Uuid::new_v4().as_bytes();
    bytes[..SUFFIX_LEN]
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

/// What a failed call says about the server's load.
fn outcome_of(error: &kube::Error, latency: Duration) -> CallOutcome {
    match error {
        kube::Error::Api(s) if s.code == 429 => CallOutcome::Throttled {
            retry_after: s
                .details
                .as_ref()
                .map(|d| Duration::from_secs(u64::from(d.retry_after_seconds)))
                .filter(|d| !d.is_zero()),
        },
        kube::Error::Api(s) if s.code >= 500 => CallOutcome::Failed,
        e if is_transport(e) => CallOutcome::Failed,
        _ => CallOutcome::Done { latency },
    }
}

/// Whether a failed create may nevertheless have created the pod: the answer was lost or
/// the server failed after it may have stored it. 429 and 409 are answers before storing.
fn ambiguous(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(s) => s.code >= 500,
        e => is_transport(e),
    }
}

fn clone_request(request: &http::Request<Vec<u8>>) -> http::Request<Vec<u8>> {
    let mut copy = http::Request::new(request.body().clone());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.headers_mut() = request.headers().clone();
    copy
}

/// Why one pod of a delete batch was not deleted.
enum DeleteFailure {
    /// Its precondition failed: it changed since it was listed.
    Changed,
    /// The call failed; the message names the pod.
    Failed(String),
}

/// A pod list with only what dask-kube reads.
#[derive(Deserialize)]
struct LeanPodList {
    #[serde(default)]
    metadata: LeanListMeta,
    #[serde(default)]
    items: Vec<LeanPod>,
}

#[derive(Deserialize, Default)]
struct LeanListMeta {
    #[serde(rename = "continue")]
    continue_token: Option<String>,
}

#[derive(Deserialize)]
struct LeanPod {
    metadata: LeanMeta,
    #[serde(default)]
    status: Option<LeanStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeanMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<BTreeMap<String, String>>,
    creation_timestamp: Option<Time>,
    deletion_timestamp: Option<Time>,
    resource_version: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeanStatus {
    phase: Option<String>,
    reason: Option<String>,
    #[serde(rename = "podIP")]
    pod_ip: Option<String>,
    #[serde(rename = "podIPs")]
    pod_ips: Option<Vec<PodIP>>,
    container_statuses: Option<Vec<LeanContainerStatus>>,
}

#[derive(Deserialize)]
struct LeanContainerStatus {
    name: String,
    state: Option<ContainerState>,
}

impl LeanPod {
    fn into_pod(self) -> Pod {
        let LeanMeta {
            name,
            namespace,
            uid,
            labels,
            annotations,
            creation_timestamp,
            deletion_timestamp,
            resource_version,
        } = self.metadata;
        Pod {
            metadata: ObjectMeta {
                name,
                namespace,
                uid,
                labels,
                annotations,
                creation_timestamp,
                deletion_timestamp,
                resource_version,
                ..ObjectMeta::default()
            },
            spec: None,
            status: self.status.map(|s| PodStatus {
                phase: s.phase,
                reason: s.reason,
                pod_ip: s.pod_ip,
                pod_ips: s.pod_ips,
                container_statuses: s.container_statuses.map(|cs| {
                    cs.into_iter()
                        .map(|c| k8s_openapi::api::core::v1::ContainerStatus {
                            name: c.name,
                            state: c.state,
                            ..Default::default()
                        })
                        .collect()
                }),
                ..PodStatus::default()
            }),
        }
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

    fn metadata_of(name: &str, token: Option<&str>) -> Response<Body> {
        ok_json(
            json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                       "metadata": {"name": name, "annotations": token.map(|t| json!({CREATE_TOKEN_ANNOTATION: t})).unwrap_or(json!({}))}}),
        )
    }

    fn not_found(name: &str) -> Response<Body> {
        status(
            404,
            "NotFound",
            &format!("pods \"{name}\" not found"),
            json!({"name": name, "kind": "pods"}),
        )
    }

    /// 429 is retried as is; a 409 means the name is taken (checked: not ours) so a new
    /// name is drawn; a 503 may have stored the pod, so it is looked up (absent) before the
    /// same name is sent again.
    #[tokio::test(start_paused = true)]
    async fn creation_retries_throttling_and_conflicts_without_duplicates() {
        let (client, mut handle) = mock_client();
        let api = ClusterApi::new(client, "team", "https://127.0.0.1:6443");
        let server = tokio::spawn(async move {
            let mut names = Vec::new();
            let post = |names: &mut Vec<String>, body: serde_json::Value| {
                assert!(body["metadata"].get("generateName").is_none(), "{body}");
                let name = body["metadata"]["name"].as_str().unwrap().to_owned();
                assert!(
                    name.starts_with("c-worker-") && name.len() == "c-worker-".len() + 5,
                    "{name}"
                );
                assert!(body["metadata"]["annotations"][CREATE_TOKEN_ANNOTATION].is_string());
                names.push(name.clone());
                name
            };
            // 1: throttled.
            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(request.method(), http::Method::POST);
            assert_eq!(request.uri().path(), "/api/v1/namespaces/team/pods");
            post(&mut names, body_json(request).await);
            send.send_response(status(
                429,
                "TooManyRequests",
                "slow down",
                json!({"retryAfterSeconds": 1}),
            ));
            // 2: the name is taken by someone else's pod.
            let (request, send) = handle.next_request().await.unwrap();
            let name = post(&mut names, body_json(request).await);
            send.send_response(status(
                409,
                "AlreadyExists",
                "exists",
                json!({"name": name, "kind": "pods"}),
            ));
            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(request.method(), http::Method::GET);
            assert!(request.uri().path().ends_with(&format!("/pods/{name}")));
            send.send_response(metadata_of(&name, Some("someone-else")));
            // 3: a server error: was it stored? No.
            let (request, send) = handle.next_request().await.unwrap();
            let name = post(&mut names, body_json(request).await);
            send.send_response(status(503, "ServiceUnavailable", "try again", json!({})));
            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(request.method(), http::Method::GET);
            send.send_response(not_found(&name));
            // 4: created.
            let (request, send) = handle.next_request().await.unwrap();
            let body = body_json(request).await;
            let name = post(&mut names, body.clone());
            send.send_response(created(&body, &name));
            names
        });
        let (report, fatal) = api.create_pods(vec![worker(0)]).await;
        let names = tokio::time::timeout(Duration::from_secs(60), server)
            .await
            .unwrap()
            .unwrap();
        assert!(fatal.is_none());
        assert_eq!(names[0], names[1], "429 retries the same name");
        assert_ne!(names[1], names[2], "a taken name is replaced");
        assert_eq!(
            names[2], names[3],
            "after a 503 the same name is sent again"
        );
        assert_eq!(
            report,
            BatchReport {
                done: vec![names[3].clone()],
                failed: vec![],
                retried: 2,
            }
        );
    }

    /// A create whose answer is lost (the connection broke after the server stored it) is
    /// found by its name and token, and not sent again.
    #[tokio::test(start_paused = true)]
    async fn a_lost_answer_is_looked_up_not_repeated() {
        let (client, mut handle) = mock_client();
        let api = ClusterApi::new(client, "team", "https://127.0.0.1:6443");
        let server = tokio::spawn(async move {
            let (request, send) = handle.next_request().await.unwrap();
            let body = body_json(request).await;
            let name = body["metadata"]["name"].as_str().unwrap().to_owned();
            let token = body["metadata"]["annotations"][CREATE_TOKEN_ANNOTATION]
                .as_str()
                .unwrap()
                .to_owned();
            send.send_response(status(
                504,
                "Timeout",
                "the server was unable to return a response in the time allotted",
                json!({}),
            ));
            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(request.method(), http::Method::GET);
            send.send_response(metadata_of(&name, Some(&token)));
            (name, handle)
        });
        let (report, fatal) = api.create_pods(vec![worker(0)]).await;
        let (name, _handle) = tokio::time::timeout(Duration::from_secs(60), server)
            .await
            .unwrap()
            .unwrap();
        assert!(fatal.is_none());
        assert_eq!(report.done, vec![name]);
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
        let api = api.with_limits(CreateLimits {
            initial_in_flight: 2,
            max_in_flight: 2,
        });
        let (report, fatal) = api.create_pods((0..3).map(worker)).await;
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

    /// Without `list pods` nothing can be seen gone, and waiting will not change that: the
    /// wait returns at once (it waited out its whole timeout before, 2 minutes in `up`'s
    /// cleanup) with every pod reported as not seen gone.
    #[tokio::test]
    async fn waiting_for_pods_to_go_stops_at_a_forbidden_list() {
        let (client, mut handle) = mock_client();
        let api = ClusterApi::new(client, "team", "https://127.0.0.1:6443");
        let server = tokio::spawn(async move {
            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(request.method(), http::Method::GET);
            send.send_response(status(403, "Forbidden", "pods is forbidden: User \"system:serviceaccount:team:x\" cannot list resource \"pods\"", json!({"kind": "pods"})));
            handle
        });
        let names = vec!["a".to_owned(), "b".to_owned()];
        let left = tokio::time::timeout(
            Duration::from_secs(30),
            api.wait_pods_gone("dask.org/cluster-name=c", &names, Duration::from_secs(3600)),
        )
        .await
        .expect("returns at the first forbidden list, not after its timeout");
        let _handle = server.await.unwrap();
        assert_eq!(left, names);
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
        let api = api.with_limits(CreateLimits::with_max_in_flight(1));
        let (report, fatal) = api.create_pods((0..3).map(worker)).await;
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
                failed: vec![],
                retried: 0,
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

    #[rstest::rstest]
    #[case::portforward_rbac(403, "pods \"s\" is forbidden: User \"u\" cannot get resource \"pods/portforward\" in API group \"\" in the namespace \"team\"", Some(("get", "pods/portforward", "team")))]
    #[case::unparsed_403_keeps_the_call(403, "forbidden by a webhook", Some(("create", "pods/portforward", "team")))]
    #[case::not_403(404, "pods \"s\" not found", None)]
    fn a_port_forward_403_names_the_permission(
        #[case] code: u16,
        #[case] message: &str,
        #[case] expected: Option<(&str, &str, &str)>,
    ) {
        let got = forbidden(
            &api_error(code, message),
            "create",
            "pods/portforward",
            "team",
        )
        .map(|e| match e {
            Error::Forbidden {
                verb,
                resource,
                namespace,
                ..
            } => (verb, resource, namespace),
            other => panic!("{other}"),
        });
        assert_eq!(
            got,
            expected.map(|(v, r, n)| (v.to_owned(), r.to_owned(), n.to_owned()))
        );
    }

    fn api_error(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(Box::new(
            kube::core::Status::failure(message, "x").with_code(code),
        ))
    }

    #[rstest::rstest]
    #[case::throttled(429, "slow down", true, false)]
    #[case::unavailable(503, "apiserver is shutting down", true, false)]
    #[case::gateway_timeout(504, "timeout", true, false)]
    #[case::server_error_is_an_answer(500, "boom", false, false)]
    #[case::webhook_down(
        500,
        "Internal error occurred: failed calling webhook \"w.dask.org\": connection refused",
        false,
        true
    )]
    #[case::conflict(409, "exists", false, false)]
    fn what_a_failure_says_about_the_server(
        #[case] code: u16,
        #[case] message: &str,
        #[case] outage: bool,
        #[case] webhook: bool,
    ) {
        let error = api_error(code, message);
        assert_eq!(is_outage(&error), outage);
        assert_eq!(is_webhook_failure(&error), webhook);
    }

    /// Attempts bound every retry; only an outage of a server that answered before is
    /// waited out longer, and only within the budget.
    #[rstest::rstest]
    #[case::within_attempts(3, false, false, Duration::ZERO, true)]
    #[case::attempts_used(6, false, true, Duration::ZERO, false)]
    #[case::outage_before_any_answer_is_not_waited_out(6, true, false, Duration::ZERO, false)]
    #[case::outage_after_an_answer_is_waited_out(30, true, true, Duration::from_secs(60), true)]
    #[case::outage_past_the_budget(30, true, true, RETRY_BUDGET, false)]
    #[tokio::test(start_paused = true)]
    async fn when_a_failed_call_is_sent_again(
        #[case] failures: u32,
        #[case] outage: bool,
        #[case] answered_before: bool,
        #[case] since_first_failure: Duration,
        #[case] again: bool,
    ) {
        let mut retries = Retries::new(RETRY_ATTEMPTS);
        for _ in 1..failures {
            retries.again(outage, answered_before);
        }
        tokio::time::advance(since_first_failure).await;
        assert_eq!(retries.again(outage, answered_before), again);
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_honours_the_server() {
        let mut retries = Retries::new(RETRY_ATTEMPTS);
        for failures in 1..=12u32 {
            retries.again(false, false);
            let full = RETRY_INITIAL
                .saturating_mul(1 << (failures - 1).min(16))
                .min(RETRY_MAX_DELAY);
            let delay = retries.delay(None);
            assert!(
                delay >= full / 2 && delay <= full,
                "{failures}: {delay:?} vs {full:?}"
            );
        }
        assert_eq!(
            retries.delay(Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            retries.delay(Some(Duration::from_secs(600))),
            RETRY_MAX_DELAY
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
