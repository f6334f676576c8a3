//! Kubewarden policy metadata as kwctl writes it into a module and reads it back.
//!
//! `kwctl annotate -m metadata.yml -o annotated.wasm policy.wasm` parses the YAML into
//! policy-evaluator's `Metadata`, sets `protocolVersion` (asking the module itself for a
//! waPC policy), adds the `io.kubewarden.kwctl` annotation, validates, and stores the
//! struct serialized as compact JSON in the custom section `io.kubewarden.metadata`.
//! `kwctl run`/`bench` read that section to pick the execution mode. [`PolicyMetadata`]
//! has the same fields, defaults, serialization (field order, omitted fields) and checks,
//! so a module annotated by either tool reads the same in both.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Error, Result, wasm_section};

/// Name of the custom section holding the metadata (policy-evaluator's
/// `KUBEWARDEN_CUSTOM_SECTION_METADATA`).
pub const METADATA_SECTION: &str = "io.kubewarden.metadata";

/// Annotation naming the tool version that annotated the module
/// (`KUBEWARDEN_ANNOTATION_KWCTL_VERSION`).
pub const ANNOTATION_KWCTL_VERSION: &str = "io.kubewarden.kwctl";

/// Annotation holding the `--usage-path` file (`KUBEWARDEN_ANNOTATION_POLICY_USAGE`).
pub const ANNOTATION_POLICY_USAGE: &str = "io.kubewarden.policy.usage";

/// The kwctl release whose CLI and annotation format this host mirrors.
pub const KWCTL_COMPAT_VERSION: &str = "1.36.0";

/// What `annotate` writes under [`ANNOTATION_KWCTL_VERSION`]: a semver version, like
/// kwctl's own, that says which kwctl format it follows and that policy-runner wrote it.
pub fn annotator_version() -> String {
    format!(
        "{KWCTL_COMPAT_VERSION}+policy-runner.{}",
        env!("CARGO_PKG_VERSION")
    )
}

/// The waPC protocol a policy speaks (`kubewarden_policy_sdk::metadata::ProtocolVersion`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProtocolVersion {
    /// Not a waPC policy, or not known.
    #[serde(rename = "Unknown")]
    Unknown,
    /// The only protocol Kubewarden policies speak.
    #[serde(rename = "v1")]
    V1,
}

/// The runtime a policy needs (policy-evaluator's `PolicyExecutionMode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExecutionMode {
    /// waPC guest (the Kubewarden SDKs); the only mode this host runs.
    #[default]
    #[serde(rename = "kubewarden-wapc")]
    KubewardenWapc,
    /// Rego compiled for Open Policy Agent.
    #[serde(rename = "opa")]
    Opa,
    /// Rego compiled for Gatekeeper.
    #[serde(rename = "gatekeeper")]
    Gatekeeper,
    /// A WASI program.
    #[serde(rename = "wasi")]
    Wasi,
}

impl ExecutionMode {
    /// The value of kwctl's `--execution-mode` flag naming this mode.
    pub fn from_cli(value: &str) -> Option<Self> {
        match value {
            "kubewarden" => Some(Self::KubewardenWapc),
            "opa" => Some(Self::Opa),
            "gatekeeper" => Some(Self::Gatekeeper),
            "wasi" => Some(Self::Wasi),
            _ => None,
        }
    }

    /// The values kwctl's `--execution-mode` accepts.
    pub const CLI_VALUES: [&'static str; 4] = ["opa", "gatekeeper", "kubewarden", "wasi"];
}

impl fmt::Display for ExecutionMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::KubewardenWapc => "kubewarden-wapc",
            Self::Opa => "opa",
            Self::Gatekeeper => "gatekeeper",
            Self::Wasi => "wasi",
        })
    }
}

/// Whether the policy reviews Kubernetes admission requests or raw JSON documents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PolicyType {
    /// AdmissionRequests.
    #[default]
    #[serde(rename = "kubernetes")]
    Kubernetes,
    /// Arbitrary JSON (`kwctl run --raw`).
    #[serde(rename = "raw")]
    Raw,
}

/// An admission operation in a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operation {
    /// CREATE.
    #[serde(rename = "CREATE")]
    Create,
    /// UPDATE.
    #[serde(rename = "UPDATE")]
    Update,
    /// DELETE.
    #[serde(rename = "DELETE")]
    Delete,
    /// CONNECT.
    #[serde(rename = "CONNECT")]
    Connect,
    /// Every operation.
    #[serde(rename = "*")]
    All,
}

/// Which requests the policy wants to see (a webhook rule).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// API groups, `""` for core.
    pub api_groups: Vec<String>,
    /// API versions.
    pub api_versions: Vec<String>,
    /// Resources, optionally with `/subresource`.
    pub resources: Vec<String>,
    /// Operations.
    pub operations: Vec<Operation>,
}

/// A Kubernetes resource type a context-aware policy may read.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContextAwareResource {
    /// e.g. `v1`, `apps/v1`.
    pub api_version: String,
    /// e.g. `Namespace`.
    pub kind: String,
}

/// A policy's metadata: `metadata.yml` as kwctl parses it, and the JSON document it
/// stores in the module. Field order is the order kwctl serializes them in; fields
/// kwctl does not know are dropped on parsing, as kwctl drops them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyMetadata {
    /// Set by `annotate` (from the module), never by the author.
    pub protocol_version: Option<ProtocolVersion>,
    /// Webhook rules (required, may be empty).
    pub rules: Vec<Rule>,
    /// Free-form annotations (`io.artifacthub.*`, `io.kubewarden.policy.*`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Whether the policy may return a mutated object (required).
    pub mutating: bool,
    /// Whether the audit scanner evaluates the policy; kwctl's default is `true`.
    #[serde(default = "default_true")]
    pub background_audit: bool,
    /// The runtime the policy needs.
    #[serde(default)]
    pub execution_mode: ExecutionMode,
    /// Admission requests or raw JSON.
    #[serde(default)]
    pub policy_type: PolicyType,
    /// Resources a context-aware policy reads.
    #[serde(default)]
    pub context_aware_resources: BTreeSet<ContextAwareResource>,
    /// Oldest Kubewarden release that can run the policy (semver).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minimum_kubewarden_version: Option<String>,
    /// Host capabilities the policy declares it calls (kwctl 1.35+).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_capabilities: Option<Vec<String>>,
}

const fn default_true() -> bool {
    true
}

impl PolicyMetadata {
    /// Parses a `metadata.yml` (YAML; JSON is YAML too).
    pub fn from_yaml(yaml: &str) -> Result<Self> {
        serde_norway::from_str(yaml).map_err(|e| Error::MetadataParse(e.to_string()))
    }

    /// The metadata stored in a module's [`METADATA_SECTION`], or `None` for a module
    /// that was never annotated.
    pub fn from_module(module: &[u8]) -> Result<Option<Self>> {
        match wasm_section::custom_section(module, METADATA_SECTION)? {
            None => Ok(None),
            Some(json) => serde_json::from_slice(json)
                .map(Some)
                .map_err(|e| Error::MetadataParse(format!("section {METADATA_SECTION}: {e}"))),
        }
    }

    /// The section's content: compact JSON, as kwctl writes it.
    pub fn to_section_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| Error::MetadataParse(e.to_string()))
    }

    /// kwctl's checks before annotating: a protocol version is set (and is `v1` for a
    /// waPC policy), every rule lists at least one group, version, resource and
    /// operation, `*` stands alone, resource wildcards follow the apiserver's rules, and
    /// context-aware resources name an apiVersion and a kind.
    pub fn validate(&self) -> Result<()> {
        let invalid = |m: String| Err(Error::MetadataInvalid(m));
        match self.protocol_version {
            None => return invalid("protocolVersion is required".to_owned()),
            Some(ProtocolVersion::Unknown)
                if self.execution_mode == ExecutionMode::KubewardenWapc =>
            {
                return invalid("Must specify a valid protocol version".to_owned());
            }
            Some(_) => {}
        }
        for (i, rule) in self.rules.iter().enumerate() {
            check_rule(rule).or_else(|m| invalid(format!("rules[{i}]: {m}")))?;
        }
        for resource in &self.context_aware_resources {
            if resource.api_version.is_empty() || resource.kind.is_empty() {
                return invalid(format!(
                    "contextAwareResources: apiVersion and kind must not be empty ({resource:?})"
                ));
            }
        }
        if let Some(version) = &self.minimum_kubewarden_version
            && !is_semver(version)
        {
            return invalid(format!(
                "minimumKubewardenVersion {version:?} is not a semantic version"
            ));
        }
        Ok(())
    }
}

fn check_rule(rule: &Rule) -> Result<(), String> {
    for (field, values) in [
        ("apiGroups", &rule.api_groups),
        ("apiVersions", &rule.api_versions),
        ("resources", &rule.resources),
    ] {
        if values.is_empty() {
            return Err(format!("{field} must not be empty"));
        }
        if field != "resources" && values.len() > 1 && values.iter().any(|v| v == "*") {
            return Err(format!(
                "{field}: no other elements can be defined when '*' is used"
            ));
        }
    }
    if rule.operations.is_empty() {
        return Err("operations must not be empty".to_owned());
    }
    if rule.operations.len() > 1 && rule.operations.contains(&Operation::All) {
        return Err("operations: no other elements can be defined when '*' is used".to_owned());
    }
    check_resources(&rule.resources)
}

/// The apiserver's rules for `resources` in a webhook rule (admissionregistration
/// validation): `*/*` stands alone, `*` excludes plain resources, `x/*` excludes `x/y`,
/// `*/y` excludes `x/y`.
fn check_resources(resources: &[String]) -> Result<(), String> {
    let mut wildcard_subresource_of = BTreeSet::new(); // x in "x/*"
    let mut any_resource_with = BTreeSet::new(); // y in "*/y"
    let mut has_plain_resource = false;
    let mut has_star = false;
    for resource in resources {
        if resource.is_empty() {
            return Err("empty resource is not allowed".to_owned());
        }
        match resource.as_str() {
            "*/*" if resources.len() > 1 => {
                return Err("if '*/*' is present, must not specify other resources".to_owned());
            }
            "*" => has_star = true,
            _ => {}
        }
        let Some((res, sub)) = resource.split_once('/') else {
            has_plain_resource |= resource != "*";
            continue;
        };
        if wildcard_subresource_of.contains(res) {
            return Err(format!(
                "if '{res}/*' is present, must not specify {resource}"
            ));
        }
        if any_resource_with.contains(sub) {
            return Err(format!(
                "if '*/{sub}' is present, must not specify {resource}"
            ));
        }
        if sub == "*" {
            wildcard_subresource_of.insert(res.to_owned());
        }
        if res == "*" {
            any_resource_with.insert(sub.to_owned());
        }
    }
    if has_star && has_plain_resource {
        return Err(
            "if '*' is present, must not specify other resources without subresources".to_owned(),
        );
    }
    Ok(())
}

/// `MAJOR.MINOR.PATCH` with optional `-pre` and `+build` parts.
fn is_semver(version: &str) -> bool {
    let core = version.split(['-', '+']).next().unwrap_or_default();
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
}

/// Picks the runtime as `kwctl run` 1.36 does: `--execution-mode` when given (kwctl
/// then uses it as is, without looking at the metadata), else an annotated module's
/// `executionMode`, else waPC. (kwctl also checks a plain module for Rego's ABI and asks
/// for the flag if found; this host runs waPC only, and a Rego module fails to start
/// here with a clear waPC error.)
pub fn resolve_execution_mode(
    metadata: Option<&PolicyMetadata>,
    from_cli: Option<ExecutionMode>,
) -> ExecutionMode {
    from_cli
        .or(metadata.map(|m| m.execution_mode))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use serde_json::json;

    const OUR_METADATA: &str = include_str!("../../../policy-metadata.yml");

    fn pod_rule() -> Rule {
        Rule {
            api_groups: vec![String::new()],
            api_versions: vec!["v1".to_owned()],
            resources: vec!["pods".to_owned()],
            operations: vec![Operation::Create],
        }
    }

    fn minimal() -> PolicyMetadata {
        PolicyMetadata {
            protocol_version: Some(ProtocolVersion::V1),
            rules: vec![pod_rule()],
            annotations: None,
            mutating: false,
            background_audit: true,
            execution_mode: ExecutionMode::KubewardenWapc,
            policy_type: PolicyType::Kubernetes,
            context_aware_resources: BTreeSet::new(),
            minimum_kubewarden_version: None,
            host_capabilities: None,
        }
    }

    #[test]
    fn serializes_like_kwctl() -> anyhow::Result<()> {
        // policy-evaluator's own expectation for this metadata (metadata_init test).
        let mut meta = minimal();
        meta.annotations = Some(BTreeMap::from([(
            "io.kubewarden.policy.author".to_owned(),
            "Flavio Castelli".to_owned(),
        )]));
        let text = String::from_utf8(meta.to_section_json()?)?;
        assert_eq!(
            text,
            r#"{"protocolVersion":"v1","rules":[{"apiGroups":[""],"apiVersions":["v1"],"resources":["pods"],"operations":["CREATE"]}],"annotations":{"io.kubewarden.policy.author":"Flavio Castelli"},"mutating":false,"backgroundAudit":true,"executionMode":"kubewarden-wapc","policyType":"kubernetes","contextAwareResources":[]}"#
        );
        Ok(())
    }

    #[test]
    fn reads_what_kwctl_writes() -> anyhow::Result<()> {
        // kwctl's annotations are a HashMap: any key order; older modules carry the
        // removed `contextAware` flag and no backgroundAudit.
        let written = json!({
            "protocolVersion": "v1",
            "rules": [],
            "annotations": {"io.kubewarden.kwctl": "1.36.0", "io.artifacthub.displayName": "X"},
            "mutating": true,
            "contextAware": false,
            "executionMode": "kubewarden-wapc",
            "hostCapabilities": ["oci/*"]
        });
        let meta: PolicyMetadata = serde_json::from_value(written)?;
        assert!(meta.mutating && meta.background_audit);
        assert_eq!(meta.execution_mode, ExecutionMode::KubewardenWapc);
        assert_eq!(meta.policy_type, PolicyType::Kubernetes);
        assert_eq!(meta.host_capabilities, Some(vec!["oci/*".to_owned()]));
        assert_eq!(
            meta.annotations
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_KWCTL_VERSION))
                .map(String::as_str),
            Some("1.36.0")
        );
        Ok(())
    }

    #[test]
    fn parses_this_repository_metadata() -> anyhow::Result<()> {
        let meta = PolicyMetadata::from_yaml(OUR_METADATA)?;
        assert!(meta.mutating);
        assert!(!meta.background_audit);
        assert_eq!(meta.execution_mode, ExecutionMode::KubewardenWapc);
        assert_eq!(
            meta.protocol_version, None,
            "set by annotate, not the author"
        );
        assert!(!meta.rules.is_empty());
        // Without a protocol version it is not yet valid; with one it is.
        assert!(meta.validate().is_err());
        let annotated = PolicyMetadata {
            protocol_version: Some(ProtocolVersion::V1),
            ..meta
        };
        annotated.validate()?;
        Ok(())
    }

    #[rstest]
    #[case::rules_missing("mutating: true\n", "missing field `rules`")]
    #[case::mutating_missing("rules: []\n", "missing field `mutating`")]
    #[case::unknown_operation(
        "rules: [{apiGroups: [''], apiVersions: [v1], resources: [pods], operations: [PATCH]}]\nmutating: true\n",
        "unknown variant `PATCH`"
    )]
    #[case::unknown_execution_mode(
        "rules: []\nmutating: true\nexecutionMode: kubewarden\n",
        "unknown variant `kubewarden`"
    )]
    #[case::annotation_not_a_string(
        "rules: []\nmutating: true\nannotations: {a: [1]}\n",
        "invalid type"
    )]
    fn refuses_malformed_yaml(#[case] yaml: &str, #[case] needle: &str) {
        match PolicyMetadata::from_yaml(yaml) {
            Err(Error::MetadataParse(m)) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    fn with_rule(edit: impl FnOnce(&mut Rule)) -> PolicyMetadata {
        let mut meta = minimal();
        edit(&mut meta.rules[0]);
        meta
    }

    #[rstest]
    #[case::valid(minimal(), None)]
    #[case::no_protocol(PolicyMetadata { protocol_version: None, ..minimal() }, Some("protocolVersion is required"))]
    #[case::unknown_protocol_wapc(PolicyMetadata { protocol_version: Some(ProtocolVersion::Unknown), ..minimal() },
        Some("valid protocol version"))]
    #[case::unknown_protocol_opa(PolicyMetadata { protocol_version: Some(ProtocolVersion::Unknown),
        execution_mode: ExecutionMode::Opa, ..minimal() }, None)]
    #[case::empty_groups(with_rule(|r| r.api_groups.clear()), Some("apiGroups must not be empty"))]
    #[case::star_and_group(with_rule(|r| r.api_groups = vec!["*".into(), "apps".into()]), Some("'*' is used"))]
    #[case::star_and_operation(with_rule(|r| r.operations = vec![Operation::All, Operation::Create]), Some("'*' is used"))]
    #[case::no_operations(with_rule(|r| r.operations.clear()), Some("operations must not be empty"))]
    #[case::star_slash_star_alone(with_rule(|r| r.resources = vec!["*/*".into(), "pods".into()]), Some("'*/*'"))]
    #[case::star_with_plain(with_rule(|r| r.resources = vec!["*".into(), "pods".into()]), Some("'*' is present"))]
    #[case::star_with_subresources(with_rule(|r| r.resources = vec!["*".into(), "a/b".into(), "a/*".into(), "*/b".into()]), None)]
    #[case::wildcard_sub_then_sub(with_rule(|r| r.resources = vec!["a/*".into(), "a/x".into()]), Some("'a/*'"))]
    #[case::wildcard_sub_and_plain(with_rule(|r| r.resources = vec!["a/*".into(), "a".into()]), None)]
    #[case::any_resource_then_same_sub(with_rule(|r| r.resources = vec!["*/a".into(), "x/a".into()]), Some("'*/a'"))]
    #[case::empty_resource(with_rule(|r| r.resources = vec![String::new()]), Some("empty resource"))]
    #[case::bad_context_aware(PolicyMetadata { context_aware_resources: BTreeSet::from([ContextAwareResource {
        api_version: "v1".into(), kind: String::new() }]), ..minimal() }, Some("contextAwareResources"))]
    #[case::bad_minimum_version(PolicyMetadata { minimum_kubewarden_version: Some("1.2".into()), ..minimal() },
        Some("not a semantic version"))]
    #[case::good_minimum_version(PolicyMetadata { minimum_kubewarden_version: Some("1.10.0-rc1".into()), ..minimal() }, None)]
    fn validates_like_kwctl(#[case] meta: PolicyMetadata, #[case] error: Option<&str>) {
        match (meta.validate(), error) {
            (Ok(()), None) => {}
            (Err(Error::MetadataInvalid(m)), Some(needle)) => {
                assert!(m.contains(needle), "{m:?} lacks {needle:?}")
            }
            (got, want) => panic!("got {got:?}, want error {want:?}"),
        }
    }

    fn with_mode(mode: ExecutionMode) -> PolicyMetadata {
        PolicyMetadata {
            execution_mode: mode,
            ..minimal()
        }
    }

    #[rstest]
    #[case::plain_module_defaults_to_wapc(None, None, ExecutionMode::KubewardenWapc)]
    #[case::plain_module_takes_the_flag(None, Some(ExecutionMode::Wasi), ExecutionMode::Wasi)]
    #[case::annotated_module_without_flag(
        Some(with_mode(ExecutionMode::Opa)),
        None,
        ExecutionMode::Opa
    )]
    #[case::the_flag_wins_over_the_metadata(
        Some(with_mode(ExecutionMode::KubewardenWapc)),
        Some(ExecutionMode::Opa),
        ExecutionMode::Opa
    )]
    fn resolves_execution_mode_like_kwctl_run(
        #[case] metadata: Option<PolicyMetadata>,
        #[case] flag: Option<ExecutionMode>,
        #[case] expected: ExecutionMode,
    ) {
        assert_eq!(resolve_execution_mode(metadata.as_ref(), flag), expected);
    }

    #[rstest]
    #[case("kubewarden", Some(ExecutionMode::KubewardenWapc))]
    #[case("opa", Some(ExecutionMode::Opa))]
    #[case("gatekeeper", Some(ExecutionMode::Gatekeeper))]
    #[case("wasi", Some(ExecutionMode::Wasi))]
    #[case("kubewarden-wapc", None)]
    fn maps_the_execution_mode_flag(#[case] value: &str, #[case] mode: Option<ExecutionMode>) {
        assert_eq!(ExecutionMode::from_cli(value), mode);
    }

    #[test]
    fn annotator_version_is_semver_and_names_both_tools() {
        let version = annotator_version();
        assert!(is_semver(&version), "{version}");
        assert!(version.starts_with("1.36.0+policy-runner."), "{version}");
    }
}
