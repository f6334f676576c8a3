//! `dask-worker-defaults`: a Kubewarden mutating policy that gives Dask worker pods, and the
//! pod templates of workloads that create them, the defaults Dask needs.
//!
//! The decision is [`dask_worker_spec::default_object`], a pure function shared with the
//! `dask-kube` host; this crate is the waPC shell around it. Every input gets an answer:
//! a malformed request or object is rejected with a message, never a trap (a panic in
//! the module is an HTTP 500 for every pod in the cluster).

use dask_worker_spec::default_object;
use kubewarden_policy_sdk::protocol_version_guest;
use kubewarden_policy_sdk::response::ValidationResponse;
use serde::Deserialize;
use wapc_guest::prelude::*;

pub mod settings;
pub use settings::Settings;

/// Registers the waPC functions the Kubewarden host calls.
#[allow(unsafe_code)] // the waPC ABI requires an unmangled export
#[unsafe(no_mangle)]
pub extern "C" fn wapc_init() {
    register_function("validate", validate);
    register_function("validate_settings", validate_settings);
    register_function("protocol_version", protocol_version_guest);
}

fn validate(payload: &[u8]) -> CallResult {
    validate_payload(payload).map_err(Into::into)
}

fn validate_settings(payload: &[u8]) -> CallResult {
    Ok(serde_json::to_vec(&settings::validate_settings_payload(
        payload,
    ))?)
}

/// The `validate` call's payload.
#[derive(Deserialize)]
struct ValidationPayload {
    request: AdmissionRequest,
    #[serde(default)]
    settings: serde_json::Value,
}

/// The parts of the AdmissionRequest the decision reads. The SDK's full request type would
/// also build `oldObject` (a second copy of the object on UPDATE), `userInfo` and
/// `options` as values on every call; here serde skips them without allocating.
#[derive(Deserialize, Default)]
#[serde(default)]
struct AdmissionRequest {
    kind: GroupVersionKind,
    operation: String,
    object: serde_json::Value,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct GroupVersionKind {
    group: String,
    kind: String,
}

/// What `validate` does, callable natively (tests, benchmarks): the serialized
/// `ValidationResponse` for a serialized `{request, settings}` payload.
///
/// Only a failure to serialize the response is an `Err`; every input gets a response.
pub fn validate_payload(payload: &[u8]) -> Result<Vec<u8>, String> {
    let response = evaluate(payload);
    // The response carries the object back, so it is about the payload's size: one buffer
    // of that size instead of a dozen reallocations (and copies) while serde writes it.
    let mut out = Vec::with_capacity(payload.len().saturating_add(512));
    serde_json::to_writer(&mut out, &response)
        .map_err(|e| format!("cannot serialize the response: {e}"))?;
    Ok(out)
}

fn reject(message: String) -> ValidationResponse {
    ValidationResponse {
        accepted: false,
        message: Some(message),
        code: None,
        mutated_object: None,
        audit_annotations: None,
        warnings: None,
    }
}

/// The decision for one payload.
pub fn evaluate(payload: &[u8]) -> ValidationResponse {
    let payload: ValidationPayload = match serde_json::from_slice(payload) {
        Ok(p) => p,
        Err(e) => return reject(format!("invalid admission request: {e}")),
    };
    let settings = match payload.settings {
        // kwctl and policy-server send `{}` when a policy has no settings: the defaults,
        // without a round trip through the settings parser on every request.
        serde_json::Value::Null => Settings::default(),
        serde_json::Value::Object(map) if map.is_empty() => Settings::default(),
        value => match serde_json::to_vec(&value)
            .map_err(|e| e.to_string())
            .and_then(|json| Settings::from_json(&json).map_err(|e| e.to_string()))
        {
            Ok(s) => s,
            Err(e) => return reject(format!("invalid settings: {e}")),
        },
    };
    let request = payload.request;
    match default_object(
        &request.kind.group,
        &request.kind.kind,
        &request.operation,
        request.object,
        &settings.0,
    ) {
        Ok(outcome) => ValidationResponse {
            accepted: true,
            message: None,
            code: None,
            mutated_object: outcome.mutated,
            audit_annotations: None,
            warnings: (!outcome.warnings.is_empty()).then_some(outcome.warnings),
        },
        Err(e) => reject(e.to_string()),
    }
}
