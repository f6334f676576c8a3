//! Integration tests against the running local cluster (real kube-apiserver, real
//! controller-manager, the node agent started by `cluster up`, real processes).
//!
//! Each test works in its own namespace. Without a reachable cluster they fail with a message
//! naming `e2e-tests/local-cluster/cluster up`, unless `DASK_K8S_SKIP_CLUSTER_TESTS=1`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, LogParams, PostParams};
use rstest::rstest;

fn terminated(p: &Pod) -> k8s_openapi::api::core::v1::ContainerStateTerminated {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c[0].state.as_ref())
        .and_then(|s| s.terminated.clone())
        .unwrap_or_else(|| panic!("no terminated state: {:?}", p.status))
}

async fn logs(env: &TestEnv, pod: &str) -> String {
    env.pods().logs(pod, &LogParams::default()).await.unwrap()
}

#[tokio::test]
async fn failing_container_reports_exit_code_and_logs() {
    let Some(env) = TestEnv::new("exit").await else {
        return;
    };
    let t0 = Instant::now();
    env.create_pod(&fixture("exit3.yaml", &[])).await;
    let pod = env.wait_pod("exit3", "terminal", is_terminal).await;
    eprintln!("exit3: created -> Failed in {:?}", t0.elapsed());
    assert_eq!(phase(&pod), "Failed");
    let t = terminated(&pod);
    assert_eq!((t.exit_code, t.reason.as_deref()), (3, Some("Error")));
    assert!(t.started_at.is_some() && t.finished_at.is_some());
    let status = pod.status.as_ref().unwrap();
    assert_eq!(status.host_ip.as_deref(), Some("127.0.0.1"));
    assert!(status.pod_ip.is_some(), "podIP reported");
    // Through the apiserver and the agent's kubelet API, like `kubectl logs`.
    assert_eq!(logs(&env, "exit3").await, "hi\n");
}

#[tokio::test]
async fn memory_limit_overrun_is_oom_killed() {
    let Some(env) = TestEnv::new("oom").await else {
        return;
    };
    env.create_pod(&fixture("memory-hog.yaml", &[])).await;
    let pod = env.wait_pod("memory-hog", "terminal", is_terminal).await;
    assert_eq!(phase(&pod), "Failed");
    let t = terminated(&pod);
    // Left alone the hog would sleep for minutes after growing: ending at all is the kill.
    assert_eq!(
        (t.exit_code, t.reason.as_deref()),
        (137, Some("OOMKilled")),
        "{t:?}"
    );
}

#[tokio::test]
async fn pod_of_deleted_owner_is_garbage_collected_and_its_process_ends() {
    let Some(env) = TestEnv::new("gc").await else {
        return;
    };
    let cms: Api<ConfigMap> = Api::namespaced(env.client.clone(), &env.ns);
    let owner: ConfigMap =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "owner"}})).unwrap();
    let owner = cms.create(&PostParams::default(), &owner).await.unwrap();
    let mut pod: Pod = fixture("sleeper.yaml", &[]);
    pod.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: "owner".into(),
        uid: owner.uid().unwrap(),
        ..Default::default()
    }]);
    let created = env.create_pod(&pod).await;
    let running = env.wait_pod("owned-sleeper", "Running", is_running).await;
    let pid = container_pid(&running);
    assert!(pid_alive(pid), "container process {pid} runs");
    cms.delete("owner", &DeleteParams::default()).await.unwrap();
    env.wait_gone("owned-sleeper", &created.uid().unwrap())
        .await;
    assert!(
        wait_pid_gone(pid).await,
        "process {pid} outlived its garbage-collected pod"
    );
}

#[rstest]
#[case::handles_sigterm("sigterm-handler.yaml", "graceful", true)]
#[case::ignores_sigterm_killed_after_grace("sigterm-ignorer.yaml", "stubborn", false)]
#[tokio::test]
async fn deleting_a_running_pod_stops_it(
    #[case] file: &str,
    #[case] name: &str,
    #[case] handles_term: bool,
) {
    let Some(env) = TestEnv::new("delete").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("got-term");
    let created = env
        .create_pod(&fixture(file, &[("MARKER", marker.to_str().unwrap())]))
        .await;
    let running = env.wait_pod(name, "Running", is_running).await;
    let pid = container_pid(&running);
    let t0 = Instant::now();
    env.pods()
        .delete(name, &DeleteParams::default())
        .await
        .unwrap();
    env.wait_gone(name, &created.uid().unwrap()).await;
    eprintln!("{name}: delete -> gone in {:?}", t0.elapsed());
    assert!(wait_pid_gone(pid).await, "process {pid} outlived its pod");
    if handles_term {
        assert_eq!(
            std::fs::read_to_string(&marker).unwrap().trim(),
            "TERM",
            "SIGTERM was delivered"
        );
    } else {
        // Only SIGKILL ends it, after the 2 s grace period.
        assert!(
            t0.elapsed() >= Duration::from_secs(2),
            "killed before its grace period ended"
        );
    }
}

#[tokio::test]
async fn pods_share_a_port_in_own_netns_and_reach_services_by_dns_name() {
    let Some(env) = TestEnv::new("net").await else {
        return;
    };
    for name in ["server-a", "server-b"] {
        env.create_pod(&fixture("tcp-server.yaml", &[("NAME", name)]))
            .await;
    }
    let svcs: Api<Service> = Api::namespaced(env.client.clone(), &env.ns);
    svcs.create(&PostParams::default(), &fixture("service.yaml", &[]))
        .await
        .unwrap();
    env.wait_pod("server-a", "Ready", is_ready).await;
    let b = env.wait_pod("server-b", "Ready", is_ready).await;
    let b_ip = b.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap();
    env.create_pod(&fixture("tcp-client.yaml", &[("B_IP", &b_ip)]))
        .await;
    let client = env.wait_pod("client", "terminal", is_terminal).await;
    let out = logs(&env, "client").await;
    assert_eq!(phase(&client), "Succeeded", "client output:\n{out}");
    let ns = &env.ns;
    let expected = format!(
        "sched.{ns} server-a\nsched.{ns}.svc server-a\nsched.{ns}.svc.cluster.local server-a\nsched server-a\n{b_ip} server-b\n"
    );
    assert_eq!(out, expected);
}

#[tokio::test]
async fn crashing_container_restarts_with_backoff() {
    let Some(env) = TestEnv::new("crash").await else {
        return;
    };
    env.create_pod(&fixture("crashloop.yaml", &[])).await;
    // The first restart is immediate; the next waits 10 s in CrashLoopBackOff.
    let pod = env
        .wait_pod("crashloop", "in CrashLoopBackOff", |p: Option<&Pod>| {
            p.and_then(|p| p.status.as_ref())
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|c| c[0].state.as_ref())
                .and_then(|s| s.waiting.as_ref())
                .is_some_and(|w| w.reason.as_deref() == Some("CrashLoopBackOff"))
        })
        .await;
    let cs = &pod
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0];
    assert_eq!(cs.restart_count, 1);
    let last = cs
        .last_state
        .as_ref()
        .and_then(|l| l.terminated.as_ref())
        .unwrap();
    assert_eq!(
        (last.exit_code, last.reason.as_deref()),
        (1, Some("Error")),
        "{cs:?}"
    );
    assert!(
        cs.state
            .as_ref()
            .unwrap()
            .waiting
            .as_ref()
            .unwrap()
            .message
            .as_deref()
            .unwrap()
            .starts_with("back-off 10s")
    );
    assert_eq!(phase(&pod), "Running");
}

#[tokio::test]
async fn init_container_runs_first_and_env_is_expanded() {
    let Some(env) = TestEnv::new("init").await else {
        return;
    };
    env.create_pod(&fixture("init-and-env.yaml", &[])).await;
    let pod = env.wait_pod("init-env", "terminal", is_terminal).await;
    let out = logs(&env, "init-env").await;
    assert_eq!(phase(&pod), "Succeeded", "{out}");
    assert_eq!(
        out,
        "hello-init-env init-env dask $(NOT_EXPANDED)\nprepared\nhost=init-env\n"
    );
    let init = &pod
        .status
        .as_ref()
        .unwrap()
        .init_container_statuses
        .as_ref()
        .unwrap()[0];
    assert_eq!(
        init.state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap()
            .reason
            .as_deref(),
        Some("Completed")
    );
}

/// A second agent process for a tainted node (no scheduler: the cluster's agent schedules for
/// all nodes). It deletes its Node and pods when stopped.
struct TaintedAgent {
    child: std::process::Child,
    state: tempfile::TempDir,
}

impl TaintedAgent {
    fn start(node: &str) -> Self {
        let state = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let octet = 100 + (std::process::id() % 100);
        let tag = &node[node.len() - 6..];
        let kubeconfig = {
            let k = std::env::var("KUBECONFIG").ok().filter(|k| !k.is_empty());
            k.map(|k| k.split(':').next().unwrap_or_default().to_string())
                .unwrap_or_else(|| {
                    let state = std::env::var("DASK_K8S_STATE_DIR").unwrap_or_else(|_| {
                        format!(
                            "{}/.cache/dask-on-k8s/cluster",
                            std::env::var("HOME").unwrap_or_else(|_| "/root".into())
                        )
                    });
                    format!("{state}/kubeconfig")
                })
        };
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_node-agent"))
            .args([
                "run",
                "--no-scheduler",
                "--delete-node-on-exit",
                "--shutdown-grace",
                "2",
            ])
            .args([
                "--node-name",
                node,
                "--taint",
                "k8s.dask.org/dedicated=worker:NoSchedule",
            ])
            .args([
                "--kubelet-port",
                &port.to_string(),
                "--bridge",
                &format!("dkt{tag}"),
            ])
            .args([
                "--pod-subnet",
                &format!("10.251.{octet}.0/24"),
                "--kubeconfig",
                &kubeconfig,
            ])
            .arg("--state-dir")
            .arg(state.path())
            .env_remove("NODE_AGENT_NODE_NAME")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(state.path().join("agent.log")).unwrap())
            .spawn()
            .unwrap();
        Self { child, state }
    }

    fn stop(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.state.path().join("agent.log"))
                    .unwrap_or_default();
                panic!("tainted agent did not stop; its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for TaintedAgent {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.stop();
        }
    }
}

#[tokio::test]
async fn pod_without_toleration_stays_pending_unschedulable() {
    let Some(env) = TestEnv::new("taint").await else {
        return;
    };
    let node = format!("na-test-{}", &env.ns[env.ns.len() - 6..]);
    let mut agent = TaintedAgent::start(&node);
    let nodes: Api<Node> = Api::all(env.client.clone());
    let ready = |n: Option<&Node>| {
        n.and_then(|n| n.status.as_ref())
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    };
    tokio::time::timeout(
        WAIT,
        kube::runtime::wait::await_condition(nodes.clone(), &node, ready),
    )
    .await
    .expect("tainted node never became Ready")
    .unwrap();

    env.create_pod(&fixture(
        "tainted-target.yaml",
        &[("NAME", "untolerating"), ("NODE", &node)],
    ))
    .await;
    let pod = env
        .wait_pod("untolerating", "Unschedulable", |p: Option<&Pod>| {
            p.and_then(|p| p.status.as_ref())
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| {
                    cs.iter().any(|c| {
                        c.type_ == "PodScheduled" && c.reason.as_deref() == Some("Unschedulable")
                    })
                })
        })
        .await;
    let cond = pod
        .status
        .as_ref()
        .unwrap()
        .conditions
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.type_ == "PodScheduled")
        .unwrap()
        .clone();
    assert_eq!(cond.status, "False");
    let message = cond.message.unwrap_or_default();
    assert!(
        message.contains("1 node(s) had untolerated taint {k8s.dask.org/dedicated: worker}"),
        "{message}"
    );
    assert!(message.starts_with("0/"), "{message}");
    assert_eq!(phase(&pod), "Pending");
    assert!(
        pod.spec.as_ref().unwrap().node_name.is_none(),
        "must not be bound"
    );

    // The same pod with the toleration runs there, started by the second agent.
    let mut tolerating: Pod = fixture(
        "tainted-target.yaml",
        &[("NAME", "tolerating"), ("NODE", &node)],
    );
    tolerating.spec.as_mut().unwrap().tolerations = Some(vec![serde_json::from_value(serde_json::json!(
        {"key": "k8s.dask.org/dedicated", "operator": "Equal", "value": "worker", "effect": "NoSchedule"}
    ))
    .unwrap()]);
    env.create_pod(&tolerating).await;
    let running = env.wait_pod("tolerating", "Running", is_running).await;
    assert_eq!(
        running.spec.as_ref().unwrap().node_name.as_deref(),
        Some(node.as_str())
    );
    let pid = container_pid(&running);

    let status = agent.stop();
    assert!(status.success(), "tainted agent exit: {status}");
    assert!(
        wait_pid_gone(pid).await,
        "the stopped agent left process {pid} behind"
    );
    assert!(
        nodes.get_opt(&node).await.unwrap().is_none(),
        "node deleted on exit"
    );
}
