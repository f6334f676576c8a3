//! DaskWorkerGroup: as many worker pods as `spec.worker.replicas`, adopted by its cluster.
//!
//! Ended pods (a worker OOM-killed, evicted, or deleted by anyone) are removed and replaced.
//! Scale-down takes, in dask-kube's order: pods not started yet, then pods whose worker
//! never connected, then connected workers that the scheduler retires first (their data
//! moves to other workers) — within this group only (upstream's `retire_workers(n=...)` lets
//! the scheduler pick workers of any group, dask-kubernetes #914). When the scheduler cannot
//! be asked, only pods that never started are removed: never a worker that may hold data
//! (upstream falls back to deleting the newest Deployments, "can lose data").
//!
//! Scale-up creates every pod at once. Pods that replace workers that ended go through the
//! start window ([`crate::start_room`]): while too many workers are starting and none
//! connect (a lost scheduler, nodes too busy for all to make `--death-timeout`), the
//! replacements hold dask-kube's scheduling gate and start as workers connect, instead of
//! replacing every failed pod at once with one that fails the same way (upstream restarts an
//! exited worker in place, under the kubelet's crash-loop back-off).

use super::{Action, Note, Plan, TIMER_PERIOD, adoption};
use crate::Result;
use crate::operator::manifests;
use crate::operator::resources::{DaskCluster, DaskWorkerGroup};
use crate::{
    DeleteReason, PodPhase, SchedulerWorker, WorkerPodState, place_workers, plan_scale_down,
    release_start_patch, start_window,
};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use std::sync::Arc;
use std::time::Duration;

/// Most pods one reconcile creates; a larger scale-up continues in the next reconcile, so a
/// plan (and the operator's memory) stays small whatever `replicas` says.
pub const MAX_CREATES_PER_RECONCILE: usize = 500;

/// How often a group with gated pods looks again: a worker connecting changes no pod, so no
/// watch event says the window has room.
pub const START_WINDOW_PERIOD: Duration = Duration::from_secs(1);

/// What is observed of a group.
#[derive(Debug, Clone, Copy)]
pub struct WorkerGroupView<'a> {
    /// The group.
    pub group: &'a DaskWorkerGroup,
    /// Its cluster (`spec.cluster`), if it exists.
    pub cluster: Option<&'a DaskCluster>,
    /// Pods labelled with the group's name (only those it owns are its workers).
    pub pods: &'a [Arc<Pod>],
    /// The worker pods of the cluster's other groups: a worker the scheduler places surely
    /// in one of them is not this group's.
    pub other_pods: &'a [Arc<Pod>],
    /// The scheduler's connected workers (of every group); `None` when it was not asked or
    /// could not answer.
    pub scheduler_workers: Option<&'a [SchedulerWorker]>,
    /// Whether the cluster's scheduler pod is ready: no worker is connected to one that is
    /// not.
    pub scheduler_ready: bool,
    /// The start window of pods that replace ended workers (`operator run --start-window`).
    pub start_window: usize,
}

/// The scheduler's workers less those surely in another group's pod (by IP, then by name:
/// dask-kube's `place_workers` over all the cluster's worker pods). What stays may be in
/// this group's pods; a worker placed nowhere stays too, and then keeps this group's
/// started pods that hold no known worker (it may be in one of them).
fn this_groups_workers(
    own: &[WorkerPodState],
    other_pods: &[Arc<Pod>],
    workers: &[SchedulerWorker],
) -> Vec<SchedulerWorker> {
    let others: Vec<WorkerPodState> = other_pods
        .iter()
        .map(|p| WorkerPodState::from_pod(p))
        .collect();
    let all: Vec<WorkerPodState> = own.iter().cloned().chain(others.iter().cloned()).collect();
    let placement = place_workers(&all, workers);
    let elsewhere: std::collections::BTreeSet<&str> = others
        .iter()
        .filter_map(|p| placement.placed.get(&p.name))
        .flatten()
        .map(|w| w.address.as_str())
        .collect();
    workers
        .iter()
        .filter(|w| !elsewhere.contains(w.address.as_str()))
        .cloned()
        .collect()
}

fn desired(group: &DaskWorkerGroup) -> usize {
    usize::try_from(group.spec.worker.replicas.max(0)).unwrap_or(usize::MAX)
}

/// The group's own pods (owned by this group object, not by a Deployment of upstream's
/// operator or a group of the same name deleted earlier).
fn own_pods<'a>(group: &DaskWorkerGroup, pods: &'a [Arc<Pod>]) -> Vec<&'a Pod> {
    let uid = group.uid();
    pods.iter()
        .filter(|p| {
            p.owner_references()
                .iter()
                .any(|o| Some(&o.uid) == uid.as_ref())
        })
        .map(|p| &**p)
        .collect()
}

/// Whether a reconcile will have to remove started workers, so the scheduler must be asked
/// which ones hold no data.
pub fn scale_down_needed(group: &DaskWorkerGroup, pods: &[Arc<Pod>]) -> bool {
    let states: Vec<WorkerPodState> = own_pods(group, pods)
        .into_iter()
        .map(WorkerPodState::from_pod)
        .collect();
    let active = states.iter().filter(|s| s.active()).count();
    let pending = states
        .iter()
        .filter(|s| s.active() && s.phase == PodPhase::Pending)
        .count();
    active.saturating_sub(pending) > desired(group)
}

/// Whether a reconcile needs the scheduler's workers: to remove started workers
/// ([`scale_down_needed`]), or, with a ready scheduler, to know which started pods connected
/// while some hold the start gate or ended pods are to be replaced.
pub fn scheduler_needed(group: &DaskWorkerGroup, pods: &[Arc<Pod>], scheduler_ready: bool) -> bool {
    scale_down_needed(group, pods)
        || (scheduler_ready
            && own_pods(group, pods).into_iter().any(|p| {
                let state = WorkerPodState::from_pod(p);
                state.start_gate || state.ended()
            }))
}

/// Plans one reconcile of a DaskWorkerGroup. `new_suffix` names new workers (upstream: the
/// first 10 hex digits of a uuid4).
///
/// # Errors
/// A group without uid, or whose worker pod spec has no containers.
pub fn plan_worker_group(
    view: WorkerGroupView<'_>,
    new_suffix: &mut dyn FnMut() -> String,
) -> Result<Plan> {
    let group = view.group;
    let name = group.name_any();
    let mut plan = Plan::default();
    let Some(cluster) = view.cluster else {
        // Upstream's handler fails and kopf retries; the cluster's watch also wakes us.
        plan.requeue_after = Some(TIMER_PERIOD);
        return Ok(plan);
    };
    if let Some(adopt) = adoption(group, cluster)? {
        plan.actions.push(adopt);
        plan.actions.push(Note::info(format!(
            "Successfully adopted by {}",
            cluster.name_any()
        )));
    }

    let pods = own_pods(group, view.pods);
    let states: Vec<WorkerPodState> = pods.iter().map(|p| WorkerPodState::from_pod(p)).collect();
    for ended in states.iter().filter(|s| s.ended()) {
        plan.actions.push(Action::DeletePod {
            pod: ended.name.clone(),
            unchanged_since: None,
        });
    }
    let active = states.iter().filter(|s| s.active()).count();
    let want = desired(group);

    if active <= want {
        // Connected: the pods the scheduler's workers are placed in; none while the
        // scheduler is not ready; by the pods' state when it could not be asked.
        let workers = view
            .scheduler_workers
            .map(|w| this_groups_workers(&states, view.other_pods, w));
        let placement = workers.as_deref().map(|w| place_workers(&states, w));
        let connected: Option<std::collections::BTreeSet<&str>> = if view.scheduler_ready {
            placement.as_ref().map(crate::Placement::connected_pods)
        } else {
            Some(std::collections::BTreeSet::new())
        };
        let (mut room, gated) = start_window(&states, connected.as_ref(), view.start_window);
        let release = room.min(gated.len());
        for &i in &gated[..release] {
            if let Some(patch) = release_start_patch(pods[i]) {
                plan.actions.push(Action::ReleasePod {
                    pod: states[i].name.clone(),
                    patch,
                });
            }
        }
        room -= release;
        let mut held = gated.len() - release;
        let create = (want - active).min(MAX_CREATES_PER_RECONCILE);
        // Pods that replace workers that ended take their turn in the window; a scale-up
        // (or a pod deleted by anyone) starts at once.
        let replacing = states.iter().filter(|s| s.ended()).count().min(create);
        if create > 0 {
            let mut new_pods = manifests::WorkerPods::new(group, cluster.labels())?;
            for i in 0..create {
                let mut hold = false;
                if i < replacing {
                    if room == 0 {
                        hold = true;
                        held += 1;
                    } else {
                        room -= 1;
                    }
                }
                new_pods.push(new_suffix(), hold);
            }
            plan.actions
                .push(Action::CreateWorkerPods(Box::new(new_pods)));
        }
        if active + create < want {
            plan.requeue_after = Some(Duration::ZERO);
        } else if held > 0 {
            plan.requeue_after = Some(START_WINDOW_PERIOD);
        }
        if create > 0 && active + create >= want {
            plan.actions.push(Note::info(format!(
                "Scaled worker group {name} up to {want} workers."
            )));
        }
    } else {
        // dask-kube's plan: workers placed in pods by IP (then by name), nothing that may
        // hold data deleted without the scheduler's word, deletes that rest on a pod's listed
        // state sent with its resourceVersion.
        let workers = view
            .scheduler_workers
            .map(|w| this_groups_workers(&states, view.other_pods, w));
        let down = plan_scale_down(&states, workers.as_deref(), active - want, false);
        let versions: std::collections::BTreeMap<&str, Option<&String>> = states
            .iter()
            .map(|s| (s.name.as_str(), s.resource_version.as_ref()))
            .collect();
        for (pod, reason) in &down.delete_now {
            // Ended pods are removed above; a forced delete is never planned here.
            if matches!(reason, DeleteReason::Finished | DeleteReason::Forced) {
                continue;
            }
            let unchanged_since = reason
                .needs_unchanged_pod()
                .then(|| versions.get(pod.as_str()).copied().flatten().cloned())
                .flatten();
            plan.actions.push(Action::DeletePod {
                pod: pod.clone(),
                unchanged_since,
            });
        }
        if !down.retire.is_empty() {
            let names: Vec<&str> = down.retire.iter().map(|t| t.pod.as_str()).collect();
            plan.actions
                .push(Note::info(format!("Workers to close: {names:?}")));
            plan.actions.push(Action::RetireThenDelete {
                cluster: group.spec.cluster.clone(),
                group: name.clone(),
                targets: down.retire.clone(),
            });
        }
        if !down.kept.is_empty() || workers.is_none() {
            // Pods that may hold data and could not go now: look again.
            plan.requeue_after = Some(TIMER_PERIOD);
        }
        plan.actions.push(Note::info(format!(
            "Scaled worker group {name} down to {want} workers."
        )));
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::RetireTarget;
    use crate::operator::manifests::tests::upstream_resource;
    use rstest::rstest;
    use serde_json::json;

    fn cluster() -> DaskCluster {
        upstream_resource("simplecluster.yaml")
    }

    fn group(replicas: i64, adopted: bool) -> DaskWorkerGroup {
        let c = cluster();
        let mut g: DaskWorkerGroup =
            serde_json::from_value(manifests::default_worker_group(&c).unwrap()).unwrap();
        g.metadata.uid = Some("group-uid".into());
        g.metadata.namespace = Some("ns".into());
        g.spec.worker.replicas = replicas;
        if !adopted {
            g.metadata.owner_references = None;
        }
        g
    }

    /// `name:Phase[:ip][:flag,...]`, owned by the group (`other:` prefix: owned by another);
    /// flags: `deleting`, `gated` (holds the start gate), `unschedulable`.
    fn pod(spec: &str) -> Pod {
        let (owner, spec) = match spec.strip_prefix("other:") {
            Some(rest) => ("someone-else", rest),
            None => ("group-uid", spec),
        };
        let parts: Vec<&str> = spec.split(':').collect();
        let mut p = json!({
            "metadata": {
                "name": parts[0],
                "ownerReferences": [{"apiVersion": "kubernetes.dask.org/v1", "kind": "DaskWorkerGroup", "name": "simple-default", "uid": owner}],
                "creationTimestamp": format!("2026-01-01T00:00:{:02}Z", parts[0].len()),
            },
            "status": {"phase": parts[1]},
        });
        if let Some(ip) = parts.get(2).filter(|s| !s.is_empty()) {
            p["status"]["podIP"] = json!(ip);
        }
        let flags: Vec<&str> = parts.get(3).map_or(vec![], |f| f.split(',').collect());
        if flags.contains(&"deleting") {
            p["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:01:00Z");
        }
        if flags.contains(&"gated") {
            p["spec"] = json!({"containers": [], "schedulingGates": [{"name": crate::START_GATE}]});
        }
        if flags.contains(&"unschedulable") {
            p["status"]["conditions"] =
                json!([{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]);
        }
        serde_json::from_value(p).unwrap()
    }

    fn worker(name: &str, ip: &str, bytes: u64) -> SchedulerWorker {
        SchedulerWorker {
            name: name.into(),
            address: format!("tcp://{ip}:4000"),
            nanny: None,
            managed_bytes: Some(bytes),
            busy: Some(false),
        }
    }

    fn summary(plan: &Plan) -> Vec<String> {
        plan.actions
            .iter()
            .filter(|a| !matches!(a, Action::Note(_)))
            .flat_map(|a| match a {
                Action::CreateWorkerPods(pods) => pods
                    .pods()
                    .iter()
                    .map(|p| {
                        let v = pods.render(p).unwrap();
                        let name = v["metadata"]["name"].as_str().unwrap();
                        if v["spec"]["schedulingGates"].is_array() {
                            format!("create {name} gated")
                        } else {
                            format!("create {name}")
                        }
                    })
                    .collect(),
                other => vec![one_line(other)],
            })
            .collect()
    }

    fn one_line(action: &Action) -> String {
        match action {
            Action::DeletePod { pod, .. } => format!("delete {pod}"),
            Action::ReleasePod { pod, .. } => format!("release {pod}"),
            Action::RetireThenDelete { targets: t, .. } => format!(
                "retire {}",
                t.iter()
                    .map(|t: &RetireTarget| t.pod.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Action::PatchSelf(v) => format!(
                "adopt {}",
                v["metadata"]["ownerReferences"].as_array().unwrap().len()
            ),
            other => format!("{other:?}"),
        }
    }

    /// A worker pod of another group of the cluster, at 10.0.0.9.
    fn other_groups_pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "simple-highmem-worker-x", "labels": {"dask.org/workergroup-name": "simple-highmem"}},
            "status": {"phase": "Running", "podIP": "10.0.0.9"},
        }))
        .unwrap()
    }

    fn plan(replicas: i64, pods: &[&str], workers: Option<&[SchedulerWorker]>) -> Plan {
        plan_window(replicas, pods, workers, workers.is_some(), 10)
    }

    fn plan_window(
        replicas: i64,
        pods: &[&str],
        workers: Option<&[SchedulerWorker]>,
        scheduler_ready: bool,
        start_window: usize,
    ) -> Plan {
        let c = cluster();
        let g = group(replicas, true);
        let pods: Vec<Arc<Pod>> = pods.iter().map(|p| Arc::new(pod(p))).collect();
        let mut n = 0;
        plan_worker_group(
            WorkerGroupView {
                group: &g,
                cluster: Some(&c),
                pods: &pods,
                other_pods: &[Arc::new(other_groups_pod())],
                scheduler_workers: workers,
                scheduler_ready,
                start_window,
            },
            &mut || {
                n += 1;
                format!("new{n}")
            },
        )
        .unwrap()
    }

    #[rstest]
    #[case::first_workers(2, &[], &["create simple-default-worker-new1", "create simple-default-worker-new2"])]
    #[case::steady(2, &["a:Running", "b:Pending"], &[])]
    #[case::a_deleted_pod_is_replaced(2, &["a:Running", "b:Running::deleting"], &["create simple-default-worker-new1"])]
    #[case::an_ended_pod_is_removed_and_replaced(2, &["a:Running", "b:Failed"], &["delete b", "create simple-default-worker-new1"])]
    #[case::a_retired_pod_that_exited(1, &["a:Running", "b:Succeeded"], &["delete b"])]
    #[case::pods_of_others_are_not_ours(1, &["other:x:Running", "other:y:Running"], &["create simple-default-worker-new1"])]
    #[case::negative_replicas_are_zero(-3, &[], &[])]
    fn workers_follow_replicas(
        #[case] replicas: i64,
        #[case] pods: &[&str],
        #[case] expected: &[&str],
    ) {
        assert_eq!(summary(&plan(replicas, pods, None)), expected);
    }

    /// The start window (2 here): replacements of ended pods beyond it are created holding
    /// the gate (a scale-up starts at once), and gated pods are released oldest first as
    /// workers connect (pods `a`..`f` at 10.0.0.1.., connected when listed in
    /// `connected`); a pod no node can take does not count as starting.
    #[rstest]
    #[case::a_scale_up_starts_at_once(4, &[], None, false, &["create simple-default-worker-new1", "create simple-default-worker-new2", "create simple-default-worker-new3", "create simple-default-worker-new4"])]
    #[case::replacements_beyond_the_window_are_gated(4, &["a:Running:10.0.0.1", "b:Failed", "c:Failed", "d:Failed"], Some(vec![]), true, &["delete b", "delete c", "delete d", "create simple-default-worker-new1", "create simple-default-worker-new2 gated", "create simple-default-worker-new3 gated"])]
    #[case::a_replacement_with_room_starts(2, &["a:Running:10.0.0.1", "b:Failed"], Some(vec!["a"]), true, &["delete b", "create simple-default-worker-new1"])]
    #[case::replacements_wait_for_a_scheduler_not_ready(3, &["a:Running:10.0.0.1", "b:Running:10.0.0.2", "c:Failed"], None, false, &["delete c", "create simple-default-worker-new1 gated"])]
    #[case::a_replacement_and_a_scale_up(4, &["a:Running:10.0.0.1", "b:Running:10.0.0.2", "c:Failed"], Some(vec![]), true, &["delete c", "create simple-default-worker-new1 gated", "create simple-default-worker-new2"])]
    #[case::none_released_while_none_connected(3, &["a:Running:10.0.0.1", "b:Running:10.0.0.2", "cc:Pending::gated"], Some(vec![]), true, &[])]
    #[case::released_as_workers_connect(4, &["a:Running:10.0.0.1", "b:Running:10.0.0.2", "dd:Pending::gated", "cc:Pending::gated"], Some(vec!["a"]), true, &["release cc"])]
    #[case::unschedulable_pods_leave_the_window(3, &["a:Pending::unschedulable", "b:Pending::unschedulable", "cc:Pending::gated"], Some(vec![]), true, &["release cc"])]
    #[case::half_the_connected_when_more(8, &["a:Running:10.0.0.1", "b:Running:10.0.0.2", "c:Running:10.0.0.3", "d:Running:10.0.0.4", "e:Running:10.0.0.5", "f:Running:10.0.0.6", "gg:Pending::gated", "hh:Pending::gated"], Some(vec!["a", "b", "c", "d", "e", "f"]), true, &["release gg", "release hh"])]
    #[case::started_counts_as_up_when_the_scheduler_cannot_be_asked(3, &["a:Running:10.0.0.1", "b:Running:10.0.0.2", "cc:Pending::gated"], None, true, &["release cc"])]
    #[case::nothing_is_connected_to_a_scheduler_not_ready(3, &["a:Running:10.0.0.1", "b:Running:10.0.0.2", "cc:Pending::gated"], None, false, &[])]
    #[case::replacements_wait_their_turn(3, &["a:Running:10.0.0.1", "b:Running:10.0.0.2", "c:Failed"], Some(vec![]), true, &["delete c", "create simple-default-worker-new1 gated"])]
    #[case::released_before_new_ones_start(4, &["a:Running:10.0.0.1", "b:Running:10.0.0.2", "cc:Pending::gated"], Some(vec!["a", "b"]), true, &["release cc", "create simple-default-worker-new1"])]
    fn the_start_window(
        #[case] replicas: i64,
        #[case] pods: &[&str],
        #[case] connected: Option<Vec<&str>>,
        #[case] scheduler_ready: bool,
        #[case] expected: &[&str],
    ) {
        let workers: Option<Vec<SchedulerWorker>> = connected.map(|names| {
            names
                .iter()
                .map(|n| {
                    let i = n.as_bytes()[0] - b'a' + 1;
                    worker(n, &format!("10.0.0.{i}"), 0)
                })
                .collect()
        });
        let planned = plan_window(replicas, pods, workers.as_deref(), scheduler_ready, 2);
        assert_eq!(summary(&planned), expected);
        let held = pods.iter().filter(|p| p.contains("gated")).count()
            + expected.iter().filter(|a| a.ends_with("gated")).count()
            - expected.iter().filter(|a| a.starts_with("release")).count();
        assert_eq!(
            planned.requeue_after,
            (held > 0).then_some(START_WINDOW_PERIOD),
            "a group with gated pods looks again soon: a connecting worker changes no pod"
        );
    }

    #[test]
    fn the_scheduler_is_asked_only_when_the_window_needs_it() {
        let pods =
            |specs: &[&str]| -> Vec<Arc<Pod>> { specs.iter().map(|p| Arc::new(pod(p))).collect() };
        // A scale-up starts at once: nothing to ask.
        let g = group(20, true);
        assert!(!scheduler_needed(&g, &pods(&[]), true));
        // A gated pod, or an ended one to replace, waits for connected workers, once the
        // scheduler is ready (none is connected to one that is not).
        let g = group(2, true);
        assert!(scheduler_needed(
            &g,
            &pods(&["a:Running", "b:Pending::gated"]),
            true
        ));
        assert!(scheduler_needed(
            &g,
            &pods(&["a:Running", "b:Failed"]),
            true
        ));
        assert!(!scheduler_needed(
            &g,
            &pods(&["a:Running", "b:Failed"]),
            false
        ));
        assert!(!scheduler_needed(
            &g,
            &pods(&["a:Running", "b:Running"]),
            true
        ));
        // Scale-down always asks (which workers hold data).
        let g = group(0, true);
        assert!(scheduler_needed(&g, &pods(&["a:Running"]), false));
    }

    #[rstest]
    #[case::pending_first(1, &["a:Running:10.0.0.1", "b:Pending"], &["delete b"])]
    #[case::retires_the_worker_with_least_data(1, &["a:Running:10.0.0.1", "bb:Running:10.0.0.2"], &["retire a"])]
    #[case::never_connected_goes_without_retiring(1, &["a:Running:10.0.0.1", "ccc:Running:10.0.0.3"], &["delete ccc"])]
    #[case::custom_worker_name_found_by_ip(1, &["ddd:Running:10.0.0.4", "bb:Running:10.0.0.2"], &["retire bb"])]
    fn scale_down_asks_the_scheduler(
        #[case] replicas: i64,
        #[case] pods: &[&str],
        #[case] expected: &[&str],
    ) {
        // a holds 10 bytes, bb 1000, test-worker (pod ddd by IP) 5000; ccc never connected;
        // another group's worker (at 10.0.0.9) holds the most and is never this group's.
        let all = [
            worker("a", "10.0.0.1", 10),
            worker("bb", "10.0.0.2", 1000),
            worker("test-worker", "10.0.0.4", 5000),
        ];
        let ips: Vec<&str> = pods.iter().filter_map(|p| p.split(':').nth(2)).collect();
        let mut workers: Vec<SchedulerWorker> = all
            .into_iter()
            .filter(|w| ips.iter().any(|ip| w.address.contains(&format!("//{ip}:"))))
            .collect();
        workers.push(worker("simple-highmem-worker-x", "10.0.0.9", 1));
        assert_eq!(summary(&plan(replicas, pods, Some(&workers))), expected);
    }

    /// A connected worker the operator cannot place in any pod (its pod's IP not in its
    /// status yet, a custom name) may be in any started pod of the group that holds no known
    /// worker: that pod is not deleted as empty (as it is in
    /// `never_connected_goes_without_retiring`); a known worker is retired instead.
    #[test]
    fn an_unplaced_worker_keeps_the_pods_it_may_be_in() {
        let workers = [
            worker("a", "10.0.0.1", 10),
            worker("mystery", "10.0.0.77", 0),
        ];
        let p = plan(
            1,
            &["a:Running:10.0.0.1", "ccc:Running:10.0.0.3"],
            Some(&workers),
        );
        assert_eq!(summary(&p), ["retire a"]);
    }

    #[test]
    fn without_the_scheduler_only_pods_that_never_started_go() {
        let p = plan(
            0,
            &["a:Running:10.0.0.1", "b:Pending", "c:Unknown:10.0.0.3"],
            None,
        );
        assert_eq!(summary(&p), ["delete b"]);
        assert_eq!(p.requeue_after, Some(TIMER_PERIOD), "and it looks again");
    }

    #[test]
    fn scale_down_needs_the_scheduler_only_for_started_workers() {
        let g = group(1, true);
        let pods = |specs: &[&str]| specs.iter().map(|s| Arc::new(pod(s))).collect::<Vec<_>>();
        assert!(!scale_down_needed(&g, &pods(&["a:Running", "b:Pending"])));
        assert!(scale_down_needed(&g, &pods(&["a:Running", "b:Running"])));
        assert!(!scale_down_needed(&g, &pods(&["a:Running", "b:Failed"])));
    }

    #[test]
    fn a_large_scale_up_comes_in_batches() {
        let p = plan(1200, &[], None);
        assert_eq!(summary(&p).len(), MAX_CREATES_PER_RECONCILE);
        assert_eq!(p.requeue_after, Some(Duration::ZERO));
    }

    #[test]
    fn a_group_waits_for_its_cluster_and_is_adopted_by_it() {
        let g = group(1, false);
        let mut next = || "x".to_owned();
        let waiting = plan_worker_group(
            WorkerGroupView {
                group: &g,
                cluster: None,
                pods: &[],
                other_pods: &[],
                scheduler_workers: None,
                scheduler_ready: false,
                start_window: 10,
            },
            &mut next,
        )
        .unwrap();
        assert!(waiting.actions.is_empty());
        assert_eq!(waiting.requeue_after, Some(TIMER_PERIOD));
        let c = cluster();
        let p = plan_worker_group(
            WorkerGroupView {
                group: &g,
                cluster: Some(&c),
                pods: &[],
                other_pods: &[],
                scheduler_workers: None,
                scheduler_ready: false,
                start_window: 10,
            },
            &mut next,
        )
        .unwrap();
        let Action::PatchSelf(patch) = &p.actions[0] else {
            panic!("{:?}", p.actions)
        };
        let owner = &patch["metadata"]["ownerReferences"][0];
        assert_eq!(
            (
                owner["kind"].as_str(),
                owner["uid"].as_str(),
                owner["controller"].as_bool()
            ),
            (
                Some("DaskCluster"),
                Some("uid-of-simplecluster.yaml"),
                Some(true)
            )
        );
        assert_eq!(p.actions[1], Note::info("Successfully adopted by simple"));
        let Action::CreateWorkerPods(pods) = &p.actions[2] else {
            panic!("{:?}", p.actions)
        };
        assert_eq!(pods.render(&pods.pods()[0]).unwrap()["kind"], "Pod");
    }
}
