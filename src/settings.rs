//! The policy's settings: the shared [`WorkerDefaults`], validated as Kubewarden expects.

use dask_worker_spec::{SettingsError, WorkerDefaults};
use kubewarden_policy_sdk::settings::{SettingsValidationResponse, Validatable};
use serde::{Deserialize, Serialize};

/// Settings of the policy (camelCase, every field optional, unknown fields rejected);
/// exactly the options dask-kube applies client-side.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Settings(pub WorkerDefaults);

impl Settings {
    /// Parses settings JSON; an error names the offending field.
    pub fn from_json(json: &[u8]) -> Result<Self, SettingsError> {
        WorkerDefaults::from_json(json).map(Settings)
    }
}

impl Validatable for Settings {
    fn validate(&self) -> Result<(), String> {
        self.0.validate().map_err(|e| e.to_string())
    }
}

/// `validate_settings`: parse and check, answering `{valid, message}` for any input
/// (the SDK's generic helper would turn a type error into a waPC error instead of a
/// message naming the field).
pub fn validate_settings_payload(payload: &[u8]) -> SettingsValidationResponse {
    let payload = if payload.iter().all(u8::is_ascii_whitespace) || payload == b"null" {
        b"{}".as_slice()
    } else {
        payload
    };
    match Settings::from_json(payload) {
        Ok(_) => SettingsValidationResponse {
            valid: true,
            message: None,
        },
        Err(e) => SettingsValidationResponse {
            valid: false,
            message: Some(e.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::empty_object(r#"{}"#, true, None)]
    #[case::empty_payload("", true, None)]
    #[case::null("null", true, None)]
    #[case::use_flags(r#"{"onMismatch": "useFlags"}"#, true, None)]
    #[case::bogus_mode(
        r#"{"onMismatch": "bogus"}"#,
        false,
        Some("onMismatch: unknown variant `bogus`")
    )]
    #[case::unknown_field(r#"{"deathtimeout": 5}"#, false, Some("unknown field `deathtimeout`"))]
    #[case::zero_timeout(
        r#"{"deathTimeout": 0}"#,
        false,
        Some("deathTimeout: must be between 1 and 86400 seconds, got 0")
    )]
    #[case::affinity_required(r#"{"applyDefaultAffinity": "required"}"#, true, None)]
    #[case::affinity_none(r#"{"applyDefaultAffinity": "none"}"#, true, None)]
    #[case::affinity_unknown(
        r#"{"applyDefaultAffinity": "hard"}"#,
        false,
        Some(r#"applyDefaultAffinity: unknown affinity mode "hard": must be "preferred", "required" or "none""#)
    )]
    #[case::not_json("{", false, Some("EOF while parsing"))]
    fn validates(#[case] json: &str, #[case] valid: bool, #[case] message: Option<&str>) {
        let response = validate_settings_payload(json.as_bytes());
        assert_eq!(response.valid, valid, "{:?}", response.message);
        if let Some(message) = message {
            let got = response.message.unwrap_or_default();
            assert!(got.contains(message), "{got}");
        }
    }
}
