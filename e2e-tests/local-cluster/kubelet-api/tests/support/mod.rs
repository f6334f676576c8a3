//! Test fixture: a real kube-apiserver (from `e2e-tests/local-cluster/cluster up`), our
//! kubelet endpoints on a loopback port, a Node object pointing at them and pods bound
//! to that Node whose "processes" are a log file and a loopback TCP echo server.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use kubelet_api::PodDirectory;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Loopback: where the "pods" listen and where the Node says the kubelet is.
pub const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Namespace the test pods live in.
pub const NAMESPACE: &str = "default";

/// The container every test pod has.
pub const CONTAINER: &str = "app";

/// Bounded wait for conditions (never asserted as a performance limit).
pub const WAIT: Duration = Duration::from_secs(60);

// ------------------------------------------------------------------ log capture

static CAPTURED: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

#[derive(Clone)]
struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        // Also visible with `--nocapture` when debugging.
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs (once) a tracing subscriber that records the crate's log lines, so tests
/// can check which port-forward protocol the apiserver used towards us.
pub fn capture_logs() {
    CAPTURED.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = CaptureWriter(buf.clone());
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| "kubelet_api=info".into());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .try_init();
        buf
    });
}

/// Everything logged so far.
pub fn captured_logs() -> String {
    let buf = CAPTURED
        .get()
        .map(|b| b.lock().unwrap().clone())
        .unwrap_or_default();
    String::from_utf8_lossy(&buf).into_owned()
}

// ------------------------------------------------------------------ cluster

/// The cluster the tests run against.
pub struct Cluster {
    pub client: Client,
    pub kubeconfig: PathBuf,
}

impl Cluster {
    /// Connects, or — when no cluster is reachable — fails with how to start one.
    pub async fn connect(test: &str) -> Cluster {
        capture_logs();
        let (client, kubeconfig) = cluster_harness::cluster(test).await;
        Cluster { client, kubeconfig }
    }
}

// ------------------------------------------------------------------ pods

#[derive(Default)]
struct PodEntry {
    ip: Option<IpAddr>,
    logs: HashMap<String, PathBuf>,
    previous: HashMap<String, PathBuf>,
    running: bool,
}

/// The test's [`PodDirectory`]: what the node agent would know about its pods.
#[derive(Default)]
pub struct TestPods(Mutex<HashMap<(String, String), PodEntry>>);

impl TestPods {
    pub fn set_log(&self, pod: &str, container: &str, path: &Path) {
        let mut map = self.0.lock().unwrap();
        let e = map.entry((NAMESPACE.into(), pod.into())).or_default();
        e.logs.insert(container.into(), path.to_owned());
        e.running = true;
    }

    pub fn set_previous_log(&self, pod: &str, container: &str, path: &Path) {
        let mut map = self.0.lock().unwrap();
        let e = map.entry((NAMESPACE.into(), pod.into())).or_default();
        e.previous.insert(container.into(), path.to_owned());
    }

    pub fn set_ip(&self, pod: &str, ip: IpAddr) {
        self.0
            .lock()
            .unwrap()
            .entry((NAMESPACE.into(), pod.into()))
            .or_default()
            .ip = Some(ip);
    }

    pub fn set_running(&self, pod: &str, running: bool) {
        if let Some(e) = self
            .0
            .lock()
            .unwrap()
            .get_mut(&(NAMESPACE.into(), pod.into()))
        {
            e.running = running;
        }
    }
}

impl PodDirectory for TestPods {
    fn container_log(&self, namespace: &str, pod: &str, container: &str) -> Option<PathBuf> {
        let map = self.0.lock().unwrap();
        map.get(&(namespace.into(), pod.into()))?
            .logs
            .get(container)
            .cloned()
    }

    fn pod_ip(&self, namespace: &str, pod: &str) -> Option<IpAddr> {
        self.0
            .lock()
            .unwrap()
            .get(&(namespace.into(), pod.into()))?
            .ip
    }

    fn previous_container_log(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
    ) -> Option<PathBuf> {
        let map = self.0.lock().unwrap();
        map.get(&(namespace.into(), pod.into()))?
            .previous
            .get(container)
            .cloned()
    }

    fn container_running(&self, namespace: &str, pod: &str, _container: &str) -> bool {
        let map = self.0.lock().unwrap();
        map.get(&(namespace.into(), pod.into()))
            .is_some_and(|e| e.running)
    }
}

/// Our kubelet endpoints + a Node that points at them.
pub struct Fixture {
    pub cluster: Cluster,
    pub node: String,
    pub pods: Arc<TestPods>,
    pub dir: tempfile::TempDir,
    pub kubelet_port: u16,
    shutdown: CancellationToken,
    server: JoinHandle<kubelet_api::Result<()>>,
    created: Mutex<Vec<String>>,
}

/// Short random suffix for object names.
pub fn suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

/// Test Nodes older than this are leftovers of an aborted run (a failed assertion skips
/// `finish`); `start` removes them and their pods.
const STALE: Duration = Duration::from_secs(15 * 60);

async fn remove_stale_test_nodes(client: &Client) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let now = jiff::Timestamp::now();
    let list = nodes
        .list(&kube::api::ListParams::default().labels("kubelet-api-test=true"))
        .await?;
    for node in list {
        let Some(name) = node.metadata.name.clone() else {
            continue;
        };
        let created = node.metadata.creation_timestamp.as_ref().map(|t| t.0);
        if created.is_none_or(|c| now.duration_since(c).unsigned_abs() < STALE) {
            continue;
        }
        let on_node = pods
            .list(&kube::api::ListParams::default().fields(&format!("spec.nodeName={name}")))
            .await?;
        for pod in on_node {
            if let (Some(ns), Some(pod_name)) = (pod.metadata.namespace, pod.metadata.name) {
                let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
                let _ = api
                    .delete(&pod_name, &DeleteParams::default().grace_period(0))
                    .await;
            }
        }
        let _ = nodes.delete(&name, &DeleteParams::default()).await;
    }
    Ok(())
}

impl Fixture {
    pub async fn start(cluster: Cluster) -> anyhow::Result<Fixture> {
        remove_stale_test_nodes(&cluster.client)
            .await
            .context("removing stale test nodes")?;
        let listener = TcpListener::bind((LOOPBACK, 0)).await?;
        let kubelet_port = listener.local_addr()?.port();
        let pods = Arc::new(TestPods::default());
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(kubelet_api::serve(listener, pods.clone(), shutdown.clone()));
        let node = format!("kubelet-api-test-{}", suffix());
        let nodes: Api<Node> = Api::all(cluster.client.clone());
        let obj: Node = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": node, "labels": {"kubelet-api-test": "true"}},
            "spec": {"taints": [{"key": "kubelet-api-test", "effect": "NoSchedule"}]},
            "status": {
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                "message": "kubelet-api test server"}]
            }
        }))?;
        nodes
            .create(&PostParams::default(), &obj)
            .await
            .context("creating the test Node")?;
        Ok(Fixture {
            cluster,
            node,
            pods,
            dir: tempfile::tempdir()?,
            kubelet_port,
            shutdown,
            server,
            created: Mutex::new(Vec::new()),
        })
    }

    pub fn pod_api(&self) -> Api<Pod> {
        Api::namespaced(self.cluster.client.clone(), NAMESPACE)
    }

    /// Creates a Running pod bound to our Node, with one container whose log holds
    /// `log` (if given) and whose ports are on loopback.
    pub async fn pod(&self, prefix: &str, log: Option<&str>) -> anyhow::Result<(String, PathBuf)> {
        let name = format!("{prefix}-{}", suffix());
        let api = self.pod_api();
        let obj: Pod = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "nodeName": self.node,
                "tolerations": [{"key": "kubelet-api-test", "operator": "Exists"}],
                "containers": [{"name": CONTAINER, "image": "kubelet-api-test/none"}]
            }
        }))?;
        api.create(&PostParams::default(), &obj)
            .await
            .context("creating the test pod")?;
        self.created.lock().unwrap().push(name.clone());
        let now = jiff::Timestamp::now().to_string();
        let status = json!({"status": {
            "phase": "Running",
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": CONTAINER, "ready": true, "restartCount": 0,
                "image": "kubelet-api-test/none", "imageID": "",
                "state": {"running": {"startedAt": now}}}]
        }});
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .context("marking the test pod Running")?;
        let path = self.dir.path().join(format!("{name}.log"));
        if let Some(content) = log {
            std::fs::write(&path, content)?;
            self.pods.set_log(&name, CONTAINER, &path);
        }
        self.pods.set_ip(&name, LOOPBACK);
        Ok((name, path))
    }

    /// Deletes what the test created, stops the server and checks it returned cleanly.
    pub async fn finish(self) -> anyhow::Result<()> {
        let api = self.pod_api();
        let names = std::mem::take(&mut *self.created.lock().unwrap());
        for name in names {
            let _ = api
                .delete(&name, &DeleteParams::default().grace_period(0))
                .await;
        }
        let nodes: Api<Node> = Api::all(self.cluster.client.clone());
        let _ = nodes.delete(&self.node, &DeleteParams::default()).await;
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.server)
            .await
            .context("kubelet api did not stop after shutdown")?
            .context("server task")?
            .context("serve")?;
        Ok(())
    }
}

/// Appends to a log file as a container would.
pub fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

// ------------------------------------------------------------------ echo "pod"

/// A TCP echo server on loopback that honours half-close: it echoes until EOF, then
/// closes its side.
pub async fn echo_server() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((LOOPBACK, 0)).await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = sock.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    Ok(port)
}

/// A "pod" that greets and hangs up at once: the pod-side close must reach the client
/// as EOF after the greeting.
pub const BANNER: &[u8] = b"banner from the pod\n";

pub async fn banner_server() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((LOOPBACK, 0)).await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = sock.write_all(BANNER).await;
            });
        }
    });
    Ok(port)
}

/// Reads a stream to its end (bounded wait).
pub async fn read_all<S: AsyncRead + Unpin>(mut s: S) -> anyhow::Result<Vec<u8>> {
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .context("stream did not end")??;
    Ok(buf)
}

/// A loopback port nothing listens on.
pub async fn closed_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind((LOOPBACK, 0)).await?;
    Ok(l.local_addr()?.port())
}

/// Deterministic pseudo-random bytes (xorshift), so corruption cannot hide in patterns.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Writes `data` while reading the echo (both at once, or the pipes fill up); with
/// `half_close`, shuts the write side and also expects EOF after the echo.
pub async fn echo_round_trip<S>(stream: S, data: &[u8], half_close: bool) -> anyhow::Result<Vec<u8>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut r, mut w) = tokio::io::split(stream);
    let writer = async {
        for chunk in data.chunks(64 * 1024) {
            w.write_all(chunk).await?;
        }
        if half_close {
            w.shutdown().await?;
        }
        Ok::<_, std::io::Error>(())
    };
    let reader = async {
        let mut got = vec![0u8; data.len()];
        r.read_exact(&mut got).await?;
        if half_close {
            let mut rest = Vec::new();
            r.read_to_end(&mut rest).await?;
            got.extend_from_slice(&rest);
        }
        Ok::<_, std::io::Error>(got)
    };
    let ((), got) = tokio::time::timeout(WAIT, async { tokio::try_join!(writer, reader) })
        .await
        .context("echo round trip did not finish")??;
    Ok(got)
}

/// Median of a few measurements.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The kubectl binary (`$KUBECTL` or /usr/bin/kubectl).
pub fn kubectl() -> String {
    std::env::var("KUBECTL").unwrap_or_else(|_| "/usr/bin/kubectl".into())
}
