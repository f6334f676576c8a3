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
    true
}

#[cfg(test)]
mod tests {
    use super::*;

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
