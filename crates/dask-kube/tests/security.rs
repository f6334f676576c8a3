//! The cluster's security on the local cluster (`e2e-tests/local-cluster/cluster up`), one
//! test per row of the README's threat table: TLS between client, scheduler and workers (a
//! peer without the cluster's certificate is refused at the comm port, from this machine
//! and from a pod; the scheduler's HTTP port answers on its pod's loopback only; the README
//! example computes with the certificate), the controller's ServiceAccount held to its
//! cluster by `deploy/rbac.yaml`'s ValidatingAdmissionPolicies, and the controller pod's
//! securityContext as the real kubelet applies it. `#[ignore]`d like the other cluster
//! tests; the integration tier runs them with `--ignored`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed step fails the test

mod common;

use common::{
    SERIAL, TestNamespace, cluster, fixture, json_of, pod_processes, python, run, wait_for,
};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodTemplate, ServiceAccount};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn small_worker() -> String {
    fixture("small-worker.yml").to_str().unwrap().to_owned()
}

/// `up --detach` with `extra`; the JSON it printed.
fn up(state: &Path, ns: &str, extra: &[&str]) -> Value {
    let worker = small_worker();
    let mut args = vec!["-n", ns, "-o", "json", "up", "-f", &worker, "--detach"];
    args.extend_from_slice(extra);
    json_of(&run(state, &args))
}

/// `tests/fixtures/tls_client.py MODE ARGS...` from this machine; its JSON.
fn tls_client(args: &[&str]) -> Value {
    let out = Command::new(python())
        .arg(fixture("tls_client.py"))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tls_client {args:?}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line.strip_prefix("SEEN ").unwrap_or(line)).unwrap()
}

fn assert_refused(seen: &Value, what: &str) {
    let answer = seen[what].as_str().unwrap_or_default();
    assert!(answer.starts_with("refused:"), "{what}: {seen}");
}

/// 1. An open scheduler port: with TLS (the default) a peer without the cluster's
/// certificate is refused at the comm port (a TLS client that presents none gets the
/// scheduler's "certificate required" alert; a plain tcp:// distributed.Client gets no Dask
/// handshake), through the forward printed on this machine and through the Service from a
/// pod of the namespace; the scheduler's HTTP port (unauthenticated in Dask) answers on
/// neither the Service nor the pod's address; the scheduler and worker pods mount no
/// ServiceAccount token; and a client with `Security(**up["security"])` computes the README
/// example.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn a_client_without_the_clusters_certificate_is_refused_and_one_with_it_computes() {
    let kube = cluster().await;
    let _serial = SERIAL.lock().await;
    let ns = TestNamespace::create(&kube, "sec-tls").await;
    let state = tempfile::tempdir().unwrap();
    let up = up(state.path(), &ns.name, &["--workers", "2"]);
    let name = up["name"].as_str().unwrap().to_owned();
    let address = up["scheduler_address"].as_str().unwrap().to_owned();
    assert!(address.starts_with("tls://127.0.0.1:"), "{up}");
    assert_eq!(up["tls"], "cluster-ca", "{up}");

    let from_here = tls_client(&["refused", &address]);
    eprintln!("from this machine, without the certificate: {from_here}");
    assert_refused(&from_here, "no_certificate");
    assert_refused(&from_here, "plain_tcp");

    // From a pod of the namespace: the Service, and the scheduler pod's own address.
    let scheduler: Pod = ns.pods().get(&name).await.unwrap();
    let pod_ip = scheduler.status.as_ref().unwrap().pod_ip.clone().unwrap();
    let script: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "tls-client"},
        "data": {"tls_client.py": std::fs::read_to_string(fixture("tls_client.py")).unwrap()},
    }))
    .unwrap();
    Api::<ConfigMap>::namespaced(kube.clone(), &ns.name)
        .create(&PostParams::default(), &script)
        .await
        .unwrap();
    let probe: Pod = serde_json::from_value(json!({
        "metadata": {"name": "probe"},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "probe",
                "image": "ghcr.io/dask/dask:latest",
                "command": ["python", "/opt/client/tls_client.py", "refused",
                            format!("tls://{name}-scheduler.{}:8786", ns.name), pod_ip],
                "volumeMounts": [{"name": "client", "mountPath": "/opt/client"}],
                "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
            }],
            "volumes": [{"name": "client", "configMap": {"name": "tls-client"}}],
        },
    }))
    .unwrap();
    ns.pods()
        .create(&PostParams::default(), &probe)
        .await
        .unwrap();
    wait_for("the probe pod to finish", || async {
        ns.pods()
            .get("probe")
            .await
            .ok()
            .and_then(|p| p.status?.phase)
            .is_some_and(|phase| phase == "Succeeded" || phase == "Failed")
    })
    .await;
    let log = ns.pods().logs("probe", &Default::default()).await.unwrap();
    let seen: Value = serde_json::from_str(
        log.lines()
            .find_map(|l| l.strip_prefix("SEEN "))
            .unwrap_or_else(|| panic!("no SEEN line: {log}")),
    )
    .unwrap();
    eprintln!("from a pod of the namespace, without the certificate: {seen}");
    assert_refused(&seen, "no_certificate");
    assert_refused(&seen, "plain_tcp");
    assert_refused(&seen, "http_on_the_pod_ip");
    let service = ns
        .services()
        .get(&format!("{name}-scheduler"))
        .await
        .unwrap();
    let ports: Vec<i32> = service
        .spec
        .unwrap()
        .ports
        .unwrap()
        .iter()
        .map(|p| p.port)
        .collect();
    assert_eq!(ports, [8786], "the HTTP port is not in the Service");

    // No ServiceAccount token in the scheduler and worker pods.
    let pods = ns
        .pods()
        .list(&kube::api::ListParams::default().labels(&format!("dask.org/cluster-name={name}")))
        .await
        .unwrap();
    for pod in &pods.items {
        let volumes = serde_json::to_value(&pod.spec.as_ref().unwrap().volumes).unwrap();
        assert!(
            !volumes.to_string().contains("kube-api-access-"),
            "{:?} mounts a token: {volumes}",
            pod.metadata.name
        );
    }

    // With the certificate: the README example.
    let readme = tls_client(&["readme", &address, &up["security"].to_string()]);
    eprintln!("with the certificate: {readme}");
    assert_eq!(readme["mean"], 1.0, "{readme}");
    assert_eq!(readme["workers"], 2, "{readme}");
    let down = run(state.path(), &["-n", &ns.name, "down", &name]);
    assert!(down.status.success());
    assert!(
        !state
            .path()
            .join("dask-kube")
            .join(format!("{}_{name}.tls", ns.name))
            .exists(),
        "down removes the client's copy"
    );
    ns.delete().await;
}

/// A kubeconfig whose user is the token `request` asks for `sa` (bound to a pod or not).
async fn token_kubeconfig(
    kube: &kube::Client,
    ns: &str,
    sa: &str,
    bound_to: Option<&Pod>,
    path: &Path,
) -> std::path::PathBuf {
    let mut spec = json!({"audiences": [], "expirationSeconds": 3600});
    if let Some(pod) = bound_to {
        spec["boundObjectRef"] = json!({"kind": "Pod", "apiVersion": "v1",
            "name": pod.metadata.name, "uid": pod.metadata.uid});
    }
    let request: TokenRequest = serde_json::from_value(json!({"spec": spec})).unwrap();
    let answer: TokenRequest = Api::<ServiceAccount>::namespaced(kube.clone(), ns)
        .create_subresource("token", sa, &PostParams::default(), &request)
        .await
        .unwrap();
    let token = answer.status.unwrap().token.unwrap();
    let admin = kube::config::Kubeconfig::read_from(common::kubeconfig()).unwrap();
    let cluster = admin.clusters[0].cluster.clone().unwrap();
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority-data: {}\nusers:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u, namespace: {ns}}}\ncurrent-context: c\n",
        cluster.server.unwrap(),
        cluster.certificate_authority_data.unwrap()
    );
    std::fs::write(path, text).unwrap();
    path.to_owned()
}

async fn client_of(kubeconfig: &Path) -> kube::Client {
    common::connection_of(kubeconfig).await.client
}

/// 3. Escalation through the controller: with the token of a cluster's controller pod (what
/// a thief of it holds), `pods create` makes only that cluster's worker pods as its worker
/// template says: a pod running as the `dask-kube` ServiceAccount and one with another image
/// are refused, the message naming the ValidatingAdmissionPolicy; the template itself is
/// accepted (the policy refuses what differs, not everything), and the controller replaces a
/// lost worker under the policies; a pod of another cluster, a token bound to no pod and a
/// port-forward to another pod are refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn the_controllers_service_account_cannot_create_other_pods() {
    let kube = cluster().await;
    let _serial = SERIAL.lock().await;
    let ns = TestNamespace::create(&kube, "sec-vap").await;
    common::apply_rbac(&ns.name);
    let state = tempfile::tempdir().unwrap();
    let up = up(
        state.path(),
        &ns.name,
        &["--adapt", "1:2", "--cooldown", "600"],
    );
    let name = up["name"].as_str().unwrap().to_owned();
    assert_eq!(up["controller"], format!("{name}-controller"), "{up}");
    let controller = format!("{name}-controller");
    wait_for("the controller pod to run", || async {
        ns.pods()
            .get_opt(&controller)
            .await
            .unwrap()
            .and_then(|p| p.status?.phase)
            .as_deref()
            == Some("Running")
    })
    .await;
    // The controller itself creates workers under the policies: the minimum `up` made is
    // deleted, and the controller's adapt loop replaces it (a lost worker).
    let selector = format!("dask.org/cluster-name={name},dask.org/component=worker");
    wait_for("up's worker", || async {
        !ns.pod_names(&selector).await.is_empty()
    })
    .await;
    let first = ns.pod_names(&selector).await;
    for pod in &first {
        ns.pods()
            .delete(pod, &DeleteParams::default())
            .await
            .unwrap();
    }
    wait_for("a worker the controller made", || async {
        ns.pods()
            .list(&kube::api::ListParams::default().labels(&selector))
            .await
            .unwrap()
            .items
            .iter()
            .any(|p| {
                !first.contains(p.metadata.name.as_ref().unwrap())
                    && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            })
    })
    .await;
    let controller_pod = ns.pods().get(&controller).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let stolen = client_of(
        &token_kubeconfig(
            &kube,
            &ns.name,
            "dask-kube-controller",
            Some(&controller_pod),
            &dir.path().join("stolen"),
        )
        .await,
    )
    .await;
    let unbound = client_of(
        &token_kubeconfig(
            &kube,
            &ns.name,
            "dask-kube-controller",
            None,
            &dir.path().join("unbound"),
        )
        .await,
    )
    .await;

    // The worker pod the template makes, as the controller would create it.
    let template: PodTemplate = ns.api().get(&format!("{name}-worker")).await.unwrap();
    let scheduler_uid = ns.pods().get(&name).await.unwrap().metadata.uid.unwrap();
    let template = serde_json::to_value(template).unwrap();
    let worker = |suffix: &str| -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": format!("{name}-worker-{suffix}"),
                "labels": template["template"]["metadata"]["labels"],
                "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": name,
                                     "uid": scheduler_uid, "blockOwnerDeletion": true}],
            },
            "spec": template["template"]["spec"],
        })
    };
    let create = |client: kube::Client, pod: Value| {
        let ns = ns.name.clone();
        async move {
            let pod: Pod = serde_json::from_value(pod).unwrap();
            Api::<Pod>::namespaced(client, &ns)
                .create(&PostParams::default(), &pod)
                .await
        }
    };
    let refusal = |result: Result<Pod, kube::Error>, what: &str, policy: &str| match result {
        Ok(pod) => panic!("{what}: created {:?}", pod.metadata.name),
        Err(kube::Error::Api(status)) => {
            eprintln!("{what}: {} {}", status.code, status.message);
            assert!(
                status
                    .message
                    .contains(&format!("ValidatingAdmissionPolicy '{policy}'")),
                "{what}: refused, naming the policy {policy}: {}",
                status.message
            );
        }
        Err(other) => panic!("{what}: {other}"),
    };

    let mut as_dask_kube = worker("as-dask-kube");
    as_dask_kube["spec"]["serviceAccountName"] = json!("dask-kube");
    refusal(
        create(stolen.clone(), as_dask_kube).await,
        "a pod running as dask-kube",
        "dask-kube-controller-template",
    );
    let mut other_image = worker("other-image");
    other_image["spec"]["containers"][0]["image"] = json!("docker.io/library/busybox:latest");
    refusal(
        create(stolen.clone(), other_image).await,
        "a pod with another image",
        "dask-kube-controller-template",
    );
    let mut other_cluster = worker("other-cluster");
    other_cluster["metadata"]["labels"]["dask.org/cluster-name"] = json!("another-cluster");
    refusal(
        create(stolen.clone(), other_cluster).await,
        "a pod of another cluster",
        "dask-kube-controller",
    );
    refusal(
        create(unbound.clone(), worker("unbound")).await,
        "a token bound to no pod",
        "dask-kube-controller",
    );
    // What the policy lets through: the template, exactly.
    let made = create(stolen.clone(), worker("as-templated"))
        .await
        .unwrap_or_else(|e| panic!("the template itself is refused: {e}"));
    eprintln!("the template itself: created {:?}", made.metadata.name);
    ns.pods()
        .delete(
            made.metadata.name.as_deref().unwrap(),
            &DeleteParams::default(),
        )
        .await
        .unwrap();
    // Port-forward only to its scheduler pod.
    let other = ns.pods().get(&format!("{name}-controller")).await.unwrap();
    let forwarded = Api::<Pod>::namespaced(stolen.clone(), &ns.name)
        .portforward(other.metadata.name.as_deref().unwrap(), &[8080])
        .await;
    // The controller's Role allows port-forward: only the policy refuses this one (to its
    // own scheduler pod it is let through, as every adapt step shows).
    match forwarded {
        Ok(_) => panic!("port-forward to another pod (the controller's own) was let through"),
        Err(e) => eprintln!("port-forward to another pod: refused: {e}"),
    }
    let down = run(state.path(), &["-n", &ns.name, "down", &name]);
    assert!(down.status.success());
    ns.delete().await;
}

/// One `Name:\tvalue` line of `/proc/<pid>/status`.
fn status_field(status: &str, field: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in {status}"))
        .trim()
        .to_owned()
}

/// 3. The controller pod gets only what it needs, as the real kubelet and runc apply it:
/// its `dask-kube controller` process, read from this machine's /proc, runs as uid and gid
/// 65532, with no capability (effective, permitted, bounding), no_new_privs, in seccomp
/// filter mode, on a read-only root filesystem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn the_kubelet_runs_the_controller_as_its_security_context_says() {
    let kube = cluster().await;
    let _serial = SERIAL.lock().await;
    let ns = TestNamespace::create(&kube, "sec-ctx").await;
    common::apply_rbac(&ns.name);
    let state = tempfile::tempdir().unwrap();
    let up = up(state.path(), &ns.name, &["--adapt", "0:1"]);
    let name = up["name"].as_str().unwrap().to_owned();
    let controller = format!("{name}-controller");
    wait_for("the controller pod to run", || async {
        ns.pods()
            .get_opt(&controller)
            .await
            .unwrap()
            .and_then(|p| p.status?.phase)
            .as_deref()
            == Some("Running")
    })
    .await;
    let pod = ns.pods().get(&controller).await.unwrap();
    let started = Instant::now();
    let pid = loop {
        let found = pod_processes(&pod).into_iter().find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("controller"))
        });
        if let Some(pid) = found {
            break pid;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no controller process on this machine for pod {controller}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    eprintln!("/proc/{pid}/status of the controller:\n{status}");
    let uids: Vec<String> = status_field(&status, "Uid")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(uids, ["65532"; 4], "real, effective, saved and fs uid");
    let gids: Vec<String> = status_field(&status, "Gid")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(gids, ["65532"; 4]);
    for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(
            u64::from_str_radix(&status_field(&status, caps), 16).unwrap(),
            0,
            "{caps}"
        );
    }
    assert_eq!(status_field(&status, "NoNewPrivs"), "1");
    assert_eq!(status_field(&status, "Seccomp"), "2", "seccomp filter mode");
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root = mountinfo
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .unwrap_or_else(|| panic!("no root mount in {mountinfo}"));
    let options = root.split_whitespace().nth(5).unwrap();
    assert!(
        options.split(',').any(|o| o == "ro"),
        "the root filesystem is read-only: {root}"
    );
    // And it works that way: it adapted the cluster (its minimum, 0, holds) and answers.
    assert!(
        pod.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .is_some_and(|c| c.iter().all(|c| c.restart_count == 0)),
        "the controller did not crash under its restrictions"
    );
    let down = run(state.path(), &["-n", &ns.name, "down", &name]);
    assert!(down.status.success());
    ns.delete().await;
}
