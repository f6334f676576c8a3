//! The golden AdmissionReview fixtures, natively: each case's request and settings through
//! the policy's own entry points (`validate_settings`, then `validate`), the response
//! turned into what kwctl prints (the JSONPatch is `json_patch::diff(object,
//! mutated_object)`, as policy-evaluator computes it) and compared with `expected.json`.
//! Each patched object is evaluated again, as the apiserver may reinvoke a webhook: the
//! second pass must accept it unchanged.
//!
//! The same fixtures run through the real kwctl on the annotated module in
//! `e2e-tests/kubewarden/policy.bats`; this file is the fast tier (no wasm, no kwctl).
//!
//! A case is a folder under `tests/fixtures/`: `request.json` (an AdmissionReview or a bare
//! AdmissionRequest, as the apiserver sends them after its defaulting), `settings.json`
//! (optional) and `expected.json`: `{allowed, patch, message, warnings}`, or
//! `{exitCode, stderr}` for settings kwctl refuses before evaluating anything.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test helpers outside #[test] fns

use dask_worker_defaults::evaluate;
use dask_worker_defaults::settings::validate_settings_payload;
use rstest::rstest;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What kwctl prints for one evaluation, reduced to what `expected.json` states.
#[derive(Debug, PartialEq)]
struct Outcome {
    allowed: bool,
    patch: Value,
    message: Value,
    warnings: Value,
}

/// `validate` on `{request, settings}`, the response as policy-evaluator builds it.
fn run(request: &Value, settings: &Value) -> Outcome {
    let payload = serde_json::to_vec(&json!({"request": request, "settings": settings}))
        .expect("payload serializes");
    let response = evaluate(&payload);
    let patch = match &response.mutated_object {
        None => Value::Null,
        Some(mutated) => {
            let ops = json_patch::diff(&request["object"], mutated);
            if ops.is_empty() {
                Value::Null
            } else {
                serde_json::to_value(ops).expect("patch serializes")
            }
        }
    };
    Outcome {
        allowed: response.accepted,
        patch,
        message: response.message.map_or(Value::Null, Value::from),
        warnings: response.warnings.map_or(Value::Null, |w| json!(w)),
    }
}

/// One test per folder under `tests/fixtures/` (rstest's `files`: a new case cannot be
/// left out).
#[rstest]
fn fixture(
    #[files("tests/fixtures/*")]
    #[dirs]
    dir: PathBuf,
) {
    let expected = read_json(&dir.join("expected.json"));
    let settings_path = dir.join("settings.json");
    let settings = if settings_path.exists() {
        read_json(&settings_path)
    } else {
        json!({})
    };

    // kwctl validates the settings first and evaluates nothing when they are invalid.
    let settings_check = validate_settings_payload(&serde_json::to_vec(&settings).expect("json"));
    if let Some(code) = expected.get("exitCode") {
        assert_eq!(code, 1, "kwctl exits 1 on invalid settings");
        assert!(!settings_check.valid, "settings accepted: {settings}");
        let message = format!(
            "Error: Provided settings are not valid: {}",
            settings_check.message.unwrap_or_default()
        );
        assert_eq!(message, expected["stderr"].as_str().expect("stderr"));
        return;
    }
    assert!(settings_check.valid, "{:?}", settings_check.message);

    let review = read_json(&dir.join("request.json"));
    let request = review.get("request").unwrap_or(&review).clone();
    let outcome = run(&request, &settings);
    assert_eq!(
        outcome,
        Outcome {
            allowed: expected["allowed"].as_bool().expect("allowed"),
            patch: expected["patch"].clone(),
            message: expected["message"].clone(),
            warnings: expected["warnings"].clone(),
        }
    );

    // Reinvocation: the patched object comes back unchanged.
    if let Value::Array(ops) = &expected["patch"] {
        let patch: json_patch::Patch =
            serde_json::from_value(Value::Array(ops.clone())).expect("patch ops");
        let mut again = request.clone();
        json_patch::patch(&mut again["object"], &patch).expect("patch applies to the object");
        let second = run(&again, &settings);
        assert!(second.allowed, "{second:?}");
        assert_eq!(second.patch, Value::Null, "second pass patched");
    }
}
