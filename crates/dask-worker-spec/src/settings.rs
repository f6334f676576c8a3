//! What the defaults are: the settings of the policy, and the options dask-kube applies
//! client-side, in one type so both give a pod exactly the same defaults.

use crate::affinity::DefaultAffinity;
use crate::quantity::{format_k8s_memory, parse_k8s_memory};
use crate::selector::LabelSelector;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Default seconds a worker waits for a vanished scheduler before it exits.
pub const DEFAULT_DEATH_TIMEOUT_SECONDS: u64 = 60;
/// Longest death timeout we accept: beyond a day a lost worker pod is effectively orphaned.
pub const MAX_DEATH_TIMEOUT_SECONDS: u64 = 86_400;

/// Default `memoryHeadroom`: memory a worker container needs beyond its workers'
/// `--memory-limit`s. Measured with distributed 2026.8.0 on Python 3.11: the `dask worker`
/// process that hosts the nannies holds 61 MB (the same with `--nworkers 1` or `2`, idle or
/// after a spilling computation) and multiprocessing's resource tracker 12 MB, so 73 MB of
/// the container is never inside any worker's limit. 256 MiB is 3.5 times that: room for
/// images that load more into the parent process and for a worker's overshoot between the
/// nanny's memory checks (every 100 ms), at 4% of the README's 6 GB worker.
pub const DEFAULT_MEMORY_HEADROOM_BYTES: u64 = 256 << 20;
/// Largest `memoryHeadroom` accepted (1 PiB), so sizes stay far from overflow.
pub const MAX_MEMORY_HEADROOM_BYTES: u64 = 1 << 50;

/// Taint key Dask's node pools use.
pub const DEDICATED_TAINT_KEY: &str = "k8s.dask.org/dedicated";
/// The same key for GKE, which forbids `/` in node-pool taint keys.
pub const DEDICATED_TAINT_KEY_GKE: &str = "k8s.dask.org_dedicated";

/// A pod toleration, as in the Kubernetes API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Toleration {
    /// Taint key; empty with `Exists` tolerates everything.
    #[serde(default)]
    pub key: String,
    /// `Equal` (default) or `Exists`.
    #[serde(default = "equal")]
    pub operator: String,
    /// Taint value (empty for `Exists`).
    #[serde(default)]
    pub value: String,
    /// `NoSchedule`, `PreferNoSchedule`, `NoExecute`, or empty for all.
    #[serde(default)]
    pub effect: String,
    /// For `NoExecute`: how long the pod stays after the taint appears.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toleration_seconds: Option<i64>,
}

fn equal() -> String {
    "Equal".to_owned()
}

impl Toleration {
    /// `key=value:effect` with operator `Equal`.
    pub fn equal(key: &str, value: &str, effect: &str) -> Self {
        Toleration {
            key: key.to_owned(),
            operator: equal(),
            value: value.to_owned(),
            effect: effect.to_owned(),
            toleration_seconds: None,
        }
    }

    /// The two tolerations dask-kubernetes always adds for dedicated worker node pools.
    pub fn dask_worker_defaults() -> Vec<Toleration> {
        vec![
            Toleration::equal(DEDICATED_TAINT_KEY, "worker", "NoSchedule"),
            Toleration::equal(DEDICATED_TAINT_KEY_GKE, "worker", "NoSchedule"),
        ]
    }
}

/// A Kubernetes memory quantity in settings (`"256Mi"`, `"0"`, or a number of bytes),
/// exact to the byte; it serializes back in the shortest exact unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "QuantityText", into = "String")]
pub struct MemoryQuantity(u64);

impl MemoryQuantity {
    /// A quantity of `bytes` bytes.
    pub const fn from_bytes(bytes: u64) -> Self {
        MemoryQuantity(bytes)
    }

    /// The byte count.
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

impl fmt::Display for MemoryQuantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_k8s_memory(self.0))
    }
}

impl From<MemoryQuantity> for String {
    fn from(q: MemoryQuantity) -> String {
        q.to_string()
    }
}

/// A quantity as YAML/JSON may carry it: a string, or a plain number of bytes.
#[derive(Deserialize)]
#[serde(untagged)]
enum QuantityText {
    Text(String),
    Bytes(u64),
}

impl TryFrom<QuantityText> for MemoryQuantity {
    type Error = String;

    fn try_from(value: QuantityText) -> Result<Self, Self::Error> {
        match value {
            QuantityText::Bytes(b) => Ok(MemoryQuantity(b)),
            QuantityText::Text(text) => parse_k8s_memory(&text)
                .map(MemoryQuantity)
                .map_err(|e| format!("{e} (a Kubernetes memory quantity such as 256Mi)")),
        }
    }
}

/// What to do when a worker's flags and its container resources disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OnMismatch {
    /// Refuse the object and say how to fix it (a silent choice could OOM-kill workers or
    /// waste the node).
    #[default]
    Reject,
    /// Trust the container resources: rewrite the flags from them.
    UseResources,
    /// Trust the flags: rewrite the container resources from them.
    UseFlags,
}

/// The defaults given to Dask worker pods. Serialized camelCase; this is the policy's
/// settings document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct WorkerDefaults {
    /// A pod is a Dask worker pod when its labels match any of these selectors.
    pub worker_selectors: Vec<LabelSelector>,
    /// Tolerations every worker pod carries exactly once.
    pub tolerations: Vec<Toleration>,
    /// `--death-timeout` (seconds) added to workers that have none.
    pub death_timeout: u64,
    /// Set missing requests equal to the limits (Guaranteed QoS: a worker is not the first
    /// thing the kubelet evicts under memory pressure).
    pub requests_equal_limits: bool,
    /// Disagreement between flags and resources.
    pub on_mismatch: OnMismatch,
    /// Name workers after their pod (`--name $(DASK_WORKER_NAME)` from the downward API),
    /// so a pod can be mapped to its worker for graceful retirement.
    pub worker_name_from_pod: bool,
    /// Memory the container needs beyond its workers' `--memory-limit`s (the `dask worker`
    /// process hosting the nannies, multiprocessing's resource tracker, overshoot between
    /// the nanny's checks), once per container. Where the policy derives a side, the
    /// container's memory is `--memory-limit x --nworkers + memoryHeadroom`, so the workers'
    /// own thresholds (spill, pause, terminate at 95%) act before the kernel's OOM killer.
    pub memory_headroom: MemoryQuantity,
    /// The node affinity that keeps worker pods on a dedicated Dask worker pool (nodes
    /// labelled `k8s.dask.org/node-purpose=worker`), as classic dask-kubernetes'
    /// `apply_default_affinity`: `preferred` (its default), `required` or `none`.
    pub apply_default_affinity: DefaultAffinity,
}

impl Default for WorkerDefaults {
    fn default() -> Self {
        WorkerDefaults {
            worker_selectors: default_selectors(),
            tolerations: Toleration::dask_worker_defaults(),
            death_timeout: DEFAULT_DEATH_TIMEOUT_SECONDS,
            requests_equal_limits: true,
            on_mismatch: OnMismatch::Reject,
            worker_name_from_pod: true,
            memory_headroom: MemoryQuantity(DEFAULT_MEMORY_HEADROOM_BYTES),
            apply_default_affinity: DefaultAffinity::Preferred,
        }
    }
}

/// `dask.org/component=worker` (dask-kubernetes' operator and dask-kube) and the classic
/// `app=dask,component=dask-worker`.
fn default_selectors() -> Vec<LabelSelector> {
    vec![
        LabelSelector::from_valid_equalities(
            "dask.org/component=worker",
            &[("dask.org/component", "worker")],
        ),
        LabelSelector::from_valid_equalities(
            "app=dask,component=dask-worker",
            &[("app", "dask"), ("component", "dask-worker")],
        ),
    ]
}

/// An invalid setting, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SettingsError {
    /// The camelCase path of the field (`tolerations[1].effect`).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl WorkerDefaults {
    /// Reads settings from JSON; errors name the field (`deathTimeout: invalid type ...`).
    pub fn from_json(json: &[u8]) -> Result<Self, SettingsError> {
        if json.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(SettingsError {
                field: "settings".into(),
                reason: "must be a JSON object".into(),
            });
        }
        let deserializer = &mut serde_json::Deserializer::from_slice(json);
        let settings: WorkerDefaults =
            serde_path_to_error::deserialize(deserializer).map_err(|e| SettingsError {
                field: match e.path().to_string() {
                    p if p == "." => "settings".to_owned(),
                    p => p,
                },
                reason: e.inner().to_string(),
            })?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks values serde cannot: ranges, toleration operators and effects.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let fail = |field: String, reason: String| Err(SettingsError { field, reason });
        if self.worker_selectors.is_empty() {
            return fail(
                "workerSelectors".into(),
                "must list at least one selector, or no pod is a worker pod".into(),
            );
        }
        if self.death_timeout == 0 || self.death_timeout > MAX_DEATH_TIMEOUT_SECONDS {
            return fail(
                "deathTimeout".into(),
                format!(
                    "must be between 1 and {MAX_DEATH_TIMEOUT_SECONDS} seconds, got {}",
                    self.death_timeout
                ),
            );
        }
        if self.memory_headroom.bytes() > MAX_MEMORY_HEADROOM_BYTES {
            return fail(
                "memoryHeadroom".into(),
                format!(
                    "must be at most {}, got {}",
                    format_k8s_memory(MAX_MEMORY_HEADROOM_BYTES),
                    self.memory_headroom
                ),
            );
        }
        for (i, t) in self.tolerations.iter().enumerate() {
            let field = |name: &str| format!("tolerations[{i}].{name}");
            match t.operator.as_str() {
                "Equal" if t.key.is_empty() => {
                    return fail(field("key"), "must be set when operator is Equal".into());
                }
                "Exists" if !t.value.is_empty() => {
                    return fail(
                        field("value"),
                        "must be empty when operator is Exists".into(),
                    );
                }
                "Equal" | "Exists" => {}
                other => {
                    return fail(
                        field("operator"),
                        format!("must be Equal or Exists, got {other:?}"),
                    );
                }
            }
            if !t.key.is_empty()
                && let Err(reason) = crate::selector::validate_label_key(&t.key)
            {
                return fail(field("key"), format!("{:?} {reason}", t.key));
            }
            if !matches!(
                t.effect.as_str(),
                "" | "NoSchedule" | "PreferNoSchedule" | "NoExecute"
            ) {
                return fail(
                    field("effect"),
                    format!(
                        "must be NoSchedule, PreferNoSchedule, NoExecute or empty, got {:?}",
                        t.effect
                    ),
                );
            }
            if t.toleration_seconds.is_some() && t.effect != "NoExecute" {
                return fail(
                    field("tolerationSeconds"),
                    "is only meaningful with effect NoExecute".into(),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[test]
    fn empty_document_gives_defaults() {
        assert_eq!(
            WorkerDefaults::from_json(b"{}"),
            Ok(WorkerDefaults::default())
        );
    }

    #[test]
    fn default_selectors_are_what_their_text_parses_to() {
        let parsed: Vec<LabelSelector> = [
            "dask.org/component=worker",
            "app=dask,component=dask-worker",
        ]
        .iter()
        .map(|s| s.parse().expect("valid"))
        .collect();
        assert_eq!(default_selectors(), parsed);
    }

    #[test]
    fn defaults_serialize_camel_case() {
        let json = serde_json::to_value(WorkerDefaults::default()).expect("serialize");
        assert_eq!(
            json,
            serde_json::json!({
                "workerSelectors": ["dask.org/component=worker", "app=dask,component=dask-worker"],
                "tolerations": [
                    {"key": "k8s.dask.org/dedicated", "operator": "Equal", "value": "worker", "effect": "NoSchedule"},
                    {"key": "k8s.dask.org_dedicated", "operator": "Equal", "value": "worker", "effect": "NoSchedule"}
                ],
                "deathTimeout": 60,
                "requestsEqualLimits": true,
                "onMismatch": "reject",
                "workerNameFromPod": true,
                "memoryHeadroom": "256Mi",
                "applyDefaultAffinity": "preferred"
            })
        );
    }

    #[rstest]
    #[case::use_resources(r#"{"onMismatch": "useResources"}"#)]
    #[case::use_flags(r#"{"onMismatch": "useFlags", "deathTimeout": 120}"#)]
    #[case::no_tolerations(r#"{"tolerations": []}"#)]
    #[case::exists_toleration(r#"{"tolerations": [{"operator": "Exists"}]}"#)]
    #[case::custom_selector(r#"{"workerSelectors": ["team=ml,role=dask-worker"]}"#)]
    #[case::headroom_quantity(r#"{"memoryHeadroom": "512Mi"}"#)]
    #[case::headroom_zero(r#"{"memoryHeadroom": 0}"#)]
    #[case::headroom_bytes_string(r#"{"memoryHeadroom": "300000000"}"#)]
    #[case::affinity_required(r#"{"applyDefaultAffinity": "required"}"#)]
    #[case::affinity_none(r#"{"applyDefaultAffinity": "none"}"#)]
    #[case::no_execute_seconds(r#"{"tolerations": [{"key": "a", "value": "b", "effect": "NoExecute", "tolerationSeconds": 30}]}"#)]
    fn accepts(#[case] json: &str) {
        assert!(WorkerDefaults::from_json(json.as_bytes()).is_ok(), "{json}");
    }

    #[rstest]
    #[case::unknown_field(
        r#"{"deathTimeOut": 60}"#,
        "deathTimeOut",
        "unknown field `deathTimeOut`"
    )]
    #[case::bad_mismatch_mode(
        r#"{"onMismatch": "bogus"}"#,
        "onMismatch",
        "unknown variant `bogus`"
    )]
    #[case::affinity_unknown(
        r#"{"applyDefaultAffinity": "soft"}"#,
        "applyDefaultAffinity",
        "unknown affinity mode \"soft\": must be \"preferred\", \"required\" or \"none\""
    )]
    #[case::affinity_capitalised(
        r#"{"applyDefaultAffinity": "Required"}"#,
        "applyDefaultAffinity",
        "unknown affinity mode \"Required\""
    )]
    #[case::affinity_bool(
        r#"{"applyDefaultAffinity": true}"#,
        "applyDefaultAffinity",
        "invalid type: boolean `true`, expected a string"
    )]
    #[case::death_timeout_string(r#"{"deathTimeout": "60s"}"#, "deathTimeout", "invalid type")]
    #[case::death_timeout_zero(r#"{"deathTimeout": 0}"#, "deathTimeout", "between 1 and 86400")]
    #[case::death_timeout_huge(
        r#"{"deathTimeout": 100000}"#,
        "deathTimeout",
        "between 1 and 86400"
    )]
    #[case::bad_selector(
        r#"{"workerSelectors": ["app=dask", "da$k=x"]}"#,
        "workerSelectors[1]",
        "invalid label selector"
    )]
    #[case::no_selectors(r#"{"workerSelectors": []}"#, "workerSelectors", "at least one")]
    #[case::bad_effect(
        r#"{"tolerations": [{"key": "a", "value": "b", "effect": "NoWay"}]}"#,
        "tolerations[0].effect",
        "NoSchedule"
    )]
    #[case::bad_operator(
        r#"{"tolerations": [{"key": "a", "operator": "In"}]}"#,
        "tolerations[0].operator",
        "Equal or Exists"
    )]
    #[case::equal_without_key(
        r#"{"tolerations": [{"value": "b"}]}"#,
        "tolerations[0].key",
        "must be set"
    )]
    #[case::exists_with_value(
        r#"{"tolerations": [{"key": "a", "operator": "Exists", "value": "b"}]}"#,
        "tolerations[0].value",
        "must be empty"
    )]
    #[case::unknown_toleration_field(
        r#"{"tolerations": [{"key": "a", "values": "b"}]}"#,
        "tolerations[0].values",
        "unknown field `values`"
    )]
    #[case::not_an_object(r#"[1, 2]"#, "settings", "must be a JSON object")]
    #[case::headroom_dask_unit(
        r#"{"memoryHeadroom": "256MB"}"#,
        "memoryHeadroom",
        "unknown unit \"MB\""
    )]
    #[case::headroom_fraction_of_a_byte(
        r#"{"memoryHeadroom": "500m"}"#,
        "memoryHeadroom",
        "not a whole number of bytes"
    )]
    #[case::headroom_negative(r#"{"memoryHeadroom": -1}"#, "memoryHeadroom", "")]
    #[case::headroom_huge(r#"{"memoryHeadroom": "2Pi"}"#, "memoryHeadroom", "at most 1Pi")]
    fn rejects_naming_the_field(#[case] json: &str, #[case] field: &str, #[case] reason: &str) {
        let error = WorkerDefaults::from_json(json.as_bytes()).expect_err(json);
        assert_eq!(error.field, field, "{error}");
        assert!(error.reason.contains(reason), "{error}");
    }
}
