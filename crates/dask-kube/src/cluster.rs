//! [`KubeCluster`]: the classic dask-kubernetes `KubeCluster` in Rust. Creates a scheduler
//! pod and Service, makes the scheduler reachable from this machine, and scales worker pods
//! by hand or adaptively; [`KubeCluster::close`] retires and deletes everything.

use crate::adapt::AdaptPolicy;
use crate::config::{DaskConfig, KubeSettings, format_dashboard_link};
use crate::kube_ops::{self, ClusterApi, CreateLimits};
use crate::manifests::{
    self, ClusterSpec, DASHBOARD_PORT, Owner, SCHEDULER_PORT, WORKER_TEMPLATE_ANNOTATION,
};
use crate::names::{self, NameVars};
use crate::portforward::{LocalForwarder, PodPortConnect};
use crate::scaler::{ScaleReport, Scaler};
use crate::scaling::{PodPhase, SchedulerWorker, WorkerPodState, workers_by_pod};
use crate::scheduler_api::{HttpSchedulerApi, SchedulerApi, TcpConnect};
use crate::template::PodTemplate;
use crate::{Error, Result};
use dask_worker_spec::{WorkerDefaults, labels};
use k8s_openapi::api::core::v1::Pod;
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Bound on the scheduler pod becoming Running.
pub const SCHEDULER_START_TIMEOUT: Duration = Duration::from_secs(180);
/// Bound on the scheduler's HTTP API answering once the pod runs.
pub const SCHEDULER_API_TIMEOUT: Duration = Duration::from_secs(60);
/// Time between checks while waiting for the scheduler's API or workers.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Bound on retiring all workers while closing.
pub const CLOSE_RETIRE_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on the pods disappearing after close deleted them.
pub const CLOSE_WAIT_TIMEOUT: Duration = Duration::from_secs(60);

/// A progress event for a UI (a progress bar on a terminal, plain lines otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// A step starts.
    Step(String),
    /// Workers connected so far, of how many wanted.
    Workers {
        /// Connected.
        connected: usize,
        /// Wanted.
        wanted: usize,
    },
}

/// Receives [`Progress`] events.
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// How the scheduler is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Access {
    /// Inside the cluster when the Service resolves, else port-forward.
    #[default]
    Auto,
    /// Always through kube-rs port-forward and a local listener.
    PortForward,
    /// Always through the Service DNS name (inside the cluster).
    Direct,
}

/// The scheduler HTTP client, however it connects.
pub enum SchedulerClient {
    /// Over port-forward streams.
    Forwarded(Box<HttpSchedulerApi<PodPortConnect>>),
    /// Over TCP.
    Tcp(Box<HttpSchedulerApi<TcpConnect>>),
}

impl SchedulerApi for SchedulerClient {
    async fn adaptive_target(&self) -> Result<u32> {
        match self {
            SchedulerClient::Forwarded(a) => a.adaptive_target().await,
            SchedulerClient::Tcp(a) => a.adaptive_target().await,
        }
    }
    async fn workers(&self) -> Result<Vec<SchedulerWorker>> {
        match self {
            SchedulerClient::Forwarded(a) => a.workers().await,
            SchedulerClient::Tcp(a) => a.workers().await,
        }
    }
    async fn retire_workers(&self, addresses: &[String]) -> Result<BTreeSet<String>> {
        match self {
            SchedulerClient::Forwarded(a) => a.retire_workers(addresses).await,
            SchedulerClient::Tcp(a) => a.retire_workers(addresses).await,
        }
    }
    fn endpoint(&self) -> String {
        match self {
            SchedulerClient::Forwarded(a) => a.endpoint(),
            SchedulerClient::Tcp(a) => a.endpoint(),
        }
    }
}

/// A running adaptive controller; stops when [`AdaptHandle::stop`] is called or it is dropped.
pub struct AdaptHandle {
    cancel: CancellationToken,
    task: Option<JoinHandle<Result<()>>>,
}

impl AdaptHandle {
    /// Stops adapting and waits for the loop to finish its current step.
    pub async fn stop(mut self) -> Result<()> {
        self.cancel.cancel();
        match self.task.take() {
            Some(task) => task
                .await
                .unwrap_or_else(|e| Err(Error::Supervisor(format!("the adapt task failed: {e}")))),
            None => Ok(()),
        }
    }

    /// Whether the loop is still running.
    pub fn is_running(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for AdaptHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// A worker pod and its scheduler-side state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerInfo {
    /// Pod name.
    pub pod: String,
    /// Phase.
    pub phase: PodPhase,
    /// Why it ended, if it did.
    pub reason: Option<String>,
    /// The Dask workers in it that are connected (addresses).
    pub connected: Vec<String>,
}

/// What [`KubeCluster::close`] could not remove.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CloseReport {
    /// Workers retired before deletion.
    pub retired: usize,
    /// Pods deleted.
    pub deleted_pods: usize,
    /// Objects still present, and why.
    pub leftovers: Vec<String>,
}

/// A Dask cluster on Kubernetes.
///
/// Call [`KubeCluster::close`] to delete it: dropping the handle stops the local listeners
/// and the adapt loop but leaves the pods (cleanup needs the API server, which `Drop`
/// cannot await). Whatever is left is owned by the scheduler pod: deleting that pod, or
/// `dask-kube down NAME`, removes the rest.
///
/// # Example
/// ```no_run
/// # async fn f() -> dask_kube::Result<()> {
/// use dask_kube::KubeCluster;
/// let mut cluster = KubeCluster::from_yaml("worker-spec.yml").await?;
/// println!("scheduler: {}", cluster.scheduler_address());
/// println!("dashboard: {}", cluster.dashboard_link());
/// cluster.scale(3).await?;
/// cluster.adapt(1, 10)?;
/// // ... use it from a distributed.Client ...
/// cluster.close().await?;
/// # Ok(()) }
/// ```
pub struct KubeCluster {
    name: String,
    scaler: Arc<Scaler<SchedulerClient>>,
    owner: Option<Owner>,
    address: String,
    dashboard: String,
    /// Local listeners: the scheduler's comm port first, then the dashboard.
    forwarders: Vec<LocalForwarder>,
    adapt: Option<AdaptHandle>,
    progress: ProgressFn,
}

/// Builds a [`KubeCluster`]; every setting falls back to the Dask config, then defaults.
#[must_use]
pub struct KubeClusterBuilder {
    worker_template: Option<PodTemplate>,
    worker_template_path: Option<PathBuf>,
    scheduler_template: Option<PodTemplate>,
    namespace: Option<String>,
    name_template: Option<String>,
    name: Option<String>,
    scheduler_options: Vec<String>,
    external_scheduler: Option<String>,
    adaptive_target_duration: Option<String>,
    defaults: WorkerDefaults,
    config: Option<DaskConfig>,
    client: Option<(kube::Client, String, String)>,
    access: Access,
    local_port: u16,
    limits: CreateLimits,
    progress: Option<ProgressFn>,
    name_vars: Option<NameVars>,
}

impl Default for KubeClusterBuilder {
    fn default() -> Self {
        KubeClusterBuilder {
            worker_template: None,
            worker_template_path: None,
            scheduler_template: None,
            namespace: None,
            name_template: None,
            name: None,
            scheduler_options: Vec::new(),
            external_scheduler: None,
            adaptive_target_duration: None,
            defaults: WorkerDefaults::default(),
            config: None,
            client: None,
            access: Access::Auto,
            local_port: 0,
            limits: CreateLimits::default(),
            progress: None,
            name_vars: None,
        }
    }
}

impl KubeClusterBuilder {
    /// The worker pod template.
    pub fn worker_template(mut self, template: PodTemplate) -> Self {
        self.worker_template = Some(template);
        self
    }
    /// The worker pod template file (`-f worker-spec.yml`).
    pub fn worker_template_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.worker_template_path = Some(path.into());
        self
    }
    /// A scheduler pod template (else derived from the worker template).
    pub fn scheduler_template(mut self, template: PodTemplate) -> Self {
        self.scheduler_template = Some(template);
        self
    }
    /// The namespace.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }
    /// The name template (`dask-{user}-{uuid}`).
    pub fn name_template(mut self, template: impl Into<String>) -> Self {
        self.name_template = Some(template.into());
        self
    }
    /// An exact cluster name instead of a template.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
    /// Extra `dask scheduler` options.
    pub fn scheduler_options<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        options: I,
    ) -> Self {
        self.scheduler_options = options.into_iter().map(Into::into).collect();
        self
    }
    /// The scheduler's `distributed.adaptive.target-duration` (`500ms`, `2s`): how long
    /// the scheduler wants the queued work to take, which sets the worker count it asks
    /// for. Dask's default is 5 s; default here: the Dask config's value, if set.
    pub fn adaptive_target_duration(mut self, duration: impl Into<String>) -> Self {
        self.adaptive_target_duration = Some(duration.into());
        self
    }
    /// Use a scheduler that already runs elsewhere (no scheduler pod).
    pub fn scheduler_address(mut self, address: impl Into<String>) -> Self {
        self.external_scheduler = Some(address.into());
        self
    }
    /// The worker defaults (tolerations, death timeout, ...).
    pub fn worker_defaults(mut self, defaults: WorkerDefaults) -> Self {
        self.defaults = defaults;
        self
    }
    /// The Dask config to read `kubernetes.*` from (default: files and environment).
    pub fn config(mut self, config: DaskConfig) -> Self {
        self.config = Some(config);
        self
    }
    /// A Kubernetes client, its default namespace and server URL (default: [`kube_ops::connect`]).
    pub fn client(
        mut self,
        client: kube::Client,
        default_namespace: impl Into<String>,
        url: impl Into<String>,
    ) -> Self {
        self.client = Some((client, default_namespace.into(), url.into()));
        self
    }
    /// How the scheduler is reached.
    pub fn access(mut self, access: Access) -> Self {
        self.access = access;
        self
    }
    /// The local port of the scheduler address when port-forwarding (0 picks one).
    pub fn local_port(mut self, port: u16) -> Self {
        self.local_port = port;
        self
    }
    /// Pod creation pacing.
    pub fn create_limits(mut self, limits: CreateLimits) -> Self {
        self.limits = limits;
        self
    }
    /// Progress events.
    pub fn on_progress(mut self, progress: ProgressFn) -> Self {
        self.progress = Some(progress);
        self
    }
    /// The user, uuid and environment of the name template (default: this process's).
    pub fn name_vars(mut self, vars: NameVars) -> Self {
        self.name_vars = Some(vars);
        self
    }

    /// Resolves templates, name and namespace without contacting a cluster: what `render`
    /// prints and what [`KubeClusterBuilder::start`] creates.
    pub fn spec(&self, default_namespace: Option<&str>) -> Result<ClusterSpec> {
        let config = match &self.config {
            Some(c) => c.clone(),
            None => DaskConfig::load()?,
        };
        let settings = config.kube_settings()?;
        resolve_spec(self, &settings, default_namespace)
    }

    /// Creates the scheduler pod and Service, waits for the scheduler, and makes it
    /// reachable. Anything created is deleted again when a later step fails.
    pub async fn start(self) -> Result<KubeCluster> {
        let config = match &self.config {
            Some(c) => c.clone(),
            None => DaskConfig::load()?,
        };
        let settings = config.kube_settings()?;
        let progress = self.progress.clone().unwrap_or_else(|| Arc::new(|_| {}));
        // Everything that can be checked without a cluster is checked before creating anything.
        let probe_spec = resolve_spec(&self, &settings, Some("default"))?;
        probe_spec.worker_pod()?;
        if probe_spec.external_scheduler.is_none() {
            probe_spec.scheduler_pod()?;
        }
        let (client, default_ns, url) = match self.client.clone() {
            Some(c) => c,
            None => kube_ops::connect().await?,
        };
        let spec = resolve_spec(&self, &settings, Some(&default_ns))?;
        let api = ClusterApi::new(client, spec.namespace.clone(), url);
        let worker = spec.worker_pod()?;
        for warning in &worker.warnings {
            warn!(%warning, "worker template");
        }
        let dashboard_template = settings.dashboard_link.clone();
        let env = config.env().to_vec();
        if spec.external_scheduler.is_some() {
            return start_external(
                self,
                spec,
                api,
                worker.pod,
                settings.count_max,
                progress,
                &dashboard_template,
                &env,
            )
            .await;
        }
        progress(Progress::Step(format!(
            "creating scheduler pod {}/{}",
            spec.namespace, spec.name
        )));
        let mut scheduler_pod = spec.scheduler_pod()?;
        manifests::annotate(
            &mut scheduler_pod,
            WORKER_TEMPLATE_ANNOTATION,
            &manifests::worker_template_annotation(&worker.pod),
        );
        let created = api.create_pod(&manifests::to_pod(scheduler_pod)?).await?;
        let owner = Owner {
            name: spec.name.clone(),
            uid: created.metadata.uid.clone().unwrap_or_default(),
        };
        info!(cluster = %spec.name, namespace = %spec.namespace, "scheduler pod created");
        let setup = async {
            progress(Progress::Step("creating scheduler service".into()));
            api.apply_service(&manifests::to_service(spec.service(Some(&owner)))?)
                .await?;
            progress(Progress::Step(
                "waiting for the scheduler pod to run".into(),
            ));
            wait_scheduler_running(&api, &spec.name).await?;
            connect_scheduler(&api, &spec.name, self.access, self.local_port, &progress).await
        };
        let (client_api, address, forwarders, dashboard_host) = match setup.await {
            Ok(v) => v,
            Err(cause) => return Err(cleanup_after_failure(&api, &spec.name, cause).await),
        };
        let dashboard = format_dashboard_link(
            &dashboard_template,
            &dashboard_host.0,
            dashboard_host.1,
            &env,
        )?;
        let scaler = Scaler::new(
            api,
            Arc::new(client_api),
            spec.name.clone(),
            worker.pod,
            Some(owner.clone()),
        )
        .with_limits(self.limits)
        .with_count_max(settings.count_max);
        Ok(KubeCluster {
            name: spec.name,
            scaler: Arc::new(scaler),
            owner: Some(owner),
            address,
            dashboard,
            forwarders,
            adapt: None,
            progress,
        })
    }
}

#[allow(clippy::too_many_arguments)]
async fn start_external(
    builder: KubeClusterBuilder,
    spec: ClusterSpec,
    api: ClusterApi,
    worker_pod: Value,
    count_max: Option<u32>,
    progress: ProgressFn,
    dashboard_template: &str,
    env: &[(String, String)],
) -> Result<KubeCluster> {
    let address = spec.external_scheduler.clone().unwrap_or_default();
    let host = address
        .trim_start_matches("tcp://")
        .rsplit_once(':')
        .map_or(address.as_str(), |(h, _)| h)
        .to_owned();
    let http = TcpConnect {
        address: format!("{host}:{DASHBOARD_PORT}"),
    };
    let scaler = Scaler::new(
        api,
        Arc::new(SchedulerClient::Tcp(Box::new(HttpSchedulerApi::new(http)))),
        spec.name.clone(),
        worker_pod,
        None,
    )
    .with_limits(builder.limits)
    .with_count_max(count_max);
    Ok(KubeCluster {
        name: spec.name,
        scaler: Arc::new(scaler),
        owner: None,
        dashboard: format_dashboard_link(dashboard_template, &host, DASHBOARD_PORT, env)?,
        address,
        forwarders: Vec::new(),
        adapt: None,
        progress,
    })
}

fn resolve_spec(
    b: &KubeClusterBuilder,
    settings: &KubeSettings,
    default_ns: Option<&str>,
) -> Result<ClusterSpec> {
    let worker = match (&b.worker_template, &b.worker_template_path) {
        (Some(t), _) => t.clone(),
        (None, Some(path)) => PodTemplate::from_file(path, "worker")?,
        (None, None) => match (&settings.worker_template_path, &settings.worker_template) {
            (Some(path), _) => PodTemplate::from_file(path, "worker")?,
            (None, Some(inline)) => {
                PodTemplate::from_value(inline.clone(), "kubernetes.worker-template", "worker")?
            }
            (None, None) => return Err(Error::NoWorkerTemplate),
        },
    };
    let scheduler = match (&b.scheduler_template, &settings.scheduler_template) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(inline)) => Some(PodTemplate::from_value(
            inline.clone(),
            "kubernetes.scheduler-template",
            "scheduler",
        )?),
        (None, None) => None,
    };
    let vars = b
        .name_vars
        .clone()
        .unwrap_or_else(NameVars::from_environment);
    let name = match &b.name {
        Some(n) => {
            names::validate_cluster_name(n)?;
            n.clone()
        }
        None => names::cluster_name(
            b.name_template
                .as_deref()
                .unwrap_or(&settings.name_template),
            &vars,
        )?,
    };
    let namespace = b
        .namespace
        .clone()
        .or_else(|| settings.namespace.clone())
        .or_else(|| default_ns.map(str::to_owned))
        .unwrap_or_else(|| "default".to_owned());
    let adaptive_target_duration = b
        .adaptive_target_duration
        .clone()
        .or_else(|| settings.adaptive_target_duration.clone());
    if let Some(duration) = &adaptive_target_duration {
        crate::manifests::validate_timedelta(duration)
            .map_err(|reason| Error::Usage(format!("adaptive target duration: {reason}")))?;
    }
    Ok(ClusterSpec {
        name,
        namespace,
        user: names::user_label(&vars.user),
        worker,
        scheduler,
        scheduler_options: b.scheduler_options.clone(),
        defaults: b.defaults.clone(),
        external_scheduler: b.external_scheduler.clone(),
        adaptive_target_duration,
    })
}

/// Waits until the scheduler pod runs; a pod that ends or never starts is an error that
/// says why.
async fn wait_scheduler_running(api: &ClusterApi, name: &str) -> Result<()> {
    let cond = |pod: Option<&Pod>| {
        pod.and_then(|p| p.status.as_ref())
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|phase| matches!(phase, "Running" | "Failed" | "Succeeded"))
            || pod.is_none()
    };
    let waited = api
        .wait_pod(
            name,
            &format!("scheduler pod {name} to run"),
            SCHEDULER_START_TIMEOUT,
            cond,
        )
        .await;
    let pod = match waited {
        Ok(pod) => pod,
        Err(Error::Timeout { what, seconds }) => {
            let detail = match api.get_pod(name).await {
                Ok(Some(p)) => describe_pod_status(&p),
                _ => String::new(),
            };
            return Err(Error::Timeout {
                what: format!("{what}{detail}"),
                seconds,
            });
        }
        Err(e) => return Err(e),
    };
    let Some(pod) = pod else {
        return Err(Error::SchedulerFailed {
            pod: name.to_owned(),
            reason: "it was deleted".into(),
        });
    };
    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Running") => Ok(()),
        _ => Err(scheduler_failure(api, name, &pod).await),
    }
}

/// The error for a scheduler pod that ended: phase, container state and its last log lines.
async fn scheduler_failure(api: &ClusterApi, name: &str, pod: &Pod) -> Error {
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "Unknown".into());
    let logs = api.logs(name, None).await.unwrap_or_default();
    let tail: Vec<&str> = logs.lines().rev().take(10).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Error::SchedulerFailed {
        pod: name.to_owned(),
        reason: format!(
            "phase {phase}{}{}",
            describe_pod_status(pod),
            if tail.is_empty() {
                String::new()
            } else {
                format!("; last log lines:\n{}", tail.join("\n"))
            }
        ),
    }
}

/// `(reason: message)` of a pod that is stuck or ended, for messages.
fn describe_pod_status(pod: &Pod) -> String {
    let Some(status) = pod.status.as_ref() else {
        return String::new();
    };
    let mut parts = Vec::new();
    if let Some(conditions) = &status.conditions {
        for c in conditions.iter().filter(|c| c.status == "False") {
            if let Some(message) = &c.message {
                parts.push(format!("{}: {message}", c.type_));
            }
        }
    }
    for cs in status.container_statuses.iter().flatten() {
        if let Some(state) = &cs.state {
            if let Some(w) = &state.waiting {
                parts.push(format!(
                    "{} waiting: {} {}",
                    cs.name,
                    w.reason.clone().unwrap_or_default(),
                    w.message.clone().unwrap_or_default()
                ));
            }
            if let Some(t) = &state.terminated {
                parts.push(format!(
                    "{} exited {} ({})",
                    cs.name,
                    t.exit_code,
                    t.reason.clone().unwrap_or_default()
                ));
            }
        }
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join("; "))
    }
}

type Connected = (SchedulerClient, String, Vec<LocalForwarder>, (String, u16));

/// Makes the scheduler reachable: the Service inside the cluster, else a local listener
/// forwarding to the pod. Waits until its HTTP API answers.
async fn connect_scheduler(
    api: &ClusterApi,
    name: &str,
    access: Access,
    local_port: u16,
    progress: &ProgressFn,
) -> Result<Connected> {
    let service_host = format!("{name}.{}", api.namespace());
    let direct = match access {
        Access::Direct => true,
        Access::PortForward => false,
        Access::Auto => {
            std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
                && tokio::net::lookup_host(format!("{service_host}:{SCHEDULER_PORT}"))
                    .await
                    .is_ok()
        }
    };
    let connected: Connected = if direct {
        let http = TcpConnect {
            address: format!("{service_host}:{DASHBOARD_PORT}"),
        };
        (
            SchedulerClient::Tcp(Box::new(HttpSchedulerApi::new(http))),
            format!("tcp://{service_host}:{SCHEDULER_PORT}"),
            Vec::new(),
            (service_host, DASHBOARD_PORT),
        )
    } else {
        let bind = SocketAddr::from((Ipv4Addr::LOCALHOST, local_port));
        let comm =
            LocalForwarder::start(bind, PodPortConnect::new(api.pods(), name, SCHEDULER_PORT))
                .await?;
        let address = format!("tcp://{}", comm.address());
        // The dashboard gets its own local port, so the printed link works from a browser here.
        let dashboard = LocalForwarder::start(
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            PodPortConnect::new(api.pods(), name, DASHBOARD_PORT),
        )
        .await?;
        let dashboard_port = dashboard.address().port();
        (
            SchedulerClient::Forwarded(Box::new(HttpSchedulerApi::new(PodPortConnect::new(
                api.pods(),
                name,
                DASHBOARD_PORT,
            )))),
            address,
            vec![comm, dashboard],
            (Ipv4Addr::LOCALHOST.to_string(), dashboard_port),
        )
    };
    progress(Progress::Step(format!(
        "waiting for the scheduler API at {}",
        connected.0.endpoint()
    )));
    let deadline = Instant::now() + SCHEDULER_API_TIMEOUT;
    loop {
        match connected.0.adaptive_target().await {
            Ok(_) => break,
            Err(e) if Instant::now() >= deadline => {
                return Err(Error::Timeout {
                    what: format!("the scheduler's HTTP API ({e})"),
                    seconds: SCHEDULER_API_TIMEOUT.as_secs(),
                });
            }
            Err(_) => {
                // The pod may have ended meanwhile: say so rather than time out.
                if let Ok(Some(pod)) = api.get_pod(name).await
                    && pod
                        .status
                        .as_ref()
                        .and_then(|s| s.phase.as_deref())
                        .is_some_and(|p| p == "Failed" || p == "Succeeded")
                {
                    return Err(scheduler_failure(api, name, &pod).await);
                }
                tokio::time::sleep(POLL_INTERVAL).await;
            }
        }
    }
    Ok(connected)
}

/// Deletes what a failed `up` created and folds what could not be deleted into the error.
async fn cleanup_after_failure(api: &ClusterApi, name: &str, cause: Error) -> Error {
    warn!(cluster = %name, error = %cause, "start failed; deleting what was created");
    let mut leftovers = Vec::new();
    let workers = api
        .list_pods(&manifests::selector(name, labels::WORKER))
        .await
        .map(|pods| {
            pods.into_iter()
                .filter_map(|p| p.metadata.name)
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let mut all = workers;
    all.push(name.to_owned());
    let report = api.delete_pods(&all, Some(0)).await;
    leftovers.extend(report.failed.into_iter().map(|f| format!("pod/{f}")));
    if let Err(e) = api.delete_service(name).await {
        leftovers.push(format!("service/{name}: {e}"));
    }
    if leftovers.is_empty() {
        cause
    } else {
        Error::CleanupIncomplete {
            cause: Box::new(cause),
            leftovers,
        }
    }
}

impl KubeCluster {
    /// A builder with every setting from the Dask config.
    pub fn builder() -> KubeClusterBuilder {
        KubeClusterBuilder::default()
    }

    /// Starts a cluster from a worker pod template file, like
    /// `KubeCluster.from_yaml("worker-spec.yml")`.
    pub async fn from_yaml(path: impl Into<PathBuf>) -> Result<Self> {
        Self::builder().worker_template_path(path).start().await
    }

    /// Starts a cluster from the Dask config alone (`kubernetes.worker-template-path` or
    /// `kubernetes.worker-template`).
    pub async fn from_dask_config() -> Result<Self> {
        Self::builder().start().await
    }

    /// Attaches to an existing cluster by name (for `scale`, `adapt`, `down`, `logs`).
    pub async fn connect(
        name: &str,
        namespace: Option<&str>,
        access: Access,
        local_port: u16,
        client: Option<(kube::Client, String, String)>,
    ) -> Result<Self> {
        names::validate_cluster_name(name)?;
        let (client, default_ns, url) = match client {
            Some(c) => c,
            None => kube_ops::connect().await?,
        };
        let config = DaskConfig::load()?;
        let settings = config.kube_settings()?;
        let namespace = namespace
            .map(str::to_owned)
            .or(settings.namespace.clone())
            .unwrap_or(default_ns);
        let api = ClusterApi::new(client, namespace.clone(), url);
        let not_found = || Error::ClusterNotFound {
            name: name.to_owned(),
            namespace: namespace.clone(),
        };
        let pod = api.get_pod(name).await?.ok_or_else(not_found)?;
        let is_scheduler = pod.metadata.labels.as_ref().is_some_and(|l| {
            l.get(labels::COMPONENT).map(String::as_str) == Some(labels::SCHEDULER)
                && l.get(labels::CLUSTER_NAME).map(String::as_str) == Some(name)
        });
        if !is_scheduler {
            return Err(not_found());
        }
        let worker_pod: Value = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(WORKER_TEMPLATE_ANNOTATION))
            .and_then(|text| serde_json::from_str(text).ok())
            .ok_or_else(|| Error::InvalidTemplate {
                what: "worker",
                origin: format!("annotation {WORKER_TEMPLATE_ANNOTATION} of pod {name}"),
                reason: "missing or not JSON; was this cluster made by dask-kube?".into(),
            })?;
        let owner = Owner {
            name: name.to_owned(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
        };
        let progress: ProgressFn = Arc::new(|_| {});
        let (client_api, address, forwarders, dash) =
            connect_scheduler(&api, name, access, local_port, &progress).await?;
        let dashboard =
            format_dashboard_link(&settings.dashboard_link, &dash.0, dash.1, config.env())?;
        let scaler = Scaler::new(
            api,
            Arc::new(client_api),
            name,
            worker_pod,
            Some(owner.clone()),
        )
        .with_count_max(settings.count_max);
        Ok(KubeCluster {
            name: name.to_owned(),
            scaler: Arc::new(scaler),
            owner: Some(owner),
            address,
            dashboard,
            forwarders,
            adapt: None,
            progress,
        })
    }

    /// The cluster name (also the scheduler pod's and Service's).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        self.scaler.api().namespace()
    }

    /// The address a `distributed.Client` on this machine connects to.
    pub fn scheduler_address(&self) -> &str {
        &self.address
    }

    /// The dashboard link (`distributed.dashboard.link`): from outside the cluster a second
    /// local listener forwards to the scheduler's port 8787.
    pub fn dashboard_link(&self) -> &str {
        &self.dashboard
    }

    /// The local port-forward address, when there is one.
    pub fn local_address(&self) -> Option<SocketAddr> {
        self.forwarders.first().map(LocalForwarder::address)
    }

    /// The scheduler's HTTP API client.
    pub fn scheduler(&self) -> &SchedulerClient {
        self.scaler.scheduler()
    }

    /// Kubernetes calls of this cluster.
    pub fn api(&self) -> &ClusterApi {
        self.scaler.api()
    }

    /// Scales to `n` workers; retires before deleting (see [`crate::scaling`]).
    pub async fn scale(&self, n: usize) -> Result<ScaleReport> {
        self.scaler.scale(n, false).await
    }

    /// Scales to `n` workers, deleting connected workers without retiring when `force`.
    pub async fn scale_with(&self, n: usize, force: bool) -> Result<ScaleReport> {
        self.scaler.scale(n, force).await
    }

    /// Adapts between `minimum` and `maximum` workers with `distributed.Adaptive`'s
    /// defaults, until [`KubeCluster::close`], a new `adapt`, or drop.
    pub fn adapt(&mut self, minimum: u32, maximum: u32) -> Result<()> {
        self.adapt_with(AdaptPolicy::new(minimum, maximum))
    }

    /// Adapts with a full policy.
    pub fn adapt_with(&mut self, policy: AdaptPolicy) -> Result<()> {
        if policy.minimum > policy.maximum {
            return Err(Error::Usage(format!(
                "adapt minimum {} is above maximum {}",
                policy.minimum, policy.maximum
            )));
        }
        // Replacing a controller: the old one stops at its next step (drop cancels it).
        self.adapt.take();
        let cancel = CancellationToken::new();
        let scaler = self.scaler.clone();
        let token = cancel.clone();
        let task = tokio::spawn(async move { scaler.run_adapt(policy, token).await });
        self.adapt = Some(AdaptHandle {
            cancel,
            task: Some(task),
        });
        Ok(())
    }

    /// Stops adapting, if it was.
    pub async fn stop_adapting(&mut self) -> Result<()> {
        match self.adapt.take() {
            Some(handle) => handle.stop().await,
            None => Ok(()),
        }
    }

    /// Whether an adapt controller is running.
    pub fn is_adapting(&self) -> bool {
        self.adapt.as_ref().is_some_and(AdaptHandle::is_running)
    }

    /// Worker pods with their connection state.
    pub async fn workers(&self) -> Result<Vec<WorkerInfo>> {
        let pods = self.scaler.worker_pods().await?;
        let connected = self.scaler.scheduler().workers().await.unwrap_or_default();
        let by_pod = workers_by_pod(&pods, &connected);
        Ok(pods
            .into_iter()
            .map(|p: WorkerPodState| WorkerInfo {
                connected: by_pod
                    .get(&p.name)
                    .map(|ws| ws.iter().map(|w| w.address.clone()).collect())
                    .unwrap_or_default(),
                pod: p.name,
                phase: p.phase,
                reason: p.reason,
            })
            .collect())
    }

    /// Waits (at most `timeout`) until `n` workers are connected to the scheduler.
    pub async fn wait_for_workers(&self, n: usize, timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        let mut last = usize::MAX;
        loop {
            let connected = self
                .scaler
                .scheduler()
                .workers()
                .await
                .map(|w| w.len())
                .unwrap_or(0);
            if connected != last {
                (self.progress)(Progress::Workers {
                    connected,
                    wanted: n,
                });
                last = connected;
            }
            if connected >= n {
                return Ok(connected);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("{n} workers to connect ({connected} connected)"),
                    seconds: timeout.as_secs(),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Logs of the scheduler and every worker pod, by pod name.
    pub async fn logs(&self) -> Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        let api = self.scaler.api();
        if self.owner.is_some() {
            out.insert(self.name.clone(), api.logs(&self.name, None).await?);
        }
        for pod in self.scaler.worker_pods().await? {
            let text = match api.logs(&pod.name, None).await {
                Ok(t) => t,
                Err(e) => format!("<no logs: {e}>"),
            };
            out.insert(pod.name, text);
        }
        Ok(out)
    }

    /// Stops the local listener and adapting; the cluster keeps running.
    pub async fn detach(mut self) -> Result<()> {
        let adapt = self.stop_adapting().await;
        for f in self.forwarders.drain(..) {
            f.stop().await;
        }
        adapt
    }

    /// Stops adapting, retires the workers (bounded), deletes workers, Service and scheduler,
    /// and waits (bounded) until the pods are gone. Errors name what is left.
    pub async fn close(mut self) -> Result<CloseReport> {
        (self.progress)(Progress::Step(format!("closing cluster {}", self.name)));
        if let Err(e) = self.stop_adapting().await {
            warn!(error = %e, "adapt controller ended with an error");
        }
        let report = close_cluster(&self.scaler, &self.name, self.owner.is_some()).await;
        for f in self.forwarders.drain(..) {
            f.stop().await;
        }
        if report.leftovers.is_empty() {
            Ok(report)
        } else {
            Err(Error::Partial {
                action: format!("delete cluster {}", self.name),
                done: report.deleted_pods,
                wanted: report.deleted_pods + report.leftovers.len(),
                failures: report.leftovers,
            })
        }
    }
}

/// The teardown shared by [`KubeCluster::close`] and `dask-kube down`.
pub async fn close_cluster<S: SchedulerApi>(
    scaler: &Scaler<S>,
    name: &str,
    has_scheduler_pod: bool,
) -> CloseReport {
    let api = scaler.api();
    let mut report = CloseReport::default();
    let pods = scaler.worker_pods().await.unwrap_or_default();
    // Let workers leave cleanly; bounded, since their data goes away with the cluster anyway.
    if let Ok(Ok(workers)) =
        tokio::time::timeout(CLOSE_RETIRE_TIMEOUT, scaler.scheduler().workers()).await
        && !workers.is_empty()
    {
        let addresses: Vec<String> = workers.into_iter().map(|w| w.address).collect();
        match tokio::time::timeout(
            CLOSE_RETIRE_TIMEOUT,
            scaler.scheduler().retire_workers(&addresses),
        )
        .await
        {
            Ok(Ok(retired)) => report.retired = retired.len(),
            Ok(Err(e)) => warn!(error = %e, "retiring workers before deletion failed"),
            Err(_) => warn!(
                seconds = CLOSE_RETIRE_TIMEOUT.as_secs(),
                "retiring workers took too long; deleting"
            ),
        }
    }
    let mut names: Vec<String> = pods.into_iter().map(|p| p.name).collect();
    let deleted = api.delete_pods(&names, None).await;
    report
        .leftovers
        .extend(deleted.failed.into_iter().map(|f| format!("pod/{f}")));
    if has_scheduler_pod {
        if let Err(e) = api.delete_service(name).await {
            report.leftovers.push(format!("service/{name}: {e}"));
        }
        let deleted = api.delete_pods(&[name.to_owned()], None).await;
        report
            .leftovers
            .extend(deleted.failed.into_iter().map(|f| format!("pod/{f}")));
        names.push(name.to_owned());
    }
    let still = api.wait_pods_gone(&names, CLOSE_WAIT_TIMEOUT).await;
    report.deleted_pods = names.len() - still.len();
    report.leftovers.extend(still.into_iter().map(|p| {
        format!(
            "pod/{p}: still present after {}s",
            CLOSE_WAIT_TIMEOUT.as_secs()
        )
    }));
    info!(cluster = %name, deleted = report.deleted_pods, leftovers = report.leftovers.len(), "cluster closed");
    report
}
