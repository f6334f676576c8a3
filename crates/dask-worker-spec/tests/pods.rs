//! Table tests of the whole decision on realistic objects: what a worker pod, a workload
//! template or an operator resource looks like after defaulting.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers outside #[test] fns

use dask_worker_spec::{
    DefaultAffinity, OnMismatch, WorkerDefaults, default_object, format_k8s_memory,
};
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

const GB: u64 = 1_000_000_000;
/// The default `memoryHeadroom`.
const HEADROOM: u64 = 256 << 20;

/// A memory quantity as the policy writes it.
fn mem(bytes: u64) -> Value {
    json!(format_k8s_memory(bytes))
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

/// Classic's default (preferred) worker affinity.
const AFFINITY: fn() -> Value = || {
    json!({"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
        "weight": 100,
        "preference": {"matchExpressions": [
            {"key": "k8s.dask.org/node-purpose", "operator": "In", "values": ["worker"]}
        ]}
    }]}})
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
                "resources": {"limits": {"memory": mem(6 * GB + HEADROOM), "cpu": "2"}, "requests": {"memory": mem(6 * GB + HEADROOM), "cpu": "2"}},
                "env": NAME_ENV()
            }],
            "tolerations": TOLERATIONS(),
            "affinity": AFFINITY(),
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
#[case::nworkers_multiplies(&["dask", "worker", "--nworkers", "2", "--nthreads", "2", "--memory-limit", "3GB"], json!({"memory": mem(6 * GB + HEADROOM), "cpu": "4"}))]
#[case::nprocs_old_name(&["dask-worker", "--nprocs", "3", "--nthreads", "1", "--memory-limit", "1GB"], json!({"memory": mem(3 * GB + HEADROOM), "cpu": "3"}))]
#[case::gib_stays_binary(&["dask", "worker", "--nthreads", "1", "--memory-limit", "4GiB"], json!({"memory": "4352Mi", "cpu": "1"}))]
#[case::fractional_gb(&["dask", "worker", "--nthreads=1", "--memory-limit=1.5GB"], json!({"memory": mem(1_500_000_000 + HEADROOM), "cpu": "1"}))]
#[case::float_product_like_dask(&["dask", "worker", "--nthreads=1", "--memory-limit=8.2GB"], json!({"memory": mem(8_199_999_999 + HEADROOM), "cpu": "1"}))]
#[case::lowercase_m_is_megabytes(&["dask", "worker", "--nthreads", "1", "--memory-limit", "500m"], json!({"memory": mem(500_000_000 + HEADROOM), "cpu": "1"}))]
#[case::python_module(&["python", "-m", "distributed.cli.dask_worker", "--nthreads", "4", "--memory-limit", "8GB"], json!({"memory": mem(8 * GB + HEADROOM), "cpu": "4"}))]
fn limits_from_flags(#[case] args: &[&str], #[case] limits: Value) {
    let out = run("Pod", "CREATE", &worker_pod(worker(args)), &defaults()).expect("mutated");
    let resources = &out["spec"]["containers"][0]["resources"];
    assert_eq!(resources["limits"], limits);
    assert_eq!(resources["requests"], limits);
}

#[rstest]
#[case::whole(json!({"cpu": "2", "memory": "6G"}), &[], &["--nthreads", "2", "--memory-limit", "5731564544"])]
#[case::binary(json!({"cpu": "1", "memory": "2Gi"}), &[], &["--nthreads", "1", "--memory-limit", "1792MiB"])]
#[case::split_by_nworkers(json!({"cpu": "4", "memory": "6G"}), &["--nworkers", "2"], &["--nworkers", "2", "--nthreads", "2", "--memory-limit", "2865782272"])]
#[case::fraction_of_cpu(json!({"cpu": "1500m", "memory": "1000000001"}), &[], &["--nthreads", "1", "--memory-limit", "731564545"])]
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
        json!({"memory": mem(2 * GB + HEADROOM), "cpu": "2"})
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
    "container \"worker\": --memory-limit 4GB x --nworkers 1 = 4G (4000000000 bytes), but resources.limits.memory is 6G (6000000000 bytes): it must hold that and at most memoryHeadroom 256Mi more; make them agree (--memory-limit 5731564544 or resources.limits.memory 4168394Ki), or set the policy's onMismatch to useResources or useFlags")]
#[case::cpu_disagrees(
    json!({"limits": {"memory": "6G", "cpu": "2"}}),
    &["--nthreads", "4", "--memory-limit", "6GB"],
    "container \"worker\": --nthreads 4 x --nworkers 1 = 4 CPU, but resources.limits.cpu is 2; make them agree (--nthreads 2 or resources.limits.cpu 4), or set the policy's onMismatch to useResources or useFlags")]
#[case::nworkers_forgotten(
    json!({"limits": {"memory": "6G"}}),
    &["--nworkers", "2", "--memory-limit", "6GB"],
    "container \"worker\": --memory-limit 6GB x --nworkers 2 = 12G (12000000000 bytes), but resources.limits.memory is 6G (6000000000 bytes): it must hold that and at most memoryHeadroom 256Mi more; make them agree (--memory-limit 2865782272 or resources.limits.memory 11980894Ki), or set the policy's onMismatch to useResources or useFlags")]
#[case::unparseable_memory_limit(json!({}), &["--memory-limit", "6XB"],
    "container \"worker\": --memory-limit \"6XB\" has an unknown unit \"XB\" (expected one of B, kB, MB, GB, TB, PB, KiB, MiB, GiB, TiB, PiB (case-insensitive, B optional))")]
#[case::half_a_byte(json!({"limits": {"memory": "500m"}}), &[],
    "container \"worker\": resources.limits.memory \"500m\" is not a whole number of bytes")]
#[case::dask_unit_in_k8s(json!({"limits": {"memory": "6GB"}}), &[],
    "container \"worker\": resources.limits.memory \"6GB\" has an unknown unit \"GB\" (expected one of Ki, Mi, Gi, Ti, Pi, Ei, n, u, m, k, M, G, T, P, E or an exponent like e9)")]
#[case::nthreads_word(json!({}), &["--nthreads", "two"], "container \"worker\": --nthreads \"two\" must be a positive whole number")]
#[case::nworkers_zero(json!({}), &["--nworkers", "0"], "container \"worker\": --nworkers \"0\" must be a positive whole number")]
#[case::nthreads_negative(json!({}), &["--nthreads", "-1"], "container \"worker\": --nthreads \"-1\" must be a positive whole number")]
#[case::nthreads_auto_is_not_an_int(json!({}), &["--nthreads", "auto"], "container \"worker\": --nthreads \"auto\" must be a positive whole number")]
#[case::two_bytes(json!({}), &["--memory-limit", "2.5"],
    "container \"worker\": --memory-limit 2.5 is 2 bytes to Dask (a number with no unit is a byte count), and a Dask worker needs at least 64Mi (67108864 bytes): give it a unit, such as 2.5GB or 2.5MiB")]
#[case::four_kilobytes(json!({}), &["--memory-limit", "4096"],
    "container \"worker\": --memory-limit 4096 is 4096 bytes to Dask (a number with no unit is a byte count), and a Dask worker needs at least 64Mi (67108864 bytes): give it a unit, such as 4096GB or 4096MiB")]
#[case::kilobytes_not_megabytes(json!({}), &["--memory-limit", "512k"],
    "container \"worker\": --memory-limit 512k is 512000 bytes to Dask (k is kB, 1000 bytes), and a Dask worker needs at least 64Mi (67108864 bytes)")]
#[case::empty_is_one_byte(json!({}), &["--memory-limit="],
    "container \"worker\": --memory-limit \"\" is 1 byte to Dask (a number with no unit is a byte count), and a Dask worker needs at least 64Mi (67108864 bytes)")]
#[case::limit_too_small_for_the_headroom(json!({"limits": {"memory": "200Mi"}}), &[],
    "container \"worker\": resources.limits.memory 200Mi (209715200 bytes) leaves 0 bytes per worker (--nworkers 1, after memoryHeadroom 256Mi), and a Dask worker needs at least 64Mi (67108864 bytes)")]
#[case::limit_too_small_for_the_workers(json!({"limits": {"memory": "1Gi"}}), &["--nworkers", "16"],
    "container \"worker\": resources.limits.memory 1Gi (1073741824 bytes) leaves 50331648 bytes per worker (--nworkers 16, after memoryHeadroom 256Mi), and a Dask worker needs at least 64Mi (67108864 bytes)")]
#[case::nprocs_with_nworkers(json!({}), &["--nprocs", "2", "--nworkers", "2"],
    "container \"worker\": --nprocs and --nworkers are both given: Dask refused that even when --nprocs existed (\"Both --nprocs and --nworkers were specified. Use --nworkers only.\"); keep --nworkers")]
#[case::shell_variable_without_a_shell(json!({"limits": {"memory": "6G"}}), &["--memory-limit", "$MEM"],
    "container \"worker\": --memory-limit \"$MEM\" reaches Dask as written: only a shell expands $NAME or ${NAME}, and this worker is not started by one: write $(NAME), which Kubernetes expands from the container's env")]
#[case::undefined_kubernetes_variable(json!({}), &["--nthreads", "$(THREADS)"],
    "container \"worker\": --nthreads \"$(THREADS)\" reaches Dask as written: Kubernetes expands $(NAME) only when the container's env defines NAME (it has no envFrom that could)")]
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
#[case::use_resources(OnMismatch::UseResources, &["dask", "worker", "--nthreads", "2", "--memory-limit", "5731564544"], json!({"memory": "6G", "cpu": "2"}))]
#[case::use_flags(OnMismatch::UseFlags, &["dask", "worker", "--nthreads", "4", "--memory-limit", "4GB"], json!({"memory": mem(4 * GB + HEADROOM), "cpu": "4"}))]
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
#[case::auto_is_the_default(&["--memory-limit", "auto"], "neither --memory-limit (absent or auto) nor resources.limits/requests.memory gives a size: memory left as it is, and Dask sizes the worker from the node's memory when it starts")]
#[case::absent_memory(&[], "neither --memory-limit (absent or auto) nor resources.limits/requests.memory gives a size: memory left as it is, and Dask sizes the worker from the node's memory when it starts")]
#[case::nthreads_zero_is_the_default(&["--nthreads", "0"], "neither --nthreads (absent or 0) nor resources.limits/requests.cpu gives a size: cpu left as it is, and Dask sizes the worker from the node's cores when it starts")]
#[case::absent_nthreads(&[], "neither --nthreads (absent or 0) nor resources.limits/requests.cpu gives a size: cpu left as it is, and Dask sizes the worker from the node's cores when it starts")]
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
    assert_eq!(spec["affinity"], AFFINITY());
    assert_eq!(spec.get("restartPolicy").and_then(Value::as_str), restart);
    assert_eq!(
        spec["containers"][0]["resources"]["limits"],
        json!({"memory": mem(GB + HEADROOM), "cpu": "1"})
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
            "3840MiB",
            "--death-timeout",
            "60"
        ])
    );
    assert_eq!(spec["affinity"], AFFINITY());
    assert!(
        spec.get("restartPolicy").is_none(),
        "the operator runs workers in Deployments"
    );
    assert!(
        spec["containers"][0].get("env").is_none(),
        "the operator sets DASK_WORKER_NAME itself"
    );
}

#[rstest]
#[case::required(DefaultAffinity::Required, json!({"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [
    {"key": "k8s.dask.org/node-purpose", "operator": "In", "values": ["worker"]}
]}]}}))]
#[case::none(DefaultAffinity::None, Value::Null)]
fn affinity_setting(#[case] mode: DefaultAffinity, #[case] node_affinity: Value) {
    let settings = WorkerDefaults {
        apply_default_affinity: mode,
        ..defaults()
    };
    let pod = worker_pod(worker(&["dask", "worker", "--nthreads", "1"]));
    let out = run("Pod", "CREATE", &pod, &settings).expect("mutated");
    assert_eq!(out["spec"]["affinity"]["nodeAffinity"], node_affinity);
    assert_eq!(run("Pod", "CREATE", &out, &settings), None, "second pass");
}

#[test]
fn affinity_is_added_to_a_pod_without_a_worker_container() {
    // Like the tolerations, a pod-level default: a worker pod whose worker command line the
    // policy cannot see (a custom entrypoint) still belongs on the pool.
    let pod = worker_pod(json!({"name": "w", "image": "example.com/custom-worker"}));
    let out = default_object("", "Pod", "CREATE", pod, &defaults()).expect("accepted");
    assert_eq!(
        out.mutated.expect("mutated")["spec"]["affinity"],
        AFFINITY()
    );
}

#[test]
fn a_users_affinity_is_kept_beside_the_pools() {
    let mut pod = worker_pod(worker(&["dask", "worker", "--nthreads", "1"]));
    let users = json!({
        "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname"}}]},
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}
    });
    pod["spec"]["affinity"] = users.clone();
    let out = run("Pod", "CREATE", &pod, &defaults()).expect("mutated");
    let mut expected = users;
    expected["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"] =
        AFFINITY()["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"].clone();
    assert_eq!(out["spec"]["affinity"], expected);
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
#[case::affinity_not_object(json!({"metadata": {"labels": {"dask.org/component": "worker"}}, "spec": {"affinity": []}}), "spec.affinity must be an object")]
#[case::not_an_object(json!("pod"), "object must be a JSON object")]
fn malformed_objects_are_refused_clearly(#[case] object: Value, #[case] message: &str) {
    let error = default_object("", "Pod", "CREATE", object, &defaults()).expect_err("refused");
    assert_eq!(error.to_string(), message);
}

/// Evaluates a worker container as a pod; the defaulted container and the warnings.
fn evaluate(container: Value, settings: &WorkerDefaults) -> (Value, Vec<String>) {
    let out = default_object("", "Pod", "CREATE", worker_pod(container), settings)
        .unwrap_or_else(|e| panic!("rejected: {e}"));
    let pod = out.mutated.expect("tolerations at least");
    (pod["spec"]["containers"][0].clone(), out.warnings)
}

fn mem_limit_ref(name: &str, divisor: Option<&str>) -> Value {
    let mut field = json!({"resource": "limits.memory"});
    if let Some(divisor) = divisor {
        field["divisor"] = json!(divisor);
    }
    json!({"name": name, "valueFrom": {"resourceFieldRef": field}})
}

#[rstest]
#[case::literal_env_value(
    json!({"args": ["dask", "worker", "--nthreads", "1", "--memory-limit", "$(MEM)"], "env": [{"name": "MEM", "value": "4GB"}]}),
    json!({"memory": mem(4 * GB + HEADROOM), "cpu": "1"}))]
#[case::env_value_inside_a_word(
    json!({"args": ["dask", "worker", "--nthreads=1", "--memory-limit=$(GIGS)GB"], "env": [{"name": "GIGS", "value": "3"}]}),
    json!({"memory": mem(3 * GB + HEADROOM), "cpu": "1"}))]
#[case::shell_variable_in_sh_c(
    json!({"command": ["sh", "-c", "exec dask worker --nthreads ${THREADS} --memory-limit \"$MEM\""], "env": [{"name": "MEM", "value": "2GiB"}, {"name": "THREADS", "value": "2"}]}),
    json!({"memory": "2304Mi", "cpu": "2"}))]
#[case::limit_from_resource_field_ref_agrees(
    json!({"args": ["dask", "worker", "--nthreads", "2", "--memory-limit", "$(MEM_LIMIT)"], "env": [mem_limit_ref("MEM_LIMIT", None)],
           "resources": {"limits": {"cpu": "2", "memory": "6G"}}}),
    json!({"cpu": "2", "memory": "6G"}))]
#[case::threads_from_resource_field_ref(
    json!({"args": ["dask", "worker", "--nthreads", "$(CPUS)", "--memory-limit", "1GB"], "env": [{"name": "CPUS", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}}],
           "resources": {"limits": {"cpu": "3"}}}),
    json!({"cpu": "3", "memory": mem(GB + HEADROOM)}))]
fn variables_the_pod_defines_are_resolved_and_checked(
    #[case] mut container: Value,
    #[case] limits: Value,
) {
    container["name"] = json!("worker");
    let args_before = container.get("args").cloned();
    let (out, warnings) = evaluate(container, &defaults());
    assert_eq!(out["resources"]["limits"], limits, "{warnings:?}");
    if let Some(args) = args_before {
        let args: Vec<Value> = args.as_array().expect("args").clone();
        assert_eq!(
            out["args"].as_array().expect("args")[..args.len()],
            args[..],
            "variables stay variables"
        );
    }
    assert!(warnings.is_empty(), "nothing left unchecked: {warnings:?}");
}

#[rstest]
#[case::config_map(
    json!({"args": ["dask", "worker", "--nthreads", "2", "--memory-limit", "$(MEM)"], "env": [{"name": "MEM", "valueFrom": {"configMapKeyRef": {"name": "sizes", "key": "mem"}}}]}),
    "--memory-limit $(MEM) is only known when the container starts (env MEM comes from a ConfigMap); memory resources left as they are",
    json!({"cpu": "2"}))]
#[case::env_from(
    json!({"args": ["dask", "worker", "--nthreads", "2", "--memory-limit", "$(MEM)"], "envFrom": [{"configMapRef": {"name": "sizes"}}]}),
    "--memory-limit $(MEM) is only known when the container starts (MEM is not in the container's env and may come from envFrom); memory resources left as they are",
    json!({"cpu": "2"}))]
#[case::limit_not_set(
    json!({"args": ["dask", "worker", "--nthreads", "2", "--memory-limit", "$(MEM_LIMIT)"], "env": [mem_limit_ref("MEM_LIMIT", None)]}),
    "--memory-limit $(MEM_LIMIT) is only known when the container starts (env MEM_LIMIT is resources.limits.memory, which is not set (the kubelet then gives the node's allocatable amount)); memory resources left as they are",
    json!({"cpu": "2"}))]
#[case::command_substitution(
    json!({"command": ["sh", "-c", "dask worker --nthreads $(nproc) --memory-limit 2GB"]}),
    "--nthreads $(nproc) is only known when the container starts (\"$(nproc)\" runs a command substitution in the shell); cpu resources left as they are",
    json!({"memory": mem(2 * GB + HEADROOM)}))]
#[case::image_env_in_shell(
    json!({"command": ["bash", "-c", "dask worker --nthreads 1 --memory-limit $WORKER_MEMORY"]}),
    "--memory-limit $WORKER_MEMORY is only known when the container starts ($WORKER_MEMORY is not in the container's env (it may come from the image or envFrom)); memory resources left as they are",
    json!({"cpu": "1"}))]
#[case::nworkers_from_a_secret(
    json!({"args": ["dask", "worker", "--nworkers", "$(N)", "--memory-limit", "2GB"], "env": [{"name": "N", "valueFrom": {"secretKeyRef": {"name": "s", "key": "n"}}}]}),
    "--nworkers $(N) is only known when the container starts (env N comes from a Secret); resources and --nthreads/--memory-limit left as they are",
    Value::Null)]
fn variables_known_only_at_runtime_leave_their_dimension_with_a_warning(
    #[case] mut container: Value,
    #[case] warning: &str,
    #[case] limits: Value,
) {
    container["name"] = json!("worker");
    let (out, warnings) = evaluate(container, &defaults());
    assert!(
        warnings.contains(&format!("container \"worker\": {warning}")),
        "{warnings:#?}"
    );
    assert_eq!(out["resources"]["limits"], limits);
    let words: Vec<&str> = out["args"]
        .as_array()
        .or(out["command"].as_array())
        .expect("argv")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        words.join(" ").contains("--death-timeout 60"),
        "everything else is still defaulted: {words:?}"
    );
}

#[rstest]
#[case::each_worker_would_get_the_whole_container(
    json!({"args": ["dask", "worker", "--nworkers", "2", "--nthreads", "1", "--memory-limit", "$(MEM_LIMIT)"], "env": [mem_limit_ref("MEM_LIMIT", None)],
           "resources": {"limits": {"cpu": "2", "memory": "6G"}}}),
    OnMismatch::Reject,
    "container \"worker\": --memory-limit $(MEM_LIMIT) (= 6000000000) x --nworkers 2 = 12G (12000000000 bytes), but resources.limits.memory is 6G (6000000000 bytes): it must hold that and at most memoryHeadroom 256Mi more; make them agree (--memory-limit 2865782272 or resources.limits.memory 11980894Ki), or set the policy's onMismatch to useResources or useFlags")]
#[case::use_flags_cannot_follow_a_flag_that_follows_the_limit(
    json!({"args": ["dask", "worker", "--nworkers", "2", "--nthreads", "1", "--memory-limit", "$(MEM_LIMIT)"], "env": [mem_limit_ref("MEM_LIMIT", None)],
           "resources": {"limits": {"cpu": "2", "memory": "6G"}}}),
    OnMismatch::UseFlags,
    "container \"worker\": --memory-limit $(MEM_LIMIT) (= 6000000000) reads resources.limits.memory, which the policy must change for the flags to fit, and the flag would change with it (to $(MEM_LIMIT) (= 12268435456)); write the flag as a value, or make the resources agree with it")]
#[case::a_flag_unknown_until_the_policy_sets_what_it_reads(
    json!({"args": ["dask", "worker", "--nthreads", "$(N)", "--memory-limit", "1GiB"], "env": [mem_limit_ref("N", None)]}),
    OnMismatch::Reject,
    "container \"worker\": --nthreads $(N) reads resources.limits.memory, which the policy must change for the flags to fit, and the flag would change with it (to $(N) (= 1342177280)); write the flag as a value, or make the resources agree with it")]
#[case::divisor_counts_mebibytes_that_dask_reads_as_bytes(
    json!({"args": ["dask", "worker", "--memory-limit", "$(MEM_MI)"], "env": [mem_limit_ref("MEM_MI", Some("1Mi"))],
           "resources": {"limits": {"memory": "6Gi"}}}),
    OnMismatch::Reject,
    "container \"worker\": --memory-limit $(MEM_MI) (= 6144) is 6144 bytes to Dask (a number with no unit is a byte count), and a Dask worker needs at least 64Mi (67108864 bytes): give it a unit, such as 6144GB or 6144MiB")]
fn variables_bound_to_the_resources_are_checked_against_them(
    #[case] mut container: Value,
    #[case] mode: OnMismatch,
    #[case] message: &str,
) {
    container["name"] = json!("worker");
    let settings = WorkerDefaults {
        on_mismatch: mode,
        ..defaults()
    };
    let error = default_object("", "Pod", "CREATE", worker_pod(container), &settings)
        .expect_err("rejected");
    assert_eq!(error.to_string(), message);
}

#[test]
fn use_resources_replaces_a_bound_variable_with_the_value() {
    let container = json!({"name": "worker",
        "args": ["dask", "worker", "--nworkers", "2", "--nthreads", "1", "--memory-limit", "$(MEM_LIMIT)"],
        "env": [mem_limit_ref("MEM_LIMIT", None)],
        "resources": {"limits": {"cpu": "2", "memory": "6G"}}});
    let settings = WorkerDefaults {
        on_mismatch: OnMismatch::UseResources,
        ..defaults()
    };
    let (out, _) = evaluate(container, &settings);
    assert_eq!(out["args"][7], "2865782272");
    assert_eq!(out["resources"]["limits"]["memory"], "6G");
}

#[rstest]
#[case::hyphenated_script(
    &["dask-worker", "--nthreads", "1", "--memory-limit", "1GB"],
    "the dask-worker script was removed in distributed 2026.6.0, so the container fails to start with a current image; use `dask worker`")]
#[case::nprocs(
    &["dask", "worker", "--nprocs", "2", "--nthreads", "1", "--memory-limit", "1GB"],
    "--nprocs was removed from distributed (2026.8.0 exits with \"No such option '--nprocs'\"); it is read as --nworkers for older images, use --nworkers")]
fn removed_command_line_forms_warn(#[case] args: &[&str], #[case] warning: &str) {
    let (out, warnings) = evaluate(worker(args), &defaults());
    assert!(
        warnings.contains(&format!("container \"worker\": {warning}")),
        "{warnings:#?}"
    );
    assert!(
        out["resources"]["limits"].get("memory").is_some(),
        "sized as before"
    );
}

/// One rule for a flag at Dask's default: `--memory-limit auto` and `--nthreads 0` are
/// what Dask does without the flag, so the policy treats them exactly as absent flags:
/// sized from the container's resources when it has some, warned about when not.
#[rstest]
#[case::memory_auto_with_limits(&["--memory-limit", "auto"], json!({"limits": {"cpu": "2", "memory": "6G"}}))]
#[case::memory_auto_without_resources(&["--memory-limit", "auto"], Value::Null)]
#[case::nthreads_zero_with_limits(&["--nthreads", "0"], json!({"limits": {"cpu": "2", "memory": "6G"}}))]
#[case::nthreads_zero_without_resources(&["--nthreads", "0"], Value::Null)]
#[case::both_with_requests_only(&["--nthreads=0", "--memory-limit=auto"], json!({"requests": {"cpu": "1", "memory": "2Gi"}}))]
fn dask_defaults_spelled_out_act_as_absent_flags(
    #[case] spelled_out: &[&str],
    #[case] resources: Value,
) {
    let with_flags = {
        let mut args = vec!["dask", "worker"];
        args.extend_from_slice(spelled_out);
        let mut c = worker(&args);
        c["resources"] = resources.clone();
        c
    };
    let mut absent = worker(&["dask", "worker"]);
    absent["resources"] = resources;
    let (explicit_out, explicit_warnings) = evaluate(with_flags, &defaults());
    let (absent_out, absent_warnings) = evaluate(absent, &defaults());
    assert_eq!(explicit_out["resources"], absent_out["resources"]);
    assert_eq!(explicit_warnings, absent_warnings);
    let values = |c: &Value, flag: &str| -> Option<String> {
        let args: Vec<&str> = c["args"]
            .as_array()?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        args.iter().enumerate().find_map(|(i, a)| {
            a.strip_prefix(&format!("{flag}="))
                .map(str::to_owned)
                .or_else(|| (*a == flag).then(|| args.get(i + 1).map(|v| (*v).to_owned()))?)
        })
    };
    for flag in ["--memory-limit", "--nthreads"] {
        let explicit = values(&explicit_out, flag);
        let derived = values(&absent_out, flag);
        if derived.is_some() {
            assert_eq!(explicit, derived, "{flag} rewritten to the derived value");
        }
    }
}

#[test]
fn headroom_setting_zero_gives_the_flags_the_whole_container() {
    let settings = WorkerDefaults {
        memory_headroom: dask_worker_spec::MemoryQuantity::from_bytes(0),
        ..defaults()
    };
    let (out, _) = evaluate(
        worker(&["dask", "worker", "--nthreads", "1", "--memory-limit", "6GB"]),
        &settings,
    );
    assert_eq!(out["resources"]["limits"]["memory"], "6G");
}

/// Regression of the `policy_request` fuzz crash `crash-ef3e2d49a317d5d56bef7508ee5775791c29ec89`:
/// a worker argument written against a redirection (`...2>...`), in a Deployment whose cpu
/// request implies the thread count. The inserted `--nthreads 45082000` landed against the
/// `>` and the shell (and the second pass) read the number as a file descriptor, so the
/// reinvocation found `--nthreads` without a value and refused the object.
#[test]
fn fuzz_crash_ef3e2d49_number_inserted_against_a_redirect() {
    let deployment = json!({"spec": {"template": {
        "metadata": {"labels": {"dask.org/component": "worker"}},
        "spec": {"containers": [{
            "name": "worker",
            "command": ["sh", "-c", "MALLOC_TRIM_THRESHOLD_=0 dask worker \u{0}\u{1a}\u{19}2>\u{0}\u{0}\u{0}\u{0}"],
            "resources": {"requests": {"cpu": "45082k"}}
        }]}
    }}});
    let first = run("Deployment", "CREATE", &deployment, &defaults()).expect("mutated");
    let script = first["spec"]["template"]["spec"]["containers"][0]["command"][2]
        .as_str()
        .expect("script")
        .to_owned();
    assert!(
        script.contains("--nthreads 45082000 --death-timeout 60 --name $(DASK_WORKER_NAME) >"),
        "{script}"
    );
    assert_eq!(
        run("Deployment", "CREATE", &first, &defaults()),
        None,
        "the reinvocation accepts it unchanged"
    );
}

/// Regression of the `policy_request` fuzz crash `crash-47c4d85647f1cf79a4afad3df645a58950523b51`:
/// a `sh -c` script ending in a backslash. Appending `--death-timeout 60` after it made the
/// backslash escape the new space, so the flag became part of the last word and every
/// reinvocation appended it again. Such a script cannot be extended: it is refused.
#[test]
fn fuzz_crash_47c4d856_script_ending_in_a_backslash_is_refused() {
    let deployment = json!({"spec": {"template": {
        "metadata": {"labels": {"app": "dask", "component": "dask-worker"}},
        "spec": {"containers": [{"name": "worker", "command": ["sh", "-c", "dask worker aut:\\\\\\\\\\"]}]}
    }}});
    let error = default_object("apps", "Deployment", "CREATE", deployment, &defaults())
        .expect_err("refused");
    assert_eq!(
        error.to_string(),
        "container \"worker\": the shell script has an unterminated quote, substitution or escape, so it cannot be edited safely"
    );
}
