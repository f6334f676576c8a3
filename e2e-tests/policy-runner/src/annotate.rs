//! `annotate`: writes a policy's metadata into its module, as `kwctl annotate` does.
//!
//! Same steps as kwctl: parse `metadata.yml`, find the protocol version (a waPC policy
//! is asked through its `protocol_version` export; other runtimes get `Unknown`), add
//! the annotator version and the optional usage text as annotations, validate, and store
//! the JSON in the `io.kubewarden.metadata` custom section. kwctl re-encodes the whole
//! module with walrus; this writes the section and leaves every other byte as it was.

use crate::metadata::{
    ANNOTATION_KWCTL_VERSION, ANNOTATION_POLICY_USAGE, ExecutionMode, METADATA_SECTION,
    PolicyMetadata, ProtocolVersion, annotator_version,
};
use crate::{Error, Result, wasm_section};

/// The module with its metadata, and the metadata as written.
#[derive(Debug, Clone)]
pub struct Annotated {
    /// The annotated module.
    pub module: Vec<u8>,
    /// What the custom section holds.
    pub metadata: PolicyMetadata,
}

/// Annotates `module` with `metadata_yaml`. `protocol_of` asks the module for its waPC
/// protocol version; it is only called for `executionMode: kubewarden-wapc`.
///
/// # Errors
/// [`Error::ModuleFormat`] when the module is not a binary module,
/// [`Error::MetadataParse`] / [`Error::MetadataInvalid`] when the metadata does not parse
/// or fails kwctl's checks or the protocol version cannot be found.
pub fn annotate(
    module: &[u8],
    metadata_yaml: &str,
    usage: Option<&str>,
    protocol_of: impl FnOnce(&[u8]) -> std::result::Result<ProtocolVersion, String>,
) -> Result<Annotated> {
    // Refuse a text-format or damaged module before running anything.
    wasm_section::custom_section(module, METADATA_SECTION)?;
    let mut metadata = PolicyMetadata::from_yaml(metadata_yaml)?;
    metadata.protocol_version = Some(match metadata.execution_mode {
        ExecutionMode::KubewardenWapc => protocol_of(module).map_err(|e| {
            Error::MetadataInvalid(format!(
                "cannot find out the policy's waPC protocol version: {e}"
            ))
        })?,
        ExecutionMode::Opa | ExecutionMode::Gatekeeper | ExecutionMode::Wasi => {
            ProtocolVersion::Unknown
        }
    });
    let mut annotations = metadata.annotations.take().unwrap_or_default();
    annotations.insert(ANNOTATION_KWCTL_VERSION.to_owned(), annotator_version());
    if let Some(usage) = usage {
        annotations.insert(ANNOTATION_POLICY_USAGE.to_owned(), usage.to_owned());
    }
    metadata.annotations = Some(annotations);
    metadata.validate()?;
    let json = metadata.to_section_json()?;
    let module = wasm_section::replace_custom_section(module, METADATA_SECTION, &json)?;
    Ok(Annotated { module, metadata })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty module: header only.
    const EMPTY_MODULE: &[u8] = b"\0asm\x01\0\0\0";

    const METADATA: &str =
        "rules: [{apiGroups: [''], apiVersions: [v1], resources: [pods], operations: [CREATE]}]
mutating: true
annotations:
  io.kubewarden.policy.title: test
  io.kubewarden.kwctl: NOT_VALID
";

    fn v1(_: &[u8]) -> std::result::Result<ProtocolVersion, String> {
        Ok(ProtocolVersion::V1)
    }

    #[test]
    fn writes_protocol_version_and_annotator_into_the_section() -> anyhow::Result<()> {
        let annotated = annotate(EMPTY_MODULE, METADATA, Some("# Usage"), v1)?;
        let stored = PolicyMetadata::from_module(&annotated.module)?
            .ok_or_else(|| anyhow::anyhow!("no metadata section"))?;
        assert_eq!(stored, annotated.metadata);
        assert_eq!(stored.protocol_version, Some(ProtocolVersion::V1));
        let annotations = stored.annotations.unwrap_or_default();
        // kwctl overwrites an annotator version the author wrote.
        assert_eq!(
            annotations.get(ANNOTATION_KWCTL_VERSION),
            Some(&annotator_version())
        );
        assert_eq!(
            annotations.get(ANNOTATION_POLICY_USAGE).map(String::as_str),
            Some("# Usage")
        );
        assert_eq!(
            annotations
                .get("io.kubewarden.policy.title")
                .map(String::as_str),
            Some("test")
        );
        Ok(())
    }

    #[test]
    fn other_runtimes_are_not_asked_for_a_protocol() -> anyhow::Result<()> {
        let yaml = format!("{METADATA}executionMode: wasi\n");
        let annotated = annotate(EMPTY_MODULE, &yaml, None, |_| {
            Err("must not be called".to_owned())
        })?;
        assert_eq!(
            annotated.metadata.protocol_version,
            Some(ProtocolVersion::Unknown)
        );
        Ok(())
    }

    #[test]
    fn a_failing_protocol_check_is_reported() {
        let result = annotate(EMPTY_MODULE, METADATA, None, |_| {
            Err("no wapc_init export".to_owned())
        });
        match result {
            Err(Error::MetadataInvalid(m)) => assert!(m.contains("no wapc_init export"), "{m}"),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn unknown_protocol_of_a_wapc_policy_is_invalid() {
        let result = annotate(EMPTY_MODULE, METADATA, None, |_| {
            Ok(ProtocolVersion::Unknown)
        });
        assert!(
            matches!(&result, Err(Error::MetadataInvalid(m)) if m.contains("valid protocol version")),
            "{result:?}"
        );
    }

    #[test]
    fn text_format_is_refused_before_running_anything() {
        let result = annotate(b"(module)", METADATA, None, |_| {
            Err("must not be called".to_owned())
        });
        assert!(matches!(result, Err(Error::ModuleFormat(_))), "{result:?}");
    }
}
