//! Integration tests against the running local cluster (real kube-apiserver, real
//! controller-manager, the node agent started by `cluster up`, real processes).
//!
//! Each test works in its own namespace. Without a reachable cluster they fail with a message
//! naming `e2e-tests/local-cluster/cluster up`. `#[ignore]`d outside the integration tier.

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
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn failing_container_reports_exit_code_and_logs() {
    let env = TestEnv::new("exit").await;
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
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn memory_limit_overrun_is_oom_killed() {
    let env = TestEnv::new("oom").await;
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
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn pod_of_deleted_owner_is_garbage_collected_and_its_process_ends() {
    let env = TestEnv::new("gc").await;
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
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn deleting_a_running_pod_stops_it(
    #[case] file: &str,
    #[case] name: &str,
    #[case] handles_term: bool,
) {
    let env = TestEnv::new("delete").await;
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
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn pods_share_a_port_in_own_netns_and_reach_services_by_dns_name() {
    let env = TestEnv::new("net").await;
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
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn crashing_container_restarts_with_backoff() {
    let env = TestEnv::new("crash").await;
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
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn init_container_runs_first_and_env_is_expanded() {
    let env = TestEnv::new("init").await;
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
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn pod_without_toleration_stays_pending_unschedulable() {
    let env = TestEnv::new("taint").await;
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

// ---------------------------------------------------------------- what a real node gives pods

/// Creates a namespaced object from JSON (ServiceAccount, Role, RoleBinding, Service).
async fn create<K>(env: &TestEnv, obj: serde_json::Value) -> K
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(env.client.clone(), &env.ns);
    let obj: K = serde_json::from_value(obj).unwrap();
    api.create(&PostParams::default(), &obj).await.unwrap()
}

/// Polls a pod's log (bounded) until `done` accepts it.
async fn wait_logs(env: &TestEnv, pod: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = env
            .pods()
            .logs(pod, &LogParams::default())
            .await
            .unwrap_or_default();
        if done(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{pod}: no {what} in its log after {WAIT:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn cluster_ip(env: &TestEnv, name: &str) -> String {
    let svcs: Api<Service> = Api::namespaced(env.client.clone(), &env.ns);
    svcs.get(name)
        .await
        .unwrap()
        .spec
        .and_then(|s| s.cluster_ip)
        .unwrap()
}

#[tokio::test]
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn pod_uses_its_projected_token_and_gets_403_beyond_its_role() {
    let env = TestEnv::new("token").await;
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    let ns = env.ns.clone();
    create::<ServiceAccount>(&env, serde_json::json!({"metadata": {"name": "reader"}})).await;
    create::<Role>(
        &env,
        serde_json::json!({"metadata": {"name": "pod-reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]}),
    )
    .await;
    create::<RoleBinding>(
        &env,
        serde_json::json!({"metadata": {"name": "reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns}]}),
    )
    .await;
    let created = env
        .create_pod(&fixture("api-client.yaml", &[("SA", "reader")]))
        .await;
    // The ServiceAccount admission plugin added the volume the agent projects.
    let volume = created
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .and_then(|v| v.iter().find(|v| v.name.starts_with("kube-api-access-")))
        .expect("admission adds kube-api-access");
    assert!(volume.projected.is_some());
    let pod = env.wait_pod("api-client", "terminal", is_terminal).await;
    let out = logs(&env, "api-client").await;
    assert_eq!(phase(&pod), "Succeeded", "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let kubernetes = {
        let svcs: Api<Service> = Api::namespaced(env.client.clone(), "default");
        svcs.get("kubernetes").await.unwrap()
    };
    let kip = kubernetes.spec.unwrap().cluster_ip.unwrap();
    assert_eq!(v["env"]["KUBERNETES_SERVICE_HOST"], kip.as_str(), "{v}");
    assert_eq!(v["env"]["KUBERNETES_SERVICE_PORT"], "443", "{v}");
    assert_eq!(
        v["env"]["KUBERNETES_PORT_443_TCP"],
        format!("tcp://{kip}:443").as_str(),
        "{v}"
    );
    // The kubelet's layout: one timestamped data dir, `..data` pointing at it, links.
    let files: Vec<&str> = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert_eq!(files.len(), 5, "{files:?}");
    assert!(files[0].starts_with("..20"), "{files:?}");
    assert_eq!(files[1..], ["..data", "ca.crt", "namespace", "token"]);
    assert_eq!(v["token_link"], "..data/token");
    assert_eq!(v["namespace"], ns.as_str());
    assert_eq!(v["pods"][0], 200, "{v}");
    assert_eq!(v["pods"][1], serde_json::json!(["api-client"]), "{v}");
    assert_eq!(v["secrets"][0], 403, "{v}");
    let msg = v["secrets"][1].as_str().unwrap();
    assert!(
        msg.contains(&format!("system:serviceaccount:{ns}:reader"))
            && msg.contains("cannot list resource \"secrets\""),
        "{msg}"
    );
    assert_eq!(v["self"], serde_json::json!([200, "reader"]), "{v}");
}

#[rstest]
#[case::default_service_account_gets_a_token("default", None, "token")]
#[case::pod_opts_out("default", Some(false), "no-token")]
#[case::service_account_opts_out("quiet", None, "no-token")]
#[tokio::test]
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn automount_service_account_token(
    #[case] sa: &str,
    #[case] pod_automount: Option<bool>,
    #[case] expected: &str,
) {
    let env = TestEnv::new("automount").await;
    use k8s_openapi::api::core::v1::ServiceAccount;
    create::<ServiceAccount>(
        &env,
        serde_json::json!({"metadata": {"name": "quiet"}, "automountServiceAccountToken": false}),
    )
    .await;
    let mut pod: Pod = fixture("token-check.yaml", &[("SA", sa)]);
    pod.spec.as_mut().unwrap().automount_service_account_token = pod_automount;
    env.create_pod(&pod).await;
    let done = env.wait_pod("token-check", "terminal", is_terminal).await;
    let out = logs(&env, "token-check").await;
    assert_eq!(phase(&done), "Succeeded", "{out}");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some(expected), "{out}");
    // The Service environment does not depend on the token.
    assert!(
        lines
            .next()
            .is_some_and(|l| l.starts_with("host=") && l != "host=unset"),
        "{out}"
    );
}

#[tokio::test]
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn cluster_ip_services_forward_to_numeric_and_named_target_ports() {
    let env = TestEnv::new("svc").await;
    for name in ["greeter-a", "greeter-b"] {
        env.create_pod(&fixture(
            "greeter.yaml",
            &[("NAME", name), ("APP", "greeter")],
        ))
        .await;
    }
    let svcs: Api<Service> = Api::namespaced(env.client.clone(), &env.ns);
    for (name, port, target) in [("numeric", "80", "9376"), ("named", "81", "greet")] {
        svcs.create(
            &PostParams::default(),
            &fixture(
                "greeter-service.yaml",
                &[
                    ("NAME", name),
                    ("APP", "greeter"),
                    ("PORT", port),
                    ("TARGET", target),
                ],
            ),
        )
        .await
        .unwrap();
    }
    env.wait_pod("greeter-a", "Ready", is_ready).await;
    env.wait_pod("greeter-b", "Ready", is_ready).await;
    let ns = env.ns.clone();
    let numeric_ip = cluster_ip(&env, "numeric").await;
    let named_ip = cluster_ip(&env, "named").await;
    let targets = [
        "numeric:80".to_string(),
        format!("numeric.{ns}:80"),
        format!("named.{ns}.svc:81"),
        format!("named.{ns}.svc.cluster.local:81"),
        format!("{numeric_ip}:80"),
    ];
    env.create_pod(&fixture(
        "svc-client.yaml",
        &[("TARGETS", &targets.join(","))],
    ))
    .await;
    let client = env.wait_pod("svc-client", "terminal", is_terminal).await;
    let out = logs(&env, "svc-client").await;
    assert_eq!(phase(&client), "Succeeded", "{out}");
    let lines: Vec<Vec<&str>> = out.lines().map(|l| l.split(' ').collect()).collect();
    assert_eq!(lines.len(), targets.len(), "{out}");
    for (line, target) in lines.iter().zip(&targets) {
        assert_eq!(line[0], target, "{out}");
        let expected_ip = if target.starts_with("named") {
            &named_ip
        } else {
            &numeric_ip
        };
        assert_eq!(
            line[1], expected_ip,
            "names resolve to the ClusterIP: {out}"
        );
        assert!(
            matches!(line[2], "greeter-a" | "greeter-b"),
            "answered by a greeter on 9376: {out}"
        );
    }
}

/// Timestamped answers of the prober: (unix seconds, answer).
fn probes(log: &str) -> Vec<(f64, String)> {
    log.lines()
        .filter_map(|l| {
            let (t, what) = l.split_once(' ')?;
            Some((t.parse().ok()?, what.to_string()))
        })
        .collect()
}

#[tokio::test]
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn service_endpoints_follow_pods_going_away_and_coming() {
    let env = TestEnv::new("follow").await;
    let first = env
        .create_pod(&fixture(
            "greeter.yaml",
            &[("NAME", "first"), ("APP", "follow")],
        ))
        .await;
    let svcs: Api<Service> = Api::namespaced(env.client.clone(), &env.ns);
    svcs.create(
        &PostParams::default(),
        &fixture(
            "greeter-service.yaml",
            &[
                ("NAME", "follow"),
                ("APP", "follow"),
                ("PORT", "80"),
                ("TARGET", "greet"),
            ],
        ),
    )
    .await
    .unwrap();
    env.wait_pod("first", "Ready", is_ready).await;
    env.create_pod(&fixture("svc-prober.yaml", &[("TARGET", "follow:80")]))
        .await;
    wait_logs(&env, "svc-prober", "answer from the first pod", |l| {
        probes(l).iter().any(|(_, w)| w == "first")
    })
    .await;

    // The only endpoint goes: no DNAT rule is left, so connections are refused (as kube-proxy's
    // REJECT rule for a Service without endpoints does).
    let t_delete = unix_now();
    env.pods()
        .delete("first", &DeleteParams::default())
        .await
        .unwrap();
    env.wait_gone("first", &first.uid().unwrap()).await;
    let log = wait_logs(&env, "svc-prober", "refused connection", |l| {
        probes(l).iter().any(|(_, w)| w == "refused")
    })
    .await;
    let refused_at = probes(&log)
        .into_iter()
        .find(|(_, w)| w == "refused")
        .unwrap()
        .0;

    // A new pod behind the same Service gets the traffic once it is Ready.
    env.create_pod(&fixture(
        "greeter.yaml",
        &[("NAME", "second"), ("APP", "follow")],
    ))
    .await;
    env.wait_pod("second", "Ready", is_ready).await;
    let t_ready = unix_now();
    let log = wait_logs(&env, "svc-prober", "answer from the second pod", |l| {
        probes(l).iter().any(|(_, w)| w == "second")
    })
    .await;
    let answers = probes(&log);
    let second_at = answers.iter().find(|(_, w)| w == "second").unwrap().0;
    eprintln!(
        "endpoints: delete -> refused {:.0} ms; second Ready (as the test saw it) -> first answer {:.0} ms",
        (refused_at - t_delete) * 1000.0,
        (second_at - t_ready) * 1000.0
    );
    // Never the deleted pod after the refusal; only the new one after its first answer.
    let after_refused: Vec<&str> = answers
        .iter()
        .filter(|(t, _)| *t >= refused_at)
        .map(|(_, w)| w.as_str())
        .collect();
    assert!(!after_refused.contains(&"first"), "{log}");
    let after_second: Vec<&str> = answers
        .iter()
        .filter(|(t, _)| *t >= second_at)
        .map(|(_, w)| w.as_str())
        .collect();
    assert_eq!(after_second, ["second"], "{log}");
}

/// An endpoint that is in the Service but does not listen yet: the client's connect is refused
/// (the endpoint's own RST, as kube-proxy's DNAT gives it), never accepted and then reset, and
/// the same client connects once the endpoint listens.
#[tokio::test]
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn cluster_ip_refuses_until_the_endpoint_listens_then_connects() {
    let env = TestEnv::new("late").await;
    let svcs: Api<Service> = Api::namespaced(env.client.clone(), &env.ns);
    svcs.create(
        &PostParams::default(),
        &fixture(
            "greeter-service.yaml",
            &[
                ("NAME", "late"),
                ("APP", "late"),
                ("PORT", "80"),
                ("TARGET", "greet"),
            ],
        ),
    )
    .await
    .unwrap();
    env.create_pod(&fixture(
        "late-greeter.yaml",
        &[("NAME", "late-greeter"), ("APP", "late"), ("DELAY", "6")],
    ))
    .await;
    env.wait_pod("late-greeter", "Ready", is_ready).await;
    env.create_pod(&fixture("svc-prober.yaml", &[("TARGET", "late:80")]))
        .await;
    let log = wait_logs(&env, "svc-prober", "answer once it listens", |l| {
        probes(l).iter().any(|(_, w)| w == "late-greeter")
    })
    .await;
    let answers: Vec<String> = probes(&log).into_iter().map(|(_, w)| w).collect();
    assert_eq!(
        answers,
        ["refused", "late-greeter"],
        "refused while nothing listens (no accept-then-reset: `empty`/`error:...`), then answered:\n{log}"
    );
}

/// A real nanny worker created with its scheduler, before the scheduler listens behind its
/// Service, retries its refused connects and registers once the scheduler is up (dask-kube
/// creates workers together with the scheduler).
#[tokio::test]
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn dask_worker_started_before_its_scheduler_registers_through_the_service() {
    let env = TestEnv::new("early").await;
    let _: Service = create(
        &env,
        serde_json::json!({
            "metadata": {"name": "late-scheduler"},
            "spec": {
                "selector": {"app": "late-scheduler"},
                "ports": [{"name": "tcp-comm", "port": 8786, "targetPort": "tcp-comm"}],
            },
        }),
    )
    .await;
    env.create_pod(&fixture("late-scheduler.yaml", &[("DELAY", "8")]))
        .await;
    env.create_pod(&fixture("early-worker.yaml", &[])).await;
    let worker_log = wait_logs(&env, "early-worker", "registration", |l| {
        l.contains("Registered to") || l.contains("failed to start")
    })
    .await;
    assert!(
        worker_log.contains("Registered to") && !worker_log.contains("failed to start"),
        "{worker_log}"
    );
    let scheduler_log = wait_logs(&env, "late-scheduler", "the worker", |l| {
        l.contains("Register worker")
    })
    .await;
    assert!(scheduler_log.contains("Scheduler at"), "{scheduler_log}");
    let worker = env.pods().get("early-worker").await.unwrap();
    assert_eq!(phase(&worker), "Running", "{worker_log}");
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Figures, not limits: connect + first line through the ClusterIP and straight to the pod
/// IP, alternating in one client, medians printed.
#[tokio::test]
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn cluster_ip_latency_next_to_pod_ip() {
    let env = TestEnv::new("latency").await;
    env.create_pod(&fixture(
        "greeter.yaml",
        &[("NAME", "target"), ("APP", "latency")],
    ))
    .await;
    let svcs: Api<Service> = Api::namespaced(env.client.clone(), &env.ns);
    svcs.create(
        &PostParams::default(),
        &fixture(
            "greeter-service.yaml",
            &[
                ("NAME", "latency"),
                ("APP", "latency"),
                ("PORT", "80"),
                ("TARGET", "9376"),
            ],
        ),
    )
    .await
    .unwrap();
    let target = env.wait_pod("target", "Ready", is_ready).await;
    let pod_ip = target.status.unwrap().pod_ip.unwrap();
    let svc_ip = cluster_ip(&env, "latency").await;
    // The ClusterIP answers once the proxy has the endpoint.
    env.create_pod(&fixture(
        "svc-client.yaml",
        &[("TARGETS", &format!("{svc_ip}:80"))],
    ))
    .await;
    env.wait_pod("svc-client", "terminal", is_terminal).await;
    let rounds = 300;
    let targets = format!("{svc_ip}:80,{pod_ip}:9376");
    env.create_pod(&fixture(
        "latency-client.yaml",
        &[("TARGETS", &targets), ("ROUNDS", &rounds.to_string())],
    ))
    .await;
    let done = env
        .wait_pod("latency-client", "terminal", is_terminal)
        .await;
    let out = logs(&env, "latency-client").await;
    assert_eq!(phase(&done), "Succeeded", "{out}");
    let v: std::collections::BTreeMap<String, Vec<u64>> = serde_json::from_str(out.trim()).unwrap();
    let median = |k: &str| v[k][v[k].len() / 2];
    let p90 = |k: &str| v[k][v[k].len() * 9 / 10];
    let (via_svc, direct) = (format!("{svc_ip}:80"), format!("{pod_ip}:9376"));
    assert_eq!(v[&via_svc].len(), rounds);
    assert_eq!(v[&direct].len(), rounds);
    eprintln!(
        "connect + first line, {rounds} rounds each: ClusterIP median {} us (p90 {}), pod IP median {} us (p90 {}), ratio {:.2}",
        median(&via_svc),
        p90(&via_svc),
        median(&direct),
        p90(&direct),
        median(&via_svc) as f64 / median(&direct).max(1) as f64
    );
}

#[tokio::test]
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn dask_kube_image_runs_the_built_binary() {
    let env = TestEnv::new("daskkube").await;
    env.create_pod(&fixture("dask-kube-version.yaml", &[]))
        .await;
    let pod = env
        .wait_pod("dask-kube-version", "terminal", is_terminal)
        .await;
    let out = logs(&env, "dask-kube-version").await;
    assert_eq!(phase(&pod), "Succeeded", "{out}");
    assert!(out.starts_with("dask-kube "), "{out}");
    let cs = &pod.status.unwrap().container_statuses.unwrap()[0];
    assert_eq!(
        cs.image_id,
        "local://dask-kube/ghcr.io/dask-on-k8s/dask-kube:latest"
    );
}

/// `ip` with `args`; stdout, panicking with stderr on failure.
fn ip(args: &[&str]) -> String {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The agent's pod subnet (from `agent.env` in the cluster's state dir) and its service
/// proxy namespace (the `-svc` namespace whose `eth0` is in that subnet).
fn proxy_netns_and_subnet() -> (String, std::net::Ipv4Addr, u32) {
    let state = std::env::var("DASK_K8S_STATE_DIR").unwrap_or_else(|_| {
        format!(
            "{}/.cache/dask-on-k8s/cluster",
            std::env::var("HOME").unwrap()
        )
    });
    let env = std::fs::read_to_string(format!("{state}/node-agent/agent.env")).unwrap();
    let subnet = env
        .lines()
        .find_map(|l| l.strip_prefix("POD_SUBNET="))
        .unwrap()
        .trim()
        .to_owned();
    let (net, prefix) = subnet.split_once('/').unwrap();
    let (net, prefix): (std::net::Ipv4Addr, u32) = (net.parse().unwrap(), prefix.parse().unwrap());
    let mask = u32::MAX << (32 - prefix);
    let ns = ip(&["netns", "list"])
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.ends_with("-svc"))
        .find(|n| {
            ip(&["-n", n, "-4", "-o", "addr", "show", "dev", "eth0"])
                .split_whitespace()
                .filter_map(|w| {
                    w.split_once('/')
                        .and_then(|(a, _)| a.parse::<std::net::Ipv4Addr>().ok())
                })
                .any(|a| u32::from(a) & mask == u32::from(net))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no service proxy namespace with an address in {subnet}"));
    (ns, net, prefix)
}

/// A pod's network namespace: `dk-<tag>-<uid>`, next to the agent's `dk-<tag>-svc`.
fn pod_netns(proxy_netns: &str, pod: &Pod) -> String {
    format!(
        "{}{}",
        proxy_netns.strip_suffix("svc").unwrap(),
        pod.metadata.uid.as_deref().unwrap()
    )
}

/// A pod IP handed out again (the allocator went round the subnet) must not be reached at
/// the previous pod's MAC: with the service proxy's stale neighbour entry the first SYNs of
/// every ClusterIP connection to the new pod went nowhere until the kernel re-resolved
/// (~10 s for a Dask worker's first connect to its scheduler), and a pod that had talked to
/// the previous owner (a worker fetching from a worker) waited as long. Every free address
/// of the subnet gets a stale entry with a MAC no pod has, in the service proxy's namespace
/// and in a running pod's; a new pod's entry must be gone from the proxy's and show the new
/// pod's MAC (or be gone) in the other pod's before any traffic of its own, and a client
/// reaches it through its Service.
#[tokio::test]
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn a_reused_pod_ip_is_not_reached_at_the_previous_pods_mac() {
    const STALE_MAC: &str = "02:00:5e:00:00:01";
    let env = TestEnv::new("reuse").await;
    let (proxy, net, prefix) = proxy_netns_and_subnet();
    // A running pod that "talked to the previous owner" of every free address.
    env.create_pod(&fixture(
        "greeter.yaml",
        &[("NAME", "neighbour"), ("APP", "neighbour")],
    ))
    .await;
    let neighbour = env.wait_pod("neighbour", "Ready", is_ready).await;
    let neighbour_netns = pod_netns(&proxy, &neighbour);
    let all: Api<Pod> = Api::all(env.client.clone());
    let in_use: std::collections::BTreeSet<String> = all
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .collect();
    let size = 1u32 << (32 - prefix);
    let poisoned: Vec<String> = (2..size - 2)
        .map(|i| std::net::Ipv4Addr::from(u32::from(net) + i).to_string())
        .filter(|a| !in_use.contains(a))
        .collect();
    for netns in [&proxy, &neighbour_netns] {
        for addr in &poisoned {
            ip(&[
                "-n", netns, "neigh", "replace", addr, "lladdr", STALE_MAC, "dev", "eth0", "nud",
                "stale",
            ]);
        }
    }
    // Linux takes no update from a sender heard within `locktime` (1 s) of the entry's.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let svcs: Api<Service> = Api::namespaced(env.client.clone(), &env.ns);
    svcs.create(
        &PostParams::default(),
        &fixture(
            "greeter-service.yaml",
            &[
                ("NAME", "reuse"),
                ("APP", "reuse"),
                ("PORT", "80"),
                ("TARGET", "greet"),
            ],
        ),
    )
    .await
    .unwrap();
    env.create_pod(&fixture(
        "greeter.yaml",
        &[("NAME", "reused-ip"), ("APP", "reuse")],
    ))
    .await;
    let pod = env.wait_pod("reused-ip", "Ready", is_ready).await;
    let pod_ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap();
    let entry = ip(&["-n", &proxy, "neigh", "show", &pod_ip, "dev", "eth0"]);
    let neighbours_entry = ip(&[
        "-n",
        &neighbour_netns,
        "neigh",
        "show",
        &pod_ip,
        "dev",
        "eth0",
    ]);
    let pod_mac = ip(&["-n", &pod_netns(&proxy, &pod), "-o", "link", "show", "eth0"])
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap()
        .to_owned();
    let leftover_after_the_test: Vec<&String> = poisoned.iter().filter(|a| **a != pod_ip).collect();
    for addr in &leftover_after_the_test {
        let _ = std::process::Command::new("ip")
            .args(["-n", &proxy, "neigh", "del", addr, "dev", "eth0"])
            .output();
    }
    assert!(
        poisoned.contains(&pod_ip),
        "the pod got {pod_ip}, an address that was in use: the test proves nothing"
    );
    assert!(
        !entry.contains(STALE_MAC),
        "the service proxy still sends {pod_ip} to the previous pod's MAC: {entry}"
    );
    assert!(
        neighbours_entry.trim().is_empty() || neighbours_entry.contains(&pod_mac),
        "another pod still sends {pod_ip} to the previous pod's MAC, not {pod_mac}: {neighbours_entry}"
    );
    env.create_pod(&fixture("svc-client.yaml", &[("TARGETS", "reuse:80")]))
        .await;
    let log = wait_logs(&env, "svc-client", "the greeting", |l| {
        l.contains("reused-ip")
    })
    .await;
    assert!(log.contains("reused-ip"), "{log}");
}
