//! Admission documents: detecting a bare AdmissionRequest vs an AdmissionReview, and
//! turning a policy's `validate` answer into an AdmissionResponse exactly as
//! policy-evaluator does (same field names, order and omission rules as kwctl prints).

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Error, Result};

/// The message policy-evaluator uses when a policy mutates a DELETE request's null object.
pub const NULL_OBJECT_MUTATION_MESSAGE: &str = "Incoming object is null, which happens only with DELETE operations, but the policy is attempting a mutation. This is not allowed";

/// apiVersion of the AdmissionReview documents the webhook receives and answers.
pub const ADMISSION_REVIEW_API_VERSION: &str = "admission.k8s.io/v1";

/// How the request was given: `kwctl run` accepts both forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputForm {
    /// The `request` member of an AdmissionReview on its own.
    BareRequest,
    /// A full `{"apiVersion":..., "kind":"AdmissionReview", "request":{...}}`.
    Review,
}

/// An admission request, kept as raw JSON so the guest sees every field the apiserver
/// sent (a typed round trip would drop unknown fields).
#[derive(Debug, Clone, PartialEq)]
pub struct AdmissionRequest {
    raw: Value,
}

impl AdmissionRequest {
    /// Checks the members every AdmissionRequest has (`uid`, `kind`, `operation`), so a
    /// wrong file fails with a clear message instead of a guest deserialization error.
    pub fn from_value(raw: Value) -> Result<Self> {
        let Some(obj) = raw.as_object() else {
            return Err(Error::InvalidRequest(format!(
                "expected a JSON object, got {}",
                json_type(&raw)
            )));
        };
        match obj.get("uid") {
            Some(Value::String(_)) => {}
            Some(other) => {
                return Err(Error::InvalidRequest(format!(
                    "`uid` must be a string, got {}",
                    json_type(other)
                )));
            }
            None => return Err(Error::InvalidRequest("missing `uid`".to_owned())),
        }
        if !obj.get("kind").is_some_and(Value::is_object) {
            return Err(Error::InvalidRequest(
                "missing `kind` object (group/version/kind)".to_owned(),
            ));
        }
        if !obj.get("operation").is_some_and(Value::is_string) {
            return Err(Error::InvalidRequest(
                "missing `operation` string (CREATE, UPDATE, DELETE or CONNECT)".to_owned(),
            ));
        }
        Ok(Self { raw })
    }

    /// The request uid, echoed in the response.
    pub fn uid(&self) -> &str {
        self.str_at(&["uid"]).unwrap_or_default()
    }

    /// The object under admission; `None` when absent or null (DELETE).
    pub fn object(&self) -> Option<&Value> {
        self.raw.get("object").filter(|v| !v.is_null())
    }

    /// The request as the guest receives it.
    pub fn as_value(&self) -> &Value {
        &self.raw
    }

    /// `kind.kind` (e.g. `Pod`), for logs.
    pub fn kind(&self) -> &str {
        self.str_at(&["kind", "kind"]).unwrap_or_default()
    }

    /// `operation` (e.g. `CREATE`), for logs.
    pub fn operation(&self) -> &str {
        self.str_at(&["operation"]).unwrap_or_default()
    }

    /// `namespace`, empty for cluster-scoped objects, for logs.
    pub fn namespace(&self) -> &str {
        self.str_at(&["namespace"]).unwrap_or_default()
    }

    /// `name`, or the object's `metadata.generateName` when the name is not yet set.
    pub fn name(&self) -> &str {
        self.str_at(&["name"])
            .filter(|n| !n.is_empty())
            .or_else(|| self.str_at(&["object", "metadata", "generateName"]))
            .unwrap_or_default()
    }

    fn str_at(&self, path: &[&str]) -> Option<&str> {
        path.iter()
            .try_fold(&self.raw, |v, key| v.get(key))
            .and_then(Value::as_str)
    }
}

/// Parses a `--request-path` document or webhook body: an AdmissionReview (anything
/// with a `request` member, as kwctl decides) or a bare AdmissionRequest.
pub fn parse_request_document(bytes: &[u8]) -> Result<(AdmissionRequest, InputForm)> {
    let doc: Value = serde_json::from_slice(bytes).map_err(Error::RequestParse)?;
    if let Some(request) = doc.as_object().and_then(|o| o.get("request")) {
        if let Some(kind) = doc.get("kind").and_then(Value::as_str)
            && kind != "AdmissionReview"
        {
            return Err(Error::InvalidRequest(format!(
                "document has a `request` member but kind {kind:?}, expected \"AdmissionReview\""
            )));
        }
        let request = AdmissionRequest::from_value(request.clone())
            .map_err(|e| Error::InvalidRequest(format!("AdmissionReview.request: {e}")))?;
        return Ok((request, InputForm::Review));
    }
    Ok((AdmissionRequest::from_value(doc)?, InputForm::BareRequest))
}

/// What a Kubewarden guest's `validate` answers (kubewarden-policy-sdk's
/// `ValidationResponse`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct PolicyValidationResponse {
    /// Whether the request is accepted.
    pub accepted: bool,
    /// Message for the user, usually on rejection.
    #[serde(default)]
    pub message: Option<String>,
    /// HTTP-like code for the user, usually on rejection.
    #[serde(default)]
    pub code: Option<u16>,
    /// The full mutated object, for mutating policies.
    #[serde(default)]
    pub mutated_object: Option<Value>,
    /// Audit annotations to attach to the request.
    #[serde(default)]
    pub audit_annotations: Option<BTreeMap<String, String>>,
    /// Warnings for the API client.
    #[serde(default)]
    pub warnings: Option<Vec<String>>,
}

/// What a guest's `validate_settings` answers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SettingsValidationResponse {
    /// Whether the settings are valid.
    pub valid: bool,
    /// Why not, when they are not.
    #[serde(default)]
    pub message: Option<String>,
}

/// The only patch type Kubernetes supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PatchType {
    /// RFC 6902 JSON Patch.
    #[serde(rename = "JSONPatch")]
    JsonPatch,
}

/// `status` of a response: kwctl prints only the members that are set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdmissionResponseStatus {
    /// Human-readable reason.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub message: Option<String>,
    /// Suggested HTTP code.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub code: Option<u16>,
}

/// admission/v1 AdmissionResponse as policy-evaluator models it: `patchType`, `patch`
/// and `status` are omitted when unset; `auditAnnotations` and `warnings` are always
/// present (null when unset). Field order is kwctl's output order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionResponse {
    /// The request uid, echoed.
    pub uid: String,
    /// Whether the request is admitted.
    pub allowed: bool,
    /// `JSONPatch` when `patch` is set.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub patch_type: Option<PatchType>,
    /// Base64 of the JSON Patch document.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub patch: Option<String>,
    /// Why the request was rejected (or the policy's message).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status: Option<AdmissionResponseStatus>,
    /// Audit annotations from the policy.
    #[serde(default)]
    pub audit_annotations: Option<BTreeMap<String, String>>,
    /// Warnings from the policy.
    #[serde(default)]
    pub warnings: Option<Vec<String>>,
}

impl AdmissionResponse {
    /// A rejection with a message and code.
    pub fn reject(uid: impl Into<String>, message: impl Into<String>, code: u16) -> Self {
        Self {
            uid: uid.into(),
            allowed: false,
            status: Some(AdmissionResponseStatus {
                message: Some(message.into()),
                code: Some(code),
            }),
            ..Self::default()
        }
    }

    /// What policy-server answers when the policy could not be evaluated (trap,
    /// deadline, host-call failure, garbage answer): fail closed with a 500.
    pub fn reject_internal_server_error(uid: impl Into<String>, message: impl AsRef<str>) -> Self {
        Self::reject(
            uid,
            format!("internal server error: {}", message.as_ref()),
            500,
        )
    }

    /// policy-evaluator's `from_policy_validation_response`: the mutated object becomes
    /// `json_patch::diff(original, mutated)` (no patch when the diff is empty), and a
    /// mutation of a null object (DELETE) is refused.
    pub fn from_policy_response(
        uid: impl Into<String>,
        original: Option<&Value>,
        policy: &PolicyValidationResponse,
    ) -> Result<Self> {
        let uid = uid.into();
        let patch = match (&policy.mutated_object, original) {
            (Some(_), None) => {
                return Ok(Self {
                    uid,
                    allowed: false,
                    status: Some(AdmissionResponseStatus {
                        message: Some(NULL_OBJECT_MUTATION_MESSAGE.to_owned()),
                        code: None,
                    }),
                    ..Self::default()
                });
            }
            (Some(mutated), Some(original)) => encode_patch(&json_patch::diff(original, mutated))?,
            (None, _) => None,
        };
        let status =
            (policy.message.is_some() || policy.code.is_some()).then(|| AdmissionResponseStatus {
                message: policy.message.clone(),
                code: policy.code,
            });
        Ok(Self {
            uid,
            allowed: policy.accepted,
            patch_type: patch.as_ref().map(|_| PatchType::JsonPatch),
            patch,
            status,
            audit_annotations: policy.audit_annotations.clone(),
            warnings: policy.warnings.clone(),
        })
    }

    /// The decoded JSON Patch, for tests and logs; `Ok(None)` when there is no patch.
    pub fn decoded_patch(&self) -> std::result::Result<Option<Value>, String> {
        let Some(patch) = &self.patch else {
            return Ok(None);
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(patch)
            .map_err(|e| format!("patch is not base64: {e}"))?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("patch is not JSON: {e}"))
    }

    /// The one-line JSON kwctl prints.
    pub fn to_json_line(&self) -> Result<String> {
        serde_json::to_string(self).map_err(|source| Error::Serialize {
            what: "admission response",
            source,
        })
    }
}

/// Base64 of the patch JSON, `None` for an empty patch (no-op mutation).
fn encode_patch(patch: &json_patch::Patch) -> Result<Option<String>> {
    if patch.0.is_empty() {
        return Ok(None);
    }
    let json = serde_json::to_vec(patch).map_err(|source| Error::Serialize {
        what: "JSON patch",
        source,
    })?;
    Ok(Some(base64::engine::general_purpose::STANDARD.encode(json)))
}

/// The AdmissionReview a webhook answers with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionReviewResponse {
    /// Always `admission.k8s.io/v1`.
    pub api_version: String,
    /// Always `AdmissionReview`.
    pub kind: String,
    /// The response.
    pub response: AdmissionResponse,
}

impl AdmissionReviewResponse {
    /// Wraps a response for the apiserver.
    pub fn new(response: AdmissionResponse) -> Self {
        Self {
            api_version: ADMISSION_REVIEW_API_VERSION.to_owned(),
            kind: "AdmissionReview".to_owned(),
            response,
        }
    }
}

/// The JSON type name of a value, for error messages.
pub(crate) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use serde_json::json;

    fn pod_request(object: Value) -> Value {
        json!({
            "uid": "req-1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE",
            "namespace": "default",
            "name": "w",
            "userInfo": {"username": "admin"},
            "object": object,
        })
    }

    fn pod() -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "w"},
               "spec": {"containers": [{"name": "worker", "image": "dask"}]}})
    }

    fn accepted_with(mutated: Option<Value>) -> PolicyValidationResponse {
        PolicyValidationResponse {
            accepted: true,
            mutated_object: mutated,
            ..Default::default()
        }
    }

    #[rstest]
    #[case::no_mutation(Some(pod()), accepted_with(None), true, None, None)]
    #[case::identical_mutation_gives_no_patch(
        Some(pod()),
        accepted_with(Some(pod())),
        true,
        None,
        None
    )]
    #[case::added_field_gives_add_op(
        Some(pod()),
        accepted_with(Some({let mut p = pod(); p["spec"]["restartPolicy"] = json!("Never"); p})),
        true,
        Some(json!([{"op": "add", "path": "/spec/restartPolicy", "value": "Never"}])),
        None
    )]
    #[case::changed_field_gives_replace_op(
        Some(pod()),
        accepted_with(Some({let mut p = pod(); p["spec"]["containers"][0]["image"] = json!("d2"); p})),
        true,
        Some(json!([{"op": "replace", "path": "/spec/containers/0/image", "value": "d2"}])),
        None
    )]
    #[case::rejection_carries_message_and_code(
        Some(pod()),
        PolicyValidationResponse { accepted: false, message: Some("no".into()), code: Some(403), ..Default::default() },
        false,
        None,
        Some(AdmissionResponseStatus { message: Some("no".into()), code: Some(403) })
    )]
    #[case::message_without_code(
        Some(pod()),
        PolicyValidationResponse { accepted: false, message: Some("no".into()), ..Default::default() },
        false,
        None,
        Some(AdmissionResponseStatus { message: Some("no".into()), code: None })
    )]
    #[case::null_object_mutated_is_rejected(
        None,
        accepted_with(Some(pod())),
        false,
        None,
        Some(AdmissionResponseStatus { message: Some(NULL_OBJECT_MUTATION_MESSAGE.into()), code: None })
    )]
    #[case::null_object_not_mutated_is_allowed(None, accepted_with(None), true, None, None)]
    fn builds_response_like_policy_evaluator(
        #[case] original: Option<Value>,
        #[case] policy: PolicyValidationResponse,
        #[case] allowed: bool,
        #[case] patch: Option<Value>,
        #[case] status: Option<AdmissionResponseStatus>,
    ) -> anyhow::Result<()> {
        let resp = AdmissionResponse::from_policy_response("u", original.as_ref(), &policy)?;
        assert_eq!(resp.uid, "u");
        assert_eq!(resp.allowed, allowed);
        assert_eq!(resp.decoded_patch().map_err(anyhow::Error::msg)?, patch);
        assert_eq!(resp.patch_type.is_some(), resp.patch.is_some());
        assert_eq!(resp.status, status);
        Ok(())
    }

    #[test]
    fn patch_is_standard_base64_of_compact_patch_json() -> anyhow::Result<()> {
        let mut mutated = pod();
        mutated["metadata"]["labels"] = json!({"a": "b"});
        let resp = AdmissionResponse::from_policy_response(
            "u",
            Some(&pod()),
            &accepted_with(Some(mutated)),
        )?;
        let expected = base64::engine::general_purpose::STANDARD
            .encode(r#"[{"op":"add","path":"/metadata/labels","value":{"a":"b"}}]"#);
        assert_eq!(resp.patch.as_deref(), Some(expected.as_str()));
        Ok(())
    }

    #[rstest]
    #[case::allowed_plain(
        AdmissionResponse { uid: "u".into(), allowed: true, ..Default::default() },
        r#"{"uid":"u","allowed":true,"auditAnnotations":null,"warnings":null}"#
    )]
    #[case::patched(
        AdmissionResponse { uid: "u".into(), allowed: true, patch_type: Some(PatchType::JsonPatch), patch: Some("W10=".into()), ..Default::default() },
        r#"{"uid":"u","allowed":true,"patchType":"JSONPatch","patch":"W10=","auditAnnotations":null,"warnings":null}"#
    )]
    #[case::rejected(
        AdmissionResponse::reject("u", "no", 400),
        r#"{"uid":"u","allowed":false,"status":{"message":"no","code":400},"auditAnnotations":null,"warnings":null}"#
    )]
    #[case::internal_error(
        AdmissionResponse::reject_internal_server_error("u", "trap"),
        r#"{"uid":"u","allowed":false,"status":{"message":"internal server error: trap","code":500},"auditAnnotations":null,"warnings":null}"#
    )]
    #[case::annotations_and_warnings(
        AdmissionResponse { uid: "u".into(), allowed: true,
            audit_annotations: Some(BTreeMap::from([("k".to_owned(), "v".to_owned())])),
            warnings: Some(vec!["w".into()]), ..Default::default() },
        r#"{"uid":"u","allowed":true,"auditAnnotations":{"k":"v"},"warnings":["w"]}"#
    )]
    fn serializes_like_kwctl(
        #[case] resp: AdmissionResponse,
        #[case] expected: &str,
    ) -> anyhow::Result<()> {
        assert_eq!(resp.to_json_line()?, expected);
        Ok(())
    }

    #[test]
    fn warnings_and_annotations_are_forwarded() -> anyhow::Result<()> {
        let policy = PolicyValidationResponse {
            accepted: true,
            warnings: Some(vec!["careful".into()]),
            audit_annotations: Some(BTreeMap::from([("a".to_owned(), "b".to_owned())])),
            ..Default::default()
        };
        let resp = AdmissionResponse::from_policy_response("u", Some(&pod()), &policy)?;
        assert_eq!(resp.warnings, policy.warnings);
        assert_eq!(resp.audit_annotations, policy.audit_annotations);
        Ok(())
    }

    #[rstest]
    #[case::bare_request(pod_request(pod()), InputForm::BareRequest)]
    #[case::full_review(
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": pod_request(pod())}),
        InputForm::Review
    )]
    #[case::review_without_type_meta(json!({"request": pod_request(pod())}), InputForm::Review)]
    fn detects_request_form(#[case] doc: Value, #[case] form: InputForm) -> anyhow::Result<()> {
        let (request, got) = parse_request_document(&serde_json::to_vec(&doc)?)?;
        assert_eq!(got, form);
        assert_eq!(request.as_value(), &pod_request(pod()));
        assert_eq!(request.uid(), "req-1");
        Ok(())
    }

    #[rstest]
    #[case::not_json(b"{nope".to_vec(), "failed to parse admission request")]
    #[case::array(b"[]".to_vec(), "expected a JSON object, got an array")]
    #[case::missing_uid(br#"{"kind":{"kind":"Pod"},"operation":"CREATE"}"#.to_vec(), "missing `uid`")]
    #[case::numeric_uid(br#"{"uid":1,"kind":{},"operation":"CREATE"}"#.to_vec(), "`uid` must be a string")]
    #[case::missing_kind(br#"{"uid":"u","operation":"CREATE"}"#.to_vec(), "missing `kind`")]
    #[case::missing_operation(br#"{"uid":"u","kind":{}}"#.to_vec(), "missing `operation`")]
    #[case::review_with_bad_request(br#"{"kind":"AdmissionReview","request":{"uid":"u"}}"#.to_vec(), "AdmissionReview.request")]
    #[case::request_member_in_other_kind(br#"{"kind":"Pod","request":{}}"#.to_vec(), "expected \"AdmissionReview\"")]
    fn rejects_malformed_requests(#[case] bytes: Vec<u8>, #[case] needle: &str) {
        let Err(err) = parse_request_document(&bytes) else {
            panic!("{needle:?}: the document should be rejected");
        };
        let err = err.to_string();
        assert!(err.contains(needle), "{err:?} should contain {needle:?}");
    }

    #[rstest]
    #[case::present(pod_request(pod()), true)]
    #[case::null_on_delete(pod_request(Value::Null), false)]
    #[case::absent({let mut r = pod_request(Value::Null); r.as_object_mut().map(|o| o.remove("object")); r}, false)]
    fn object_is_none_when_null_or_absent(
        #[case] raw: Value,
        #[case] present: bool,
    ) -> anyhow::Result<()> {
        assert_eq!(
            AdmissionRequest::from_value(raw)?.object().is_some(),
            present
        );
        Ok(())
    }

    #[rstest]
    #[case::named(pod_request(pod()), "w")]
    #[case::generate_name(json!({"uid": "u", "kind": {}, "operation": "CREATE", "name": "",
        "object": {"metadata": {"generateName": "worker-"}}}), "worker-")]
    fn name_falls_back_to_generate_name(
        #[case] raw: Value,
        #[case] name: &str,
    ) -> anyhow::Result<()> {
        assert_eq!(AdmissionRequest::from_value(raw)?.name(), name);
        Ok(())
    }

    #[test]
    fn review_response_wraps_the_response() -> anyhow::Result<()> {
        let review = AdmissionReviewResponse::new(AdmissionResponse::reject("u", "m", 400));
        let v = serde_json::to_value(&review)?;
        assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(v["kind"], "AdmissionReview");
        assert_eq!(v["response"]["uid"], "u");
        Ok(())
    }
}
