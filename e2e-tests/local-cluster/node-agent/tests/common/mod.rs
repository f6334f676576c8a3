//! Shared helpers of the integration tests: finding the cluster, a namespace per test,
//! fixtures, bounded waits.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::wait::{Condition, await_condition};
use kube::{Client, ResourceExt};

/// Upper bound of every wait (a wait for a condition, never a timing assertion).
pub const WAIT: Duration = Duration::from_secs(90);

/// Whether a node agent serves the cluster: a Ready node other than the tests' own.
async fn has_ready_node(client: &Client) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let ready = nodes
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .any(|n| {
            !n.name_any().starts_with("na-test-")
                && n.status
                    .and_then(|s| s.conditions)
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        });
    anyhow::ensure!(
        ready,
        "no Ready node: is the node agent running (up.d/30-node-agent.sh)?"
    );
    Ok(())
}

/// One test's cluster access and namespace (deleted on drop).
pub struct TestEnv {
    pub client: Client,
    pub ns: String,
}

impl TestEnv {
    /// Connects (an unreachable cluster fails the test) and creates a fresh namespace.
    pub async fn new(test: &str) -> Self {
        let (client, _) = cluster_harness::cluster(test).await;
        if let Err(e) = has_ready_node(&client).await {
            panic!("{test} needs the node agent on the local cluster: {e:#}");
        }
        let ns = format!(
            "na-{test}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        );
        let api: Api<Namespace> = Api::all(client.clone());
        let obj: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).unwrap();
        api.create(&PostParams::default(), &obj).await.unwrap();
        Self { client, ns }
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub async fn create_pod(&self, pod: &Pod) -> Pod {
        self.pods()
            .create(&PostParams::default(), pod)
            .await
            .unwrap()
    }

    /// Waits (bounded) until `cond` holds for pod `name`.
    pub async fn wait_pod(&self, name: &str, what: &str, cond: impl Condition<Pod>) -> Pod {
        match tokio::time::timeout(WAIT, await_condition(self.pods(), name, cond)).await {
            Ok(Ok(Some(p))) => p,
            Ok(Ok(None)) => panic!(
                "pod {}/{name} disappeared while waiting for {what}",
                self.ns
            ),
            Ok(Err(e)) => panic!("watching pod {}/{name}: {e}", self.ns),
            Err(_) => {
                let now = self.pods().get_opt(name).await.ok().flatten();
                panic!(
                    "pod {}/{name} not {what} after {WAIT:?}; status: {}",
                    self.ns,
                    serde_json::to_string_pretty(&now.and_then(|p| p.status)).unwrap_or_default()
                )
            }
        }
    }

    /// Waits (bounded) until pod `name` with `uid` is gone from the API.
    pub async fn wait_gone(&self, name: &str, uid: &str) {
        let cond = kube::runtime::conditions::is_deleted::<Pod>(uid);
        if tokio::time::timeout(WAIT, await_condition(self.pods(), name, cond))
            .await
            .is_err()
        {
            panic!("pod {}/{name} still exists after {WAIT:?}", self.ns);
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let ns = self.ns.clone();
        // Drop cannot await; a helper thread with its own runtime and its own client issues
        // the delete (a client of the test's runtime would deadlock: its worker task runs on
        // the thread this join blocks).
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(client) =
                    node_agent::agent::client_from(&cluster_harness::kubeconfig_path()).await
                {
                    let api: Api<Namespace> = Api::all(client);
                    let _ = tokio::time::timeout(
                        Duration::from_secs(20),
                        api.delete(&ns, &DeleteParams::default()),
                    )
                    .await;
                }
            });
        })
        .join();
    }
}

/// A fixture from `tests/fixtures`, with `${KEY}` placeholders replaced.
pub fn fixture<T: serde::de::DeserializeOwned>(name: &str, vars: &[(&str, &str)]) -> T {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let mut text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for (k, v) in vars {
        text = text.replace(&format!("${{{k}}}"), v);
    }
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

pub fn is_terminal(p: Option<&Pod>) -> bool {
    p.is_some_and(|p| matches!(phase(p), "Succeeded" | "Failed"))
}

pub fn is_running(p: Option<&Pod>) -> bool {
    p.is_some_and(|p| phase(p) == "Running")
}

pub fn is_ready(p: Option<&Pod>) -> bool {
    p.and_then(|p| p.status.as_ref())
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The pid behind `containerID: process://<pid>` of the first container.
pub fn container_pid(p: &Pod) -> i32 {
    let id = p
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c[0].container_id.clone());
    id.as_deref()
        .and_then(|i| i.strip_prefix("process://"))
        .and_then(|i| i.parse().ok())
        .unwrap_or_else(|| panic!("no process:// containerID in {id:?}"))
}

/// True while `pid` is a live (non-zombie) process.
pub fn pid_alive(pid: i32) -> bool {
    node_agent::procfs::alive(pid)
}

/// Waits (bounded) for `pid` to be gone.
pub async fn wait_pid_gone(pid: i32) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if !pid_alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
