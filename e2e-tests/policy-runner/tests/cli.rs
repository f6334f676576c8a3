//! `policy-runner run` (the binary) on the real compiled policy module, checked against
//! what kwctl prints for the same inputs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use policy_runner::admission::AdmissionResponse;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_policy-runner");

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name)
}

fn policy() -> anyhow::Result<PathBuf> {
    Ok(policy_runner::locate::policy_module()?)
}

fn run(args: &[&str]) -> anyhow::Result<Output> {
    Ok(Command::new(BIN).arg("run").args(args).output()?)
}

/// Runs and expects success with exactly one JSON line on stdout.
fn run_ok(args: &[&str]) -> anyhow::Result<(String, AdmissionResponse)> {
    let out = run(args)?;
    let stdout = String::from_utf8(out.stdout)?;
    anyhow::ensure!(
        out.status.success(),
        "exit {:?}; stderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(
        stdout.ends_with('\n') && stdout.lines().count() == 1,
        "one line: {stdout:?}"
    );
    let response = serde_json::from_str(&stdout)?;
    Ok((stdout, response))
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path {p:?}"))
}

#[test]
fn invalid_settings_exit_1_with_kwctl_message() -> anyhow::Result<()> {
    let wasm = policy()?;
    let review = fixture("worker-pod-create-review.json");
    let out = run(&[
        "--request-path",
        path_str(&review)?,
        "--settings-json",
        r#"{"onMismatch":"bogus"}"#,
        path_str(&wasm)?,
    ])?;
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "nothing on stdout");
    let stderr = String::from_utf8(out.stderr)?;
    assert!(
        stderr.starts_with("Error: Provided settings are not valid: "),
        "{stderr}"
    );
    assert!(
        stderr.contains("bogus"),
        "the policy's reason is shown: {stderr}"
    );
    Ok(())
}

#[test]
fn delete_with_null_object_is_allowed_without_patch() -> anyhow::Result<()> {
    let wasm = format!("file://{}", path_str(&policy()?)?);
    let request = fixture("worker-pod-delete-request.json");
    let (line, _) = run_ok(&["-r", path_str(&request)?, &wasm])?;
    assert_eq!(
        line,
        "{\"uid\":\"1f0c6c5e-7a36-4b8e-9d55-3a3b1c7e0002\",\"allowed\":true,\"auditAnnotations\":null,\"warnings\":null}\n"
    );
    Ok(())
}

#[test]
fn bare_request_and_review_give_the_same_response() -> anyhow::Result<()> {
    let wasm = policy()?;
    let review_path = fixture("worker-pod-create-review.json");
    let review: Value = serde_json::from_slice(&std::fs::read(&review_path)?)?;
    let dir = tempfile::tempdir()?;
    let bare_path = dir.path().join("request.json");
    std::fs::write(&bare_path, serde_json::to_vec(&review["request"])?)?;

    let (from_review, _) = run_ok(&["-r", path_str(&review_path)?, path_str(&wasm)?])?;
    let (from_bare, _) = run_ok(&["-r", path_str(&bare_path)?, path_str(&wasm)?])?;
    assert_eq!(from_review, from_bare);
    Ok(())
}

/// A webhook must be idempotent: the patched object, reviewed again, needs no patch.
#[test]
fn worker_pod_is_patched_and_the_patch_is_idempotent() -> anyhow::Result<()> {
    let wasm = policy()?;
    let review_path = fixture("worker-pod-create-review.json");
    let (_, first) = run_ok(&["-r", path_str(&review_path)?, path_str(&wasm)?])?;
    assert!(first.allowed, "{first:?}");
    assert_eq!(
        serde_json::to_value(first.patch_type)?,
        json!("JSONPatch"),
        "{first:?}"
    );
    let patch = first
        .decoded_patch()
        .map_err(anyhow::Error::msg)?
        .ok_or_else(|| anyhow::anyhow!("a worker pod without defaults must be patched"))?;

    let mut review: Value = serde_json::from_slice(&std::fs::read(&review_path)?)?;
    let patch: json_patch::Patch = serde_json::from_value(patch)?;
    json_patch::patch(&mut review["request"]["object"], &patch)?;
    let dir = tempfile::tempdir()?;
    let patched_path = dir.path().join("patched-review.json");
    std::fs::write(&patched_path, serde_json::to_vec(&review)?)?;

    let (_, second) = run_ok(&["-r", path_str(&patched_path)?, path_str(&wasm)?])?;
    assert!(second.allowed, "{second:?}");
    assert_eq!(second.patch, None, "second pass must not patch: {second:?}");
    assert_eq!(second.patch_type, None);
    Ok(())
}

#[test]
fn metadata_not_mutating_turns_a_patch_into_a_rejection() -> anyhow::Result<()> {
    let wasm = policy()?;
    let review = fixture("worker-pod-create-review.json");
    let metadata = fixture("metadata-not-mutating.yml");
    let (_, response) = run_ok(&[
        "-r",
        path_str(&review)?,
        "-m",
        path_str(&metadata)?,
        "--allow-context-aware",
        path_str(&wasm)?,
    ])?;
    assert!(!response.allowed, "{response:?}");
    assert_eq!(response.patch, None);
    let message = response.status.and_then(|s| s.message).unwrap_or_default();
    assert!(
        message.contains("configured to not allow mutations"),
        "{message}"
    );
    Ok(())
}

#[test]
fn invalid_request_file_exit_1_with_reason() -> anyhow::Result<()> {
    let wasm = policy()?;
    let dir = tempfile::tempdir()?;
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"kind":"AdmissionReview","request":{"operation":"CREATE"}}"#,
    )?;
    let out = run(&["-r", path_str(&bad)?, path_str(&wasm)?])?;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr)?;
    assert!(
        stderr.starts_with("Error: invalid admission request: "),
        "{stderr}"
    );
    assert!(stderr.contains("missing `uid`"), "{stderr}");
    Ok(())
}

#[test]
fn missing_module_exit_1_naming_the_path() -> anyhow::Result<()> {
    let request = fixture("worker-pod-delete-request.json");
    let out = run(&["-r", path_str(&request)?, "/nonexistent/policy.wasm"])?;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr)?;
    assert!(stderr.contains("/nonexistent/policy.wasm"), "{stderr}");
    Ok(())
}

#[test]
fn bench_reports_json_figures() -> anyhow::Result<()> {
    let wasm = policy()?;
    let review = fixture("worker-pod-create-review.json");
    let out = Command::new(BIN)
        .args([
            "bench",
            "-r",
            path_str(&review)?,
            "--iterations",
            "20",
            "--warmup",
            "2",
        ])
        .args(["--output", "json", path_str(&wasm)?])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(report["iterations"], 20);
    assert_eq!(report["evaluate"]["samples"], 20);
    assert_eq!(report["module_bytes"], std::fs::metadata(&wasm)?.len());
    assert!(
        report["evaluate"]["median_us"].as_f64() > Some(0.0),
        "{report}"
    );
    assert_eq!(report["response"]["allowed"], true);
    Ok(())
}
