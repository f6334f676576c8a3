//! The crate's one error type.

use thiserror::Error;

/// Everything that can go wrong in the operator. Messages say what failed, on which object.
#[derive(Debug, Error)]
pub enum Error {
    /// A manifest could not be rendered (a bug in the types, not in user input).
    #[error("cannot render {what}: {reason}")]
    Render {
        /// What was being rendered.
        what: &'static str,
        /// The serialiser's complaint.
        reason: String,
    },
    /// A resource the operator cannot act on as it is.
    #[error("{kind} {name}: {reason}")]
    InvalidResource {
        /// Its kind.
        kind: String,
        /// Its name.
        name: String,
        /// What is wrong, naming the field.
        reason: String,
    },
    /// An API call failed.
    #[error("cannot {action}: {reason}")]
    Api {
        /// What was being done, naming the object.
        action: String,
        /// The API server's message.
        reason: String,
        /// The API's answer.
        #[source]
        source: Box<kube::Error>,
    },
    /// A cluster's scheduler could not be asked (retiring workers, its adaptive target,
    /// whether it is idle): nothing that needs its answer is done.
    #[error("cannot reach the scheduler of DaskCluster {cluster}: {reason}")]
    SchedulerUnreachable {
        /// The cluster.
        cluster: String,
        /// Why.
        reason: String,
    },
    /// The watches never listed their objects.
    #[error(
        "the operator's watches did not start: are the CRDs installed (`dask-kube-operator crds | kubectl apply -f -`) and may it list daskclusters, daskworkergroups, pods, deployments and services?"
    )]
    WatchesNotReady,
    /// No Kubernetes credentials.
    #[error(
        "cannot load Kubernetes credentials (in-cluster service account, then $KUBECONFIG or ~/.kube/config): {0}"
    )]
    Credentials(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
