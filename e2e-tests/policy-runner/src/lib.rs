//! A waPC host that serves a Kubewarden policy `.wasm` as an admission webhook the way
//! policy-server does (`policy-runner serve`), for the local cluster until its webhook is
//! policy-server itself. kwctl's part (annotate, run, bench) is done by kwctl.
//!
//! Layers, pure in the middle and I/O at the edges:
//! - [`admission`]: request detection and AdmissionResponse building (pure).
//! - [`settings`]: policy settings parsing (pure) and loading.
//! - [`wasm_section`], [`metadata`]: the metadata custom section `kwctl annotate` writes.
//! - [`evaluator`]: the wasmtime/waPC host (compile once, fresh instance per request).
//! - [`tls`] and [`serve`]: the HTTPS admission webhook.
//! - [`locate`]: where the compiled policy module lives in the build tree.

pub mod admission;
pub mod evaluator;
pub mod locate;
pub mod metadata;
pub mod serve;
pub mod settings;
pub mod tls;
pub mod wasm_section;

use std::path::PathBuf;

/// Everything that can go wrong in the webhook; evaluation failures of one request
/// are not errors (they become a rejecting [`admission::AdmissionResponse`], as in
/// policy-server) — these are failures to set up or to read input.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file (module, request, settings, certificate) could not be read or written.
    #[error("failed to access {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The compiled policy module is not where the build puts it.
    #[error("policy module not found at {path}: build it with `make wasm`")]
    ModuleNotFound {
        /// Where the module was expected.
        path: PathBuf,
    },

    /// The module argument is not a local path or `file://` URL.
    #[error("unsupported module location {0:?}: only local paths and file:// URLs are supported")]
    UnsupportedModuleUri(String),

    /// wasmtime could not compile or link the module.
    #[error("failed to compile policy module: {0}")]
    Compile(#[source] wasmtime_provider::errors::Error),

    /// The wasmtime engine could not be created.
    #[error("failed to create wasmtime engine: {0}")]
    Engine(String),

    /// A fresh instance of the module could not be created (or its `wapc_init` failed).
    #[error("failed to instantiate policy module: {0}")]
    Instantiate(#[source] wapc::errors::Error),

    /// A guest function call failed (trap, host-call failure, deadline exceeded).
    #[error("guest call {operation} failed: {source}")]
    GuestCall {
        /// The waPC operation (`validate`, `validate_settings`, `protocol_version`).
        operation: &'static str,
        /// The waPC error.
        #[source]
        source: wapc::errors::Error,
    },

    /// The guest answered something that is not the expected JSON document.
    #[error("invalid answer of guest call {operation}: {source}")]
    GuestAnswer {
        /// The waPC operation.
        operation: &'static str,
        /// Why the answer could not be decoded.
        #[source]
        source: serde_json::Error,
    },

    /// The module speaks a protocol other than Kubewarden's `v1`.
    #[error("unsupported policy protocol version {0:?}, expected \"v1\"")]
    ProtocolVersion(String),

    /// The policy's `validate_settings` rejected the settings.
    #[error("provided settings are not valid: {0}")]
    InvalidSettings(String),

    /// The settings document is not valid JSON/YAML or not a map.
    #[error("failed to parse settings from {origin}: {message}")]
    SettingsParse {
        /// `--settings-json` or the settings file path.
        origin: String,
        /// What is wrong with it.
        message: String,
    },

    /// The bytes are not a WebAssembly binary module whose sections can be read (text
    /// format, a component, or damaged); the message says where.
    #[error("{0}")]
    ModuleFormat(String),

    /// A module's metadata section does not have the metadata's shape.
    #[error("cannot parse policy metadata: {0}")]
    MetadataParse(String),

    /// The policy's metadata asks for a runtime other than waPC.
    #[error("{0}")]
    ExecutionMode(String),

    /// A policy-server feature this host does not have was asked for; the message says
    /// which input and why.
    #[error("{0}")]
    Unsupported(String),

    /// The request document is not JSON.
    #[error("failed to parse admission request: {0}")]
    RequestParse(#[source] serde_json::Error),

    /// The request document is JSON but not an AdmissionRequest/AdmissionReview.
    #[error("invalid admission request: {0}")]
    InvalidRequest(String),

    /// A JSON document could not be serialized.
    #[error("failed to serialize {what}: {source}")]
    Serialize {
        /// What was being serialized.
        what: &'static str,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },

    /// Certificate generation failed.
    #[error("failed to generate webhook certificates: {0}")]
    CertGen(#[source] rcgen::Error),

    /// Certificates/keys on disk are unusable.
    #[error("invalid TLS material in {path}: {message}")]
    Tls {
        /// The file or directory involved.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// The webhook could not bind its listen address.
    #[error("failed to listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The bind error.
        #[source]
        source: std::io::Error,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
