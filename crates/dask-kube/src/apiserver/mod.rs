//! The thin layer that talks to the Kubernetes API server, by concern: [`connection`]
//! (credentials, [`KubeConnection`]), [`errors`] (what an API error means), [`retry`]
//! (when a call is sent again), [`batch`] (one runner for batches of creations and
//! deletions under flow control), [`lean`] (pod lists with only what is read), and
//! [`ClusterApi`], the calls of one namespace ([`create`], [`delete`] for its batches).

mod batch;
mod cluster_api;
mod connection;
mod create;
mod delete;
pub(crate) mod errors;
mod http2;
mod lean;
#[cfg(test)]
pub(crate) mod mock;
mod retry;

pub use batch::{BatchReport, CreateLimits};
pub use cluster_api::ClusterApi;
pub(crate) use connection::offline_default_namespace;
pub use connection::{Credentials, ExplicitCredentials, KubeConnection, install_crypto_provider};
