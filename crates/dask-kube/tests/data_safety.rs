//! Scale-down never deletes a worker pod that holds data (issue 24), on the local cluster
//! (`e2e-tests/local-cluster/cluster up`): real pods with their own IPs, real `dask worker`
//! processes and a real `distributed.Client` holding scattered data, which has no recipe, so a
//! part lost with a deleted worker stays lost and is seen. `#[ignore]`d like the other cluster
//! tests; the integration tier runs them with `--include-ignored`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed step fails the test

mod common;

use common::{SERIAL, TestNamespace, cluster, fixture, json_of, python_for, run};
use dask_kube::{
    KubeCluster, PodTemplate, Result, ScaleReport, Scaler, SchedulerApi, SchedulerWorker,
    WorkerPodState,
};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::sync::Mutex;

/// `tests/fixtures/data_client.py`: a Client that keeps its scattered parts (their futures)
/// for the whole test, answering one command at a time.
struct DataClient {
    child: Child,
    io: Mutex<(ChildStdin, BufReader<ChildStdout>)>,
}

impl DataClient {
    fn start(address: &str) -> Self {
        let mut child = python_for(address)
            .arg(fixture("data_client.py"))
            .arg(address)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        DataClient {
            child,
            io: Mutex::new((stdin, stdout)),
        }
    }

    /// Sends one command; its JSON answer (blocking: call through `block_in_place`).
    fn ask(&self, command: &str) -> Value {
        let mut io = self.io.lock().unwrap();
        writeln!(io.0, "{command}").unwrap();
        io.0.flush().unwrap();
        let mut line = String::new();
        io.1.read_line(&mut line).unwrap();
        let answer: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("data_client answered {line:?} to {command:?}: {e}"));
        eprintln!("data_client {command} -> {answer}");
        answer
    }

    fn ask_async(&self, command: &str) -> Value {
        tokio::task::block_in_place(|| self.ask(command))
    }
}

impl Drop for DataClient {
    fn drop(&mut self) {
        if let Ok(mut io) = self.io.lock() {
            let _ = writeln!(io.0, "quit");
        }
        let _ = self.child.wait();
    }
}

/// Every part is still held somewhere and the sum over all of them is exact.
fn assert_nothing_lost(check: &Value) {
    assert_eq!(check["lost"], json!([]), "parts lost: {check}");
    assert_eq!(check["total"], check["expected"], "exact result: {check}");
}

/// Issue 24, case 1, as measured there: 4 workers named `$(POD_NAME)-w`, 16 parts scattered
/// over them, `dask-kube scale NAME 1`. Matching workers to pods by name found none of them,
/// deleted 3 pods without retiring and lost 12 of the 16 parts; matched by pod IP, the 3
/// workers are retired first: 0 parts lost, the sum is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn custom_worker_names_lose_no_data_on_scale_down() {
    let kube = cluster().await;
    let _serial = SERIAL.lock().await;
    let ns = TestNamespace::create(&kube, "ds-name").await;
    let state = tempfile::tempdir().unwrap();
    let template = fixture("custom-name-worker.yml");
    let up = json_of(&run(
        state.path(),
        &[
            "-n",
            &ns.name,
            "-o",
            "json",
            "up",
            "-f",
            template.to_str().unwrap(),
            "--workers",
            "4",
            "--detach",
        ],
    ));
    let name = up["name"].as_str().unwrap().to_owned();
    let address = up["scheduler_address"].as_str().unwrap().to_owned();
    let data = DataClient::start(&address);
    let workers = data.ask_async("workers");
    let names: Vec<&str> = workers["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    let pods = ns
        .pod_names(&format!(
            "dask.org/cluster-name={name},dask.org/component=worker"
        ))
        .await;
    assert_eq!(names.len(), 4, "{workers}");
    assert!(
        names
            .iter()
            .all(|n| n.ends_with("-w") && !pods.contains(&(*n).to_owned())),
        "the workers carry the template's names, not their pods': {names:?} vs {pods:?}"
    );
    let scattered = data.ask_async("scatter 16");
    assert_eq!(
        scattered["holders"].as_object().unwrap().len(),
        4,
        "{scattered}"
    );

    let scaled = json_of(&run(
        state.path(),
        &["-n", &ns.name, "-o", "json", "scale", &name, "1"],
    ));
    assert_eq!(scaled["retired"].as_array().unwrap().len(), 3, "{scaled}");
    assert_eq!(
        scaled["deleted"],
        json!([]),
        "none deleted unretired: {scaled}"
    );
    let check = data.ask_async("check 1");
    assert_nothing_lost(&check);
    eprintln!(
        "FIGURE data safety (4 workers named $(POD_NAME)-w, 16 scattered parts, scale 4 -> 1): \
         3 retired, 0 deleted unretired, 0 of 16 parts lost, exact sum"
    );
    drop(data);
    let down = run(state.path(), &["-n", &ns.name, "down", &name]);
    assert!(down.status.success());
    ns.delete().await;
}

/// The real scheduler, except that the first retirement it is asked for is preceded by a
/// nanny restart of that worker (a new process at a new address in the same pod, as after a
/// memory kill), which then receives `refill` fresh parts: the worker dask-kube chose to
/// retire is gone, and its pod holds data again.
struct RestartBeforeRetiring<'a, S> {
    inner: &'a S,
    data: &'a DataClient,
    refill: usize,
    restarted: Mutex<Option<(String, String)>>,
}

impl<S: SchedulerApi> SchedulerApi for RestartBeforeRetiring<'_, S> {
    async fn adaptive_target(&self) -> Result<u32> {
        self.inner.adaptive_target().await
    }

    async fn workers(&self) -> Result<Vec<SchedulerWorker>> {
        self.inner.workers().await
    }

    async fn retire_workers(&self, addresses: &[String]) -> Result<BTreeSet<String>> {
        let first = self.restarted.lock().unwrap().is_none();
        if first && let [old] = addresses {
            let restarted = self.data.ask_async(&format!("restart {old}"));
            let new = restarted["new"].as_str().unwrap().to_owned();
            self.data
                .ask_async(&format!("scatter-to {} {new}", self.refill));
            *self.restarted.lock().unwrap() = Some((old.clone(), new));
        }
        self.inner.retire_workers(addresses).await
    }

    async fn idle_since(&self) -> Result<Option<f64>> {
        self.inner.idle_since().await
    }

    fn endpoint(&self) -> String {
        self.inner.endpoint()
    }
}

/// Issue 24, case 3: the nanny restarts the worker being retired, and the new worker (new
/// address, same pod) receives 8 parts before the scheduler answers. The old address is gone,
/// which counted as "retired": the pod was deleted with the 8 parts. Now the scheduler's
/// answer does not confirm it and the new worker is found in the pod by its IP: the pod is
/// kept and reported; a second `scale 1` retires properly. 0 parts lost, the sum is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn a_nanny_restart_during_scale_down_loses_no_data() {
    const REFILL: usize = 8;
    let kube = cluster().await;
    let _serial = SERIAL.lock().await;
    let ns = TestNamespace::create(&kube, "ds-nanny").await;
    let template = PodTemplate::from_file(fixture("small-worker.yml"), "worker").unwrap();
    let cluster = KubeCluster::builder()
        .worker_template(template)
        .namespace(&ns.name)
        .name_template("ds-nanny-{uuid}")
        .start()
        .await
        .unwrap();
    cluster.scale(2).await.unwrap();
    cluster.wait_for_workers(2, common::WAIT).await.unwrap();
    let tls = tempfile::tempdir().unwrap();
    common::trust(&cluster, tls.path());
    let data = DataClient::start(cluster.scheduler_address());

    // Scale-down ranks by data, then newest first: the parts go to the worker of the pod it
    // ranks last, so the other one is retired whether or not the metrics arrived yet.
    let mut pods: Vec<WorkerPodState> = ns
        .pods()
        .list(&kube::api::ListParams::default().labels(&format!(
            "dask.org/cluster-name={},dask.org/component=worker",
            cluster.name()
        )))
        .await
        .unwrap()
        .items
        .iter()
        .map(WorkerPodState::from_pod)
        .collect();
    pods.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    let keeper_ip = pods[0].ips.first().cloned().expect("the pod has an IP");
    let keeper = cluster
        .scheduler()
        .workers()
        .await
        .unwrap()
        .into_iter()
        .find(|w| dask_kube::address_host(&w.address) == keeper_ip)
        .expect("a worker at the oldest pod's IP");
    data.ask_async(&format!("scatter-to 16 {}", keeper.address));
    tokio::time::sleep(std::time::Duration::from_secs(3)).await; // metrics: heartbeats

    let restarting = RestartBeforeRetiring {
        inner: cluster.scheduler(),
        data: &data,
        refill: REFILL,
        restarted: Mutex::new(None),
    };
    let scaler = Scaler::new(
        cluster.api().clone(),
        std::sync::Arc::new(restarting),
        cluster.name(),
        json!({}),
        None,
    );
    let first = scaler.scale(1, false).await;
    let (old, new) = scaler
        .scheduler()
        .restarted
        .lock()
        .unwrap()
        .clone()
        .expect("dask-kube asked to retire one worker");
    assert_ne!(
        old, keeper.address,
        "the worker without data was the one retired"
    );
    let message = match first {
        Ok(report) => panic!("the pod of the restarted worker was not kept: {report:?}"),
        Err(e) => e.to_string(),
    };
    assert!(
        message.contains(&format!("{}: kept", pods[1].name)),
        "{message}"
    );
    let check = data.ask_async("check 2");
    assert_nothing_lost(&check);

    // With the new worker known, scaling down again retires it (or the other) properly.
    let second: ScaleReport = cluster.scale(1).await.unwrap();
    assert_eq!(second.retired.len(), 1, "{second:?}");
    let check = data.ask_async("check 1");
    assert_nothing_lost(&check);
    eprintln!(
        "FIGURE data safety (nanny restart of the worker being retired, {old} -> {new}, \
         {REFILL} parts on the new one): pod kept, then retired by a second scale; 0 of {} \
         parts lost, exact sum",
        16 + REFILL
    );
    drop(scaler);
    drop(data);
    let report = cluster.close().await.unwrap();
    assert!(report.leftovers.is_empty());
    ns.delete().await;
}
