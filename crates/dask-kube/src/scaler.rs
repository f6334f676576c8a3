//! Scaling a cluster's workers: the I/O around the pure plans of [`crate::scaling`] and the
//! pure decision of [`crate::adapt`]. Generic over [`SchedulerApi`] so the sequences of
//! Kubernetes and scheduler calls are tested with a fake scheduler and a mock API server.

use crate::adapt::{self, AdaptPolicy, ScaleAction, TargetSample};
use crate::apiserver::{BatchReport, ClusterApi, CreateLimits};
use crate::manifests::{self, Owner};
use crate::scaling::{
    DeleteReason, KeepReason, KeptPod, RetireTarget, ScaleDownPlan, WorkerCounts, WorkerPodState,
    place_workers, plan_scale_down, retired_pods_to_delete,
};
use crate::scheduler_api::SchedulerApi;
use crate::start_window::{PacedScaleUp, pace_replacements, start_window};
use crate::{Error, Result};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
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
    /// Pods asked to retire that are kept: the scheduler did not confirm it, or a worker is
    /// in them again (see [`Self::kept`] for why).
    pub not_retired: Vec<String>,
    /// Every pod the scale-down wanted gone but kept since it may hold data, and why.
    pub kept: Vec<KeptPod>,
    /// Calls that failed.
    pub failed: Vec<String>,
    /// Calls sent again after the API server failed to answer or throttled (each pod still
    /// created or deleted once): what an outage cost, reported rather than hidden.
    pub retried: usize,
}

impl ScaleReport {
    /// An error when anything was not done.
    pub fn into_result(self) -> Result<Self> {
        if self.failed.is_empty() && self.kept.is_empty() {
            return Ok(self);
        }
        let mut failures = self.failed.clone();
        failures.extend(self.kept.iter().map(ToString::to_string));
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
            self.scale_down(&pods, target, force, &mut report).await?;
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

    /// Scales down to `target` active workers, starting from `pods` (listed before the
    /// scheduler is asked: see [`crate::scaling`] for why the order matters). Pods that may
    /// hold data are retired first and deleted only once the scheduler confirmed it and a
    /// fresh look finds no worker in them; what cannot be removed safely is kept and listed
    /// in `report.kept`. With `force`, pods are deleted without retiring.
    ///
    /// A pod deleted for holding no worker is deleted only if unchanged since it was
    /// listed; when one changed meanwhile (a container started), the pods are listed again
    /// and one more round removes up to that many.
    pub async fn scale_down(
        &self,
        pods: &[WorkerPodState],
        target: usize,
        force: bool,
        report: &mut ScaleReport,
    ) -> Result<()> {
        let n = WorkerCounts::of(pods).active().saturating_sub(target);
        let changed = self.scale_down_once(pods, n, force, report).await;
        if !changed.is_empty() {
            let pods = self.worker_pods().await?;
            let again = WorkerCounts::of(&pods)
                .active()
                .saturating_sub(target)
                .min(changed.len());
            info!(cluster = %self.cluster, changed = ?changed, again, "pods changed since listed; planning again");
            let still = self.scale_down_once(&pods, again, force, report).await;
            report.kept.extend(still.into_iter().map(|pod| KeptPod {
                pod,
                reason: KeepReason::Changed,
                workers: Vec::new(),
                detail: None,
            }));
        }
        // A pod kept in the first round and removed in the second is not kept; one kept in
        // both is named once, with the second round's reason.
        let removed: BTreeSet<&String> = report
            .deleted
            .iter()
            .map(|(p, _)| p)
            .chain(&report.retired)
            .collect();
        let mut named = BTreeSet::new();
        let mut kept: Vec<KeptPod> = std::mem::take(&mut report.kept)
            .into_iter()
            .rev()
            .filter(|k| !removed.contains(&k.pod) && named.insert(k.pod.clone()))
            .collect();
        kept.reverse();
        report.kept = kept;
        let mut named = BTreeSet::new();
        report
            .not_retired
            .retain(|p| !removed.contains(p) && named.insert(p.clone()));
        Ok(())
    }

    /// One round of [`Self::scale_down`]: removes up to `n` active workers of `pods`.
    /// Returns the pods not deleted because they changed since listed.
    async fn scale_down_once(
        &self,
        pods: &[WorkerPodState],
        n: usize,
        force: bool,
        report: &mut ScaleReport,
    ) -> Vec<String> {
        // What goes without the scheduler: ended pods and pods no worker can be in. When
        // that is enough, the round trip (a port-forward from outside) is skipped, which is
        // what scaling down a thousand Pending pods waits on besides the deletes.
        let blind = plan_scale_down(pods, None, n, force);
        let needs_scheduler = !blind.kept.is_empty()
            || blind
                .delete_now
                .iter()
                .any(|(_, r)| *r == DeleteReason::Forced);
        let mut silence = None;
        let plan = if needs_scheduler {
            match self.scheduler.workers().await {
                Ok(workers) => plan_scale_down(pods, Some(&workers), n, force),
                Err(e) => {
                    warn!(error = %e, force, "the scheduler did not answer: only pods no worker can be in are removed, unless forced");
                    silence = Some(e.to_string());
                    blind
                }
            }
        } else {
            blind
        };
        debug!(?plan, "scale-down plan");
        let ScaleDownPlan {
            delete_now,
            retire,
            kept,
        } = plan;
        report.kept.extend(kept.into_iter().map(|k| KeptPod {
            detail: k.detail.or_else(|| silence.clone()),
            ..k
        }));
        let versions: BTreeMap<&str, Option<String>> = pods
            .iter()
            .map(|p| (p.name.as_str(), p.resource_version.clone()))
            .collect();
        let mut changed = Vec::new();
        for (reason, names) in group_by_reason(&delete_now) {
            if reason.needs_unchanged_pod() {
                let at: Vec<(String, Option<String>)> = names
                    .into_iter()
                    .map(|name| {
                        let version = versions.get(name.as_str()).cloned().flatten();
                        (name, version)
                    })
                    .collect();
                let (result, moved) = self.api.delete_pods_unchanged(&at).await;
                report
                    .deleted
                    .extend(result.done.into_iter().map(|name| (name, reason)));
                report.failed.extend(result.failed);
                report.retried += result.retried;
                changed.extend(moved);
            } else {
                self.delete_into(&names, reason, report).await;
            }
        }
        if !retire.is_empty() {
            self.retire_then_delete(&retire, report).await;
        }
        changed
    }

    /// Retires `targets`' workers, then deletes the pods the scheduler confirmed and a fresh
    /// look (pods, then workers) finds empty; the rest is kept and reported.
    async fn retire_then_delete(&self, targets: &[RetireTarget], report: &mut ScaleReport) {
        let addresses: Vec<String> = targets.iter().flat_map(|t| t.addresses.clone()).collect();
        let started = Instant::now();
        let (retired, refusal) = match self.scheduler.retire_workers(&addresses).await {
            Ok(r) => (r, None),
            Err(e) => {
                warn!(error = %e, "retire_workers failed: its workers are kept");
                (BTreeSet::new(), Some(e.to_string()))
            }
        };
        // Pods first, then workers: a worker that connects in between is seen.
        let fresh_pods = self.worker_pods().await;
        let fresh_workers = match &fresh_pods {
            Ok(_) => self.scheduler.workers().await,
            Err(_) => Ok(Vec::new()),
        };
        let look_failed = match (&fresh_pods, &fresh_workers) {
            (Err(e), _) | (_, Err(e)) => Some(e.to_string()),
            _ => None,
        };
        let fresh = match (&fresh_pods, &fresh_workers) {
            (Ok(p), Ok(w)) => Some((p.as_slice(), w.as_slice())),
            _ => None,
        };
        let (confirmed, kept) = retired_pods_to_delete(targets, &retired, fresh);
        info!(cluster = %self.cluster, retired = confirmed.len(), asked = targets.len(),
              seconds = started.elapsed().as_secs_f64(), "workers retired");
        let result = self.api.delete_pods(&confirmed, None).await;
        report.retired.extend(result.done);
        report.failed.extend(result.failed);
        report.retried += result.retried;
        report
            .not_retired
            .extend(kept.iter().map(|k| k.pod.clone()));
        report.kept.extend(kept.into_iter().map(|k| {
            let detail = match k.reason {
                KeepReason::RetireNotConfirmed => refusal.clone(),
                KeepReason::NoFreshLook => look_failed.clone(),
                _ => None,
            };
            KeptPod { detail, ..k }
        }));
    }

    /// Paces a scale-up of `create` pods over `pods` ([`pace_replacements`]). The scheduler is
    /// asked which pods its workers are in only when some pod ended: growth needs no window.
    /// A scheduler that does not answer has no worker connected, as the operator counts a
    /// scheduler that is not ready: a lost scheduler is when replacements storm.
    async fn pace(&self, pods: &[WorkerPodState], create: usize, window: usize) -> PacedScaleUp {
        if !pods.iter().any(WorkerPodState::ended) {
            return pace_replacements(create, pods, 0);
        }
        let workers = match self.scheduler.workers().await {
            Ok(workers) => workers,
            Err(e) => {
                debug!(error = %e, "no workers from the scheduler: none counts as connected");
                Vec::new()
            }
        };
        let placement = place_workers(pods, &workers);
        let (room, _) = start_window(pods, Some(&placement.connected_pods()), window);
        pace_replacements(create, pods, room)
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
            // Replacements of ended workers take their turn in the start window; an ended
            // pod stays until its replacement is created.
            let paced = match decision.action {
                ScaleAction::Up { create, .. } => {
                    self.pace(&pods, create as usize, policy.start_window).await
                }
                _ => PacedScaleUp {
                    cleanup: decision.cleanup.clone(),
                    ..PacedScaleUp::default()
                },
            };
            if !paced.cleanup.is_empty() {
                let result = self.api.delete_pods(&paced.cleanup, None).await;
                info!(cluster = %self.cluster, deleted = ?result.done, failed = ?result.failed, "cleaned up ended worker pods");
            }
            match decision.action {
                ScaleAction::Hold => {
                    // Every decision is logged, a steady state once.
                    if decision.reason != last_reason {
                        info!(cluster = %self.cluster, reason = %decision.reason, "adapt: hold");
                    }
                }
                ScaleAction::Up { to, .. } => {
                    if paced.create > 0 {
                        info!(cluster = %self.cluster, create = paced.create, held = paced.held, to, reason = %decision.reason, "adapt: scaling up");
                        let (report, fatal) = self.create_workers(paced.create).await;
                        if !report.failed.is_empty() {
                            warn!(failed = ?report.failed, "some worker pods were not created");
                        }
                        if let Some(e) = fatal {
                            warn!(error = %e, "adapt cannot create workers");
                        }
                        last_change = Some(now);
                    } else if decision.reason != last_reason {
                        info!(cluster = %self.cluster, held = paced.held, to, reason = %decision.reason,
                              "adapt: replacements of ended workers wait for the start window");
                    }
                }
                ScaleAction::Down { remove, to } => {
                    info!(cluster = %self.cluster, remove, to, reason = %decision.reason, "adapt: scaling down");
                    let mut report = ScaleReport::default();
                    if let Err(e) = self
                        .scale_down(&pods, to as usize, false, &mut report)
                        .await
                    {
                        warn!(error = %e, "adapt scale-down incomplete");
                    }
                    if !report.kept.is_empty() || !report.failed.is_empty() {
                        let kept: Vec<String> =
                            report.kept.iter().map(ToString::to_string).collect();
                        warn!(?kept, failed = ?report.failed, "adapt scale-down incomplete");
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
    use crate::apiserver::mock::{Handle, body_json, mock_client, ok_json, status};
    use crate::scaling::SchedulerWorker;
    use crate::scheduler_api::{HttpSchedulerApi, TcpConnect};
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::TokioIo;
    use serde_json::json;
    use std::net::SocketAddr;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A scheduler whose answers the test sets, recording retire calls (no HTTP: for tests
    /// on tokio's paused clock).
    #[derive(Default)]
    struct FakeScheduler {
        target: Mutex<VecDeque<u32>>,
        /// Every target poll fails as a poll of a paused scheduler does (a timeout).
        target_times_out: AtomicBool,
        workers: Mutex<Vec<SchedulerWorker>>,
        retire_confirms: Mutex<Option<BTreeSet<String>>>,
        retire_calls: Mutex<Vec<Vec<String>>>,
        workers_calls: Mutex<usize>,
        /// Every call for the workers fails, as to a lost scheduler.
        workers_fail: AtomicBool,
    }

    impl SchedulerApi for FakeScheduler {
        async fn adaptive_target(&self) -> Result<u32> {
            if self.target_times_out.load(Ordering::SeqCst) {
                return Err(Error::Timeout {
                    what: "the Dask scheduler to answer /api/v1/adaptive_target".into(),
                    seconds: 15,
                });
            }
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
            if self.workers_fail.load(Ordering::SeqCst) {
                return Err(Error::SchedulerUnreachable {
                    endpoint: "fake".into(),
                    reason: "connection refused".into(),
                });
            }
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
        async fn idle_since(&self) -> Result<Option<f64>> {
            Ok(None)
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

    /// A worker pod as the API server stores it: `ip` its IP (none yet: `None`), `started`
    /// whether its container runs, `version` its resourceVersion.
    fn pod(
        name: &str,
        phase: &str,
        ip: Option<&str>,
        started: bool,
        created: u32,
        version: &str,
    ) -> Value {
        let state = if started {
            json!({"running": {"startedAt": "2026-01-01T00:00:00Z"}})
        } else {
            json!({"waiting": {"reason": "ContainerCreating"}})
        };
        let mut status = json!({"phase": phase, "containerStatuses": [{
            "name": "w", "image": "i", "imageID": "", "ready": started, "restartCount": 0,
            "state": state}]});
        if let Some(ip) = ip {
            status["podIP"] = json!(ip);
            status["podIPs"] = json!([{"ip": ip}]);
        }
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": "ns", "resourceVersion": version,
                            "creationTimestamp": format!("2026-01-01T00:00:{created:02}Z")},
               "spec": {"containers": [{"name": "w", "image": "i"}]},
               "status": status})
    }

    fn running(name: &str, ip: &str, created: u32) -> Value {
        pod(name, "Running", Some(ip), true, created, "1")
    }

    type Change = Box<dyn FnOnce(&mut BTreeMap<String, Value>) + Send>;

    /// The API server as scale-down sees it: the pods it stores, the calls it got
    /// (`list`, `delete NAME`, `delete NAME if VERSION`), and changes made to the pods right
    /// after the n-th list (a container that starts meanwhile). A delete with a
    /// `resourceVersion` precondition that no longer holds is refused with 409, as the API
    /// server does.
    #[derive(Default)]
    struct ApiServer {
        pods: BTreeMap<String, Value>,
        calls: Vec<String>,
        lists: usize,
        after_list: BTreeMap<usize, Change>,
    }

    impl ApiServer {
        fn with(pods: Vec<Value>) -> Arc<Mutex<Self>> {
            let pods = pods
                .into_iter()
                .map(|p| (p["metadata"]["name"].as_str().unwrap().to_owned(), p))
                .collect();
            Arc::new(Mutex::new(ApiServer {
                pods,
                ..ApiServer::default()
            }))
        }
    }

    /// A token cancelled once the API server has answered `lists` pod lists (an adapt loop
    /// lists once per poll): how a test lets the loop run so many polls.
    fn cancelled_after_lists(api: &Arc<Mutex<ApiServer>>, lists: usize) -> CancellationToken {
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let polls = api.clone();
        tokio::spawn(async move {
            while polls.lock().unwrap().lists < lists {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            stop.cancel();
        });
        cancel
    }

    fn serve_api(mut handle: Handle, state: Arc<Mutex<ApiServer>>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let method = request.method().clone();
                let path = request.uri().path().to_owned();
                let bytes = request.into_body().collect().await.unwrap().to_bytes();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let mut api = state.lock().unwrap();
                if method == http::Method::GET && path == "/api/v1/namespaces/ns/pods" {
                    api.lists += 1;
                    api.calls.push("list".into());
                    let items: Vec<Value> = api.pods.values().cloned().collect();
                    send.send_response(ok_json(
                        json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items}),
                    ));
                    let lists = api.lists;
                    if let Some(change) = api.after_list.remove(&lists) {
                        change(&mut api.pods);
                    }
                } else if method == http::Method::DELETE {
                    let name = path.rsplit('/').next().unwrap().to_owned();
                    let precondition = body["preconditions"]["resourceVersion"]
                        .as_str()
                        .map(str::to_owned);
                    api.calls.push(match &precondition {
                        Some(v) => format!("delete {name} if {v}"),
                        None => format!("delete {name}"),
                    });
                    let current = api.pods.get(&name).map(|p| {
                        p["metadata"]["resourceVersion"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned()
                    });
                    match current {
                        None => send.send_response(status(404, "NotFound", "not found", json!({}))),
                        Some(v) if precondition.as_ref().is_some_and(|want| *want != v) => send
                            .send_response(status(
                                409,
                                "Conflict",
                                &format!(
                                    "Operation cannot be fulfilled on Pod \"{name}\": \
                                     Precondition failed: ResourceVersion in precondition: {}, \
                                     ResourceVersion in object meta: {v}",
                                    precondition.unwrap_or_default()
                                ),
                                json!({"name": name, "kind": "pods"}),
                            )),
                        Some(_) => {
                            let gone = api.pods.remove(&name).unwrap();
                            send.send_response(ok_json(gone));
                        }
                    }
                } else if method == http::Method::POST && path == "/api/v1/namespaces/ns/pods" {
                    // A created pod is stored Pending, named in order of creation.
                    let mut created = body;
                    let made = api.calls.iter().filter(|c| c.starts_with("create")).count();
                    let name = format!("c-worker-new{made}");
                    created["metadata"]["name"] = json!(name);
                    created["metadata"]["namespace"] = json!("ns");
                    created["metadata"]["resourceVersion"] = json!("1");
                    created["metadata"]["creationTimestamp"] = json!("2026-01-01T00:01:00Z");
                    created["status"] = json!({"phase": "Pending"});
                    api.calls.push(format!("create {name}"));
                    api.pods.insert(name, created.clone());
                    send.send_response(ok_json(created));
                } else {
                    panic!("unexpected call {method} {path}");
                }
            }
        })
    }

    /// How the mock scheduler answers `POST /api/v1/retire_workers`.
    #[derive(Clone)]
    enum Retire {
        /// Retires every worker asked for that it knows, and says so.
        Confirm,
        /// Retires and confirms only these addresses.
        Only(Vec<String>),
        /// Answers 500, as a scheduler whose retirement raised.
        Refuse,
        /// Never answers (the client's retire timeout ends the call).
        Hang,
    }

    /// The scheduler's HTTP API on 127.0.0.1: `get_workers` lists `workers`; a retirement
    /// answers as `retire` says, then the worker list becomes `after_retire` when set (a
    /// nanny that restarted its worker at a new address, a worker gone).
    struct SchedulerState {
        workers: Vec<SchedulerWorker>,
        retire: Retire,
        after_retire: Option<Vec<SchedulerWorker>>,
        /// The API server's call log, to order retirements among its calls.
        api: Arc<Mutex<ApiServer>>,
    }

    async fn serve_scheduler(state: Arc<Mutex<SchedulerState>>) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let state = state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let state = state.clone();
                            async move {
                                let path = req.uri().path().to_owned();
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                let (code, text) = answer(&state, &path, &body).await;
                                Ok::<_, std::convert::Infallible>(
                                    http::Response::builder()
                                        .status(code)
                                        .body(Full::new(Bytes::from(text)))
                                        .unwrap(),
                                )
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        addr
    }

    async fn answer(state: &Mutex<SchedulerState>, path: &str, body: &[u8]) -> (u16, String) {
        let retire = {
            let mut s = state.lock().unwrap();
            match path {
                "/api/v1/get_workers" => {
                    let workers: Vec<Value> = s
                        .workers
                        .iter()
                        .map(|w| json!({"name": w.name, "address": w.address}))
                        .collect();
                    return (
                        200,
                        json!({"num_workers": workers.len(), "workers": workers}).to_string(),
                    );
                }
                "/api/v1/retire_workers" => {
                    let asked: Vec<String> =
                        serde_json::from_slice::<Value>(body).unwrap()["workers"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|a| a.as_str().unwrap().to_owned())
                            .collect();
                    s.api
                        .lock()
                        .unwrap()
                        .calls
                        .push(format!("retire {}", asked.join(" ")));
                    let confirmed: Vec<String> = match &s.retire {
                        Retire::Confirm => asked
                            .iter()
                            .filter(|a| s.workers.iter().any(|w| &w.address == *a))
                            .cloned()
                            .collect(),
                        Retire::Only(these) => these.clone(),
                        Retire::Refuse | Retire::Hang => Vec::new(),
                    };
                    s.workers.retain(|w| !confirmed.contains(&w.address));
                    if let Some(after) = s.after_retire.take() {
                        s.workers = after;
                    }
                    match s.retire {
                        Retire::Refuse => {
                            return (500, r#"{"Error": "Internal Server Error"}"#.into());
                        }
                        Retire::Hang => None,
                        _ => Some(confirmed),
                    }
                }
                _ => return (404, "404: Not Found".into()),
            }
        };
        match retire {
            Some(confirmed) => {
                let answer: serde_json::Map<String, Value> = confirmed
                    .into_iter()
                    .map(|a| (a, json!({"status": "closing_gracefully"})))
                    .collect();
                (200, Value::Object(answer).to_string())
            }
            None => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                (200, "{}".into())
            }
        }
    }

    fn listening(name: &str, address: &str) -> SchedulerWorker {
        SchedulerWorker {
            name: name.into(),
            address: format!("tcp://{address}"),
            nanny: None,
            managed_bytes: None,
            busy: None,
        }
    }

    /// A cluster `c` in namespace `ns`: the mock API server with `pods`, and the mock
    /// scheduler knowing `workers` and answering retirements as `retire` says.
    struct Scenario {
        api: Arc<Mutex<ApiServer>>,
        scheduler: Arc<Mutex<SchedulerState>>,
        scaler: Scaler<HttpSchedulerApi<TcpConnect>>,
        server: tokio::task::JoinHandle<()>,
    }

    /// Bound on a retirement in these tests (the mock's hung one ends by it).
    const TEST_RETIRE_TIMEOUT: Duration = Duration::from_millis(500);

    async fn scenario(pods: Vec<Value>, workers: Vec<SchedulerWorker>, retire: Retire) -> Scenario {
        let api = ApiServer::with(pods);
        let scheduler = Arc::new(Mutex::new(SchedulerState {
            workers,
            retire,
            after_retire: None,
            api: api.clone(),
        }));
        let addr = serve_scheduler(scheduler.clone()).await;
        let (client, handle) = mock_client();
        let server = serve_api(handle, api.clone());
        let http = HttpSchedulerApi::new(TcpConnect {
            address: addr.to_string(),
        })
        .with_timeouts(Duration::from_secs(5), TEST_RETIRE_TIMEOUT);
        Scenario {
            api,
            scheduler,
            scaler: scaler_with(client, Arc::new(http)),
            server,
        }
    }

    impl Scenario {
        fn calls(&self) -> Vec<String> {
            self.api.lock().unwrap().calls.clone()
        }

        fn left(&self) -> Vec<String> {
            self.api.lock().unwrap().pods.keys().cloned().collect()
        }

        fn after_retire(&self, workers: Vec<SchedulerWorker>) {
            self.scheduler.lock().unwrap().after_retire = Some(workers);
        }

        async fn finish(self) {
            drop(self.scaler);
            self.server.await.unwrap();
        }
    }

    fn scaler_with<S: SchedulerApi>(client: kube::Client, scheduler: Arc<S>) -> Scaler<S> {
        let worker_pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "c-worker-", "namespace": "ns"}, "spec": {"containers": [{"name": "w", "image": "i"}]}});
        Scaler::new(
            ClusterApi::new(crate::apiserver::KubeConnection::new(
                client,
                "ns",
                "https://127.0.0.1:6443",
            )),
            scheduler,
            "c",
            worker_pod,
            Some(Owner {
                name: "c".into(),
                uid: "uid-1".into(),
            }),
        )
    }

    fn scaler(client: kube::Client, scheduler: Arc<FakeScheduler>) -> Scaler<FakeScheduler> {
        scaler_with(client, scheduler)
    }

    fn worker(name: &str) -> SchedulerWorker {
        SchedulerWorker {
            name: name.into(),
            address: format!("tcp://{name}:1"),
            nanny: None,
            managed_bytes: Some(0),
            busy: Some(false),
        }
    }

    /// The call sequence of a scale-down from 3 to 1: list, delete the pending pod if it has
    /// not changed, retire one connected worker, look again (pods, then workers), delete
    /// only that confirmed pod.
    #[tokio::test]
    async fn scale_down_retires_before_deleting() {
        let (client, handle) = mock_client();
        let api = ApiServer::with(vec![
            pod("c-worker-a", "Running", Some("10.0.0.1"), true, 1, "11"),
            pod("c-worker-b", "Running", Some("10.0.0.2"), true, 2, "12"),
            pod("c-worker-p", "Pending", None, false, 3, "13"),
        ]);
        let server = serve_api(handle, api.clone());
        let fake = Arc::new(FakeScheduler::default());
        *fake.workers.lock().unwrap() = vec![
            listening("c-worker-a", "10.0.0.1:4"),
            listening("c-worker-b", "10.0.0.2:4"),
        ];
        let s = scaler(client, fake.clone());
        let report = within(s.scale(1, false)).await.unwrap();
        drop(s);
        server.await.unwrap();
        // The pending pod first, then the newest idle connected worker, retired.
        assert_eq!(
            api.lock().unwrap().calls,
            vec![
                "list",
                "delete c-worker-p if 13",
                "list",
                "delete c-worker-b"
            ]
        );
        assert_eq!(
            *fake.retire_calls.lock().unwrap(),
            vec![vec!["tcp://10.0.0.2:4".to_owned()]]
        );
        assert_eq!(*fake.workers_calls.lock().unwrap(), 2, "before and after");
        assert_eq!(
            report.deleted,
            vec![("c-worker-p".to_owned(), DeleteReason::Pending)]
        );
        assert_eq!(report.retired, vec!["c-worker-b".to_owned()]);
        assert!(report.kept.is_empty() && report.not_retired.is_empty());
    }

    /// Pods none of whose containers started hold no worker: scaling them down deletes them
    /// without asking the scheduler (oldest kept, newest deleted first).
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
            let mut deleted = Vec::new();
            for _ in 0..2 {
                let (request, send) = handle.next_request().await.unwrap();
                assert_eq!(request.method(), http::Method::DELETE);
                let name = request.uri().path().rsplit('/').next().unwrap().to_owned();
                send.send_response(ok_json(pod_json(&name, "Pending", "2026-01-01T00:00:01Z")));
                deleted.push(name);
            }
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
        let (client, handle) = mock_client();
        let api = ApiServer::with(vec![
            pod("c-worker-a", "Running", None, true, 1, "1"),
            pod("c-worker-b", "Running", None, true, 2, "1"),
        ]);
        let server = serve_api(handle, api.clone());
        let fake = Arc::new(FakeScheduler::default());
        *fake.workers.lock().unwrap() = vec![worker("c-worker-a"), worker("c-worker-b")];
        *fake.retire_confirms.lock().unwrap() = Some(BTreeSet::new());
        let s = scaler(client, fake);
        let err = within(s.scale(1, false)).await.unwrap_err();
        drop(s);
        server.await.unwrap();
        assert_eq!(
            api.lock().unwrap().calls,
            vec!["list", "list"],
            "nothing deleted"
        );
        assert_eq!(err.exit_code(), crate::error::exit::PARTIAL);
        assert!(
            err.to_string().contains(
                "c-worker-b: kept, the scheduler did not confirm retiring its workers (tcp://c-worker-b:1)"
            ),
            "{err}"
        );
    }

    /// Issue 24, case 1: a template that names its workers itself (`--name $(POD_NAME)-w`).
    /// Matched by name, those pods looked "not connected" and were deleted without retiring
    /// (12 of 16 scattered arrays lost on the local cluster); matched by IP, the worker is
    /// retired first and its pod deleted after.
    #[tokio::test]
    async fn workers_with_custom_names_are_retired_before_their_pods_go() {
        let s = scenario(
            vec![
                running("c-worker-aaaaa", "10.0.0.1", 1),
                running("c-worker-bbbbb", "10.0.0.2", 2),
            ],
            vec![
                listening("c-worker-aaaaa-w", "10.0.0.1:4"),
                listening("c-worker-bbbbb-w", "10.0.0.2:4"),
            ],
            Retire::Confirm,
        )
        .await;
        let report = within(s.scaler.scale(1, false)).await.unwrap();
        assert_eq!(
            s.calls(),
            vec![
                "list",
                "retire tcp://10.0.0.2:4",
                "list",
                "delete c-worker-bbbbb"
            ]
        );
        assert_eq!(report.retired, vec!["c-worker-bbbbb".to_owned()]);
        assert!(report.deleted.is_empty(), "{report:?}");
        s.finish().await;
    }

    /// Issue 24, case 2: a pod listed while Pending (no container started, no IP) whose
    /// worker connected before the scheduler was asked. It is deleted only at the version it
    /// was listed at; it started since, so the API server refuses, and the next look finds
    /// its worker: retired, then deleted.
    #[tokio::test]
    async fn a_worker_that_connected_after_its_pod_was_listed_is_retired_not_deleted() {
        let s = scenario(
            vec![
                running("c-worker-aaaaa", "10.0.0.1", 1),
                pod("c-worker-bbbbb", "Pending", None, false, 2, "5"),
            ],
            vec![
                listening("alice", "10.0.0.1:4"),
                listening("bob", "10.0.0.2:4"),
            ],
            Retire::Confirm,
        )
        .await;
        s.api.lock().unwrap().after_list.insert(
            1,
            Box::new(|pods| {
                pods.insert(
                    "c-worker-bbbbb".into(),
                    pod("c-worker-bbbbb", "Running", Some("10.0.0.2"), true, 2, "6"),
                );
            }),
        );
        let report = within(s.scaler.scale(1, false)).await.unwrap();
        let calls = s.calls();
        assert!(
            !calls.contains(&"delete c-worker-bbbbb".to_owned())
                || calls.iter().position(|c| c == "retire tcp://10.0.0.2:4")
                    < calls.iter().position(|c| c == "delete c-worker-bbbbb"),
            "deleted before its worker retired: {calls:?}"
        );
        assert_eq!(
            calls,
            vec![
                "list",
                "delete c-worker-bbbbb if 5",
                "list",
                "retire tcp://10.0.0.2:4",
                "list",
                "delete c-worker-bbbbb"
            ]
        );
        assert_eq!(report.retired, vec!["c-worker-bbbbb".to_owned()]);
        assert!(report.kept.is_empty(), "{report:?}");
        s.finish().await;
    }

    /// Issue 24, case 3: the nanny restarts the worker during the scale-down; the old address
    /// disappears and the worker is back at a new one on the same pod (holding data again).
    /// The pod is kept whether the scheduler left the old address out of its answer or
    /// confirmed it.
    #[rstest::rstest]
    #[case::answer_leaves_it_out(Retire::Only(vec![]), KeepReason::RetireNotConfirmed)]
    #[case::confirmed_then_restarted(Retire::Confirm, KeepReason::WorkerInPod)]
    #[tokio::test]
    async fn a_nanny_restart_during_retirement_keeps_the_pod(
        #[case] retire: Retire,
        #[case] reason: KeepReason,
    ) {
        let s = scenario(
            vec![
                running("c-worker-aaaaa", "10.0.0.1", 1),
                running("c-worker-bbbbb", "10.0.0.2", 2),
            ],
            vec![
                listening("c-worker-aaaaa", "10.0.0.1:4"),
                listening("c-worker-bbbbb", "10.0.0.2:4"),
            ],
            retire,
        )
        .await;
        s.after_retire(vec![
            listening("c-worker-aaaaa", "10.0.0.1:4"),
            listening("c-worker-bbbbb", "10.0.0.2:7"),
        ]);
        let err = within(s.scaler.scale(1, false)).await.unwrap_err();
        assert_eq!(
            s.left(),
            vec!["c-worker-aaaaa", "c-worker-bbbbb"],
            "{:?}",
            s.calls()
        );
        assert!(
            err.to_string()
                .contains(&format!("c-worker-bbbbb: kept, {}", reason.describe())),
            "{err}"
        );
        s.finish().await;
    }

    /// Issue 24, case 4: the scheduler does not answer. Only the pod none of whose containers
    /// started is deleted (at its listed version); the Running one, the Pending one whose
    /// container runs and the Unknown one (its node stopped reporting, its worker may live)
    /// are kept and named.
    #[tokio::test]
    async fn with_the_scheduler_unreachable_only_unstarted_pods_are_deleted() {
        let (client, handle) = mock_client();
        let api = ApiServer::with(vec![
            pod("c-worker-unstarted", "Pending", None, false, 4, "40"),
            pod(
                "c-worker-started",
                "Pending",
                Some("10.0.0.3"),
                true,
                3,
                "30",
            ),
            pod(
                "c-worker-unknown",
                "Unknown",
                Some("10.0.0.2"),
                true,
                2,
                "20",
            ),
            pod(
                "c-worker-running",
                "Running",
                Some("10.0.0.1"),
                true,
                1,
                "10",
            ),
        ]);
        let server = serve_api(handle, api.clone());
        // Bound, then closed: nothing listens there.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let http = HttpSchedulerApi::new(TcpConnect {
            address: closed.to_string(),
        });
        let s = scaler_with(client, Arc::new(http));
        let err = within(s.scale(0, false)).await.unwrap_err();
        drop(s);
        server.await.unwrap();
        assert_eq!(
            api.lock().unwrap().calls,
            vec!["list", "delete c-worker-unstarted if 40"]
        );
        let message = err.to_string();
        for pod in ["c-worker-started", "c-worker-unknown", "c-worker-running"] {
            assert!(
                message.contains(&format!(
                    "{pod}: kept, the scheduler did not answer, so whether its workers hold data is unknown"
                )),
                "{message}"
            );
        }
        assert_eq!(err.exit_code(), crate::error::exit::PARTIAL);
    }

    /// A pod that changes while it is being deleted as "not started", the scheduler
    /// unreachable: the API server refuses the delete and the second round plans from a fresh
    /// list. Started, the pod is kept like the Running one; ended, it is cleaned up and the
    /// Running one, kept in both rounds, is named once.
    #[rstest::rstest]
    #[case::started(
        pod("c-worker-new", "Running", Some("10.0.0.2"), true, 2, "21"),
        vec!["list", "delete c-worker-new if 20", "list"],
        vec!["c-worker-new", "c-worker-old"]
    )]
    #[case::ended(
        pod("c-worker-new", "Failed", None, false, 2, "21"),
        vec!["list", "delete c-worker-new if 20", "list", "delete c-worker-new"],
        vec!["c-worker-old"]
    )]
    #[tokio::test]
    async fn a_pod_that_changed_meanwhile_is_planned_again_when_the_scheduler_is_silent(
        #[case] changed: Value,
        #[case] calls: Vec<&str>,
        #[case] kept: Vec<&str>,
    ) {
        let (client, handle) = mock_client();
        let api = ApiServer::with(vec![
            pod("c-worker-new", "Pending", None, false, 2, "20"),
            running("c-worker-old", "10.0.0.1", 1),
        ]);
        api.lock().unwrap().after_list.insert(
            1,
            Box::new(move |pods| {
                pods.insert("c-worker-new".into(), changed);
            }),
        );
        let server = serve_api(handle, api.clone());
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let http = HttpSchedulerApi::new(TcpConnect {
            address: closed.to_string(),
        });
        let s = scaler_with(client, Arc::new(http));
        let err = within(s.scale(0, false)).await.unwrap_err();
        drop(s);
        server.await.unwrap();
        assert_eq!(api.lock().unwrap().calls, calls);
        let message = err.to_string();
        assert_eq!(message.matches(": kept, ").count(), kept.len(), "{message}");
        for pod in kept {
            let line = format!("{pod}: kept, the scheduler did not answer");
            assert_eq!(message.matches(&line).count(), 1, "{message}");
        }
    }

    /// A retirement the scheduler refuses (500) while the worker is gone from its list (as
    /// in a nanny restart): nothing says the data moved, so the pod stays.
    #[tokio::test]
    async fn a_refused_retirement_keeps_the_pod() {
        let s = scenario(
            vec![
                running("c-worker-aaaaa", "10.0.0.1", 1),
                running("c-worker-bbbbb", "10.0.0.2", 2),
            ],
            vec![
                listening("c-worker-aaaaa", "10.0.0.1:4"),
                listening("c-worker-bbbbb", "10.0.0.2:4"),
            ],
            Retire::Refuse,
        )
        .await;
        s.after_retire(vec![listening("c-worker-aaaaa", "10.0.0.1:4")]);
        let err = within(s.scaler.scale(1, false)).await.unwrap_err();
        assert_eq!(
            s.left(),
            vec!["c-worker-aaaaa", "c-worker-bbbbb"],
            "{:?}",
            s.calls()
        );
        let message = err.to_string();
        assert!(
            message.contains("c-worker-bbbbb: kept, the scheduler did not confirm retiring its workers (tcp://10.0.0.2:4)")
                && message.contains("answered 500"),
            "{message}"
        );
        s.finish().await;
    }

    /// A retirement that does not finish within its bound, its worker no longer listed: the
    /// scheduler has not said the data moved, so the pod stays.
    #[tokio::test]
    async fn a_timed_out_retirement_keeps_the_pod() {
        let s = scenario(
            vec![
                running("c-worker-aaaaa", "10.0.0.1", 1),
                running("c-worker-bbbbb", "10.0.0.2", 2),
            ],
            vec![
                listening("c-worker-aaaaa", "10.0.0.1:4"),
                listening("c-worker-bbbbb", "10.0.0.2:4"),
            ],
            Retire::Hang,
        )
        .await;
        s.after_retire(vec![listening("c-worker-aaaaa", "10.0.0.1:4")]);
        let err = within(s.scaler.scale(1, false)).await.unwrap_err();
        assert_eq!(
            s.left(),
            vec!["c-worker-aaaaa", "c-worker-bbbbb"],
            "{:?}",
            s.calls()
        );
        let message = err.to_string();
        assert!(
            message.contains("c-worker-bbbbb: kept, the scheduler did not confirm retiring")
                && message.contains("timed out"),
            "{message}"
        );
        s.finish().await;
    }

    /// The scheduler retires one of the two workers asked for; the other is gone from its
    /// list without being confirmed: only the confirmed pod goes.
    #[tokio::test]
    async fn a_partial_retirement_deletes_only_the_confirmed_pod() {
        let s = scenario(
            vec![
                running("c-worker-aaaaa", "10.0.0.1", 1),
                running("c-worker-bbbbb", "10.0.0.2", 2),
                running("c-worker-ccccc", "10.0.0.3", 3),
            ],
            vec![
                listening("c-worker-aaaaa", "10.0.0.1:4"),
                listening("c-worker-bbbbb", "10.0.0.2:4"),
                listening("c-worker-ccccc", "10.0.0.3:4"),
            ],
            Retire::Only(vec!["tcp://10.0.0.2:4".into()]),
        )
        .await;
        s.after_retire(vec![listening("c-worker-aaaaa", "10.0.0.1:4")]);
        let err = within(s.scaler.scale(1, false)).await.unwrap_err();
        assert_eq!(
            s.left(),
            vec!["c-worker-aaaaa", "c-worker-ccccc"],
            "{:?}",
            s.calls()
        );
        let message = err.to_string();
        assert!(
            message.contains("c-worker-ccccc: kept, the scheduler did not confirm retiring its workers (tcp://10.0.0.3:4)"),
            "{message}"
        );
        assert!(!message.contains("c-worker-bbbbb"), "{message}");
        s.finish().await;
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

    /// Fault 9 in miniature: the scheduler's target polls time out (a paused scheduler)
    /// while 3 busy workers run, with the least damping there is (1 poll, no cooldown). A
    /// poll that failed is no target: 10 polls list the pods and nothing else happens. A
    /// build that read the timeout as "target 0" would scale down at the first poll: ask the
    /// scheduler for its workers, retire two and delete their pods.
    #[tokio::test(start_paused = true)]
    async fn adapt_takes_no_decision_on_polls_that_time_out() {
        let (client, handle) = mock_client();
        let api = ApiServer::with(vec![
            running("c-worker-aaaaa", "10.0.0.1", 1),
            running("c-worker-bbbbb", "10.0.0.2", 2),
            running("c-worker-ccccc", "10.0.0.3", 3),
        ]);
        let server = serve_api(handle, api.clone());
        let fake = Arc::new(FakeScheduler::default());
        fake.target_times_out.store(true, Ordering::SeqCst);
        *fake.workers.lock().unwrap() = vec![
            listening("c-worker-aaaaa", "10.0.0.1:4"),
            listening("c-worker-bbbbb", "10.0.0.2:4"),
            listening("c-worker-ccccc", "10.0.0.3:4"),
        ];
        let cancel = cancelled_after_lists(&api, 10);
        let policy = AdaptPolicy {
            wait_count: 1,
            cooldown: Duration::ZERO,
            ..AdaptPolicy::new(1, 3)
        };
        let s = scaler(client, fake.clone());
        within(s.run_adapt(policy, cancel)).await.unwrap();
        drop(s);
        server.await.unwrap();
        let calls = api.lock().unwrap().calls.clone();
        assert!(calls.iter().all(|c| c == "list"), "{calls:?}");
        assert_eq!(
            *fake.workers_calls.lock().unwrap(),
            0,
            "no scale-down began"
        );
        assert!(fake.retire_calls.lock().unwrap().is_empty());
    }

    /// Workers that ended are replaced within the start window, as the operator's are: two
    /// worker pods running, five ended, 7 wanted. The first poll deletes as many of the
    /// oldest ended pods as the window has room for and creates their replacements; the
    /// other ended pods stay, and the next polls (the replacements starting) create nothing.
    /// With the scheduler answering, the two running pods are connected and the window of 2
    /// is free. With the scheduler lost (no target, no workers; the minimum of 7 asks), no
    /// pod counts as connected: the two running pods fill a window of 2, and leave room for
    /// 2 in a window of 4. Before, the first poll deleted all five and created five.
    #[rstest::rstest]
    #[case::connected(false, 2, 2)]
    #[case::scheduler_lost(true, 4, 2)]
    #[case::scheduler_lost_running_pods_fill_the_window(true, 2, 0)]
    #[tokio::test(start_paused = true)]
    async fn adapt_replaces_ended_workers_within_the_start_window(
        #[case] scheduler_lost: bool,
        #[case] window: usize,
        #[case] replaced: usize,
    ) {
        let (client, handle) = mock_client();
        let ended = |name: &str, created: u32| pod(name, "Failed", None, true, created, "1");
        let api = ApiServer::with(vec![
            running("c-worker-aaaaa", "10.0.0.1", 1),
            running("c-worker-bbbbb", "10.0.0.2", 2),
            ended("c-worker-f3", 13),
            ended("c-worker-f1", 11),
            ended("c-worker-f5", 15),
            ended("c-worker-f2", 12),
            ended("c-worker-f4", 14),
        ]);
        let server = serve_api(handle, api.clone());
        let fake = Arc::new(FakeScheduler::default());
        fake.target.lock().unwrap().push_back(7);
        fake.target_times_out
            .store(scheduler_lost, Ordering::SeqCst);
        fake.workers_fail.store(scheduler_lost, Ordering::SeqCst);
        *fake.workers.lock().unwrap() = vec![
            listening("c-worker-aaaaa", "10.0.0.1:4"),
            listening("c-worker-bbbbb", "10.0.0.2:4"),
        ];
        let cancel = cancelled_after_lists(&api, 3);
        let policy = AdaptPolicy {
            start_window: window,
            ..AdaptPolicy::new(if scheduler_lost { 7 } else { 0 }, 10)
        };
        let s = scaler(client, fake.clone());
        within(s.run_adapt(policy, cancel)).await.unwrap();
        drop(s);
        server.await.unwrap();
        let api = api.lock().unwrap();
        let calls = &api.calls;
        let second_list = calls.iter().skip(1).position(|c| c == "list").unwrap() + 1;
        let mut first_poll = calls[1..second_list].to_vec();
        first_poll.sort();
        let creates = (0..replaced).map(|i| format!("create c-worker-new{i}"));
        let deletes = (1..=replaced).map(|i| format!("delete c-worker-f{i}"));
        assert_eq!(
            first_poll,
            creates.chain(deletes).collect::<Vec<_>>(),
            "{calls:?}"
        );
        assert!(
            calls[second_list..].iter().all(|c| c == "list"),
            "later polls wait for room: {calls:?}"
        );
        assert_eq!(api.pods.len(), 7, "{:?}", api.pods.keys());
        assert_eq!(
            *fake.workers_calls.lock().unwrap(),
            3,
            "the scheduler is asked for its workers at each poll that may replace"
        );
    }
}
