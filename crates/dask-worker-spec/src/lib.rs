//! Dask worker pod specs: reading a worker's command line, Dask memory strings versus
//! Kubernetes quantities, and the defaults a worker pod needs.
//!
//! Values are read as the worker reads them: `--memory-limit` to the byte as Dask's
//! `parse_bytes` and `parse_memory_limit` count it (float arithmetic included, tested
//! against a table Dask generates), and flag variables (`$(MEM)`, `$MEM` in `sh -c`)
//! resolved from the container's env where the pod says their value.
//!
//! Shared by the `dask-worker-defaults` Kubewarden policy (compiled to wasm) and the
//! `dask-kube` host binary, so a pod defaulted client-side by dask-kube is exactly what the
//! policy would produce, and the policy finds nothing to change. Pure functions over
//! `serde_json::Value`: no Kubernetes client, no `k8s-openapi` types (whose versions differ
//! between the Kubewarden SDK and kube-rs), no I/O.
//!
//! # Example
//! ```
//! use dask_worker_spec::{default_object, WorkerDefaults};
//! let pod = serde_json::json!({
//!   "metadata": {"name": "w", "labels": {"dask.org/component": "worker"}},
//!   "spec": {"containers": [{
//!     "name": "worker", "image": "ghcr.io/dask/dask",
//!     "args": ["dask", "worker", "--nthreads", "2", "--memory-limit", "6GB"]
//!   }]}
//! });
//! let out = default_object("", "Pod", "CREATE", pod, &WorkerDefaults::default()).unwrap();
//! let pod = out.mutated.unwrap();
//! assert_eq!(pod["spec"]["containers"][0]["resources"]["limits"]["cpu"], "2");
//! assert_eq!(pod["spec"]["tolerations"].as_array().unwrap().len(), 2);
//! ```

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod admission;
mod affinity;
pub mod command;
pub mod defaults;
pub mod quantity;
pub mod selector;
pub mod settings;
pub(crate) mod variables;

pub use admission::{ObjectDefaults, TEMPLATE_LOCATIONS, TemplateLocation, default_object};
pub use affinity::{
    DaskComponent, DefaultAffinity, NODE_PURPOSE_LABEL, PREFERRED_AFFINITY_WEIGHT,
    UnknownAffinityMode, apply_dedicated_pool, apply_default_affinity,
};
pub use command::{CommandLineError, Invocation, WorkerCommandLine};
pub use defaults::{
    Defaulted, MIN_WORKER_MEMORY_BYTES, PodSpecRules, RestartPolicyRule, WORKER_NAME_ENV,
    WORKER_NAME_FROM_ENV, apply_worker_defaults,
};
pub use quantity::{
    MemoryLimit, QuantityError, QuantityMode, format_dask_bytes, format_k8s_cpu, format_k8s_memory,
    parse_dask_bytes, parse_k8s_cpu_millis, parse_k8s_memory, parse_k8s_milli,
};
pub use selector::{LabelSelector, SelectorError};
pub use settings::{MemoryQuantity, OnMismatch, SettingsError, Toleration, WorkerDefaults};

/// Labels and label values dask-kubernetes uses, shared so the policy and dask-kube agree.
pub mod labels {
    /// `dask.org/component`: `worker` or `scheduler`.
    pub const COMPONENT: &str = "dask.org/component";
    /// `dask.org/cluster-name`.
    pub const CLUSTER_NAME: &str = "dask.org/cluster-name";
    /// Component value of worker pods.
    pub const WORKER: &str = "worker";
    /// Component value of the scheduler pod and service.
    pub const SCHEDULER: &str = "scheduler";
}

/// Why a pod spec cannot be defaulted. Messages are shown to users as the admission
/// rejection, so each says what is wrong, quotes the value and names the container.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The object does not have the shape of its kind.
    #[error("{path} {reason}")]
    Malformed {
        /// Where (`spec.containers[0].args`).
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A worker flag that cannot be read.
    #[error("container {container:?}: {flag} {source}")]
    InvalidFlag {
        /// Container name.
        container: String,
        /// The flag.
        flag: String,
        /// What is wrong with its value.
        #[source]
        source: QuantityError,
    },
    /// A count flag (`--nthreads`, `--nworkers`) that is not a usable number.
    #[error("container {container:?}: {flag} {value:?} must be a positive whole number")]
    InvalidCount {
        /// Container name.
        container: String,
        /// The flag.
        flag: String,
        /// Its value.
        value: String,
    },
    /// A resource quantity that cannot be used.
    #[error("container {container:?}: {field} {source}")]
    InvalidQuantity {
        /// Container name.
        container: String,
        /// `resources.limits.memory` etc.
        field: String,
        /// What is wrong with it.
        #[source]
        source: QuantityError,
    },
    /// The worker command line cannot be read.
    #[error("container {container:?}: {source}")]
    CommandLine {
        /// Container name.
        container: String,
        /// What is wrong.
        #[source]
        source: CommandLineError,
    },
    /// A flag value with a `$` that nothing will expand: the worker would get it as text.
    #[error("container {container:?}: {flag} {value:?} reaches Dask as written: {reason}")]
    UnexpandedVariable {
        /// Container name.
        container: String,
        /// The flag.
        flag: String,
        /// Its value as the worker would see it.
        value: String,
        /// Why nothing expands it, and the fix.
        reason: String,
    },
    /// A memory size no Dask worker can run in (a unit mistake, as a rule); the message
    /// says how many bytes Dask reads and from which unit.
    #[error("container {container:?}: {message}")]
    TooSmall {
        /// Container name.
        container: String,
        /// The value, the unit Dask read, and the floor.
        message: String,
    },
    /// A command-line form that current Dask refuses, used in a way Dask always refused.
    #[error("container {container:?}: {message}")]
    RemovedFlag {
        /// Container name.
        container: String,
        /// What is wrong and the fix.
        message: String,
    },
    /// Flags and resources disagree and the settings say to refuse.
    #[error("container {container:?}: {message}")]
    Mismatch {
        /// Container name.
        container: String,
        /// Both values and the fix.
        message: String,
    },
    /// More than one of the above.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Several(Vec<Error>),
}

impl Error {
    pub(crate) fn malformed(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Malformed {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
