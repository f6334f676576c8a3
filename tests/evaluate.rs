//! The policy's entry point answers every payload: arbitrary bytes and arbitrary JSON
//! requests get a response (accept or a rejection with a message), never a panic, which
//! in the wasm module would be a trap and an HTTP 500 for every pod in the cluster.

use dask_worker_defaults::{evaluate, validate_payload};
use proptest::prelude::*;
use serde_json::{Value, json};

fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "\\PC{0,10}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{1,8}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_get_a_response(payload in prop::collection::vec(any::<u8>(), 0..256)) {
        // The waPC answer is a serialized ValidationResponse: a JSON object whose
        // `accepted` is a bool, with a message when it refuses. Bytes that are not even
        // JSON are refused as an invalid request, never accepted and never a trap.
        let bytes = validate_payload(&payload).map_err(TestCaseError::fail)?;
        let response: Value = serde_json::from_slice(&bytes)
            .map_err(|e| TestCaseError::fail(format!("response is not JSON: {e}")))?;
        let accepted = response["accepted"].as_bool();
        prop_assert!(accepted.is_some(), "no accepted flag: {response}");
        if accepted == Some(false) {
            let message = response["message"].as_str().unwrap_or_default();
            prop_assert!(!message.is_empty(), "a rejection says why: {response}");
        }
        if serde_json::from_slice::<Value>(&payload).is_err() {
            prop_assert_eq!(accepted, Some(false));
            prop_assert!(
                response["message"].as_str().unwrap_or_default().starts_with("invalid admission request:"),
                "{}", response
            );
        }
    }

    #[test]
    fn arbitrary_requests_get_a_response(
        object in arbitrary_json(),
        settings in prop_oneof![Just(Value::Null), Just(json!({})), arbitrary_json()],
        kind in prop::sample::select(vec!["Pod", "Deployment", "Job", "CronJob", "DaskWorkerGroup", "Secret"]),
        operation in prop::sample::select(vec!["CREATE", "UPDATE", "DELETE", "CONNECT", ""]),
    ) {
        let group = match kind {
            "Deployment" => "apps",
            "Job" | "CronJob" => "batch",
            "DaskWorkerGroup" => "kubernetes.dask.org",
            _ => "",
        };
        let payload = json!({
            "request": {"uid": "u", "kind": {"group": group, "version": "v1", "kind": kind},
                        "operation": operation, "object": object},
            "settings": settings,
        });
        let response = evaluate(&serde_json::to_vec(&payload).expect("json"));
        if !response.accepted {
            prop_assert!(response.message.is_some_and(|m| !m.is_empty()), "a rejection says why");
        }
    }
}

#[test]
fn a_payload_that_is_not_json_is_rejected_with_a_message() {
    let response = evaluate(b"{not json");
    assert!(!response.accepted);
    assert!(
        response
            .message
            .unwrap_or_default()
            .starts_with("invalid admission request:")
    );
}

#[test]
fn invalid_settings_at_evaluation_are_rejected_naming_the_field() {
    let payload = json!({"request": {"uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                                     "operation": "CREATE", "object": {}},
                         "settings": {"deathTimeout": "soon"}});
    let response = evaluate(&serde_json::to_vec(&payload).expect("json"));
    assert!(!response.accepted);
    let message = response.message.unwrap_or_default();
    assert!(
        message.starts_with("invalid settings: deathTimeout:"),
        "{message}"
    );
}
