//! Dask clusters on Kubernetes from a worker pod template: what dask-kubernetes' classic
//! `KubeCluster` does, as a Rust library and the `dask-kube` CLI.
//!
//! A cluster is a scheduler pod (the root owner), a Service named after it, and worker pods
//! made from the user's template with the worker defaults of `dask-worker-spec` applied
//! client-side. Every object points at the scheduler pod through `ownerReferences`, so
//! deleting it cascades through the garbage collector even if dask-kube died.
//!
//! Pure logic (names, config, manifests, scale-down plans, the adaptive decision) is in its
//! own modules and tested with tables; [`kube_ops`], [`scheduler_api`] and
//! [`portforward`] are the thin I/O edges.
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

pub mod adapt;
pub mod bench;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod controller;
pub mod error;
pub mod flow;
pub mod http_client;
pub mod kube_ops;
pub mod listing;
pub mod literal;
pub mod manifests;
pub mod names;
pub mod portforward;
pub mod pyformat;
pub mod scaler;
pub mod scaling;
pub mod scheduler_api;
pub mod signals;
pub mod supervisor;
pub mod template;

pub use adapt::{AdaptPolicy, ScaleDecision, TargetSample, decide};
pub use cluster::{
    Access, CloseReport, KubeCluster, KubeClusterBuilder, Progress, UpOptions, UpOutcome, UpReport,
};
pub use error::{Error, Result};
pub use listing::ClusterRow;
pub use scaler::CountCap;
pub use scaler::ScaleReport;
pub use scaling::{ScaleDownPlan, WorkerPodState, plan_scale_down};
pub use scheduler_api::SchedulerApi;
pub use template::PodTemplate;
