//! Where things are: the compiled policy module in the Cargo target directory (found
//! from the running executable, so tests need no configuration) and module arguments
//! given as a path or `file://` URL.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// File name of the compiled policy.
pub const POLICY_WASM_FILE: &str = "dask_worker_defaults.wasm";

/// Overrides the module location (e.g. a module built elsewhere).
pub const POLICY_WASM_ENV: &str = "DASK_POLICY_WASM";

/// The compiled policy module, `<target-dir>/wasm32-wasip1/release/dask_worker_defaults.wasm`,
/// where `<target-dir>` is found from the running executable's path (a test binary lives
/// in `<target-dir>/<profile>/deps/`). `$DASK_POLICY_WASM` overrides the search.
///
/// # Errors
/// [`Error::ModuleNotFound`] naming the expected path, telling to run `make wasm`.
///
/// # Example
/// ```no_run
/// let wasm = policy_runner::locate::policy_module()?;
/// let module = policy_runner::evaluator::PolicyModule::from_file(&wasm)?;
/// # Ok::<(), policy_runner::Error>(())
/// ```
pub fn policy_module() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(POLICY_WASM_ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(Error::ModuleNotFound { path })
        };
    }
    let exe = std::env::current_exe().map_err(|e| Error::io("<current executable>", e))?;
    find_policy_module(&exe)
}

/// Searches the ancestors of `from` for `wasm32-wasip1/release/<POLICY_WASM_FILE>`. When
/// absent, the error names the path under the nearest Cargo target directory (the one
/// holding `CACHEDIR.TAG`).
pub fn find_policy_module(from: &Path) -> Result<PathBuf> {
    let mut expected = None;
    for dir in from.ancestors().skip(1) {
        let candidate = dir
            .join("wasm32-wasip1")
            .join("release")
            .join(POLICY_WASM_FILE);
        if candidate.is_file() {
            return Ok(candidate);
        }
        if expected.is_none() && dir.join("CACHEDIR.TAG").is_file() {
            expected = Some(candidate);
        }
    }
    Err(Error::ModuleNotFound {
        path: expected.unwrap_or_else(|| {
            PathBuf::from("<cargo-target-dir>/wasm32-wasip1/release").join(POLICY_WASM_FILE)
        }),
    })
}

/// A `kwctl run` MODULE argument: a local path or a `file://` URL. Remote locations
/// (`registry://`, `https://`) are refused: this host never downloads.
pub fn module_path(arg: &str) -> Result<PathBuf> {
    if let Some(path) = arg.strip_prefix("file://") {
        if path.is_empty() {
            return Err(Error::UnsupportedModuleUri(arg.to_owned()));
        }
        return Ok(PathBuf::from(path));
    }
    match arg.split_once("://") {
        Some(_) => Err(Error::UnsupportedModuleUri(arg.to_owned())),
        None if arg.is_empty() => Err(Error::UnsupportedModuleUri(arg.to_owned())),
        None => Ok(PathBuf::from(arg)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::relative_path("policy.wasm", Some("policy.wasm"))]
    #[case::absolute_path("/x/policy.wasm", Some("/x/policy.wasm"))]
    #[case::file_url_absolute("file:///x/policy.wasm", Some("/x/policy.wasm"))]
    #[case::file_url_relative("file://policy.wasm", Some("policy.wasm"))]
    #[case::registry_refused("registry://ghcr.io/kubewarden/policies/x:v1", None)]
    #[case::https_refused("https://example.invalid/p.wasm", None)]
    #[case::empty_refused("", None)]
    #[case::empty_file_url_refused("file://", None)]
    fn parses_module_argument(#[case] arg: &str, #[case] expected: Option<&str>) {
        match (module_path(arg), expected) {
            (Ok(p), Some(e)) => assert_eq!(p, PathBuf::from(e)),
            (Err(Error::UnsupportedModuleUri(a)), None) => assert_eq!(a, arg),
            (got, want) => panic!("{arg:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn finds_module_from_a_test_binary_path() -> anyhow::Result<()> {
        let target = tempfile::tempdir()?;
        std::fs::write(target.path().join("CACHEDIR.TAG"), "Signature")?;
        let exe = target.path().join("debug").join("deps").join("it-123");
        let wasm_dir = target.path().join("wasm32-wasip1").join("release");

        match find_policy_module(&exe) {
            Err(Error::ModuleNotFound { path }) => {
                assert_eq!(path, wasm_dir.join(POLICY_WASM_FILE));
                let msg = Error::ModuleNotFound { path }.to_string();
                assert!(msg.contains("make wasm"), "{msg}");
            }
            other => panic!("expected ModuleNotFound, got {other:?}"),
        }

        std::fs::create_dir_all(&wasm_dir)?;
        std::fs::write(wasm_dir.join(POLICY_WASM_FILE), b"\0asm")?;
        assert_eq!(find_policy_module(&exe)?, wasm_dir.join(POLICY_WASM_FILE));
        Ok(())
    }
}
