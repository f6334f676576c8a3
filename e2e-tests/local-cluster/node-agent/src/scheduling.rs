//! Scheduling predicates, as kube-scheduler's filter plugins decide them: taints and
//! tolerations, nodeSelector and required node affinity, resource fit; and the
//! `0/N nodes are available: ...` message users read in `kubectl describe pod`.
//!
//! Pure: nodes and pods in, verdicts out.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, Taint, Toleration,
};

use crate::quantity;

/// True if `toleration` tolerates `taint` (k8s.io/api `Toleration.ToleratesTaint`).
///
/// An empty effect matches every effect; an empty key with `Exists` matches every taint;
/// an empty operator means `Equal`.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = toleration.effect.as_deref().filter(|e| !e.is_empty())
        && effect != taint.effect
    {
        return false;
    }
    if let Some(key) = toleration.key.as_deref().filter(|k| !k.is_empty())
        && key != taint.key
    {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("") {
        "" | "Equal" => {
            toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        "Exists" => true,
        _ => false,
    }
}

/// The first taint with effect NoSchedule or NoExecute that no toleration tolerates.
pub fn untolerated_taint<'a>(taints: &'a [Taint], tolerations: &[Toleration]) -> Option<&'a Taint> {
    taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .find(|taint| !tolerations.iter().any(|tol| tolerates(tol, taint)))
}

fn requirement_matches(req: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = req.values.as_deref().unwrap_or_default();
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), [bound]) = (value, values) else {
                return false;
            };
            match (v.parse::<i64>(), bound.parse::<i64>()) {
                (Ok(v), Ok(b)) if req.operator == "Gt" => v > b,
                (Ok(v), Ok(b)) => v < b,
                _ => false,
            }
        }
        _ => false,
    }
}

fn term_matches(
    term: &NodeSelectorTerm,
    node_name: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        // An empty term matches no objects (k8s.io/component-helpers nodeaffinity).
        return false;
    }
    exprs
        .iter()
        .all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| {
            let value = (r.key == "metadata.name").then_some(node_name);
            requirement_matches(r, value)
        })
}

/// True if the pod's nodeSelector and required node affinity both match the node.
pub fn node_matches(pod: &Pod, node: &Node) -> bool {
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let node_name = node.metadata.name.as_deref().unwrap_or_default();
    let Some(spec) = pod.spec.as_ref() else {
        return true;
    };
    if let Some(selector) = &spec.node_selector
        && !selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    {
        return false;
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    match required {
        None => true,
        Some(sel) => sel
            .node_selector_terms
            .iter()
            .any(|t| term_matches(t, node_name, labels)),
    }
}

/// Resource amounts in milli-units by resource name (`cpu`, `memory`, `pods`, extended).
pub type Resources = BTreeMap<String, i128>;

/// What a pod asks for: max(sum of containers, each init container) plus overhead,
/// and one `pods` slot (the scheduler's effective request).
pub fn pod_requests(pod: &Pod) -> Resources {
    let mut total = Resources::new();
    let Some(spec) = pod.spec.as_ref() else {
        return total;
    };
    let container_requests = |c: &k8s_openapi::api::core::v1::Container| -> Resources {
        c.resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .map(|req| {
                req.iter()
                    .filter_map(|(k, q)| quantity::parse(&q.0).ok().map(|m| (k.clone(), m.0)))
                    .collect()
            })
            .unwrap_or_default()
    };
    for c in &spec.containers {
        for (k, v) in container_requests(c) {
            *total.entry(k).or_default() += v;
        }
    }
    for c in spec.init_containers.iter().flatten() {
        for (k, v) in container_requests(c) {
            let slot = total.entry(k).or_default();
            *slot = (*slot).max(v);
        }
    }
    for (k, q) in spec.overhead.iter().flatten() {
        if let Ok(m) = quantity::parse(&q.0) {
            *total.entry(k.clone()).or_default() += m.0;
        }
    }
    total.insert("pods".to_string(), 1000);
    total
}

/// The node's allocatable resources in milli-units.
pub fn node_allocatable(node: &Node) -> Resources {
    node.status
        .as_ref()
        .and_then(|s| s.allocatable.as_ref())
        .map(|a| {
            a.iter()
                .filter_map(|(k, q)| quantity::parse(&q.0).ok().map(|m| (k.clone(), m.0)))
                .collect()
        })
        .unwrap_or_default()
}

/// True if the pod still holds node resources (bound and not finished).
pub fn holds_resources(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded" | "Failed"))
}

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

/// Why a node rejects a pod: the reasons kube-scheduler's filter plugins report.
pub fn filter_node(pod: &Pod, node: &Node, used: &Resources) -> Vec<String> {
    let mut reasons = Vec::new();
    let spec = pod.spec.as_ref();
    let tolerations = spec
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default();
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        let taint = Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        if !tolerations.iter().any(|t| tolerates(t, &taint)) {
            reasons.push("node(s) were unschedulable".to_string());
            return reasons;
        }
    }
    if !node_matches(pod, node) {
        reasons.push("node(s) didn't match Pod's node affinity/selector".to_string());
        return reasons;
    }
    let mut taints: Vec<Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    if !node_ready(node) {
        // What the node lifecycle controller would add; this cluster has none.
        taints.push(Taint {
            key: "node.kubernetes.io/not-ready".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        });
    }
    if let Some(taint) = untolerated_taint(&taints, tolerations) {
        reasons.push(format!(
            "node(s) had untolerated taint {{{}: {}}}",
            taint.key,
            taint.value.as_deref().unwrap_or("")
        ));
        return reasons;
    }
    let allocatable = node_allocatable(node);
    for (resource, want) in pod_requests(pod) {
        if want <= 0 {
            continue;
        }
        let have = allocatable.get(&resource).copied().unwrap_or(0);
        let in_use = used.get(&resource).copied().unwrap_or(0);
        if in_use + want > have {
            reasons.push(if resource == "pods" {
                "Too many pods".to_string()
            } else {
                format!("Insufficient {resource}")
            });
        }
    }
    reasons
}

/// kube-scheduler's FitError message: `0/N nodes are available: <count reason, sorted>.`
pub fn unschedulable_message(num_nodes: usize, reasons_per_node: &[Vec<String>]) -> String {
    if num_nodes == 0 {
        return "no nodes available to schedule pods".to_string();
    }
    let mut histogram: BTreeMap<&str, usize> = BTreeMap::new();
    for reasons in reasons_per_node {
        for r in reasons {
            *histogram.entry(r.as_str()).or_default() += 1;
        }
    }
    let mut parts: Vec<String> = histogram.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    format!(
        "0/{num_nodes} nodes are available: {}. preemption: 0/{num_nodes} nodes are available: {num_nodes} Preemption is not helpful for scheduling.",
        parts.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use serde_json::json;

    fn taint(key: &str, value: Option<&str>, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: value.map(Into::into),
            effect: effect.into(),
            time_added: None,
        }
    }

    fn tol(
        key: Option<&str>,
        op: Option<&str>,
        value: Option<&str>,
        effect: Option<&str>,
    ) -> Toleration {
        Toleration {
            key: key.map(Into::into),
            operator: op.map(Into::into),
            value: value.map(Into::into),
            effect: effect.map(Into::into),
            toleration_seconds: None,
        }
    }

    const DASK: &str = "k8s.dask.org/dedicated";

    #[rstest]
    #[case::equal_exact(
        tol(Some(DASK), Some("Equal"), Some("worker"), Some("NoSchedule")),
        true
    )]
    #[case::empty_operator_means_equal(
        tol(Some(DASK), None, Some("worker"), Some("NoSchedule")),
        true
    )]
    #[case::equal_wrong_value(
        tol(Some(DASK), Some("Equal"), Some("other"), Some("NoSchedule")),
        false
    )]
    #[case::equal_missing_value(tol(Some(DASK), Some("Equal"), None, Some("NoSchedule")), false)]
    #[case::exists_ignores_value(tol(Some(DASK), Some("Exists"), None, Some("NoSchedule")), true)]
    #[case::empty_effect_matches_all_effects(
        tol(Some(DASK), Some("Equal"), Some("worker"), None),
        true
    )]
    #[case::wrong_effect(
        tol(Some(DASK), Some("Equal"), Some("worker"), Some("NoExecute")),
        false
    )]
    #[case::wrong_key(
        tol(Some("k8s.dask.org_dedicated"), Some("Equal"), Some("worker"), None),
        false
    )]
    #[case::empty_key_exists_tolerates_everything(tol(None, Some("Exists"), None, None), true)]
    #[case::empty_key_exists_with_other_effect(
        tol(None, Some("Exists"), None, Some("NoExecute")),
        false
    )]
    #[case::unknown_operator(tol(Some(DASK), Some("Gt"), Some("worker"), None), false)]
    fn toleration_matching(#[case] t: Toleration, #[case] expected: bool) {
        assert_eq!(
            tolerates(&t, &taint(DASK, Some("worker"), "NoSchedule")),
            expected
        );
    }

    #[rstest]
    #[case::no_taints(vec![], vec![], None)]
    #[case::untolerated(vec![taint(DASK, Some("worker"), "NoSchedule")], vec![], Some(DASK))]
    #[case::prefer_no_schedule_is_ignored(vec![taint(DASK, Some("worker"), "PreferNoSchedule")], vec![], None)]
    #[case::no_execute_counts(vec![taint("x", None, "NoExecute")], vec![], Some("x"))]
    #[case::tolerated(vec![taint(DASK, Some("worker"), "NoSchedule")], vec![tol(Some(DASK), Some("Equal"), Some("worker"), Some("NoSchedule"))], None)]
    #[case::second_taint_untolerated(
        vec![taint(DASK, Some("worker"), "NoSchedule"), taint("gpu", Some("yes"), "NoSchedule")],
        vec![tol(Some(DASK), Some("Exists"), None, None)],
        Some("gpu"))]
    fn untolerated_taints(
        #[case] taints: Vec<Taint>,
        #[case] tols: Vec<Toleration>,
        #[case] expected: Option<&str>,
    ) {
        assert_eq!(
            untolerated_taint(&taints, &tols).map(|t| t.key.as_str()),
            expected
        );
    }

    fn node(
        labels: serde_json::Value,
        taints: serde_json::Value,
        alloc: serde_json::Value,
    ) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": "local-node", "labels": labels},
            "spec": {"taints": taints},
            "status": {"allocatable": alloc,
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap()
    }

    fn pod(spec: serde_json::Value) -> Pod {
        let mut spec = spec;
        if spec.get("containers").is_none() {
            spec["containers"] = json!([{"name": "c"}]);
        }
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).unwrap()
    }

    fn required(exprs: serde_json::Value) -> serde_json::Value {
        json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            {"nodeSelectorTerms": [{"matchExpressions": exprs}]}}}})
    }

    #[rstest]
    #[case::no_constraints(json!({}), true)]
    #[case::selector_matches(json!({"nodeSelector": {"pool": "dask"}}), true)]
    #[case::selector_mismatch(json!({"nodeSelector": {"pool": "gpu"}}), false)]
    #[case::selector_missing_label(json!({"nodeSelector": {"zone": "a"}}), false)]
    #[case::affinity_in(required(json!([{"key": "k8s.dask.org/node-purpose", "operator": "In", "values": ["worker"]}])), true)]
    #[case::affinity_in_mismatch(required(json!([{"key": "k8s.dask.org/node-purpose", "operator": "In", "values": ["scheduler"]}])), false)]
    #[case::affinity_not_in_absent_label(required(json!([{"key": "zone", "operator": "NotIn", "values": ["a"]}])), true)]
    #[case::affinity_exists(required(json!([{"key": "pool", "operator": "Exists"}])), true)]
    #[case::affinity_does_not_exist(required(json!([{"key": "pool", "operator": "DoesNotExist"}])), false)]
    #[case::affinity_gt(required(json!([{"key": "cores", "operator": "Gt", "values": ["4"]}])), true)]
    #[case::affinity_lt(required(json!([{"key": "cores", "operator": "Lt", "values": ["4"]}])), false)]
    #[case::match_fields_name(json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
        {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["local-node"]}]}]}}}}), true)]
    #[case::empty_term_matches_nothing(json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
        {"nodeSelectorTerms": [{}]}}}}), false)]
    #[case::terms_are_ored(json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
        {"nodeSelectorTerms": [{"matchExpressions": [{"key": "pool", "operator": "In", "values": ["x"]}]},
                               {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["dask"]}]}]}}}}), true)]
    fn node_selection(#[case] spec: serde_json::Value, #[case] expected: bool) {
        let n = node(
            json!({"pool": "dask", "k8s.dask.org/node-purpose": "worker", "cores": "8"}),
            json!([]),
            json!({}),
        );
        assert_eq!(node_matches(&pod(spec), &n), expected);
    }

    #[rstest]
    #[case::fits(json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}]}), vec![])]
    #[case::too_much_cpu(json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "3"}}}]}), vec!["Insufficient cpu"])]
    #[case::sum_of_containers(json!({"containers": [
        {"name": "a", "resources": {"requests": {"memory": "3Gi"}}},
        {"name": "b", "resources": {"requests": {"memory": "2Gi"}}}]}), vec!["Insufficient memory"])]
    #[case::init_container_max_not_sum(json!({
        "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "1500m"}}}],
        "containers": [{"name": "a", "resources": {"requests": {"cpu": "1"}}}]}), vec![])]
    #[case::extended_resource_missing(json!({"containers": [{"name": "c", "resources": {"requests": {"nvidia.com/gpu": "1"}}}]}), vec!["Insufficient nvidia.com/gpu"])]
    #[case::selector_mismatch_reported_before_resources(json!({"nodeSelector": {"taint": "yes"}}), vec!["node(s) didn't match Pod's node affinity/selector"])]
    fn resource_fit(#[case] spec: serde_json::Value, #[case] expected: Vec<&str>) {
        let n = node(
            json!({}),
            json!([]),
            json!({"cpu": "2", "memory": "4Gi", "pods": "110"}),
        );
        let used: Resources = [("cpu".to_string(), 500), ("pods".to_string(), 3000)].into();
        assert_eq!(filter_node(&pod(spec), &n, &used), expected);
    }

    #[test]
    fn taint_reason_names_key_and_value() {
        let n = node(
            json!({}),
            json!([{"key": DASK, "value": "worker", "effect": "NoSchedule"}]),
            json!({"cpu": "2", "memory": "4Gi", "pods": "110"}),
        );
        let reasons = filter_node(&pod(json!({})), &n, &Resources::new());
        assert_eq!(
            reasons,
            vec!["node(s) had untolerated taint {k8s.dask.org/dedicated: worker}"]
        );
        let tolerating = pod(
            json!({"tolerations": [{"key": DASK, "operator": "Equal", "value": "worker", "effect": "NoSchedule"}]}),
        );
        assert!(filter_node(&tolerating, &n, &Resources::new()).is_empty());
    }

    #[test]
    fn full_pod_slots_report_too_many_pods() {
        let n = node(json!({}), json!([]), json!({"pods": "2"}));
        let used: Resources = [("pods".to_string(), 2000)].into();
        assert_eq!(
            filter_node(&pod(json!({})), &n, &used),
            vec!["Too many pods"]
        );
    }

    #[rstest]
    #[case::no_nodes(0, vec![], "no nodes available to schedule pods")]
    #[case::one_taint(1, vec![vec!["node(s) had untolerated taint {k8s.dask.org/dedicated: worker}"]],
        "0/1 nodes are available: 1 node(s) had untolerated taint {k8s.dask.org/dedicated: worker}. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.")]
    #[case::histogram_sorted(3, vec![vec!["node(s) didn't match Pod's node affinity/selector"], vec!["Insufficient cpu"], vec!["node(s) didn't match Pod's node affinity/selector"]],
        "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't match Pod's node affinity/selector. preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling.")]
    fn messages(#[case] n: usize, #[case] reasons: Vec<Vec<&str>>, #[case] expected: &str) {
        let reasons: Vec<Vec<String>> = reasons
            .into_iter()
            .map(|r| r.into_iter().map(String::from).collect())
            .collect();
        assert_eq!(unschedulable_message(n, &reasons), expected);
    }
}
