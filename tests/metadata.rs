//! `policy-metadata.yml` and `artifacthub-pkg.yml` agree with the crate and with the kinds
//! the policy really handles, so a release cannot ship rules that miss a kind (the kind
//! would silently go undefaulted) or a version that does not match the module.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test helpers outside #[test] fns

use dask_worker_spec::TEMPLATE_LOCATIONS;
use serde::Deserialize;
use serde_norway::Value;
use std::collections::BTreeSet;

#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Rule {
    api_groups: Vec<String>,
    api_versions: Vec<String>,
    resources: Vec<String>,
    operations: Vec<String>,
}

fn read_yaml(name: &str) -> Value {
    let path = format!("{}/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn metadata_rules() -> Vec<Rule> {
    serde_norway::from_value(read_yaml("policy-metadata.yml")["rules"].clone()).expect("rules")
}

fn annotation<'a>(doc: &'a Value, key: &str) -> &'a str {
    doc["annotations"][key]
        .as_str()
        .unwrap_or_else(|| panic!("annotation {key} missing"))
}

/// `(group, resource, operation)` triples the rules let through.
fn covered(rules: &[Rule]) -> BTreeSet<(String, String, String)> {
    rules
        .iter()
        .flat_map(|r| {
            r.api_groups.iter().flat_map(move |g| {
                r.resources.iter().flat_map(move |res| {
                    r.operations
                        .iter()
                        .map(move |op| (g.clone(), res.clone(), op.clone()))
                })
            })
        })
        .collect()
}

#[test]
fn rules_cover_exactly_the_kinds_and_operations_the_policy_defaults() {
    let wanted: BTreeSet<(String, String, String)> = TEMPLATE_LOCATIONS
        .iter()
        .flat_map(|l| {
            l.operations.iter().map(move |op| {
                (
                    l.group.to_owned(),
                    format!("{}s", l.kind.to_lowercase()),
                    (*op).to_owned(),
                )
            })
        })
        .collect();
    assert_eq!(covered(&metadata_rules()), wanted);
}

#[test]
fn metadata_declares_a_pure_mutating_wapc_policy_at_the_crate_version() {
    let doc = read_yaml("policy-metadata.yml");
    assert_eq!(doc["mutating"], Value::Bool(true));
    assert_eq!(doc["executionMode"].as_str(), Some("kubewarden-wapc"));
    assert_eq!(doc["backgroundAudit"], Value::Bool(false));
    assert_eq!(doc["contextAwareResources"], Value::Sequence(vec![]));
    assert_eq!(
        annotation(&doc, "io.kubewarden.policy.version"),
        env!("CARGO_PKG_VERSION")
    );
    for key in [
        "io.artifacthub.displayName",
        "io.artifacthub.resources",
        "io.artifacthub.keywords",
        "io.kubewarden.policy.ociUrl",
        "io.kubewarden.policy.title",
        "io.kubewarden.policy.description",
        "io.kubewarden.policy.author",
        "io.kubewarden.policy.url",
        "io.kubewarden.policy.source",
        "io.kubewarden.policy.license",
        "io.kubewarden.policy.severity",
        "io.kubewarden.policy.category",
    ] {
        assert!(!annotation(&doc, key).trim().is_empty(), "{key} is empty");
    }
    assert_eq!(
        annotation(&doc, "io.kubewarden.policy.license"),
        env!("CARGO_PKG_LICENSE")
    );
}

#[test]
fn artifacthub_package_matches_the_metadata() {
    let pkg = read_yaml("artifacthub-pkg.yml");
    let meta = read_yaml("policy-metadata.yml");
    for field in [
        "version",
        "name",
        "displayName",
        "createdAt",
        "description",
        "license",
        "homeURL",
        "containersImages",
        "keywords",
        "links",
        "install",
        "maintainers",
        "provider",
        "recommendations",
        "annotations",
    ] {
        assert!(!pkg[field].is_null(), "artifacthub-pkg.yml lacks {field}");
    }
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(pkg["version"].as_str(), Some(version));
    assert_eq!(pkg["name"].as_str(), Some(env!("CARGO_PKG_NAME")));
    assert_eq!(pkg["license"].as_str(), Some(env!("CARGO_PKG_LICENSE")));
    assert_eq!(
        pkg["displayName"].as_str(),
        Some(annotation(&meta, "io.artifacthub.displayName"))
    );
    let image = pkg["containersImages"][0]["image"].as_str().expect("image");
    assert_eq!(
        image,
        format!(
            "{}:v{version}",
            annotation(&meta, "io.kubewarden.policy.ociUrl")
        )
    );
    assert_eq!(annotation(&pkg, "kubewarden/mutation"), "true");
    assert_eq!(
        annotation(&pkg, "kubewarden/resources"),
        annotation(&meta, "io.artifacthub.resources")
    );
    let pkg_rules: Vec<Rule> =
        serde_norway::from_str(annotation(&pkg, "kubewarden/rules")).expect("kubewarden/rules");
    assert_eq!(pkg_rules, metadata_rules());
    let keywords: Vec<String> =
        serde_norway::from_value(pkg["keywords"].clone()).expect("keywords");
    let meta_keywords: Vec<String> = annotation(&meta, "io.artifacthub.keywords")
        .split(',')
        .map(|k| k.trim().to_owned())
        .collect();
    assert_eq!(keywords, meta_keywords);
    assert!(
        pkg["install"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("v{version}")),
        "install instructions name another version"
    );
}

#[test]
fn readme_worker_spec_is_the_documented_template() {
    let spec = read_yaml("worker-spec.yml");
    let container = &spec["spec"]["containers"][0];
    assert_eq!(
        spec["metadata"]["labels"]["dask.org/component"].as_str(),
        Some("worker")
    );
    assert_eq!(spec["spec"]["restartPolicy"].as_str(), Some("Never"));
    assert!(
        container["image"]
            .as_str()
            .unwrap_or_default()
            .starts_with("ghcr.io/dask/dask")
    );
    let args: Vec<String> = serde_norway::from_value(container["args"].clone()).expect("args");
    assert_eq!(&args[..2], ["dask", "worker"]);
    for limits in ["limits", "requests"] {
        assert_eq!(container["resources"][limits]["cpu"].as_str(), Some("2"));
        assert_eq!(
            container["resources"][limits]["memory"].as_str(),
            Some("6G")
        );
    }
}

/// The `run` scripts of the release job's steps, in order.
fn release_steps(workflow: &Value) -> Vec<String> {
    workflow["jobs"]["release"]["steps"]
        .as_sequence()
        .expect("release steps")
        .iter()
        .filter_map(|s| s["run"].as_str().map(str::to_owned))
        .collect()
}

/// Index of the first step whose script contains `needle`.
fn step_with(steps: &[String], needle: &str) -> usize {
    steps
        .iter()
        .position(|s| s.contains(needle))
        .unwrap_or_else(|| panic!("no release step runs {needle:?}"))
}

#[test]
fn release_workflow_builds_tests_annotates_signs_and_attaches_an_sbom_in_order() {
    let workflow = read_yaml(".github/workflows/release.yml");
    let steps = release_steps(&workflow);
    let order = [
        "cosign verify-blob",
        "cargo build --locked --release --target wasm32-wasip1 -p dask-worker-defaults",
        "kwctl annotate -m policy-metadata.yml -u README.md -o annotated-policy.wasm",
        "bats e2e-tests/kubewarden/policy.bats",
        "syft scan --output spdx-json=policy-sbom.spdx.json",
        "cosign sign-blob --yes",
        "kwctl push -o json annotated-policy.wasm",
        "cosign sign --yes --new-bundle-format=false",
        "cosign sign --yes --new-bundle-format=true",
        "gh release create",
    ];
    let positions: Vec<usize> = order.iter().map(|n| step_with(&steps, n)).collect();
    let mut sorted = positions.clone();
    sorted.sort_unstable();
    assert_eq!(positions, sorted, "steps out of order: {order:?}");
    let release = &steps[step_with(&steps, "gh release create")];
    for asset in [
        "policy.wasm",
        "policy-sbom.spdx.json",
        "policy-sbom.spdx.jsonl.bundle.sigstore",
    ] {
        assert!(release.contains(asset), "release lacks {asset}");
    }
}

#[test]
fn release_workflow_uses_the_kubewarden_version_the_tests_use() {
    let workflow = read_yaml(".github/workflows/release.yml");
    let setup =
        std::fs::read_to_string(format!("{}/e2e-tests/setup.sh", env!("CARGO_MANIFEST_DIR")))
            .expect("setup.sh");
    let pinned = setup
        .lines()
        .find_map(|l| l.strip_prefix("KUBEWARDEN_VERSION="))
        .expect("setup.sh pins KUBEWARDEN_VERSION");
    assert_eq!(workflow["env"]["KUBEWARDEN_VERSION"].as_str(), Some(pinned));
}

#[test]
fn release_workflow_pushes_where_the_metadata_says() {
    let workflow = read_yaml(".github/workflows/release.yml");
    let meta = read_yaml("policy-metadata.yml");
    let oci_url = annotation(&meta, "io.kubewarden.policy.ociUrl");
    let target = workflow["env"]["OCI_TARGET"].as_str().expect("OCI_TARGET");
    let owner = "${{ github.repository_owner }}";
    assert_eq!(target.replace(owner, "dask-on-k8s"), oci_url);
}
