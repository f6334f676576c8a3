//! Shared by the integration tests: the policy module, plain and annotated by kwctl as the
//! Makefile's `annotate` target makes the release artifact (`kwctl annotate -m
//! policy-metadata.yml ...`), so `serve` is tested on what gets published.

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

/// `$KWCTL`, else the kwctl `make setup` installs (`~/.cache/dask-on-k8s/bin`, which the
/// Makefile puts on PATH), else `kwctl` from PATH.
fn kwctl() -> PathBuf {
    if let Some(kwctl) = std::env::var_os("KWCTL") {
        return kwctl.into();
    }
    std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".cache/dask-on-k8s/bin/kwctl"))
        .filter(|path| path.is_file())
        .unwrap_or_else(|| "kwctl".into())
}

/// Runs `kwctl annotate` and checks it succeeded.
pub fn annotate(module: &Path, metadata: &Path, output: &Path) -> anyhow::Result<()> {
    let kwctl = kwctl();
    let out = Command::new(&kwctl)
        .arg("annotate")
        .arg("-m")
        .arg(metadata)
        .arg("-o")
        .arg(output)
        .arg(module)
        .output()
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot run {} ({e}): run `make setup`, which installs kwctl",
                kwctl.display()
            )
        })?;
    anyhow::ensure!(
        out.status.success(),
        "kwctl annotate failed ({:?}): {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// `annotated-policy.test.wasm` beside the plain module, made once per test binary.
/// It is written to a private name and renamed, so test binaries running side by side
/// never see a half-written file.
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
        "annotated-policy.test.{}.partial.wasm",
        std::process::id()
    ));
    annotate(&plain, &policy_metadata(), &partial)?;
    std::fs::rename(&partial, &target)?;
    Ok(target)
}
