//! Equality-based label selectors (`app=dask,component=dask-worker`), as `kubectl -l`
//! writes them, to decide which pods are Dask worker pods.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;
use std::str::FromStr;

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

/// A label selector: every requirement must hold (comma means AND).
///
/// # Example
/// ```
/// use dask_worker_spec::LabelSelector;
/// let selector: LabelSelector = "app=dask,component=dask-worker".parse().unwrap();
/// let labels = serde_json::json!({"app": "dask", "component": "dask-worker"});
/// assert!(selector.matches(labels.as_object()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LabelSelector {
    text: String,
    requirements: Vec<Requirement>,
}

/// Why a selector string is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid label selector {selector:?}: {reason}")]
pub struct SelectorError {
    selector: String,
    reason: String,
}

impl LabelSelector {
    /// The selector `text`, whose equalities are `pairs`, for built-in defaults known to be
    /// valid: no parsing, since settings are defaulted on every admission request (a test
    /// checks each use against the parser).
    pub(crate) fn from_valid_equalities(text: &str, pairs: &[(&str, &str)]) -> Self {
        LabelSelector {
            text: text.to_owned(),
            requirements: pairs
                .iter()
                .map(|(k, v)| Requirement::Equals((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    /// Whether `labels` (a pod's `metadata.labels`, possibly absent) satisfy the selector.
    pub fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        let get = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
        })
    }

    /// The `key=value` pairs of the selector's equality requirements, for building
    /// Kubernetes `matchLabels` or labelling new pods.
    pub fn equalities(&self) -> impl Iterator<Item = (&str, &str)> {
        self.requirements.iter().filter_map(|r| match r {
            Requirement::Equals(k, v) => Some((k.as_str(), v.as_str())),
            _ => None,
        })
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl From<LabelSelector> for String {
    fn from(selector: LabelSelector) -> String {
        selector.text
    }
}

impl TryFrom<String> for LabelSelector {
    type Error = SelectorError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl FromStr for LabelSelector {
    type Err = SelectorError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = |reason: String| SelectorError {
            selector: text.to_owned(),
            reason,
        };
        if text.trim().is_empty() {
            return Err(error("it is empty and would match every pod".into()));
        }
        let mut requirements = Vec::new();
        for part in text.split(',').map(str::trim) {
            let requirement = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Equals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::NotExists(k.trim().to_owned())
            } else {
                Requirement::Exists(part.to_owned())
            };
            let (key, value) = match &requirement {
                Requirement::Equals(k, v) | Requirement::NotEquals(k, v) => (k, Some(v)),
                Requirement::Exists(k) | Requirement::NotExists(k) => (k, None),
            };
            validate_label_key(key).map_err(|r| error(format!("key {key:?} {r}")))?;
            if let Some(value) = value {
                validate_label_value(value).map_err(|r| error(format!("value {value:?} {r}")))?;
            }
            requirements.push(requirement);
        }
        Ok(LabelSelector {
            text: text.to_owned(),
            requirements,
        })
    }
}

fn is_name_part(s: &str, max: usize) -> Result<(), String> {
    if s.is_empty() || s.len() > max {
        return Err(format!("must be 1 to {max} characters"));
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !alnum(s.chars().next()) || !alnum(s.chars().last()) {
        return Err("must start and end with a letter or digit".into());
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err("may contain only letters, digits, '-', '_' and '.'".into());
    }
    Ok(())
}

/// Validates a label key: `[prefix/]name`, prefix a DNS subdomain.
pub fn validate_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && (prefix.is_empty()
            || prefix.len() > 253
            || !prefix.split('.').all(|l| {
                !l.is_empty()
                    && l.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            }))
    {
        return Err("has an invalid prefix (must be a lowercase DNS subdomain)".into());
    }
    is_name_part(name, 63)
}

/// Validates a label value (may be empty).
pub fn validate_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    is_name_part(value, 63)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use serde_json::json;

    #[rstest]
    #[case::modern_label("dask.org/component=worker", json!({"dask.org/component": "worker"}), true)]
    #[case::wrong_value("dask.org/component=worker", json!({"dask.org/component": "scheduler"}), false)]
    #[case::classic_both("app=dask,component=dask-worker", json!({"app": "dask", "component": "dask-worker"}), true)]
    #[case::classic_half("app=dask,component=dask-worker", json!({"app": "dask"}), false)]
    #[case::double_equals("app==dask", json!({"app": "dask"}), true)]
    #[case::not_equals("app!=dask", json!({"app": "web"}), true)]
    #[case::not_equals_absent("app!=dask", json!({}), true)]
    #[case::exists("dask.org/cluster-name", json!({"dask.org/cluster-name": "x"}), true)]
    #[case::not_exists("!dask.org/cluster-name", json!({"dask.org/cluster-name": "x"}), false)]
    #[case::spaces(" app = dask , component = dask-worker ", json!({"app": "dask", "component": "dask-worker"}), true)]
    fn matches(#[case] selector: &str, #[case] labels: Value, #[case] expected: bool) {
        let selector: LabelSelector = selector.parse().expect("valid");
        assert_eq!(selector.matches(labels.as_object()), expected);
    }

    #[rstest]
    #[case::empty("")]
    #[case::bad_key_chars("da$k=worker")]
    #[case::bad_prefix("Dask.Org/component=worker")]
    #[case::empty_key("=worker")]
    #[case::long_value(
        "a=bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
    )]
    #[case::trailing_comma("app=dask,")]
    fn rejects(#[case] selector: &str) {
        assert!(selector.parse::<LabelSelector>().is_err(), "{selector}");
    }

    #[test]
    fn no_labels_matches_only_negative_selectors() {
        let positive: LabelSelector = "app=dask".parse().expect("valid");
        let negative: LabelSelector = "!app".parse().expect("valid");
        assert!(!positive.matches(None));
        assert!(negative.matches(None));
    }
}
