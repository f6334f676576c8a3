//! The operator: dask-kubernetes' own resources (`kubernetes.dask.org/v1` DaskCluster,
//! DaskWorkerGroup, DaskAutoscaler, DaskJob) reconciled by kube-runtime controllers on this
//! library (`dask-kube operator run`; `OPERATOR.md` says what it does and why).
//!
//! A shell over the library like the CLI and Python: it creates and deletes worker pods
//! through [`crate::ClusterApi`]'s batches (under one flow limiter shared by every
//! reconcile), asks schedulers through [`crate::SchedulerApi`] ([`crate::SchedulerClient`]:
//! the Service from inside the cluster, a port-forward from outside), scales down with
//! [`crate::plan_scale_down`] and [`crate::retired_pods_to_delete`], and adapts with
//! [`crate::decide`].
//!
//! - `resources` and `crds`: the resources as Rust types, and the CRDs (upstream's schemas,
//!   pod specs kept raw).
//! - `reconcile`: what to do, as pure functions of a resource and what it owns.
//! - `controller`: kube-runtime controllers that read the watched objects, plan, and
//!   `apply` the plans.
//!
//! The public surface is what a process needs to run the operator and what a client needs
//! to speak its resources: [`run_operator`] with [`OperatorOptions`], [`operator_crds`] /
//! [`operator_crds_yaml`], and the resource types ([`DaskCluster`], ...).

mod apply;
mod client;
mod context;
mod controller;
mod crds;
mod manifests;
mod names;
mod reconcile;
mod resources;

pub use client::{
    CreateMode, OperatorCluster, OperatorClusterOptions, SchedulerPodConnect, delete_dask_cluster,
};
pub use context::{SchedulerAccess, Scope as OperatorScope};
pub use controller::{OperatorOptions, READY_LINE, run as run_operator};
pub use crds::{crds as operator_crds, crds_yaml as operator_crds_yaml};
pub use names::default_worker_group_name;
pub use resources::{
    DaskAutoscaler, DaskAutoscalerSpec, DaskCluster, DaskClusterSpec, DaskClusterStatus, DaskJob,
    DaskJobCluster, DaskJobRunner, DaskJobSpec, DaskJobStatus, DaskScheduler, DaskWorker,
    DaskWorkerGroup, DaskWorkerGroupSpec, GROUP as DASK_OPERATOR_GROUP, OpaqueStatus, RawSpec,
    SimpleObjectMeta, VERSION as DASK_OPERATOR_VERSION,
};
