//! The compiled `dask-worker-defaults` module, annotated with `policy-metadata.yml` as the
//! release artifact is (`policy-runner annotate`), on AdmissionReview fixtures, evaluated
//! the way `kwctl run` does (the `policy-runner run` binary, fresh instance, JSONPatch diff):
//! asserts `allowed`, the exact decoded JSONPatch, the message and the warnings. Each
//! patched object is then evaluated again, as the apiserver may reinvoke a webhook: the
//! second pass must accept it with no patch.
//!
//! Fixtures live in `tests/fixtures/policy/<case>/`: `request.json` (an AdmissionReview or
//! a bare AdmissionRequest, as the apiserver sends them after defaulting),
//! `settings.json` (optional), and `expected.json`. `tests/policy.bats` runs the same
//! fixtures through a real `kwctl` where one is installed.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use base64::Engine as _;
use rstest::rstest;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture_dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/policy")
        .join(case)
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `policy-runner run` exactly as policy.bats calls `kwctl run`.
fn kwctl_run(request: &Path, settings: Option<&Path>) -> std::process::Output {
    let module = common::annotated_module().unwrap_or_else(|e| panic!("{e:#}"));
    let mut command = Command::new(common::BIN);
    command.arg("run").arg("--request-path").arg(request);
    if let Some(settings) = settings {
        command.arg("--settings-path").arg(settings);
    }
    command.arg(module);
    command.output().expect("policy-runner starts")
}

fn decoded_patch(response: &Value) -> Value {
    match response.get("patch").and_then(Value::as_str) {
        None => Value::Null,
        Some(b64) => {
            assert_eq!(response["patchType"], "JSONPatch");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .expect("patch is base64");
            serde_json::from_slice(&bytes).expect("patch is JSON")
        }
    }
}

#[rstest]
#[case::readme_worker_spec("readme-worker-spec")]
#[case::already_defaulted_pod_gets_no_patch("already-defaulted")]
#[case::unlabelled_pod_bare_request("unlabelled-pod")]
#[case::sidecar_untouched("sidecar")]
#[case::dask_worker_hyphenated_classic_labels("dask-worker-hyphenated")]
#[case::sh_c_script("sh-c")]
#[case::nworkers_multiplies("nworkers")]
#[case::flags_from_gib_limits("flags-from-gib-limits")]
#[case::memory_limit_auto_warns("memory-limit-auto")]
#[case::mismatch_rejected_by_default("mismatch-reject")]
#[case::mismatch_use_resources("mismatch-use-resources")]
#[case::mismatch_use_flags("mismatch-use-flags")]
#[case::deployment_template_update("deployment")]
#[case::job_template("job")]
#[case::cronjob_template("cronjob")]
#[case::dask_operator_worker_group("daskworkergroup")]
#[case::delete_null_object("delete")]
#[case::pod_update_untouched("pod-update")]
#[case::malformed_object_refused("malformed-object")]
#[case::fractional_byte_quantity_refused("fractional-byte-quantity")]
#[case::invalid_settings_exit_1("invalid-settings")]
#[case::variable_from_resource_field_ref("variable-resource-field-ref")]
#[case::variable_divisor_mebibytes_refused("variable-divisor-mebibytes-refused")]
#[case::variable_from_configmap_warns("variable-from-configmap-warns")]
#[case::sh_c_shell_variable("sh-c-shell-variable")]
#[case::memory_limit_bytes_too_small("memory-limit-bytes-too-small")]
#[case::float_bytes_like_dask("float-bytes-like-dask")]
#[case::nprocs_with_nworkers_refused("nprocs-with-nworkers-refused")]
#[case::nprocs_warns("nprocs-warns")]
#[case::nthreads_zero_is_the_default("nthreads-zero-is-the-default")]
#[case::memory_headroom_setting("memory-headroom-setting")]
#[case::affinity_required("affinity-required")]
#[case::affinity_none("affinity-none")]
#[case::affinity_user_terms_kept("affinity-user-terms-kept")]
#[case::affinity_required_joins_user_term("affinity-required-joins-user-term")]
fn fixture(#[case] case: &str) {
    let dir = fixture_dir(case);
    let request_path = dir.join("request.json");
    let settings_path = dir.join("settings.json");
    let settings = settings_path.exists().then_some(settings_path.as_path());
    let expected = read_json(&dir.join("expected.json"));
    let output = kwctl_run(&request_path, settings);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);

    if let Some(code) = expected.get("exitCode") {
        assert_eq!(
            output.status.code(),
            code.as_i64().map(|c| c as i32),
            "stderr: {stderr}"
        );
        assert_eq!(stderr.trim(), expected["stderr"].as_str().expect("stderr"));
        assert!(
            stdout.trim().is_empty(),
            "no response on invalid settings: {stdout}"
        );
        return;
    }
    assert!(output.status.success(), "stderr: {stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "kwctl prints one JSON line: {stdout}");
    let response: Value = serde_json::from_str(lines[0]).expect("response JSON");

    let request = read_json(&request_path);
    let request = request.get("request").unwrap_or(&request);
    assert_eq!(response["uid"], request["uid"]);
    assert_eq!(response["allowed"], expected["allowed"]);
    assert_eq!(decoded_patch(&response), expected["patch"]);
    assert_eq!(response["status"]["message"], expected["message"]);
    assert_eq!(response["warnings"], expected["warnings"]);
    for always in ["auditAnnotations", "warnings"] {
        assert!(
            response.get(always).is_some(),
            "kwctl always prints {always}"
        );
    }

    // Reinvocation: the patched object must come back unchanged.
    if let Value::Array(ops) = &expected["patch"] {
        let mut object = request["object"].clone();
        let patch: json_patch::Patch =
            serde_json::from_value(Value::Array(ops.clone())).expect("patch ops");
        json_patch::patch(&mut object, &patch).expect("patch applies to the object");
        let mut again = request.clone();
        again["object"] = object;
        let tmp = tempfile::tempdir().expect("tempdir");
        let again_path = tmp.path().join("request.json");
        std::fs::write(
            &again_path,
            serde_json::to_vec(&json!({"request": again})).expect("json"),
        )
        .expect("write");
        let second = kwctl_run(&again_path, settings);
        let second: Value = serde_json::from_slice(&second.stdout).expect("second response");
        assert_eq!(second["allowed"], true, "{second}");
        assert_eq!(second.get("patch"), None, "second pass patched: {second}");
    }
}
