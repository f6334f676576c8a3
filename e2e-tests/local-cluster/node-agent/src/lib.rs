//! Node agent for the local test cluster: plays kubelet and scheduler for one node, running
//! each pod's containers as local processes in a per-pod network namespace.
//!
//! Pure logic (scheduling predicates, `$(VAR)` expansion, downward API, pod status, backoff,
//! hosts files, image mapping, IP allocation, Service frontends and environment, projected
//! volume contents, token refresh) lives in modules without I/O; the agent, pod workers,
//! network setup, the service proxy, volume writing and process handling are the edges around
//! them.

pub mod agent;
pub mod atomic_writer;
pub mod backoff;
pub mod cleanup;
pub mod config;
pub mod container_init;
pub mod context;
pub mod dnat;
pub mod dns;
pub mod downward;
pub mod error;
pub mod expand;
pub mod hosts;
pub mod ipam;
pub mod memory;
pub mod netns;
pub mod node;
pub mod podstatus;
pub mod process;
pub mod procfs;
pub mod projected;
pub mod proxy;
pub mod quantity;
pub mod registry;
pub mod scheduler;
pub mod scheduling;
pub mod services;
pub mod volumes;
pub mod worker;

pub use error::{Error, Result};
