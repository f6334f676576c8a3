//! The `dask-kube` binary without a cluster: `render`, bad input and exit codes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed step fails the test

mod common;

use common::{dask_kube, fixture};
use serde_json::Value;
use std::process::Output;

fn run(args: &[&str]) -> Output {
    let state = tempfile::tempdir().unwrap();
    dask_kube(state.path()).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn render_prints_every_object_without_a_cluster() {
    let worker = fixture("worker-spec.yml");
    let out = run(&[
        "-n",
        "team",
        "-o",
        "json",
        "render",
        "-f",
        worker.to_str().unwrap(),
        "--name",
        "demo-{uuid}",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let items = list["items"].as_array().unwrap();
    let kinds: Vec<&str> = items.iter().map(|i| i["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["Pod", "Service", "Pod", "PodTemplate", "Secret"]);
    let name = items[0]["metadata"]["name"].as_str().unwrap();
    assert!(
        name.starts_with("demo-") && name.len() == "demo-".len() + 10,
        "{name}"
    );
    assert_eq!(
        items[2]["metadata"]["generateName"],
        format!("{name}-worker-")
    );
    assert_eq!(items[2]["metadata"]["namespace"], "team");
    assert_eq!(items[2]["spec"]["tolerations"].as_array().unwrap().len(), 2);
    // TLS by default: the workers' address, and no key in what is printed.
    let address = items[2]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "DASK_SCHEDULER_ADDRESS")
        .unwrap()["value"]
        .clone();
    assert_eq!(address, format!("tls://{name}-scheduler.team:8786"));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("PRIVATE KEY"));
}

#[test]
fn render_yaml_is_one_document_per_object() {
    let worker = fixture("worker-spec.yml");
    let out = run(&["render", "-f", worker.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.matches("---\n").count(), 5, "{text}");
    assert!(text.contains("DASK_SCHEDULER_ADDRESS"));
    let out = run(&["render", "--tls", "off", "-f", worker.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.matches("---\n").count(), 4, "no Secret: {text}");
    assert!(text.contains("tcp://"), "{text}");
}

#[test]
fn render_reads_the_template_path_from_dask_config_env() {
    let worker = fixture("worker-spec.yml");
    let state = tempfile::tempdir().unwrap();
    let out = dask_kube(state.path())
        .env("DASK_KUBERNETES__WORKER_TEMPLATE_PATH", &worker)
        .env("DASK_KUBERNETES__NAMESPACE", "from-env")
        .args(["-o", "json", "render"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["items"][0]["metadata"]["namespace"], "from-env");
}

#[rstest::rstest]
#[case::missing_file(&["up", "-f", "/nonexistent/worker.yml"], 2, "/nonexistent/worker.yml")]
#[case::not_a_pod(&["render", "-f", "DEPLOYMENT"], 2, "kind is \"Deployment\"")]
#[case::bad_name_template(&["render", "-f", "WORKER", "--name", "dask-{nobody}"], 2, "unknown field {nobody}")]
#[case::no_template(&["render"], 2, "no worker template")]
#[case::bad_cluster_name(&["down", "Not_A_Name"], 2, "invalid cluster name")]
#[case::usage_error(&["scale"], 2, "Usage")]
fn bad_input_is_a_clear_usage_error(
    #[case] args: &[&str],
    #[case] code: i32,
    #[case] needle: &str,
) {
    let dir = tempfile::tempdir().unwrap();
    let deployment = dir.path().join("deployment.yml");
    std::fs::write(
        &deployment,
        "apiVersion: apps/v1\nkind: Deployment\nspec: {}\n",
    )
    .unwrap();
    let worker = fixture("worker-spec.yml");
    let args: Vec<&str> = args
        .iter()
        .map(|a| match *a {
            "DEPLOYMENT" => deployment.to_str().unwrap(),
            "WORKER" => worker.to_str().unwrap(),
            other => other,
        })
        .collect();
    let out = run(&args);
    assert_eq!(out.status.code(), Some(code), "{}", stderr(&out));
    assert!(stderr(&out).contains(needle), "{}", stderr(&out));
}

#[test]
fn unreachable_api_server_names_its_url() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{port}\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: x\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n"
        ),
    )
    .unwrap();
    let worker = fixture("worker-spec.yml");
    let out = dask_kube(dir.path())
        .env("KUBECONFIG", &kubeconfig)
        .args(["up", "-f", worker.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("https://127.0.0.1:{port}")) && err.contains("unreachable"),
        "{err}"
    );
}

#[test]
fn help_lists_exit_codes_and_commands() {
    let out = run(&["--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "up",
        "list",
        "scale",
        "adapt",
        "logs",
        "down",
        "render",
        "Exit codes",
        "3 cluster or namespace not found",
    ] {
        assert!(text.contains(needle), "{needle}: {text}");
    }
}

#[test]
fn bench_planning_figures() {
    let out = run(&["bench", "-f", "unused.yml", "--planning-only"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("plan_scale_down (1000 pods") && text.contains("adapt::decide"),
        "{text}"
    );
}

/// `--kubeconfig` and `--context` pick the credentials, as Python's `auth=` does: a missing
/// file or an unknown context is a usage error naming it, before any cluster is contacted.
#[test]
fn kubeconfig_and_context_flags_name_what_does_not_load() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-kubeconfig");
    let out = run(&["--kubeconfig", missing.to_str().unwrap(), "list"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("no-kubeconfig"), "{}", stderr(&out));
    let config = dir.path().join("kubeconfig");
    std::fs::write(
        &config,
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\nusers: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u, namespace: from-context}}]\ncurrent-context: x\n",
    )
    .unwrap();
    let out = run(&[
        "--kubeconfig",
        config.to_str().unwrap(),
        "--context",
        "nope",
        "list",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("context \"nope\""),
        "{}",
        stderr(&out)
    );
    // render contacts no cluster: the context's namespace is the objects'.
    let worker = fixture("worker-spec.yml");
    let out = run(&[
        "--kubeconfig",
        config.to_str().unwrap(),
        "--context",
        "x",
        "-o",
        "json",
        "render",
        "-f",
        worker.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["items"][0]["metadata"]["namespace"], "from-context");
}

/// `kubernetes.env` and `kubernetes.count.start` are the CLI's too (only Python honoured
/// them before): the env reaches both pods of `render`.
#[test]
fn render_honours_kubernetes_env() {
    let state = tempfile::tempdir().unwrap();
    let config = state.path().join("dask.yaml");
    std::fs::write(&config, "kubernetes:\n  env:\n    TEAM: data\n").unwrap();
    let worker = fixture("worker-spec.yml");
    let out = dask_kube(state.path())
        .env("DASK_CONFIG", &config)
        .args([
            "-o",
            "json",
            "render",
            "-f",
            worker.to_str().unwrap(),
            "--env",
            "A=1",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    for index in [0, 2] {
        let env = &list["items"][index]["spec"]["containers"][0]["env"];
        for (k, v) in [("TEAM", "data"), ("A", "1")] {
            assert!(
                env.as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e["name"] == k && e["value"] == v),
                "{k} missing in object {index}: {env}"
            );
        }
    }
}
