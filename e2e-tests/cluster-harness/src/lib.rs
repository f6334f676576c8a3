//! How every integration test finds the local cluster (`e2e-tests/local-cluster/cluster up`).
//!
//! One rule for all suites, so that with several clusters on one machine (each with its
//! own `DASK_K8S_STATE_DIR`) every suite talks to the same one, never to anything but
//! loopback, and without a cluster fails the same way, saying how to start one.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// How long the apiserver may take to answer the first request.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// The local cluster's kubeconfig: `$DASK_K8S_STATE_DIR/kubeconfig` (the cluster script's
/// own state dir), else the first `$KUBECONFIG` entry (as `cluster env` exports it), else
/// the default state dir's.
pub fn kubeconfig_path() -> PathBuf {
    kubeconfig_from(
        std::env::var_os("DASK_K8S_STATE_DIR").as_deref(),
        std::env::var_os("KUBECONFIG").as_deref(),
        std::env::var_os("HOME").as_deref(),
    )
}

fn kubeconfig_from(
    state_dir: Option<&OsStr>,
    kubeconfig: Option<&OsStr>,
    home: Option<&OsStr>,
) -> PathBuf {
    if let Some(dir) = state_dir.filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("kubeconfig");
    }
    if let Some(first) = kubeconfig
        .and_then(|k| k.to_string_lossy().split(':').next().map(str::to_owned))
        .filter(|k| !k.is_empty())
    {
        return PathBuf::from(first);
    }
    PathBuf::from(home.unwrap_or(OsStr::new("/root"))).join(".cache/dask-on-k8s/cluster/kubeconfig")
}

/// A client for the local cluster: the kubeconfig must point at loopback (tests never talk
/// to another address) and the apiserver must answer within 10 s.
pub async fn connect() -> anyhow::Result<(Client, PathBuf)> {
    // kube's rustls needs a process-wide provider; an already installed one is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let path = kubeconfig_path();
    let kubeconfig =
        Kubeconfig::read_from(&path).with_context(|| format!("reading {}", path.display()))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    let server = config.cluster_url.clone();
    if !matches!(server.host(), Some("127.0.0.1" | "localhost" | "[::1]")) {
        bail!(
            "kubeconfig {} points at {server}, not at a loopback cluster",
            path.display()
        );
    }
    let client = Client::try_from(config)?;
    tokio::time::timeout(ANSWER_WITHIN, client.apiserver_version())
        .await
        .with_context(|| format!("the apiserver at {server} did not answer within 10s"))??;
    Ok((client, path))
}

/// The local cluster for `test`; without one, panics saying how to start it. Cluster tests
/// are `#[ignore]`d, so `cargo test` lists them as ignored (never as passed) and only the
/// integration tier (`--include-ignored`) runs them: a test that runs never skips.
pub async fn cluster(test: &str) -> (Client, PathBuf) {
    match connect().await {
        Ok(found) => found,
        Err(e) => panic!(
            "{test} needs the local cluster: run `e2e-tests/local-cluster/cluster up` (or set \
             DASK_K8S_STATE_DIR / KUBECONFIG to a running one). Tried {}: {e:#}",
            kubeconfig_path().display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::state_dir_wins(Some("/tmp/c"), Some("/k/config"), "/tmp/c/kubeconfig")]
    #[case::kubeconfig_without_state_dir(None, Some("/k/config"), "/k/config")]
    #[case::first_kubeconfig_entry(None, Some("/a:/b"), "/a")]
    #[case::empty_values_are_unset(
        Some(""),
        Some(""),
        "/home/u/.cache/dask-on-k8s/cluster/kubeconfig"
    )]
    #[case::default_state_dir(None, None, "/home/u/.cache/dask-on-k8s/cluster/kubeconfig")]
    fn kubeconfig_precedence(
        #[case] state_dir: Option<&str>,
        #[case] kubeconfig: Option<&str>,
        #[case] want: &str,
    ) {
        let got = kubeconfig_from(
            state_dir.map(OsStr::new),
            kubeconfig.map(OsStr::new),
            Some(OsStr::new("/home/u")),
        );
        assert_eq!(got, PathBuf::from(want));
    }
}
