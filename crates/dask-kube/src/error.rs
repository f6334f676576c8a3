//! The crate's one error type, and the exit code each error means for the CLI.

use std::path::PathBuf;
use thiserror::Error;

/// Everything that can go wrong in dask-kube. Messages say what failed and, where there is
/// one, what to do about it.
#[derive(Debug, Error)]
pub enum Error {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A YAML document could not be parsed.
    #[error("{origin} is not valid YAML: {source}")]
    Yaml {
        /// File or setting.
        origin: String,
        /// The parser's complaint.
        #[source]
        source: serde_norway::Error,
    },
    /// A Dask configuration value of the wrong shape.
    #[error("invalid dask config {origin}: {reason}")]
    Config {
        /// Key or file.
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// No worker template anywhere.
    #[error(
        "no worker template: pass -f/--file worker-spec.yml, or set kubernetes.worker-template-path \
         or kubernetes.worker-template in the dask config"
    )]
    NoWorkerTemplate,
    /// A worker or scheduler template that is not a usable pod.
    #[error("invalid {what} template ({origin}): {reason}")]
    InvalidTemplate {
        /// `worker` or `scheduler`.
        what: &'static str,
        /// File or setting.
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// The worker defaults cannot be applied to the template.
    #[error("worker template ({origin}): {source}")]
    WorkerDefaults {
        /// File or setting.
        origin: String,
        /// The shared crate's reason.
        #[source]
        source: Box<dask_worker_spec::Error>,
    },
    /// A name template that cannot be formatted into a valid name.
    #[error("invalid name template {template:?}: {reason}")]
    InvalidNameTemplate {
        /// The template.
        template: String,
        /// What is wrong.
        reason: String,
    },
    /// A cluster name that no cluster can have.
    #[error(
        "invalid cluster name {0:?}: names are lowercase letters, digits and '-', start with a letter, \
         at most 63 characters"
    )]
    InvalidClusterName(String),
    /// Bad arguments that clap cannot check.
    #[error("{0}")]
    Usage(String),
    /// Kubernetes credentials could not be loaded.
    #[error("cannot load Kubernetes credentials: {reason}")]
    Credentials {
        /// What failed.
        reason: String,
    },
    /// The API server did not answer.
    #[error("the Kubernetes API server at {url} is unreachable while trying to {action}: {source}")]
    Unreachable {
        /// The server URL.
        url: String,
        /// What dask-kube was doing.
        action: String,
        /// The transport error.
        #[source]
        source: Box<kube::Error>,
    },
    /// RBAC refused a call.
    #[error(
        "the service account/user lacks permission to {verb} {resource} in namespace {namespace}; \
         apply crates/dask-kube/deploy/rbac.yaml (the operator: deploy/operator/rbac-*.yaml) ({message})"
    )]
    Forbidden {
        /// The verb (`create`, `list`, ...).
        verb: String,
        /// The resource (`pods`, `pods/portforward`, ...).
        resource: String,
        /// The namespace.
        namespace: String,
        /// The API server's message.
        message: String,
    },
    /// The namespace is missing.
    #[error("namespace {0:?} does not exist (create it, or pick another with --namespace)")]
    NamespaceNotFound(String),
    /// No cluster of that name.
    #[error("no Dask cluster {name:?} in namespace {namespace:?} (see `dask-kube list`)")]
    ClusterNotFound {
        /// Cluster name.
        name: String,
        /// Namespace.
        namespace: String,
    },
    /// Any other API error.
    #[error("failed to {action}: {source}")]
    Kube {
        /// What dask-kube was doing.
        action: String,
        /// The client's error.
        #[source]
        source: Box<kube::Error>,
    },
    /// The scheduler pod ended or cannot start.
    #[error("scheduler pod {pod} failed: {reason}")]
    SchedulerFailed {
        /// Pod name.
        pod: String,
        /// Why (phase, container state, events).
        reason: String,
    },
    /// Every worker pod ended before the awaited workers connected: none can come.
    #[error(
        "{wanted} workers cannot connect ({connected} connected): every worker pod ended ({ended}); \
         worker pod {pod}: {reason}"
    )]
    WorkersFailed {
        /// Workers awaited.
        wanted: usize,
        /// Workers connected when the last pod ended.
        connected: usize,
        /// The ended pods (`name (phase, reason)`, the first few).
        ended: String,
        /// The pod described.
        pod: String,
        /// Its phase, container state and last log lines.
        reason: String,
    },
    /// A bounded wait ran out.
    #[error("timed out after {seconds}s waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// The bound.
        seconds: u64,
    },
    /// The scheduler's HTTP API could not be reached.
    #[error("the Dask scheduler at {endpoint} is unreachable: {reason}")]
    SchedulerUnreachable {
        /// Where dask-kube tried.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The scheduler's HTTP API answered with an error.
    #[error(
        "the Dask scheduler answered {status} to {path}{hint}: {body}",
        hint = if *status == 404 { " (is the scheduler's HTTP API enabled? dask-kube sets DASK_DISTRIBUTED__SCHEDULER__HTTP__ROUTES)" } else { "" }
    )]
    SchedulerHttp {
        /// The route.
        path: String,
        /// HTTP status.
        status: u16,
        /// The body (shortened).
        body: String,
    },
    /// The scheduler's answer could not be read.
    #[error("unexpected answer from the Dask scheduler to {path}: {source}")]
    SchedulerAnswer {
        /// The route.
        path: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A cluster's certificates could not be made or read.
    #[error("cannot {what}: {reason}")]
    Tls {
        /// What dask-kube was doing.
        what: String,
        /// Why.
        reason: String,
    },
    /// A port-forward could not be opened.
    #[error("port-forward to pod {pod} port {port} failed: {reason}")]
    PortForward {
        /// Pod name.
        pod: String,
        /// Pod port.
        port: u16,
        /// Why.
        reason: String,
    },
    /// Some of a batch of pod creations or deletions failed.
    #[error("{action}: {done} of {wanted} done; {}", failures.join("; "))]
    Partial {
        /// What the batch was.
        action: String,
        /// How many succeeded.
        done: usize,
        /// How many were asked for.
        wanted: usize,
        /// Each failure.
        failures: Vec<String>,
    },
    /// Cleanup after a failure left objects behind.
    #[error("{cause}; cleanup could not delete: {}", leftovers.join(", "))]
    CleanupIncomplete {
        /// The original failure.
        cause: Box<Error>,
        /// What is left (`pod/x`, `service/y`) and why.
        leftovers: Vec<String>,
    },
    /// A local I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What dask-kube was doing.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The detached supervisor could not be started or stopped.
    #[error("the detached supervisor failed: {0}")]
    SupervisorFailed(String),
    /// The task adapting the cluster in this process ended abnormally (it panicked or was
    /// cancelled), so nothing adapts any more.
    #[error("the adapt task failed: {0}")]
    AdaptTaskFailed(String),
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
    /// An API call of the operator on one of its objects failed.
    #[error("cannot {action}: {reason}")]
    Api {
        /// What was being done, naming the object (`create Deployment ns/simple-scheduler`).
        action: String,
        /// The API server's own sentence (`... cannot create resource "deployments" ...`).
        reason: String,
        /// The client's error.
        #[source]
        source: Box<kube::Error>,
    },
    /// The operator's watches never listed their objects.
    #[error(
        "the operator's watches did not start: are the CRDs installed (`dask-kube operator crds | kubectl apply -f -`) and may it list daskclusters, daskworkergroups, pods, deployments and services?"
    )]
    OperatorWatchesNotReady,
    /// The task starting a cluster ended abnormally (it panicked or was cancelled); what it
    /// made is deleted by the caller.
    #[error("the start of cluster {cluster} failed: {reason}")]
    StartTaskFailed {
        /// The cluster.
        cluster: String,
        /// Why the task ended.
        reason: String,
    },
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Exit codes of the `dask-kube` binary.
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// A runtime failure (API server, scheduler, timeouts).
    pub const FAILURE: i32 = 1;
    /// Bad usage or configuration (clap uses 2 as well).
    pub const USAGE: i32 = 2;
    /// The named cluster does not exist.
    pub const NOT_FOUND: i32 = 3;
    /// Partial failure: some pods were not created or deleted.
    pub const PARTIAL: i32 = 4;
}

impl Error {
    /// The process exit code this error means (see [`exit`]).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::ReadFile { .. }
            | Error::Yaml { .. }
            | Error::Config { .. }
            | Error::NoWorkerTemplate
            | Error::InvalidTemplate { .. }
            | Error::WorkerDefaults { .. }
            | Error::InvalidNameTemplate { .. }
            | Error::InvalidClusterName(_)
            | Error::Usage(_)
            | Error::Credentials { .. } => exit::USAGE,
            Error::ClusterNotFound { .. } | Error::NamespaceNotFound(_) => exit::NOT_FOUND,
            Error::Partial { .. } | Error::CleanupIncomplete { .. } => exit::PARTIAL,
            _ => exit::FAILURE,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
