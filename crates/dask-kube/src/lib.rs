//! Dask clusters on Kubernetes from a worker pod template: what dask-kubernetes' classic
//! `KubeCluster` does, as a Rust library and the `dask-kube` CLI.
//!
//! A cluster is a scheduler pod (the root owner), a Service, and worker pods made from the
//! user's template with the worker defaults of `dask-worker-spec` applied client-side.
//! Every object points at the scheduler pod through `ownerReferences`, so deleting it
//! cascades through the garbage collector even if dask-kube died.
//!
//! # One library, three shells
//!
//! The CLI ([`cli`]), the Python package (`crates/dask-kube-py`) and the operator that
//! reconciles dask-kubernetes' `DaskCluster` resources (`dask-kube operator run`,
//! [`run_operator`]; `OPERATOR.md`) are shells over the items re-exported here; every
//! module is private, so what is not in this list is not API (and dead code shows).
//!
//! - **Connecting**: [`Credentials`] (default chain, in-cluster, a kubeconfig file and
//!   context, explicit) open a [`KubeConnection`] (client, default namespace, server URL);
//!   [`ClusterApi`] is the pod and Service calls of one namespace, retried, with errors
//!   that say what to do, and batches of creations and deletions under flow control
//!   ([`ClusterApi::create_pods`], [`ClusterApi::delete_pods`],
//!   [`ClusterApi::delete_pods_unchanged`], [`CreateLimits`], [`BatchReport`]).
//! - **What a cluster is** (pure): a [`ClusterRequest`] (filled by a shell, or
//!   [`ClusterRequest::from_dask_cluster`]) resolved once against the Dask config
//!   ([`ConfigSource`]) into a [`ResolvedCluster`]: its [`ClusterSpec`] makes the scheduler
//!   pod, the Service ([`service_name`]) and the worker pods, owned by an [`Owner`].
//! - **Running clusters**: [`KubeCluster`] (built by [`KubeClusterBuilder`], or reached by
//!   [`KubeCluster::from_name`]) scales with retire-before-delete, adapts
//!   ([`KubeCluster::adapt_in`], one entry point: the controller pod or here), lists its
//!   workers, reads logs and closes; the verbs [`up`], [`delete_cluster`], [`cluster_logs`],
//!   [`list_clusters`], [`supervise`] and [`run_controller`] return typed results.
//! - **Security**: a request's [`TlsMode`] (TLS with a certificate authority made for the
//!   cluster by default), the cluster's certificate set ([`ClusterTls::issue`], in a Secret
//!   owned by the scheduler pod), the client's copy ([`ClientTlsFiles`]; a running cluster's
//!   [`KubeCluster::security`], [`read_client_tls`] by name); what the controller pod may do
//!   is `deploy/rbac.yaml`'s, its image [`default_controller_image`].
//! - **Scaling and adapting** (pure decisions, tested with tables): [`plan_scale_down`]
//!   (workers matched to pods by [`place_workers`]), [`decide`] with [`AdaptPolicy`] (its
//!   damping: `wait_count`, `cooldown`), and [`Scaler`], the I/O around them for one
//!   cluster's workers, over any [`SchedulerApi`] ([`HttpSchedulerApi`] over any
//!   [`Connect`]or: [`TcpConnect`] to the Service, [`PodPortConnect`] by port-forward), and
//!   the flow control batches run under ([`FlowLimiter`]).
//! - **The operator** for dask-kubernetes' resources: [`run_operator`] with
//!   [`OperatorOptions`] (one namespace or all, how schedulers are reached, pacing), its
//!   CRDs ([`operator_crds`]) and the resource types ([`DaskCluster`], [`DaskWorkerGroup`],
//!   [`DaskAutoscaler`], [`DaskJob`]) a client creates.
//!
//! # Examples
//!
//! A cluster resolved with no cluster contacted (what `dask-kube render` prints):
//! ```
//! use dask_kube::{ClusterRequest, DaskConfig, NameVars, TemplateSource};
//! let request = ClusterRequest {
//!     worker_template: Some(TemplateSource::Pod(serde_json::json!({"spec": {"containers": [
//!         {"name": "worker", "image": "ghcr.io/dask/dask:latest",
//!          "args": ["dask", "worker", "--nthreads", "2", "--memory-limit", "4GB"]}]}}))),
//!     name: Some("etl".into()),
//!     n_workers: Some(3),
//!     ..Default::default()
//! };
//! let resolved = request.resolve(&DaskConfig::default(), &NameVars::default()).unwrap();
//! let objects = resolved.render("team").unwrap();
//! assert_eq!(objects[1]["metadata"]["name"], "etl-scheduler");
//! assert_eq!(resolved.workers, 3);
//! ```
//!
//! An operator reconciling a `DaskCluster`: its objects, and its worker pods created under
//! flow control (one call per pod, never a duplicate on a lost answer):
//! ```no_run
//! # async fn f(dask_cluster: serde_json::Value) -> dask_kube::Result<()> {
//! use dask_kube::*;
//! let resolved = ClusterRequest::from_dask_cluster(&dask_cluster)?
//!     .resolve(&ProcessConfig.load()?, &NameVars::from_environment())?;
//! let api = ClusterApi::new(KubeConnection::open(&Credentials::InCluster).await?
//!     .in_namespace(resolved.spec.namespace.clone()));
//! let worker = resolved.spec.worker_pod()?.pod;
//! let pods = (0..resolved.workers).map(|_| serde_json::from_value(worker.clone()).unwrap());
//! let (report, stopped) = api.create_pods(pods).await;
//! if let Some(e) = stopped { return Err(e) }
//! println!("created {:?}", report.done);
//! let workers = api.list_pods(&selector(&resolved.spec.name, "worker")).await?;
//! # let _ = workers; Ok(()) }
//! ```
//!
//! Scaling a running cluster (retiring workers through the scheduler before deleting their
//! pods) and handing adapting to its controller pod:
//! ```no_run
//! # async fn f() -> dask_kube::Result<()> {
//! use dask_kube::*;
//! let mut cluster = KubeCluster::from_name("etl", Reconnect::default()).await?;
//! let report = cluster.scale(2).await?;
//! println!("retired {:?}", report.retired);
//! cluster.adapt_in(AdaptPolicy::new(1, 10), AdaptPlacement::Controller).await?;
//! cluster.detach().await?;
//! # Ok(()) }
//! ```
//!
//! The adaptive decision, with its damping: a lower target scales down only once it held
//! for `wait_count` polls in a row.
//! ```
//! use dask_kube::{AdaptPolicy, ScaleAction, TargetSample, WorkerPodState, decide};
//! use std::time::Duration;
//! let pods: Vec<WorkerPodState> = (0..3)
//!     .map(|i| serde_json::from_value(serde_json::json!({
//!         "metadata": {"name": format!("etl-worker-{i}")}, "status": {"phase": "Running"}})).unwrap())
//!     .map(|pod| WorkerPodState::from_pod(&pod))
//!     .collect();
//! let policy = AdaptPolicy::new(0, 10);
//! let poll = |s: u64| TargetSample { at: Duration::from_secs(s), target: 1 };
//! let now = Duration::from_secs(60);
//! assert_eq!(decide(&policy, &[poll(58)], &pods, None, now).action, ScaleAction::Hold);
//! assert_eq!(
//!     decide(&policy, &[poll(58), poll(59), poll(60)], &pods, None, now).action,
//!     ScaleAction::Down { remove: 2, to: 1 }
//! );
//! ```
//!
//! The operator for one namespace, reaching schedulers through their Services (it runs in
//! the cluster); what `dask-kube operator run -n dask` does:
//! ```no_run
//! # async fn f() -> dask_kube::Result<()> {
//! use dask_kube::*;
//! let connection = KubeConnection::open(&Credentials::InCluster).await?;
//! run_operator(connection, OperatorOptions {
//!     scope: OperatorScope::Namespace("dask".into()),
//!     scheduler_access: SchedulerAccess::Service,
//!     reporter: "dask-kube-operator".into(),
//!     limits: CreateLimits::default(),
//!     start_window: DEFAULT_START_WINDOW,
//! })
//! .await
//! # }
//! ```
//!
//! A cluster from this process, the classic way:
//! ```no_run
//! # async fn f() -> dask_kube::Result<()> {
//! let cluster = dask_kube::KubeCluster::builder()
//!     .worker_template_path("worker-spec.yml")
//!     .namespace("dask")
//!     .name_template("dask-{user}-{uuid}")
//!     .start()
//!     .await?;
//! cluster.scale(3).await?;
//! println!("{}", cluster.scheduler_address());
//! cluster.close().await?;
//! # Ok(()) }
//! ```

mod adapt;
mod apiserver;
mod bench;
pub mod cli;
mod cluster;
mod config;
mod controller;
mod error;
mod flow;
mod listing;
mod literal;
mod manifests;
mod names;
mod operator;
mod portforward;
mod pyformat;
mod request;
mod scaler;
mod scaling;
mod scheduler_api;
mod signals;
mod start_window;
mod stored_template;
mod supervisor;
mod template;
mod tls;

pub use adapt::{
    AdaptPolicy, AdaptTuning, DEFAULT_COOLDOWN, DEFAULT_INTERVAL, DEFAULT_WAIT_COUNT, ScaleAction,
    ScaleDecision, TargetSample, decide,
};
pub use apiserver::{
    BatchReport, ClusterApi, CreateLimits, Credentials, ExplicitCredentials, KubeConnection,
    install_crypto_provider,
};
pub use cluster::{
    Access, AdaptPlacement, AdaptStarted, AttachOptions, ClientSecurity, CloseReport,
    DEFAULT_WAIT_TIMEOUT, DetachOptions, KubeCluster, KubeClusterBuilder, Progress, ProgressFn,
    Reconnect, SchedulerClient, UpOptions, UpOutcome, UpReport, WorkerInfo, cluster_logs,
    delete_cluster, no_progress, read_client_tls, run_controller, supervise, teardown, up,
};
pub use config::{
    CONTROLLER_IMAGE_DIGEST, ConfigDocument, ConfigSource, ConfigSources, DEFAULT_CONTROLLER_IMAGE,
    DaskConfig, KubeSettings, ProcessConfig, default_controller_image,
};
pub use controller::{
    SERVICE_ACCOUNT as CONTROLLER_SERVICE_ACCOUNT, pod_name as controller_pod_name,
};
pub use dask_worker_spec::{DaskComponent, DefaultAffinity};
pub use error::{Error, Result, exit};
pub use flow::{
    CallOutcome, DEFAULT_INITIAL_IN_FLIGHT, DEFAULT_MAX_IN_FLIGHT, FlowControl, FlowLimiter, Permit,
};
pub use listing::{ClusterRow, list_clusters};
pub use manifests::{
    ClusterSpec, Owner, ServiceType, WorkerPod, default_affinity, selector, service_name,
};
pub use names::NameVars;
pub use operator::{
    CreateMode, DASK_OPERATOR_GROUP, DASK_OPERATOR_VERSION, DaskAutoscaler, DaskAutoscalerSpec,
    DaskCluster, DaskClusterSpec, DaskClusterStatus, DaskJob, DaskJobCluster, DaskJobRunner,
    DaskJobSpec, DaskJobStatus, DaskScheduler, DaskWorker, DaskWorkerGroup, DaskWorkerGroupSpec,
    OpaqueStatus, OperatorCluster, OperatorClusterOptions, OperatorOptions, OperatorScope,
    READY_LINE as OPERATOR_READY_LINE, RawSpec, SchedulerAccess, SchedulerPodConnect,
    SimpleObjectMeta, default_worker_group_name, delete_dask_cluster, operator_crds,
    operator_crds_yaml, run_operator,
};
pub use portforward::{ForwardedStream, LocalForwarder, PodPortConnect};
pub use request::{
    AdaptRequest, ClusterRequest, DEFAULT_WORKER_COMMAND, ResolvedCluster, TemplateSource,
    WorkerCommand, expand_environment_variables, image_worker_pod, worker_capacity,
};
pub use scaler::{CountCap, ScaleReport, Scaler};
pub use scaling::{
    DeleteReason, KeepReason, KeptPod, Placement, PodPhase, RetireTarget, ScaleDownPlan,
    SchedulerWorker, WorkerCounts, WorkerPodState, address_host, place_workers, plan_scale_down,
    retired_pods_to_delete,
};
pub use scheduler_api::{Connect, HttpSchedulerApi, SchedulerApi, TcpConnect};
pub use start_window::{
    DEFAULT_START_WINDOW, PacedScaleUp, START_GATE, hold_start, holds_start_gate,
    pace_replacements, release_start_patch, start_room, start_window, unschedulable,
};
pub use supervisor::{StateDir, SupervisorState, is_supervisor};
pub use template::PodTemplate;
pub use tls::{ClientTlsFiles, ClusterTls, TlsMode};
