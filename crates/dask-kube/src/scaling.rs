//! Which worker pods to create or remove, as pure functions of pod states and the workers
//! the scheduler knows.
//!
//! Scale-down order (what users of the classic KubeCluster asked for): finished pods
//! (Succeeded/Failed) are always cleaned up; then Pending pods and pods whose worker never
//! connected go first, as they hold no data; only then are connected workers retired
//! through the scheduler, which moves their data away first. A pod is deleted only once
//! the scheduler confirms every worker in it retired.

use k8s_openapi::api::core::v1::Pod;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// A worker pod's phase as far as scaling cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PodPhase {
    /// Not started yet (unscheduled, pulling, starting).
    Pending,
    /// Running.
    Running,
    /// Exited 0 (a retired worker, or a worker whose scheduler went away).
    Succeeded,
    /// Exited non-zero, OOM-killed, evicted.
    Failed,
    /// The node stopped reporting.
    Unknown,
}

impl PodPhase {
    /// Whether the pod has ended.
    pub fn finished(self) -> bool {
        matches!(self, PodPhase::Succeeded | PodPhase::Failed)
    }
}

/// What scaling needs to know about one worker pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerPodState {
    /// Pod name (= Dask worker name).
    pub name: String,
    /// Phase.
    pub phase: PodPhase,
    /// Being deleted already (`deletionTimestamp` set).
    pub deleting: bool,
    /// Creation time, seconds since the epoch (0 when unknown): newer pods go first.
    pub created: i64,
    /// Why it ended (`OOMKilled`, `Evicted`, `Error`), if it did.
    pub reason: Option<String>,
}

impl WorkerPodState {
    /// Reads the state from a pod object.
    pub fn from_pod(pod: &Pod) -> Self {
        let status = pod.status.as_ref();
        let phase = match status.and_then(|s| s.phase.as_deref()) {
            Some("Running") => PodPhase::Running,
            Some("Succeeded") => PodPhase::Succeeded,
            Some("Failed") => PodPhase::Failed,
            Some("Unknown") => PodPhase::Unknown,
            _ => PodPhase::Pending,
        };
        let terminated_reason = status
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| {
                cs.iter().find_map(|c| {
                    c.state
                        .as_ref()
                        .and_then(|st| st.terminated.as_ref())
                        .and_then(|t| t.reason.clone())
                })
            });
        let reason = status
            .and_then(|s| s.reason.clone())
            .or(terminated_reason)
            .filter(|_| phase.finished());
        WorkerPodState {
            name: pod.metadata.name.clone().unwrap_or_default(),
            phase,
            deleting: pod.metadata.deletion_timestamp.is_some(),
            created: pod
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second())
                .unwrap_or_default(),
            reason,
        }
    }

    /// Counts as a worker that is there or coming: not ended and not being deleted.
    pub fn active(&self) -> bool {
        !self.phase.finished() && !self.deleting
    }

    /// Ended and not being deleted yet: to clean up, and to name in messages.
    pub fn ended(&self) -> bool {
        self.phase.finished() && !self.deleting
    }
}

/// A worker as the scheduler reports it (`/api/v1/get_workers`, enriched with
/// `/json/identity.json` metrics when available).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SchedulerWorker {
    /// Worker name (the pod name, or `<pod>-<i>` with `--nworkers`).
    pub name: String,
    /// Worker address (`tcp://10.244.0.7:40123`): what `retire_workers` takes.
    pub address: String,
    /// Bytes of data it holds, when known.
    pub managed_bytes: Option<u64>,
    /// Whether it is running tasks, when known.
    pub busy: Option<bool>,
}

/// Why a pod is deleted without retiring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeleteReason {
    /// It ended (Succeeded/Failed); cleaning it up loses nothing.
    Finished,
    /// Not started yet: holds no data.
    Pending,
    /// Running, but its worker is not connected to the scheduler: holds no data.
    NotConnected,
    /// Forced: the user accepted losing its data.
    Forced,
}

/// A pod to retire through the scheduler before deleting it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetireTarget {
    /// Pod name.
    pub pod: String,
    /// Addresses of its workers.
    pub addresses: Vec<String>,
}

/// What a scale-down does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ScaleDownPlan {
    /// Pods to delete at once, with the reason.
    pub delete_now: Vec<(String, DeleteReason)>,
    /// Pods to retire first (delete after the scheduler confirms).
    pub retire: Vec<RetireTarget>,
}

impl ScaleDownPlan {
    /// How many active workers this plan removes (finished pods do not count).
    pub fn removes(&self) -> usize {
        self.delete_now
            .iter()
            .filter(|(_, r)| *r != DeleteReason::Finished)
            .count()
            + self.retire.len()
    }
}

/// The worker pods that ended, when every worker pod of the cluster has ended and none is
/// left that could still connect: a flag `dask worker` refuses, an image that exits, a
/// memory limit below what a worker needs to start. Waiting for workers past that point
/// only runs out its timeout. `None` while any worker pod is Pending, Running or Unknown
/// (it may still connect), or when no pod ended (pods being deleted count for neither:
/// someone is scaling).
pub fn every_worker_pod_ended(pods: &[WorkerPodState]) -> Option<Vec<&WorkerPodState>> {
    if pods.iter().any(WorkerPodState::active) {
        return None;
    }
    let ended: Vec<&WorkerPodState> = pods.iter().filter(|p| p.ended()).collect();
    (!ended.is_empty()).then_some(ended)
}

/// `a (Failed, OOMKilled), b (Succeeded)`: the ended pods among `pods` for a message, at
/// most `limit` named; empty when none ended.
pub fn describe_ended_pods(pods: &[WorkerPodState], limit: usize) -> String {
    let ended: Vec<String> = pods
        .iter()
        .filter(|p| p.ended())
        .map(|p| match &p.reason {
            Some(reason) => format!("{} ({:?}, {reason})", p.name, p.phase),
            None => format!("{} ({:?})", p.name, p.phase),
        })
        .collect();
    match ended.len() {
        0 => String::new(),
        n if n > limit => format!("{} and {} more", ended[..limit].join(", "), n - limit),
        _ => ended.join(", "),
    }
}

/// Groups the scheduler's workers by pod name.
pub fn workers_by_pod<'a>(
    pods: &[WorkerPodState],
    workers: &'a [SchedulerWorker],
) -> BTreeMap<String, Vec<&'a SchedulerWorker>> {
    // A set lookup per worker (not a scan of every pod): planning stays O(n log n).
    let names: BTreeSet<&str> = pods.iter().map(|p| p.name.as_str()).collect();
    let mut by_pod: BTreeMap<String, Vec<&SchedulerWorker>> = BTreeMap::new();
    for worker in workers {
        let exact = names.get(worker.name.as_str()).copied();
        let pod = exact.or_else(|| {
            // `--nworkers k`: dask names the workers `<pod>-0` .. `<pod>-{k-1}`.
            let (prefix, index) = worker.name.rsplit_once('-')?;
            let numeric = !index.is_empty() && index.chars().all(|c| c.is_ascii_digit());
            numeric.then(|| names.get(prefix).copied()).flatten()
        });
        if let Some(pod) = pod {
            by_pod.entry(pod.to_owned()).or_default().push(worker);
        }
    }
    by_pod
}

/// Plans removing `n_to_remove` active worker pods (see the module docs for the order).
/// With `force`, connected workers are deleted without retiring (their data is lost).
///
/// # Example
/// ```
/// use dask_kube::scaling::*;
/// let pod = |name: &str, phase| WorkerPodState {
///     name: name.into(), phase, deleting: false, created: 0, reason: None };
/// let pods = [pod("w-a", PodPhase::Running), pod("w-b", PodPhase::Pending), pod("w-c", PodPhase::Failed)];
/// let workers = [SchedulerWorker { name: "w-a".into(), address: "tcp://10.0.0.1:1".into(),
///     managed_bytes: None, busy: None }];
/// let plan = plan_scale_down(&pods, &workers, 1, false);
/// assert_eq!(plan.delete_now, vec![("w-c".to_owned(), DeleteReason::Finished),
///                                  ("w-b".to_owned(), DeleteReason::Pending)]);
/// assert!(plan.retire.is_empty());
/// ```
pub fn plan_scale_down(
    pods: &[WorkerPodState],
    workers: &[SchedulerWorker],
    n_to_remove: usize,
    force: bool,
) -> ScaleDownPlan {
    let mut plan = ScaleDownPlan::default();
    for pod in pods.iter().filter(|p| p.ended()) {
        plan.delete_now
            .push((pod.name.clone(), DeleteReason::Finished));
    }
    let by_pod = workers_by_pod(pods, workers);
    let mut active: Vec<&WorkerPodState> = pods.iter().filter(|p| p.active()).collect();
    // Newest first within each class: the most recent pods are the least likely to have
    // started or to hold anything.
    active.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| b.name.cmp(&a.name)));
    let mut remaining = n_to_remove;

    let mut take = |class: &mut dyn FnMut(&WorkerPodState) -> Option<DeleteReason>,
                    plan: &mut ScaleDownPlan,
                    taken: &mut BTreeSet<String>| {
        for pod in &active {
            if remaining == 0 {
                break;
            }
            if taken.contains(&pod.name) {
                continue;
            }
            if let Some(reason) = class(pod) {
                plan.delete_now.push((pod.name.clone(), reason));
                taken.insert(pod.name.clone());
                remaining -= 1;
            }
        }
    };
    let mut taken = BTreeSet::new();
    take(
        &mut |p| (p.phase == PodPhase::Pending).then_some(DeleteReason::Pending),
        &mut plan,
        &mut taken,
    );
    take(
        &mut |p| (!by_pod.contains_key(&p.name)).then_some(DeleteReason::NotConnected),
        &mut plan,
        &mut taken,
    );
    if remaining == 0 {
        return plan;
    }
    // Connected workers: idle before busy, least data first, newest first.
    let mut connected: Vec<(&WorkerPodState, &Vec<&SchedulerWorker>)> = active
        .iter()
        .filter(|p| !taken.contains(&p.name))
        .filter_map(|p| by_pod.get(&p.name).map(|w| (*p, w)))
        .collect();
    connected.sort_by_key(|(pod, ws)| {
        let busy = ws.iter().any(|w| w.busy == Some(true));
        let bytes: u64 = ws.iter().map(|w| w.managed_bytes.unwrap_or(0)).sum();
        (busy, bytes, std::cmp::Reverse(pod.created))
    });
    for (pod, ws) in connected.into_iter().take(remaining) {
        if force {
            plan.delete_now
                .push((pod.name.clone(), DeleteReason::Forced));
        } else {
            plan.retire.push(RetireTarget {
                pod: pod.name.clone(),
                addresses: ws.iter().map(|w| w.address.clone()).collect(),
            });
        }
    }
    plan
}

/// The pods whose workers the scheduler confirmed retired: every address of the pod is in
/// `retired`, or is no longer connected at all (`still_connected` lacks it).
pub fn confirmed_retired(
    targets: &[RetireTarget],
    retired: &BTreeSet<String>,
    still_connected: &BTreeSet<String>,
) -> Vec<String> {
    targets
        .iter()
        .filter(|t| {
            t.addresses
                .iter()
                .all(|a| retired.contains(a) || !still_connected.contains(a))
        })
        .map(|t| t.pod.clone())
        .collect()
}

/// Counts of a cluster's worker pods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WorkerCounts {
    /// Running and not being deleted.
    pub running: usize,
    /// Pending and not being deleted: coming.
    pub pending: usize,
    /// Ended (Succeeded/Failed), not yet cleaned up.
    pub finished: usize,
    /// Being deleted.
    pub deleting: usize,
}

impl WorkerCounts {
    /// Counts pod states.
    pub fn of(pods: &[WorkerPodState]) -> Self {
        let mut counts = WorkerCounts::default();
        for pod in pods {
            if pod.deleting {
                counts.deleting += 1;
            } else if pod.phase.finished() {
                counts.finished += 1;
            } else if pod.phase == PodPhase::Pending {
                counts.pending += 1;
            } else {
                counts.running += 1;
            }
        }
        counts
    }

    /// Workers there or coming.
    pub fn active(&self) -> usize {
        self.running + self.pending
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rstest::rstest;

    fn ended(name: &str, phase: PodPhase, reason: Option<&str>) -> WorkerPodState {
        WorkerPodState {
            reason: reason.map(Into::into),
            ..mk_pod(name, phase, 0)
        }
    }

    fn deleting(name: &str, phase: PodPhase) -> WorkerPodState {
        WorkerPodState {
            deleting: true,
            ..mk_pod(name, phase, 0)
        }
    }

    #[rstest]
    #[case::no_pods(vec![], None)]
    #[case::every_pod_failed(vec![ended("a", PodPhase::Failed, Some("Error")), ended("b", PodPhase::Failed, None)], Some(vec!["a", "b"]))]
    #[case::succeeded_counts_as_ended(vec![ended("a", PodPhase::Succeeded, None)], Some(vec!["a"]))]
    #[case::one_still_pending(vec![ended("a", PodPhase::Failed, None), mk_pod("b", PodPhase::Pending, 0)], None)]
    #[case::one_still_running(vec![ended("a", PodPhase::Failed, None), mk_pod("b", PodPhase::Running, 0)], None)]
    #[case::unknown_may_come_back(vec![ended("a", PodPhase::Failed, None), mk_pod("b", PodPhase::Unknown, 0)], None)]
    #[case::all_running(vec![mk_pod("a", PodPhase::Running, 0)], None)]
    #[case::ended_pods_being_deleted_are_someone_scaling(vec![deleting("a", PodPhase::Failed)], None)]
    #[case::a_deleted_one_beside_an_ended_one(vec![deleting("a", PodPhase::Running), ended("b", PodPhase::Failed, None)], Some(vec!["b"]))]
    fn the_wait_for_workers_gives_up_only_when_every_worker_pod_ended(
        #[case] pods: Vec<WorkerPodState>,
        #[case] expected: Option<Vec<&str>>,
    ) {
        let got = every_worker_pod_ended(&pods)
            .map(|v| v.iter().map(|p| p.name.as_str()).collect::<Vec<_>>());
        assert_eq!(got, expected);
    }

    #[rstest]
    #[case::none_ended(vec![mk_pod("a", PodPhase::Running, 0)], 3, "")]
    #[case::with_and_without_reason(vec![ended("a", PodPhase::Failed, Some("OOMKilled")), mk_pod("b", PodPhase::Running, 0), ended("c", PodPhase::Succeeded, None)], 3, "a (Failed, OOMKilled), c (Succeeded)")]
    #[case::beyond_the_limit(vec![ended("a", PodPhase::Failed, None), ended("b", PodPhase::Failed, None), ended("c", PodPhase::Failed, None)], 2, "a (Failed), b (Failed) and 1 more")]
    #[case::being_deleted_is_not_named(vec![deleting("a", PodPhase::Failed)], 3, "")]
    fn ended_worker_pods_are_named_for_messages(
        #[case] pods: Vec<WorkerPodState>,
        #[case] limit: usize,
        #[case] expected: &str,
    ) {
        assert_eq!(describe_ended_pods(&pods, limit), expected);
    }

    pub(crate) fn mk_pod(name: &str, phase: PodPhase, created: i64) -> WorkerPodState {
        WorkerPodState {
            name: name.into(),
            phase,
            deleting: false,
            created,
            reason: None,
        }
    }

    fn mk_worker(name: &str, bytes: u64, busy: bool) -> SchedulerWorker {
        SchedulerWorker {
            name: name.into(),
            address: format!("tcp://{name}:1"),
            managed_bytes: Some(bytes),
            busy: Some(busy),
        }
    }

    fn cluster() -> (Vec<WorkerPodState>, Vec<SchedulerWorker>) {
        let pods = vec![
            mk_pod("done", PodPhase::Succeeded, 1),
            mk_pod("oom", PodPhase::Failed, 2),
            mk_pod("old-pending", PodPhase::Pending, 3),
            mk_pod("new-pending", PodPhase::Pending, 9),
            mk_pod("starting", PodPhase::Running, 8),
            mk_pod("busy", PodPhase::Running, 4),
            mk_pod("heavy", PodPhase::Running, 5),
            mk_pod("light", PodPhase::Running, 6),
            WorkerPodState {
                deleting: true,
                ..mk_pod("going", PodPhase::Running, 7)
            },
        ];
        let workers = vec![
            mk_worker("busy", 10, true),
            mk_worker("heavy", 1_000, false),
            mk_worker("light", 10, false),
            mk_worker("going", 0, false),
        ];
        (pods, workers)
    }

    fn names(plan: &ScaleDownPlan) -> (Vec<&str>, Vec<&str>) {
        (
            plan.delete_now.iter().map(|(n, _)| n.as_str()).collect(),
            plan.retire.iter().map(|t| t.pod.as_str()).collect(),
        )
    }

    #[rstest]
    #[case::nothing_to_remove_still_cleans_finished(0, false, vec!["done", "oom"], vec![])]
    #[case::pending_newest_first(1, false, vec!["done", "oom", "new-pending"], vec![])]
    #[case::all_pending(2, false, vec!["done", "oom", "new-pending", "old-pending"], vec![])]
    #[case::then_not_connected(3, false, vec!["done", "oom", "new-pending", "old-pending", "starting"], vec![])]
    #[case::then_idle_least_data(4, false, vec!["done", "oom", "new-pending", "old-pending", "starting"], vec!["light"])]
    #[case::busy_last(6, false, vec!["done", "oom", "new-pending", "old-pending", "starting"], vec!["light", "heavy", "busy"])]
    #[case::more_than_there_is(20, false, vec!["done", "oom", "new-pending", "old-pending", "starting"], vec!["light", "heavy", "busy"])]
    #[case::forced_deletes_without_retiring(4, true, vec!["done", "oom", "new-pending", "old-pending", "starting", "light"], vec![])]
    fn scale_down_order(
        #[case] n: usize,
        #[case] force: bool,
        #[case] delete_now: Vec<&str>,
        #[case] retire: Vec<&str>,
    ) {
        let (pods, workers) = cluster();
        let plan = plan_scale_down(&pods, &workers, n, force);
        assert_eq!(names(&plan), (delete_now, retire));
        assert!(plan.removes() <= n);
    }

    #[test]
    fn multi_worker_pods_retire_all_their_workers() {
        let pods = vec![mk_pod("p", PodPhase::Running, 1)];
        let workers = vec![mk_worker("p-0", 0, false), mk_worker("p-1", 0, false)];
        let plan = plan_scale_down(&pods, &workers, 1, false);
        assert_eq!(
            plan.retire,
            vec![RetireTarget {
                pod: "p".into(),
                addresses: vec!["tcp://p-0:1".into(), "tcp://p-1:1".into()]
            }]
        );
    }

    #[rstest]
    #[case::all_retired(&["a1", "a2"], &[], vec!["p"])]
    #[case::one_left_connected(&["a1"], &["a2"], vec![])]
    #[case::gone_without_confirmation(&["a1"], &[], vec!["p"])]
    #[case::nothing_confirmed_still_connected(&[], &["a1", "a2"], vec![])]
    fn deletes_only_confirmed_pods(
        #[case] retired: &[&str],
        #[case] connected: &[&str],
        #[case] expected: Vec<&str>,
    ) {
        let targets = [RetireTarget {
            pod: "p".into(),
            addresses: vec!["a1".into(), "a2".into()],
        }];
        let set = |xs: &[&str]| xs.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
        assert_eq!(
            confirmed_retired(&targets, &set(retired), &set(connected)),
            expected
        );
    }

    #[test]
    fn counts_pending_as_coming() {
        let (pods, _) = cluster();
        let counts = WorkerCounts::of(&pods);
        assert_eq!(
            counts,
            WorkerCounts {
                running: 4,
                pending: 2,
                finished: 2,
                deleting: 1
            }
        );
        assert_eq!(counts.active(), 6);
    }

    #[test]
    fn reads_failure_reason_from_pod() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "w", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "status": {"phase": "Failed", "containerStatuses": [{
                "name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}
            }]}
        }))
        .unwrap();
        let state = WorkerPodState::from_pod(&pod);
        assert_eq!(state.phase, PodPhase::Failed);
        assert_eq!(state.reason.as_deref(), Some("OOMKilled"));
        assert_eq!(state.created, 1_767_225_600);
    }
}
