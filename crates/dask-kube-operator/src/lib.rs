//! A Kubernetes operator for dask-kubernetes' own resources.
mod crds;
mod dask_kube_adapter;
mod error;
mod manifests;
mod names;
mod reconcile;
mod resources;

pub use crds::{crds, crds_yaml};
pub use error::{Error, Result};
pub use reconcile::*;
pub use resources::*;
