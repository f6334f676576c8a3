//! DaskCluster: its scheduler Deployment, Service and default worker group, and its phase.
//!
//! Phases as upstream's `controller.py` sets them: none -> `Created` (the operator saw the
//! cluster) -> `Pending` (its parts are created) -> `Running` (the scheduler Service exists,
//! and has an ingress address when it is a LoadBalancer); `Error` for a name upstream
//! refuses. The client waits for `Running`. Unlike upstream, a part deleted later is made
//! again, and the phase follows the Service both ways.

use super::{Action, Note, Plan, TIMER_PERIOD};
use crate::Result;
use crate::operator::manifests::{self, CLUSTER_REPLICAS_ANNOTATION};
use crate::operator::names;
use crate::operator::resources::{DaskCluster, DaskWorkerGroup};
use kube::ResourceExt;
use serde_json::json;

/// A DaskCluster's `status.phase`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterPhase {
    /// Seen by the operator; parts not made yet.
    Created,
    /// Parts made; the scheduler Service is not reachable yet.
    Pending,
    /// The scheduler Service is there.
    Running,
    /// The cluster cannot be made (its name).
    Error,
}

impl ClusterPhase {
    /// As written in `status.phase`.
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterPhase::Created => "Created",
            ClusterPhase::Pending => "Pending",
            ClusterPhase::Running => "Running",
            ClusterPhase::Error => "Error",
        }
    }

    /// Reads `status.phase`; anything else (written by someone else) reads as none.
    pub fn parse(phase: &str) -> Option<Self> {
        [Self::Created, Self::Pending, Self::Running, Self::Error]
            .into_iter()
            .find(|p| p.as_str() == phase)
    }
}

/// The scheduler Service as far as the phase cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceState {
    /// `type: LoadBalancer`.
    pub load_balancer: bool,
    /// It has at least one `status.loadBalancer.ingress` entry.
    pub has_ingress: bool,
}

impl ServiceState {
    /// Upstream's rule: a LoadBalancer without an ingress address is still pending.
    pub fn ready(self) -> bool {
        !self.load_balancer || self.has_ingress
    }
}

/// What is observed of a cluster's parts.
#[derive(Debug, Clone, Copy)]
pub struct ClusterView<'a> {
    /// The cluster.
    pub cluster: &'a DaskCluster,
    /// Whether the Deployment `<cluster>-scheduler` exists.
    pub scheduler_deployment: bool,
    /// The Service `<cluster>-scheduler`, if it exists.
    pub service: Option<ServiceState>,
    /// The DaskWorkerGroup `<cluster>-default`, if it exists.
    pub default_group: Option<&'a DaskWorkerGroup>,
}

/// Plans one reconcile of a DaskCluster.
///
/// # Errors
/// A cluster without uid (not read from the API) or whose scheduler pod spec has no
/// containers.
pub fn plan_cluster(view: ClusterView<'_>) -> Result<Plan> {
    let cluster = view.cluster;
    let name = cluster.name_any();
    let namespace = cluster.namespace().unwrap_or_default();
    let phase = cluster
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .and_then(ClusterPhase::parse);
    let mut plan = Plan::default();
    let set_phase = |p: ClusterPhase| Action::PatchStatus(json!({"status": {"phase": p.as_str()}}));

    if let Err(message) = names::validate_cluster_name(&name) {
        if phase != Some(ClusterPhase::Error) {
            plan.actions.push(set_phase(ClusterPhase::Error));
            plan.actions.push(Note::warn(message));
        }
        return Ok(plan);
    }
    let Some(phase) = phase else {
        plan.actions.push(Note::info(format!(
            "DaskCluster {name} created in {namespace}."
        )));
        plan.actions.push(set_phase(ClusterPhase::Created));
        return Ok(plan);
    };
    if phase == ClusterPhase::Error {
        // Upstream's error is permanent; a valid name cannot come back (names are immutable).
        return Ok(plan);
    }

    let missing =
        !view.scheduler_deployment || view.service.is_none() || view.default_group.is_none();
    if missing {
        plan.actions
            .push(Note::info("Creating Dask cluster components."));
    }
    let scheduler = names::scheduler_name(&name);
    if !view.scheduler_deployment {
        plan.actions
            .push(Action::Create(manifests::scheduler_deployment(cluster)?));
        plan.actions.push(Note::info(format!(
            "Scheduler deployment {scheduler} created in {namespace}."
        )));
    }
    if view.service.is_none() {
        plan.actions
            .push(Action::Create(manifests::scheduler_service(cluster)?));
        plan.actions.push(Note::info(format!(
            "Scheduler service {scheduler} created in {namespace}."
        )));
    }
    match view.default_group {
        None => {
            plan.actions
                .push(Action::Create(manifests::default_worker_group(cluster)?));
            plan.actions.push(Note::info(format!(
                "Worker group {} created in {namespace}.",
                names::default_worker_group_name(&name)
            )));
        }
        Some(group) => plan.actions.extend(carry_replicas(cluster, group)),
    }

    // Created -> Pending once the parts are made (upstream's create handler); afterwards
    // the Service decides, as upstream's Service status handler does.
    let next = match (phase, view.service) {
        (ClusterPhase::Created, _) | (_, None) => ClusterPhase::Pending,
        (_, Some(service)) if service.ready() => ClusterPhase::Running,
        _ => ClusterPhase::Pending,
    };
    if next != phase {
        plan.actions.push(set_phase(next));
    }
    if cluster.spec.idle_timeout > 0 {
        plan.requeue_after = Some(TIMER_PERIOD);
    }
    Ok(plan)
}

/// `kubectl scale daskcluster` (a new `spec.worker.replicas`) scales the default group, as
/// upstream's field handler does; the group's own replicas (set by the client's `scale()`
/// or the autoscaler) are left alone otherwise.
fn carry_replicas(cluster: &DaskCluster, group: &DaskWorkerGroup) -> Option<Action> {
    let wanted = cluster.spec.worker.replicas;
    let carried = group
        .annotations()
        .get(CLUSTER_REPLICAS_ANNOTATION)
        .and_then(|v| v.parse::<i64>().ok());
    if carried == Some(wanted) {
        return None;
    }
    Some(Action::PatchWorkerGroup {
        name: group.name_any(),
        patch: json!({
            "metadata": {"annotations": {CLUSTER_REPLICAS_ANNOTATION: wanted.to_string()}},
            "spec": {"worker": {"replicas": wanted}},
        }),
    })
}

/// Upstream's idle rule: delete the cluster once the scheduler has been idle for longer than
/// `idle_timeout` seconds (`0`: never). `idle_since` is the scheduler's answer (seconds since
/// the epoch; `None` while it is busy), `now` the same clock.
pub fn idle_expired(idle_timeout: i64, idle_since: Option<f64>, now: f64) -> bool {
    match idle_since {
        Some(since) if idle_timeout > 0 => now > since + idle_timeout as f64,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::operator::manifests::tests::upstream_resource;
    use crate::operator::resources::DaskClusterStatus;
    use rstest::rstest;
    use serde_json::Value;

    fn cluster(phase: Option<&str>) -> DaskCluster {
        let mut c: DaskCluster = upstream_resource("simplecluster.yaml");
        c.status = phase.map(|p| DaskClusterStatus {
            phase: Some(p.into()),
        });
        c
    }

    fn group(cluster: &DaskCluster, carried: Option<&str>) -> DaskWorkerGroup {
        let mut g: DaskWorkerGroup =
            serde_json::from_value(manifests::default_worker_group(cluster).unwrap()).unwrap();
        let annotations = g.metadata.annotations.get_or_insert_default();
        match carried {
            Some(v) => annotations.insert(CLUSTER_REPLICAS_ANNOTATION.into(), v.into()),
            None => annotations.remove(CLUSTER_REPLICAS_ANNOTATION),
        };
        g
    }

    /// The plan as short strings: `create Deployment simple-scheduler`, `phase Pending`,
    /// `note ...`, `scale simple-default to 5`.
    fn summary(plan: &Plan) -> Vec<String> {
        plan.actions
            .iter()
            .map(|a| match a {
                Action::Create(v) => format!(
                    "create {} {}",
                    v["kind"].as_str().unwrap(),
                    v["metadata"]["name"].as_str().unwrap()
                ),
                Action::PatchStatus(v) => {
                    format!("phase {}", v["status"]["phase"].as_str().unwrap())
                }
                Action::PatchWorkerGroup { name, patch } => {
                    format!("scale {name} to {}", patch["spec"]["worker"]["replicas"])
                }
                Action::Note(n) => {
                    format!("{} {}", if n.warning { "warn" } else { "note" }, n.message)
                }
                other => format!("{other:?}"),
            })
            .collect()
    }

    const LB: ServiceState = ServiceState {
        load_balancer: true,
        has_ingress: false,
    };
    const LB_READY: ServiceState = ServiceState {
        load_balancer: true,
        has_ingress: true,
    };
    const CLUSTER_IP: ServiceState = ServiceState {
        load_balancer: false,
        has_ingress: false,
    };

    #[rstest]
    #[case::first_sight(None, false, None, false, &["note DaskCluster simple created in ns.", "phase Created"])]
    #[case::created_makes_the_parts(Some("Created"), false, None, false, &[
        "note Creating Dask cluster components.",
        "create Deployment simple-scheduler", "note Scheduler deployment simple-scheduler created in ns.",
        "create Service simple-scheduler", "note Scheduler service simple-scheduler created in ns.",
        "create DaskWorkerGroup simple-default", "note Worker group simple-default created in ns.",
        "phase Pending"])]
    #[case::created_with_parts_already_there(Some("Created"), true, Some(CLUSTER_IP), true, &["phase Pending"])]
    #[case::pending_service_up(Some("Pending"), true, Some(CLUSTER_IP), true, &["phase Running"])]
    #[case::pending_load_balancer_without_address(Some("Pending"), true, Some(LB), true, &[])]
    #[case::pending_load_balancer_with_address(Some("Pending"), true, Some(LB_READY), true, &["phase Running"])]
    #[case::running_steady(Some("Running"), true, Some(CLUSTER_IP), true, &[])]
    #[case::running_lost_its_scheduler_deployment(Some("Running"), false, Some(CLUSTER_IP), true, &[
        "note Creating Dask cluster components.",
        "create Deployment simple-scheduler", "note Scheduler deployment simple-scheduler created in ns."])]
    #[case::running_lost_its_service(Some("Running"), true, None, true, &[
        "note Creating Dask cluster components.",
        "create Service simple-scheduler", "note Scheduler service simple-scheduler created in ns.",
        "phase Pending"])]
    #[case::someone_elses_phase_reads_as_none(Some("Weird"), true, Some(CLUSTER_IP), true, &["note DaskCluster simple created in ns.", "phase Created"])]
    fn cluster_phases_and_parts(
        #[case] phase: Option<&str>,
        #[case] deployment: bool,
        #[case] service: Option<ServiceState>,
        #[case] has_group: bool,
        #[case] expected: &[&str],
    ) {
        let c = cluster(phase);
        let g = group(&c, Some("2"));
        let plan = plan_cluster(ClusterView {
            cluster: &c,
            scheduler_deployment: deployment,
            service,
            default_group: has_group.then_some(&g),
        })
        .unwrap();
        assert_eq!(summary(&plan), expected);
        assert_eq!(plan.requeue_after, None, "no idle timeout: no timer");
    }

    #[rstest]
    #[case::too_long(&"a".repeat(54))]
    #[case::dots("invalid.chars.in.name")]
    fn an_invalid_name_is_an_error_phase_with_upstreams_message(#[case] name: &str) {
        let mut c = cluster(None);
        c.metadata.name = Some(name.into());
        let plan = plan_cluster(ClusterView {
            cluster: &c,
            scheduler_deployment: false,
            service: None,
            default_group: None,
        })
        .unwrap();
        let s = summary(&plan);
        assert_eq!(s[0], "phase Error");
        assert!(
            s[1].starts_with(&format!("warn The DaskCluster {name} is invalid")),
            "{s:?}"
        );
        c.status = Some(DaskClusterStatus {
            phase: Some("Error".into()),
        });
        let again = plan_cluster(ClusterView {
            cluster: &c,
            scheduler_deployment: false,
            service: None,
            default_group: None,
        })
        .unwrap();
        assert!(again.actions.is_empty(), "an error is reported once");
    }

    #[rstest]
    #[case::unchanged(2, Some("2"), &[])]
    #[case::kubectl_scale_daskcluster(5, Some("2"), &["scale simple-default to 5"])]
    #[case::group_made_by_someone_else(2, None, &["scale simple-default to 2"])]
    fn cluster_replicas_reach_the_default_group_when_they_change(
        #[case] replicas: i64,
        #[case] carried: Option<&str>,
        #[case] expected: &[&str],
    ) {
        let mut c = cluster(Some("Running"));
        let mut g = group(&c, carried);
        g.spec.worker.replicas = 7; // scaled by the client or the autoscaler: not undone
        c.spec.worker.replicas = replicas;
        let plan = plan_cluster(ClusterView {
            cluster: &c,
            scheduler_deployment: true,
            service: Some(CLUSTER_IP),
            default_group: Some(&g),
        })
        .unwrap();
        assert_eq!(summary(&plan), expected);
        if let Some(Action::PatchWorkerGroup { patch, .. }) = plan.actions.first() {
            assert_eq!(
                patch["metadata"]["annotations"][CLUSTER_REPLICAS_ANNOTATION],
                Value::from(replicas.to_string())
            );
        }
    }

    #[test]
    fn an_idle_timeout_keeps_a_timer() {
        let mut c = cluster(Some("Running"));
        c.spec.idle_timeout = 60;
        let g = group(&c, Some("2"));
        let plan = plan_cluster(ClusterView {
            cluster: &c,
            scheduler_deployment: true,
            service: Some(CLUSTER_IP),
            default_group: Some(&g),
        })
        .unwrap();
        assert_eq!(plan.requeue_after, Some(TIMER_PERIOD));
    }

    #[rstest]
    #[case::never(0, Some(0.0), 1e9, false)]
    #[case::busy(60, None, 1e9, false)]
    #[case::idle_not_long_enough(60, Some(1000.0), 1060.0, false)]
    #[case::idle_long_enough(60, Some(1000.0), 1060.5, true)]
    fn idle_clusters_expire_as_upstream_decides(
        #[case] timeout: i64,
        #[case] since: Option<f64>,
        #[case] now: f64,
        #[case] expired: bool,
    ) {
        assert_eq!(idle_expired(timeout, since, now), expired);
    }
}
