//! The metadata `kwctl annotate` writes into a module, read back the way policy-server
//! reads it: `serve` takes from it whether the policy may mutate and which runtime it needs.
//!
//! `kwctl annotate -m metadata.yml -o annotated.wasm policy.wasm` stores policy-evaluator's
//! `Metadata` as compact JSON in the custom section `io.kubewarden.metadata`. Only the
//! fields `serve` acts on are read here; every other field is ignored.

use std::fmt;

use serde::Deserialize;

use crate::{Error, Result, wasm_section};

/// Name of the custom section holding the metadata (policy-evaluator's
/// `KUBEWARDEN_CUSTOM_SECTION_METADATA`).
pub const METADATA_SECTION: &str = "io.kubewarden.metadata";

/// The runtime a policy needs (policy-evaluator's `PolicyExecutionMode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum PolicyType {
    /// AdmissionRequests.
    #[default]
    #[serde(rename = "kubernetes")]
    Kubernetes,
    /// Arbitrary JSON (`kwctl run --raw`).
    #[serde(rename = "raw")]
    Raw,
}

/// The parts of an annotated module's metadata that `serve` acts on.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyMetadata {
    /// Whether the policy may return a mutated object (required).
    pub mutating: bool,
    /// The runtime the policy needs.
    #[serde(default)]
    pub execution_mode: ExecutionMode,
    /// Admission requests or raw JSON.
    #[serde(default)]
    pub policy_type: PolicyType,
}

impl PolicyMetadata {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_what_kwctl_writes() -> anyhow::Result<()> {
        // kwctl 1.36's section for this repository's policy-metadata.yml (abridged), with
        // a field older modules carry (`contextAware`).
        let written = json!({
            "protocolVersion": "v1",
            "rules": [],
            "annotations": {"io.kubewarden.kwctl": "1.36.0-beta.1"},
            "mutating": true,
            "backgroundAudit": false,
            "contextAware": false,
            "executionMode": "kubewarden-wapc",
            "policyType": "kubernetes",
            "contextAwareResources": []
        });
        let meta: PolicyMetadata = serde_json::from_value(written)?;
        assert_eq!(
            meta,
            PolicyMetadata {
                mutating: true,
                execution_mode: ExecutionMode::KubewardenWapc,
                policy_type: PolicyType::Kubernetes,
            }
        );
        let opa: PolicyMetadata =
            serde_json::from_value(json!({"mutating": false, "executionMode": "opa"}))?;
        assert_eq!(opa.execution_mode, ExecutionMode::Opa);
        Ok(())
    }

    #[test]
    fn a_section_without_mutating_is_refused() {
        let err = serde_json::from_value::<PolicyMetadata>(json!({"rules": []}));
        assert!(err.is_err(), "{err:?}");
    }
}
