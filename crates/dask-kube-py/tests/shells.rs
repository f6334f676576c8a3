//! The same cluster asked of both shells: the CLI's flags and Python's `KubeCluster(...)`
//! arguments map to one [`ClusterRequest`], and the library resolves it once. For every
//! case of `fixtures/shells.json` the CLI's argv is parsed by the real parser and its request
//! resolved beside the request Python sends (the Python unit tests check that
//! `KubeCluster(...)` sends exactly that one), with the same Dask config: the manifests
//! they would create, the workers they start and the adapt policy must be equal. Pure: no
//! cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a failed step fails the test

use clap::Parser;
use dask_kube::cli::{Cli, Command};
use dask_kube::{AdaptPolicy, AdaptTuning, ClusterRequest, KubeCluster, NameVars, ResolvedCluster};
use dask_kube_native::options::ClusterOptions;
use serde_json::{Value, json};
use std::path::Path;

fn fixtures_dir() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../dask-kube/tests/fixtures")
        .display()
        .to_string()
}

/// The table, `{fixtures}` filled in.
fn table() -> Value {
    let text = include_str!("fixtures/shells.json").replace("{fixtures}", &fixtures_dir());
    serde_json::from_str(&text).unwrap()
}

fn vars() -> NameVars {
    NameVars {
        user: "ada".into(),
        uuid: "0a1b2c3d4e".into(),
        env: Default::default(),
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

/// What the CLI asks for with `argv`.
fn cli_request(argv: &Value) -> ClusterRequest {
    let mut words = vec!["dask-kube".to_owned()];
    words.extend(strings(argv));
    let cli = Cli::try_parse_from(&words).unwrap_or_else(|e| panic!("{words:?}: {e}"));
    let Command::Up(up) = cli.command else {
        panic!("{words:?} is not up");
    };
    up.request(cli.namespace.as_deref()).unwrap()
}

/// `request` resolved with `config` as Python's `dask.config` gives it.
fn resolve(request: Value, config: &Value) -> ResolvedCluster {
    let options: ClusterOptions =
        serde_json::from_value(json!({"request": request, "config": config})).unwrap();
    options
        .builder(None)
        .unwrap()
        .name_vars(vars())
        .resolve()
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_cli_and_python_ask_for_the_same_cluster() {
    let table = table();
    let cases = table["cases"].as_array().unwrap();
    assert!(cases.len() >= 8, "the table lost cases");
    for case in cases {
        let name = case["case"].as_str().unwrap();
        let config = &case["config"];
        let options: ClusterOptions = serde_json::from_value(json!({"config": config})).unwrap();
        let from_cli = KubeCluster::builder()
            .request(cli_request(&case["argv"]))
            .config(options.dask_config().unwrap())
            .name_vars(vars())
            .resolve()
            .unwrap_or_else(|e| panic!("{name}: the CLI's request: {e}"));
        let from_python = resolve(case["request"].clone(), config);
        assert_eq!(
            from_cli.render("default").unwrap(),
            from_python.render("default").unwrap(),
            "{name}: the manifests differ"
        );
        assert_eq!(
            (from_cli.workers, from_cli.capped, &from_cli.adapt),
            (from_python.workers, from_python.capped, &from_python.adapt),
            "{name}: what is started differs"
        );
    }
}

/// Python's `adapt(...)` builds its policy from the same tuning (seconds) the CLI's
/// `--adapt` flags give; both settle it with [`AdaptPolicy::from_tuning`].
#[test]
fn the_cli_and_python_adapt_alike() {
    let table = table();
    for case in table["adapt"].as_array().unwrap() {
        let name = case["case"].as_str().unwrap();
        let request = cli_request(&case["argv"]);
        let cli_policy = KubeCluster::builder()
            .request(request)
            .config(Default::default())
            .name_vars(vars())
            .resolve()
            .unwrap()
            .adapt
            .unwrap_or_else(|| panic!("{name}: the CLI does not adapt"));
        let python = &case["python"];
        let tuning: AdaptTuning = serde_json::from_value(case["tuning"].clone()).unwrap();
        let python_policy = AdaptPolicy::from_tuning(
            u32::try_from(python["minimum"].as_u64().unwrap()).unwrap(),
            u32::try_from(python["maximum"].as_u64().unwrap()).unwrap(),
            &tuning,
        )
        .unwrap();
        assert_eq!(cli_policy, python_policy, "{name}");
    }
}

/// The CLI honours what only Python honoured before: `kubernetes.env` reaches the pods and
/// `kubernetes.count.start` the workers started (the table's cases, checked by value here
/// so a table that resolved both shells alike but wrong would still fail).
#[test]
fn the_cli_honours_kubernetes_env_and_count_start() {
    let table = table();
    let case = |name: &str| {
        table["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["case"].as_str().unwrap().starts_with(name))
            .unwrap()
            .clone()
    };
    let resolved = |c: &Value| {
        let options: ClusterOptions =
            serde_json::from_value(json!({"config": c["config"]})).unwrap();
        KubeCluster::builder()
            .request(cli_request(&c["argv"]))
            .config(options.dask_config().unwrap())
            .name_vars(vars())
            .resolve()
            .unwrap()
    };
    let env_case = resolved(&case("kubernetes.env"));
    let objects = env_case.render("default").unwrap();
    for object in [&objects[0], &objects[2]] {
        let env = &object["spec"]["containers"][0]["env"];
        for (k, v) in [("TEAM", "data"), ("EXTRA_PIP_PACKAGES", "s3fs")] {
            assert!(
                env.as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e["name"] == k && e["value"] == v),
                "{k} missing from {env}"
            );
        }
    }
    assert_eq!(resolved(&case("kubernetes.count.start")).workers, 2);
}
