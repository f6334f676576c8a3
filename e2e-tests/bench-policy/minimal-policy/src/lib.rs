//! The floor `make bench-policy` compares `dask-worker-defaults` with: a minimal Kubewarden
//! mutating policy written the way Kubewarden's SDK documents one. It parses the request with
//! the SDK's `ValidationRequest`, adds one toleration to the object's pod spec and returns the
//! object with `mutate_request`: the least any mutating policy does on the same request, so
//! the policy's time above this floor is what its own decisions cost.
//!
//! Not a default workspace member and not for deployment: `make bench-policy` builds it for
//! `wasm32-wasip1` with the policy's release profile.

use kubewarden_policy_sdk::request::ValidationRequest;
use kubewarden_policy_sdk::settings::Validatable;
use kubewarden_policy_sdk::{accept_request, mutate_request, protocol_version_guest};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use wapc_guest::prelude::*;

/// No settings; an empty object (or none) is valid.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {}

impl Validatable for Settings {
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Registers the waPC functions the Kubewarden host calls.
#[allow(unsafe_code)] // the waPC ABI requires an unmangled export
#[unsafe(no_mangle)]
pub extern "C" fn wapc_init() {
    register_function("validate", validate);
    register_function("validate_settings", validate_settings);
    register_function("protocol_version", protocol_version_guest);
}

fn validate_settings(payload: &[u8]) -> CallResult {
    kubewarden_policy_sdk::validate_settings::<Settings>(payload)
}

/// `validate`: the object with one more toleration, or accepted as it is when it has no
/// pod spec (a DELETE's null object).
pub fn validate(payload: &[u8]) -> CallResult {
    let request: ValidationRequest<Settings> = ValidationRequest::new(payload)?;
    let mut object = request.request.object;
    if add_toleration(&mut object) {
        mutate_request(object)
    } else {
        accept_request()
    }
}

/// Appends `k8s.dask.org/dedicated=worker:NoSchedule` to `spec.tolerations`; false when the
/// object has no `spec` object.
fn add_toleration(object: &mut Value) -> bool {
    let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) else {
        return false;
    };
    let toleration = json!({
        "key": "k8s.dask.org/dedicated",
        "operator": "Equal",
        "value": "worker",
        "effect": "NoSchedule",
    });
    match spec.get_mut("tolerations").and_then(Value::as_array_mut) {
        Some(tolerations) => tolerations.push(toleration),
        None => {
            spec.insert("tolerations".into(), json!([toleration]));
        }
    }
    #[cfg(feature = "policy-output")]
    add_the_rest_of_the_policy_output(spec);
    true
}

/// With `policy-output`: the rest of what the policy adds to the README pod, as fixed JSON,
/// with no decision made: the second toleration, the preferred affinity to the Dask pool,
/// and the worker's name from its pod (`--name $(DASK_WORKER_NAME)`, and the env it reads).
/// The host's part of a mutation (the response parsed, diffed against the request, the
/// patch written) grows with the mutation; this floor pays it for the policy's whole
/// mutation, so the policy's time above it is what its decisions cost.
#[cfg(feature = "policy-output")]
fn add_the_rest_of_the_policy_output(spec: &mut serde_json::Map<String, Value>) {
    if let Some(tolerations) = spec.get_mut("tolerations").and_then(Value::as_array_mut) {
        tolerations.push(json!({
            "key": "k8s.dask.org_dedicated",
            "operator": "Equal",
            "value": "worker",
            "effect": "NoSchedule",
        }));
    }
    spec.insert(
        "affinity".into(),
        json!({"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
            "weight": 100,
            "preference": {"matchExpressions": [
                {"key": "k8s.dask.org/node-purpose", "operator": "In", "values": ["worker"]}
            ]},
        }]}}),
    );
    let container = spec
        .get_mut("containers")
        .and_then(|c| c.get_mut(0))
        .and_then(Value::as_object_mut);
    if let Some(container) = container {
        if let Some(args) = container.get_mut("args").and_then(Value::as_array_mut) {
            args.extend([json!("--name"), json!("$(DASK_WORKER_NAME)")]);
        }
        container.insert(
            "env".into(),
            json!([{"name": "DASK_WORKER_NAME",
                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(not(feature = "policy-output"))]
    #[test]
    fn adds_one_toleration_to_the_pod() {
        let payload = json!({
            "request": {"uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                        "operation": "CREATE",
                        "object": {"spec": {"tolerations": [{"key": "a", "operator": "Exists"}]}}},
            "settings": {}
        });
        let response = validate(&serde_json::to_vec(&payload).unwrap()).unwrap();
        let response: Value = serde_json::from_slice(&response).unwrap();
        assert_eq!(response["accepted"], true);
        let tolerations = &response["mutated_object"]["spec"]["tolerations"];
        assert_eq!(tolerations.as_array().map(Vec::len), Some(2), "{response}");
        assert_eq!(tolerations[1]["key"], "k8s.dask.org/dedicated");
    }

    /// The `policy-output` floor makes exactly the policy's mutation of the README pod (its
    /// expected patch, the fixture the policy's own tests check): a floor whose output drifted
    /// from the policy's would compare different work.
    #[cfg(feature = "policy-output")]
    #[test]
    fn the_policy_output_floor_makes_the_policys_mutation_of_the_readme_pod() {
        let fixtures = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../tests/fixtures/readme-worker-spec"
        );
        let read = |file: &str| -> Value {
            serde_json::from_str(&std::fs::read_to_string(format!("{fixtures}/{file}")).unwrap())
                .unwrap()
        };
        let request = read("request.json");
        let expected = read("expected.json");
        let mut wanted = request["request"]["object"].clone();
        let patch: json_patch::Patch = serde_json::from_value(expected["patch"].clone()).unwrap();
        json_patch::patch(&mut wanted, &patch).unwrap();
        let payload = json!({"request": request["request"], "settings": {}});
        let response = validate(&serde_json::to_vec(&payload).unwrap()).unwrap();
        let response: Value = serde_json::from_slice(&response).unwrap();
        assert_eq!(response["mutated_object"], wanted);
    }

    #[test]
    fn a_null_object_is_accepted_unchanged() {
        let payload = json!({
            "request": {"uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                        "operation": "DELETE", "object": null},
            "settings": {}
        });
        let response = validate(&serde_json::to_vec(&payload).unwrap()).unwrap();
        let response: Value = serde_json::from_slice(&response).unwrap();
        assert_eq!(response["accepted"], true);
        assert!(response["mutated_object"].is_null(), "{response}");
    }
}
