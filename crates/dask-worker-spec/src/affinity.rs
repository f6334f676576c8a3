//! Dedicated Dask node pools: the node affinity classic dask-kubernetes gave its pods.
//!
//! dask-kubernetes documents Dask node pools as nodes tainted
//! `k8s.dask.org/dedicated=<component>:NoSchedule` and labelled
//! `k8s.dask.org/node-purpose=<component>` (`worker` or `scheduler`). The tolerations let a
//! pod onto such a node; only a node affinity keeps it from landing elsewhere. Classic
//! `KubeCluster(apply_default_affinity=...)` (`clean_pod_template` in
//! `dask_kubernetes/common/objects.py`, 2024.4.2) gave worker and scheduler pods
//! `k8s.dask.org/node-purpose In [<component>]`, preferred with weight 100 by default, or
//! required. [`apply_default_affinity`] does the same on a pod spec as raw JSON, for the
//! policy (worker pods and templates) and for dask-kube (its worker and scheduler pods).

use crate::labels;
use crate::settings::{DEDICATED_TAINT_KEY, DEDICATED_TAINT_KEY_GKE, Toleration};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::fmt;
use std::str::FromStr;

/// Node label that marks the nodes of a Dask pool, valued `worker` or `scheduler`.
pub const NODE_PURPOSE_LABEL: &str = "k8s.dask.org/node-purpose";
/// Weight of the preferred term, as classic gives it (the largest the API allows).
pub const PREFERRED_AFFINITY_WEIGHT: i64 = 100;

/// Which Dask pod a pod spec is: the pool it belongs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DaskComponent {
    /// A worker pod (or a template of worker pods).
    Worker,
    /// The scheduler pod.
    Scheduler,
}

impl DaskComponent {
    /// The value of the pool's taint and `node-purpose` label: `worker` or `scheduler`.
    pub const fn as_str(self) -> &'static str {
        match self {
            DaskComponent::Worker => labels::WORKER,
            DaskComponent::Scheduler => labels::SCHEDULER,
        }
    }

    /// The two tolerations classic gives this component's pods, whatever the affinity mode:
    /// `k8s.dask.org/dedicated=<component>:NoSchedule` and the GKE spelling
    /// `k8s.dask.org_dedicated` (GKE forbids `/` in node-pool taint keys).
    pub fn dedicated_tolerations(self) -> Vec<Toleration> {
        [DEDICATED_TAINT_KEY, DEDICATED_TAINT_KEY_GKE]
            .iter()
            .map(|key| Toleration::equal(key, self.as_str(), "NoSchedule"))
            .collect()
    }
}

impl fmt::Display for DaskComponent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How strongly a Dask pod is kept on its pool's nodes: classic's `apply_default_affinity`
/// (`"preferred"`, `"required"` or `"none"`; the policy's `applyDefaultAffinity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum DefaultAffinity {
    /// The scheduler prefers the pool's nodes (weight 100) and uses others when the pool is
    /// full or absent: classic's default, safe on a cluster without a Dask pool.
    #[default]
    Preferred,
    /// Only the pool's nodes: a pod waits (Pending) rather than run elsewhere.
    Required,
    /// No node affinity is added.
    None,
}

impl DefaultAffinity {
    /// The setting's spelling: `preferred`, `required` or `none`.
    pub const fn as_str(self) -> &'static str {
        match self {
            DefaultAffinity::Preferred => "preferred",
            DefaultAffinity::Required => "required",
            DefaultAffinity::None => "none",
        }
    }
}

impl fmt::Display for DefaultAffinity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An affinity mode that is not `preferred`, `required` or `none`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown affinity mode {0:?}: must be \"preferred\", \"required\" or \"none\"")]
pub struct UnknownAffinityMode(pub String);

impl TryFrom<String> for DefaultAffinity {
    type Error = UnknownAffinityMode;

    /// Read through [`FromStr`], so settings and command lines give one message.
    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl FromStr for DefaultAffinity {
    type Err = UnknownAffinityMode;

    /// Exactly classic's values (lowercase), so a value written for classic means the same.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        [
            DefaultAffinity::Preferred,
            DefaultAffinity::Required,
            DefaultAffinity::None,
        ]
        .into_iter()
        .find(|mode| mode.as_str() == text)
        .ok_or_else(|| UnknownAffinityMode(text.to_owned()))
    }
}

const AFFINITY: &str = "affinity";
const NODE_AFFINITY: &str = "nodeAffinity";
const PREFERRED: &str = "preferredDuringSchedulingIgnoredDuringExecution";
const REQUIRED: &str = "requiredDuringSchedulingIgnoredDuringExecution";
const NODE_SELECTOR_TERMS: &str = "nodeSelectorTerms";
const MATCH_EXPRESSIONS: &str = "matchExpressions";

/// Gives a pod spec classic's node affinity for `component`'s pool, as
/// `clean_pod_template(apply_default_affinity=mode, pod_type=component)` did; `path` names
/// the spec in errors (`spec`, `spec.template.spec`). Returns whether the spec changed.
///
/// - `Preferred`: adds the term `{weight: 100, preference: {matchExpressions:
///   [{key: k8s.dask.org/node-purpose, operator: In, values: [<component>]}]}}` to
///   `affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution`.
/// - `Required`: with no required node affinity, adds the node selector term
///   `{matchExpressions: [<that requirement>]}`, exactly classic's. Where the user has
///   required terms, the requirement is added to each of them instead of as one more term:
///   Kubernetes ORs node selector terms, so classic's extra term let a worker onto any node
///   the user's own term selects, off the pool; added to each term, the pod goes only to pool
///   nodes that also satisfy the user's terms.
/// - `None`: nothing.
///
/// Every other field of the affinity (pod affinity, the user's own terms and weights) is
/// kept. A term or preference that already says something about `k8s.dask.org/node-purpose`
/// is the user's choice of pool and is left as it is, and a preference for it is not added
/// beside one, so a second pass changes nothing. A malformed affinity is an error naming the
/// field, never a panic.
///
/// # Example
/// ```
/// use dask_worker_spec::{DaskComponent, DefaultAffinity, apply_default_affinity};
/// let mut spec = serde_json::json!({"containers": [{"name": "scheduler", "image": "dask"}]});
/// let changed = apply_default_affinity(
///     &mut spec, "spec", DaskComponent::Scheduler, DefaultAffinity::Required).unwrap();
/// assert!(changed);
/// assert_eq!(
///     spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"],
///     serde_json::json!({"nodeSelectorTerms": [{"matchExpressions": [
///         {"key": "k8s.dask.org/node-purpose", "operator": "In", "values": ["scheduler"]}
///     ]}]})
/// );
/// // A second pass finds it there.
/// assert!(!apply_default_affinity(
///     &mut spec, "spec", DaskComponent::Scheduler, DefaultAffinity::Required).unwrap());
/// ```
pub fn apply_default_affinity(
    spec: &mut Value,
    path: &str,
    component: DaskComponent,
    mode: DefaultAffinity,
) -> Result<bool> {
    let Some(spec) = spec.as_object_mut() else {
        return Err(Error::malformed(path, "must be an object"));
    };
    apply_to_spec(spec, path, component, mode)
}

/// Classic `clean_pod_template(pod_type=component)` on a pod spec: the component's two
/// dedicated tolerations ([`DaskComponent::dedicated_tolerations`], each present exactly
/// once, every other toleration kept), whatever `mode` says, and the node affinity of
/// [`apply_default_affinity`]. For dask-kube's scheduler pod; worker pods get theirs from
/// [`apply_worker_defaults`](crate::apply_worker_defaults), whose tolerations are a setting.
/// Returns whether the spec changed.
///
/// # Example
/// ```
/// use dask_worker_spec::{DaskComponent, DefaultAffinity, apply_dedicated_pool};
/// let mut spec = serde_json::json!({"containers": [{"name": "scheduler", "image": "dask"}]});
/// apply_dedicated_pool(&mut spec, "spec", DaskComponent::Scheduler, DefaultAffinity::Preferred)
///     .unwrap();
/// assert_eq!(spec["tolerations"][0]["value"], "scheduler");
/// assert_eq!(
///     spec["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
///         ["preference"]["matchExpressions"][0]["values"][0],
///     "scheduler"
/// );
/// ```
pub fn apply_dedicated_pool(
    spec: &mut Value,
    path: &str,
    component: DaskComponent,
    mode: DefaultAffinity,
) -> Result<bool> {
    let Some(spec) = spec.as_object_mut() else {
        return Err(Error::malformed(path, "must be an object"));
    };
    let tolerations =
        crate::defaults::ensure_tolerations(spec, path, &component.dedicated_tolerations())?;
    let affinity = apply_to_spec(spec, path, component, mode)?;
    Ok(tolerations || affinity)
}

/// [`apply_default_affinity`] on a pod spec already known to be an object.
pub(crate) fn apply_to_spec(
    spec: &mut Map<String, Value>,
    path: &str,
    component: DaskComponent,
    mode: DefaultAffinity,
) -> Result<bool> {
    match mode {
        DefaultAffinity::None => Ok(false),
        DefaultAffinity::Preferred => prefer_pool(spec, path, component),
        DefaultAffinity::Required => require_pool(spec, path, component),
    }
}

fn requirement(component: DaskComponent) -> Value {
    json!({"key": NODE_PURPOSE_LABEL, "operator": "In", "values": [component.as_str()]})
}

fn prefer_pool(
    spec: &mut Map<String, Value>,
    path: &str,
    component: DaskComponent,
) -> Result<bool> {
    let node_affinity = node_affinity(spec, path)?;
    let field = || format!("{path}.{AFFINITY}.{NODE_AFFINITY}.{PREFERRED}");
    let terms = array_entry(node_affinity, PREFERRED, field)?;
    for (i, term) in terms.iter().enumerate() {
        let preference = object_at(term, "preference", || format!("{}[{i}]", field()))?;
        let expressions = preference
            .map(|p| expressions(p, || format!("{}[{i}].preference", field())))
            .transpose()?;
        if expressions.is_some_and(mentions_node_purpose) {
            return Ok(false);
        }
    }
    terms.push(json!({
        "weight": PREFERRED_AFFINITY_WEIGHT,
        "preference": {MATCH_EXPRESSIONS: [requirement(component)]},
    }));
    Ok(true)
}

fn require_pool(
    spec: &mut Map<String, Value>,
    path: &str,
    component: DaskComponent,
) -> Result<bool> {
    let node_affinity = node_affinity(spec, path)?;
    let field = || format!("{path}.{AFFINITY}.{NODE_AFFINITY}.{REQUIRED}");
    let selector = object_entry(node_affinity, REQUIRED, field)?;
    let terms_field = || format!("{}.{NODE_SELECTOR_TERMS}", field());
    let terms = array_entry(selector, NODE_SELECTOR_TERMS, terms_field)?;
    if terms.is_empty() {
        terms.push(json!({MATCH_EXPRESSIONS: [requirement(component)]}));
        return Ok(true);
    }
    let mut changed = false;
    for (i, term) in terms.iter_mut().enumerate() {
        let term_field = || format!("{}[{i}]", terms_field());
        let Some(term) = term.as_object_mut() else {
            return Err(Error::malformed(term_field(), "must be an object"));
        };
        let expressions = array_entry(term, MATCH_EXPRESSIONS, || {
            format!("{}.{MATCH_EXPRESSIONS}", term_field())
        })?;
        if !mentions_node_purpose(expressions) {
            expressions.push(requirement(component));
            changed = true;
        }
    }
    Ok(changed)
}

/// Whether a node selector term's expressions already constrain the pool label.
fn mentions_node_purpose(expressions: &[Value]) -> bool {
    expressions
        .iter()
        .any(|e| e.get("key").and_then(Value::as_str) == Some(NODE_PURPOSE_LABEL))
}

/// `affinity.nodeAffinity` of the spec, made when absent or null. A spec that needs nothing
/// gains no empty object: the only pass that adds nothing is one that found the pool's term
/// inside these very objects.
fn node_affinity<'a>(
    spec: &'a mut Map<String, Value>,
    path: &str,
) -> Result<&'a mut Map<String, Value>> {
    let affinity = object_entry(spec, AFFINITY, || format!("{path}.{AFFINITY}"))?;
    object_entry(affinity, NODE_AFFINITY, || {
        format!("{path}.{AFFINITY}.{NODE_AFFINITY}")
    })
}

/// `map[key]` as an object, inserted empty when absent or null.
fn object_entry<'a>(
    map: &'a mut Map<String, Value>,
    key: &str,
    field: impl Fn() -> String,
) -> Result<&'a mut Map<String, Value>> {
    let entry = map.entry(key).or_insert(Value::Null);
    if entry.is_null() {
        *entry = Value::Object(Map::new());
    }
    entry
        .as_object_mut()
        .ok_or_else(|| Error::malformed(field(), "must be an object"))
}

/// `map[key]` as an array, inserted empty when absent or null.
fn array_entry<'a>(
    map: &'a mut Map<String, Value>,
    key: &str,
    field: impl Fn() -> String,
) -> Result<&'a mut Vec<Value>> {
    let entry = map.entry(key).or_insert(Value::Null);
    if entry.is_null() {
        *entry = Value::Array(Vec::new());
    }
    entry
        .as_array_mut()
        .ok_or_else(|| Error::malformed(field(), "must be an array"))
}

/// `value[key]` as an object when present (null is absent); `value` must be an object.
fn object_at<'a>(
    value: &'a Value,
    key: &str,
    field: impl Fn() -> String,
) -> Result<Option<&'a Map<String, Value>>> {
    let Some(map) = value.as_object() else {
        return Err(Error::malformed(field(), "must be an object"));
    };
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(inner)) => Ok(Some(inner)),
        Some(_) => Err(Error::malformed(
            format!("{}.{key}", field()),
            "must be an object",
        )),
    }
}

/// A node selector term's `matchExpressions` (empty when absent or null).
fn expressions(term: &Map<String, Value>, field: impl Fn() -> String) -> Result<&[Value]> {
    match term.get(MATCH_EXPRESSIONS) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(expressions)) => Ok(expressions),
        Some(_) => Err(Error::malformed(
            format!("{}.{MATCH_EXPRESSIONS}", field()),
            "must be an array",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn worker_req() -> Value {
        requirement(DaskComponent::Worker)
    }

    fn zone(zone: &str) -> Value {
        json!({"key": "topology.kubernetes.io/zone", "operator": "In", "values": [zone]})
    }

    /// classic's preferred term for workers.
    fn classic_preferred() -> Value {
        json!({"weight": 100, "preference": {"matchExpressions": [worker_req()]}})
    }

    #[rstest]
    #[case::preferred_on_a_bare_spec(
        DefaultAffinity::Preferred,
        json!({}),
        json!({"affinity": {"nodeAffinity": {PREFERRED: [classic_preferred()]}}})
    )]
    #[case::preferred_on_a_null_affinity(
        DefaultAffinity::Preferred,
        json!({"affinity": null}),
        json!({"affinity": {"nodeAffinity": {PREFERRED: [classic_preferred()]}}})
    )]
    #[case::preferred_keeps_pod_anti_affinity(
        DefaultAffinity::Preferred,
        json!({"affinity": {"podAntiAffinity": {"x": 1}}}),
        json!({"affinity": {"podAntiAffinity": {"x": 1}, "nodeAffinity": {PREFERRED: [classic_preferred()]}}})
    )]
    #[case::preferred_after_the_users_preference(
        DefaultAffinity::Preferred,
        json!({"affinity": {"nodeAffinity": {PREFERRED: [
            {"weight": 10, "preference": {"matchExpressions": [zone("a")]}}
        ]}}}),
        json!({"affinity": {"nodeAffinity": {PREFERRED: [
            {"weight": 10, "preference": {"matchExpressions": [zone("a")]}},
            classic_preferred()
        ]}}})
    )]
    #[case::preferred_leaves_a_required_term_alone(
        DefaultAffinity::Preferred,
        json!({"affinity": {"nodeAffinity": {REQUIRED: {"nodeSelectorTerms": [{"matchExpressions": [zone("a")]}]}}}}),
        json!({"affinity": {"nodeAffinity": {
            REQUIRED: {"nodeSelectorTerms": [{"matchExpressions": [zone("a")]}]},
            PREFERRED: [classic_preferred()]
        }}})
    )]
    #[case::preferred_already_there(
        DefaultAffinity::Preferred,
        json!({"affinity": {"nodeAffinity": {PREFERRED: [classic_preferred()]}}}),
        json!({"affinity": {"nodeAffinity": {PREFERRED: [classic_preferred()]}}})
    )]
    #[case::preferred_the_users_own_pool_preference_wins(
        DefaultAffinity::Preferred,
        json!({"affinity": {"nodeAffinity": {PREFERRED: [{"weight": 50, "preference": {"matchExpressions": [
            {"key": NODE_PURPOSE_LABEL, "operator": "In", "values": ["gpu-worker"]}
        ]}}]}}}),
        json!({"affinity": {"nodeAffinity": {PREFERRED: [{"weight": 50, "preference": {"matchExpressions": [
            {"key": NODE_PURPOSE_LABEL, "operator": "In", "values": ["gpu-worker"]}
        ]}}]}}})
    )]
    #[case::required_on_a_bare_spec(
        DefaultAffinity::Required,
        json!({"containers": []}),
        json!({"containers": [], "affinity": {"nodeAffinity": {REQUIRED: {"nodeSelectorTerms": [{"matchExpressions": [worker_req()]}]}}}})
    )]
    #[case::required_joins_each_user_term(
        DefaultAffinity::Required,
        json!({"affinity": {"nodeAffinity": {REQUIRED: {"nodeSelectorTerms": [
            {"matchExpressions": [zone("a")]},
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}
        ]}}}}),
        json!({"affinity": {"nodeAffinity": {REQUIRED: {"nodeSelectorTerms": [
            {"matchExpressions": [zone("a"), worker_req()]},
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}], "matchExpressions": [worker_req()]}
        ]}}}})
    )]
    #[case::required_a_term_naming_a_pool_is_kept(
        DefaultAffinity::Required,
        json!({"affinity": {"nodeAffinity": {REQUIRED: {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": NODE_PURPOSE_LABEL, "operator": "Exists"}]},
            {"matchExpressions": [zone("b")]}
        ]}}}}),
        json!({"affinity": {"nodeAffinity": {REQUIRED: {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": NODE_PURPOSE_LABEL, "operator": "Exists"}]},
            {"matchExpressions": [zone("b"), worker_req()]}
        ]}}}})
    )]
    #[case::required_keeps_preferred_terms(
        DefaultAffinity::Required,
        json!({"affinity": {"nodeAffinity": {PREFERRED: [classic_preferred()]}}}),
        json!({"affinity": {"nodeAffinity": {
            PREFERRED: [classic_preferred()],
            REQUIRED: {"nodeSelectorTerms": [{"matchExpressions": [worker_req()]}]}
        }}})
    )]
    #[case::required_on_empty_terms(
        DefaultAffinity::Required,
        json!({"affinity": {"nodeAffinity": {REQUIRED: {"nodeSelectorTerms": []}}}}),
        json!({"affinity": {"nodeAffinity": {REQUIRED: {"nodeSelectorTerms": [{"matchExpressions": [worker_req()]}]}}}})
    )]
    #[case::none_adds_nothing(DefaultAffinity::None, json!({}), json!({}))]
    #[case::none_keeps_the_users_affinity(
        DefaultAffinity::None,
        json!({"affinity": {"nodeAffinity": {PREFERRED: []}}}),
        json!({"affinity": {"nodeAffinity": {PREFERRED: []}}})
    )]
    fn worker_affinity(#[case] mode: DefaultAffinity, #[case] before: Value, #[case] after: Value) {
        let mut spec = before.clone();
        let changed = apply_default_affinity(&mut spec, "spec", DaskComponent::Worker, mode);
        assert_eq!(changed, Ok(before != after));
        assert_eq!(spec, after);
        // Idempotent: the result needs nothing more.
        assert_eq!(
            apply_default_affinity(&mut spec, "spec", DaskComponent::Worker, mode),
            Ok(false)
        );
        assert_eq!(spec, after);
    }

    #[rstest]
    #[case::preferred(
        DefaultAffinity::Preferred,
        json!({"affinity": {"nodeAffinity": {PREFERRED: [{"weight": 100, "preference": {"matchExpressions": [
            {"key": "k8s.dask.org/node-purpose", "operator": "In", "values": ["scheduler"]}
        ]}}]}}})
    )]
    #[case::required(
        DefaultAffinity::Required,
        json!({"affinity": {"nodeAffinity": {REQUIRED: {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "k8s.dask.org/node-purpose", "operator": "In", "values": ["scheduler"]}
        ]}]}}}})
    )]
    fn scheduler_affinity(#[case] mode: DefaultAffinity, #[case] after: Value) {
        let mut spec = json!({});
        let changed = apply_default_affinity(&mut spec, "spec", DaskComponent::Scheduler, mode);
        assert_eq!(changed, Ok(true));
        assert_eq!(spec, after);
    }

    #[rstest]
    #[case::preferred(DefaultAffinity::Preferred)]
    #[case::required(DefaultAffinity::Required)]
    #[case::none(DefaultAffinity::None)]
    fn a_scheduler_pod_gets_classics_pool(#[case] mode: DefaultAffinity) {
        let user_toleration = json!({"key": "gpu", "operator": "Exists"});
        let mut spec = json!({"tolerations": [user_toleration.clone()]});
        let changed = apply_dedicated_pool(&mut spec, "spec", DaskComponent::Scheduler, mode);
        assert_eq!(changed, Ok(true));
        let mut expected_affinity = json!({});
        let mut affinity_spec = json!({});
        apply_default_affinity(&mut affinity_spec, "spec", DaskComponent::Scheduler, mode)
            .expect("affinity");
        if let Some(affinity) = affinity_spec.get("affinity") {
            expected_affinity = affinity.clone();
        }
        assert_eq!(
            spec.get("affinity").cloned().unwrap_or(json!({})),
            expected_affinity
        );
        assert_eq!(
            spec["tolerations"],
            json!([
                user_toleration,
                {"key": "k8s.dask.org/dedicated", "operator": "Equal", "value": "scheduler", "effect": "NoSchedule"},
                {"key": "k8s.dask.org_dedicated", "operator": "Equal", "value": "scheduler", "effect": "NoSchedule"}
            ])
        );
        let again = spec.clone();
        assert_eq!(
            apply_dedicated_pool(&mut spec, "spec", DaskComponent::Scheduler, mode),
            Ok(false)
        );
        assert_eq!(spec, again);
    }

    #[test]
    fn scheduler_tolerations_are_classics() {
        let tolerations = serde_json::to_value(DaskComponent::Scheduler.dedicated_tolerations())
            .expect("serialize");
        assert_eq!(
            tolerations,
            json!([
                {"key": "k8s.dask.org/dedicated", "operator": "Equal", "value": "scheduler", "effect": "NoSchedule"},
                {"key": "k8s.dask.org_dedicated", "operator": "Equal", "value": "scheduler", "effect": "NoSchedule"}
            ])
        );
        assert_eq!(
            DaskComponent::Worker.dedicated_tolerations(),
            Toleration::dask_worker_defaults()
        );
    }

    #[rstest]
    #[case::not_an_object(DefaultAffinity::Preferred, json!([]), "spec must be an object")]
    #[case::affinity_a_string(DefaultAffinity::Preferred, json!({"affinity": "x"}), "spec.affinity must be an object")]
    #[case::node_affinity_an_array(
        DefaultAffinity::Required,
        json!({"affinity": {"nodeAffinity": []}}),
        "spec.affinity.nodeAffinity must be an object"
    )]
    #[case::preferred_an_object(
        DefaultAffinity::Preferred,
        json!({"affinity": {"nodeAffinity": {PREFERRED: {}}}}),
        "spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution must be an array"
    )]
    #[case::preference_a_string(
        DefaultAffinity::Preferred,
        json!({"affinity": {"nodeAffinity": {PREFERRED: [{"weight": 1, "preference": "x"}]}}}),
        "spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].preference must be an object"
    )]
    #[case::preferred_term_a_number(
        DefaultAffinity::Preferred,
        json!({"affinity": {"nodeAffinity": {PREFERRED: [1]}}}),
        "spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[0] must be an object"
    )]
    #[case::expressions_an_object(
        DefaultAffinity::Preferred,
        json!({"affinity": {"nodeAffinity": {PREFERRED: [{"preference": {"matchExpressions": {}}}]}}}),
        "spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].preference.matchExpressions must be an array"
    )]
    #[case::terms_an_object(
        DefaultAffinity::Required,
        json!({"affinity": {"nodeAffinity": {REQUIRED: {"nodeSelectorTerms": {}}}}}),
        "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms must be an array"
    )]
    #[case::term_a_string(
        DefaultAffinity::Required,
        json!({"affinity": {"nodeAffinity": {REQUIRED: {"nodeSelectorTerms": ["x"]}}}}),
        "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0] must be an object"
    )]
    #[case::required_expressions_a_string(
        DefaultAffinity::Required,
        json!({"affinity": {"nodeAffinity": {REQUIRED: {"nodeSelectorTerms": [{"matchExpressions": "x"}]}}}}),
        "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions must be an array"
    )]
    fn malformed_affinity_is_refused_naming_the_field(
        #[case] mode: DefaultAffinity,
        #[case] mut spec: Value,
        #[case] message: &str,
    ) {
        let error = apply_default_affinity(&mut spec, "spec", DaskComponent::Worker, mode)
            .expect_err("malformed");
        assert_eq!(error.to_string(), message);
    }

    #[rstest]
    #[case::preferred("preferred", Ok(DefaultAffinity::Preferred))]
    #[case::required("required", Ok(DefaultAffinity::Required))]
    #[case::none("none", Ok(DefaultAffinity::None))]
    #[case::capitalised("Preferred", Err(UnknownAffinityMode("Preferred".into())))]
    #[case::empty("", Err(UnknownAffinityMode(String::new())))]
    fn modes_parse_as_classic_spells_them(
        #[case] text: &str,
        #[case] expected: Result<DefaultAffinity, UnknownAffinityMode>,
    ) {
        assert_eq!(text.parse::<DefaultAffinity>(), expected);
        if let Ok(mode) = expected {
            assert_eq!(mode.to_string(), text);
            assert_eq!(serde_json::to_value(mode).expect("serialize"), json!(text));
            assert_eq!(
                serde_json::from_value::<DefaultAffinity>(json!(text)).expect("deserialize"),
                mode
            );
        }
    }

    #[test]
    fn an_unknown_mode_names_the_choices() {
        let error = "soft".parse::<DefaultAffinity>().expect_err("unknown");
        assert_eq!(
            error.to_string(),
            "unknown affinity mode \"soft\": must be \"preferred\", \"required\" or \"none\""
        );
    }
}
