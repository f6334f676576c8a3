//! The operator against the local cluster (`e2e-tests/local-cluster/cluster up`): each test
//! installs the CRDs, runs the operator for one namespace and checks what users rely on.
//! All `#[ignore]`d: `cargo test` lists them as ignored, the integration tier
//! (e2e-tests/run-integration.sh, `--test operator_cluster -- --include-ignored`) runs them.
//!
//! The operator runs outside the cluster here, as kopf does in upstream's tests, so it
//! reaches schedulers by port-forward (`--scheduler-access port-forward`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod operator_common;

use dask_kube::{
    CreateLimits, DaskAutoscaler, DaskCluster, DaskJob, DaskWorkerGroup, HttpSchedulerApi,
    KubeConnection, OperatorOptions, OperatorScope, PodPortConnect, SchedulerAccess, SchedulerApi,
    operator_crds, run_operator,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Namespace, Pod, Service};
use k8s_openapi::api::rbac::v1::Role;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, ResourceExt};
use operator_common::{OPERATOR_RULES, deploy, documents, granted, listed};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Bound on any wait for a cluster condition.
const WAIT: Duration = Duration::from_secs(180);
/// Time between checks.
const POLL: Duration = Duration::from_millis(500);

/// Cluster tests share one small machine: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn cluster() -> Client {
    cluster_harness::cluster("dask-kube-operator's cluster tests")
        .await
        .0
}

fn kubectl(args: &[&str]) -> std::process::Output {
    Command::new("kubectl")
        .env("KUBECONFIG", cluster_harness::kubeconfig_path())
        .args(args)
        .output()
        .unwrap()
}

async fn wait_for<F, Fut>(what: &str, within: Duration, mut cond: F) -> Result<Duration, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if cond().await {
            return Ok(started.elapsed());
        }
        if started.elapsed() > within {
            return Err(format!("timed out after {within:?} waiting for {what}"));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Installs (or updates) the CRDs and waits until they are served.
async fn install_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply("dask-kube-operator-tests").force();
    for crd in operator_crds() {
        let name = crd.name_any();
        api.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .unwrap();
        wait_for(&format!("CRD {name} established"), WAIT, || async {
            api.get(&name)
                .await
                .ok()
                .and_then(|c| c.status)
                .and_then(|s| s.conditions)
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                })
        })
        .await
        .unwrap();
    }
}

/// Where `cluster up` runs the operator for every namespace
/// (e2e-tests/local-cluster/up.d/30-dask-operator.sh, deploy/operator/operator.yaml).
const CLUSTER_OPERATOR: [&str; 3] = ["deployment/dask-kube-operator", "-n", "dask-kube-operator"];

/// The cluster's own operator, scaled to 0 while a test runs its own for its namespace (in
/// this process, or as a restricted ServiceAccount): two operators would both create the
/// workers. Scaled back on drop, also when the test fails. Nothing to do on a cluster
/// without it.
struct ClusterOperatorPaused {
    replicas: Option<String>,
}

impl ClusterOperatorPaused {
    async fn pause() -> Self {
        let [deployment, flag, namespace] = CLUSTER_OPERATOR;
        let got = kubectl(&[
            "get",
            deployment,
            flag,
            namespace,
            "--ignore-not-found",
            "-o",
            "jsonpath={.spec.replicas}",
        ]);
        let replicas = String::from_utf8_lossy(&got.stdout).trim().to_owned();
        if !got.status.success() || replicas.is_empty() || replicas == "0" {
            return ClusterOperatorPaused { replicas: None };
        }
        let scaled = kubectl(&["scale", deployment, flag, namespace, "--replicas=0"]);
        assert!(
            scaled.status.success(),
            "{}",
            String::from_utf8_lossy(&scaled.stderr)
        );
        let paused = ClusterOperatorPaused {
            replicas: Some(replicas),
        };
        wait_for("the cluster's operator pod to go", WAIT, || async {
            let left = kubectl(&[
                "get",
                "pods",
                flag,
                namespace,
                "-l",
                "app.kubernetes.io/name=dask-kube-operator",
                "-o",
                "name",
            ]);
            left.status.success() && left.stdout.is_empty()
        })
        .await
        .unwrap();
        paused
    }
}

impl Drop for ClusterOperatorPaused {
    fn drop(&mut self) {
        if let Some(replicas) = &self.replicas {
            let [deployment, flag, namespace] = CLUSTER_OPERATOR;
            let _ = kubectl(&[
                "scale",
                deployment,
                flag,
                namespace,
                &format!("--replicas={replicas}"),
            ]);
        }
    }
}

/// A namespace for one test, deleted at the end (also when the test fails).
struct TestNamespace {
    name: String,
}

impl TestNamespace {
    async fn create(client: &Client, prefix: &str) -> Self {
        let name = format!(
            "{prefix}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        );
        let api: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        api.create(&PostParams::default(), &ns).await.unwrap();
        let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(client.clone(), &name);
        wait_for("the default service account", WAIT, || async {
            sas.get_opt("default").await.ok().flatten().is_some()
        })
        .await
        .unwrap();
        TestNamespace { name }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let _ = Command::new("kubectl")
            .env("KUBECONFIG", cluster_harness::kubeconfig_path())
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

fn fixture(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/operator")
        .join(file)
}

/// Creates the object of a fixture file in `ns`.
async fn create(client: &Client, ns: &str, file: &str) -> Value {
    let value: Value =
        serde_norway::from_str(&std::fs::read_to_string(fixture(file)).unwrap()).unwrap();
    let (group, version) = value["apiVersion"]
        .as_str()
        .unwrap()
        .split_once('/')
        .unwrap();
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(
        group,
        version,
        value["kind"].as_str().unwrap(),
    ));
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
    let object: DynamicObject = serde_json::from_value(value.clone()).unwrap();
    api.create(&PostParams::default(), &object).await.unwrap();
    value
}

/// The operator for `ns`, in this process, as the admin.
fn spawn_operator(client: Client, ns: &str) -> tokio::task::JoinHandle<dask_kube::Result<()>> {
    spawn_operator_with_window(client, ns, dask_kube::DEFAULT_START_WINDOW)
}

/// [`spawn_operator`] with a start window of `start_window`.
fn spawn_operator_with_window(
    client: Client,
    ns: &str,
    start_window: usize,
) -> tokio::task::JoinHandle<dask_kube::Result<()>> {
    let connection = KubeConnection::new(
        client,
        ns,
        cluster_harness::kubeconfig_path().display().to_string(),
    );
    tokio::spawn(run_operator(
        connection,
        OperatorOptions {
            scope: OperatorScope::Namespace(ns.to_owned()),
            scheduler_access: SchedulerAccess::PortForward,
            reporter: "dask-kube-operator".into(),
            limits: CreateLimits::default(),
            start_window,
        },
    ))
}

fn labels(selector: &str) -> ListParams {
    ListParams::default().labels(selector)
}

fn phase(p: &Pod) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default()
}

async fn running_workers(pods: &Api<Pod>, cluster: &str) -> Vec<String> {
    pods.list(&labels(&format!(
        "dask.org/cluster-name={cluster},dask.org/component=worker"
    )))
    .await
    .map(|l| l.items)
    .unwrap_or_default()
    .into_iter()
    .filter(|p| p.metadata.deletion_timestamp.is_none() && phase(p) == "Running")
    .map(|p| p.name_any())
    .collect()
}

async fn scheduler_pod(pods: &Api<Pod>, cluster: &str) -> Option<Pod> {
    pods.list(&labels(&format!(
        "dask.org/cluster-name={cluster},dask.org/component=scheduler"
    )))
    .await
    .ok()?
    .items
    .into_iter()
    .find(|p| {
        p.metadata.deletion_timestamp.is_none()
            && p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    })
}

/// What a step that timed out saw: the DaskCluster's phase, and each pod of the namespace
/// with its phase, readiness, node and restarts (a slow node and a stuck operator look
/// alike in the operator's log alone).
async fn what_runs(clusters: &Api<DaskCluster>, pods: &Api<Pod>) -> String {
    let phase = clusters
        .get("simple")
        .await
        .ok()
        .and_then(|c| c.status)
        .and_then(|s| s.phase);
    let mut out = format!("DaskCluster simple: phase {phase:?}\n");
    for p in pods
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
    {
        out.push_str(&format!(
            "pod {}: {}\n",
            p.name_any(),
            common::pod_summary(&p)
        ));
        if common::has_exited(&p) {
            let logs = pods
                .logs(
                    &p.name_any(),
                    &kube::api::LogParams {
                        tail_lines: Some(15),
                        ..Default::default()
                    },
                )
                .await
                .unwrap_or_else(|e| format!("(no log: {e})"));
            out.push_str(&logs);
        }
    }
    out
}

/// The names of the workers connected to a cluster's scheduler.
async fn connected_workers(pods: &Api<Pod>, cluster: &str) -> Vec<String> {
    let Some(scheduler) = scheduler_pod(pods, cluster).await else {
        return Vec::new();
    };
    let api = HttpSchedulerApi::new(PodPortConnect::new(
        pods.clone(),
        scheduler.name_any(),
        8787,
    ));
    let mut names: Vec<String> = api
        .workers()
        .await
        .map(|w| w.into_iter().map(|w| w.name).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// Retires every worker of `cluster` through its scheduler (their pods end).
async fn retire_all(pods: &Api<Pod>, cluster: &str) -> Result<(), String> {
    let scheduler = scheduler_pod(pods, cluster)
        .await
        .ok_or("no scheduler pod")?;
    let api = HttpSchedulerApi::new(PodPortConnect::new(
        pods.clone(),
        scheduler.name_any(),
        8787,
    ));
    let addresses: Vec<String> = api
        .workers()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|w| w.address)
        .collect();
    api.retire_workers(&addresses)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

async fn event_messages(client: &Client, ns: &str, name: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    events
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Logging"))
        .filter_map(|e| e.message)
        .collect()
}

/// A DaskCluster gets upstream's objects and phase; a deleted worker pod and a deleted
/// scheduler pod come back; `kubectl scale daskcluster` retires a worker before deleting
/// its pod; deleting the cluster removes everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local cluster"]
async fn a_daskcluster_runs_heals_scales_and_goes() {
    let client = cluster().await;
    let _serial = SERIAL.lock().await;
    let _paused = ClusterOperatorPaused::pause().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "dko-life").await;
    let operator = spawn_operator(client.clone(), &ns.name);
    create(&client, &ns.name, "cluster.yaml").await;
    let clusters: Api<DaskCluster> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);

    let took = wait_for("phase Running", WAIT, || async {
        clusters
            .get("simple")
            .await
            .ok()
            .and_then(|c| c.status)
            .and_then(|s| s.phase)
            .as_deref()
            == Some("Running")
    })
    .await
    .unwrap();
    eprintln!("FIGURE DaskCluster Running after {took:?}");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    assert!(
        deployments
            .get_opt("simple-scheduler")
            .await
            .unwrap()
            .is_some()
    );
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    assert!(
        services
            .get_opt("simple-scheduler")
            .await
            .unwrap()
            .is_some()
    );
    let groups: Api<DaskWorkerGroup> = Api::namespaced(client.clone(), &ns.name);
    let group = groups.get("simple-default").await.unwrap();
    assert_eq!(
        group.labels().get("test-label").map(String::as_str),
        Some("label-value")
    );
    assert_eq!(
        group.labels().get("dask.org/component").map(String::as_str),
        Some("workergroup")
    );

    let took = wait_for("2 workers connected", WAIT, || async {
        connected_workers(&pods, "simple").await.len() == 2
    })
    .await
    .unwrap();
    eprintln!("FIGURE 2 workers connected after {took:?}");
    let workers = connected_workers(&pods, "simple").await;
    assert_eq!(
        workers,
        running_workers(&pods, "simple")
            .await
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>(),
        "worker name = pod name"
    );

    // A worker pod deleted by anyone is replaced.
    pods.delete(&workers[0], &DeleteParams::default())
        .await
        .unwrap();
    let took = wait_for("the deleted worker replaced", WAIT, || async {
        let now = connected_workers(&pods, "simple").await;
        now.len() == 2 && !now.contains(&workers[0])
    })
    .await
    .unwrap();
    eprintln!("FIGURE deleted worker pod replaced and connected after {took:?}");

    // A lost scheduler is recreated (its Deployment's ReplicaSet), and workers reconnect or
    // are replaced.
    let scheduler = scheduler_pod(&pods, "simple").await.unwrap().name_any();
    pods.delete(&scheduler, &DeleteParams::default())
        .await
        .unwrap();
    wait_for("a new ready scheduler with 2 workers", WAIT, || async {
        scheduler_pod(&pods, "simple")
            .await
            .is_some_and(|p| p.name_any() != scheduler)
            && connected_workers(&pods, "simple").await.len() == 2
    })
    .await
    .unwrap();

    // `kubectl scale daskcluster` reaches the default group; the worker is retired first.
    let scaled = kubectl(&[
        "scale",
        "-n",
        &ns.name,
        "--replicas=1",
        "daskcluster.kubernetes.dask.org",
        "simple",
    ]);
    assert!(
        scaled.status.success(),
        "{}",
        String::from_utf8_lossy(&scaled.stderr)
    );
    wait_for("1 worker left", WAIT, || async {
        running_workers(&pods, "simple").await.len() == 1
            && connected_workers(&pods, "simple").await.len() == 1
    })
    .await
    .unwrap();
    assert_eq!(
        groups
            .get("simple-default")
            .await
            .unwrap()
            .spec
            .worker
            .replicas,
        1
    );
    let group_events = event_messages(&client, &ns.name, "simple-default").await;
    assert!(
        group_events
            .iter()
            .any(|m| m.starts_with("Workers to close: ")),
        "{group_events:?}"
    );

    // Phases and events as upstream's.
    let cluster_events = event_messages(&client, &ns.name, "simple").await;
    for expected in [
        format!("DaskCluster simple created in {}.", ns.name),
        format!(
            "Scheduler deployment simple-scheduler created in {}.",
            ns.name
        ),
        format!("Scheduler service simple-scheduler created in {}.", ns.name),
        format!("Worker group simple-default created in {}.", ns.name),
    ] {
        assert!(
            cluster_events.contains(&expected),
            "{expected} in {cluster_events:?}"
        );
    }

    clusters
        .delete("simple", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("every pod of the cluster gone", WAIT, || async {
        pods.list(&labels("dask.org/cluster-name=simple"))
            .await
            .is_ok_and(|l| l.items.is_empty())
    })
    .await
    .unwrap();
    operator.abort();
}

/// A DaskJob's runner runs against its own cluster; the cluster goes when the job ends;
/// the status has upstream's fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local cluster"]
async fn a_daskjob_runs_and_removes_its_cluster() {
    let client = cluster().await;
    let _serial = SERIAL.lock().await;
    let _paused = ClusterOperatorPaused::pause().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "dko-job").await;
    let operator = spawn_operator(client.clone(), &ns.name);
    create(&client, &ns.name, "job.yaml").await;
    let jobs: Api<DaskJob> = Api::namespaced(client.clone(), &ns.name);
    let clusters: Api<DaskCluster> = Api::namespaced(client.clone(), &ns.name);
    wait_for("the job's cluster", WAIT, || async {
        clusters
            .get_opt("simple-job")
            .await
            .ok()
            .flatten()
            .is_some()
    })
    .await
    .unwrap();
    wait_for("jobStatus Successful", WAIT, || async {
        jobs.get("simple-job")
            .await
            .ok()
            .and_then(|j| j.status)
            .and_then(|s| s.job_status)
            .as_deref()
            == Some("Successful")
    })
    .await
    .unwrap();
    wait_for("the job's cluster deleted", WAIT, || async {
        clusters
            .get_opt("simple-job")
            .await
            .ok()
            .flatten()
            .is_none()
    })
    .await
    .unwrap();
    let status = jobs.get("simple-job").await.unwrap().status.unwrap();
    assert_eq!(status.cluster_name.as_deref(), Some("simple-job"));
    assert_eq!(
        status.job_runner_pod_name.as_deref(),
        Some("simple-job-runner")
    );
    assert!(
        status.start_time.is_some() && status.end_time.is_some(),
        "{status:?}"
    );
    let messages = event_messages(&client, &ns.name, "simple-job").await;
    assert!(
        messages.contains(&"Job succeeded, deleting Dask cluster.".to_owned()),
        "{messages:?}"
    );
    operator.abort();
}

/// A DaskAutoscaler is adopted by its cluster and keeps the default group within its
/// range (here: the minimum, with no work).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local cluster"]
async fn an_autoscaler_keeps_its_group_in_range() {
    let client = cluster().await;
    let _serial = SERIAL.lock().await;
    let _paused = ClusterOperatorPaused::pause().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "dko-adapt").await;
    let operator = spawn_operator(client.clone(), &ns.name);
    create(&client, &ns.name, "cluster.yaml").await;
    let resource = ApiResource::erase::<DaskAutoscaler>(&());
    let autoscalers: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns.name, &resource);
    let autoscaler: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "kubernetes.dask.org/v1", "kind": "DaskAutoscaler",
        "metadata": {"name": "simple"}, "spec": {"cluster": "simple", "minimum": 1, "maximum": 1},
    }))
    .unwrap();
    autoscalers
        .create(&PostParams::default(), &autoscaler)
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let groups: Api<DaskWorkerGroup> = Api::namespaced(client.clone(), &ns.name);
    wait_for("the group adapted to 1 worker", WAIT, || async {
        groups
            .get("simple-default")
            .await
            .is_ok_and(|g| g.spec.worker.replicas == 1)
            && running_workers(&pods, "simple").await.len() == 1
    })
    .await
    .unwrap();
    let adopted = autoscalers.get("simple").await.unwrap();
    assert_eq!(adopted.owner_references()[0].kind, "DaskCluster");
    operator.abort();
}

/// Workers that cannot reach their scheduler exit at their `--death-timeout` and are
/// replaced; with a start window of 2 the replacements take turns: at most 2 of them run
/// without the scheduling gate at any time, the rest wait holding it (before the window, the
/// operator replaced every ended pod at once, so all 6 restarted together, and failed
/// together, again and again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local cluster"]
async fn workers_that_cannot_connect_are_replaced_a_window_at_a_time() {
    let client = cluster().await;
    let _serial = SERIAL.lock().await;
    let _paused = ClusterOperatorPaused::pause().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "dko-window").await;
    let operator = spawn_operator_with_window(client.clone(), &ns.name, 2);
    let mut c: Value =
        serde_norway::from_str(&std::fs::read_to_string(fixture("cluster.yaml")).unwrap()).unwrap();
    c["spec"]["worker"]["replicas"] = json!(6);
    // An address no DNS answers (`.invalid`, RFC 6761): the worker retries until its
    // death-timeout, then exits.
    c["spec"]["worker"]["spec"]["containers"][0]["args"] = json!([
        "dask",
        "worker",
        "tcp://no-scheduler.invalid:8786",
        "--death-timeout",
        "5",
        "--nthreads",
        "1",
        "--memory-limit",
        "512MiB",
        "--no-dashboard",
    ]);
    let clusters: Api<DaskCluster> = Api::namespaced(client.clone(), &ns.name);
    clusters
        .create(&PostParams::default(), &serde_json::from_value(c).unwrap())
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let workers = labels("dask.org/cluster-name=simple,dask.org/component=worker");
    let mut first_wave: Option<std::collections::BTreeSet<String>> = None;
    let mut replacements = std::collections::BTreeSet::new();
    let (mut most_running, mut most_held) = (0, 0);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(90) && replacements.len() < 10 {
        let listed = pods.list(&workers).await.unwrap().items;
        let first = first_wave.get_or_insert_with(Default::default);
        if first.len() < 6 {
            first.extend(listed.iter().map(ResourceExt::name_any));
        }
        let later: Vec<&Pod> = listed
            .iter()
            .filter(|p| first.len() == 6 && !first.contains(&p.name_any()))
            .collect();
        replacements.extend(later.iter().map(|p| p.name_any()));
        let active = |p: &&&Pod| {
            p.metadata.deletion_timestamp.is_none()
                && !matches!(phase(p).as_str(), "Succeeded" | "Failed")
        };
        let held = later
            .iter()
            .filter(active)
            .filter(|p| dask_kube::holds_start_gate(p))
            .count();
        let running = later.iter().filter(active).count() - held;
        most_running = most_running.max(running);
        most_held = most_held.max(held);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let seen = what_runs(&clusters, &pods).await;
    operator.abort();
    println!(
        "{} replacements in {:.0?}; at most {most_running} let start at once, at most {most_held} held",
        replacements.len(),
        started.elapsed()
    );
    assert!(
        replacements.len() >= 4,
        "workers that cannot connect end and are replaced: {replacements:?}\n{seen}"
    );
    assert!(
        most_held > 0,
        "replacements beyond the window hold the start gate\n{seen}"
    );
    assert!(
        most_running <= 2,
        "at most the window (2) of the replacements start at once, saw {most_running}\n{seen}"
    );
}

/// The whole life cycle as the operator's ServiceAccount (deploy/operator/rbac-namespace.yaml; plus
/// pods/portforward, which only an operator outside the cluster needs) passes, and with
/// any one rule removed some step fails and the operator's log names the missing verb and
/// resource: every rule is needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local cluster"]
async fn every_rule_of_the_operator_role_is_needed() {
    let client = cluster().await;
    let _serial = SERIAL.lock().await;
    let _paused = ClusterOperatorPaused::pause().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "dko-rules").await;
    let applied = kubectl(&[
        "apply",
        "-n",
        &ns.name,
        "-f",
        deploy("rbac-namespace.yaml").to_str().unwrap(),
    ]);
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let extra = kubectl(&[
        "create",
        "role",
        "port-forward",
        "-n",
        &ns.name,
        "--verb=get,create",
        "--resource=pods/portforward",
    ]);
    assert!(
        extra.status.success(),
        "{}",
        String::from_utf8_lossy(&extra.stderr)
    );
    let bound = kubectl(&[
        "create",
        "rolebinding",
        "port-forward",
        "-n",
        &ns.name,
        "--role=port-forward",
        &format!("--serviceaccount={}:dask-kube-operator", ns.name),
    ]);
    assert!(
        bound.status.success(),
        "{}",
        String::from_utf8_lossy(&bound.stderr)
    );
    let roles: Api<Role> = Api::namespaced(client.clone(), &ns.name);
    let full = roles.get("dask-kube-operator").await.unwrap();
    assert_eq!(granted(&serde_json::to_value(&full).unwrap()), listed());
    let state = tempfile::tempdir().unwrap();
    let sa_config =
        service_account_kubeconfig(&client, &ns.name, "dask-kube-operator", state.path()).await;

    let first = life_cycle(&client, &ns.name, &sa_config, state.path(), "all", None).await;
    assert!(
        first.is_ok(),
        "with every rule the life cycle passes: {first:?}"
    );
    let mut table = Vec::new();
    for (resource, verb) in OPERATOR_RULES {
        remove_rule(&roles, &full, &ns.name, resource, verb).await;
        let said = format!("cannot {verb} resource \"{resource}\"");
        let result = life_cycle(
            &client,
            &ns.name,
            &sa_config,
            state.path(),
            &format!("{verb}-{}", resource.replace('/', "-")),
            Some(&said),
        )
        .await;
        restore_role(&roles, &full).await;
        let (step, log) = result.err().unwrap_or_else(|| {
            panic!("without {verb} {resource} every step passed and the operator never called it: the rule is not needed, remove it from deploy/operator/rbac-*.yaml")
        });
        let line = log.lines().find(|l| l.contains(&said)).unwrap_or_else(|| {
            panic!("without {verb} {resource}, `{step}` failed but the operator's log does not say {said:?}:\n{log}")
        });
        table.push(format!(
            "{verb:>6} {resource:<17} -> {step}: {}",
            line.trim()
        ));
    }
    eprintln!(
        "FIGURE the operator's Role, one rule removed at a time:\n{}",
        table.join("\n")
    );
}

/// Runs the operator binary as the ServiceAccount of `sa_config` and drives the life cycle
/// as the admin: a DaskCluster with 1 worker (Running, its events), scaled to 0 (retired),
/// a DaskAutoscaler (adopted; it sets the group back to its minimum, 1), a DaskJob (Successful, cluster removed). The first step that
/// fails within 120 s, with the operator's log; everything is removed afterwards. With
/// `forbidden`, the life cycle also ends, as failed at the step it was in, as soon as the
/// operator's log shows the API server refusing that call: a removed rule the operator
/// needs is then known in seconds instead of after a step's whole wait (26 rules).
async fn life_cycle(
    client: &Client,
    ns: &str,
    sa_config: &Path,
    dir: &Path,
    case: &str,
    forbidden: Option<&str>,
) -> Result<(), (String, String)> {
    let log_path = dir.join(format!("operator-{case}.log"));
    let log = std::fs::File::create(&log_path).unwrap();
    let mut operator = Command::new(env!("CARGO_BIN_EXE_dask-kube"))
        .args([
            "operator",
            "run",
            "--namespace",
            ns,
            "--scheduler-access",
            "port-forward",
            // Two workers, one let start at a time: the second waits for the first to
            // connect, and its release needs `patch pods`.
            "--start-window",
            "1",
        ])
        .env("KUBECONFIG", sa_config)
        .env("DASK_KUBE_LOG", "dask_kube=debug,kube=warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    // Generous for the loaded 2-core machine: a case whose steps all work never waits it out,
    // and a removed rule usually ends the case at once (`forbidden`).
    let step_wait = Duration::from_secs(120);
    let clusters: Api<DaskCluster> = Api::namespaced(client.clone(), ns);
    let groups: Api<DaskWorkerGroup> = Api::namespaced(client.clone(), ns);
    let jobs: Api<DaskJob> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let steps = async {
        let mut c: Value =
            serde_norway::from_str(&std::fs::read_to_string(fixture("cluster.yaml")).unwrap())
                .unwrap();
        c["spec"]["worker"]["replicas"] = json!(2);
        clusters
            .create(&PostParams::default(), &serde_json::from_value(c).unwrap())
            .await
            .map_err(|e| ("create DaskCluster".to_owned(), e.to_string()))?;
        let up = wait_for(
            "phase Running and 2 connected workers",
            step_wait,
            || async {
                clusters
                    .get("simple")
                    .await
                    .ok()
                    .and_then(|c| c.status)
                    .and_then(|s| s.phase)
                    .as_deref()
                    == Some("Running")
                    && connected_workers(&pods, "simple").await.len() == 2
            },
        )
        .await;
        if let Err(e) = up {
            let seen = what_runs(&clusters, &pods).await;
            return Err(("cluster up".to_owned(), format!("{e}\n{seen}")));
        }
        wait_for("the cluster's events", step_wait, || async {
            event_messages(client, ns, "simple")
                .await
                .iter()
                .any(|m| m.starts_with("DaskCluster simple created"))
        })
        .await
        .map_err(|e| ("events".to_owned(), e))?;
        // Both workers retired at once, so both pods end: their replacements take turns in
        // the start window of 1, the second held by the scheduling gate until the first
        // connected, then released (`patch pods`).
        let first = connected_workers(&pods, "simple").await;
        retire_all(&pods, "simple")
            .await
            .map_err(|e| ("retire both workers".to_owned(), e))?;
        let replaced = wait_for("2 replacements connected", step_wait, || async {
            let now = connected_workers(&pods, "simple").await;
            now.len() == 2 && now.iter().all(|w| !first.contains(w))
        })
        .await;
        if let Err(e) = replaced {
            let seen = what_runs(&clusters, &pods).await;
            return Err((
                "replacements in the start window".to_owned(),
                format!("{e}\n{seen}"),
            ));
        }
        groups
            .patch(
                "simple-default",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"worker": {"replicas": 0}}})),
            )
            .await
            .map_err(|e| ("scale to 0".to_owned(), e.to_string()))?;
        wait_for("no worker left", step_wait, || async {
            running_workers(&pods, "simple").await.is_empty()
        })
        .await
        .map_err(|e| ("scale down (retire, delete)".to_owned(), e))?;
        let resource = ApiResource::erase::<DaskAutoscaler>(&());
        let autoscalers: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
        let autoscaler: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "kubernetes.dask.org/v1", "kind": "DaskAutoscaler",
            "metadata": {"name": "simple"}, "spec": {"cluster": "simple", "minimum": 1, "maximum": 1},
        }))
        .unwrap();
        autoscalers
            .create(&PostParams::default(), &autoscaler)
            .await
            .map_err(|e| ("create DaskAutoscaler".to_owned(), e.to_string()))?;
        wait_for("the autoscaler adopted", step_wait, || async {
            autoscalers
                .get("simple")
                .await
                .is_ok_and(|a| !a.owner_references().is_empty())
        })
        .await
        .map_err(|e| ("autoscaler".to_owned(), e))?;
        // The autoscaler sets the default group's replicas (0) to its minimum.
        wait_for("the autoscaler's minimum applied", step_wait, || async {
            groups
                .get("simple-default")
                .await
                .is_ok_and(|g| g.spec.worker.replicas == 1)
        })
        .await
        .map_err(|e| ("autoscaler minimum".to_owned(), e))?;
        create(client, ns, "job.yaml").await;
        wait_for(
            "the job Successful and its cluster gone",
            step_wait * 2,
            || async {
                jobs.get("simple-job")
                    .await
                    .ok()
                    .and_then(|j| j.status)
                    .and_then(|s| s.job_status)
                    .as_deref()
                    == Some("Successful")
                    && clusters
                        .get_opt("simple-job")
                        .await
                        .ok()
                        .flatten()
                        .is_none()
            },
        )
        .await
        .map_err(|e| ("job".to_owned(), e))?;
        Ok::<(), (String, String)>(())
    };
    let refused = async {
        match forbidden {
            Some(said) => loop {
                if std::fs::read_to_string(&log_path).is_ok_and(|log| log.contains(said)) {
                    return (
                        "the operator's call, refused".to_owned(),
                        format!("the API server refused: {said}"),
                    );
                }
                tokio::time::sleep(POLL).await;
            },
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        done = steps => done,
        refused = refused => Err(refused),
    };
    let _ = operator.kill();
    let _ = operator.wait();
    // Clean up as the admin, and wait, so the next case starts from nothing.
    let _ = kubectl(&[
        "delete",
        "-n",
        ns,
        "daskjobs,daskclusters,daskautoscalers,daskworkergroups",
        "--all",
        "--wait=true",
        "--timeout=120s",
    ]);
    let _ = kubectl(&[
        "delete",
        "-n",
        ns,
        "pods,deployments,services",
        "-l",
        "dask.org/cluster-name",
        "--grace-period=0",
        "--force",
        "--wait=true",
        "--timeout=120s",
    ]);
    let _ = wait_for("nothing left", WAIT, || async {
        pods.list(&labels("dask.org/cluster-name"))
            .await
            .is_ok_and(|l| l.items.is_empty())
    })
    .await;
    result.map_err(|(step, why)| {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        (step, format!("{why}\n{log}"))
    })
}

/// A kubeconfig for ServiceAccount `sa` of `ns` (a TokenRequest token).
async fn service_account_kubeconfig(client: &Client, ns: &str, sa: &str, dir: &Path) -> PathBuf {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    use k8s_openapi::api::core::v1::ServiceAccount;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let request: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 7200}}))
            .unwrap();
    let answer: TokenRequest = sas
        .create_subresource("token", sa, &PostParams::default(), &request)
        .await
        .unwrap();
    let token = answer.status.unwrap().token.unwrap();
    let admin = kube::config::Kubeconfig::read_from(cluster_harness::kubeconfig_path()).unwrap();
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

fn service_account_can(ns: &str, resource: &str, verb: &str) -> bool {
    let (resource, sub) = resource.split_once('/').unwrap_or((resource, ""));
    let group = if resource.starts_with("dask") {
        ".kubernetes.dask.org"
    } else if resource == "deployments" {
        ".apps"
    } else {
        ""
    };
    let mut args = vec![
        "auth".to_owned(),
        "can-i".into(),
        verb.into(),
        format!("{resource}{group}"),
        "-n".into(),
        ns.into(),
        format!("--as=system:serviceaccount:{ns}:dask-kube-operator"),
    ];
    if !sub.is_empty() {
        args.push(format!("--subresource={sub}"));
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    String::from_utf8_lossy(&kubectl(&refs).stdout).trim() == "yes"
}

fn replaceable(role: &Role) -> Role {
    let mut role = role.clone();
    role.metadata.resource_version = None;
    role.metadata.managed_fields = None;
    role
}

async fn remove_rule(roles: &Api<Role>, full: &Role, ns: &str, resource: &str, verb: &str) {
    let mut role = replaceable(full);
    role.rules = Some(
        full.rules
            .iter()
            .flatten()
            .cloned()
            .filter_map(|mut r| {
                if r.resources.as_deref() == Some(&[resource.to_owned()][..]) {
                    r.verbs.retain(|v| v != verb);
                }
                (!r.verbs.is_empty()).then_some(r)
            })
            .collect(),
    );
    roles
        .replace("dask-kube-operator", &PostParams::default(), &role)
        .await
        .unwrap();
    wait_for("the removed rule to take effect", WAIT, || async {
        !service_account_can(ns, resource, verb)
    })
    .await
    .unwrap();
}

async fn restore_role(roles: &Api<Role>, full: &Role) {
    roles
        .replace(
            "dask-kube-operator",
            &PostParams::default(),
            &replaceable(full),
        )
        .await
        .unwrap();
}

/// The cluster-wide flavour grants what the namespaced one does (checked without a cluster
/// in tests/operator_deploy.rs); here it is applied and its ServiceAccount may list DaskClusters in
/// any namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local cluster"]
async fn the_cluster_wide_rbac_applies() {
    let client = cluster().await;
    let _serial = SERIAL.lock().await;
    install_crds(&client).await;
    let path = deploy("rbac-cluster.yaml");
    assert!(!documents(&path).is_empty());
    // `cluster up` installs the operator with this very file: what was there stays.
    let installed = kubectl(&["get", "namespace", "dask-kube-operator"])
        .status
        .success();
    let applied = kubectl(&["apply", "-f", path.to_str().unwrap()]);
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let can = kubectl(&[
        "auth",
        "can-i",
        "list",
        "daskclusters.kubernetes.dask.org",
        "--all-namespaces",
        "--as=system:serviceaccount:dask-kube-operator:dask-kube-operator",
    ]);
    assert_eq!(String::from_utf8_lossy(&can.stdout).trim(), "yes");
    if !installed {
        let _ = kubectl(&["delete", "-f", path.to_str().unwrap(), "--wait=false"]);
    }
}
