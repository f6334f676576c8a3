//! Shared helpers of the integration tests: finding the local cluster (or failing with
//! what to run), one namespace per test, the `dask-kube` binary and the venv's Python.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a failed step fails the test

mod lossy_proxy;

#[allow(unused_imports)]
pub use lossy_proxy::LossyProxy;

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Bound on any wait for a cluster condition.
pub const WAIT: Duration = Duration::from_secs(180);
/// Time between checks of a condition.
pub const POLL: Duration = Duration::from_millis(500);

/// Cluster tests share one small machine: run them one at a time.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The local cluster's kubeconfig (one rule for every suite: `cluster_harness`).
pub fn kubeconfig() -> PathBuf {
    cluster_harness::kubeconfig_path()
}

/// The local cluster's client; an unreachable cluster fails the test.
pub async fn cluster() -> Client {
    let (client, path) = cluster_harness::cluster("dask-kube's cluster tests").await;
    let needs = format!(
        "this test needs the local cluster with its nodes: run \
         `e2e-tests/local-cluster/cluster up` (kubeconfig {})",
        path.display()
    );
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let ready = nodes
        .list(&ListParams::default())
        .await
        .map(|l| !l.items.is_empty())
        .unwrap_or(false);
    assert!(
        ready,
        "{needs}: the cluster has no node (no kubelet registered)"
    );
    client
}

// Each test binary uses some of these.
#[allow(unused_imports)]
pub use cluster_harness::{TestNamespace, strip_ansi};

/// Running worker pods of `cluster` (not being deleted).
pub async fn running_workers(ns: &TestNamespace, cluster: &str) -> usize {
    ns.pods()
        .list(&ListParams::default().labels(&format!(
            "dask.org/cluster-name={cluster},dask.org/component=worker"
        )))
        .await
        .unwrap()
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .count()
}

/// Polls `cond` until it holds, at most [`WAIT`]; returns how long it took.
pub async fn wait_for<F, Fut>(what: &str, cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_for_every(what, POLL, cond).await
}

/// [`wait_for`], looking every `interval` (a fault that must land in the middle of something
/// fast cannot wait [`POLL`] to see it start).
pub async fn wait_for_every<F, Fut>(what: &str, interval: Duration, mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if cond().await {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < WAIT,
            "timed out after {WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(interval).await;
    }
}

/// A pod on one line, for a test's failure message: phase, readiness, node, and each
/// container's state (an exit with its code, reason and message) and restarts.
pub fn pod_summary(pod: &Pod) -> String {
    let status = pod.status.clone().unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let containers: Vec<String> = status
        .container_statuses
        .unwrap_or_default()
        .into_iter()
        .map(|c| {
            let state = c.state.unwrap_or_default();
            let now = match (state.running, state.terminated, state.waiting) {
                (_, Some(t), _) => format!(
                    "terminated {} exit {} ({})",
                    t.reason.unwrap_or_default(),
                    t.exit_code,
                    t.message.unwrap_or_default()
                ),
                (Some(_), _, _) => "running".to_owned(),
                (_, _, Some(w)) => format!("waiting {}", w.reason.unwrap_or_default()),
                _ => "unknown".to_owned(),
            };
            format!("{}: {now}, restarts {}", c.name, c.restart_count)
        })
        .collect();
    format!(
        "{} ready {ready} on {} [{}]",
        status.phase.unwrap_or_default(),
        pod.spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default(),
        containers.join("; ")
    )
}

/// Whether any container of `pod` has exited (its logs then say why).
pub fn has_exited(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.state.as_ref().is_some_and(|s| s.terminated.is_some()))
}

/// A kubeconfig for a service account of `ns` (token from the TokenRequest API).
pub async fn service_account_kubeconfig(
    kube: &kube::Client,
    ns: &str,
    sa: &str,
    dir: &std::path::Path,
) -> std::path::PathBuf {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    use k8s_openapi::api::core::v1::ServiceAccount;
    let sas: kube::Api<ServiceAccount> = kube::Api::namespaced(kube.clone(), ns);
    if sas.get_opt(sa).await.unwrap().is_none() {
        let obj: ServiceAccount =
            serde_json::from_value(serde_json::json!({"metadata": {"name": sa}})).unwrap();
        sas.create(&Default::default(), &obj).await.unwrap();
    }
    let request: TokenRequest = serde_json::from_value(
        serde_json::json!({"spec": {"audiences": [], "expirationSeconds": 3600}}),
    )
    .unwrap();
    let answer: TokenRequest = sas
        .create_subresource("token", sa, &Default::default(), &request)
        .await
        .unwrap();
    let token = answer.status.unwrap().token.unwrap();
    let admin = kube::config::Kubeconfig::read_from(kubeconfig()).unwrap();
    let cluster = admin.clusters[0].cluster.clone().unwrap();
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority-data: {}\nusers:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u, namespace: {ns}}}\ncurrent-context: c\n",
        cluster.server.unwrap(),
        cluster.certificate_authority_data.unwrap()
    );
    let path = dir.join(format!("{sa}.kubeconfig"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Applies deploy/rbac.yaml (the Role and RoleBinding dask-kube needs) in `ns`.
pub fn apply_rbac(ns: &str) {
    let rbac = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/rbac.yaml");
    let applied = Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig())
        .args(["apply", "-n", ns, "-f", rbac.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
}

/// dask-kube's own connection (HTTP/2, its flow control sees every 429) for the kubeconfig
/// at `path`.
pub async fn connection_of(path: &Path) -> dask_kube::KubeConnection {
    dask_kube::KubeConnection::open(&dask_kube::Credentials::Kubeconfig {
        path: Some(path.to_owned()),
        context: None,
    })
    .await
    .unwrap()
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The pids of a pod's processes on this machine: the processes in the pod's cgroup (the
/// kubelet's cgroupfs driver names it `pod<uid>`), its sandbox's pause process included.
pub fn pod_processes(pod: &k8s_openapi::api::core::v1::Pod) -> std::collections::BTreeSet<i32> {
    let Some(uid) = pod.metadata.uid.as_deref() else {
        return std::collections::BTreeSet::new();
    };
    let marker = format!("/pod{uid}/");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .is_ok_and(|cg| cg.lines().any(|l| l.contains(&marker)))
        })
        .collect()
}

/// The `dask-kube` binary with a private state dir.
pub fn dask_kube(state: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dask-kube"));
    cmd.env("KUBECONFIG", kubeconfig())
        .env("XDG_STATE_HOME", state)
        .env("DASK_CONFIG", state.join("no-dask-config"))
        .env("DASK_ROOT_CONFIG", state.join("no-dask-config"))
        .env_remove("DASK_KUBERNETES__NAMESPACE")
        .stdin(Stdio::null());
    cmd
}

/// The JSON a successful `dask-kube -o json ...` printed. An `up`'s `client_env` (the
/// cluster's TLS settings for a client, and its dashboard link) is kept for its scheduler
/// address, so [`python_for`] can start a client of it.
pub fn json_of(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "dask-kube failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    if let (Some(address), Some(env)) = (
        value["scheduler_address"].as_str(),
        value["client_env"].as_object(),
    ) {
        let env = env
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect();
        CLIENT_ENV.lock().unwrap().insert(address.to_owned(), env);
    }
    value
}

/// What a client of each scheduler address `up` printed needs in its environment.
static CLIENT_ENV: std::sync::Mutex<std::collections::BTreeMap<String, Vec<(String, String)>>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// Writes the client's copy of a library-made cluster's certificates into `dir` and keeps
/// its client environment for the cluster's address (as [`json_of`] does for `up`).
pub fn trust(cluster: &dask_kube::KubeCluster, dir: &Path) {
    if let Some(tls) = &cluster.security().client {
        let files = tls.write_client_files(dir).unwrap();
        CLIENT_ENV
            .lock()
            .unwrap()
            .insert(cluster.scheduler_address().to_owned(), files.client_env());
    }
}

/// The environment of a client inside the cluster whose pod mounts the cluster's TLS Secret
/// at `dir` (as the scheduler and worker pods do): Dask's client settings, as JSON `env`.
pub fn tls_client_env(dir: &str) -> serde_json::Value {
    serde_json::json!([
        {"name": "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION", "value": "True"},
        {"name": "DASK_DISTRIBUTED__COMM__TLS__CA_FILE", "value": format!("{dir}/ca.crt")},
        {"name": "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT", "value": format!("{dir}/tls.crt")},
        {"name": "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY", "value": format!("{dir}/tls.key")},
    ])
}

/// The client environment `up` printed for `address` (its TLS certificate files); empty
/// for an address no `up` of this test process printed.
pub fn client_env(address: &str) -> Vec<(String, String)> {
    CLIENT_ENV
        .lock()
        .unwrap()
        .get(address)
        .cloned()
        .unwrap_or_default()
}

/// The venv's Python with the client environment of `address` (see [`client_env`]): a
/// plain `distributed.Client(address)` in it presents the cluster's certificate.
pub fn python_for(address: &str) -> Command {
    let mut command = Command::new(python());
    command.envs(client_env(address));
    command
}

/// Runs `dask-kube args...` to completion.
pub fn run(state: &Path, args: &[&str]) -> Output {
    let output = dask_kube(state).args(args).output().unwrap();
    eprintln!(
        "$ dask-kube {}\n-> {}\n{}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

pub fn python() -> PathBuf {
    std::env::var_os("DASK_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/dask-on-k8s/venv")
        })
        .join("bin/python")
}

/// A real `distributed.Client` call through the address dask-kube printed (`args[1]`),
/// with the certificate `up` wrote for it.
pub fn client(args: &[&str]) -> serde_json::Value {
    let output = python_for(args.get(1).copied().unwrap_or_default())
        .arg(fixture("dask_client.py"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "dask client {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}
