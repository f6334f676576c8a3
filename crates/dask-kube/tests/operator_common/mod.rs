//! Shared by the operator's test files: the rules of its Role, as the RBAC manifests must
//! grant them, and the manifests themselves.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a failed step fails the test

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Every (resource, verb) the operator's Role and ClusterRole grant, each proven needed by
/// `every_rule_of_the_operator_role_is_needed` (tests/operator_cluster.rs). A rule added to the
/// manifests must be added here, and the cluster test then proves it.
pub const OPERATOR_RULES: &[(&str, &str)] = &[
    ("daskclusters", "list"),
    ("daskclusters", "watch"),
    ("daskclusters", "create"),
    ("daskclusters", "patch"),
    ("daskclusters", "delete"),
    ("daskworkergroups", "list"),
    ("daskworkergroups", "watch"),
    ("daskworkergroups", "create"),
    ("daskworkergroups", "patch"),
    ("daskautoscalers", "list"),
    ("daskautoscalers", "watch"),
    ("daskautoscalers", "patch"),
    ("daskjobs", "list"),
    ("daskjobs", "watch"),
    ("daskjobs/status", "patch"),
    ("pods", "list"),
    ("pods", "watch"),
    ("pods", "create"),
    ("pods", "delete"),
    ("pods", "patch"),
    ("deployments", "list"),
    ("deployments", "watch"),
    ("deployments", "create"),
    ("services", "list"),
    ("services", "watch"),
    ("services", "create"),
    ("events", "create"),
];

/// Rules the manifests grant for what a cluster run does not meet: `get pods` looks up a
/// pod whose creation's answer was lost (or whose name was taken) before it is sent again,
/// so a retry never makes a second worker. Proven by dask-kube's mock tests
/// (`src/apiserver/create.rs`: `a_lost_answer_is_looked_up_not_repeated`,
/// `creation_retries_throttling_and_conflicts_without_duplicates`), not by removing it from
/// a Role on the cluster (`every_rule_of_the_operator_role_is_needed` skips these).
pub const RULES_FOR_LOST_ANSWERS: &[(&str, &str)] = &[("pods", "get")];

/// A file of the operator's `deploy/operator/` directory.
pub fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/operator")
        .join(file)
}

/// The documents of a multi-document YAML file.
pub fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    text.split("\n---")
        .map(|d| d.trim_start_matches("---"))
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .map(|d| serde_norway::from_str(d).unwrap())
        .collect()
}

/// The (resource, verb) pairs a Role or ClusterRole document grants.
pub fn granted(role: &Value) -> BTreeSet<(String, String)> {
    role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|rule| {
            let verbs: Vec<String> = rule["verbs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect();
            rule["resources"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(move |r| {
                    let r = r.as_str().unwrap().to_owned();
                    verbs.clone().into_iter().map(move |v| (r.clone(), v))
                })
        })
        .collect()
}

/// [`OPERATOR_RULES`] and [`RULES_FOR_LOST_ANSWERS`] as a set: what the manifests grant.
pub fn listed() -> BTreeSet<(String, String)> {
    OPERATOR_RULES
        .iter()
        .chain(RULES_FOR_LOST_ANSWERS)
        .map(|(r, v)| ((*r).to_owned(), (*v).to_owned()))
        .collect()
}
