//! DaskWorkerGroup: as many worker pods as `spec.worker.replicas`, adopted by its cluster.
//!
//! Ended pods (a worker OOM-killed, evicted, or deleted by anyone) are removed and replaced.
//! Scale-down takes, in dask-kube's order: pods not started yet, then pods whose worker
//! never connected, then connected workers that the scheduler retires first (their data
//! moves to other workers) — within this group only (upstream's `retire_workers(n=...)` lets
//! the scheduler pick workers of any group, dask-kubernetes #914). When the scheduler cannot
//! be asked, only pods that never started are removed: never a worker that may hold data
//! (upstream falls back to deleting the newest Deployments, "can lose data").

use super::{Action, Note, Plan, TIMER_PERIOD, adoption};
use crate::Result;
use crate::operator::manifests;
use crate::operator::resources::{DaskCluster, DaskWorkerGroup};
use crate::{
    DeleteReason, PodPhase, SchedulerWorker, WorkerPodState, place_workers, plan_scale_down,
};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use std::sync::Arc;
use std::time::Duration;

/// Most pods one reconcile creates; a larger scale-up continues in the next reconcile, so a
/// plan (and the operator's memory) stays small whatever `replicas` says.
pub const MAX_CREATES_PER_RECONCILE: usize = 500;

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

    if active < want {
        let create = (want - active).min(MAX_CREATES_PER_RECONCILE);
        for _ in 0..create {
            plan.actions.push(Action::Create(manifests::worker_pod(
                group,
                cluster.labels(),
                &new_suffix(),
            )?));
        }
        if active + create < want {
            plan.requeue_after = Some(Duration::ZERO);
        } else {
            plan.actions.push(Note::info(format!(
                "Scaled worker group {name} up to {want} workers."
            )));
        }
    } else if active > want {
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

    /// `name:Phase[:ip][:deleting]`, owned by the group (`other:` prefix: owned by another).
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
        if parts.get(3) == Some(&"deleting") {
            p["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:01:00Z");
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
            .map(|a| match a {
                Action::Create(v) => format!("create {}", v["metadata"]["name"].as_str().unwrap()),
                Action::DeletePod { pod, .. } => format!("delete {pod}"),
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
            })
            .collect()
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
        assert!(matches!(&p.actions[2], Action::Create(v) if v["kind"] == "Pod"));
    }
}
