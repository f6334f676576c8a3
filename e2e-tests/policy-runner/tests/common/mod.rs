//! Shared by the integration tests: the policy module annotated the way the Makefile's
//! `annotate` target makes the release artifact (`policy-runner annotate -m
//! policy-metadata.yml ...`), so tests run what gets published.

#![allow(dead_code)] // each test binary uses a different part

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_policy-runner");

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The policy's `metadata.yml`.
pub fn policy_metadata() -> PathBuf {
    repo_root().join("policy-metadata.yml")
}

/// The plain compiled policy module.
pub fn plain_module() -> anyhow::Result<PathBuf> {
    Ok(policy_runner::locate::policy_module()?)
}

/// Runs `policy-runner annotate` and checks it succeeded.
pub fn annotate(module: &Path, metadata: &Path, output: &Path) -> anyhow::Result<()> {
    let out = Command::new(BIN)
        .arg("annotate")
        .arg("-m")
        .arg(metadata)
        .arg("-o")
        .arg(output)
        .arg(module)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "annotate failed ({:?}): {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// `annotated-policy.test.wasm` beside the plain module, made once per test binary.
/// The output is deterministic, and it is written to a private name and renamed, so test
/// binaries running side by side never see a half-written file.
pub fn annotated_module() -> anyhow::Result<PathBuf> {
    static ANNOTATED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    ANNOTATED
        .get_or_init(|| make_annotated().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn make_annotated() -> anyhow::Result<PathBuf> {
    let plain = plain_module()?;
    let dir = plain
        .parent()
        .ok_or_else(|| anyhow::anyhow!("{} has no parent", plain.display()))?;
    let target = dir.join("annotated-policy.test.wasm");
    let partial = dir.join(format!(
        "annotated-policy.test.wasm.{}.partial",
        std::process::id()
    ));
    annotate(&plain, &policy_metadata(), &partial)?;
    std::fs::rename(&partial, &target)?;
    Ok(target)
}
