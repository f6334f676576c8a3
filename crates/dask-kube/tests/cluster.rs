//! Integration tests against the local control plane (`e2e-tests/local-cluster/cluster up`):
//! a real kube-apiserver, controller-manager and kube-scheduler, real nodes (kubelet,
//! containerd, kube-proxy, CoreDNS) running the real `dask scheduler` and `dask worker` in
//! containers, the real `dask-kube` binary, and a real
//! `distributed.Client` through the address dask-kube prints. Each test has its own
//! namespace. They are `#[ignore]`d, so `cargo test` shows them as ignored (never as passed);
//! the integration tier runs them with `--ignored` against the cluster, and there a missing
//! cluster fails them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed step fails the test

mod common;
mod in_cluster;

use common::{
    SERIAL, TestNamespace, client, cluster, dask_kube, fixture, json_of, run, running_workers,
    strip_ansi, wait_for,
};
use dask_kube::{Access, KubeCluster, PodTemplate};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::rbac::v1::Role;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

fn small_worker() -> String {
    fixture("small-worker.yml").to_str().unwrap().to_owned()
}

/// `up --detach --workers 3` gives 3 connected workers reachable through the printed
/// address after dask-kube exited; `scale 1` retires and removes 2; `down` leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn detached_up_scale_and_down() {
    let kube = cluster().await;
    let _serial = SERIAL.lock().await;
    let ns = TestNamespace::create(&kube, "dk-up").await;
    let state = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let up = json_of(&run(
        state.path(),
        &[
            "-n",
            &ns.name,
            "-o",
            "json",
            "up",
            "-f",
            &small_worker(),
            "--workers",
            "3",
            "--detach",
        ],
    ));
    let up_seconds = started.elapsed().as_secs_f64();
    let name = up["name"].as_str().unwrap().to_owned();
    let address = up["scheduler_address"].as_str().unwrap().to_owned();
    assert!(
        address.starts_with("tls://127.0.0.1:"),
        "TLS by default: {address}"
    );

    // A real Client on this machine, after `up` exited: 3 workers named after their pods.
    let seen = client(&["workers", &address]);
    assert_eq!(seen["workers"], 3, "{seen}");
    let mut pods = ns
        .pod_names(&format!(
            "dask.org/cluster-name={name},dask.org/component=worker"
        ))
        .await;
    pods.sort();
    assert_eq!(seen["names"], serde_json::json!(pods));
    eprintln!("FIGURE up --detach --workers 3: {up_seconds:.1}s until 3 workers connected");

    let listed = json_of(&run(state.path(), &["-n", &ns.name, "-o", "json", "list"]));
    let row = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .expect("listed");
    assert_eq!(row["workers"]["running"], 3);
    assert!(
        row["supervisor"].as_str().is_some_and(|s| s.contains(':')),
        "{row}"
    );

    let logs = run(state.path(), &["-n", &ns.name, "logs", &name]);
    assert!(logs.status.success());
    let text = String::from_utf8_lossy(&logs.stdout);
    assert!(
        text.contains("Scheduler at") && text.contains(&format!("==> pod/{}", pods[0])),
        "{text}"
    );

    // Scale down: two workers retired through the scheduler, their pods deleted.
    let started = Instant::now();
    let scaled = json_of(&run(
        state.path(),
        &["-n", &ns.name, "-o", "json", "scale", &name, "1"],
    ));
    let scale_seconds = started.elapsed().as_secs_f64();
    assert_eq!(scaled["retired"].as_array().unwrap().len(), 2, "{scaled}");
    assert!(
        scaled["not_retired"].as_array().unwrap().is_empty(),
        "{scaled}"
    );
    let gone = wait_for("two worker pods to be gone", || async {
        ns.pod_names(&format!(
            "dask.org/cluster-name={name},dask.org/component=worker"
        ))
        .await
        .len()
            == 1
    })
    .await;
    let seen = client(&["workers", &address]);
    assert_eq!(seen["workers"], 1, "{seen}");
    eprintln!(
        "FIGURE scale 3->1: {scale_seconds:.1}s retire+delete call, pods gone {:.1}s later",
        gone.as_secs_f64()
    );

    let down = run(state.path(), &["-n", &ns.name, "down", &name]);
    assert!(down.status.success());
    wait_for("zero pods after down", || async {
        ns.pod_names("app=dask").await.is_empty()
    })
    .await;
    assert!(
        ns.services()
            .get_opt(&dask_kube::service_name(&name))
            .await
            .unwrap()
            .is_none(),
        "the Service is gone"
    );
    let pid = up["supervisor_pid"].as_u64().unwrap() as u32;
    assert!(
        !dask_kube::is_supervisor(pid, &name),
        "the supervisor was stopped"
    );
    ns.delete().await;
}

/// `up --detach --adapt 1:4` grows under a real computation and shrinks after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn adapt_grows_under_load_and_shrinks_after() {
    let kube = cluster().await;
    let _serial = SERIAL.lock().await;
    let ns = TestNamespace::create(&kube, "dk-adapt").await;
    let state = tempfile::tempdir().unwrap();
    let up = json_of(&run(
        state.path(),
        &[
            "-n",
            &ns.name,
            "-o",
            "json",
            "up",
            "-f",
            &small_worker(),
            "--adapt",
            "1:4",
            "--detach",
        ],
    ));
    let name = up["name"].as_str().unwrap().to_owned();
    let address = up["scheduler_address"].as_str().unwrap().to_owned();
    assert_eq!(client(&["workers", &address])["workers"], 1);

    // 60 tasks of 2 s: 120 task-seconds, far above one worker's 5 s target duration.
    let started = Instant::now();
    let mut load = common::python_for(&address)
        .args([
            fixture("dask_client.py").to_str().unwrap(),
            "load",
            &address,
            "60",
            "2",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut most = 0;
    let mut reached_four = None;
    loop {
        let running = running_workers(&ns, &name).await;
        if running > most {
            most = running;
            eprintln!(
                "adapt: {running} running workers after {:.1}s",
                started.elapsed().as_secs_f64()
            );
        }
        if running == 4 && reached_four.is_none() {
            reached_four = Some(started.elapsed());
        }
        if load.try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            started.elapsed() < common::WAIT,
            "the computation did not finish"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(load.wait().unwrap().success(), "the computation failed");
    let computed = started.elapsed();
    let reached_four = reached_four.expect("adapt reached the maximum of 4 workers under load");
    // Idle again: back to the minimum, through retirement.
    let shrunk = wait_for("adapt to shrink to 1 worker", || async {
        running_workers(&ns, &name).await == 1
            && ns
                .pod_names(&format!(
                    "dask.org/cluster-name={name},dask.org/component=worker"
                ))
                .await
                .len()
                == 1
    })
    .await;
    assert_eq!(client(&["workers", &address])["workers"], 1);
    eprintln!(
        "FIGURE adapt 1:4: 4 workers {:.1}s after load started, load done in {:.1}s, back to 1 worker {:.1}s after",
        reached_four.as_secs_f64(),
        computed.as_secs_f64(),
        shrunk.as_secs_f64()
    );
    assert!(
        run(state.path(), &["-n", &ns.name, "down", &name])
            .status
            .success()
    );
    wait_for("zero pods after down", || async {
        ns.pod_names("app=dask").await.is_empty()
    })
    .await;
    ns.delete().await;
}

/// Starts a foreground `up`, returns the child and its cluster name once it printed the address.
fn foreground_up(
    state: &std::path::Path,
    ns: &str,
    workers: &str,
) -> (std::process::Child, String) {
    let (child, lines) = foreground(
        state,
        &["-n", ns, "up", "-f", &small_worker(), "--workers", workers],
        "ready in",
    );
    let name = printed_cluster_name(&lines);
    (child, name)
}

/// The cluster name from `up`'s "cluster NAME in namespace NS" line.
fn printed_cluster_name(lines: &[String]) -> String {
    lines
        .iter()
        .find_map(|l| l.strip_prefix("cluster "))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("up printed the cluster name")
        .to_owned()
}

/// Starts `dask-kube args...` in the foreground and returns it with the stdout lines it
/// printed up to the one starting with `until`.
fn foreground(
    state: &std::path::Path,
    args: &[&str],
    until: &str,
) -> (std::process::Child, Vec<String>) {
    let mut child = dask_kube(state)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        eprintln!("dask-kube: {line}");
        let done = line.starts_with(until);
        lines.push(line);
        if done {
            return (child, lines);
        }
    }
    let status = child.wait().unwrap();
    panic!("dask-kube {args:?} ended ({status}) before printing {until:?}: {lines:?}");
}

/// The value after `key: ` in printed lines.
fn printed<'a>(lines: &'a [String], key: &str) -> &'a str {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(": ")))
        .unwrap_or_else(|| panic!("no {key:?} line in {lines:?}"))
}

/// The HTTP status of GET `url` (following redirects), from this machine, as a browser
/// opening the link would see it.
fn http_status(url: &str) -> String {
    let out = std::process::Command::new("curl")
        .args([
            "-sSL",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "20",
            url,
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// dask-kube killed with SIGKILL, then the scheduler pod deleted: the garbage collector
/// removes every worker pod and the Service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn sigkill_then_deleting_the_scheduler_leaves_nothing() {
    let kube = cluster().await;
    let _serial = SERIAL.lock().await;
    let ns = TestNamespace::create(&kube, "dk-gc").await;
    let state = tempfile::tempdir().unwrap();
    let (mut child, name) = foreground_up(state.path(), &ns.name, "2");
    assert_eq!(running_workers(&ns, &name).await, 2);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    child.wait().unwrap();
    assert_eq!(
        ns.pod_names("app=dask").await.len(),
        3,
        "nothing is deleted by a killed client"
    );
    let started = Instant::now();
    ns.pods()
        .delete(&name, &DeleteParams::background())
        .await
        .unwrap();
    wait_for(
        "the garbage collector to remove the workers and the Service",
        || async {
            ns.pod_names("app=dask").await.is_empty()
                && ns
                    .services()
                    .get_opt(&dask_kube::service_name(&name))
                    .await
                    .unwrap()
                    .is_none()
        },
    )
    .await;
    eprintln!(
        "FIGURE GC after deleting the scheduler pod: {:.1}s to zero pods",
        started.elapsed().as_secs_f64()
    );
    ns.delete().await;
}

/// SIGTERM to a foreground `up` retires and deletes everything it made, and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn sigterm_in_the_foreground_deletes_everything() {
    let kube = cluster().await;
    let _serial = SERIAL.lock().await;
    let ns = TestNamespace::create(&kube, "dk-term").await;
    let state = tempfile::tempdir().unwrap();
    let (mut child, name) = foreground_up(state.path(), &ns.name, "1");
    assert_eq!(running_workers(&ns, &name).await, 1);
    let started = Instant::now();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(
        ns.pod_names("app=dask").await.is_empty(),
        "up waited until the pods were gone"
    );
    assert!(
        ns.services()
            .get_opt(&dask_kube::service_name(&name))
            .await
            .unwrap()
            .is_none()
    );
    eprintln!(
        "FIGURE SIGTERM shutdown: {:.1}s",
        started.elapsed().as_secs_f64()
    );
    ns.delete().await;
}

/// A scheduler that exits: a clear error with its log, nothing left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn failing_scheduler_is_reported_and_cleaned_up() {
    let kube = cluster().await;
    let _serial = SERIAL.lock().await;
    let ns = TestNamespace::create(&kube, "dk-fail").await;
    let state = tempfile::tempdir().unwrap();
    let failing = fixture("failing-scheduler.yml");
    let out = run(
        state.path(),
        &[
            "-n",
            &ns.name,
            "up",
            "-f",
            &small_worker(),
            "--scheduler-template",
            failing.to_str().unwrap(),
            "--workers",
            "1",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("scheduler pod") && err.contains("failed"),
        "{err}"
    );
    assert!(
        err.contains("scheduler config is broken"),
        "the scheduler's log is quoted: {err}"
    );
    assert_nothing_left(&ns).await;
    ns.delete().await;
}

/// Workers that cannot start (`dask worker` refuses a flag): `up` reports it within seconds,
/// quoting a worker's log, instead of waiting out its 300 s for workers that cannot come;
/// nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn workers_that_cannot_start_are_reported_and_cleaned_up() {
    let kube = cluster().await;
    let _serial = SERIAL.lock().await;
    let ns = TestNamespace::create(&kube, "dk-wfail").await;
    let state = tempfile::tempdir().unwrap();
    let refused = fixture("refused-flag-worker.yml");
    let out = run(
        state.path(),
        &[
            "-n",
            &ns.name,
            "up",
            "-f",
            refused.to_str().unwrap(),
            "--workers",
            "2",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    // Without the check this is "timed out after 300s waiting for 2 workers to connect".
    assert!(
        err.contains("2 workers cannot connect") && err.contains("every worker pod ended"),
        "{err}"
    );
    // `dask worker` takes unknown options as preload arguments, so the typo leaves `1GB`
    // as an extra argument, which click refuses after printing the usage.
    assert!(
        err.contains("last log lines") && err.contains("Usage: dask worker") && err.contains("1GB"),
        "the worker's log (click's complaint) is quoted: {err}"
    );
    assert_nothing_left(&ns).await;
    ns.delete().await;
}

/// A failed `up` deleted what it made: no Dask pod (after their grace) and no Service.
async fn assert_nothing_left(ns: &TestNamespace) {
    wait_for("nothing left", || async {
        ns.pod_names("app=dask").await.is_empty()
    })
    .await;
    let services = ns.services().list(&Default::default()).await.unwrap();
    assert!(
        services.items.is_empty(),
        "Services left: {:?}",
        services.items
    );
}

/// A namespace that does not exist: says so, exit 3, nothing created anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn missing_namespace_is_reported() {
    let _kube = cluster().await;
    let state = tempfile::tempdir().unwrap();
    let out = run(
        state.path(),
        &["-n", "dk-does-not-exist", "up", "-f", &small_worker()],
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("namespace \"dk-does-not-exist\" does not exist")
    );
}

/// The library API end to end: builder, scale, workers, close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn library_scale_workers_and_close() {
    let kube = cluster().await;
    let _serial = SERIAL.lock().await;
    let ns = TestNamespace::create(&kube, "dk-lib").await;
    let template = PodTemplate::from_file(fixture("small-worker.yml"), "worker").unwrap();
    let cluster = KubeCluster::builder()
        .worker_template(template)
        .namespace(&ns.name)
        .name_template("lib-{uuid}")
        .start()
        .await
        .unwrap();
    assert!(cluster.name().starts_with("lib-"));
    // The dashboard link works from this machine (a second local listener).
    let link = cluster.dashboard_link().to_owned();
    let host_port = link
        .trim_start_matches("http://")
        .trim_end_matches("/status")
        .to_owned();
    assert!(host_port.starts_with("127.0.0.1:"), "{link}");
    let mut stream = tokio::net::TcpStream::connect(&host_port).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stream, b"GET /health HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut answer)
        .await
        .unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"),
        "{answer}"
    );
    cluster.scale(2).await.unwrap();
    cluster.wait_for_workers(2, common::WAIT).await.unwrap();
    let workers = cluster.workers().await.unwrap();
    assert_eq!(workers.len(), 2);
    assert!(
        workers.iter().all(|w| w.connected.len() == 1),
        "{workers:?}"
    );
    // Created pods are what dask-kube sent: the admission policy (if installed) had
    // nothing to add, so the defaults appear exactly once.
    let pod = ns.pods().get(&workers[0].pod).await.unwrap();
    let spec = pod.spec.unwrap();
    let dask_tolerations = spec
        .tolerations
        .unwrap()
        .iter()
        .filter(|t| {
            t.key
                .as_deref()
                .is_some_and(|k| k.starts_with("k8s.dask.org"))
        })
        .count();
    assert_eq!(dask_tolerations, 2);
    let args = spec.containers[0].args.clone().unwrap();
    assert_eq!(
        args.iter().filter(|a| *a == "--name").count(),
        1,
        "{args:?}"
    );
    let logs = cluster.logs().await.unwrap();
    assert_eq!(logs.len(), 3);
    let report = cluster.close().await.unwrap();
    assert!(report.leftovers.is_empty());
    assert!(ns.pod_names("app=dask").await.is_empty());
    ns.delete().await;
}

/// Through port-forward, dask-kube waits for the scheduler by following its log for the line
/// `Scheduler at:`; a scheduler configured to log nothing at INFO never prints it, and is
/// still reached (by asking its HTTP API meanwhile), with its workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn a_scheduler_that_never_logs_its_address_is_reached() {
    let kube = cluster().await;
    let _serial = SERIAL.lock().await;
    let ns = TestNamespace::create(&kube, "dk-quiet").await;
    let worker = PodTemplate::from_file(fixture("small-worker.yml"), "worker").unwrap();
    let scheduler = PodTemplate::from_file(fixture("quiet-scheduler.yml"), "scheduler").unwrap();
    let cluster = tokio::time::timeout(
        common::WAIT,
        KubeCluster::builder()
            .worker_template(worker)
            .scheduler_template(scheduler)
            .namespace(&ns.name)
            .access(Access::PortForward)
            .n_workers(1)
            .start(),
    )
    .await
    .expect("the quiet scheduler is reached before the test's wait ends")
    .unwrap();
    cluster.wait_for_workers(1, common::WAIT).await.unwrap();
    let logs = cluster.logs().await.unwrap();
    let scheduler_log = &logs[cluster.name()];
    assert!(
        !scheduler_log.contains("Scheduler at:"),
        "the fixture must keep the scheduler quiet, else this tests nothing: {scheduler_log}"
    );
    let report = cluster.close().await.unwrap();
    assert!(report.leftovers.is_empty());
    ns.delete().await;
}

/// deploy/rbac.yaml is enough for the whole life cycle, and a service account without it
/// gets a message that names the missing permission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn rbac_manifest_grants_what_dask_kube_needs() {
    let kube = cluster().await;
    let _serial = SERIAL.lock().await;
    let ns = TestNamespace::create(&kube, "dk-rbac").await;
    let state = tempfile::tempdir().unwrap();
    let rbac = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/rbac.yaml");
    let applied = std::process::Command::new("kubectl")
        .env("KUBECONFIG", common::kubeconfig())
        .args(["apply", "-n", &ns.name, "-f", rbac.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );

    let nobody = common::service_account_kubeconfig(&kube, &ns.name, "nobody", state.path()).await;
    let out = dask_kube(state.path())
        .env("KUBECONFIG", &nobody)
        .args(["up", "-f", &small_worker()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "lacks permission to create pods in namespace {}",
            ns.name
        )) && err.contains("deploy/rbac.yaml"),
        "{err}"
    );

    let allowed =
        common::service_account_kubeconfig(&kube, &ns.name, "dask-kube", state.path()).await;
    let as_sa = |args: &[&str]| {
        let out = dask_kube(state.path())
            .env("KUBECONFIG", &allowed)
            .args(args)
            .output()
            .unwrap();
        eprintln!(
            "$ dask-kube {} -> {}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let up = json_of(&as_sa(&[
        "-o",
        "json",
        "up",
        "-f",
        &small_worker(),
        "--workers",
        "1",
        "--detach",
    ]));
    let name = up["name"].as_str().unwrap().to_owned();
    assert_eq!(
        up["namespace"],
        ns.name.as_str(),
        "the namespace comes from the kubeconfig context"
    );
    assert_eq!(
        client(&["workers", up["scheduler_address"].as_str().unwrap()])["workers"],
        1
    );
    assert!(as_sa(&["scale", &name, "0"]).status.success());
    assert!(as_sa(&["logs", &name]).status.success());
    assert!(as_sa(&["list"]).status.success());
    assert!(as_sa(&["down", &name]).status.success());
    wait_for("zero pods", || async {
        ns.pod_names("app=dask").await.is_empty()
    })
    .await;
    ns.delete().await;
}

/// The dashboard link dask-kube prints answers, in every mode outside the cluster:
/// `up --detach` (the supervisor keeps the printed port), `list`, `attach`, and a
/// foreground `up`; and a plain `distributed.Client(address)` reports it when the printed
/// `DASK_DISTRIBUTED__DASHBOARD__LINK` export is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn the_printed_dashboard_link_answers_in_every_mode() {
    let kube = cluster().await;
    let _serial = SERIAL.lock().await;
    let ns = TestNamespace::create(&kube, "dk-dash").await;
    let state = tempfile::tempdir().unwrap();

    // Detached.
    let up = json_of(&run(
        state.path(),
        &[
            "-n",
            &ns.name,
            "-o",
            "json",
            "up",
            "-f",
            &small_worker(),
            "--workers",
            "1",
            "--detach",
        ],
    ));
    let name = up["name"].as_str().unwrap().to_owned();
    let address = up["scheduler_address"].as_str().unwrap().to_owned();
    let dashboard = up["dashboard"].as_str().unwrap().to_owned();
    assert!(dashboard.starts_with("http://127.0.0.1:"), "{dashboard}");
    assert_eq!(http_status(&dashboard), "200", "detached up: {dashboard}");
    assert_eq!(
        up["dashboard_env"]["DASK_DISTRIBUTED__DASHBOARD__LINK"], up["dashboard"],
        "{up}"
    );
    let seen = common::python_for(&address)
        .arg(fixture("dask_client.py"))
        .args(["dashboard", &address])
        .env("DASK_DISTRIBUTED__DASHBOARD__LINK", &dashboard)
        .output()
        .unwrap();
    assert!(
        seen.status.success(),
        "{}",
        String::from_utf8_lossy(&seen.stderr)
    );
    let seen: Value = serde_json::from_slice(&seen.stdout).unwrap();
    assert_eq!(
        seen["dashboard_link"],
        dashboard.as_str(),
        "Client(address).dashboard_link"
    );

    // list shows the supervisor's link.
    let listed = json_of(&run(state.path(), &["-n", &ns.name, "-o", "json", "list"]));
    let row = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name.as_str())
        .unwrap();
    assert_eq!(row["dashboard"], dashboard.as_str(), "{row}");

    // attach in the foreground: its own listeners, its own link.
    let (mut attach, lines) =
        foreground(state.path(), &["-n", &ns.name, "attach", &name], "export ");
    let attached = printed(&lines, "dashboard").to_owned();
    assert_ne!(attached, dashboard, "attach listens on ports of its own");
    assert_eq!(http_status(&attached), "200", "attach: {attached}");
    kill(Pid::from_raw(attach.id() as i32), Signal::SIGTERM).unwrap();
    assert!(attach.wait().unwrap().success());
    assert!(
        run(state.path(), &["-n", &ns.name, "down", &name])
            .status
            .success()
    );

    // Foreground up.
    let (mut up, lines) = foreground(
        state.path(),
        &[
            "-n",
            &ns.name,
            "up",
            "-f",
            &small_worker(),
            "--workers",
            "1",
        ],
        "ready in",
    );
    let link = printed(&lines, "dashboard").to_owned();
    assert_eq!(http_status(&link), "200", "foreground up: {link}");
    assert!(
        lines.iter().any(|l| l
            .starts_with(&format!("export DASK_DISTRIBUTED__DASHBOARD__LINK={link} "))
            && l.contains(" DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT=")),
        "the export for a plain Client (its dashboard link and its certificate): {lines:?}"
    );
    kill(Pid::from_raw(up.id() as i32), Signal::SIGTERM).unwrap();
    assert!(up.wait().unwrap().success());
    wait_for("zero pods", || async {
        ns.pod_names("app=dask").await.is_empty()
    })
    .await;
    ns.delete().await;
}

/// `kubernetes.count.max` caps `up --workers`, `scale` and `adapt --max`: each says so on
/// stderr naming the key, and `up` waits for the capped count instead of timing out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn count_max_caps_up_scale_and_adapt() {
    let kube = cluster().await;
    let _serial = SERIAL.lock().await;
    let ns = TestNamespace::create(&kube, "dk-cap").await;
    let state = tempfile::tempdir().unwrap();
    let config = state.path().join("dask.yaml");
    std::fs::write(&config, "kubernetes:\n  count:\n    max: 2\n").unwrap();
    let capped = |args: &[&str]| {
        let out = dask_kube(state.path())
            .env("DASK_CONFIG", &config)
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!(
            "$ dask-kube {}\n{}{stderr}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        (json_of(&out), stderr)
    };
    let started = Instant::now();
    let (up, stderr) = capped(&[
        "-n",
        &ns.name,
        "-o",
        "json",
        "up",
        "-f",
        &small_worker(),
        "--workers",
        "3",
        "--detach",
        "--wait-timeout",
        "120",
    ]);
    assert!(
        stderr.contains("asked for 3 workers; capped at 2 by kubernetes.count.max"),
        "{stderr}"
    );
    assert_eq!(up["workers"], 2, "{up}");
    assert_eq!(up["capped"], serde_json::json!({"requested": 3, "max": 2}));
    eprintln!(
        "FIGURE up --workers 3 with count.max 2: {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let name = up["name"].as_str().unwrap().to_owned();
    assert_eq!(
        client(&["workers", up["scheduler_address"].as_str().unwrap()])["workers"],
        2
    );

    let (scaled, stderr) = capped(&[
        "-n", &ns.name, "-o", "json", "scale", &name, "5", "--wait", "60",
    ]);
    assert!(
        stderr.contains("asked for 5 workers; capped at 2"),
        "{stderr}"
    );
    assert_eq!(scaled["target"], 2, "{scaled}");
    assert!(scaled["created"].as_array().unwrap().is_empty(), "{scaled}");

    let mut adapt = dask_kube(state.path())
        .env("DASK_CONFIG", &config)
        .args([
            "-n",
            &ns.name,
            "adapt",
            &name,
            "--min",
            "1",
            "--max",
            "5",
            "--foreground",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(adapt.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let done = line.starts_with("adapting ");
        seen.push(line);
        if done {
            break;
        }
    }
    // Keep reading, so the adapt process can still write its logs until it stops.
    let drain = std::thread::spawn(move || lines.count());
    assert!(
        seen.iter()
            .any(|l| l.contains("asked for 5 workers; capped at 2 by kubernetes.count.max")),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|l| l.contains("between 1:2 workers")),
        "{seen:?}"
    );
    kill(Pid::from_raw(adapt.id() as i32), Signal::SIGTERM).unwrap();
    assert!(adapt.wait().unwrap().success());
    drain.join().unwrap();
    assert!(
        run(state.path(), &["-n", &ns.name, "down", &name])
            .status
            .success()
    );
    wait_for("zero pods", || async {
        ns.pod_names("app=dask").await.is_empty()
    })
    .await;
    ns.delete().await;
}

/// Lost workers are replaced within the start window. `adapt --min 6 --max 6
/// --start-window 2` over workers that exit a few seconds after they start and never
/// connect (the storm of a lost scheduler or of nodes too busy for `--death-timeout`): the
/// first 6 start at once (growth is not held), and once a replacement exists, at most 2 pods
/// are active (starting) at any moment; replacements go on at that pace. Before, each poll
/// replaced every ended pod at once: 6 active again within a second of the first wave ending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn lost_workers_are_replaced_within_the_start_window() {
    const WINDOW: usize = 2;
    let kube = cluster().await;
    let _serial = SERIAL.lock().await;
    let ns = TestNamespace::create(&kube, "dk-storm").await;
    let state = tempfile::tempdir().unwrap();
    let up = json_of(&run(
        state.path(),
        &[
            "-n",
            &ns.name,
            "-o",
            "json",
            "up",
            "-f",
            fixture("exiting-worker.yml").to_str().unwrap(),
            "--workers",
            "0",
            "--detach",
        ],
    ));
    let name = up["name"].as_str().unwrap().to_owned();
    let mut adapt = dask_kube(state.path())
        .args([
            "-n",
            &ns.name,
            "adapt",
            &name,
            "--min",
            "6",
            "--max",
            "6",
            "--interval",
            "0.5",
            "--start-window",
            &WINDOW.to_string(),
            "--foreground",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(adapt.stderr.take().unwrap());
    let log = std::thread::spawn(move || stderr.lines().map_while(Result::ok).collect::<Vec<_>>());

    let pods = ns.pods();
    let selector = format!("dask.org/cluster-name={name},dask.org/component=worker");
    let listing = kube::api::ListParams::default().labels(&selector);
    let started = Instant::now();
    let mut first_wave: Option<std::collections::BTreeSet<String>> = None;
    let mut replacements = std::collections::BTreeSet::new();
    let mut most_active_after = 0;
    let mut most_active_ever = 0;
    while started.elapsed() < Duration::from_secs(60) {
        let listed = pods.list(&listing).await.unwrap();
        let active: Vec<&Pod> = listed
            .items
            .iter()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && !matches!(
                        p.status.as_ref().and_then(|s| s.phase.as_deref()),
                        Some("Succeeded" | "Failed")
                    )
            })
            .collect();
        most_active_ever = most_active_ever.max(active.len());
        let names: std::collections::BTreeSet<String> = listed
            .items
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        match &first_wave {
            None if active.len() == 6 => first_wave = Some(names),
            None => {}
            Some(first) => {
                replacements.extend(names.difference(first).cloned());
                if !replacements.is_empty() {
                    most_active_after = most_active_after.max(active.len());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    kill(Pid::from_raw(adapt.id() as i32), Signal::SIGTERM).unwrap();
    assert!(adapt.wait().unwrap().success());
    let log = log.join().unwrap();
    eprintln!(
        "FIGURE adapt 6:6 over exiting workers, start window {WINDOW}: {} replacements in 60 s, at most {most_active_after} active once replacing began (at most {most_active_ever} ever)",
        replacements.len()
    );
    assert!(
        first_wave.is_some(),
        "the first 6 workers were never active at once (growth is not held): {log:#?}"
    );
    assert!(
        most_active_after <= WINDOW,
        "{most_active_after} pods active at once while replacing, more than the window of {WINDOW}: {log:#?}"
    );
    assert!(
        replacements.len() >= 2 * WINDOW,
        "only {} replacements in 60 s: replacing stalled: {log:#?}",
        replacements.len()
    );
    assert!(
        log.iter()
            .any(|l| l.contains("replacements of ended workers wait for the start window")),
        "{log:#?}"
    );
    assert!(
        run(state.path(), &["-n", &ns.name, "down", &name])
            .status
            .success()
    );
    wait_for("zero pods", || async {
        ns.pod_names("app=dask").await.is_empty()
    })
    .await;
    ns.delete().await;
}

/// Scale to a few hundred Pending pods and back, through the real API server and the live
/// policy webhook: the count is exact both ways (no duplicate from a retried create, none
/// missing), and every pod carries its create token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn scale_to_hundreds_of_pending_pods_and_back_exactly() {
    const N: usize = 300;
    let kube = cluster().await;
    let _serial = SERIAL.lock().await;
    let ns = TestNamespace::create(&kube, "dk-many").await;
    let template = PodTemplate::from_file(fixture("pending-worker.yml"), "worker").unwrap();
    let scheduler = PodTemplate::from_file(fixture("plain-scheduler.yml"), "scheduler").unwrap();
    let cluster = KubeCluster::builder()
        .worker_template(template)
        .scheduler_template(scheduler)
        .namespace(&ns.name)
        .name_template("many-{uuid}")
        .start()
        .await
        .unwrap();
    let name = cluster.name().to_owned();
    let selector = format!("dask.org/cluster-name={name},dask.org/component=worker");
    let started = Instant::now();
    let report = cluster.scale(N).await.unwrap();
    let up = started.elapsed();
    assert_eq!(report.created.len(), N, "{:?}", report.failed);
    let pods = ns
        .pods()
        .list(&kube::api::ListParams::default().labels(&selector))
        .await
        .unwrap();
    assert_eq!(pods.items.len(), N, "exactly N pods exist");
    assert!(pods.items.iter().all(|p| {
        p.metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key("dask.org/create-token"))
            && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending")
    }));
    let mut names: Vec<_> = pods
        .items
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), N);
    // Scaling to the same N again changes nothing.
    let again = cluster.scale(N).await.unwrap();
    assert!(
        again.created.is_empty() && again.deleted.is_empty(),
        "{again:?}"
    );
    let started = Instant::now();
    let down = cluster.scale(0).await.unwrap();
    assert_eq!(down.deleted.len(), N, "{:?}", down.failed);
    wait_for("the Pending pods to be gone", || async {
        ns.pod_names(&selector).await.is_empty()
    })
    .await;
    let gone = started.elapsed();
    eprintln!(
        "FIGURE scale 0 -> {N} Pending pods: {:.2}s ({:.0} pods/s); {N} -> 0 and gone: {:.2}s",
        up.as_secs_f64(),
        N as f64 / up.as_secs_f64(),
        gone.as_secs_f64()
    );
    cluster.close().await.unwrap();
    ns.delete().await;
}

/// Issue 9 §3: adapting lives in the cluster. `up --adapt 0:3 --idle-timeout 30s` from a
/// client that is then SIGKILLed: the controller pod (under the `dask-kube-controller`
/// account of rbac.yaml) grows the cluster under a computation submitted from a pod through
/// the Service, shrinks it to 0 afterwards, and once the scheduler's idle timeout ends it,
/// deletes the cluster: no pod is left, with no client process at any point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn the_cluster_adapts_and_ends_itself_after_its_client_is_killed() {
    let kube = cluster().await;
    let _serial = SERIAL.lock().await;
    let ns = TestNamespace::create(&kube, "dk-selfrun").await;
    common::apply_rbac(&ns.name);
    let state = tempfile::tempdir().unwrap();
    let up_started = Instant::now();
    let (mut client_process, lines) = foreground(
        state.path(),
        &[
            "-n",
            &ns.name,
            "up",
            "-f",
            &small_worker(),
            "--adapt",
            "0:3",
            "--idle-timeout",
            "30s",
            "--interval",
            "0.5",
            "--wait-count",
            "2",
            "--cooldown",
            "3",
        ],
        "ready in",
    );
    let name = printed_cluster_name(&lines);
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
    kill(Pid::from_raw(client_process.id() as i32), Signal::SIGKILL).unwrap();
    client_process.wait().unwrap();
    eprintln!(
        "up to a running controller pod in {:.1}s; client SIGKILLed",
        up_started.elapsed().as_secs_f64()
    );

    // A computation from inside the cluster (no port-forward, no dask-kube process):
    // 30 tasks of 2 s, far above what no worker does in the 5 s target duration. The client
    // script reaches the pod as a ConfigMap.
    let script: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "load-client"},
        "data": {"dask_client.py": std::fs::read_to_string(fixture("dask_client.py")).unwrap()},
    }))
    .unwrap();
    Api::<ConfigMap>::namespaced(kube.clone(), &ns.name)
        .create(&PostParams::default(), &script)
        .await
        .unwrap();
    let load: Pod = serde_json::from_value(json!({
        "metadata": {"name": "load"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "load",
                "image": "ghcr.io/dask/dask:latest",
                "command": [
                    "python",
                    "/opt/client/dask_client.py",
                    "load",
                    format!("tls://{name}-scheduler.{}:8786", ns.name),
                    "30",
                    "2",
                ],
                // A client inside the cluster presents the cluster's certificate too: its
                // Secret, mounted as the scheduler and workers have it.
                "env": common::tls_client_env("/etc/dask-kube/tls"),
                "volumeMounts": [
                    {"name": "client", "mountPath": "/opt/client"},
                    {"name": "tls", "mountPath": "/etc/dask-kube/tls", "readOnly": true},
                ],
            }],
            "volumes": [
                {"name": "client", "configMap": {"name": "load-client"}},
                {"name": "tls", "secret": {"secretName": format!("{name}-tls")}},
            ],
        },
    }))
    .unwrap();
    let killed = Instant::now();
    ns.pods()
        .create(&PostParams::default(), &load)
        .await
        .unwrap();
    let mut most = 0;
    let load_phase = loop {
        let running = running_workers(&ns, &name).await;
        if running > most {
            most = running;
            eprintln!(
                "no client: {running} running workers {:.1}s after the kill",
                killed.elapsed().as_secs_f64()
            );
        }
        let phase = ns
            .pods()
            .get("load")
            .await
            .unwrap()
            .status
            .and_then(|s| s.phase)
            .unwrap_or_default();
        if matches!(phase.as_str(), "Succeeded" | "Failed") {
            break phase;
        }
        assert!(
            killed.elapsed() < common::WAIT * 2,
            "the computation did not finish"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let computed = killed.elapsed();
    let load_log = ns
        .pods()
        .logs("load", &Default::default())
        .await
        .unwrap_or_default();
    assert_eq!(
        load_phase, "Succeeded",
        "the computation failed: {load_log}"
    );
    assert!(
        most >= 2,
        "the controller grew the cluster under load with no client (most running: {most})"
    );
    let shrunk = wait_for(
        "the controller to shrink the cluster to 0 workers",
        || async {
            ns.pod_names(&format!(
                "dask.org/cluster-name={name},dask.org/component=worker"
            ))
            .await
            .is_empty()
        },
    )
    .await;
    let ended = wait_for("the idle cluster to end itself: no pod left", || async {
        ns.pod_names(&format!("dask.org/cluster-name={name}"))
            .await
            .is_empty()
    })
    .await;
    assert!(
        ns.services()
            .get_opt(&dask_kube::service_name(&name))
            .await
            .unwrap()
            .is_none_or(|s| s.metadata.deletion_timestamp.is_some()),
        "the Service goes with the scheduler pod"
    );
    eprintln!(
        "FIGURE adapt with no client: {most} workers under load, computation done {:.1}s after the kill, 0 workers {:.1}s later, idle timeout (30s) to 0 pods {:.1}s after that",
        computed.as_secs_f64(),
        shrunk.as_secs_f64(),
        ended.as_secs_f64()
    );
    ns.delete().await;
}

/// `dask-kube adapt NAME` from any client replaces the controller's range, `--off`
/// deletes the controller pod and leaves the workers; without rbac.yaml's controller
/// account, `up --adapt` says why and adapts from its own process instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn adapt_from_any_client_changes_or_stops_the_controller() {
    let kube = cluster().await;
    let _serial = SERIAL.lock().await;
    let ns = TestNamespace::create(&kube, "dk-ctl").await;
    let state = tempfile::tempdir().unwrap();
    // No rbac.yaml yet: no controller account, so the detached supervisor adapts.
    let first = json_of(&run(
        state.path(),
        &[
            "-n",
            &ns.name,
            "-o",
            "json",
            "up",
            "-f",
            &small_worker(),
            "--adapt",
            "0:2",
            "--detach",
        ],
    ));
    let first_name = first["name"].as_str().unwrap();
    assert!(first["controller"].is_null(), "{first}");
    let why = first["controller_unavailable"].as_str().unwrap_or_default();
    assert!(
        why.contains("dask-kube-controller"),
        "up says why the cluster has no controller pod: {first}"
    );
    assert!(
        ns.pods()
            .get_opt(&format!("{first_name}-controller"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        run(state.path(), &["-n", &ns.name, "down", first_name])
            .status
            .success()
    );

    common::apply_rbac(&ns.name);
    let up = json_of(&run(
        state.path(),
        &[
            "-n",
            &ns.name,
            "-o",
            "json",
            "up",
            "-f",
            &small_worker(),
            "--detach",
        ],
    ));
    let name = up["name"].as_str().unwrap().to_owned();
    let controller = format!("{name}-controller");
    let adapt = run(
        state.path(),
        &["-n", &ns.name, "adapt", &name, "--min", "1", "--max", "2"],
    );
    assert!(adapt.status.success());
    assert!(
        String::from_utf8_lossy(&adapt.stderr).contains("in the cluster"),
        "{}",
        String::from_utf8_lossy(&adapt.stderr)
    );
    let args = |pod: Pod| -> Vec<String> {
        pod.spec.unwrap().containers[0]
            .args
            .clone()
            .unwrap_or_default()
    };
    let pod = ns.pods().get(&controller).await.unwrap();
    assert!(args(pod).windows(2).any(|w| w == ["--adapt", "1:2"]));
    let grown = wait_for(
        "the controller to start the minimum of 1 worker",
        || async { running_workers(&ns, &name).await == 1 },
    )
    .await;
    // A new range replaces the pod.
    assert!(
        run(
            state.path(),
            &["-n", &ns.name, "adapt", &name, "--min", "1", "--max", "3"],
        )
        .status
        .success()
    );
    let pod = ns.pods().get(&controller).await.unwrap();
    assert!(args(pod).windows(2).any(|w| w == ["--adapt", "1:3"]));
    // Off: no controller pod; the worker stays.
    assert!(
        run(state.path(), &["-n", &ns.name, "adapt", &name, "--off"])
            .status
            .success()
    );
    assert!(ns.pods().get_opt(&controller).await.unwrap().is_none());
    assert_eq!(running_workers(&ns, &name).await, 1);
    eprintln!(
        "FIGURE adapt from a client: controller started the minimum worker in {:.1}s",
        grown.as_secs_f64()
    );
    assert!(
        run(state.path(), &["-n", &ns.name, "down", &name])
            .status
            .success()
    );
    wait_for("zero pods after down", || async {
        ns.pod_names("app=dask").await.is_empty()
    })
    .await;
    ns.delete().await;
}

/// The rules of the `dask-kube` Role in deploy/rbac.yaml, one (resource, verb) each.
const DASK_KUBE_RULES: &[(&str, &str)] = &[
    ("pods", "create"),
    ("pods", "delete"),
    ("pods", "get"),
    ("pods", "list"),
    ("pods", "watch"),
    ("pods", "patch"),
    ("pods/log", "get"),
    ("pods/portforward", "get"),
    ("pods/portforward", "create"),
    ("services", "create"),
    ("services", "patch"),
    ("services", "delete"),
    ("podtemplates", "create"),
    ("podtemplates", "get"),
    ("secrets", "create"),
    ("secrets", "get"),
];

/// Issue 9 §4, least privilege proven: for each rule of the `dask-kube` Role, the whole
/// life cycle from outside the cluster (up --detach, list, the client's certificate, scale
/// up, logs, scale down retiring, down) runs as the ServiceAccount with that one verb
/// removed. Some step must
/// fail (else the rule is not needed and must go), and its error must name the verb and the
/// resource. Nothing here has cluster scope: the ServiceAccount has only the namespaced Role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn every_rule_of_rbac_yaml_is_needed_and_its_absence_is_named() {
    let kube = cluster().await;
    let _serial = SERIAL.lock().await;
    let ns = TestNamespace::create(&kube, "dk-rules").await;
    common::apply_rbac(&ns.name);
    let roles: kube::Api<Role> = kube::Api::namespaced(kube.clone(), &ns.name);
    let full = roles.get("dask-kube").await.unwrap();
    let state = tempfile::tempdir().unwrap();
    let sa = common::service_account_kubeconfig(&kube, &ns.name, "dask-kube", state.path()).await;
    assert_role_grants_exactly(&full, DASK_KUBE_RULES);
    let as_sa = |args: &[&str]| {
        let out = dask_kube(state.path())
            .env("KUBECONFIG", &sa)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The life cycle; returns the first step that failed, with its stderr.
    let life_cycle = || {
        let (ok, stdout, stderr) = as_sa(&[
            "-o",
            "json",
            "up",
            "-f",
            &small_worker(),
            "--workers",
            "0",
            "--detach",
        ]);
        if !ok {
            return (None, Some(("up --detach".to_owned(), stderr)));
        }
        let up: Value = serde_json::from_str(&stdout).unwrap();
        let name = up["name"].as_str().unwrap().to_owned();
        // `list` shows who holds the cluster's address (the supervisor records itself on
        // the scheduler pod); when it could not, its log says why.
        let (ok, stdout, stderr) = as_sa(&["-o", "json", "list"]);
        if !ok {
            return (Some(name), Some(("list".to_owned(), stderr)));
        }
        let rows: Value = serde_json::from_str(&stdout).unwrap();
        let recorded = rows
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == name.as_str() && !r["supervisor"].is_null());
        if !recorded {
            let log = std::fs::read_to_string(up["log"].as_str().unwrap()).unwrap_or_default();
            return (
                Some(name),
                Some(("list shows the supervisor".to_owned(), log)),
            );
        }
        let steps: [(&str, Vec<&str>); 5] = [
            ("tls (the client's certificate)", vec!["tls", &name]),
            ("scale 1 (up)", vec!["scale", &name, "1", "--wait", "120"]),
            ("logs", vec!["logs", &name]),
            ("scale 0 (retire, delete)", vec!["scale", &name, "0"]),
            ("down", vec!["down", &name]),
        ];
        for (step, args) in steps {
            let (ok, stdout, stderr) = as_sa(&args);
            if !ok {
                // What the user sees: `down` reports what it could not delete on stdout.
                return (
                    Some(name.clone()),
                    Some((step.to_owned(), stdout + &stderr)),
                );
            }
        }
        (Some(name.clone()), None)
    };
    let clean_up = |name: Option<String>| async {
        if let Some(name) = name {
            // As the admin, with the same state dir: stops the supervisor too.
            let _ = run(state.path(), &["-n", &ns.name, "down", &name]);
        }
        // A start that failed and could not delete what it made (the point of some cases).
        let _ = std::process::Command::new("kubectl")
            .env("KUBECONFIG", common::kubeconfig())
            .args([
                "delete",
                "pods,services,podtemplates,secrets",
                "-l",
                "app=dask",
                "-n",
                &ns.name,
                "--grace-period=0",
                "--force",
                "--wait=false",
            ])
            .output();
        wait_for("no pod left between cases", || async {
            ns.pod_names("app=dask").await.is_empty()
        })
        .await;
    };

    let (name, failed) = life_cycle();
    assert!(
        failed.is_none(),
        "with every rule the life cycle passes: {failed:?}"
    );
    clean_up(name).await;

    let mut table = Vec::new();
    for (resource, verb) in DASK_KUBE_RULES {
        remove_rule(&roles, &full, &ns.name, resource, verb).await;

        let (name, failed) = life_cycle();
        if let Some((step, stderr)) = &failed {
            eprintln!(
                "without {verb} {resource}: `{step}` failed: {}",
                stderr.lines().last().unwrap_or_default()
            );
        }
        clean_up(name).await;
        let (step, stderr) = failed.unwrap_or_else(|| {
            panic!("without {verb} {resource} every step passed: the rule is not needed, remove it from rbac.yaml")
        });
        let stderr = strip_ansi(&stderr);
        let said = stderr
            .lines()
            .find(|l| l.contains("lacks permission"))
            .unwrap_or_else(|| panic!("without {verb} {resource}, `{step}` failed without naming a permission: {stderr}"))
            .trim()
            .to_owned();
        assert!(
            said.contains(&format!("{verb} {resource}")),
            "without {verb} {resource}, `{step}` must name them: {said}"
        );
        table.push(format!("{verb:>6} {resource:<17} -> {step}: {said}"));
    }
    restore_role(&roles, &full).await;
    eprintln!(
        "FIGURE rbac.yaml, one rule removed at a time:\n{}",
        table.join("\n")
    );
    ns.delete().await;
}

/// The rules of the `dask-kube-controller` Role in deploy/rbac.yaml, one (resource, verb) each.
const CONTROLLER_RULES: &[(&str, &str)] = &[
    ("pods", "create"),
    ("pods", "delete"),
    ("pods", "get"),
    ("pods", "list"),
    ("pods/portforward", "get"),
    ("pods/portforward", "create"),
    ("podtemplates", "get"),
];

/// `kubectl auth can-i VERB RESOURCE[/SUBRESOURCE]` as ServiceAccount `sa` of `ns`.
fn service_account_can(ns: &str, sa: &str, resource: &str, verb: &str) -> bool {
    let (resource, sub) = resource.split_once('/').unwrap_or((resource, ""));
    let mut args = vec![
        "auth".to_owned(),
        "can-i".into(),
        verb.into(),
        resource.into(),
        "-n".into(),
        ns.into(),
        format!("--as=system:serviceaccount:{ns}:{sa}"),
    ];
    if !sub.is_empty() {
        args.push(format!("--subresource={sub}"));
    }
    let out = std::process::Command::new("kubectl")
        .env("KUBECONFIG", common::kubeconfig())
        .args(&args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

/// Asserts that `role` grants exactly `rules` ((resource, verb) pairs): a rule added to
/// rbac.yaml must be added to the test that proves it is needed.
fn assert_role_grants_exactly(role: &Role, rules: &[(&str, &str)]) {
    let granted: std::collections::BTreeSet<(String, String)> = role
        .rules
        .iter()
        .flatten()
        .flat_map(|r| {
            r.resources
                .iter()
                .flatten()
                .flat_map(move |res| r.verbs.iter().map(move |v| (res.clone(), v.clone())))
        })
        .collect();
    let listed = rules
        .iter()
        .map(|(r, v)| ((*r).to_owned(), (*v).to_owned()))
        .collect();
    assert_eq!(granted, listed, "the test covers every rule of the Role");
}

/// `role` as it can be sent back with `replace`.
fn replaceable(role: &Role) -> Role {
    let mut role = role.clone();
    role.metadata.resource_version = None;
    role.metadata.managed_fields = None;
    role
}

/// Replaces `full` (a Role bound to the ServiceAccount of the same name) with a copy
/// without `verb` on `resource`, and waits until the authorizer applies it (RBAC reaches
/// it through an informer).
async fn remove_rule(roles: &kube::Api<Role>, full: &Role, ns: &str, resource: &str, verb: &str) {
    let mut role = replaceable(full);
    let name = role.metadata.name.clone().unwrap();
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
        .replace(&name, &PostParams::default(), &role)
        .await
        .unwrap();
    wait_for("the removed rule to take effect", || async {
        !service_account_can(ns, &name, resource, verb)
    })
    .await;
}

/// Puts `full` back.
async fn restore_role(roles: &kube::Api<Role>, full: &Role) {
    let name = full.metadata.name.clone().unwrap();
    roles
        .replace(&name, &PostParams::default(), &replaceable(full))
        .await
        .unwrap();
}

/// Polls `cond` for at most `wait`; whether it held.
async fn holds_within<F, Fut>(wait: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + wait;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What the controller pod must do on its own: start the minimum worker of `adapt --min 1`,
/// then remove it after `adapt --min 0` (a new controller pod). Run as the admin: only the
/// controller's permissions are under test. Returns the cluster and the first step the
/// controller did not do within `wait`.
async fn controller_scenario(
    ns: &TestNamespace,
    state: &std::path::Path,
    wait: Duration,
) -> (String, Option<&'static str>) {
    let up = json_of(&run(
        state,
        &[
            "-n",
            &ns.name,
            "-o",
            "json",
            "up",
            "-f",
            &small_worker(),
            "--detach",
        ],
    ));
    let name = up["name"].as_str().unwrap().to_owned();
    let adapt = |min: &str| {
        let out = run(
            state,
            &[
                "-n",
                &ns.name,
                "adapt",
                &name,
                "--min",
                min,
                "--max",
                "1",
                "--cooldown",
                "0",
                "--wait-count",
                "1",
            ],
        );
        assert!(out.status.success(), "adapt --min {min}");
    };
    adapt("1");
    if !holds_within(wait, || async { running_workers(ns, &name).await == 1 }).await {
        return (name, Some("start the minimum worker"));
    }
    adapt("0");
    let workers = format!("dask.org/cluster-name={name},dask.org/component=worker");
    if !holds_within(wait, || async { ns.pod_names(&workers).await.is_empty() }).await {
        return (name, Some("remove the idle worker"));
    }
    (name, None)
}

/// Issue 9 §4 for the controller's own Role (pods, port-forward to its scheduler's HTTP API,
/// its worker template): with each rule removed in turn,
/// the controller pod fails to do one step of adapting, and its log names the verb and the
/// resource it lacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn every_rule_of_the_controller_role_is_needed_and_its_absence_is_logged() {
    let kube = cluster().await;
    let _serial = SERIAL.lock().await;
    let ns = TestNamespace::create(&kube, "dk-ctlrules").await;
    common::apply_rbac(&ns.name);
    let sa = dask_kube::CONTROLLER_SERVICE_ACCOUNT;
    let roles: kube::Api<Role> = kube::Api::namespaced(kube.clone(), &ns.name);
    let full = roles.get(sa).await.unwrap();
    assert_role_grants_exactly(&full, CONTROLLER_RULES);
    let state = tempfile::tempdir().unwrap();
    let (ns_ref, state_dir) = (&ns, state.path());
    let clean_up = |name: String| async move {
        let ns = ns_ref;
        let _ = run(state_dir, &["-n", &ns.name, "down", &name]);
        wait_for("no pod left between cases", || async {
            ns.pod_names("app=dask").await.is_empty()
        })
        .await;
    };

    let (name, failed) = controller_scenario(&ns, state.path(), common::WAIT).await;
    assert_eq!(failed, None, "with every rule the controller adapts");
    clean_up(name).await;

    let mut table = Vec::new();
    for (resource, verb) in CONTROLLER_RULES {
        remove_rule(&roles, &full, &ns.name, resource, verb).await;

        let (name, failed) = controller_scenario(&ns, state.path(), Duration::from_secs(40)).await;
        let controller = format!("{name}-controller");
        let log = strip_ansi(
            &ns.pods()
                .logs(&controller, &Default::default())
                .await
                .unwrap_or_default(),
        );
        clean_up(name).await;
        let step = failed.unwrap_or_else(|| {
            panic!("without {verb} {resource} the controller still adapted: the rule is not needed, remove it from rbac.yaml")
        });
        let said = log
            .lines()
            .find(|l| l.contains("lacks permission"))
            .unwrap_or_else(|| {
                panic!("without {verb} {resource}, the controller did not {step} and its log names no permission: {log}")
            })
            .trim()
            .to_owned();
        assert!(
            said.contains(&format!("{verb} {resource}")),
            "without {verb} {resource} the controller's log must name them: {said}"
        );
        table.push(format!("{verb:>6} {resource:<16} -> cannot {step}: {said}"));
    }
    restore_role(&roles, &full).await;
    eprintln!(
        "FIGURE rbac.yaml controller Role, one rule removed at a time:\n{}",
        table.join("\n")
    );
    ns.delete().await;
}
