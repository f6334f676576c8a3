//! The CustomResourceDefinitions to install: what kube's derive generates from
//! [`crate::operator::resources`], with the subresources and root schema set as upstream's CRDs have them.
//!
//! kube's derive ties the status subresource to having a status type, and drops the scale
//! subresource when there is none; upstream's `DaskCluster` and `DaskWorkerGroup` have a status
//! field but only the scale subresource (the operator writes their status with an ordinary
//! patch), `DaskAutoscaler` has neither and `DaskJob` only status. Those, and the root
//! schema's derive-only extras (`title`, a generated `description`, `nullable` status), are
//! set here.

use crate::operator::resources::{DaskAutoscaler, DaskCluster, DaskJob, DaskWorkerGroup};
use crate::{Error, Result};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceSubresourceScale, CustomResourceSubresourceStatus,
    CustomResourceSubresources,
};
use kube::CustomResourceExt;
use serde_json::json;

/// The subresources a CRD has upstream.
#[derive(Clone, Copy)]
enum Subresources {
    /// `scale` on `.spec.worker.replicas`, no `status` subresource.
    WorkerScale,
    /// `status` only.
    Status,
    /// None.
    None,
}

/// The four CRDs, in the order `kubectl apply` should see them (a `DaskCluster` first: the
/// others refer to it).
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        upstream_shape(DaskCluster::crd(), Subresources::WorkerScale),
        upstream_shape(DaskWorkerGroup::crd(), Subresources::WorkerScale),
        upstream_shape(DaskAutoscaler::crd(), Subresources::None),
        upstream_shape(DaskJob::crd(), Subresources::Status),
    ]
}

/// The CRDs as one multi-document YAML stream, ready for `kubectl apply -f -`.
///
/// # Errors
/// Only if serialisation fails, which would be a bug in the types.
pub fn crds_yaml() -> Result<String> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_norway::to_string(&crd).map_err(|e| Error::Render {
            what: "CustomResourceDefinition",
            reason: e.to_string(),
        })?);
    }
    Ok(out)
}

fn upstream_shape(
    mut crd: CustomResourceDefinition,
    subresources: Subresources,
) -> CustomResourceDefinition {
    for version in &mut crd.spec.versions {
        version.subresources = match subresources {
            Subresources::WorkerScale => Some(CustomResourceSubresources {
                scale: Some(CustomResourceSubresourceScale {
                    label_selector_path: None,
                    spec_replicas_path: ".spec.worker.replicas".into(),
                    status_replicas_path: ".status.replicas".into(),
                }),
                status: None,
            }),
            Subresources::Status => Some(CustomResourceSubresources {
                scale: None,
                status: Some(CustomResourceSubresourceStatus(json!({}))),
            }),
            Subresources::None => None,
        };
        let root = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut());
        if let Some(root) = root {
            root.title = None;
            root.description = None;
            if let Some(status) = root.properties.as_mut().and_then(|p| p.get_mut("status")) {
                status.nullable = None;
            }
        }
    }
    crd
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use rstest::rstest;
    use serde_json::Value;
    use std::collections::BTreeSet;
    use std::path::Path;

    /// Where ours keeps raw JSON and upstream inlines the Kubernetes 1.21 PodSpec or
    /// ServiceSpec schema (schema paths, `properties` left out).
    const RAW_NODES: &[(&str, &[&str])] = &[
        (
            "daskclusters",
            &[
                "spec.scheduler.spec",
                "spec.scheduler.service",
                "spec.worker.spec",
            ],
        ),
        ("daskworkergroups", &["spec.worker.spec"]),
        ("daskautoscalers", &[]),
        (
            "daskjobs",
            &[
                "spec.job.spec",
                "spec.cluster.spec.scheduler.spec",
                "spec.cluster.spec.scheduler.service",
                "spec.cluster.spec.worker.spec",
            ],
        ),
    ];

    /// Defaults inside upstream's inlined pod specs that ours need not repeat: the Pod API
    /// sets `protocol: TCP` on every port itself (upstream declares it only because its
    /// inlined schema makes ports a list-map keyed by protocol).
    const DEFAULTS_THE_POD_API_SETS: &[(&str, &str)] = &[("protocol", "\"TCP\"")];

    /// Differences we keep on purpose, besides the raw nodes: kube's typed resources need a
    /// `spec`, so every root requires it (upstream requires it of DaskCluster only; an
    /// object without one fails upstream's handlers with a KeyError).
    const ROOT_REQUIRES_SPEC: &[&str] = &["daskworkergroups", "daskautoscalers", "daskjobs"];

    fn upstream(plural: &str) -> Value {
        let file = plural.trim_end_matches('s').to_owned() + ".yaml";
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/operator/upstream-2026.3.0/crds")
            .join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        serde_norway::from_str(&text).unwrap()
    }

    fn ours(plural: &str) -> Value {
        let crd = crds()
            .into_iter()
            .find(|c| c.spec.names.plural == plural)
            .unwrap();
        serde_json::to_value(crd).unwrap()
    }

    /// Every `default` under `node`, as (property name, JSON value).
    fn defaults_under(node: &Value, out: &mut BTreeSet<(String, String)>, name: &str) {
        match node {
            Value::Object(map) => {
                if let Some(default) = map.get("default") {
                    out.insert((name.to_owned(), default.to_string()));
                }
                for (key, child) in map {
                    let child_name = if key == "properties" { name } else { key };
                    if key == "properties" {
                        if let Value::Object(props) = child {
                            for (prop, schema) in props {
                                defaults_under(schema, out, prop);
                            }
                        }
                    } else {
                        defaults_under(child, out, child_name);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| defaults_under(i, out, name)),
            _ => {}
        }
    }

    /// Compares two schema nodes; pushes every difference (with its path) to `diffs` and
    /// every raw node of ours to `raw`. Descriptions are documentation, not schema: ours
    /// come from the doc comments, upstream's generator dropped most of theirs.
    fn compare(
        path: &str,
        ours: &Value,
        theirs: &Value,
        diffs: &mut Vec<String>,
        raw: &mut Vec<String>,
    ) {
        if ours.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
            && theirs.get("x-kubernetes-preserve-unknown-fields").is_none()
        {
            raw.push(path.to_owned());
            if ours.get("type") != theirs.get("type") {
                diffs.push(format!(
                    "{path}: type {:?} vs {:?}",
                    ours["type"], theirs["type"]
                ));
            }
            let required = |v: &Value| -> BTreeSet<String> {
                v.get("required")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().map(ToString::to_string).collect())
                    .unwrap_or_default()
            };
            if required(ours) != required(theirs) {
                diffs.push(format!(
                    "{path}: required {:?} vs {:?}",
                    required(ours),
                    required(theirs)
                ));
            }
            let (mut mine, mut upstream) = (BTreeSet::new(), BTreeSet::new());
            defaults_under(ours, &mut mine, "");
            defaults_under(theirs, &mut upstream, "");
            for (name, value) in upstream.difference(&mine) {
                if !DEFAULTS_THE_POD_API_SETS.contains(&(name.as_str(), value.as_str())) {
                    diffs.push(format!(
                        "{path}: upstream defaults {name} to {value}, ours does not"
                    ));
                }
            }
            for (name, value) in mine.difference(&upstream) {
                diffs.push(format!(
                    "{path}: ours defaults {name} to {value}, upstream does not"
                ));
            }
            return;
        }
        match (ours, theirs) {
            (Value::Object(a), Value::Object(b)) => {
                let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                for key in keys {
                    if key == "description" && path.contains("openAPIV3Schema") {
                        continue;
                    }
                    let child = if key == "properties" {
                        path.to_owned()
                    } else {
                        format!("{path}.{key}")
                    };
                    match (a.get(key), b.get(key)) {
                        (Some(x), Some(y)) if key == "required" => {
                            let set = |v: &Value| -> BTreeSet<String> {
                                v.as_array()
                                    .map(|a| a.iter().map(ToString::to_string).collect())
                                    .unwrap_or_default()
                            };
                            if set(x) != set(y) {
                                diffs.push(format!("{child}: {x} vs {y}"));
                            }
                        }
                        (Some(x), Some(y)) => compare(&child, x, y, diffs, raw),
                        (Some(x), None) => diffs.push(format!("{child}: only ours, {x}")),
                        (None, Some(y)) => {
                            let shown: String = y.to_string().chars().take(120).collect();
                            diffs.push(format!("{child}: only upstream's, {shown}"));
                        }
                        (None, None) => {}
                    }
                }
            }
            (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
                for (i, (x, y)) in a.iter().zip(b).enumerate() {
                    compare(&format!("{path}[{i}]"), x, y, diffs, raw);
                }
            }
            (a, b) if a != b => diffs.push(format!("{path}: {a} vs {b}")),
            _ => {}
        }
    }

    /// Our CRDs are upstream's: names, scope, versions, printer columns, short names,
    /// subresources, and the schema node by node, except where ours keeps pod and service
    /// specs raw (listed in `RAW_NODES`, checked to require and default what upstream's do)
    /// and the root's required `spec`.
    #[rstest]
    #[case::daskcluster("daskclusters")]
    #[case::daskworkergroup("daskworkergroups")]
    #[case::daskautoscaler("daskautoscalers")]
    #[case::daskjob("daskjobs")]
    fn crd_is_upstreams_but_for_raw_pod_specs(#[case] plural: &str) {
        let (mine, theirs) = (ours(plural), upstream(plural));
        let (mut diffs, mut raw) = (Vec::new(), Vec::new());
        compare("", &mine, &theirs, &mut diffs, &mut raw);
        let root_required =
            ".spec.versions[0].schema.openAPIV3Schema.required: only ours, [\"spec\"]";
        if ROOT_REQUIRES_SPEC.contains(&plural) {
            let before = diffs.len();
            diffs.retain(|d| d != root_required);
            assert_eq!(before - 1, diffs.len(), "the root requires spec");
        }
        assert!(
            diffs.is_empty(),
            "{plural} differs from upstream:\n{}",
            diffs.join("\n")
        );
        let prefix = ".spec.versions[0].schema.openAPIV3Schema.";
        let raw: Vec<String> = raw
            .iter()
            .map(|p| p.trim_start_matches(prefix).to_owned())
            .collect();
        let raw: BTreeSet<String> = raw.into_iter().collect();
        let expected = RAW_NODES.iter().find(|(p, _)| *p == plural).unwrap().1;
        let expected: BTreeSet<String> = expected.iter().map(|p| (*p).to_owned()).collect();
        assert_eq!(raw, expected, "raw pod/service specs of {plural}");
    }

    /// The YAML stream holds the four CRDs and reads back as what `crds()` returns.
    #[test]
    fn yaml_stream_reads_back() {
        let yaml = crds_yaml().unwrap();
        let docs: Vec<CustomResourceDefinition> = yaml
            .split("---\n")
            .filter(|d| !d.trim().is_empty())
            .map(|d| serde_norway::from_str(d).unwrap())
            .collect();
        assert_eq!(docs, crds());
    }
}
