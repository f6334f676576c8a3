//! Raw bytes into the policy's entry points, as a host could pass them: `validate`
//! (through `validate_payload`, which the waPC export calls) and `validate_settings`.
//! Every input must get an answer: a JSON `ValidationResponse` / settings response, a
//! rejection with a message, never a panic (in the wasm module a trap, an HTTP 500 for
//! every pod in the cluster).

#![no_main]

use dask_worker_defaults::settings::validate_settings_payload;
use dask_worker_defaults::validate_payload;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let response = match validate_payload(data) {
        Ok(bytes) => bytes,
        Err(e) => panic!("no response for a payload: {e}"),
    };
    let response: Value = match serde_json::from_slice(&response) {
        Ok(v) => v,
        Err(e) => panic!("the response is not JSON: {e}"),
    };
    match response["accepted"].as_bool() {
        Some(true) => {}
        Some(false) => assert!(
            response["message"].as_str().is_some_and(|m| !m.is_empty()),
            "a rejection without a message: {response}"
        ),
        None => panic!("no accepted flag: {response}"),
    }
    let settings = validate_settings_payload(data);
    if !settings.valid {
        assert!(
            settings.message.is_some_and(|m| !m.is_empty()),
            "invalid settings without a message"
        );
    }
});
