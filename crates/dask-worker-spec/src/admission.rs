//! Which objects carry Dask worker pod specs, where, and under which rules.
//!
//! This is the whole decision of the admission policy as a pure function, so the
//! policy's wasm entry point stays a thin shell and the same code runs natively in
//! tests and benchmarks.

use crate::defaults::{Defaulted, PodSpecRules, RestartPolicyRule, apply_worker_defaults};
use crate::settings::WorkerDefaults;
use crate::{Error, Result};
use serde_json::Value;

/// API group of the dask-kubernetes operator's resources.
pub const DASK_OPERATOR_GROUP: &str = "kubernetes.dask.org";

/// Where an object keeps its pod template and how to treat it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemplateLocation {
    /// API group (`""` for core).
    pub group: &'static str,
    /// Kind.
    pub kind: &'static str,
    /// Operations that are defaulted; others are accepted untouched.
    pub operations: &'static [&'static str],
    /// JSON path of the pod spec.
    pub spec_path: &'static [&'static str],
    /// JSON path of the pod labels; `None` when the spec is a worker spec by definition.
    pub labels_path: Option<&'static [&'static str]>,
    /// How to treat the spec.
    pub rules: PodSpecRules,
}

const NEVER_NAMED: PodSpecRules = PodSpecRules {
    restart_policy: RestartPolicyRule::Never,
    name_workers_after_pod: true,
};
const KEEP_NAMED: PodSpecRules = PodSpecRules {
    restart_policy: RestartPolicyRule::Keep,
    name_workers_after_pod: true,
};
/// The operator names workers itself (it sets `DASK_WORKER_NAME`) and runs them in
/// Deployments, which only allow `restartPolicy: Always`.
const OPERATOR: PodSpecRules = PodSpecRules {
    restart_policy: RestartPolicyRule::Keep,
    name_workers_after_pod: false,
};

const CREATE: &[&str] = &["CREATE"];
const CREATE_UPDATE: &[&str] = &["CREATE", "UPDATE"];
const TEMPLATE_SPEC: &[&str] = &["spec", "template", "spec"];
const TEMPLATE_LABELS: &[&str] = &["spec", "template", "metadata", "labels"];

/// Every kind the policy handles. Pod specs are immutable after creation, and so is a
/// Job's template, so those are defaulted on CREATE only; patching them on UPDATE would
/// make every unrelated update fail.
pub const TEMPLATE_LOCATIONS: &[TemplateLocation] = &[
    TemplateLocation {
        group: "",
        kind: "Pod",
        operations: CREATE,
        spec_path: &["spec"],
        labels_path: Some(&["metadata", "labels"]),
        rules: NEVER_NAMED,
    },
    TemplateLocation {
        group: "apps",
        kind: "Deployment",
        operations: CREATE_UPDATE,
        spec_path: TEMPLATE_SPEC,
        labels_path: Some(TEMPLATE_LABELS),
        rules: KEEP_NAMED,
    },
    TemplateLocation {
        group: "apps",
        kind: "ReplicaSet",
        operations: CREATE_UPDATE,
        spec_path: TEMPLATE_SPEC,
        labels_path: Some(TEMPLATE_LABELS),
        rules: KEEP_NAMED,
    },
    TemplateLocation {
        group: "apps",
        kind: "StatefulSet",
        operations: CREATE_UPDATE,
        spec_path: TEMPLATE_SPEC,
        labels_path: Some(TEMPLATE_LABELS),
        rules: KEEP_NAMED,
    },
    TemplateLocation {
        group: "apps",
        kind: "DaemonSet",
        operations: CREATE_UPDATE,
        spec_path: TEMPLATE_SPEC,
        labels_path: Some(TEMPLATE_LABELS),
        rules: KEEP_NAMED,
    },
    TemplateLocation {
        group: "batch",
        kind: "Job",
        operations: CREATE,
        spec_path: TEMPLATE_SPEC,
        labels_path: Some(TEMPLATE_LABELS),
        rules: NEVER_NAMED,
    },
    TemplateLocation {
        group: "batch",
        kind: "CronJob",
        operations: CREATE_UPDATE,
        spec_path: &["spec", "jobTemplate", "spec", "template", "spec"],
        labels_path: Some(&[
            "spec",
            "jobTemplate",
            "spec",
            "template",
            "metadata",
            "labels",
        ]),
        rules: NEVER_NAMED,
    },
    TemplateLocation {
        group: DASK_OPERATOR_GROUP,
        kind: "DaskCluster",
        operations: CREATE_UPDATE,
        spec_path: &["spec", "worker", "spec"],
        labels_path: None,
        rules: OPERATOR,
    },
    TemplateLocation {
        group: DASK_OPERATOR_GROUP,
        kind: "DaskWorkerGroup",
        operations: CREATE_UPDATE,
        spec_path: &["spec", "worker", "spec"],
        labels_path: None,
        rules: OPERATOR,
    },
];

/// Controllers whose pods must keep `restartPolicy: Always`.
const ALWAYS_RESTARTING_OWNERS: [&str; 3] = ["ReplicaSet", "StatefulSet", "DaemonSet"];

/// The outcome for one admission object.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ObjectDefaults {
    /// The defaulted object, only when something changed.
    pub mutated: Option<Value>,
    /// Warnings to return to the client.
    pub warnings: Vec<String>,
}

fn get<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(key))
}

fn get_mut<'a>(value: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    path.iter().try_fold(value, |v, key| v.get_mut(key))
}

/// Defaults an admission request's object: `group`/`kind` from `request.kind`,
/// `operation` as in the request (`CREATE`, `UPDATE`, ...).
///
/// Kinds that are not handled, other operations and null objects are accepted as they
/// are. Malformed worker objects are refused with a message saying what is wrong. The
/// object is taken by value, edited in place and returned only when something changed,
/// so the policy copies nothing on its hot path.
///
/// # Example
/// ```
/// use dask_worker_spec::{default_object, WorkerDefaults};
/// let pod = serde_json::json!({
///   "metadata": {"labels": {"app": "web"}},
///   "spec": {"containers": [{"name": "web", "image": "nginx"}]}
/// });
/// let out = default_object("", "Pod", "CREATE", pod, &WorkerDefaults::default()).unwrap();
/// assert!(out.mutated.is_none()); // not a Dask worker pod
/// ```
pub fn default_object(
    group: &str,
    kind: &str,
    operation: &str,
    mut object: Value,
    settings: &WorkerDefaults,
) -> Result<ObjectDefaults> {
    let Some(location) = TEMPLATE_LOCATIONS
        .iter()
        .find(|l| l.group == group && l.kind == kind)
        .filter(|l| l.operations.contains(&operation) && !object.is_null())
    else {
        return Ok(ObjectDefaults::default());
    };
    if !object.is_object() {
        return Err(Error::malformed("object", "must be a JSON object"));
    }
    if let Some(labels_path) = location.labels_path {
        let labels = match get(&object, labels_path) {
            None | Some(Value::Null) => None,
            Some(Value::Object(labels)) => Some(labels),
            Some(_) => {
                return Err(Error::malformed(labels_path.join("."), "must be an object"));
            }
        };
        if !settings.worker_selectors.iter().any(|s| s.matches(labels)) {
            return Ok(ObjectDefaults::default());
        }
    }
    let mut rules = location.rules;
    if kind == "Pod" && group.is_empty() && owned_by_always_restarting_controller(&object) {
        rules.restart_policy = RestartPolicyRule::Keep;
    }
    let spec_path = location.spec_path.join(".");
    let Some(spec) = get_mut(&mut object, location.spec_path) else {
        return Err(Error::malformed(spec_path, "is missing"));
    };
    let Defaulted { changed, warnings } = apply_worker_defaults(spec, &spec_path, rules, settings)?;
    Ok(ObjectDefaults {
        mutated: changed.then_some(object),
        warnings,
    })
}

fn owned_by_always_restarting_controller(pod: &Value) -> bool {
    get(pod, &["metadata", "ownerReferences"])
        .and_then(Value::as_array)
        .is_some_and(|owners| {
            owners.iter().any(|o| {
                o.get("controller").and_then(Value::as_bool) == Some(true)
                    && o.get("kind")
                        .and_then(Value::as_str)
                        .is_some_and(|k| ALWAYS_RESTARTING_OWNERS.contains(&k))
            })
        })
}
