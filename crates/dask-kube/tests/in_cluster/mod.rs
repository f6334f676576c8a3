//! dask-kube inside the cluster (issue 9, section 2): a "notebook" pod running the dask-kube
//! image as the service account of `deploy/rbac.yaml`, with nothing but what a node gives a
//! pod (the projected token and `ca.crt`, `KUBERNETES_SERVICE_*`, Service names).

use crate::common::{SERIAL, TestNamespace, cluster, fixture, wait_for};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{LogParams, PostParams};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Bound on the whole notebook session (create to pod done).
const NOTEBOOK_WAIT: Duration = Duration::from_secs(600);

/// The JSON after `marker ` on the first log line that starts with it.
fn marked<'a>(log: &'a str, marker: &str) -> Option<&'a str> {
    log.lines()
        .find_map(|l| l.strip_prefix(marker)?.strip_prefix(' '))
}

/// From a notebook pod bound to `deploy/rbac.yaml`: `up`, `scale`, `list`, `logs` and `down`
/// with in-cluster credentials, and a `distributed.Client` computing the README example
/// through the scheduler's Service address (not a port-forward).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn notebook_pod_runs_the_life_cycle_and_computes_through_the_service() {
    let kube = cluster().await;
    let _serial = SERIAL.lock().await;
    let ns = TestNamespace::create(&kube, "dk-notebook").await;
    crate::common::apply_rbac(&ns.name);
    let read = |name: &str| std::fs::read_to_string(fixture(name)).unwrap();
    let cms: kube::Api<ConfigMap> = kube::Api::namespaced(kube.clone(), &ns.name);
    let notebook: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "notebook"},
        "data": {
            "notebook.sh": read("notebook.sh"),
            "readme_example.py": read("readme_example.py"),
            "worker.yml": read("small-worker.yml"),
        },
    }))
    .unwrap();
    cms.create(&PostParams::default(), &notebook).await.unwrap();

    // A private state dir and no user Dask config inside the container, like the host-side
    // tests' `dask_kube()`.
    let state_dir = "/tmp/dask-kube-state";
    let no_config = "/tmp/no-dask-config";
    // This build's dask-kube image, by digest when the cluster's env names it (`cluster env`):
    // for the notebook and for the controller pod the notebook's cluster starts.
    let image = std::env::var("DASK_KUBERNETES__CONTROLLER_IMAGE")
        .unwrap_or_else(|_| "ghcr.io/dask-on-k8s/dask-kube:latest".to_owned());
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "notebook"},
        "spec": {
            "serviceAccountName": "dask-kube",
            "restartPolicy": "Never",
            "containers": [{
                "name": "notebook",
                "image": image,
                "command": ["sh", "/opt/notebook/notebook.sh"],
                "env": [
                    {"name": "DASK_KUBERNETES__CONTROLLER_IMAGE", "value": image},
                    {"name": "XDG_STATE_HOME", "value": state_dir},
                    {"name": "DASK_CONFIG", "value": no_config},
                    {"name": "DASK_ROOT_CONFIG", "value": no_config},
                ],
                "volumeMounts": [{"name": "notebook", "mountPath": "/opt/notebook"}],
            }],
            "volumes": [{
                "name": "notebook",
                "projected": {"sources": [{"configMap": {"name": "notebook"}}]},
            }],
        },
    }))
    .unwrap();
    let started = Instant::now();
    ns.pods()
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    let phase = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default()
    };
    // The README example (1000 chunks) on two 250m workers takes minutes when the machine is
    // busy: a bound of its own, longer than the common one.
    loop {
        let p = ns.pods().get("notebook").await.unwrap();
        if matches!(phase(&p).as_str(), "Succeeded" | "Failed") {
            break;
        }
        assert!(
            started.elapsed() < NOTEBOOK_WAIT,
            "the notebook pod did not finish in {NOTEBOOK_WAIT:?}; its log so far:\n{}",
            ns.pods()
                .logs("notebook", &LogParams::default())
                .await
                .unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let elapsed = started.elapsed();
    let log = ns
        .pods()
        .logs("notebook", &LogParams::default())
        .await
        .unwrap();
    eprintln!("notebook pod log ({elapsed:?} from create to done):\n{log}");
    let done = ns.pods().get("notebook").await.unwrap();
    assert_eq!(phase(&done), "Succeeded", "{log}");

    let up: Value = serde_json::from_str(marked(&log, "UP").expect("an UP line")).unwrap();
    let name = up["name"].as_str().unwrap();
    eprintln!(
        "in a pod: `up --workers 1 --detach` ready after {:.1} s (its ready_seconds)",
        up["ready_seconds"].as_f64().unwrap_or_default()
    );
    assert_eq!(
        up["namespace"],
        ns.name.as_str(),
        "the namespace comes from the service account: {log}"
    );
    assert_eq!(
        up["scheduler_address"],
        format!("tls://{name}-scheduler.{}:8786", ns.name).as_str(),
        "inside the cluster the scheduler is reached by its Service, over TLS: {log}"
    );
    let dashboard = marked(&log, "DASHBOARD").unwrap_or_default();
    assert!(
        dashboard.starts_with("http://127.0.0.1:") && dashboard.ends_with("/status 200"),
        "the scheduler's HTTP server is private to its pod: the printed dashboard link is the \
         notebook pod's own forward (the detached supervisor's), and it answers there: {log}"
    );
    let list: Value = serde_json::from_str(marked(&log, "LIST").expect("a LIST line")).unwrap();
    assert!(list.to_string().contains(name), "list shows {name}: {log}");
    assert_eq!(
        marked(&log, "RESULT"),
        Some("1.0 WORKERS 2"),
        "the README example's mean, on the 2 workers scaled to: {log}"
    );
    let logs_lines: usize = marked(&log, "LOGS")
        .and_then(|l| l.split(' ').next()?.parse().ok())
        .expect("a LOGS line");
    assert!(
        logs_lines > 0,
        "dask-kube logs printed the pods' logs: {log}"
    );
    assert_eq!(
        marked(&log, "ADAPTED"),
        Some("1"),
        "`dask-kube adapt` from the pod: the controller pod shrank the idle cluster to its minimum: {log}"
    );
    assert_eq!(marked(&log, "DOWN"), Some(name), "{log}");
    wait_for("the cluster's pods to go", || async {
        ns.pod_names(&format!("dask.org/cluster-name={name}"))
            .await
            .is_empty()
    })
    .await;
    ns.delete().await;
}
