//! Scaling a cluster's workers: the I/O around the pure plans of [`crate::scaling`] and the
//! pure decision of [`crate::adapt`]. Generic over [`SchedulerApi`] so the sequences of
//! Kubernetes and scheduler calls are tested with a fake scheduler and a mock API server.

use crate::adapt::{self, AdaptPolicy, ScaleAction, TargetSample};
use crate::kube_ops::{BatchReport, ClusterApi, CreateLimits};
use crate::manifests::{self, Owner};
use crate::scaling::{
    DeleteReason, PodPhase, SchedulerWorker, WorkerCounts, WorkerPodState, confirmed_retired,
    plan_scale_down,
};
use crate::scheduler_api::SchedulerApi;
use crate::{Error, Result};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The Dask config key that caps every worker count (`scale`, `up --workers`, `adapt`'s
/// maximum), as in dask-kubernetes' classic `KubeCluster`.
pub const COUNT_MAX_KEY: &str = "kubernetes.count.max";

/// A worker count that `kubernetes.count.max` lowered: what was asked and what is allowed.
/// Callers say so (the CLI on stderr, Python as a warning) and wait for `max`, not for
/// `requested`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CountCap {
    /// The count asked for.
    pub requested: usize,
    /// The cap (`kubernetes.count.max`).
    pub max: usize,
}

impl std::fmt::Display for CountCap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "asked for {} workers; capped at {} by {COUNT_MAX_KEY}",
            self.requested, self.max
        )
    }
}

/// `requested` within `count_max`: the count to act on and, when lowered, the cap.
pub fn cap_count(requested: usize, count_max: Option<u32>) -> (usize, Option<CountCap>) {
    match count_max.map(|m| m as usize) {
        Some(max) if requested > max => (max, Some(CountCap { requested, max })),
        _ => (requested, None),
    }
}

/// What a scale call did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ScaleReport {
    /// Active workers before.
    pub before: usize,
    /// The target after clamping to `kubernetes.count.max`.
    pub target: usize,
    /// Set when `kubernetes.count.max` lowered the request.
    pub capped: Option<CountCap>,
    /// Pods created.
    pub created: Vec<String>,
    /// Pods deleted without retiring, and why.
    pub deleted: Vec<(String, DeleteReason)>,
    /// Pods retired through the scheduler, then deleted.
    pub retired: Vec<String>,
    /// Pods the scheduler did not confirm retired: kept, since deleting them could lose data.
    pub not_retired: Vec<String>,
    /// Calls that failed.
    pub failed: Vec<String>,
    /// Calls sent again after the API server failed to answer or throttled (each pod still
    /// created or deleted once): what an outage cost, reported rather than hidden.
    pub retried: usize,
}

impl ScaleReport {
    /// An error when anything was not done.
    pub fn into_result(self) -> Result<Self> {
        if self.failed.is_empty() && self.not_retired.is_empty() {
            return Ok(self);
        }
        let mut failures = self.failed.clone();
        failures.extend(
            self.not_retired
                .iter()
                .map(|p| format!("{p}: the scheduler did not confirm retiring it, so it was kept")),
        );
        Err(Error::Partial {
            action: format!("scale from {} to {} workers", self.before, self.target),
            done: self.created.len() + self.deleted.len() + self.retired.len(),
            wanted: self.created.len() + self.deleted.len() + self.retired.len() + failures.len(),
            failures,
        })
    }
}

/// Scales one cluster's worker pods.
pub struct Scaler<S> {
    api: ClusterApi,
    scheduler: Arc<S>,
    cluster: String,
    worker_pod: Value,
    owner: Option<Owner>,
    count_max: Option<u32>,
}

impl<S: SchedulerApi> Scaler<S> {
    /// A scaler for `cluster`, creating pods from `worker_pod` (owned by `owner`).
    pub fn new(
        api: ClusterApi,
        scheduler: Arc<S>,
        cluster: impl Into<String>,
        worker_pod: Value,
        owner: Option<Owner>,
    ) -> Self {
        Scaler {
            api,
            scheduler,
            cluster: cluster.into(),
            worker_pod,
            owner,
            count_max: None,
        }
    }

    /// Paces pod creation.
    #[must_use]
    pub fn with_limits(mut self, limits: CreateLimits) -> Self {
        self.api = self.api.with_limits(limits);
        self
    }

    /// Paces pod creation and deletion (in place).
    pub fn set_limits(&mut self, limits: CreateLimits) {
        self.api = self.api.clone().with_limits(limits);
    }

    /// Never more than this many workers (`kubernetes.count.max`).
    #[must_use]
    pub fn with_count_max(mut self, count_max: Option<u32>) -> Self {
        self.count_max = count_max;
        self
    }

    /// The scheduler client.
    pub fn scheduler(&self) -> &Arc<S> {
        &self.scheduler
    }

    /// The Kubernetes calls.
    pub fn api(&self) -> &ClusterApi {
        &self.api
    }

    /// The state of every worker pod of the cluster.
    pub async fn worker_pods(&self) -> Result<Vec<WorkerPodState>> {
        let pods = self
            .api
            .list_pods(&manifests::selector(
                &self.cluster,
                dask_worker_spec::labels::WORKER,
            ))
            .await?;
        Ok(pods.iter().map(WorkerPodState::from_pod).collect())
    }

    /// Creates `count` worker pods.
    pub async fn create_workers(&self, count: usize) -> (BatchReport, Option<Error>) {
        create_workers(&self.api, &self.worker_pod, self.owner.as_ref(), count).await
    }

    /// Scales to `n` workers (see [`crate::scaling`] for the scale-down order). With
    /// `force`, connected workers are deleted without retiring.
    pub async fn scale(&self, n: usize, force: bool) -> Result<ScaleReport> {
        let (target, capped) = cap_count(n, self.count_max);
        if let Some(cap) = capped {
            warn!(
                requested = cap.requested,
                max = cap.max,
                "capped by {COUNT_MAX_KEY}"
            );
        }
        let pods = self.worker_pods().await?;
        let active = WorkerCounts::of(&pods).active();
        let mut report = ScaleReport {
            before: active,
            target,
            capped,
            ..ScaleReport::default()
        };
        if target > active {
            let finished: Vec<String> = pods
                .iter()
                .filter(|p| p.ended())
                .map(|p| p.name.clone())
                .collect();
            self.delete_into(&finished, DeleteReason::Finished, &mut report)
                .await;
            let (created, fatal) = self.create_workers(target - active).await;
            info!(cluster = %self.cluster, created = created.done.len(), failed = created.failed.len(), "scaled up");
            report.created = created.done;
            report.failed.extend(created.failed);
            report.retried += created.retried;
            if let Some(fatal) = fatal
                && report.created.is_empty()
            {
                return Err(fatal);
            }
        } else {
            self.scale_down(&pods, active - target, force, &mut report)
                .await?;
        }
        report.into_result()
    }

    async fn delete_into(&self, names: &[String], reason: DeleteReason, report: &mut ScaleReport) {
        if names.is_empty() {
            return;
        }
        let result = self.api.delete_pods(names, None).await;
        for name in result.done {
            report.deleted.push((name, reason));
        }
        report.failed.extend(result.failed);
        report.retried += result.retried;
    }

    /// The scheduler's workers, or none without asking when no pod runs.
    async fn scheduler_workers(&self, any_running: bool) -> Result<Vec<SchedulerWorker>> {
        if any_running {
            self.scheduler.workers().await
        } else {
            Ok(Vec::new())
        }
    }

    /// Removes `n_remove` active workers from `pods`, retiring connected ones first.
    pub async fn scale_down(
        &self,
        pods: &[WorkerPodState],
        n_remove: usize,
        force: bool,
        report: &mut ScaleReport,
    ) -> Result<()> {
        // A worker connects only from a Running pod: with none, the scheduler has nothing to
        // say and the round trip (a port-forward from outside) is skipped, which is what
        // scaling down a thousand Pending pods waits on besides the deletes.
        let any_running = pods.iter().any(|p| p.phase == PodPhase::Running);
        let workers: Vec<SchedulerWorker> = match self.scheduler_workers(any_running).await {
            Ok(w) => w,
            Err(e) if force => {
                warn!(error = %e, "scheduler unreachable; forced scale-down deletes without retiring");
                Vec::new()
            }
            Err(e) => {
                // Unknown who holds data: only what surely holds none may go.
                let safe: Vec<WorkerPodState> = pods
                    .iter()
                    .filter(|p| p.phase != PodPhase::Running)
                    .cloned()
                    .collect();
                let plan = plan_scale_down(&safe, &[], n_remove, false);
                for (reason, names) in group_by_reason(&plan.delete_now) {
                    self.delete_into(&names, reason, report).await;
                }
                if plan.removes() < n_remove {
                    return Err(e);
                }
                return Ok(());
            }
        };
        let plan = plan_scale_down(pods, &workers, n_remove, force);
        debug!(?plan, "scale-down plan");
        for (reason, names) in group_by_reason(&plan.delete_now) {
            self.delete_into(&names, reason, report).await;
        }
        if plan.retire.is_empty() {
            return Ok(());
        }
        let addresses: Vec<String> = plan
            .retire
            .iter()
            .flat_map(|t| t.addresses.clone())
            .collect();
        let started = Instant::now();
        let retired = match self.scheduler.retire_workers(&addresses).await {
            Ok(r) => r,
            Err(e) => {
                // Older schedulers could answer 500 after retiring: check who is still there.
                warn!(error = %e, "retire_workers failed; checking which workers left");
                BTreeSet::new()
            }
        };
        let still_connected: BTreeSet<String> = match self.scheduler.workers().await {
            Ok(ws) => ws.into_iter().map(|w| w.address).collect(),
            // Cannot tell: trust only the explicit confirmation.
            Err(_) => addresses.iter().cloned().collect(),
        };
        let confirmed = confirmed_retired(&plan.retire, &retired, &still_connected);
        info!(cluster = %self.cluster, retired = confirmed.len(), asked = plan.retire.len(),
              seconds = started.elapsed().as_secs_f64(), "workers retired");
        let result = self.api.delete_pods(&confirmed, None).await;
        report.retired.extend(result.done);
        report.failed.extend(result.failed);
        report.retried += result.retried;
        report.not_retired.extend(
            plan.retire
                .iter()
                .map(|t| t.pod.clone())
                .filter(|p| !confirmed.contains(p)),
        );
        Ok(())
    }

    /// `policy` with its maximum (and minimum) within `kubernetes.count.max`, and the cap
    /// when it lowered the maximum.
    pub fn capped_policy(&self, policy: AdaptPolicy) -> (AdaptPolicy, Option<CountCap>) {
        let mut policy = policy;
        let (maximum, capped) = cap_count(policy.maximum as usize, self.count_max);
        policy.maximum = u32::try_from(maximum).unwrap_or(u32::MAX);
        policy.minimum = policy.minimum.min(policy.maximum);
        (policy, capped)
    }

    /// The cap on worker counts (`kubernetes.count.max`).
    pub fn count_max(&self) -> Option<u32> {
        self.count_max
    }

    /// Polls the scheduler every `policy.interval` and scales by [`adapt::decide`] until
    /// `cancel` fires. Every change is logged with its reason.
    pub async fn run_adapt(&self, policy: AdaptPolicy, cancel: CancellationToken) -> Result<()> {
        let (policy, capped) = self.capped_policy(policy);
        if let Some(cap) = capped {
            warn!(
                requested = cap.requested,
                max = cap.max,
                "adapt maximum capped by {COUNT_MAX_KEY}"
            );
        }
        info!(cluster = %self.cluster, minimum = policy.minimum, maximum = policy.maximum,
              interval = ?policy.interval, wait_count = policy.wait_count, "adapting");
        let started = Instant::now();
        let keep = usize::try_from(policy.wait_count.max(1)).unwrap_or(1) + 1;
        let mut history: VecDeque<TargetSample> = VecDeque::with_capacity(keep);
        let mut last_change: Option<Duration> = None;
        let mut last_reason = String::new();
        let mut first = true;
        loop {
            if !first {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(policy.interval) => {}
                }
            }
            first = false;
            if cancel.is_cancelled() {
                break;
            }
            let now = started.elapsed();
            match self.scheduler.adaptive_target().await {
                Ok(target) => {
                    if history.len() == keep {
                        history.pop_front();
                    }
                    history.push_back(TargetSample { at: now, target });
                }
                Err(e) => {
                    // Scale-down needs consecutive agreeing polls: a gap starts over.
                    warn!(error = %e, "cannot read the scheduler's target");
                    history.clear();
                }
            }
            let pods = match self.worker_pods().await {
                Ok(p) => p,
                Err(e) => {
                    warn!(error = %e, "cannot list worker pods");
                    continue;
                }
            };
            let samples: Vec<TargetSample> = history.iter().copied().collect();
            let decision = adapt::decide(&policy, &samples, &pods, last_change, now);
            if !decision.cleanup.is_empty() {
                let result = self.api.delete_pods(&decision.cleanup, None).await;
                info!(cluster = %self.cluster, deleted = ?result.done, failed = ?result.failed, "cleaned up ended worker pods");
            }
            match decision.action {
                ScaleAction::Hold => {
                    // Every decision is logged, a steady state once.
                    if decision.reason != last_reason {
                        info!(cluster = %self.cluster, reason = %decision.reason, "adapt: hold");
                    }
                }
                ScaleAction::Up { create, to } => {
                    info!(cluster = %self.cluster, create, to, reason = %decision.reason, "adapt: scaling up");
                    let (report, fatal) = self.create_workers(create as usize).await;
                    if !report.failed.is_empty() {
                        warn!(failed = ?report.failed, "some worker pods were not created");
                    }
                    if let Some(e) = fatal {
                        warn!(error = %e, "adapt cannot create workers");
                    }
                    last_change = Some(now);
                }
                ScaleAction::Down { remove, to } => {
                    info!(cluster = %self.cluster, remove, to, reason = %decision.reason, "adapt: scaling down");
                    let mut report = ScaleReport::default();
                    if let Err(e) = self
                        .scale_down(&pods, remove as usize, false, &mut report)
                        .await
                    {
                        warn!(error = %e, "adapt scale-down incomplete");
                    }
                    if !report.not_retired.is_empty() || !report.failed.is_empty() {
                        warn!(not_retired = ?report.not_retired, failed = ?report.failed, "adapt scale-down incomplete");
                    }
                    last_change = Some(now);
                }
            }
            last_reason = decision.reason;
        }
        info!(cluster = %self.cluster, "stopped adapting");
        Ok(())
    }
}

/// Creates `count` pods from `worker_pod`, owned by `owner`.
pub(crate) async fn create_workers(
    api: &ClusterApi,
    worker_pod: &Value,
    owner: Option<&Owner>,
    count: usize,
) -> (BatchReport, Option<Error>) {
    let build = || {
        let mut pod = worker_pod.clone();
        if let Some(owner) = owner {
            manifests::set_owner(&mut pod, owner);
        }
        manifests::to_pod(pod)
    };
    // The template is checked once; then each pod is made when its call starts, so only the
    // calls in flight hold a pod (1000 copies of a large template all at once cost megabytes).
    if let Err(e) = build() {
        return (BatchReport::default(), Some(e));
    }
    api.create_pods((0..count).filter_map(|_| build().ok()))
        .await
}

#[cfg(test)]
mod cap_tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::no_max(5, None, 5, None)]
    #[case::below_max(2, Some(3), 2, None)]
    #[case::at_max(3, Some(3), 3, None)]
    #[case::above_max(5, Some(3), 3, Some(CountCap { requested: 5, max: 3 }))]
    #[case::max_zero(1, Some(0), 0, Some(CountCap { requested: 1, max: 0 }))]
    fn counts_are_capped_by_count_max(
        #[case] requested: usize,
        #[case] max: Option<u32>,
        #[case] target: usize,
        #[case] cap: Option<CountCap>,
    ) {
        assert_eq!(cap_count(requested, max), (target, cap));
    }

    #[test]
    fn the_cap_names_the_key() {
        let cap = CountCap {
            requested: 5,
            max: 3,
        };
        assert_eq!(
            cap.to_string(),
            "asked for 5 workers; capped at 3 by kubernetes.count.max"
        );
    }
}

fn group_by_reason(items: &[(String, DeleteReason)]) -> Vec<(DeleteReason, Vec<String>)> {
    let mut groups: Vec<(DeleteReason, Vec<String>)> = Vec::new();
    for (name, reason) in items {
        match groups.iter_mut().find(|(r, _)| r == reason) {
            Some((_, names)) => names.push(name.clone()),
            None => groups.push((*reason, vec![name.clone()])),
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube_ops::tests::{Handle, body_json, mock_client, ok_json};
    use serde_json::json;
    use std::sync::Mutex;

    /// A scheduler whose answers the test sets, recording retire calls.
    #[derive(Default)]
    struct FakeScheduler {
        target: Mutex<VecDeque<u32>>,
        workers: Mutex<Vec<SchedulerWorker>>,
        retire_confirms: Mutex<Option<BTreeSet<String>>>,
        retire_calls: Mutex<Vec<Vec<String>>>,
        workers_calls: Mutex<usize>,
    }

    impl SchedulerApi for FakeScheduler {
        async fn adaptive_target(&self) -> Result<u32> {
            let mut t = self.target.lock().unwrap();
            let v = if t.len() > 1 {
                t.pop_front()
            } else {
                t.front().copied()
            };
            v.ok_or_else(|| Error::SchedulerUnreachable {
                endpoint: "fake".into(),
                reason: "no target".into(),
            })
        }
        async fn workers(&self) -> Result<Vec<SchedulerWorker>> {
            *self.workers_calls.lock().unwrap() += 1;
            Ok(self.workers.lock().unwrap().clone())
        }
        async fn retire_workers(&self, addresses: &[String]) -> Result<BTreeSet<String>> {
            self.retire_calls.lock().unwrap().push(addresses.to_vec());
            let confirms = self.retire_confirms.lock().unwrap().clone();
            let retired = confirms.unwrap_or_else(|| addresses.iter().cloned().collect());
            self.workers
                .lock()
                .unwrap()
                .retain(|w| !retired.contains(&w.address));
            Ok(retired)
        }
        fn endpoint(&self) -> String {
            "fake".into()
        }
    }

    /// Bounds a call under test: an unexpected extra API call (which the mock never
    /// answers) fails the test instead of hanging it.
    async fn within<F: std::future::Future>(call: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .expect("the call under test waited on an API call the test did not expect")
    }

    fn pod_json(name: &str, phase: &str, created: &str) -> Value {
        json!({"metadata": {"name": name, "creationTimestamp": created}, "spec": {"containers": [{"name": "w", "image": "i"}]}, "status": {"phase": phase}})
    }

    /// Answers the next `n` API calls, which must be pod DELETEs, with the pod in `phase`;
    /// the deleted pod names in the order asked.
    async fn answer_deletes(handle: &mut Handle, n: usize, phase: &str) -> Vec<String> {
        let mut deleted = Vec::new();
        for _ in 0..n {
            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(request.method(), http::Method::DELETE);
            let name = request.uri().path().rsplit('/').next().unwrap().to_owned();
            send.send_response(ok_json(pod_json(&name, phase, "2026-01-01T00:00:01Z")));
            deleted.push(name);
        }
        deleted
    }

    fn worker(name: &str) -> SchedulerWorker {
        SchedulerWorker {
            name: name.into(),
            address: format!("tcp://{name}:1"),
            managed_bytes: Some(0),
            busy: Some(false),
        }
    }

    fn scaler(client: kube::Client, scheduler: Arc<FakeScheduler>) -> Scaler<FakeScheduler> {
        let worker_pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "c-worker-", "namespace": "ns"}, "spec": {"containers": [{"name": "w", "image": "i"}]}});
        Scaler::new(
            ClusterApi::new(client, "ns", "https://127.0.0.1:6443"),
            scheduler,
            "c",
            worker_pod,
            Some(Owner {
                name: "c".into(),
                uid: "uid-1".into(),
            }),
        )
    }

    /// The exact call sequence of a scale-down from 3 to 1: list, delete the pending pod,
    /// retire one connected worker, delete only that confirmed pod.
    #[tokio::test]
    async fn scale_down_retires_before_deleting() {
        let (client, mut handle) = mock_client();
        let fake = Arc::new(FakeScheduler::default());
        *fake.workers.lock().unwrap() = vec![worker("c-worker-a"), worker("c-worker-b")];
        let server = tokio::spawn(async move {
            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(request.method(), http::Method::GET);
            assert_eq!(request.uri().path(), "/api/v1/namespaces/ns/pods");
            let query = request.uri().query().unwrap_or_default().to_owned();
            assert!(
                query.contains(
                    "labelSelector=dask.org%2Fcluster-name%3Dc%2Cdask.org%2Fcomponent%3Dworker"
                ),
                "{query}"
            );
            send.send_response(ok_json(
                json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [
                    pod_json("c-worker-a", "Running", "2026-01-01T00:00:01Z"),
                    pod_json("c-worker-b", "Running", "2026-01-01T00:00:02Z"),
                    pod_json("c-worker-p", "Pending", "2026-01-01T00:00:03Z"),
                ]}),
            ));
            answer_deletes(&mut handle, 2, "Running").await
        });
        let s = scaler(client, fake.clone());
        let report = within(s.scale(1, false)).await.unwrap();
        let deleted = server.await.unwrap();
        // The pending pod first, then the newest idle connected worker, retired.
        assert_eq!(deleted, vec!["c-worker-p", "c-worker-b"]);
        assert_eq!(
            *fake.retire_calls.lock().unwrap(),
            vec![vec!["tcp://c-worker-b:1".to_owned()]]
        );
        assert_eq!(
            report.deleted,
            vec![("c-worker-p".to_owned(), DeleteReason::Pending)]
        );
        assert_eq!(report.retired, vec!["c-worker-b".to_owned()]);
        assert!(report.not_retired.is_empty());
    }

    /// Pending pods hold no worker: scaling them down deletes them without asking the
    /// scheduler (oldest kept, newest deleted first).
    #[tokio::test]
    async fn scaling_down_pending_pods_does_not_ask_the_scheduler() {
        let (client, mut handle) = mock_client();
        let fake = Arc::new(FakeScheduler::default());
        let server = tokio::spawn(async move {
            let (_, send) = handle.next_request().await.unwrap();
            send.send_response(ok_json(
                json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [
                    pod_json("c-worker-p1", "Pending", "2026-01-01T00:00:01Z"),
                    pod_json("c-worker-p2", "Pending", "2026-01-01T00:00:02Z"),
                    pod_json("c-worker-p3", "Pending", "2026-01-01T00:00:03Z"),
                ]}),
            ));
            let mut deleted = answer_deletes(&mut handle, 2, "Pending").await;
            deleted.sort();
            deleted
        });
        let report = within(scaler(client, fake.clone()).scale(1, false))
            .await
            .unwrap();
        let deleted = server.await.unwrap();
        assert_eq!(deleted, vec!["c-worker-p2", "c-worker-p3"]);
        assert_eq!(report.deleted.len(), 2);
        assert_eq!(*fake.workers_calls.lock().unwrap(), 0, "no scheduler call");
    }

    #[tokio::test]
    async fn unconfirmed_retirement_keeps_the_pod_and_reports_it() {
        let (client, mut handle) = mock_client();
        let fake = Arc::new(FakeScheduler::default());
        *fake.workers.lock().unwrap() = vec![worker("c-worker-a"), worker("c-worker-b")];
        *fake.retire_confirms.lock().unwrap() = Some(BTreeSet::new());
        let server = tokio::spawn(async move {
            let (_, send) = handle.next_request().await.unwrap();
            send.send_response(ok_json(
                json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [
                    pod_json("c-worker-a", "Running", "2026-01-01T00:00:01Z"),
                    pod_json("c-worker-b", "Running", "2026-01-01T00:00:02Z"),
                ]}),
            ));
            // No further call may come: nothing is deleted.
            handle
        });
        let err = within(scaler(client, fake).scale(1, false))
            .await
            .unwrap_err();
        let _handle = server.await.unwrap();
        assert_eq!(err.exit_code(), crate::error::exit::PARTIAL);
        assert!(
            err.to_string()
                .contains("c-worker-b: the scheduler did not confirm retiring it"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn scale_up_creates_owned_pods_and_respects_count_max() {
        let (client, mut handle) = mock_client();
        let fake = Arc::new(FakeScheduler::default());
        let server = tokio::spawn(async move {
            let (_, send) = handle.next_request().await.unwrap();
            send.send_response(ok_json(
                json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [
                    pod_json("c-worker-a", "Running", "2026-01-01T00:00:01Z"),
                    pod_json("c-worker-x", "Failed", "2026-01-01T00:00:01Z"),
                ]}),
            ));
            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(request.method(), http::Method::DELETE);
            assert!(request.uri().path().ends_with("/c-worker-x"));
            send.send_response(ok_json(pod_json(
                "c-worker-x",
                "Failed",
                "2026-01-01T00:00:01Z",
            )));
            let mut bodies = Vec::new();
            for i in 0..2 {
                let (request, send) = handle.next_request().await.unwrap();
                assert_eq!(request.method(), http::Method::POST);
                let mut body = body_json(request).await;
                bodies.push(body.clone());
                body["metadata"]["name"] = json!(format!("c-worker-{i}"));
                send.send_response(ok_json(body));
            }
            bodies
        });
        let s = scaler(client, fake).with_count_max(Some(3));
        let report = within(s.scale(10, false)).await.unwrap();
        let bodies = server.await.unwrap();
        assert_eq!(report.target, 3);
        assert_eq!(
            report.capped,
            Some(CountCap {
                requested: 10,
                max: 3
            })
        );
        assert_eq!(report.created.len(), 2);
        for body in bodies {
            assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "uid-1");
            assert_eq!(body["metadata"]["ownerReferences"][0]["kind"], "Pod");
        }
    }

    /// The adapt loop acts on the pure decision: target 2 with none running creates two.
    #[tokio::test(start_paused = true)]
    async fn adapt_loop_scales_up_at_once() {
        let (client, mut handle) = mock_client();
        let fake = Arc::new(FakeScheduler::default());
        fake.target.lock().unwrap().push_back(2);
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let server = tokio::spawn(async move {
            let (_, send) = handle.next_request().await.unwrap();
            send.send_response(ok_json(
                json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []}),
            ));
            for i in 0..2 {
                let (request, send) = handle.next_request().await.unwrap();
                assert_eq!(request.method(), http::Method::POST);
                let mut body = body_json(request).await;
                body["metadata"]["name"] = json!(format!("c-worker-{i}"));
                send.send_response(ok_json(body));
            }
            // Next poll sees both pending: no more creations.
            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(request.method(), http::Method::GET);
            send.send_response(ok_json(
                json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [
                    pod_json("c-worker-0", "Pending", "2026-01-01T00:00:01Z"),
                    pod_json("c-worker-1", "Pending", "2026-01-01T00:00:01Z"),
                ]}),
            ));
            stop.cancel();
            handle
        });
        let s = scaler(client, fake);
        within(s.run_adapt(AdaptPolicy::new(0, 5), cancel))
            .await
            .unwrap();
        let _handle = server.await.unwrap();
    }
}
