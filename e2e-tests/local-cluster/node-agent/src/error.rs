//! The crate's one error type: every fallible operation of the agent reports through it.

use std::path::PathBuf;

/// Errors of the node agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes api: {context}")]
    Kube {
        /// What the agent was doing.
        context: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// Building the Kubernetes client from the kubeconfig failed.
    #[error("kubeconfig: {context}")]
    KubeConfig {
        /// What the agent was doing.
        context: String,
        /// The kubeconfig error.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// A file or process operation failed.
    #[error("{context}")]
    Io {
        /// What the agent was doing (names the path or command).
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A system call failed.
    #[error("{context}")]
    Sys {
        /// What the agent was doing.
        context: String,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// An external command (iproute2) exited unsuccessfully.
    #[error("command `{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// The image-mapping configuration file is invalid.
    #[error("config file {path}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A Kubernetes resource quantity could not be parsed.
    #[error("invalid quantity {value:?}: {reason}")]
    Quantity {
        /// The quantity as written.
        value: String,
        /// Why it is invalid.
        reason: &'static str,
    },
    /// A pod subnet or address flag is invalid.
    #[error("invalid network setting: {0}")]
    Network(String),
    /// The container cannot start (no executable, bad working dir): a failed run, reported
    /// as `StartError` like containerd does.
    #[error("{0}")]
    Spec(String),
    /// The container's configuration cannot be built yet (missing ConfigMap key, bad
    /// downward API path): reported as `CreateContainerConfigError` and retried.
    #[error("{0}")]
    ContainerConfig(String),
    /// A command-line flag is invalid.
    #[error("invalid flag: {0}")]
    Flag(String),
}

impl Error {
    /// Wraps a Kubernetes client error with what the agent was doing.
    pub fn kube(context: impl Into<String>, source: kube::Error) -> Self {
        Self::Kube {
            context: context.into(),
            source,
        }
    }

    /// Wraps an I/O error with what the agent was doing.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// Wraps an errno with what the agent was doing.
    pub fn sys(context: impl Into<String>, source: nix::Error) -> Self {
        Self::Sys {
            context: context.into(),
            source,
        }
    }

    /// The HTTP status code if this is an API error answered by the apiserver.
    pub fn api_code(&self) -> Option<u16> {
        match self {
            Self::Kube {
                source: kube::Error::Api(status),
                ..
            } => Some(status.code),
            _ => None,
        }
    }
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
