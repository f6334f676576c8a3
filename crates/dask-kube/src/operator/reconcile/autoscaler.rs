//! DaskAutoscaler: every 5 s, set a worker group's replicas from the scheduler's own
//! adaptive target, within `[minimum, maximum]`.
//!
//! The decision is dask-kube's (`adapt::decide`): scale up at once; scale down only after
//! the lower target held for 3 polls in a row and 15 s after the last change, at most a
//! quarter of the workers per step (upstream's 25% rule) — upstream scales down on a single
//! poll (dask-kubernetes #633, #674: flapping that loses work).
//!
//! Which group: upstream adapts only `<cluster>-default` (dask-kubernetes #933). Here an
//! autoscaler labelled `dask.org/workergroup-name: <group>` adapts that group instead, and
//! the workers of the cluster's other groups count towards the scheduler's target (it asks
//! for a total): the group gets `target - other workers`. Two autoscalers on one cluster
//! would each see the other's workers as fixed; use one per cluster.

use super::{Action, Note, Plan, TIMER_PERIOD, adoption};
use crate::Result;
use crate::operator::names::{self, WORKER_GROUP_LABEL};
use crate::operator::resources::{DaskAutoscaler, DaskCluster, DaskWorkerGroup};
use crate::{AdaptPolicy, ScaleAction, TargetSample, WorkerPodState, decide};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// Polls a lower target must hold before a scale-down (`distributed.adaptive.wait-count`).
const WAIT_COUNT: u32 = 3;
/// Quiet time after a change before scaling down (upstream's 15 s cooldown).
const COOLDOWN: Duration = Duration::from_secs(15);

/// What the operator remembers of one autoscaler between polls (lost on restart, which only
/// delays a scale-down by `WAIT_COUNT` polls).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdaptMemory {
    /// The latest targets, oldest first (a failed poll clears them).
    pub history: Vec<TargetSample>,
    /// When this operator last changed the group's replicas.
    pub last_change: Option<Duration>,
}

/// The group an autoscaler adapts: its `dask.org/workergroup-name` label, else the
/// cluster's default group.
pub fn target_group(autoscaler: &DaskAutoscaler) -> String {
    autoscaler
        .labels()
        .get(WORKER_GROUP_LABEL)
        .cloned()
        .unwrap_or_else(|| names::default_worker_group_name(&autoscaler.spec.cluster))
}

/// What is observed for one poll.
#[derive(Debug, Clone, Copy)]
pub struct AutoscalerView<'a> {
    /// The autoscaler.
    pub autoscaler: &'a DaskAutoscaler,
    /// Its cluster, if it exists.
    pub cluster: Option<&'a DaskCluster>,
    /// The group it adapts ([`target_group`]), if it exists.
    pub group: Option<&'a DaskWorkerGroup>,
    /// That group's worker pods.
    pub group_pods: &'a [Arc<Pod>],
    /// Active worker pods of the cluster's other groups.
    pub other_workers: u32,
    /// Whether the scheduler pod is ready (upstream skips the poll otherwise).
    pub scheduler_ready: bool,
    /// The scheduler's adaptive target; `None` when it could not be asked.
    pub target: Option<u32>,
}

fn non_negative(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

/// Plans one poll; `now` is the time since the operator started.
///
/// # Errors
/// A cluster without uid (not read from the API).
pub fn plan_autoscaler(
    view: AutoscalerView<'_>,
    memory: &mut AdaptMemory,
    now: Duration,
) -> Result<Plan> {
    let autoscaler = view.autoscaler;
    let mut plan = Plan {
        requeue_after: Some(TIMER_PERIOD),
        ..Plan::default()
    };
    let Some(cluster) = view.cluster else {
        return Ok(plan);
    };
    if let Some(adopt) = adoption(autoscaler, cluster)? {
        plan.actions.push(adopt);
        plan.actions.push(Note::info(format!(
            "Autoscaler {} adopted by cluster {}",
            autoscaler.name_any(),
            cluster.name_any()
        )));
    }
    let (Some(group), true) = (view.group, view.scheduler_ready) else {
        return Ok(plan);
    };
    let Some(target) = view.target else {
        memory.history.clear();
        return Ok(plan);
    };
    memory.history.push(TargetSample {
        at: now,
        target: target.saturating_sub(view.other_workers),
    });
    let keep = WAIT_COUNT as usize;
    if memory.history.len() > keep {
        memory.history.drain(..memory.history.len() - keep);
    }
    let current = non_negative(group.spec.worker.replicas);
    let policy = AdaptPolicy {
        interval: TIMER_PERIOD,
        wait_count: WAIT_COUNT,
        cooldown: COOLDOWN,
        max_scale_down_step: Some((current / 4).max(1)),
        ..AdaptPolicy::new(
            non_negative(autoscaler.spec.minimum),
            non_negative(autoscaler.spec.maximum),
        )
    };
    let pods: Vec<WorkerPodState> = view
        .group_pods
        .iter()
        .map(|p| WorkerPodState::from_pod(p))
        .collect();
    let decision = decide(&policy, &memory.history, &pods, memory.last_change, now);
    let to = match decision.action {
        ScaleAction::Up { to, .. } | ScaleAction::Down { to, .. } => to,
        ScaleAction::Hold => return Ok(plan),
    };
    if to != current {
        plan.actions.push(Action::PatchWorkerGroup {
            name: group.name_any(),
            patch: json!({"spec": {"worker": {"replicas": to}}}),
        });
        plan.actions.push(Note::info(format!(
            "Autoscaler updated {} worker count from {current} to {to}",
            autoscaler.spec.cluster
        )));
        memory.last_change = Some(now);
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::operator::manifests::{self, owner_ref, tests::upstream_resource};
    use rstest::rstest;

    fn autoscaler(min: i64, max: i64, label: Option<&str>) -> DaskAutoscaler {
        let mut a = DaskAutoscaler::new(
            "simple",
            crate::operator::resources::DaskAutoscalerSpec {
                cluster: "simple".into(),
                minimum: min,
                maximum: max,
            },
        );
        a.metadata.namespace = Some("ns".into());
        if let Some(group) = label {
            a.metadata.labels = Some([(WORKER_GROUP_LABEL.to_owned(), group.to_owned())].into());
        }
        a.metadata.owner_references = Some(vec![
            owner_ref(&upstream_resource::<DaskCluster>("simplecluster.yaml")).unwrap(),
        ]);
        a
    }

    fn group(replicas: i64) -> DaskWorkerGroup {
        let c: DaskCluster = upstream_resource("simplecluster.yaml");
        let mut g: DaskWorkerGroup =
            serde_json::from_value(manifests::default_worker_group(&c).unwrap()).unwrap();
        g.spec.worker.replicas = replicas;
        g
    }

    fn running(n: usize) -> Vec<Arc<Pod>> {
        (0..n)
            .map(|i| {
                serde_json::from_value(
                    json!({"metadata": {"name": format!("w{i}")}, "status": {"phase": "Running"}}),
                )
                .map(Arc::new)
                .unwrap()
            })
            .collect()
    }

    /// Runs polls 5 s apart with the scheduler asking for `targets` in turn, applying each
    /// replicas change; returns the replicas after each poll.
    fn run(min: i64, max: i64, start: i64, others: u32, targets: &[Option<u32>]) -> Vec<i64> {
        let a = autoscaler(min, max, None);
        let c: DaskCluster = upstream_resource("simplecluster.yaml");
        let mut g = group(start);
        let mut memory = AdaptMemory::default();
        let mut seen = Vec::new();
        for (i, target) in targets.iter().enumerate() {
            let pods = running(usize::try_from(g.spec.worker.replicas).unwrap());
            let plan = plan_autoscaler(
                AutoscalerView {
                    autoscaler: &a,
                    cluster: Some(&c),
                    group: Some(&g),
                    group_pods: &pods,
                    other_workers: others,
                    scheduler_ready: true,
                    target: *target,
                },
                &mut memory,
                TIMER_PERIOD * u32::try_from(i + 1).unwrap(),
            )
            .unwrap();
            assert_eq!(plan.requeue_after, Some(TIMER_PERIOD));
            for action in plan.actions {
                if let Action::PatchWorkerGroup { name, patch } = action {
                    assert_eq!(name, "simple-default");
                    g.spec.worker.replicas = patch["spec"]["worker"]["replicas"].as_i64().unwrap();
                }
            }
            seen.push(g.spec.worker.replicas);
        }
        seen
    }

    #[rstest]
    #[case::scale_up_at_once(0, 10, 0, 0, &[Some(4)], &[4])]
    #[case::clamped_to_maximum(0, 3, 0, 0, &[Some(9)], &[3])]
    #[case::minimum_without_work(2, 10, 0, 0, &[Some(0)], &[2])]
    #[case::down_after_three_polls_then_a_cooldown(0, 10, 8, 0, &[Some(0); 6], &[8, 8, 6, 6, 6, 5])]
    #[case::down_a_quarter_per_step(0, 10, 8, 0, &[Some(0); 10], &[8, 8, 6, 6, 6, 5, 5, 5, 4, 4])]
    #[case::one_high_poll_holds_the_scale_down(0, 10, 4, 0, &[Some(0), Some(0), Some(4), Some(0), Some(0)], &[4, 4, 4, 4, 4])]
    #[case::a_failed_poll_restarts_the_count(0, 10, 4, 0, &[Some(0), Some(0), None, Some(0), Some(0), Some(0)], &[4, 4, 4, 4, 4, 3])]
    #[case::other_groups_count_towards_the_target(0, 10, 0, 3, &[Some(5)], &[2])]
    fn replicas_follow_the_schedulers_target(
        #[case] min: i64,
        #[case] max: i64,
        #[case] start: i64,
        #[case] others: u32,
        #[case] targets: &[Option<u32>],
        #[case] expected: &[i64],
    ) {
        assert_eq!(run(min, max, start, others, targets), expected);
    }

    #[test]
    fn an_unready_scheduler_skips_the_poll() {
        let a = autoscaler(0, 10, None);
        let c: DaskCluster = upstream_resource("simplecluster.yaml");
        let g = group(0);
        let mut memory = AdaptMemory::default();
        let plan = plan_autoscaler(
            AutoscalerView {
                autoscaler: &a,
                cluster: Some(&c),
                group: Some(&g),
                group_pods: &[],
                other_workers: 0,
                scheduler_ready: false,
                target: Some(5),
            },
            &mut memory,
            TIMER_PERIOD,
        )
        .unwrap();
        assert!(plan.actions.is_empty());
        assert!(memory.history.is_empty());
    }

    #[test]
    fn an_autoscaler_is_adopted_by_its_cluster() {
        let mut a = autoscaler(0, 1, None);
        a.metadata.owner_references = None;
        let c: DaskCluster = upstream_resource("simplecluster.yaml");
        let plan = plan_autoscaler(
            AutoscalerView {
                autoscaler: &a,
                cluster: Some(&c),
                group: None,
                group_pods: &[],
                other_workers: 0,
                scheduler_ready: true,
                target: None,
            },
            &mut AdaptMemory::default(),
            TIMER_PERIOD,
        )
        .unwrap();
        assert!(
            matches!(&plan.actions[0], Action::PatchSelf(p) if p["metadata"]["ownerReferences"][0]["kind"] == "DaskCluster")
        );
        assert_eq!(
            plan.actions[1],
            Note::info("Autoscaler simple adopted by cluster simple")
        );
    }

    #[rstest]
    #[case::default_group(None, "simple-default")]
    #[case::labelled_group(Some("simple-highmem"), "simple-highmem")]
    fn the_adapted_group(#[case] label: Option<&str>, #[case] expected: &str) {
        assert_eq!(target_group(&autoscaler(0, 1, label)), expected);
    }
}
