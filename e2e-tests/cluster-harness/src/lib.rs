//! How every integration test finds the local cluster (`e2e-tests/local-cluster/cluster up`).
//!
//! One rule for all suites, so that with several clusters on one machine (each with its
//! own `DASK_K8S_STATE_DIR`) every suite talks to the same one, never to anything but
//! loopback, and without a cluster fails the same way, saying how to start one.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
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

/// Bound on a new namespace getting its `default` service account.
const NAMESPACE_READY_WITHIN: Duration = Duration::from_secs(60);

/// A namespace for one test, with a random suffix, deleted at the end: by
/// [`TestNamespace::delete`], or by `Drop` when the test failed before (with `kubectl`, since
/// `Drop` cannot await), so a failed test leaves nothing behind.
pub struct TestNamespace {
    /// The namespace's name (`<prefix>-<6 random hex digits>`).
    pub name: String,
    client: Client,
}

impl TestNamespace {
    /// Creates `<prefix>-<random>` and waits for its `default` service account, which pods
    /// need (the service account controller adds it).
    ///
    /// # Panics
    /// When the namespace cannot be created or gets no service account in time: the test
    /// cannot run.
    pub async fn create(client: &Client, prefix: &str) -> Self {
        let suffix: String = uuid::Uuid::new_v4()
            .simple()
            .to_string()
            .chars()
            .take(6)
            .collect();
        let name = format!("{prefix}-{suffix}");
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let mut namespace = Namespace::default();
        namespace.metadata.name = Some(name.clone());
        if let Err(e) = namespaces.create(&PostParams::default(), &namespace).await {
            panic!("creating namespace {name}: {e}");
        }
        let made = TestNamespace {
            name,
            client: client.clone(),
        };
        let accounts: Api<ServiceAccount> = made.api();
        let started = std::time::Instant::now();
        while !matches!(accounts.get_opt("default").await, Ok(Some(_))) {
            assert!(
                started.elapsed() < NAMESPACE_READY_WITHIN,
                "namespace {} got no default service account within {NAMESPACE_READY_WITHIN:?}",
                made.name
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        made
    }

    /// The client the namespace was made with.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The API of `K` objects in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// The pods of this namespace.
    pub fn pods(&self) -> Api<Pod> {
        self.api()
    }

    /// The Services of this namespace.
    pub fn services(&self) -> Api<Service> {
        self.api()
    }

    /// The names of the pods matching a label selector.
    ///
    /// # Panics
    /// When the list fails.
    pub async fn pod_names(&self, selector: &str) -> Vec<String> {
        match self
            .pods()
            .list(&ListParams::default().labels(selector))
            .await
        {
            Ok(list) => list
                .items
                .into_iter()
                .filter_map(|p| p.metadata.name)
                .collect(),
            Err(e) => panic!("listing pods {selector} in {}: {e}", self.name),
        }
    }

    /// Prints to stderr (which the test runner shows for a failed test) the namespace's
    /// pods, its events and the last lines of every container's log, the previous
    /// container's too when one restarted: deleting the namespace deletes them, and a
    /// failure seen once in CI cannot be explained afterwards without them. Each call has
    /// a deadline, so a test that failed because the API server is away still ends.
    fn print_evidence(&self) {
        let kubectl = |args: &[&str]| {
            Command::new("kubectl")
                .env("KUBECONFIG", kubeconfig_path())
                .args(["--request-timeout=10s", "--namespace", &self.name])
                .args(args)
                .stdin(Stdio::null())
                .output()
                .map(|out| {
                    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                    text.push_str(&String::from_utf8_lossy(&out.stderr));
                    if !text.ends_with('\n') {
                        text.push('\n');
                    }
                    text
                })
                .unwrap_or_else(|e| format!("kubectl: {e}\n"))
        };
        eprintln!(
            "==== namespace {} after the failure: pods, events, logs",
            self.name
        );
        eprint!("{}", kubectl(&["get", "pods", "-o", "wide"]));
        eprint!(
            "{}",
            kubectl(&["get", "events", "--sort-by=.lastTimestamp"])
        );
        for pod in kubectl(&["get", "pods", "-o", "name"]).lines() {
            let Some(pod) = pod.strip_prefix("pod/") else {
                continue;
            };
            for previous in [false, true] {
                let mut args = vec![
                    "logs",
                    pod,
                    "--all-containers",
                    "--prefix",
                    "--timestamps",
                    "--tail=100",
                ];
                if previous {
                    args.push("--previous");
                }
                let log = kubectl(&args);
                if !(previous && log.contains("not found")) {
                    let which = if previous {
                        " (previous containers)"
                    } else {
                        ""
                    };
                    eprintln!("---- {pod}{which}");
                    eprint!("{log}");
                }
            }
        }
        eprintln!("==== end of namespace {}", self.name);
    }

    /// Deletes the namespace (and with it anything a test left).
    pub async fn delete(self) {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let _ = namespaces
            .delete(&self.name, &DeleteParams::default())
            .await;
        // Drop runs too; it finds the namespace already going.
    }
}

impl Drop for TestNamespace {
    /// A failed test still removes its namespace (and with it any cluster it left), once
    /// what it held is printed.
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_evidence();
        }
        let _ = Command::new("kubectl")
            .env("KUBECONFIG", kubeconfig_path())
            .args([
                "delete",
                "namespace",
                &self.name,
                "--wait=false",
                "--ignore-not-found",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// `text` without its ANSI escape sequences (colours, cursor moves), so tests compare what
/// a terminal would show.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
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

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::colour("\u{1b}[1;32mok\u{1b}[0m done", "ok done")]
    #[case::cursor("a\u{1b}[2Kb", "ab")]
    #[case::plain("plain", "plain")]
    fn ansi_sequences_are_removed(#[case] text: &str, #[case] want: &str) {
        assert_eq!(strip_ansi(text), want);
    }

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
