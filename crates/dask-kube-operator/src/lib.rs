//! A Kubernetes operator for dask-kubernetes' own resources.
mod crds;
mod error;
mod resources;

pub use crds::{crds, crds_yaml};
pub use error::{Error, Result};
pub use resources::*;
