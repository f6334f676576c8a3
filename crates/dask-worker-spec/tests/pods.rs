//! Table tests of the whole decision on realistic objects: what a worker pod, a workload
//! template or an operator resource looks like after defaulting.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers outside #[test] fns

use dask_worker_spec::{OnMismatch, WorkerDefaults, default_object};
use rstest::rstest;
use serde_json::{Value, json};

fn worker_pod(container: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "w", "labels": {"dask.org/component": "worker"}},
        "spec": {"containers": [container]}
    })
}

fn worker(args: &[&str]) -> Value {
    json!({"name": "worker", "image": "ghcr.io/dask/dask", "args": args})
}

fn defaults() -> WorkerDefaults {
    WorkerDefaults::default()
}

fn run(kind: &str, operation: &str, object: &Value, settings: &WorkerDefaults) -> Option<Value> {
    let group = match kind {
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" => "apps",
        "Job" | "CronJob" => "batch",
        "DaskCluster" | "DaskWorkerGroup" => "kubernetes.dask.org",
        _ => "",
    };
    default_object(group, kind, operation, object.clone(), settings)
        .expect("accepted")
        .mutated
}

const TOLERATIONS: fn() -> Value = || {
    json!([
        {"key": "k8s.dask.org/dedicated", "operator": "Equal", "value": "worker", "effect": "NoSchedule"},
        {"key": "k8s.dask.org_dedicated", "operator": "Equal", "value": "worker", "effect": "NoSchedule"}
    ])
};

const NAME_ENV: fn() -> Value = || json!([{"name": "DASK_WORKER_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]);

#[test]
fn readme_worker_pod_gets_every_default() {
    let pod = worker_pod(worker(&[
        "dask",
        "worker",
        "--nthreads",
        "2",
        "--memory-limit",
        "6GB",
    ]));
    let out = run("Pod", "CREATE", &pod, &defaults()).expect("mutated");
    assert_eq!(
        out["spec"],
        json!({
            "containers": [{
                "name": "worker", "image": "ghcr.io/dask/dask",
                "args": ["dask", "worker", "--nthreads", "2", "--memory-limit", "6GB",
                         "--death-timeout", "60", "--name", "$(DASK_WORKER_NAME)"],
                "resources": {"limits": {"memory": "6G", "cpu": "2"}, "requests": {"memory": "6G", "cpu": "2"}},
                "env": NAME_ENV()
            }],
            "tolerations": TOLERATIONS(),
            "restartPolicy": "Never"
        })
    );
    assert_eq!(
        run("Pod", "CREATE", &out, &defaults()),
        None,
        "second pass changes nothing"
    );
}

#[rstest]
#[case::nworkers_multiplies(&["dask", "worker", "--nworkers", "2", "--nthreads", "2", "--memory-limit", "3GB"], json!({"memory": "6G", "cpu": "4"}))]
#[case::nprocs_old_name(&["dask-worker", "--nprocs", "3", "--nthreads", "1", "--memory-limit", "1GB"], json!({"memory": "3G", "cpu": "3"}))]
#[case::gib_stays_binary(&["dask", "worker", "--nthreads", "1", "--memory-limit", "4GiB"], json!({"memory": "4Gi", "cpu": "1"}))]
#[case::fractional_gb(&["dask", "worker", "--nthreads=1", "--memory-limit=1.5GB"], json!({"memory": "1500M", "cpu": "1"}))]
#[case::lowercase_m_is_megabytes(&["dask", "worker", "--nthreads", "1", "--memory-limit", "500m"], json!({"memory": "500M", "cpu": "1"}))]
#[case::python_module(&["python", "-m", "distributed.cli.dask_worker", "--nthreads", "4", "--memory-limit", "8GB"], json!({"memory": "8G", "cpu": "4"}))]
fn limits_from_flags(#[case] args: &[&str], #[case] limits: Value) {
    let out = run("Pod", "CREATE", &worker_pod(worker(args)), &defaults()).expect("mutated");
    let resources = &out["spec"]["containers"][0]["resources"];
    assert_eq!(resources["limits"], limits);
    assert_eq!(resources["requests"], limits);
}

#[rstest]
#[case::whole(json!({"cpu": "2", "memory": "6G"}), &[], &["--nthreads", "2", "--memory-limit", "6GB"])]
#[case::binary(json!({"cpu": "1", "memory": "2Gi"}), &[], &["--nthreads", "1", "--memory-limit", "2GiB"])]
#[case::split_by_nworkers(json!({"cpu": "4", "memory": "6G"}), &["--nworkers", "2"], &["--nworkers", "2", "--nthreads", "2", "--memory-limit", "3GB"])]
#[case::fraction_of_cpu(json!({"cpu": "1500m", "memory": "1000000001"}), &[], &["--nthreads", "1", "--memory-limit", "1000000001"])]
fn flags_from_limits(#[case] limits: Value, #[case] extra: &[&str], #[case] added: &[&str]) {
    let mut args = vec!["dask", "worker"];
    args.extend_from_slice(extra);
    let mut container = worker(&args);
    container["resources"] = json!({"limits": limits});
    let out = run("Pod", "CREATE", &worker_pod(container), &defaults()).expect("mutated");
    let mut want: Vec<&str> = vec!["dask", "worker"];
    want.extend_from_slice(added);
    want.extend_from_slice(&["--death-timeout", "60", "--name", "$(DASK_WORKER_NAME)"]);
    assert_eq!(out["spec"]["containers"][0]["args"], json!(want));
    assert_eq!(
        out["spec"]["containers"][0]["resources"]["requests"],
        limits
    );
}

#[test]
fn sh_c_script_is_edited_in_place() {
    let container = json!({
        "name": "worker", "image": "ghcr.io/dask/dask",
        "command": ["sh", "-c"],
        "args": ["pip install foo && exec dask-worker $(DASK_SCHEDULER_ADDRESS) --nthreads 2 --memory-limit 2GB 2>&1 | tee /tmp/log"]
    });
    let out = run("Pod", "CREATE", &worker_pod(container), &defaults()).expect("mutated");
    let c = &out["spec"]["containers"][0];
    assert_eq!(c["command"], json!(["sh", "-c"]));
    assert_eq!(
        c["args"],
        json!([
            "pip install foo && exec dask-worker $(DASK_SCHEDULER_ADDRESS) --nthreads 2 --memory-limit 2GB --death-timeout 60 --name $(DASK_WORKER_NAME) 2>&1 | tee /tmp/log"
        ])
    );
    assert_eq!(
        c["resources"]["limits"],
        json!({"memory": "2G", "cpu": "2"})
    );
}

#[test]
fn sidecars_are_never_touched() {
    let mut pod = worker_pod(worker(&[
        "dask",
        "worker",
        "--nthreads",
        "1",
        "--memory-limit",
        "1GB",
    ]));
    let sidecar =
        json!({"name": "proxy", "image": "envoy", "command": ["envoy", "-c", "/etc/envoy.yaml"]});
    pod["spec"]["containers"]
        .as_array_mut()
        .expect("array")
        .push(sidecar.clone());
    let out = run("Pod", "CREATE", &pod, &defaults()).expect("mutated");
    assert_eq!(out["spec"]["containers"][1], sidecar);
}

#[rstest]
#[case::memory_disagrees(
    json!({"limits": {"memory": "6G", "cpu": "2"}}),
    &["--nthreads", "2", "--memory-limit", "4GB"],
    "container \"worker\": --memory-limit 4GB x --nworkers 1 = 4G (4000000000 bytes), but resources.limits.memory is 6G (6000000000 bytes); make them agree (--memory-limit 6GB or resources.limits.memory 4G), or set the policy's onMismatch to useResources or useFlags")]
#[case::cpu_disagrees(
    json!({"limits": {"memory": "6G", "cpu": "2"}}),
    &["--nthreads", "4", "--memory-limit", "6GB"],
    "container \"worker\": --nthreads 4 x --nworkers 1 = 4 CPU, but resources.limits.cpu is 2; make them agree (--nthreads 2 or resources.limits.cpu 4), or set the policy's onMismatch to useResources or useFlags")]
#[case::nworkers_forgotten(
    json!({"limits": {"memory": "6G"}}),
    &["--nworkers", "2", "--memory-limit", "6GB"],
    "container \"worker\": --memory-limit 6GB x --nworkers 2 = 12G (12000000000 bytes), but resources.limits.memory is 6G (6000000000 bytes); make them agree (--memory-limit 3GB or resources.limits.memory 12G), or set the policy's onMismatch to useResources or useFlags")]
#[case::unparseable_memory_limit(json!({}), &["--memory-limit", "6XB"],
    "container \"worker\": --memory-limit \"6XB\" has an unknown unit \"XB\" (expected one of B, kB, MB, GB, TB, PB, KiB, MiB, GiB, TiB, PiB (case-insensitive, B optional))")]
#[case::half_a_byte(json!({"limits": {"memory": "500m"}}), &[],
    "container \"worker\": resources.limits.memory \"500m\" is not a whole number of bytes")]
#[case::dask_unit_in_k8s(json!({"limits": {"memory": "6GB"}}), &[],
    "container \"worker\": resources.limits.memory \"6GB\" has an unknown unit \"GB\" (expected one of Ki, Mi, Gi, Ti, Pi, Ei, n, u, m, k, M, G, T, P, E or an exponent like e9)")]
#[case::nthreads_word(json!({}), &["--nthreads", "two"], "container \"worker\": --nthreads \"two\" must be a positive whole number")]
#[case::nworkers_zero(json!({}), &["--nworkers", "0"], "container \"worker\": --nworkers \"0\" must be a positive whole number")]
#[case::flag_without_value(json!({}), &["--memory-limit"], "container \"worker\": --memory-limit has no value")]
fn rejections_say_what_and_how_to_fix(
    #[case] resources: Value,
    #[case] flags: &[&str],
    #[case] message: &str,
) {
    let mut args = vec!["dask", "worker"];
    args.extend_from_slice(flags);
    let mut container = worker(&args);
    container["resources"] = resources;
    let error = default_object("", "Pod", "CREATE", worker_pod(container), &defaults())
        .expect_err("rejected");
    assert_eq!(error.to_string(), message);
}

#[rstest]
#[case::use_resources(OnMismatch::UseResources, &["dask", "worker", "--nthreads", "2", "--memory-limit", "6GB"], json!({"memory": "6G", "cpu": "2"}))]
#[case::use_flags(OnMismatch::UseFlags, &["dask", "worker", "--nthreads", "4", "--memory-limit", "4GB"], json!({"memory": "4G", "cpu": "4"}))]
fn mismatch_modes_resolve(
    #[case] mode: OnMismatch,
    #[case] args_before: &[&str],
    #[case] limits: Value,
) {
    let mut container = worker(&["dask", "worker", "--nthreads", "4", "--memory-limit", "4GB"]);
    container["resources"] = json!({"limits": {"memory": "6G", "cpu": "2"}});
    let settings = WorkerDefaults {
        on_mismatch: mode,
        ..defaults()
    };
    let out = run("Pod", "CREATE", &worker_pod(container), &settings).expect("mutated");
    let c = &out["spec"]["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(&args[..args_before.len()], args_before);
    assert_eq!(c["resources"]["limits"], limits);
    assert_eq!(run("Pod", "CREATE", &out, &settings), None);
}

#[rstest]
#[case::auto(&["--memory-limit", "auto"], "--memory-limit auto is a share of the machine's memory decided at runtime, not a byte count; memory resources left as they are")]
#[case::fraction(&["--memory-limit", "0.5"], "--memory-limit 0.5 is a fraction of the machine's memory, not a byte count; memory resources left as they are")]
#[case::disabled(&["--memory-limit", "0"], "--memory-limit 0 disables memory management, not a byte count; memory resources left as they are")]
#[case::nworkers_auto(&["--nworkers", "auto"], "--nworkers auto is decided at runtime; resources and --nthreads/--memory-limit left as they are")]
#[case::nworkers_negative(&["--nworkers", "-1"], "--nworkers -1 counts from the machine's cores, decided at runtime; resources and --nthreads/--memory-limit left as they are")]
fn values_without_a_byte_count_warn(#[case] flags: &[&str], #[case] warning: &str) {
    let mut args = vec!["dask", "worker"];
    args.extend_from_slice(flags);
    let pod = worker_pod(worker(&args));
    let out = default_object("", "Pod", "CREATE", pod, &defaults()).expect("accepted");
    assert!(
        out.warnings
            .contains(&format!("container \"worker\": {warning}")),
        "{:?}",
        out.warnings
    );
    let mutated = out.mutated.expect("other defaults still apply");
    assert!(
        mutated["spec"]["containers"][0]["resources"]["limits"]
            .get("memory")
            .is_none()
    );
}

#[test]
fn existing_values_are_kept_and_duplicates_removed() {
    let mut container = worker(&[
        "dask",
        "worker",
        "--nthreads",
        "2",
        "--memory-limit",
        "6GB",
        "--death-timeout",
        "300",
        "--name",
        "mine",
    ]);
    container["resources"] = json!({"limits": {"memory": "6G", "cpu": "2", "nvidia.com/gpu": "1"}, "requests": {"memory": "6G", "cpu": "2"}});
    let mut pod = worker_pod(container.clone());
    pod["spec"]["tolerations"] = json!([
        {"key": "gpu", "operator": "Exists"},
        {"key": "k8s.dask.org/dedicated", "value": "worker", "effect": "NoSchedule"},
        {"key": "k8s.dask.org/dedicated", "operator": "Equal", "value": "worker", "effect": "NoSchedule"}
    ]);
    pod["spec"]["restartPolicy"] = json!("Never");
    pod["spec"]["futureField"] = json!({"x": 1});
    let out = run("Pod", "CREATE", &pod, &defaults()).expect("tolerations changed");
    assert_eq!(
        out["spec"]["containers"][0], container,
        "container untouched"
    );
    assert_eq!(out["spec"]["futureField"], json!({"x": 1}));
    assert_eq!(
        out["spec"]["tolerations"],
        json!([
            {"key": "gpu", "operator": "Exists"},
            {"key": "k8s.dask.org/dedicated", "value": "worker", "effect": "NoSchedule"},
            {"key": "k8s.dask.org_dedicated", "operator": "Equal", "value": "worker", "effect": "NoSchedule"}
        ])
    );
}

#[rstest]
#[case::unlabelled_pod("Pod", "CREATE", json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [worker(&["dask", "worker"])]}}))]
#[case::pod_update("Pod", "UPDATE", worker_pod(worker(&["dask", "worker"])))]
#[case::delete_null_object("Pod", "DELETE", Value::Null)]
#[case::unknown_kind("ConfigMap", "CREATE", json!({"data": {"a": "b"}}))]
#[case::job_update("Job", "UPDATE", json!({"spec": {"template": {"metadata": {"labels": {"dask.org/component": "worker"}}, "spec": {"containers": [worker(&["dask", "worker"])]}}}}))]
#[case::scheduler_pod("Pod", "CREATE", json!({"metadata": {"labels": {"dask.org/component": "scheduler"}}, "spec": {"containers": [{"name": "s", "args": ["dask", "scheduler"]}]}}))]
fn untouched(#[case] kind: &str, #[case] operation: &str, #[case] object: Value) {
    assert_eq!(run(kind, operation, &object, &defaults()), None);
}

fn template(labels: Value) -> Value {
    json!({
        "metadata": {"labels": labels},
        "spec": {"containers": [worker(&["dask", "worker", "--nthreads", "1", "--memory-limit", "1GB"])]}
    })
}

#[rstest]
#[case::deployment("Deployment", "UPDATE", json!({"spec": {"replicas": 3, "template": template(json!({"dask.org/component": "worker"}))}}), &["spec", "template", "spec"], None)]
#[case::statefulset("StatefulSet", "CREATE", json!({"spec": {"template": template(json!({"app": "dask", "component": "dask-worker"}))}}), &["spec", "template", "spec"], None)]
#[case::job("Job", "CREATE", json!({"spec": {"template": template(json!({"dask.org/component": "worker"}))}}), &["spec", "template", "spec"], Some("Never"))]
#[case::cronjob("CronJob", "UPDATE", json!({"spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": template(json!({"dask.org/component": "worker"}))}}}}), &["spec", "jobTemplate", "spec", "template", "spec"], Some("Never"))]
fn workload_templates(
    #[case] kind: &str,
    #[case] operation: &str,
    #[case] object: Value,
    #[case] spec_path: &[&str],
    #[case] restart: Option<&str>,
) {
    let out = run(kind, operation, &object, &defaults()).expect("mutated");
    let spec = spec_path.iter().fold(&out, |v, k| &v[*k]);
    assert_eq!(spec["tolerations"], TOLERATIONS());
    assert_eq!(spec.get("restartPolicy").and_then(Value::as_str), restart);
    assert_eq!(
        spec["containers"][0]["resources"]["limits"],
        json!({"memory": "1G", "cpu": "1"})
    );
    assert_eq!(spec["containers"][0]["env"], NAME_ENV());
}

#[test]
fn operator_worker_group_is_a_worker_spec_without_labels() {
    let group = json!({
        "apiVersion": "kubernetes.dask.org/v1", "kind": "DaskWorkerGroup",
        "metadata": {"name": "g"},
        "spec": {"cluster": "c", "worker": {"replicas": 2, "spec": {"containers": [{
            "name": "worker", "image": "ghcr.io/dask/dask:latest",
            "args": ["dask-worker", "--name", "$(DASK_WORKER_NAME)", "--dashboard", "--dashboard-address", "8788"],
            "resources": {"limits": {"cpu": "2", "memory": "4Gi"}}
        }]}}}
    });
    let out = run("DaskWorkerGroup", "CREATE", &group, &defaults()).expect("mutated");
    let spec = &out["spec"]["worker"]["spec"];
    assert_eq!(
        spec["containers"][0]["args"],
        json!([
            "dask-worker",
            "--name",
            "$(DASK_WORKER_NAME)",
            "--dashboard",
            "--dashboard-address",
            "8788",
            "--nthreads",
            "2",
            "--memory-limit",
            "4GiB",
            "--death-timeout",
            "60"
        ])
    );
    assert!(
        spec.get("restartPolicy").is_none(),
        "the operator runs workers in Deployments"
    );
    assert!(
        spec["containers"][0].get("env").is_none(),
        "the operator sets DASK_WORKER_NAME itself"
    );
}

#[test]
fn pods_of_replicasets_keep_their_restart_policy() {
    let mut pod = worker_pod(worker(&["dask", "worker"]));
    pod["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "1", "controller": true}]);
    pod["spec"]["restartPolicy"] = json!("Always");
    let out = run("Pod", "CREATE", &pod, &defaults()).expect("mutated");
    assert_eq!(out["spec"]["restartPolicy"], "Always");
}

#[rstest]
#[case::spec_not_object(json!({"metadata": {"labels": {"dask.org/component": "worker"}}, "spec": []}), "spec must be an object")]
#[case::spec_missing(json!({"metadata": {"labels": {"dask.org/component": "worker"}}}), "spec is missing")]
#[case::labels_not_object(json!({"metadata": {"labels": ["dask"]}, "spec": {}}), "metadata.labels must be an object")]
#[case::containers_not_array(json!({"metadata": {"labels": {"dask.org/component": "worker"}}, "spec": {"containers": {}}}), "spec.containers must be an array")]
#[case::args_not_strings(json!({"metadata": {"labels": {"dask.org/component": "worker"}}, "spec": {"containers": [{"name": "w", "args": ["dask", 1]}]}}), "spec.containers[0].args must be an array of strings")]
#[case::tolerations_not_array(json!({"metadata": {"labels": {"dask.org/component": "worker"}}, "spec": {"tolerations": "x"}}), "spec.tolerations must be an array")]
#[case::not_an_object(json!("pod"), "object must be a JSON object")]
fn malformed_objects_are_refused_clearly(#[case] object: Value, #[case] message: &str) {
    let error = default_object("", "Pod", "CREATE", object, &defaults()).expect_err("refused");
    assert_eq!(error.to_string(), message);
}
