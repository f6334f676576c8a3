//! [`KubeCluster`]: the classic dask-kubernetes `KubeCluster` in Rust. Creates a scheduler
//! pod and Service, makes the scheduler reachable from this machine, and scales worker pods
//! by hand or adaptively; [`KubeCluster::close`] retires and deletes everything.
//!
//! Split by responsibility: [`spec`] settles what a cluster will be (pure), [`connection`]
//! reaches its scheduler, [`lifecycle`] creates and tears clusters down and runs the verbs
//! the CLI and the Python module share (`up`, `down`, `logs`).

mod attach;
mod controller_loop;
mod lifecycle;
mod reach;
mod spec;

pub use attach::{AttachOptions, supervise};
pub use controller_loop::run_controller;
pub use lifecycle::{
    CloseReport, DEFAULT_WAIT_TIMEOUT, DetachOptions, UpOptions, UpOutcome, UpReport, cluster_logs,
    delete_cluster, no_progress, teardown, up,
};
pub use reach::{Access, SchedulerClient};
pub(crate) use reach::{SCHEDULER_API_TIMEOUT, describe_pod_status, use_service};
pub use spec::KubeClusterBuilder;

use crate::adapt::AdaptPolicy;
use crate::apiserver::{ClusterApi, CreateLimits, Credentials, KubeConnection};
use crate::config::{ConfigSource, KubeSettings, ProcessConfig, format_dashboard_link};
use crate::manifests::Owner;
use crate::names;
use crate::portforward::LocalForwarder;
use crate::request::{ResolvedCluster, cap_policy};
use crate::scaler::{CountCap, ScaleReport, Scaler, cap_count};
use crate::scaling::{
    PodPhase, WorkerPodState, describe_ended_pods, every_worker_pod_ended, workers_by_pod,
};
use crate::scheduler_api::SchedulerApi;
use crate::stored_template;
use crate::tls::{ClusterTls, TlsMode};
use crate::{Error, Result};
use dask_worker_spec::labels;
use reach::{LocalPorts, reach_scheduler};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Time between checks while waiting for the scheduler's API or workers. Short: half of it
/// is, on average, added to every start (500 ms cost `up` 0.25 s; a check is one small
/// HTTP call).
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// How often a wait for workers looks at the worker pods (one lean list) for ones that
/// ended: a start that cannot succeed is reported within about this long.
const WORKER_POD_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Ended worker pods named in a message, at most.
const ENDED_PODS_NAMED: usize = 3;

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
                .unwrap_or_else(|e| Err(Error::AdaptTaskFailed(e.to_string()))),
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

/// How to reach an existing cluster by name ([`KubeCluster::from_name`]).
#[derive(Clone, Default)]
pub struct Reconnect {
    /// Its namespace (default: `kubernetes.namespace`, then the credentials').
    pub namespace: Option<String>,
    /// How its scheduler is reached.
    pub access: Access,
    /// The local port of the scheduler address when port-forwarding (0 picks one).
    pub local_port: u16,
    /// The local port of the dashboard when port-forwarding (0 picks one).
    pub dashboard_port: u16,
    /// A connection to use (else one is opened with `credentials`).
    pub connection: Option<KubeConnection>,
    /// The credentials to open a connection with.
    pub credentials: Credentials,
    /// Pacing of pod creations and deletions (default: `kubernetes.max-in-flight`).
    pub limits: Option<CreateLimits>,
    /// Where the Dask config is read (default: files and environment; Python's
    /// `dask.config` from Python).
    pub config: Option<Arc<dyn ConfigSource>>,
    /// Do not read the cluster's certificates (a client of the scheduler's HTTP API only,
    /// such as the controller pod, which has no permission to).
    pub skip_client_tls: bool,
}

/// The client's copy of cluster `name`'s certificates, from its Secret.
pub async fn read_client_tls(api: &ClusterApi, name: &str) -> Result<ClusterTls> {
    let secret_name = crate::tls::secret_name(name);
    let secret = api
        .get_object::<k8s_openapi::api::core::v1::Secret>(&secret_name)
        .await?
        .ok_or_else(|| Error::Tls {
            what: format!("read the certificates of cluster {name}"),
            reason: format!("Secret {secret_name} does not exist"),
        })?;
    ClusterTls::from_secret_data(name, &secret.data.unwrap_or_default())
}

/// `connection`, or one opened with `credentials`.
pub(crate) async fn open_connection(
    connection: Option<KubeConnection>,
    credentials: &Credentials,
) -> Result<KubeConnection> {
    match connection {
        Some(c) => Ok(c),
        None => KubeConnection::open(credentials).await,
    }
}

/// What a running cluster's handle reads from the Dask config: settled at the start (the
/// dashboard link template, the controller image, the formatting environment, the cap as
/// it was), and where to read the config again when a call needs it.
#[derive(Clone)]
pub(crate) struct HandleSettings {
    pub(crate) count_max: Option<u32>,
    pub(crate) dashboard_link: String,
    pub(crate) controller_image: String,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) config: Arc<dyn ConfigSource>,
}

impl HandleSettings {
    pub(crate) fn of_resolved(resolved: &ResolvedCluster, config: Arc<dyn ConfigSource>) -> Self {
        HandleSettings {
            count_max: resolved.count_max,
            dashboard_link: resolved.dashboard_link.clone(),
            controller_image: resolved.controller_image.clone(),
            env: resolved.env.clone(),
            config,
        }
    }

    fn of_config(
        settings: &KubeSettings,
        env: &[(String, String)],
        config: Arc<dyn ConfigSource>,
    ) -> Self {
        HandleSettings {
            count_max: settings.count_max,
            dashboard_link: settings.dashboard_link.clone(),
            controller_image: settings.controller_image.clone(),
            env: env.to_vec(),
            config,
        }
    }
}

/// How this side talks to a cluster's scheduler: the cluster's TLS mode, and the client's
/// copy of its certificates when the cluster has its own CA (and they were read: the
/// controller pod does not read them, since it uses only the scheduler's HTTP API).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientSecurity {
    /// The cluster's TLS mode.
    pub tls: TlsMode,
    /// The certificates a `distributed.Client` presents.
    pub client: Option<ClusterTls>,
}

/// Where adapting runs ([`KubeCluster::adapt_in`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdaptPlacement {
    /// The cluster's controller pod, which goes on with no client (`dask-kube adapt`):
    /// failing when the namespace does not allow it.
    Controller,
    /// The controller pod where the namespace allows it, else this process, saying why
    /// (`up --adapt`, Python's `adapt()`).
    ControllerElseHere,
    /// This process (`--foreground`, `--adapt-here`, Python's `in_cluster=False`, the
    /// controller pod itself, a detached supervisor).
    Here,
}

/// Where adapting started, and what was capped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AdaptStarted {
    /// Set when `kubernetes.count.max` lowered the maximum.
    pub capped: Option<CountCap>,
    /// The controller pod that adapts, when one does.
    pub controller: Option<String>,
    /// Why this process adapts although the controller pod was asked for.
    pub controller_unavailable: Option<String>,
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
    /// The cluster's TLS mode and the client's certificates.
    security: ClientSecurity,
    /// Local listeners: the scheduler's comm port first (when `forwards_comm`), then the
    /// dashboard.
    forwarders: Vec<LocalForwarder>,
    /// Whether the first listener carries the comm port.
    forwards_comm: bool,
    adapt: Option<AdaptHandle>,
    /// The controller pod adapts (set by [`KubeCluster::adapt_in`]).
    controller_adapts: bool,
    /// What new worker pods are made from.
    worker_pod: Value,
    progress: ProgressFn,
    /// What was settled at the start, and where the Dask config is read before each scale
    /// and adapt.
    settings: HandleSettings,
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

    /// Reaches an existing cluster by name (for `scale`, `adapt`, `attach`, the controller
    /// pod, Python's `KubeCluster.from_name`): its scheduler pod must be one dask-kube made
    /// (the worker template is read from its annotation).
    pub async fn from_name(name: &str, reconnect: Reconnect) -> Result<Self> {
        let Reconnect {
            namespace,
            access,
            local_port,
            dashboard_port,
            connection,
            credentials,
            limits,
            config,
            skip_client_tls,
        } = reconnect;
        names::validate_cluster_name(name)?;
        let connection = open_connection(connection, &credentials).await?;
        let source: Arc<dyn ConfigSource> = config.unwrap_or_else(|| Arc::new(ProcessConfig));
        let config = source.load()?;
        let settings = config.kube_settings()?;
        let namespace = namespace
            .or(settings.namespace.clone())
            .unwrap_or_else(|| connection.namespace.clone());
        let limits = limits.unwrap_or_else(|| CreateLimits::from_setting(settings.max_in_flight));
        let api = ClusterApi::new(connection.in_namespace(namespace.clone())).with_limits(limits);
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
        let template_name = stored_template::name(name);
        let stored = api
            .get_object::<k8s_openapi::api::core::v1::PodTemplate>(&template_name)
            .await?
            .ok_or_else(|| Error::InvalidTemplate {
                what: "worker",
                origin: format!("PodTemplate {template_name}"),
                reason: "it does not exist; was this cluster made by this version of dask-kube?"
                    .into(),
            })?;
        let stored = stored_template::read(
            name,
            &namespace,
            &serde_json::to_value(&stored).map_err(|e| Error::InvalidTemplate {
                what: "worker",
                origin: format!("PodTemplate {template_name}"),
                reason: e.to_string(),
            })?,
        )?;
        let client_tls = match stored.tls {
            TlsMode::ClusterCa if !skip_client_tls => Some(read_client_tls(&api, name).await?),
            _ => None,
        };
        let worker_pod = stored.worker_pod;
        let owner = Owner {
            name: name.to_owned(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
        };
        let progress: ProgressFn = Arc::new(|_| {});
        let connected = reach_scheduler(
            &api,
            name,
            access,
            stored.tls,
            LocalPorts {
                comm: local_port,
                dashboard: dashboard_port,
            },
            &progress,
        )
        .await?;
        KubeCluster::assemble(
            api,
            connected,
            name.to_owned(),
            ClientSecurity {
                tls: stored.tls,
                client: client_tls,
            },
            worker_pod,
            owner,
            HandleSettings::of_config(&settings, config.env(), source),
            progress,
        )
    }

    /// The handle on a cluster whose scheduler is reachable: the dashboard link formatted
    /// with `distributed.dashboard.link`, and a scaler creating workers owned by `owner`
    /// within `kubernetes.count.max`. Shared by a new cluster and a reconnected one.
    #[allow(clippy::too_many_arguments)]
    fn assemble(
        api: ClusterApi,
        connected: reach::Connected,
        name: String,
        security: ClientSecurity,
        worker_pod: Value,
        owner: Owner,
        settings: HandleSettings,
        progress: ProgressFn,
    ) -> Result<Self> {
        let dashboard = format_dashboard_link(
            &settings.dashboard_link,
            &connected.dashboard.0,
            connected.dashboard.1,
            &settings.env,
        )?;
        // Counts are capped here, by the setting read when each call is made.
        let scaler = Scaler::new(
            api,
            Arc::new(connected.scheduler),
            name.clone(),
            worker_pod.clone(),
            Some(owner.clone()),
        );
        Ok(KubeCluster {
            name,
            scaler: Arc::new(scaler),
            owner: Some(owner),
            address: connected.address,
            dashboard,
            security,
            forwarders: connected.forwarders,
            forwards_comm: connected.forwards_comm,
            adapt: None,
            controller_adapts: false,
            worker_pod,
            progress,
            settings,
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

    /// The address a `distributed.Client` on this machine connects to (`tls://` with TLS).
    pub fn scheduler_address(&self) -> &str {
        &self.address
    }

    /// The cluster's TLS mode and, with its own CA, the certificates a client presents.
    pub fn security(&self) -> &ClientSecurity {
        &self.security
    }

    /// The dashboard link (`distributed.dashboard.link`): from outside the cluster a second
    /// local listener forwards to the scheduler's port 8787, and the link names it.
    pub fn dashboard_link(&self) -> &str {
        &self.dashboard
    }

    /// The local port-forward address of the scheduler, when there is one.
    pub fn local_address(&self) -> Option<SocketAddr> {
        self.forwarders
            .first()
            .filter(|_| self.forwards_comm)
            .map(LocalForwarder::address)
    }

    /// The local port-forward address of the dashboard, when there is one.
    pub fn local_dashboard_address(&self) -> Option<SocketAddr> {
        self.forwarders
            .get(usize::from(self.forwards_comm))
            .map(LocalForwarder::address)
    }

    /// The scheduler's HTTP API client.
    pub fn scheduler(&self) -> &SchedulerClient {
        self.scaler.scheduler()
    }

    /// Kubernetes calls of this cluster.
    pub fn api(&self) -> &ClusterApi {
        self.scaler.api()
    }

    /// The cap on worker counts (`kubernetes.count.max`), if any, read from the Dask config
    /// as it is now: `dask.config.set({"kubernetes.count.max": 1})` while the cluster runs
    /// caps its next scale. When the config cannot be read, the start's value.
    pub fn count_max(&self) -> Option<u32> {
        match self.settings.config.load().and_then(|c| c.kube_settings()) {
            Ok(settings) => settings.count_max,
            Err(e) => {
                warn!(error = %e, "cannot read the Dask config; kubernetes.count.max as at the start");
                self.settings.count_max
            }
        }
    }

    /// The worker pod manifest new workers are made from (no owner yet).
    pub fn worker_pod(&self) -> &Value {
        &self.worker_pod
    }

    /// Scales to `n` workers; retires before deleting (see [`crate::plan_scale_down`]). The
    /// report says when `kubernetes.count.max` lowered `n`.
    pub async fn scale(&self, n: usize) -> Result<ScaleReport> {
        self.scale_with(n, false).await
    }

    /// Scales to `n` workers, deleting connected workers without retiring when `force`.
    pub async fn scale_with(&self, n: usize, force: bool) -> Result<ScaleReport> {
        let (target, capped) = cap_count(n, self.count_max());
        if let Some(cap) = capped {
            warn!(requested = cap.requested, max = cap.max, "{cap}");
        }
        let mut report = self.scaler.scale(target, force).await;
        if let Ok(r) = report.as_mut() {
            r.capped = capped;
        }
        report
    }

    /// Adapts between `minimum` and `maximum` workers with `distributed.Adaptive`'s
    /// defaults, until [`KubeCluster::close`], a new `adapt`, or drop. Returns the cap when
    /// `kubernetes.count.max` lowered the maximum.
    pub fn adapt(&mut self, minimum: u32, maximum: u32) -> Result<Option<CountCap>> {
        self.adapt_with(AdaptPolicy::new(minimum, maximum))
    }

    /// Adapts with a full policy; returns the cap when `kubernetes.count.max` lowered the
    /// maximum.
    pub fn adapt_with(&mut self, policy: AdaptPolicy) -> Result<Option<CountCap>> {
        policy.check_range()?;
        let (policy, capped) = cap_policy(policy, self.count_max());
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
        Ok(capped)
    }

    /// Hands the cluster to its controller pod ([`crate::controller`]): adapting with
    /// `policy` (capped by `kubernetes.count.max`) or, with `None`, only deleting the
    /// cluster when its scheduler ends. Replaces a controller pod already there; stops this
    /// process's adapt loop once the pod exists. Fails (and this process keeps adapting, if
    /// it did) when the namespace does not allow it, e.g. without the `dask-kube-controller`
    /// ServiceAccount of `deploy/rbac.yaml`. Returns the cap when one applied.
    pub async fn start_controller(
        &mut self,
        policy: Option<&AdaptPolicy>,
    ) -> Result<Option<CountCap>> {
        let owner = self.owner.clone().ok_or_else(|| {
            Error::Usage("a cluster with an external scheduler has no controller pod".into())
        })?;
        let (policy, capped) = match policy {
            Some(p) => {
                p.check_range()?;
                let (policy, capped) = cap_policy(p.clone(), self.count_max());
                (Some(policy), capped)
            }
            None => (None, None),
        };
        let namespace = self.namespace().to_owned();
        crate::controller::start(
            self.scaler.api(),
            &crate::controller::ControllerSpec {
                cluster: &self.name,
                namespace: &namespace,
                owner: &owner,
                adapt: policy.as_ref(),
                image: &self.settings.controller_image,
            },
        )
        .await?;
        self.stop_adapting().await?;
        Ok(capped)
    }

    /// Deletes the controller pod (adapting in the cluster stops; the cluster stays).
    pub async fn stop_controller(&mut self) -> Result<()> {
        crate::controller::stop(self.scaler.api(), &self.name).await?;
        self.controller_adapts = false;
        Ok(())
    }

    /// Starts adapting with `policy` where `placement` says, replacing what adapted before
    /// (a controller pod adapting is left to only end the cluster when adapting moves
    /// here). The one way the shells start adapting: `up`, `dask-kube adapt`, the
    /// controller pod's loop, a supervisor and Python's `adapt()`.
    ///
    /// # Example
    /// ```no_run
    /// # async fn f(cluster: &mut dask_kube::KubeCluster) -> dask_kube::Result<()> {
    /// use dask_kube::{AdaptPlacement, AdaptPolicy};
    /// let started = cluster
    ///     .adapt_in(AdaptPolicy::new(1, 10), AdaptPlacement::ControllerElseHere)
    ///     .await?;
    /// if let Some(why) = started.controller_unavailable {
    ///     eprintln!("adapting from this process: {why}");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn adapt_in(
        &mut self,
        policy: AdaptPolicy,
        placement: AdaptPlacement,
    ) -> Result<AdaptStarted> {
        policy.check_range()?;
        let in_cluster = match placement {
            AdaptPlacement::Here => None,
            AdaptPlacement::Controller => Some(self.start_controller(Some(&policy)).await?),
            AdaptPlacement::ControllerElseHere if self.owner.is_none() => None,
            AdaptPlacement::ControllerElseHere => {
                match self.start_controller(Some(&policy)).await {
                    Ok(capped) => Some(capped),
                    Err(e) => {
                        warn!(reason = %e, "no controller pod; adapting from this process (it stops when this process does)");
                        let capped = self.adapt_here(policy).await?;
                        return Ok(AdaptStarted {
                            capped,
                            controller: None,
                            controller_unavailable: Some(e.to_string()),
                        });
                    }
                }
            }
        };
        match in_cluster {
            Some(capped) => {
                self.controller_adapts = true;
                Ok(AdaptStarted {
                    capped,
                    controller: Some(crate::controller::pod_name(&self.name)),
                    controller_unavailable: None,
                })
            }
            None => Ok(AdaptStarted {
                capped: self.adapt_here(policy).await?,
                ..AdaptStarted::default()
            }),
        }
    }

    /// Adapts from this process; a controller pod that adapted is replaced by one that only
    /// ends the cluster, so the two do not fight.
    async fn adapt_here(&mut self, policy: AdaptPolicy) -> Result<Option<CountCap>> {
        if self.controller_adapts {
            self.start_controller(None).await?;
            self.controller_adapts = false;
        }
        self.adapt_with(policy)
    }

    /// Stops adapting, here and in the controller pod when it adapts (which then only ends
    /// the cluster when its scheduler does).
    pub async fn stop_all_adapting(&mut self) -> Result<()> {
        if self.controller_adapts {
            self.start_controller(None).await?;
            self.controller_adapts = false;
        }
        self.stop_adapting().await
    }

    /// Whether the controller pod adapts (as started by this handle).
    pub fn controller_adapts(&self) -> bool {
        self.controller_adapts
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

    /// Waits (at most `timeout`) until `n` workers are connected to the scheduler. Once a
    /// second the worker pods are looked at too: when every one of them has ended (a flag
    /// `dask worker` refuses, an image that exits, OOM at start), none can connect, and the
    /// wait ends at once with the first one's state and last log lines instead of running
    /// out its timeout. Not while adapting: the adapt loop replaces ended pods. A timeout
    /// names the pods that ended meanwhile.
    pub async fn wait_for_workers(&self, n: usize, timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        let mut next_pod_check = Instant::now() + WORKER_POD_CHECK_INTERVAL;
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
            if self.adapt.is_none() && Instant::now() >= next_pod_check {
                next_pod_check = Instant::now() + WORKER_POD_CHECK_INTERVAL;
                match self.scaler.worker_pods().await {
                    Ok(pods) => {
                        if let Some(ended) = every_worker_pod_ended(&pods) {
                            let first = ended[0].name.clone();
                            return Err(self.workers_failed(n, connected, &pods, &first).await);
                        }
                    }
                    // The check only shortens a hopeless wait; the timeout still bounds it.
                    Err(e) => debug!(error = %e, "worker pods not listed; waiting on"),
                }
            }
            if Instant::now() >= deadline {
                let pods = self.scaler.worker_pods().await.unwrap_or_default();
                let ended = describe_ended_pods(&pods, ENDED_PODS_NAMED);
                // The first pod that ended, described as when every pod ended: a worker that
                // exited while others connected (a Service not routed on its node yet, a node
                // short of memory) says why in its log, which goes with the pod once the
                // failed start is cleaned up.
                let first = match pods.iter().find(|p| p.ended()) {
                    Some(pod) => Some((pod.name.clone(), self.describe_ended_pod(&pod.name).await)),
                    None => None,
                };
                return Err(Error::Timeout {
                    what: workers_awaited(n, connected, &ended, first.as_ref()),
                    seconds: timeout.as_secs(),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The error for a wait that no worker can end any more: the ended pods named, and `pod`
    /// described (phase, container state, last log lines).
    async fn workers_failed(
        &self,
        wanted: usize,
        connected: usize,
        pods: &[WorkerPodState],
        pod: &str,
    ) -> Error {
        let reason = self.describe_ended_pod(pod).await;
        Error::WorkersFailed {
            wanted,
            connected,
            ended: describe_ended_pods(pods, ENDED_PODS_NAMED),
            pod: pod.to_owned(),
            reason,
        }
    }

    /// An ended worker pod's phase, container state and last log lines.
    async fn describe_ended_pod(&self, pod: &str) -> String {
        let api = self.scaler.api();
        match api.get_pod(pod).await {
            Ok(Some(full)) => {
                let logs = api.logs(pod, None).await.unwrap_or_default();
                reach::describe_ended_pod(&full, &logs)
            }
            _ => "deleted before it could be described".to_owned(),
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
        let report = teardown(
            self.scaler.api(),
            Some(self.scaler.scheduler().as_ref()),
            &self.name,
            self.owner.is_some(),
            None,
        )
        .await;
        for f in self.forwarders.drain(..) {
            f.stop().await;
        }
        report.into_result(&self.name)
    }
}

/// What a wait for workers that timed out awaited: `n` workers, with how many connected,
/// the pods that ended (`ended`, as [`describe_ended_pods`] names them) and the first of them
/// described (`first`: its name and its state and last log lines).
fn workers_awaited(
    n: usize,
    connected: usize,
    ended: &str,
    first: Option<&(String, String)>,
) -> String {
    match (ended.is_empty(), first) {
        (true, _) => format!("{n} workers to connect ({connected} connected)"),
        (false, None) => format!("{n} workers to connect ({connected} connected; ended: {ended})"),
        (false, Some((pod, reason))) => format!(
            "{n} workers to connect ({connected} connected; ended: {ended}); worker pod {pod}: {reason}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::mock::{api, body_json, ok_json};
    use crate::config::{ConfigDocument, ConfigSources, DaskConfig};
    use serde_json::json;
    use std::sync::Mutex;

    /// A Dask config the test changes while the cluster runs, as `dask.config.set` does.
    struct Changing(Mutex<DaskConfig>);

    impl Changing {
        fn set_count_max(&self, max: u32) {
            *self.0.lock().unwrap() = DaskConfig::from_sources(&ConfigSources {
                documents: vec![ConfigDocument {
                    origin: "test".into(),
                    value: json!({"kubernetes": {"count": {"max": max}}}),
                }],
                env: vec![],
            })
            .unwrap();
        }
    }

    impl ConfigSource for Changing {
        fn load(&self) -> Result<DaskConfig> {
            Ok(self.0.lock().unwrap().clone())
        }
    }

    fn cluster(api: ClusterApi, config: Arc<dyn ConfigSource>) -> KubeCluster {
        let worker_pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "c-worker-", "namespace": "ns",
                         "labels": {"dask.org/cluster-name": "c", "dask.org/component": "worker"}},
            "spec": {"containers": [{"name": "w", "image": "i"}]}});
        let owner = Owner {
            name: "c".into(),
            uid: "uid-1".into(),
        };
        KubeCluster {
            name: "c".into(),
            scaler: Arc::new(Scaler::new(
                api,
                Arc::new(SchedulerClient::tcp("127.0.0.1:1")),
                "c",
                worker_pod.clone(),
                Some(owner.clone()),
            )),
            owner: Some(owner),
            address: "tcp://127.0.0.1:1".into(),
            dashboard: String::new(),
            security: ClientSecurity::default(),
            forwarders: Vec::new(),
            forwards_comm: false,
            adapt: None,
            controller_adapts: false,
            worker_pod,
            progress: crate::cluster::no_progress(),
            settings: HandleSettings {
                count_max: None,
                dashboard_link: String::new(),
                controller_image: String::new(),
                env: Vec::new(),
                config,
            },
        }
    }

    /// `dask.config.set({"kubernetes.count.max": 1})` while a cluster runs caps its next
    /// `scale(10)` (it was read once at the start before: 10 pods were made). The cap is
    /// read at every call: raised to 3, the next `scale(10)` adds 2 to the 1 there.
    #[tokio::test]
    async fn the_cap_is_the_config_of_the_moment() {
        let (api, mut handle) = api("ns");
        let config = Arc::new(Changing(Mutex::new(DaskConfig::default())));
        let c = cluster(api, config.clone());
        let server = tokio::spawn(async move {
            let mut pods: Vec<serde_json::Value> = Vec::new();
            let mut creates_per_scale = Vec::new();
            let mut creates = 0;
            while let Some((request, send)) = handle.next_request().await {
                if request.method() == http::Method::GET {
                    creates_per_scale.push(creates);
                    creates = 0;
                    send.send_response(ok_json(json!({"apiVersion": "v1", "kind": "PodList",
                        "metadata": {}, "items": pods})));
                } else {
                    assert_eq!(request.method(), http::Method::POST);
                    let mut pod = body_json(request).await;
                    pod["status"] = json!({"phase": "Pending"});
                    pods.push(pod.clone());
                    creates += 1;
                    send.send_response(ok_json(pod));
                }
            }
            creates_per_scale.push(creates);
            creates_per_scale
        });
        config.set_count_max(1);
        let first = tokio::time::timeout(std::time::Duration::from_secs(10), c.scale(10))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            first.capped,
            Some(CountCap {
                requested: 10,
                max: 1
            })
        );
        config.set_count_max(3);
        let second = tokio::time::timeout(std::time::Duration::from_secs(10), c.scale(10))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((second.before, second.target), (1, 3));
        drop(c);
        let creates = server.await.unwrap();
        assert_eq!(creates, [0, 1, 2], "pods created by each scale");
    }

    #[rstest::rstest]
    #[case::none_ended(2, 1, "", None, "2 workers to connect (1 connected)")]
    #[case::ended_not_described(
        2,
        1,
        "w-b (Failed, Error)",
        None,
        "2 workers to connect (1 connected; ended: w-b (Failed, Error))"
    )]
    #[case::ended_and_described(2, 1, "w-b (Failed, Error)", Some(("w-b", "Failed; exit code 1; last log lines: OSError")),
        "2 workers to connect (1 connected; ended: w-b (Failed, Error)); worker pod w-b: Failed; exit code 1; last log lines: OSError")]
    fn a_timed_out_wait_describes_the_first_ended_pod(
        #[case] n: usize,
        #[case] connected: usize,
        #[case] ended: &str,
        #[case] first: Option<(&str, &str)>,
        #[case] want: &str,
    ) {
        let first = first.map(|(pod, reason)| (pod.to_owned(), reason.to_owned()));
        assert_eq!(workers_awaited(n, connected, ended, first.as_ref()), want);
    }
}
