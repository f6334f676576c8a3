//! Host behaviour on guests that misbehave (trap, loop forever, call unsupported host
//! capabilities, answer garbage): a small waPC guest in WAT (fixtures/test-guest.wat.in)
//! plays the policy, since a real policy must never do these things.

use std::time::Duration;

use policy_runner::Error;
use policy_runner::admission::{AdmissionRequest, NULL_OBJECT_MUTATION_MESSAGE};
use policy_runner::evaluator::{DEFAULT_TIMEOUT, Evaluator, PolicyModule};
use policy_runner::settings::Settings;
use rstest::rstest;
use serde_json::{Value, json};
use std::sync::Arc;

const TEMPLATE: &str = include_str!("fixtures/test-guest.wat.in");

/// A deadline short enough to keep the endless-loop case quick.
const SHORT_TIMEOUT: Duration = Duration::from_millis(200);

/// What the test guest answers and does in `validate`.
struct Guest<'a> {
    protocol: &'a str,
    settings: &'a str,
    answer: &'a str,
    validate: &'a str,
}

impl Default for Guest<'_> {
    fn default() -> Self {
        Self {
            protocol: r#""v1""#,
            settings: r#"{"valid":true}"#,
            answer: r#"{"accepted":true}"#,
            validate: "(call $answer)",
        }
    }
}

impl Guest<'_> {
    fn wat(&self) -> String {
        TEMPLATE
            .replace("@PROTOCOL_LEN@", &self.protocol.len().to_string())
            .replace("@SETTINGS_LEN@", &self.settings.len().to_string())
            .replace("@ANSWER_LEN@", &self.answer.len().to_string())
            .replace("@PROTOCOL@", &wat_bytes(self.protocol))
            .replace("@SETTINGS@", &wat_bytes(self.settings))
            .replace("@ANSWER@", &wat_bytes(self.answer))
            .replace("@VALIDATE@", self.validate)
    }

    fn module(&self, timeout: Duration) -> anyhow::Result<Arc<PolicyModule>> {
        Ok(Arc::new(PolicyModule::from_bytes(
            self.wat().as_bytes(),
            timeout,
        )?))
    }
}

/// A WAT string literal body: every byte escaped, so any JSON fits.
fn wat_bytes(s: &str) -> String {
    s.bytes().map(|b| format!("\\{b:02x}")).collect()
}

fn request(object: Value) -> anyhow::Result<AdmissionRequest> {
    Ok(AdmissionRequest::from_value(json!({
        "uid": "guest-test",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "operation": if object.is_null() { "DELETE" } else { "CREATE" },
        "object": object,
    }))?)
}

/// Pass when the guest's `validate` succeeds, and fail with its message otherwise.
const LOG_THEN_ANSWER: &str =
    "(if (i32.eqz (call $log)) (then (return (call $fail)))) (call $answer)";
const VERIFY_THEN_ANSWER: &str =
    "(if (i32.eqz (call $verify)) (then (return (call $fail)))) (call $answer)";
/// Traps on the second `validate` of one instance: only fresh instances never trap.
const TRAP_ON_REUSE: &str = "(global.set $calls (i32.add (global.get $calls) (i32.const 1))) \
     (if (i32.gt_u (global.get $calls) (i32.const 1)) (then unreachable)) (call $answer)";

#[rstest]
#[case::accepts(Guest::default(), DEFAULT_TIMEOUT, json!({"a": 1}), Ok(()))]
#[case::log_host_call_is_answered(
    Guest { validate: LOG_THEN_ANSWER, ..Guest::default() }, DEFAULT_TIMEOUT, json!({"a": 1}), Ok(()))]
#[case::trap_is_500(
    Guest { validate: "unreachable", ..Guest::default() }, DEFAULT_TIMEOUT, json!({"a": 1}),
    Err("internal server error: Guest call failure: "))]
#[case::deadline_is_500(
    Guest { validate: "(loop $forever (br $forever)) (i32.const 1)", ..Guest::default() },
    SHORT_TIMEOUT, json!({"a": 1}),
    Err("guest code interrupted, execution deadline exceeded"))]
#[case::guest_error_is_500(
    Guest { validate: "(call $fail)", ..Guest::default() }, DEFAULT_TIMEOUT, json!({"a": 1}),
    Err("internal server error: Guest call failure: host call failed"))]
#[case::unsupported_host_call_fails_the_guest(
    Guest { validate: VERIFY_THEN_ANSWER, ..Guest::default() }, DEFAULT_TIMEOUT, json!({"a": 1}),
    Err("host call failed"))]
#[case::garbage_answer_is_500(
    Guest { answer: "not json", ..Guest::default() }, DEFAULT_TIMEOUT, json!({"a": 1}),
    Err("internal server error: cannot deserialize policy validation response"))]
fn evaluation_outcome(
    #[case] guest: Guest<'_>,
    #[case] timeout: Duration,
    #[case] object: Value,
    #[case] expected: Result<(), &str>,
) -> anyhow::Result<()> {
    let evaluator = Evaluator::new(guest.module(timeout)?, Settings::empty())?;
    let response = evaluator.evaluate(&request(object)?);
    assert_eq!(response.uid, "guest-test");
    match expected {
        Ok(()) => {
            assert!(response.allowed, "{response:?}");
            assert_eq!(response.status, None);
        }
        Err(needle) => {
            assert!(!response.allowed, "{response:?}");
            let status = response.status.unwrap_or_default();
            assert_eq!(status.code, Some(500));
            let message = status.message.unwrap_or_default();
            assert!(
                message.contains(needle),
                "{message:?} should contain {needle:?}"
            );
        }
    }
    Ok(())
}

#[test]
fn every_evaluation_gets_a_fresh_instance() -> anyhow::Result<()> {
    let guest = Guest {
        validate: TRAP_ON_REUSE,
        ..Guest::default()
    };
    let module = guest.module(DEFAULT_TIMEOUT)?;
    let evaluator = Evaluator::new(Arc::clone(&module), Settings::empty())?;
    for _ in 0..5 {
        let response = evaluator.evaluate(&request(json!({"a": 1}))?);
        assert!(response.allowed, "{response:?}");
    }
    // The guest really does trap when an instance is reused.
    let instance = module.instantiate()?;
    let settings = Settings::empty();
    assert!(
        instance
            .validate(&settings, &request(json!({"a": 1}))?)
            .allowed
    );
    assert!(
        !instance
            .validate(&settings, &request(json!({"a": 1}))?)
            .allowed
    );
    Ok(())
}

#[test]
fn module_keeps_working_after_a_deadline() -> anyhow::Result<()> {
    // An interrupted instance is dropped; the next request gets a new one.
    let guest = Guest {
        validate: "(loop $forever (br $forever)) (i32.const 1)",
        ..Guest::default()
    };
    let module = guest.module(SHORT_TIMEOUT)?;
    let evaluator = Evaluator::new(Arc::clone(&module), Settings::empty())?;
    for _ in 0..2 {
        let response = evaluator.evaluate(&request(json!({"a": 1}))?);
        assert_eq!(response.status.and_then(|s| s.code), Some(500));
    }
    // protocol_version still answers on a fresh instance of the same module.
    module.instantiate()?.protocol_version()?;
    Ok(())
}

#[rstest]
#[case::object_present_gives_patch(json!({"a": 1}), true, None)]
#[case::null_object_is_refused(Value::Null, false, Some(NULL_OBJECT_MUTATION_MESSAGE))]
fn mutation_handling(
    #[case] object: Value,
    #[case] allowed: bool,
    #[case] message: Option<&str>,
) -> anyhow::Result<()> {
    let guest = Guest {
        answer: r#"{"accepted":true,"mutated_object":{"a":2}}"#,
        ..Guest::default()
    };
    let evaluator = Evaluator::new(guest.module(DEFAULT_TIMEOUT)?, Settings::empty())?;
    let response = evaluator.evaluate(&request(object)?);
    assert_eq!(response.allowed, allowed, "{response:?}");
    assert_eq!(
        response.status.as_ref().and_then(|s| s.message.as_deref()),
        message
    );
    if allowed {
        assert_eq!(
            response.decoded_patch().map_err(anyhow::Error::msg)?,
            Some(json!([{"op": "replace", "path": "/a", "value": 2}]))
        );
    }
    Ok(())
}

#[test]
fn non_mutating_policy_may_not_patch() -> anyhow::Result<()> {
    let guest = Guest {
        answer: r#"{"accepted":true,"mutated_object":{"a":2}}"#,
        ..Guest::default()
    };
    let evaluator = Evaluator::new(guest.module(DEFAULT_TIMEOUT)?, Settings::empty())?
        .with_policy_id("p")
        .with_mutations_allowed(false);
    let response = evaluator.evaluate(&request(json!({"a": 1}))?);
    assert!(!response.allowed);
    assert_eq!(response.patch, None);
    let message = response.status.and_then(|s| s.message).unwrap_or_default();
    assert!(
        message.starts_with("Request rejected by policy p."),
        "{message}"
    );
    Ok(())
}

#[rstest]
#[case::wrong_protocol(Guest { protocol: r#""v2""#, ..Guest::default() }, "unsupported policy protocol version \"v2\"")]
#[case::invalid_settings(
    Guest { settings: r#"{"valid":false,"message":"nope"}"#, ..Guest::default() },
    "provided settings are not valid: nope")]
#[case::garbage_settings_answer(
    Guest { settings: "[]", ..Guest::default() }, "invalid answer of guest call validate_settings")]
fn startup_checks(#[case] guest: Guest<'_>, #[case] needle: &str) -> anyhow::Result<()> {
    match Evaluator::new(guest.module(DEFAULT_TIMEOUT)?, Settings::empty()) {
        Ok(_) => panic!("expected {needle:?}"),
        Err(e) => assert!(
            e.to_string().contains(needle),
            "{e} should contain {needle:?}"
        ),
    }
    Ok(())
}

#[test]
fn invalid_module_is_a_compile_error() {
    let result = PolicyModule::from_bytes(b"\0asm garbage", DEFAULT_TIMEOUT);
    assert!(matches!(result, Err(Error::Compile(_))), "{result:?}");
}
