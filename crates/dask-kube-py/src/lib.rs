//! `dask_kube._native`: the PyO3 layer between Python's `dask_kube.KubeCluster` (a
//! `distributed.deploy.Cluster` subclass in `python/dask_kube`) and the `dask-kube`
//! library. Thin on purpose: arguments arrive as one JSON document, every cluster
//! operation is an awaitable on the caller's asyncio loop (pyo3-async-runtimes over one
//! tokio runtime), and the few blocking calls (`close` at interpreter exit, waiting for a
//! cleanup after Ctrl-C) release the GIL.
//!
//! Operations that create things are undone when they do not finish: a `start` whose
//! awaitable is cancelled (Ctrl-C in a blocking call, `asyncio` cancellation) deletes the
//! partly made cluster, and a cancelled `scale` deletes the worker pods it created. The
//! undo runs on the runtime; [`Ops::wait_idle`] lets a blocking caller wait for it.

pub mod config_source;
pub mod interpreter_exit;
pub mod operator_mode;
pub mod options;

use config_source::PythonConfig;
use dask_kube::{
    AdaptPlacement, AdaptPolicy, AdaptTuning, ClientSecurity, CloseReport, ClusterApi,
    ConfigSource, Credentials, Error, KubeCluster, KubeClusterBuilder, KubeConnection, Progress,
    ProgressFn, Reconnect, ScaleReport, SchedulerClient, UpOptions, UpOutcome,
};
use dask_worker_spec::{WorkerDefaults, labels};
use options::{ClusterOptions, PodSpecArgs};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyType;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{RwLock, oneshot};

/// Bound on waiting for an interrupted operation's undo.
const UNDO_TIMEOUT: Duration = Duration::from_secs(60);

/// The Python exception class (in `dask_kube.exceptions`) for a library error. Classes
/// derive from the built-in a Python user would catch: `FileNotFoundError` for a missing
/// template, `ValueError` for bad input, `ConnectionError`, `PermissionError`,
/// `LookupError`, `TimeoutError`.
pub fn exception_class(error: &Error) -> &'static str {
    match error {
        Error::ReadFile { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            "TemplateFileNotFound"
        }
        Error::ReadFile { .. } | Error::Io { .. } => "DaskKubeOSError",
        Error::Yaml { .. }
        | Error::InvalidTemplate { .. }
        | Error::WorkerDefaults { .. }
        | Error::NoWorkerTemplate => "InvalidTemplate",
        Error::Config { .. } => "InvalidConfig",
        Error::InvalidNameTemplate { .. } | Error::InvalidClusterName(_) | Error::Usage(_) => {
            "InvalidArgument"
        }
        Error::Credentials { .. } | Error::Unreachable { .. } => "KubernetesUnreachable",
        Error::Forbidden { .. } => "Forbidden",
        Error::NamespaceNotFound(_) | Error::ClusterNotFound { .. } => "ClusterNotFound",
        Error::Timeout { .. } => "ClusterTimeout",
        Error::SchedulerFailed { .. }
        | Error::SchedulerUnreachable { .. }
        | Error::SchedulerHttp { .. }
        | Error::SchedulerAnswer { .. }
        | Error::PortForward { .. } => "SchedulerError",
        Error::WorkersFailed { .. } => "WorkersFailed",
        Error::Partial { .. } | Error::CleanupIncomplete { .. } => "PartialFailure",
        _ => "DaskKubeError",
    }
}

/// What a Python user reads for `error`: the library's message, except where it names
/// the CLI's flags (`-f/--file`), which a Python user has no use for.
pub fn python_message(error: &Error) -> String {
    match error {
        Error::NoWorkerTemplate => "no worker template: pass a pod template \
            (KubeCluster(pod_template), KubeCluster.from_yaml(path), KubeCluster.from_dict(pod)) \
            or image=, or set kubernetes.worker-template-path or kubernetes.worker-template in \
            the dask config"
            .to_owned(),
        other => other.to_string(),
    }
}

/// A library error as the matching Python exception, its message [`python_message`].
fn to_py_err(error: Error) -> PyErr {
    py_exception(exception_class(&error), python_message(&error))
}

/// An instance of `dask_kube.exceptions.<class>` (a `RuntimeError` if that cannot be had,
/// or once the interpreter is exiting: this runs on runtime threads too).
fn py_exception(class: &str, message: String) -> PyErr {
    let fallback = message.clone();
    interpreter_exit::PYTHON
        .run(|| {
            Python::attach(|py| {
                let ty = py
                    .import("dask_kube.exceptions")
                    .and_then(|m| m.getattr(class))
                    .and_then(|c| c.cast_into::<PyType>().map_err(PyErr::from));
                match ty {
                    Ok(ty) => PyErr::from_type(ty, message),
                    Err(_) => PyRuntimeError::new_err(message),
                }
            })
        })
        .unwrap_or_else(|| PyRuntimeError::new_err(fallback))
}

fn json_err(what: &str, e: serde_json::Error) -> PyErr {
    to_py_err(Error::Usage(format!("{what}: {e}")))
}

fn to_json(value: &impl serde::Serialize) -> PyResult<String> {
    serde_json::to_string(value).map_err(|e| json_err("encoding a result", e))
}

fn runtime() -> &'static tokio::runtime::Runtime {
    pyo3_async_runtimes::tokio::get_runtime()
}

/// Runs `future` to completion on the runtime with the GIL released.
fn block_on<T: Send>(py: Python<'_>, future: impl Future<Output = T> + Send) -> T {
    py.detach(|| runtime().block_on(future))
}

/// Counts operations in flight (including undos), so a blocking caller interrupted by
/// Ctrl-C can wait until nothing half-made remains.
#[derive(Default)]
struct Ops {
    inflight: AtomicUsize,
    errors: Mutex<Vec<String>>,
}

/// Holds one unit of [`Ops::inflight`] until dropped (finished or cancelled).
struct OpGuard(Arc<Ops>);

impl Ops {
    fn begin(self: &Arc<Self>) -> OpGuard {
        self.inflight.fetch_add(1, Ordering::SeqCst);
        OpGuard(self.clone())
    }

    /// Waits until no operation or undo is running; returns what undos could not delete.
    async fn wait_idle(&self, timeout: Duration) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.inflight.load(Ordering::SeqCst) > 0 {
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: "an interrupted operation to be undone".into(),
                    seconds: timeout.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let errors = std::mem::take(&mut *self.errors.lock().unwrap_or_else(|e| e.into_inner()));
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Partial {
                action: "undo an interrupted operation".into(),
                done: 0,
                wanted: errors.len(),
                failures: errors,
            })
        }
    }

    fn record(&self, leftovers: Vec<String>) {
        if !leftovers.is_empty() {
            self.errors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(leftovers);
        }
    }
}

impl Drop for OpGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Runs `undo` on the runtime unless disarmed first. It counts as an operation in flight
/// from creation until the undo (if any) has finished, with no gap in between.
struct Undo<F: Future<Output = Vec<String>> + Send + 'static> {
    ops: Arc<Ops>,
    undo: Option<F>,
    _op: OpGuard,
}

impl<F: Future<Output = Vec<String>> + Send + 'static> Undo<F> {
    fn new(ops: &Arc<Ops>, undo: F) -> Self {
        Undo {
            _op: ops.begin(),
            ops: ops.clone(),
            undo: Some(undo),
        }
    }

    fn disarm(mut self) {
        self.undo = None;
    }
}

impl<F: Future<Output = Vec<String>> + Send + 'static> Drop for Undo<F> {
    fn drop(&mut self) {
        if let Some(undo) = self.undo.take() {
            // Taken before `_op` is released (fields drop after this body).
            let guard = self.ops.begin();
            let ops = self.ops.clone();
            runtime().spawn(async move {
                let leftovers = undo.await;
                ops.record(leftovers);
                drop(guard);
            });
        }
    }
}

/// Deletes whatever exists of cluster `name` (worker pods, scheduler pod, Service), with the
/// library's one teardown; returns what is left.
async fn delete_partial_cluster(api: ClusterApi, name: String) -> Vec<String> {
    dask_kube::teardown::<SchedulerClient>(&api, None, &name, true, Some(0))
        .await
        .leftovers
}

/// Worker pod names of a cluster.
async fn worker_pod_names(api: &ClusterApi, name: &str) -> Result<BTreeSet<String>, Error> {
    Ok(api
        .list_pods(&dask_kube::selector(name, labels::WORKER))
        .await?
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect())
}

/// Progress messages, kept for `cluster.get_logs()` and `_log` (never a Python call from
/// a runtime thread).
#[derive(Default, Clone)]
struct Messages(Arc<Mutex<Vec<String>>>);

impl Messages {
    fn progress_fn(&self) -> ProgressFn {
        let messages = self.0.clone();
        Arc::new(move |p: Progress| {
            let text = match p {
                Progress::Step(step) => step,
                Progress::Workers { connected, wanted } => {
                    format!("{connected} of {wanted} workers connected")
                }
            };
            messages
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(text);
        })
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Fires the start's interrupt when dropped (the awaitable was cancelled: asyncio
/// cancellation, Ctrl-C in a blocking call) or when [`PendingCluster::abort`] fires it
/// first; after `up` finished it is a no-op.
#[derive(Clone, Default)]
struct Interrupt(Arc<Mutex<Option<oneshot::Sender<String>>>>);

impl Interrupt {
    /// The future `cluster::up` selects on: a reason, or "cancelled" when the sender went.
    fn arm(&self) -> Pin<Box<dyn Future<Output = String> + Send>> {
        let (tx, rx) = oneshot::channel();
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| "the start was cancelled".to_owned())
        })
    }

    fn fire(&self, reason: &str) {
        if let Some(tx) = self.0.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = tx.send(reason.to_owned());
        }
    }
}

/// Fires an [`Interrupt`] when the awaitable holding it is dropped before finishing.
struct FireOnDrop(Option<Interrupt>);

impl FireOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for FireOnDrop {
    fn drop(&mut self) {
        if let Some(interrupt) = self.0.take() {
            interrupt.fire("the start was cancelled");
        }
    }
}

/// A cluster whose name and namespace are settled but which is not created yet: what a
/// Ctrl-C during start needs to know to delete what was made.
#[pyclass(frozen, module = "dask_kube._native")]
pub struct PendingCluster {
    builder: Mutex<Option<KubeClusterBuilder>>,
    api: ClusterApi,
    #[pyo3(get)]
    name: String,
    #[pyo3(get)]
    namespace: String,
    /// The objects `start` creates (scheduler pod, Service, a worker pod) as JSON.
    #[pyo3(get)]
    manifests: String,
    messages: Messages,
    ops: Arc<Ops>,
    interrupt: Interrupt,
}

/// Resolves `options` (JSON of [`ClusterOptions`]) into a [`PendingCluster`]: templates
/// checked, credentials loaded, name and namespace settled. Nothing is created. `config` is
/// a function answering the process's `dask.config` (JSON of
/// [`options::PythonConfigSnapshot`]): the cluster reads it when it needs a value, so
/// `dask.config.set` applies to what it does next.
#[pyfunction]
#[pyo3(signature = (options, config=None))]
fn prepare(
    py: Python<'_>,
    options: String,
    config: Option<Py<PyAny>>,
) -> PyResult<Bound<'_, PyAny>> {
    let options: ClusterOptions =
        serde_json::from_str(&options).map_err(|e| json_err("KubeCluster arguments", e))?;
    let source =
        config.map(|getter| -> Arc<dyn ConfigSource> { Arc::new(PythonConfig::new(getter)) });
    interpreter_exit::future_into_py(py, async move {
        prepare_cluster(options, source).await.map_err(to_py_err)
    })
}

async fn prepare_cluster(
    options: ClusterOptions,
    source: Option<Arc<dyn ConfigSource>>,
) -> Result<PendingCluster, Error> {
    let messages = Messages::default();
    let builder = options.builder(source)?.on_progress(messages.progress_fn());
    let (builder, api, name) = builder.pin().await?;
    // What `up` will make, for `cluster.pod_template` and `scheduler_pod_template`.
    let manifests = builder.resolve()?.render(api.namespace())?;
    Ok(PendingCluster {
        builder: Mutex::new(Some(builder)),
        namespace: api.namespace().to_owned(),
        manifests: to_json(&manifests).map_err(|e| Error::Usage(e.to_string()))?,
        api,
        name,
        messages,
        ops: Arc::default(),
        interrupt: Interrupt::default(),
    })
}

#[pymethods]
impl PendingCluster {
    /// Creates the cluster with the library's `cluster::up` (the CLI's `up`): scheduler
    /// pod, Service and `n_workers` workers together, awaited until those workers are
    /// connected. Awaitable resolving to a [`NativeCluster`]. Cancelled (or [`abort`]ed),
    /// `up` deletes what it created.
    ///
    /// [`abort`]: PendingCluster::abort
    fn start<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let builder = self
            .builder
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("this cluster was already started"))?;
        let messages = self.messages.clone();
        let options = UpOptions::default();
        let mut interrupt = self.interrupt.arm();
        // `up` runs as its own task, counted in flight until it has finished (cleanup
        // included), so dropping the awaitable interrupts it rather than abandoning it.
        let guard = self.ops.begin();
        let ops = self.ops.clone();
        let task = runtime().spawn(async move {
            let outcome = dask_kube::up(builder, options, &mut interrupt).await;
            match &outcome {
                Ok(UpOutcome::Interrupted { report, .. }) => ops.record(report.leftovers.clone()),
                Err(Error::CleanupIncomplete { leftovers, .. }) => ops.record(leftovers.clone()),
                _ => {}
            }
            drop(guard);
            outcome
        });
        let fire_on_drop = FireOnDrop(Some(self.interrupt.clone()));
        let name = self.name.clone();
        interpreter_exit::future_into_py(py, async move {
            let outcome = task.await;
            // Finished: nothing is left to interrupt.
            fire_on_drop.disarm();
            let outcome = outcome
                .map_err(|e| Error::StartTaskFailed {
                    cluster: name.clone(),
                    reason: e.to_string(),
                })
                .and_then(|o| o)
                .map_err(to_py_err)?;
            match outcome {
                UpOutcome::Running(cluster, report) => Ok(NativeCluster::new(
                    *cluster,
                    messages,
                    Some(to_json(&report)?),
                )),
                // Seen only by a caller that is already handling the interrupt (abort).
                UpOutcome::Interrupted { reason, report } => Err(py_exception(
                    "DaskKubeError",
                    format!(
                        "the start of cluster {name} was interrupted ({reason}); deleted {} pods",
                        report.deleted_pods
                    ),
                )),
                UpOutcome::Detached(_) => Err(PyRuntimeError::new_err(
                    "the cluster was handed to a supervisor; reconnect with KubeCluster.from_name",
                )),
            }
        })
    }

    /// Blocking, GIL released: interrupts a start in flight and waits until it has
    /// deleted what it made, then deletes whatever still exists of the cluster. Raises
    /// `PartialFailure` naming what is left.
    fn abort(&self, py: Python<'_>) -> PyResult<()> {
        self.interrupt.fire("KeyboardInterrupt");
        let ops = self.ops.clone();
        let api = self.api.clone();
        let name = self.name.clone();
        block_on(py, async move {
            let waited = ops.wait_idle(UNDO_TIMEOUT).await;
            let leftovers = delete_partial_cluster(api, name.clone()).await;
            if !leftovers.is_empty() {
                return Err(Error::Partial {
                    action: format!("delete the partly started cluster {name}"),
                    done: 0,
                    wanted: leftovers.len(),
                    failures: leftovers,
                });
            }
            waited
        })
        .map_err(to_py_err)
    }

    /// Progress messages since the last call.
    fn take_messages(&self) -> Vec<String> {
        self.messages.take()
    }
}

/// A running cluster: the library's [`KubeCluster`] behind a lock (scale, workers and
/// logs share it; adapt, close and detach take it alone).
#[pyclass(frozen, module = "dask_kube._native")]
pub struct NativeCluster {
    cluster: Arc<RwLock<Option<KubeCluster>>>,
    api: ClusterApi,
    #[pyo3(get)]
    name: String,
    #[pyo3(get)]
    namespace: String,
    #[pyo3(get)]
    scheduler_address: String,
    #[pyo3(get)]
    dashboard_link: String,
    /// What `cluster::up` reported (JSON of `UpReport`: workers awaited, the
    /// `kubernetes.count.max` cap); `None` for a reconnected cluster.
    #[pyo3(get)]
    start_report: Option<String>,
    messages: Messages,
    ops: Arc<Ops>,
    /// JSON of the worker pod manifest.
    worker_pod: String,
    /// JSON of how a client talks to the scheduler: `{"mode": "cluster-ca" | "provided" |
    /// "off", "ca": PEM, "cert": PEM, "key": PEM}` (the PEMs with the cluster's own CA),
    /// what `KubeCluster.security` is made of.
    #[pyo3(get)]
    tls: String,
}

impl NativeCluster {
    fn new(cluster: KubeCluster, messages: Messages, start_report: Option<String>) -> Self {
        NativeCluster {
            start_report,
            api: cluster.api().clone(),
            name: cluster.name().to_owned(),
            namespace: cluster.namespace().to_owned(),
            scheduler_address: cluster.scheduler_address().to_owned(),
            dashboard_link: cluster.dashboard_link().to_owned(),
            worker_pod: cluster.worker_pod().to_string(),
            tls: tls_json(cluster.security()).to_string(),
            cluster: Arc::new(RwLock::new(Some(cluster))),
            messages,
            ops: Arc::default(),
        }
    }

    fn closed(name: &str) -> Error {
        Error::Usage(format!("cluster {name} is closed"))
    }
}

/// [`NativeCluster::tls`]: the mode and, with the cluster's own CA, the client's PEMs
/// (which `distributed.security.Security` takes as they are, in memory).
fn tls_json(security: &ClientSecurity) -> Value {
    match &security.client {
        Some(tls) => serde_json::json!({
            "mode": security.tls,
            "ca": tls.ca_pem,
            "cert": tls.cert_pem,
            "key": tls.key_pem,
        }),
        None => serde_json::json!({"mode": security.tls}),
    }
}

/// Reconnects to a running cluster by name (what `dask-kube attach` does); `options` is
/// JSON of [`options::ReconnectOptions`]. Awaitable resolving to a [`NativeCluster`].
#[pyfunction]
#[pyo3(signature = (name, options, config=None))]
fn connect(
    py: Python<'_>,
    name: String,
    options: String,
    config: Option<Py<PyAny>>,
) -> PyResult<Bound<'_, PyAny>> {
    let options: options::ReconnectOptions = serde_json::from_str(&options)
        .map_err(|e| json_err("KubeCluster.from_name arguments", e))?;
    let source =
        config.map(|getter| -> Arc<dyn ConfigSource> { Arc::new(PythonConfig::new(getter)) });
    interpreter_exit::future_into_py(py, async move {
        let reconnect = options.reconnect(source).map_err(to_py_err)?;
        let connection = KubeConnection::open_first(&options.auth)
            .await
            .map_err(to_py_err)?;
        let cluster = KubeCluster::from_name(
            &name,
            Reconnect {
                connection: Some(connection),
                ..reconnect
            },
        )
        .await
        .map_err(to_py_err)?;
        Ok(NativeCluster::new(cluster, Messages::default(), None))
    })
}

/// Checks that one of `credentials` (JSON list of `Credentials`, tried in order) loads:
/// classic's `await KubeConfig(...).load()`. Awaitable; raises `KubernetesUnreachable`
/// naming what failed.
#[pyfunction]
fn check_credentials(py: Python<'_>, credentials: String) -> PyResult<Bound<'_, PyAny>> {
    let credentials: Vec<Credentials> =
        serde_json::from_str(&credentials).map_err(|e| json_err("auth=", e))?;
    interpreter_exit::future_into_py(py, async move {
        KubeConnection::open_first(&credentials)
            .await
            .map(|_| ())
            .map_err(to_py_err)
    })
}

/// What `KubeCluster(...)` with `options` (JSON of [`ClusterOptions`]) would create, with
/// no cluster contacted: the resolved request's objects (scheduler pod, Service, a worker
/// pod) as JSON, in `namespace` when the request leaves it to the credentials.
#[pyfunction]
#[pyo3(signature = (options, namespace="default"))]
fn render(options: &str, namespace: &str) -> PyResult<String> {
    let options: ClusterOptions =
        serde_json::from_str(options).map_err(|e| json_err("KubeCluster arguments", e))?;
    let resolved = options
        .builder(None)
        .and_then(|b| b.resolve())
        .map_err(to_py_err)?;
    to_json(&resolved.render(namespace).map_err(to_py_err)?)
}

/// What the library reads through `config` (the function clusters are given: the
/// process's `dask.config` of the moment), as JSON: the `kubernetes.*` settings a running
/// cluster reads before each call. For `dask_kube.settings()` and tests.
#[pyfunction]
fn settings(config: Py<PyAny>) -> PyResult<String> {
    let settings = PythonConfig::new(config)
        .load()
        .and_then(|c| c.kube_settings())
        .map_err(to_py_err)?;
    to_json(&json!({
        "count_max": settings.count_max,
        "count_start": settings.count_start,
        "namespace": settings.namespace,
        "max_in_flight": settings.max_in_flight,
        "idle_timeout": settings.idle_timeout,
        "name": settings.name_template,
        "env": settings.env,
    }))
}

/// The threads and memory (bytes) one worker pod brings, as Dask counts them, each `None`
/// when its flags do not say: what `scale(memory=, cores=)` divides by.
#[pyfunction]
fn worker_capacity(pod: &str) -> PyResult<(Option<u64>, Option<u64>)> {
    let pod: Value = serde_json::from_str(pod).map_err(|e| json_err("pod", e))?;
    Ok(dask_kube::worker_capacity(&pod))
}

fn report_json(report: &ScaleReport) -> Value {
    json!(report)
}

#[pymethods]
impl NativeCluster {
    /// Scales to `n` workers (retiring before deleting unless `force`); awaitable resolving
    /// to the report as JSON. Cancelled, it deletes the worker pods it created.
    #[pyo3(signature = (n, force=false))]
    fn scale<'py>(&self, py: Python<'py>, n: usize, force: bool) -> PyResult<Bound<'py, PyAny>> {
        let cluster = self.cluster.clone();
        let guard = self.ops.begin();
        let ops = self.ops.clone();
        let api = self.api.clone();
        let name = self.name.clone();
        interpreter_exit::future_into_py(py, async move {
            let before = worker_pod_names(&api, &name).await.map_err(to_py_err)?;
            let undo = Undo::new(&ops, async move {
                // Only pods this call made are removed: they are new, so Pending or just
                // connected, and hold no data. Twice: a creation in flight when the call
                // was cancelled can still land after the first pass.
                let mut leftovers = Vec::new();
                for pass in 0..2 {
                    tokio::time::sleep(Duration::from_millis(if pass == 0 { 200 } else { 1000 }))
                        .await;
                    let now = worker_pod_names(&api, &name).await.unwrap_or_default();
                    let created: Vec<String> = now.difference(&before).cloned().collect();
                    leftovers = api
                        .delete_pods(&created, Some(0))
                        .await
                        .failed
                        .into_iter()
                        .map(|f| format!("pod/{f}"))
                        .collect();
                }
                leftovers
            });
            drop(guard);
            let result = {
                let lock = cluster.read().await;
                let c = lock
                    .as_ref()
                    .ok_or_else(|| to_py_err(NativeCluster::closed("")))?;
                c.scale_with(n, force).await
            };
            undo.disarm();
            let report = result
                .and_then(ScaleReport::into_result)
                .map_err(to_py_err)?;
            to_json(&report_json(&report))
        })
    }

    /// Starts adapting with the library's one entry point ([`KubeCluster::adapt_in`]),
    /// replacing what adapted before: in the cluster (its controller pod, which goes on
    /// without this process) when `in_cluster` and the namespace allows it, else the Rust
    /// adapt loop in this process. `minimum` defaults to 0, `maximum` to
    /// `kubernetes.count.max` (else no cap); `tuning` is JSON of [`dask_kube::AdaptTuning`]
    /// (seconds). Blocking (one or two API calls), GIL released. Returns JSON of
    /// [`dask_kube::AdaptStarted`] with the range in effect.
    #[pyo3(signature = (minimum=None, maximum=None, tuning="{}", in_cluster=true))]
    fn adapt(
        &self,
        py: Python<'_>,
        minimum: Option<u32>,
        maximum: Option<u32>,
        tuning: &str,
        in_cluster: bool,
    ) -> PyResult<String> {
        let tuning: AdaptTuning =
            serde_json::from_str(tuning).map_err(|e| json_err("adapt arguments", e))?;
        let cluster = self.cluster.clone();
        let name = self.name.clone();
        let placement = if in_cluster {
            AdaptPlacement::ControllerElseHere
        } else {
            AdaptPlacement::Here
        };
        let started = block_on(py, async move {
            let mut lock = cluster.write().await;
            let c = lock.as_mut().ok_or_else(|| NativeCluster::closed(&name))?;
            let maximum = maximum.or(c.count_max()).unwrap_or(u32::MAX);
            let policy = AdaptPolicy::from_tuning(minimum.unwrap_or(0), maximum, &tuning)?;
            let (minimum, maximum) = (policy.minimum, policy.maximum);
            let started = c.adapt_in(policy, placement).await?;
            let maximum = started
                .capped
                .map_or(maximum, |cap| u32::try_from(cap.max).unwrap_or(u32::MAX));
            Ok::<_, Error>(json!({
                "minimum": minimum.min(maximum),
                "maximum": maximum,
                "capped": started.capped,
                "controller": started.controller,
                "controller_unavailable": started.controller_unavailable,
            }))
        })
        .map_err(to_py_err)?;
        to_json(&started)
    }

    /// Stops adapting (this process's loop, and the controller pod's when it adapts);
    /// awaitable.
    fn stop_adapting<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let cluster = self.cluster.clone();
        interpreter_exit::future_into_py(py, async move {
            let mut lock = cluster.write().await;
            match lock.as_mut() {
                Some(c) => c.stop_all_adapting().await.map_err(to_py_err),
                None => Ok(()),
            }
        })
    }

    /// Whether something adapts: the loop in this process, or the controller pod.
    fn is_adapting(&self) -> bool {
        self.cluster
            .try_read()
            .map(|c| {
                c.as_ref()
                    .is_some_and(|c| c.is_adapting() || c.controller_adapts())
            })
            .unwrap_or(false)
    }

    /// The worker pod manifest new workers are made from, as JSON.
    #[getter]
    fn worker_pod(&self) -> String {
        self.worker_pod.clone()
    }

    /// Worker pods and their connection state; awaitable resolving to JSON.
    fn workers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let cluster = self.cluster.clone();
        let name = self.name.clone();
        interpreter_exit::future_into_py(py, async move {
            let lock = cluster.read().await;
            let c = lock
                .as_ref()
                .ok_or_else(|| to_py_err(NativeCluster::closed(&name)))?;
            to_json(&c.workers().await.map_err(to_py_err)?)
        })
    }

    /// Waits until `n` workers are connected; awaitable resolving to the count.
    fn wait_for_workers<'py>(
        &self,
        py: Python<'py>,
        n: usize,
        timeout_seconds: f64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let cluster = self.cluster.clone();
        let name = self.name.clone();
        let timeout = Duration::try_from_secs_f64(timeout_seconds).unwrap_or(Duration::MAX);
        interpreter_exit::future_into_py(py, async move {
            let lock = cluster.read().await;
            let c = lock
                .as_ref()
                .ok_or_else(|| to_py_err(NativeCluster::closed(&name)))?;
            c.wait_for_workers(n, timeout).await.map_err(to_py_err)
        })
    }

    /// Pod logs by pod name (scheduler and workers); awaitable resolving to JSON.
    fn logs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let cluster = self.cluster.clone();
        let name = self.name.clone();
        interpreter_exit::future_into_py(py, async move {
            let lock = cluster.read().await;
            let c = lock
                .as_ref()
                .ok_or_else(|| to_py_err(NativeCluster::closed(&name)))?;
            to_json(&c.logs().await.map_err(to_py_err)?)
        })
    }

    /// Retires and deletes everything; awaitable resolving to the report as JSON.
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let cluster = self.cluster.clone();
        let ops = self.ops.clone();
        interpreter_exit::future_into_py(py, async move {
            close_cluster(cluster, ops).await.map_err(to_py_err)
        })
    }

    /// [`NativeCluster::close`], blocking with the GIL released (interpreter exit, where
    /// the event loop may be gone).
    fn close_blocking(&self, py: Python<'_>) -> PyResult<String> {
        let cluster = self.cluster.clone();
        let ops = self.ops.clone();
        block_on(py, close_cluster(cluster, ops)).map_err(to_py_err)
    }

    /// Stops the local listeners and adapting; the cluster keeps running; awaitable.
    fn detach<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let cluster = self.cluster.clone();
        interpreter_exit::future_into_py(py, async move {
            let taken = cluster.write().await.take();
            match taken {
                Some(c) => c.detach().await.map_err(to_py_err),
                None => Ok(()),
            }
        })
    }

    /// [`NativeCluster::detach`], blocking with the GIL released.
    fn detach_blocking(&self, py: Python<'_>) -> PyResult<()> {
        let cluster = self.cluster.clone();
        block_on(py, async move {
            match cluster.write().await.take() {
                Some(c) => c.detach().await,
                None => Ok(()),
            }
        })
        .map_err(to_py_err)
    }

    /// Blocking, GIL released: waits until no operation or undo runs (after Ctrl-C
    /// interrupted a blocking `scale`). Raises `PartialFailure` naming what an undo could
    /// not delete.
    fn wait_idle(&self, py: Python<'_>) -> PyResult<()> {
        let ops = self.ops.clone();
        block_on(py, async move { ops.wait_idle(UNDO_TIMEOUT).await }).map_err(to_py_err)
    }

    /// Whether the cluster was closed or detached.
    fn is_closed(&self) -> bool {
        self.cluster
            .try_read()
            .map(|c| c.is_none())
            .unwrap_or(false)
    }

    /// Progress messages since the last call.
    fn take_messages(&self) -> Vec<String> {
        self.messages.take()
    }
}

async fn close_cluster(
    cluster: Arc<RwLock<Option<KubeCluster>>>,
    ops: Arc<Ops>,
) -> Result<String, Error> {
    // An interrupted scale's undo first, so close sees every pod.
    let _ = ops.wait_idle(UNDO_TIMEOUT).await;
    let taken = cluster.write().await.take();
    let report = match taken {
        Some(c) => c.close().await?,
        None => CloseReport::default(),
    };
    serde_json::to_string(&report).map_err(|e| Error::Usage(e.to_string()))
}

/// `make_pod_spec(...)` (arguments as JSON of [`PodSpecArgs`]): the pod as JSON and the
/// defaults' warnings.
#[pyfunction]
fn make_pod_spec(args: &str) -> PyResult<(String, Vec<String>)> {
    let args: PodSpecArgs =
        serde_json::from_str(args).map_err(|e| json_err("make_pod_spec arguments", e))?;
    let (pod, warnings) =
        options::make_pod_spec(&args, &WorkerDefaults::default()).map_err(to_py_err)?;
    Ok((to_json(&pod)?, warnings))
}

/// The worker defaults of `dask-worker-spec` as the policy applies them to a bare Pod:
/// the defaulted pod as JSON, or `None` when the policy would change nothing.
#[pyfunction]
fn policy_defaults(pod: &str) -> PyResult<Option<String>> {
    let pod: Value = serde_json::from_str(pod).map_err(|e| json_err("pod", e))?;
    let out =
        dask_worker_spec::default_object("", "Pod", "CREATE", pod, &WorkerDefaults::default())
            .map_err(|e| {
                to_py_err(Error::WorkerDefaults {
                    origin: "pod".into(),
                    source: Box::new(e),
                })
            })?;
    out.mutated.map(|p| to_json(&p)).transpose()
}

/// Classic's `clean_pod_template(pod, apply_default_affinity=, pod_type=)`: the pod (JSON)
/// with the dedicated-pool affinity of `component` that `mode` asks for, as JSON.
#[pyfunction]
fn apply_default_affinity(pod: &str, component: &str, mode: &str) -> PyResult<String> {
    let mut pod: Value = serde_json::from_str(pod).map_err(|e| json_err("pod", e))?;
    let mode: dask_kube::DefaultAffinity =
        mode.parse()
            .map_err(|e: dask_worker_spec::UnknownAffinityMode| {
                to_py_err(Error::Usage(format!("apply_default_affinity: {e}")))
            })?;
    let component = match component {
        "worker" => dask_kube::DaskComponent::Worker,
        "scheduler" => dask_kube::DaskComponent::Scheduler,
        other => {
            return Err(to_py_err(Error::Usage(format!(
                "pod_type {other:?}: \"worker\" or \"scheduler\""
            ))));
        }
    };
    dask_kube::default_affinity(&mut pod, component, mode).map_err(to_py_err)?;
    to_json(&pod)
}

/// Sends the library's tracing events to stderr, filtered like `RUST_LOG`
/// (`dask_kube=info`); for debugging from Python.
#[pyfunction]
fn init_logging(filter: &str) -> PyResult<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| to_py_err(Error::Usage(format!("log filter {filter:?}: {e}"))))?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    Ok(())
}

/// The extension module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    dask_kube::install_crypto_provider();
    m.add_class::<PendingCluster>()?;
    m.add_class::<NativeCluster>()?;
    m.add_class::<operator_mode::OperatorNativeCluster>()?;
    m.add_function(wrap_pyfunction!(operator_mode::operator_start, m)?)?;
    m.add_function(wrap_pyfunction!(operator_mode::render_dask_cluster, m)?)?;
    m.add_function(wrap_pyfunction!(prepare, m)?)?;
    m.add_function(wrap_pyfunction!(connect, m)?)?;
    m.add_function(wrap_pyfunction!(check_credentials, m)?)?;
    m.add_function(wrap_pyfunction!(render, m)?)?;
    m.add_function(wrap_pyfunction!(worker_capacity, m)?)?;
    m.add_function(wrap_pyfunction!(settings, m)?)?;
    m.add_function(wrap_pyfunction!(make_pod_spec, m)?)?;
    m.add_function(wrap_pyfunction!(policy_defaults, m)?)?;
    m.add_function(wrap_pyfunction!(apply_default_affinity, m)?)?;
    m.add_function(wrap_pyfunction!(init_logging, m)?)?;
    m.add_function(wrap_pyfunction!(
        interpreter_exit::close_at_interpreter_exit,
        m
    )?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use std::path::PathBuf;

    #[rstest]
    #[case::missing_file(Error::ReadFile { path: PathBuf::from("w.yml"), source: std::io::Error::from(std::io::ErrorKind::NotFound) }, "TemplateFileNotFound")]
    #[case::unreadable_file(Error::ReadFile { path: PathBuf::from("w.yml"), source: std::io::Error::from(std::io::ErrorKind::PermissionDenied) }, "DaskKubeOSError")]
    #[case::bad_template(Error::InvalidTemplate { what: "worker", origin: "x".into(), reason: "y".into() }, "InvalidTemplate")]
    #[case::forbidden(Error::Forbidden { verb: "create".into(), resource: "pods".into(), namespace: "ns".into(), message: "m".into() }, "Forbidden")]
    #[case::unreachable(Error::Credentials { reason: "no kubeconfig".into() }, "KubernetesUnreachable")]
    #[case::not_found(Error::ClusterNotFound { name: "a".into(), namespace: "b".into() }, "ClusterNotFound")]
    #[case::timeout(Error::Timeout { what: "w".into(), seconds: 1 }, "ClusterTimeout")]
    #[case::usage(Error::Usage("bad".into()), "InvalidArgument")]
    #[case::every_worker_pod_ended(Error::WorkersFailed { wanted: 2, connected: 0, ended: "w-a (Failed)".into(), pod: "w-a".into(), reason: "phase Failed".into() }, "WorkersFailed")]
    #[case::partial(Error::Partial { action: "a".into(), done: 0, wanted: 1, failures: vec![] }, "PartialFailure")]
    fn errors_map_to_python_classes_by_meaning(#[case] error: Error, #[case] class: &str) {
        assert_eq!(exception_class(&error), class);
    }

    #[rstest]
    #[case::no_template(Error::NoWorkerTemplate, "KubeCluster.from_yaml(path)", "--file")]
    #[case::others_keep_the_library_text(Error::Usage("adapt minimum 3 is above maximum 1".into()), "adapt minimum 3 is above maximum 1", "KubeCluster")]
    fn python_messages_name_python_not_cli_flags(
        #[case] error: Error,
        #[case] says: &str,
        #[case] does_not_say: &str,
    ) {
        let message = python_message(&error);
        assert!(message.contains(says), "{message}");
        assert!(!message.contains(does_not_say), "{message}");
    }

    #[test]
    fn every_class_named_exists_in_the_python_module() {
        let module = include_str!("../python/dask_kube/exceptions.py");
        for class in [
            "TemplateFileNotFound",
            "DaskKubeOSError",
            "InvalidTemplate",
            "InvalidConfig",
            "InvalidArgument",
            "KubernetesUnreachable",
            "Forbidden",
            "ClusterNotFound",
            "ClusterTimeout",
            "SchedulerError",
            "WorkersFailed",
            "PartialFailure",
            "DaskKubeError",
        ] {
            assert!(module.contains(&format!("class {class}(")), "{class}");
        }
    }
}
