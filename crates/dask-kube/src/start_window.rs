//! The start window: how many worker pods may be starting at once when pods are replaced.
//!
//! A Dask worker is a Python process that imports `distributed` (twice with a nanny) before
//! it connects, within its `--death-timeout`. When workers cannot connect (a lost scheduler,
//! nodes too busy for all of them to start in time), they exit, and a controller that
//! replaces every exited pod at once with a pod that starts the same way keeps the cluster
//! churning (dask-kube's operator before this, on 2 cores: 33 of 100 workers connected after
//! 170 s, 56 pods replaced). Upstream restarts an exited worker in place, under the
//! kubelet's crash-loop back-off.
//!
//! Here a pod that replaces an ended worker is still created at once, but while the window
//! is full it holds a scheduling gate (`spec.schedulingGates`, Kubernetes's own hold on a
//! pod, GA in 1.30): no node is chosen for it until the operator removes the gate, as
//! workers connect. The window is `initial`, or half the connected workers when that is more.
//! A scale-up is not held: on this machine 100 workers created at once connect in 93 s, and
//! let start 10 or 40 at a time they take 157 s (bench-operator, 2026-12-07). A pod no node
//! can take (`Unschedulable`) leaves the window: it starts nothing, and the cluster autoscaler
//! acts only on ungated pods.
//!
//! dask-kube's own adapt loop ([`crate::Scaler::run_adapt`]) paces replacements the same
//! way without a gate ([`pace_replacements`]): a replacement beyond the window is not
//! created yet, and the ended pod it replaces is kept until it is, so the next look still
//! counts it as a replacement owed rather than as growth (which starts at once). The
//! controller pod's Role needs no `patch pods` for it.

use crate::scaling::WorkerPodState;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use std::collections::BTreeSet;

/// The scheduling gate held by worker pods beyond the start window.
pub const START_GATE: &str = "k8s.dask.org/start-window";

/// The start window before half the connected workers is more (`operator run --start-window`).
pub const DEFAULT_START_WINDOW: usize = 10;

/// How many more worker pods may start now: the window (`initial`, at least 1, or half of
/// the `connected` workers when more) less the pods `starting` (created without the gate or
/// released, neither connected nor unschedulable nor ended).
///
/// # Example
/// ```
/// use dask_kube::start_room;
/// assert_eq!(start_room(10, 0, 0), 10);
/// assert_eq!(start_room(10, 4, 40), 16);
/// ```
pub fn start_room(initial: usize, starting: usize, connected: usize) -> usize {
    initial.max(1).max(connected / 2).saturating_sub(starting)
}

/// The start window over a group's worker pods: how many more may start now, and the active
/// pods that hold the start gate, oldest first (to release first). `connected` names the pods
/// the scheduler's workers are in; `None` when the scheduler is ready but did not answer,
/// and then a started pod counts as connected. A pod is starting when it is active, neither
/// gated nor connected nor unschedulable.
///
/// # Example
/// ```
/// use dask_kube::*;
/// let pod = |name: &str, phase| WorkerPodState { name: name.into(), phase, deleting: false,
///     created: 0, reason: None, ips: vec![], started: phase != PodPhase::Pending,
///     resource_version: None, unschedulable: false, start_gate: false };
/// let pods = [pod("a", PodPhase::Running), pod("b", PodPhase::Pending), pod("c", PodPhase::Failed)];
/// let connected = ["a"].into_iter().collect();
/// assert_eq!(start_window(&pods, Some(&connected), 2), (1, vec![]));
/// ```
pub fn start_window(
    pods: &[WorkerPodState],
    connected: Option<&BTreeSet<&str>>,
    initial: usize,
) -> (usize, Vec<usize>) {
    let mut starting = 0;
    let mut up = 0;
    let mut gated = Vec::new();
    for (i, pod) in pods.iter().enumerate() {
        if !pod.active() {
            continue;
        }
        let is_connected = match connected {
            Some(names) => names.contains(pod.name.as_str()),
            None => pod.started,
        };
        if pod.start_gate {
            gated.push(i);
        } else if is_connected {
            up += 1;
        } else if !pod.unschedulable {
            starting += 1;
        }
    }
    gated.sort_by_key(|&i| (pods[i].created, pods[i].name.clone()));
    (start_room(initial, starting, up), gated)
}

/// A scale-up paced by the start window ([`pace_replacements`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PacedScaleUp {
    /// Pods to create now: all the growth, and the replacements the window has room for.
    pub create: usize,
    /// Ended pods to delete now (oldest first): those replaced now, and those no new pod
    /// replaces (the target fell meanwhile).
    pub cleanup: Vec<String>,
    /// Replacements held back; their ended pods stay until they are created.
    pub held: usize,
}

/// Paces a scale-up of `create` pods over `pods`: of the new pods, as many as there are
/// ended pods replace them and wait their turn in the window (`room` from
/// [`start_window`]); the rest is growth and starts at once.
///
/// # Example
/// ```
/// use dask_kube::*;
/// let pod = |name: &str, phase| WorkerPodState { name: name.into(), phase, deleting: false,
///     created: 0, reason: None, ips: vec![], started: true, resource_version: None,
///     unschedulable: false, start_gate: false };
/// let pods = [pod("x", PodPhase::Failed), pod("y", PodPhase::Failed), pod("z", PodPhase::Running)];
/// // 3 to create: 2 replace x and y, 1 is growth; room for 1 replacement.
/// let paced = pace_replacements(3, &pods, 1);
/// assert_eq!((paced.create, paced.cleanup, paced.held), (2, vec!["x".to_owned()], 1));
/// ```
pub fn pace_replacements(create: usize, pods: &[WorkerPodState], room: usize) -> PacedScaleUp {
    let mut ended: Vec<&WorkerPodState> = pods.iter().filter(|p| p.ended()).collect();
    ended.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    let replacing = ended.len().min(create);
    let now = replacing.min(room);
    let cleanup = ended[..now]
        .iter()
        .chain(&ended[replacing..])
        .map(|p| p.name.clone())
        .collect();
    PacedScaleUp {
        create: create - replacing + now,
        cleanup,
        held: replacing - now,
    }
}

/// Whether the pod still holds the start gate.
pub fn holds_start_gate(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.scheduling_gates.as_ref())
        .is_some_and(|gates| gates.iter().any(|g| g.name == START_GATE))
}

/// Whether the scheduler found no node for the pod (`PodScheduled=False`, reason
/// `Unschedulable`); such a pod starts nothing while it waits.
pub fn unschedulable(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions.iter().any(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            })
        })
}

/// Adds the start gate to a pod manifest (after the template's own gates, if any).
pub fn hold_start(manifest: &mut Value) {
    let gate = json!({"name": START_GATE});
    let Some(spec) = manifest.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    match spec
        .get_mut("schedulingGates")
        .and_then(Value::as_array_mut)
    {
        Some(gates) if gates.contains(&gate) => {}
        Some(gates) => gates.push(gate),
        None => {
            spec.insert("schedulingGates".into(), json!([gate]));
        }
    }
}

/// The JSON patch that removes the start gate from `pod` and keeps its other gates. It
/// first tests that the gates are still those listed, so a pod whose gates changed since
/// is left for the next look; `None` when the pod does not hold the gate.
pub fn release_start_patch(pod: &Pod) -> Option<Value> {
    let gates = pod.spec.as_ref()?.scheduling_gates.as_ref()?;
    if !gates.iter().any(|g| g.name == START_GATE) {
        return None;
    }
    let listed: Vec<Value> = gates.iter().map(|g| json!({"name": g.name})).collect();
    let rest: Vec<Value> = gates
        .iter()
        .filter(|g| g.name != START_GATE)
        .map(|g| json!({"name": g.name}))
        .collect();
    let change = if rest.is_empty() {
        json!({"op": "remove", "path": "/spec/schedulingGates"})
    } else {
        json!({"op": "replace", "path": "/spec/schedulingGates", "value": rest})
    };
    Some(json!([
        {"op": "test", "path": "/spec/schedulingGates", "value": listed},
        change,
    ]))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::nothing_started(10, 0, 0, 10)]
    #[case::window_full(10, 10, 0, 0)]
    #[case::more_starting_than_the_window(10, 12, 0, 0)]
    #[case::half_the_connected_when_more(10, 0, 30, 15)]
    #[case::initial_when_more(10, 3, 12, 7)]
    #[case::slow_start_grows(10, 15, 60, 15)]
    #[case::zero_means_one(0, 0, 0, 1)]
    #[case::zero_means_one_at_a_time(0, 1, 0, 0)]
    fn room(
        #[case] initial: usize,
        #[case] starting: usize,
        #[case] connected: usize,
        #[case] expected: usize,
    ) {
        assert_eq!(start_room(initial, starting, connected), expected);
    }

    /// A pod for the window: `name:Phase[:flags]`, flags `started`, `gated`,
    /// `unschedulable`, `deleting`, `late` (created after every pod without it); created in
    /// list order otherwise.
    fn state(spec: &str, created: i64) -> WorkerPodState {
        use crate::scaling::PodPhase;
        let mut parts = spec.split(':');
        let name = parts.next().unwrap();
        let phase = match parts.next().unwrap() {
            "Running" => PodPhase::Running,
            "Failed" => PodPhase::Failed,
            "Succeeded" => PodPhase::Succeeded,
            _ => PodPhase::Pending,
        };
        let flags: Vec<&str> = parts.collect();
        WorkerPodState {
            name: name.into(),
            phase,
            deleting: flags.contains(&"deleting"),
            created: if flags.contains(&"late") {
                created + 1000
            } else {
                created
            },
            reason: None,
            ips: Vec::new(),
            started: phase != PodPhase::Pending || flags.contains(&"started"),
            resource_version: None,
            unschedulable: flags.contains(&"unschedulable"),
            start_gate: flags.contains(&"gated"),
        }
    }

    fn states(specs: &[&str]) -> Vec<WorkerPodState> {
        specs
            .iter()
            .enumerate()
            .map(|(i, s)| state(s, i64::try_from(i).unwrap()))
            .collect()
    }

    #[rstest]
    #[case::empty(&[], Some(&[][..]), 2, 2, &[])]
    #[case::starting_fill_it(&["a:Pending", "b:Running"], Some(&[][..]), 2, 0, &[])]
    #[case::connected_do_not(&["a:Running", "b:Running"], Some(&["a", "b"][..]), 2, 2, &[])]
    #[case::half_the_connected(&["a:Running", "b:Running", "c:Running", "d:Running", "e:Running", "f:Running", "g:Pending"], Some(&["a", "b", "c", "d", "e", "f"][..]), 2, 2, &[])]
    #[case::unschedulable_leave_it(&["a:Pending:unschedulable", "b:Pending"], Some(&[][..]), 2, 1, &[])]
    #[case::ended_and_deleting_leave_it(&["a:Failed", "b:Running:deleting"], Some(&[][..]), 1, 1, &[])]
    #[case::gated_oldest_first(&["a:Pending", "g2:Pending:gated", "g1:Pending:gated"], Some(&[][..]), 3, 2, &[1, 2])]
    #[case::no_answer_started_count_as_connected(&["a:Running", "b:Pending"], None, 2, 1, &[])]
    fn window(
        #[case] specs: &[&str],
        #[case] connected: Option<&[&str]>,
        #[case] initial: usize,
        #[case] room: usize,
        #[case] gated: &[usize],
    ) {
        let pods = states(specs);
        let connected: Option<BTreeSet<&str>> = connected.map(|c| c.iter().copied().collect());
        assert_eq!(
            start_window(&pods, connected.as_ref(), initial),
            (room, gated.to_vec())
        );
    }

    #[rstest]
    #[case::growth_only(3, &["a:Running"], 0, 3, &[], 0)]
    #[case::replacements_within_room(2, &["a:Failed", "b:Failed"], 2, 2, &["a", "b"], 0)]
    #[case::replacements_beyond_room_wait(3, &["a:Failed", "b:Failed", "c:Failed"], 1, 1, &["a"], 2)]
    #[case::no_room(2, &["a:Failed", "b:Failed"], 0, 0, &[], 2)]
    #[case::growth_is_not_held(5, &["a:Failed", "b:Failed"], 0, 3, &[], 2)]
    #[case::ended_beyond_the_scale_up_go(1, &["a:Failed", "b:Succeeded", "c:Failed"], 0, 0, &["b", "c"], 1)]
    #[case::oldest_replaced_first(2, &["new:Failed:late", "old:Failed"], 1, 1, &["old"], 1)]
    #[case::deleting_is_no_replacement(2, &["a:Failed:deleting"], 0, 2, &[], 0)]
    fn paced(
        #[case] create: usize,
        #[case] specs: &[&str],
        #[case] room: usize,
        #[case] create_now: usize,
        #[case] cleanup: &[&str],
        #[case] held: usize,
    ) {
        let got = pace_replacements(create, &states(specs), room);
        assert_eq!(
            got,
            PacedScaleUp {
                create: create_now,
                cleanup: cleanup.iter().map(|c| (*c).to_owned()).collect(),
                held,
            }
        );
    }

    fn pod(value: Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    #[rstest]
    #[case::no_spec(json!({"metadata": {"name": "p"}}), false)]
    #[case::no_gates(json!({"spec": {"containers": []}}), false)]
    #[case::other_gate(json!({"spec": {"containers": [], "schedulingGates": [{"name": "kueue"}]}}), false)]
    #[case::start_gate(json!({"spec": {"containers": [], "schedulingGates": [{"name": "kueue"}, {"name": START_GATE}]}}), true)]
    fn gate_is_read(#[case] value: Value, #[case] held: bool) {
        assert_eq!(holds_start_gate(&pod(value)), held);
    }

    #[rstest]
    #[case::no_status(json!({}), false)]
    #[case::unschedulable(json!({"status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]}}), true)]
    #[case::gated(json!({"status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}]}}), false)]
    #[case::scheduled(json!({"status": {"conditions": [{"type": "PodScheduled", "status": "True"}]}}), false)]
    fn unschedulable_is_read(#[case] value: Value, #[case] expected: bool) {
        assert_eq!(unschedulable(&pod(value)), expected);
    }

    #[rstest]
    #[case::no_gates(json!({"spec": {"containers": []}}), json!([{"name": START_GATE}]))]
    #[case::after_the_templates(json!({"spec": {"schedulingGates": [{"name": "kueue"}]}}), json!([{"name": "kueue"}, {"name": START_GATE}]))]
    #[case::once(json!({"spec": {"schedulingGates": [{"name": START_GATE}]}}), json!([{"name": START_GATE}]))]
    fn hold_adds_the_gate_once(#[case] mut manifest: Value, #[case] gates: Value) {
        hold_start(&mut manifest);
        assert_eq!(manifest["spec"]["schedulingGates"], gates);
    }

    #[test]
    fn a_manifest_without_spec_is_left_alone() {
        let mut manifest = json!({"kind": "Pod"});
        hold_start(&mut manifest);
        assert_eq!(manifest, json!({"kind": "Pod"}));
    }

    #[rstest]
    #[case::only_ours(
        json!([{"name": START_GATE}]),
        Some(json!([
            {"op": "test", "path": "/spec/schedulingGates", "value": [{"name": START_GATE}]},
            {"op": "remove", "path": "/spec/schedulingGates"},
        ])),
    )]
    #[case::keeps_the_others(
        json!([{"name": "kueue"}, {"name": START_GATE}]),
        Some(json!([
            {"op": "test", "path": "/spec/schedulingGates", "value": [{"name": "kueue"}, {"name": START_GATE}]},
            {"op": "replace", "path": "/spec/schedulingGates", "value": [{"name": "kueue"}]},
        ])),
    )]
    #[case::not_held(json!([{"name": "kueue"}]), None)]
    fn release_patch(#[case] gates: Value, #[case] expected: Option<Value>) {
        let p = pod(json!({"spec": {"containers": [], "schedulingGates": gates}}));
        assert_eq!(release_start_patch(&p), expected);
    }

    /// The patch applied as the API server applies it: the gate goes, the rest stays.
    #[test]
    fn release_patch_applies() {
        let mut object = json!({"spec": {"containers": [], "schedulingGates": [{"name": "kueue"}, {"name": START_GATE}]}});
        let patch = release_start_patch(&pod(object.clone())).unwrap();
        let patch: json_patch::Patch = serde_json::from_value(patch).unwrap();
        json_patch::patch(&mut object, &patch).unwrap();
        assert_eq!(
            object["spec"]["schedulingGates"],
            json!([{"name": "kueue"}])
        );
    }
}
