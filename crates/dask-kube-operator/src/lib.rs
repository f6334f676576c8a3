//! A Kubernetes operator for dask-kubernetes' own resources (`kubernetes.dask.org/v1`
//! DaskCluster, DaskWorkerGroup, DaskAutoscaler, DaskJob), on the dask-kube library.
//!
//! - [`resources`](DaskCluster) and [`crds`]: the resources as Rust types, and the CRDs
//!   (upstream's schemas, pod specs kept raw).
//! - [`reconcile`](plan_cluster): what to do, as pure functions of a resource and what it owns.
//! - [`controller`](run): kube-runtime controllers that read the watched objects, plan and
//!   apply.
//! - [`OperatorCommand`]: the command line (`crds`, `run`).
//!
//! # Example
//! ```no_run
//! # async fn f() -> dask_kube_operator::Result<()> {
//! use dask_kube_operator::{OperatorOptions, SchedulerAccess, Scope, run};
//! let client = kube::Client::try_default().await.expect("credentials");
//! run(client, OperatorOptions {
//!     scope: Scope::Namespace("dask".into()),
//!     scheduler_access: SchedulerAccess::Service,
//!     reporter: "dask-kube-operator".into(),
//! })
//! .await
//! # }
//! ```

mod apply;
mod cli;
mod context;
mod controller;
mod crds;
mod dask_kube_adapter;
mod error;
mod manifests;
mod names;
mod reconcile;
mod resources;

pub use cli::{OperatorAction, OperatorCommand, RunArgs};
pub use context::{SchedulerAccess, Scope};
pub use controller::{
    OperatorOptions, reconcile_autoscaler, reconcile_cluster, reconcile_job,
    reconcile_worker_group, run,
};
pub use crds::{crds, crds_yaml};
pub use error::{Error, Result};
pub use reconcile::*;
pub use resources::*;
