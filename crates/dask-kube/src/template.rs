//! Pod templates as users write them for dask-kubernetes (`worker-spec.yml`): one YAML
//! document, `kind: Pod` (or no kind), a `spec` with containers. Checked here so a wrong
//! file fails before anything is created.

use crate::{Error, Result};
use serde_json::Value;
use std::path::Path;

/// A validated pod template (raw JSON, so fields this crate does not know survive).
#[derive(Debug, Clone, PartialEq)]
pub struct PodTemplate {
    /// The pod: `metadata` and `spec`.
    pub pod: Value,
    /// Where it came from, for messages (`worker-spec.yml`, `kubernetes.worker-template`).
    pub origin: String,
}

impl PodTemplate {
    /// Reads a template file.
    ///
    /// # Example
    /// ```no_run
    /// let template = dask_kube::PodTemplate::from_file("worker-spec.yml", "worker").unwrap();
    /// ```
    pub fn from_file(path: impl AsRef<Path>, what: &'static str) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(&text, &path.display().to_string(), what)
    }

    /// Parses a template from YAML text.
    ///
    /// # Example
    /// ```
    /// use dask_kube::PodTemplate;
    /// let t = PodTemplate::from_yaml(
    ///     "kind: Pod\nspec:\n  containers:\n  - name: w\n    image: ghcr.io/dask/dask\n",
    ///     "inline", "worker").unwrap();
    /// assert_eq!(t.pod["spec"]["containers"][0]["image"], "ghcr.io/dask/dask");
    /// assert!(PodTemplate::from_yaml("kind: Deployment\n", "inline", "worker").is_err());
    /// ```
    pub fn from_yaml(text: &str, origin: &str, what: &'static str) -> Result<Self> {
        let mut documents = Vec::new();
        for document in serde_norway::Deserializer::from_str(text) {
            let value: Value =
                serde::Deserialize::deserialize(document).map_err(|source| Error::Yaml {
                    origin: origin.to_owned(),
                    source,
                })?;
            if !value.is_null() {
                documents.push(value);
            }
        }
        let invalid = |reason: String| Error::InvalidTemplate {
            what,
            origin: origin.to_owned(),
            reason,
        };
        match documents.len() {
            0 => Err(invalid("the file is empty".into())),
            1 => Self::from_value(documents.remove(0), origin, what),
            n => Err(invalid(format!(
                "expected one pod, found {n} YAML documents"
            ))),
        }
    }

    /// Validates a template given as a value (`kubernetes.worker-template`).
    pub fn from_value(pod: Value, origin: &str, what: &'static str) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidTemplate {
            what,
            origin: origin.to_owned(),
            reason,
        };
        let Some(map) = pod.as_object() else {
            return Err(invalid(format!(
                "expected a pod (a mapping), found {}",
                kind_of(&pod)
            )));
        };
        match map.get("kind") {
            None | Some(Value::Null) => {}
            Some(Value::String(kind)) if kind == "Pod" => {}
            Some(Value::String(kind)) => {
                return Err(invalid(format!(
                    "kind is {kind:?}, but a template must be a Pod (kind: Pod)"
                )));
            }
            Some(other) => return Err(invalid(format!("kind must be a string, not {other}"))),
        }
        match map.get("apiVersion") {
            None | Some(Value::Null) => {}
            Some(Value::String(v)) if v == "v1" => {}
            Some(other) => return Err(invalid(format!("apiVersion must be v1, not {other}"))),
        }
        if let Some(metadata) = map.get("metadata")
            && !metadata.is_null()
            && !metadata.is_object()
        {
            return Err(invalid("metadata must be a mapping".into()));
        }
        let Some(spec) = map.get("spec").and_then(Value::as_object) else {
            return Err(invalid("spec is missing or not a mapping".into()));
        };
        let Some(containers) = spec.get("containers").and_then(Value::as_array) else {
            return Err(invalid("spec.containers is missing or not a list".into()));
        };
        if containers.is_empty() {
            return Err(invalid("spec.containers is empty".into()));
        }
        for (i, container) in containers.iter().enumerate() {
            let Some(container) = container.as_object() else {
                return Err(invalid(format!("spec.containers[{i}] is not a mapping")));
            };
            match container.get("image").and_then(Value::as_str) {
                Some(image) if !image.trim().is_empty() => {}
                _ => return Err(invalid(format!("spec.containers[{i}] has no image"))),
            }
        }
        // Validate the shape against the Kubernetes types now, not at the first API call.
        serde_json::from_value::<k8s_openapi::api::core::v1::Pod>(pod.clone())
            .map_err(|e| invalid(format!("not a valid pod: {e}")))?;
        Ok(PodTemplate {
            pod,
            origin: origin.to_owned(),
        })
    }

    /// The image of the first container.
    pub fn image(&self) -> Option<&str> {
        self.pod
            .pointer("/spec/containers/0/image")
            .and_then(Value::as_str)
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const WORKER_SPEC: &str = include_str!("../tests/fixtures/worker-spec.yml");

    #[test]
    fn reads_the_readme_worker_spec() {
        let t = PodTemplate::from_yaml(WORKER_SPEC, "worker-spec.yml", "worker").unwrap();
        assert_eq!(t.image(), Some("ghcr.io/dask/dask:latest"));
    }

    #[rstest]
    #[case::deployment("kind: Deployment\nspec: {}\n", "kind is \"Deployment\"")]
    #[case::list("- a\n- b\n", "found a list")]
    #[case::no_spec("kind: Pod\nmetadata: {}\n", "spec is missing")]
    #[case::no_containers("kind: Pod\nspec: {}\n", "spec.containers is missing")]
    #[case::empty_containers("kind: Pod\nspec:\n  containers: []\n", "spec.containers is empty")]
    #[case::no_image("kind: Pod\nspec:\n  containers:\n  - name: x\n", "has no image")]
    #[case::wrong_api_version(
        "apiVersion: apps/v1\nkind: Pod\nspec: {}\n",
        "apiVersion must be v1"
    )]
    #[case::two_documents("kind: Pod\n---\nkind: Pod\n", "found 2 YAML documents")]
    #[case::empty_file("", "the file is empty")]
    #[case::bad_field_type(
        "kind: Pod\nspec:\n  containers:\n  - name: x\n    image: i\n    args: 3\n",
        "not a valid pod"
    )]
    fn refuses_what_is_not_a_pod(#[case] yaml: &str, #[case] needle: &str) {
        let err = PodTemplate::from_yaml(yaml, "t.yml", "worker").unwrap_err();
        assert_eq!(err.exit_code(), crate::error::exit::USAGE);
        let text = err.to_string();
        assert!(text.contains(needle), "{text}");
        assert!(text.contains("t.yml"), "{text}");
    }

    #[test]
    fn invalid_yaml_names_the_file() {
        let err = PodTemplate::from_yaml("spec: [", "t.yml", "worker")
            .unwrap_err()
            .to_string();
        assert!(err.contains("t.yml is not valid YAML"), "{err}");
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = PodTemplate::from_file("/nonexistent/worker.yml", "worker")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/worker.yml"), "{err}");
    }
}
