//! Policy settings as kwctl takes them: a JSON object from `--settings-json`, or a
//! YAML (or JSON) file from `--settings-path`; none means `{}`.

use std::path::Path;

use serde_json::{Map, Value};

use crate::admission::json_type;
use crate::{Error, Result};

/// The settings map handed to `validate_settings` and, with every request, to
/// `validate` (policy-evaluator's `PolicySettings`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings(Map<String, Value>);

impl Settings {
    /// `{}`: what a policy gets when no settings are given.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Parses `--settings-json`.
    pub fn from_json_str(json: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(json).map_err(|e| Error::SettingsParse {
            origin: "--settings-json".to_owned(),
            message: e.to_string(),
        })?;
        Self::from_value(value, "--settings-json")
    }

    /// Parses a settings document in YAML (JSON is valid YAML); an empty document is `{}`.
    pub fn from_yaml_str(yaml: &str, origin: &str) -> Result<Self> {
        if yaml.trim().is_empty() {
            return Ok(Self::empty());
        }
        let value: Value = serde_norway::from_str(yaml).map_err(|e| Error::SettingsParse {
            origin: origin.to_owned(),
            message: e.to_string(),
        })?;
        Self::from_value(value, origin)
    }

    /// Reads `--settings-path`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_yaml_str(&text, &path.display().to_string())
    }

    /// A map is required; `null` (an empty YAML document) counts as `{}`.
    pub fn from_value(value: Value, origin: &str) -> Result<Self> {
        match value {
            Value::Object(map) => Ok(Self(map)),
            Value::Null => Ok(Self::empty()),
            other => Err(Error::SettingsParse {
                origin: origin.to_owned(),
                message: format!("settings must be a map, got {}", json_type(&other)),
            }),
        }
    }

    /// The settings as a JSON value.
    pub fn to_value(&self) -> Value {
        Value::Object(self.0.clone())
    }

    /// The settings map.
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use serde_json::json;

    #[rstest]
    #[case::json_object(r#"{"onMismatch":"warn"}"#, Some(json!({"onMismatch": "warn"})))]
    #[case::empty_object("{}", Some(json!({})))]
    #[case::null_is_empty("null", Some(json!({})))]
    #[case::array_is_refused("[1]", None)]
    #[case::string_is_refused(r#""x""#, None)]
    #[case::invalid_json("{", None)]
    fn parses_settings_json(#[case] input: &str, #[case] expected: Option<Value>) {
        match (Settings::from_json_str(input), expected) {
            (Ok(s), Some(v)) => assert_eq!(s.to_value(), v),
            (Err(e), None) => assert!(e.to_string().contains("--settings-json"), "{e}"),
            (got, want) => panic!("{input:?}: got {got:?}, want {want:?}"),
        }
    }

    #[rstest]
    #[case::yaml_map("a: 1\nb: [x]\n", Some(json!({"a": 1, "b": ["x"]})))]
    #[case::json_in_yaml(r#"{"a": true}"#, Some(json!({"a": true})))]
    #[case::empty_file("", Some(json!({})))]
    #[case::comment_only("# nothing\n", Some(json!({})))]
    #[case::list_is_refused("- a\n", None)]
    fn parses_settings_yaml(#[case] input: &str, #[case] expected: Option<Value>) {
        match (Settings::from_yaml_str(input, "s.yaml"), expected) {
            (Ok(s), Some(v)) => assert_eq!(s.to_value(), v),
            (Err(e), None) => assert!(e.to_string().contains("s.yaml"), "{e}"),
            (got, want) => panic!("{input:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn reads_settings_file() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("settings.yaml");
        std::fs::write(&path, "onMismatch: warn\n")?;
        assert_eq!(
            Settings::from_file(&path)?.to_value(),
            json!({"onMismatch": "warn"})
        );
        let missing = Settings::from_file(&dir.path().join("nope.yaml"));
        assert!(matches!(missing, Err(Error::Io { .. })), "{missing:?}");
        Ok(())
    }
}
