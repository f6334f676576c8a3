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
//! The CLI ([`cli`]), the Python package (`crates/dask-kube-py`) and an operator that
//! reconciles `DaskCluster` resources are shells over the items re-exported here; every
//! module is private, so what is not in this list is not API (and dead code shows).
//!
//! - **Connecting**: [`Credentials`] (default chain, in-cluster, a kubeconfig file and
//!   context, explicit) open a [`KubeConnection`] (client, default namespace, server URL);
//!   [`ClusterApi`] is the pod and Service calls of one namespace, retried, with errors
//!   that say what to do, and batches of creations and deletions under flow control
//!   ([`ClusterApi::create_pods`], [`ClusterApi::delete_pods`], [`CreateLimits`],
//!   [`BatchReport`]).
//! - **What a cluster is made of** (pure): [`PodTemplate`], [`ClusterSpec`] (scheduler
//!   pod, Service, worker pod manifests), [`Owner`], the labels and selectors.
//! - **Running clusters**: [`KubeCluster`] (built by [`KubeClusterBuilder`], or reached by
//!   [`KubeCluster::from_name`]) scales with retire-before-delete, adapts, lists its
//!   workers, reads logs and closes; the verbs [`up`], [`delete_cluster`], [`cluster_logs`],
//!   [`list_clusters`], [`supervise`] and [`run_controller`] return typed results.
//! - **Scaling and adapting** (pure decisions, tested with tables): [`plan_scale_down`],
//!   [`decide`] with [`AdaptPolicy`] (its damping: `wait_count`, `cooldown`), and
//!   [`Scaler`], the I/O around them for one cluster's workers, over any [`SchedulerApi`].
//!
//! # Example
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
mod portforward;
mod pyformat;
mod request;
mod scaler;
mod scaling;
mod scheduler_api;
mod signals;
mod supervisor;
mod template;

pub use adapt::{
    AdaptPolicy, AdaptTuning, DEFAULT_COOLDOWN, DEFAULT_INTERVAL, DEFAULT_WAIT_COUNT, ScaleAction,
    ScaleDecision, TargetSample, decide,
};
pub use apiserver::{
    BatchReport, ClusterApi, CreateLimits, Credentials, ExplicitCredentials, KubeConnection,
    install_crypto_provider,
};
pub use cluster::{
    Access, AdaptPlacement, AdaptStarted, AttachOptions, CloseReport, DEFAULT_WAIT_TIMEOUT,
    DetachOptions, KubeCluster, KubeClusterBuilder, Progress, ProgressFn, Reconnect,
    SchedulerClient, UpOptions, UpOutcome, UpReport, WorkerInfo, cluster_logs, delete_cluster,
    no_progress, run_controller, supervise, teardown, up,
};
pub use config::{
    ConfigDocument, ConfigSource, ConfigSources, DEFAULT_CONTROLLER_IMAGE, DaskConfig,
    KubeSettings, ProcessConfig,
};
pub use controller::{
    SERVICE_ACCOUNT as CONTROLLER_SERVICE_ACCOUNT, pod_name as controller_pod_name,
};
pub use error::{Error, Result, exit};
pub use listing::{ClusterRow, list_clusters};
pub use manifests::{
    ClusterSpec, Owner, ServiceType, WorkerPod, default_affinity, selector, service_name,
};
pub use names::NameVars;
pub use request::{
    AdaptRequest, AffinityMode, ClusterRequest, DEFAULT_WORKER_COMMAND, ResolvedCluster,
    TemplateSource, WorkerCommand, expand_environment_variables, image_worker_pod, worker_capacity,
};
pub use scaler::{CountCap, ScaleReport, Scaler};
pub use scaling::{
    DeleteReason, KeepReason, KeptPod, Placement, PodPhase, RetireTarget, ScaleDownPlan,
    SchedulerWorker, WorkerCounts, WorkerPodState, address_host, place_workers, plan_scale_down,
};
pub use scheduler_api::{HttpSchedulerApi, SchedulerApi, TcpConnect};
pub use supervisor::{StateDir, SupervisorState, is_supervisor};
pub use template::PodTemplate;
