//! `policy-runner run`/`bench`/`timings` (the binary) on the real compiled policy module,
//! plain and annotated, checked against what kwctl prints and refuses for the same inputs.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{BIN, annotate, annotated_module, plain_module, policy_metadata};
use policy_runner::admission::AdmissionResponse;
use rstest::rstest;
use serde_json::{Value, json};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name)
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

/// Runs and expects exit 1 with `Error: ...` on stderr and nothing on stdout.
fn run_fails(args: &[&str]) -> anyhow::Result<String> {
    let out = run(args)?;
    anyhow::ensure!(
        out.status.code() == Some(1),
        "expected exit 1, got {:?}; stdout {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout)
    );
    anyhow::ensure!(out.stdout.is_empty(), "nothing on stdout");
    let stderr = String::from_utf8(out.stderr)?;
    anyhow::ensure!(stderr.starts_with("Error: "), "{stderr}");
    Ok(stderr)
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path {p:?}"))
}

/// `policy-metadata.yml` with one line changed, annotated into `dir`.
fn annotated_with(dir: &Path, from: &str, to: &str) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(policy_metadata())?;
    anyhow::ensure!(text.contains(from), "policy-metadata.yml lacks {from:?}");
    let metadata = dir.join("metadata.yml");
    std::fs::write(&metadata, text.replace(from, to))?;
    let output = dir.join("annotated.wasm");
    annotate(&plain_module()?, &metadata, &output)?;
    Ok(output)
}

#[test]
fn invalid_settings_exit_1_with_kwctl_message() -> anyhow::Result<()> {
    let wasm = annotated_module()?;
    let review = fixture("worker-pod-create-review.json");
    let stderr = run_fails(&[
        "--request-path",
        path_str(&review)?,
        "--settings-json",
        r#"{"onMismatch":"bogus"}"#,
        path_str(&wasm)?,
    ])?;
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
    let wasm = format!("file://{}", path_str(&plain_module()?)?);
    let request = fixture("worker-pod-delete-request.json");
    let (line, _) = run_ok(&["-r", path_str(&request)?, &wasm])?;
    assert_eq!(
        line,
        "{\"uid\":\"1f0c6c5e-7a36-4b8e-9d55-3a3b1c7e0002\",\"allowed\":true,\"auditAnnotations\":null,\"warnings\":null}\n"
    );
    Ok(())
}

#[test]
fn plain_and_annotated_module_give_the_same_response() -> anyhow::Result<()> {
    let review = fixture("worker-pod-create-review.json");
    let (plain, _) = run_ok(&["-r", path_str(&review)?, path_str(&plain_module()?)?])?;
    let (annotated, response) =
        run_ok(&["-r", path_str(&review)?, path_str(&annotated_module()?)?])?;
    assert_eq!(plain, annotated);
    assert!(response.patch.is_some(), "{response:?}");
    Ok(())
}

#[test]
fn bare_request_review_and_stdin_give_the_same_response() -> anyhow::Result<()> {
    let wasm = annotated_module()?;
    let review_path = fixture("worker-pod-create-review.json");
    let review: Value = serde_json::from_slice(&std::fs::read(&review_path)?)?;
    let dir = tempfile::tempdir()?;
    let bare_path = dir.path().join("request.json");
    std::fs::write(&bare_path, serde_json::to_vec(&review["request"])?)?;

    let (from_review, _) = run_ok(&["-r", path_str(&review_path)?, path_str(&wasm)?])?;
    let (from_bare, _) = run_ok(&["-r", path_str(&bare_path)?, path_str(&wasm)?])?;
    assert_eq!(from_review, from_bare);

    // `--request-path -` reads stdin, as in kwctl.
    let mut child = Command::new(BIN)
        .args(["run", "--request-path", "-", path_str(&wasm)?])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(
        child
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("no stdin"))?,
        &std::fs::read(&review_path)?,
    )?;
    let out = child.wait_with_output()?;
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout)?, from_review);
    Ok(())
}

/// A webhook must be idempotent: the patched object, reviewed again, needs no patch.
#[test]
fn worker_pod_is_patched_and_the_patch_is_idempotent() -> anyhow::Result<()> {
    let wasm = annotated_module()?;
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

/// kwctl applies no `mutating` constraint when it runs a policy (policy-server does, see
/// serve.rs): a module whose metadata says `mutating: false` still returns its patch.
#[test]
fn run_returns_the_patch_whatever_the_metadata_says_about_mutating() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let wasm = annotated_with(dir.path(), "mutating: true", "mutating: false")?;
    let review = fixture("worker-pod-create-review.json");
    let (_, response) = run_ok(&[
        "-r",
        path_str(&review)?,
        "--allow-context-aware",
        "--disable-wasmtime-cache",
        path_str(&wasm)?,
    ])?;
    assert!(response.allowed && response.patch.is_some(), "{response:?}");
    Ok(())
}

#[test]
fn execution_mode_comes_from_the_module_metadata() -> anyhow::Result<()> {
    let review = fixture("worker-pod-create-review.json");
    let review = path_str(&review)?;
    let annotated = annotated_module()?;
    let annotated = path_str(&annotated)?;
    let plain = plain_module()?;
    let plain = path_str(&plain)?;

    // `-e kubewarden` runs a plain or annotated waPC module.
    run_ok(&["-r", review, "-e", "kubewarden", annotated])?;
    run_ok(&["-r", review, "--execution-mode", "kubewarden", plain])?;

    // As in kwctl, the flag wins over the metadata; other runtimes are named, not run.
    let stderr = run_fails(&["-r", review, "-e", "opa", annotated])?;
    assert!(stderr.contains("execution mode is opa"), "{stderr}");
    let stderr = run_fails(&["-r", review, "-e", "wasi", plain])?;
    assert!(stderr.contains("execution mode is wasi"), "{stderr}");

    // Without the flag, the module's metadata decides.
    let dir = tempfile::tempdir()?;
    let wasi = annotated_with(
        dir.path(),
        "executionMode: kubewarden-wapc",
        "executionMode: wasi",
    )?;
    let wasi = path_str(&wasi)?;
    let stderr = run_fails(&["-r", review, wasi])?;
    assert!(stderr.contains("execution mode is wasi"), "{stderr}");
    run_ok(&["-r", review, "-e", "kubewarden", wasi])?;
    Ok(())
}

#[rstest]
#[case::verification_key(&["-k", "key.pub"], "--verification-key")]
#[case::verification_annotation(&["-a", "env=prod"], "--verification-annotation")]
#[case::cert_email(&["--cert-email", "a@b.c"], "--cert-email")]
#[case::sigstore_trust_config(&["--sigstore-trust-config", "t.json"], "--sigstore-trust-config")]
#[case::raw(&["--raw"], "--raw")]
#[case::record(&["--record-host-capabilities-interactions", "s.yml"], "--record-host-capabilities-interactions")]
#[case::replay(&["--replay-host-capabilities-interactions", "s.yml"], "--replay-host-capabilities-interactions")]
#[case::missing_sources_file(&["--sources-path", "/nonexistent/sources.yml"], "/nonexistent/sources.yml")]
fn flags_of_features_this_host_lacks_fail_naming_the_flag(
    #[case] flags: &[&str],
    #[case] named: &str,
) -> anyhow::Result<()> {
    let review = fixture("worker-pod-create-review.json");
    let wasm = annotated_module()?;
    let mut args = vec!["-r", path_str(&review)?];
    args.extend_from_slice(flags);
    args.push(path_str(&wasm)?);
    let stderr = run_fails(&args)?;
    assert!(stderr.contains(named), "{stderr}");
    Ok(())
}

#[rstest]
#[case::yaml_policy_resources("policies.yaml", "Kubewarden policy resources in YAML")]
#[case::registry("registry://ghcr.io/kubewarden/policies/x:v1", "only local paths")]
#[case::missing_file("/nonexistent/policy.wasm", "/nonexistent/policy.wasm")]
fn module_arguments_this_host_cannot_load(
    #[case] module: &str,
    #[case] needle: &str,
) -> anyhow::Result<()> {
    let request = fixture("worker-pod-delete-request.json");
    let stderr = run_fails(&["-r", path_str(&request)?, module])?;
    assert!(stderr.contains(needle), "{stderr}");
    Ok(())
}

#[test]
fn invalid_request_file_exit_1_with_reason() -> anyhow::Result<()> {
    let wasm = annotated_module()?;
    let dir = tempfile::tempdir()?;
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"kind":"AdmissionReview","request":{"operation":"CREATE"}}"#,
    )?;
    let stderr = run_fails(&["-r", path_str(&bad)?, path_str(&wasm)?])?;
    assert!(
        stderr.starts_with("Error: invalid admission request: "),
        "{stderr}"
    );
    assert!(stderr.contains("missing `uid`"), "{stderr}");
    Ok(())
}

/// `bench` prints tiny-bench's report for kwctl's two labels.
#[test]
fn bench_reports_validate_settings_and_validate_like_kwctl() -> anyhow::Result<()> {
    let wasm = annotated_module()?;
    let review = fixture("worker-pod-create-review.json");
    let out = Command::new(BIN)
        .args(["bench", "-r", path_str(&review)?])
        .args(["--warm-up-time", "1", "--measurement-time", "1"])
        .args(["--num-samples", "10", path_str(&wasm)?])
        .output()?;
    let stdout = String::from_utf8(out.stdout)?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for label in ["validate_settings", "validate"] {
        let header = format!("{label} [");
        let line = stdout
            .lines()
            .find(|l| strip_ansi(l).starts_with(&header))
            .ok_or_else(|| anyhow::anyhow!("no {header:?} line in {stdout}"))?;
        assert!(strip_ansi(line).contains(" samples]:"), "{line}");
    }
    assert!(
        stdout
            .lines()
            .filter(|l| strip_ansi(l).trim_start().starts_with("elapsed"))
            .count()
            == 2,
        "{stdout}"
    );
    Ok(())
}

/// tiny-bench colours its labels; compare the text.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn timings_report_json_figures() -> anyhow::Result<()> {
    let wasm = annotated_module()?;
    let review = fixture("worker-pod-create-review.json");
    let out = Command::new(BIN)
        .args([
            "timings",
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
