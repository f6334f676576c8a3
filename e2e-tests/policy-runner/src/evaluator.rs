//! The waPC host: compiles a policy module once and evaluates each request on a fresh
//! instance under an epoch deadline, as policy-server does.
//!
//! A fresh instance per request costs tens of microseconds and buys isolation: a guest
//! interrupted mid-call (deadline) or left in a bad state cannot affect the next request.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};
use tracing::{debug, error, info, trace, warn};
use wapc::WapcHost;
use wasmtime_provider::wasmtime;
use wasmtime_provider::{EpochDeadlines, WasmtimeEngineProviderBuilder, WasmtimeEngineProviderPre};

use crate::admission::{
    AdmissionRequest, AdmissionResponse, PolicyValidationResponse, SettingsValidationResponse,
};
use crate::settings::Settings;
use crate::{Error, Result};

/// policy-server's default per-request evaluation timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Granularity of the deadline: the engine's epoch advances once per tick.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The protocol version every kubewarden-policy-sdk policy answers.
const PROTOCOL_V1: &str = "v1";

/// The host-call triple the SDK's logging drain uses.
const LOG_CALL: (&str, &str, &str) = ("kubewarden", "tracing", "log");

/// A compiled policy module: the wasmtime engine, the pre-linked module and the epoch
/// ticker that enforces the deadline. Share it (`Arc`) between threads.
pub struct PolicyModule {
    pre: WasmtimeEngineProviderPre,
    deadlines: EpochDeadlines,
    size_bytes: usize,
    _ticker: EpochTicker,
}

impl std::fmt::Debug for PolicyModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyModule")
            .field("size_bytes", &self.size_bytes)
            .field("deadlines", &self.deadlines)
            .finish_non_exhaustive()
    }
}

impl PolicyModule {
    /// Reads and compiles a `.wasm` file with the default 2 s deadline.
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_file_with_timeout(path, DEFAULT_TIMEOUT)
    }

    /// Reads and compiles a `.wasm` file with the given per-call deadline.
    pub fn from_file_with_timeout(path: &Path, timeout: Duration) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes, timeout)
    }

    /// Compiles a module (binary `.wasm`, or WAT text) with the given per-call deadline,
    /// WASI on with empty args/env/preopens, as kwctl does.
    pub fn from_bytes(bytes: &[u8], timeout: Duration) -> Result<Self> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        let engine = wasmtime::Engine::new(&config).map_err(|e| Error::Engine(e.to_string()))?;
        let ticks = timeout.as_millis().div_ceil(EPOCH_TICK.as_millis()).max(1);
        let ticks = u64::try_from(ticks).unwrap_or(u64::MAX);
        let deadlines = EpochDeadlines {
            wapc_init: ticks,
            wapc_func: ticks,
        };
        let pre = WasmtimeEngineProviderBuilder::new()
            .engine(engine.clone())
            .module_bytes(bytes)
            .wasi_params(wapc::WasiParams::default())
            .enable_epoch_interruptions(deadlines)
            .build_pre()
            .map_err(Error::Compile)?;
        let ticker = EpochTicker::start(engine)?;
        Ok(Self {
            pre,
            deadlines,
            size_bytes: bytes.len(),
            _ticker: ticker,
        })
    }

    /// Size of the module file in bytes.
    pub fn size_bytes(&self) -> usize {
        self.size_bytes
    }

    /// A fresh instance: new store, `wapc_init` run under the deadline.
    pub fn instantiate(&self) -> Result<PolicyInstance> {
        let provider = self
            .pre
            .rehydrate(Some(self.deadlines))
            .map_err(|e| Error::Instantiate(e.into()))?;
        let host = WapcHost::new(Box::new(provider), Some(Box::new(host_callback)))
            .map_err(Error::Instantiate)?;
        Ok(PolicyInstance { host })
    }
}

/// One instance of the policy; cheap to create, used for one evaluation.
pub struct PolicyInstance {
    host: WapcHost,
}

impl std::fmt::Debug for PolicyInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyInstance")
            .field("id", &self.host.id())
            .finish()
    }
}

impl PolicyInstance {
    /// Calls `protocol_version`; anything but `"v1"` is an error.
    pub fn protocol_version(&self) -> Result<()> {
        let answer = self.call("protocol_version", &[])?;
        let version: String =
            serde_json::from_slice(&answer).map_err(|source| Error::GuestAnswer {
                operation: "protocol_version",
                source,
            })?;
        if version == PROTOCOL_V1 {
            Ok(())
        } else {
            Err(Error::ProtocolVersion(version))
        }
    }

    /// Calls `validate_settings`; invalid settings are [`Error::InvalidSettings`] with
    /// the policy's message (kwctl prints it after "Provided settings are not valid: ").
    pub fn validate_settings(&self, settings: &Settings) -> Result<()> {
        let payload = serde_json::to_vec(settings.as_map()).map_err(|source| Error::Serialize {
            what: "settings",
            source,
        })?;
        let answer = self.call("validate_settings", &payload)?;
        let response: SettingsValidationResponse =
            serde_json::from_slice(&answer).map_err(|source| Error::GuestAnswer {
                operation: "validate_settings",
                source,
            })?;
        if response.valid {
            Ok(())
        } else {
            Err(Error::InvalidSettings(response.message.unwrap_or_default()))
        }
    }

    /// Calls `validate` and builds the AdmissionResponse. Never fails: a guest error,
    /// trap or deadline becomes `allowed: false` with a 500, as in policy-server.
    pub fn validate(&self, settings: &Settings, request: &AdmissionRequest) -> AdmissionResponse {
        let uid = request.uid();
        let payload = match validate_payload(settings, request) {
            Ok(p) => p,
            Err(e) => return AdmissionResponse::reject_internal_server_error(uid, e.to_string()),
        };
        let answer = match self.host.call("validate", &payload) {
            Ok(answer) => answer,
            Err(e) => {
                error!(%uid, error = %e, "waPC communication error");
                return AdmissionResponse::reject_internal_server_error(uid, e.to_string());
            }
        };
        let built = serde_json::from_slice::<PolicyValidationResponse>(&answer)
            .map_err(|e| format!("cannot deserialize policy validation response: {e}"))
            .and_then(|policy| {
                AdmissionResponse::from_policy_response(uid, request.object(), &policy)
                    .map_err(|e| e.to_string())
            });
        built.unwrap_or_else(|message| {
            error!(%uid, error = %message, "cannot build validation response from policy result");
            AdmissionResponse::reject_internal_server_error(uid, message)
        })
    }

    /// A raw waPC call, for benchmarks and diagnostics.
    pub fn call(&self, operation: &'static str, payload: &[u8]) -> Result<Vec<u8>> {
        self.host
            .call(operation, payload)
            .map_err(|source| Error::GuestCall { operation, source })
    }
}

/// The `validate` payload: `{"request": <AdmissionRequest>, "settings": <settings>}`.
pub fn validate_payload(settings: &Settings, request: &AdmissionRequest) -> Result<Vec<u8>> {
    #[derive(Serialize)]
    struct Payload<'a> {
        request: &'a Value,
        settings: &'a Map<String, Value>,
    }
    serde_json::to_vec(&Payload {
        request: request.as_value(),
        settings: settings.as_map(),
    })
    .map_err(|source| Error::Serialize {
        what: "validate payload",
        source,
    })
}

/// A policy bound to its settings: what kwctl run and policy-server evaluate with.
#[derive(Debug)]
pub struct Evaluator {
    module: Arc<PolicyModule>,
    settings: Settings,
    policy_id: String,
    allow_mutations: bool,
}

impl Evaluator {
    /// Checks the protocol version and the settings on a fresh instance, as
    /// policy-server does at startup; every later request gets its own instance.
    pub fn new(module: Arc<PolicyModule>, settings: Settings) -> Result<Self> {
        let instance = module.instantiate()?;
        instance.protocol_version()?;
        instance.validate_settings(&settings)?;
        Ok(Self {
            module,
            settings,
            policy_id: "policy".to_owned(),
            allow_mutations: true,
        })
    }

    /// Names the policy in rejection messages (policy-server uses the policy id).
    #[must_use]
    pub fn with_policy_id(mut self, id: impl Into<String>) -> Self {
        self.policy_id = id.into();
        self
    }

    /// A policy whose metadata says `mutating: false` may not patch: policy-server
    /// rejects such a request instead of applying the patch.
    #[must_use]
    pub fn with_mutations_allowed(mut self, allowed: bool) -> Self {
        self.allow_mutations = allowed;
        self
    }

    /// The compiled module.
    pub fn module(&self) -> &Arc<PolicyModule> {
        &self.module
    }

    /// The settings every request is evaluated with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Evaluates one request on a fresh instance. Never fails: problems become a
    /// rejecting response, so a webhook fails closed.
    pub fn evaluate(&self, request: &AdmissionRequest) -> AdmissionResponse {
        let response = match self.module.instantiate() {
            Ok(instance) => instance.validate(&self.settings, request),
            Err(e) => {
                error!(uid = request.uid(), error = %e, "cannot instantiate policy");
                AdmissionResponse::reject_internal_server_error(request.uid(), e.to_string())
            }
        };
        if !self.allow_mutations && response.patch.is_some() {
            return AdmissionResponse {
                uid: response.uid,
                allowed: false,
                status: Some(crate::admission::AdmissionResponseStatus {
                    message: Some(format!(
                        "Request rejected by policy {}. The policy attempted to mutate the request, but it is currently configured to not allow mutations.",
                        self.policy_id
                    )),
                    code: None,
                }),
                ..AdmissionResponse::default()
            };
        }
        response
    }
}

/// Answers the guest's host calls: logging is forwarded to `tracing`; every other
/// capability (OCI, DNS, Kubernetes lookups) is unavailable here and fails the call.
fn host_callback(
    id: u64,
    binding: &str,
    namespace: &str,
    operation: &str,
    payload: &[u8],
) -> std::result::Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
    if (binding, namespace, operation) == LOG_CALL {
        forward_guest_log(id, payload);
        return Ok(Vec::new());
    }
    warn!(
        instance = id,
        binding, namespace, operation, "policy asked for an unsupported host capability"
    );
    Err(format!(
        "host capability {binding}/{namespace}/{operation} is not supported by policy-runner"
    )
    .into())
}

/// Re-emits a guest log event (`{"level", "message", <fields>...}`) at its level.
fn forward_guest_log(id: u64, payload: &[u8]) {
    let Ok(Value::Object(mut event)) = serde_json::from_slice::<Value>(payload) else {
        warn!(
            instance = id,
            payload = %String::from_utf8_lossy(payload),
            "policy sent a log event that is not a JSON object"
        );
        return;
    };
    let level = match event.remove("level") {
        Some(Value::String(level)) => level,
        _ => String::new(),
    };
    let message = match event.remove("message") {
        Some(Value::String(message)) => message,
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let fields = Value::Object(event).to_string();
    match level.as_str() {
        "error" => error!(target: "policy", instance = id, %fields, "{message}"),
        "warning" | "warn" => warn!(target: "policy", instance = id, %fields, "{message}"),
        "debug" => debug!(target: "policy", instance = id, %fields, "{message}"),
        "trace" => trace!(target: "policy", instance = id, %fields, "{message}"),
        _ => info!(target: "policy", instance = id, %fields, "{message}"),
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] so running guests hit their
/// deadline; stops when the module is dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: wasmtime::Engine) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("wasm-epoch".to_owned())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .map_err(|e| Error::Engine(format!("cannot start the epoch ticker thread: {e}")))?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            // A panicked ticker has nothing left to clean up.
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn validate_payload_has_request_then_settings() -> anyhow::Result<()> {
        let request = AdmissionRequest::from_value(
            json!({"uid": "u", "kind": {"kind": "Pod"}, "operation": "DELETE", "object": null}),
        )?;
        let settings = Settings::from_json_str(r#"{"onMismatch":"warn"}"#)?;
        let payload = String::from_utf8(validate_payload(&settings, &request)?)?;
        let parsed: Value = serde_json::from_str(&payload)?;
        assert_eq!(
            parsed,
            json!({"request": request.as_value(), "settings": {"onMismatch": "warn"}})
        );
        let (req_at, set_at) = (payload.find(r#""request""#), payload.find(r#""settings""#));
        assert!(req_at < set_at, "request must come first: {payload}");
        let empty = String::from_utf8(validate_payload(&Settings::empty(), &request)?)?;
        assert!(empty.ends_with(r#""settings":{}}"#), "{empty}");
        Ok(())
    }

    #[test]
    fn host_answers_log_calls_and_refuses_everything_else() {
        let log = br#"{"level":"info","message":"hello","line":1}"#;
        assert!(
            matches!(host_callback(1, "kubewarden", "tracing", "log", log), Ok(v) if v.is_empty())
        );
        // A malformed log event must not trap the guest.
        assert!(host_callback(1, "kubewarden", "tracing", "log", b"not json").is_ok());
        let refused = host_callback(1, "kubewarden", "oci", "v1/verify", b"{}");
        assert!(
            matches!(&refused, Err(e) if e.to_string().contains("kubewarden/oci/v1/verify")),
            "{refused:?}"
        );
    }
}
