//! The policy live: served by Kubewarden's policy-server in the local cluster, registered as
//! the mutating admission webhook Kubewarden's controller writes for the README's
//! ClusterAdmissionPolicy (`e2e-tests/local-cluster/up.d/20-policy-server.sh`). Objects are
//! created as a client would, without any defaults, and read back as the apiserver stored
//! them, after its own defaulting and validation.
//!
//! Needs `e2e-tests/local-cluster/cluster up`; fails saying so when no cluster answers.
//! `#[ignore]`d outside the integration tier.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use cluster_harness::TestNamespace;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::PostParams;
use serde_json::{Value, json};

/// A client for the local cluster (an unreachable one fails the test).
async fn cluster() -> Client {
    cluster_harness::cluster("the policy webhook tests").await.0
}

/// Creating objects as a client would, in a test's namespace (the shared
/// [`TestNamespace`] of every suite).
trait CreateAsClient {
    /// Creates `object` as a `K` in this namespace and returns what the apiserver stored
    /// (after its defaulting, the webhook and validation).
    async fn create<K>(&self, object: Value) -> Result<Value, kube::Error>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + std::fmt::Debug
            + serde::Serialize
            + serde::de::DeserializeOwned,
        <K as kube::Resource>::DynamicType: Default;
}

impl CreateAsClient for TestNamespace {
    async fn create<K>(&self, object: Value) -> Result<Value, kube::Error>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + std::fmt::Debug
            + serde::Serialize
            + serde::de::DeserializeOwned,
        <K as kube::Resource>::DynamicType: Default,
    {
        let typed: K = serde_json::from_value(object).expect("a valid object");
        let stored = self
            .api::<K>()
            .create(&PostParams::default(), &typed)
            .await?;
        Ok(as_json(&stored))
    }
}

/// A worker container as a client writes it: flags only, no resources.
fn bare_worker(args: &[&str]) -> Value {
    json!({"name": "worker", "image": "ghcr.io/dask/dask:latest", "args": args})
}

/// Keeps pods Pending (no node matches), so no process starts: this test is about what
/// the apiserver stores.
fn pending_spec(containers: Value) -> Value {
    json!({"containers": containers, "nodeSelector": {"dask-on-k8s.test/never": "true"}})
}

fn as_json<T: serde::Serialize>(object: &T) -> Value {
    serde_json::to_value(object).unwrap()
}

fn dask_tolerations(spec: &Value) -> Vec<Value> {
    spec["tolerations"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|t| {
            t["key"]
                .as_str()
                .is_some_and(|k| k.starts_with("k8s.dask.org"))
        })
        .collect()
}

/// What every defaulted worker spec must carry.
fn assert_worker_defaults(spec: &Value, cpu: &str, memory: &str) {
    assert_eq!(
        dask_tolerations(spec),
        vec![
            json!({"key": "k8s.dask.org/dedicated", "operator": "Equal", "value": "worker", "effect": "NoSchedule"}),
            json!({"key": "k8s.dask.org_dedicated", "operator": "Equal", "value": "worker", "effect": "NoSchedule"}),
        ],
        "{spec}"
    );
    let container = &spec["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        args.windows(2).any(|w| w == ["--death-timeout", "60"]),
        "{args:?}"
    );
    assert!(
        args.windows(2)
            .any(|w| w == ["--name", "$(DASK_WORKER_NAME)"]),
        "{args:?}"
    );
    let limits = json!({"cpu": cpu, "memory": memory});
    assert_eq!(container["resources"]["limits"], limits);
    assert_eq!(container["resources"]["requests"], limits);
    assert_eq!(
        container["env"],
        json!([{"name": "DASK_WORKER_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}])
    );
}

#[tokio::test]
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn bare_worker_pod_is_stored_with_every_default() {
    let client = cluster().await;
    let ns = TestNamespace::create(&client, "webhook-pod").await;
    let stored = ns
        .create::<Pod>(json!({
            "metadata": {"name": "bare-worker", "labels": {"dask.org/component": "worker"}},
            "spec": pending_spec(json!([bare_worker(&["dask", "worker", "tcp://s:8786", "--nthreads", "1", "--memory-limit", "1GB"])]))
        }))
        .await
        .expect("created");
    let spec = &stored["spec"];
    // 1 GB for the worker and the policy's default memoryHeadroom (256Mi).
    assert_worker_defaults(spec, "1", "1268435456");
    assert_eq!(spec["restartPolicy"], "Never");
    assert_eq!(
        stored["status"]["qosClass"], "Guaranteed",
        "requests equal limits"
    );
    ns.delete().await;
}

#[tokio::test]
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn classic_labels_and_flags_from_limits() {
    let client = cluster().await;
    let ns = TestNamespace::create(&client, "webhook-classic").await;
    let mut container = bare_worker(&["dask-worker", "tcp://s:8786"]);
    container["resources"] = json!({"limits": {"cpu": "2", "memory": "3Gi"}});
    let stored = ns
        .create::<Pod>(json!({
            "metadata": {"name": "classic", "labels": {"app": "dask", "component": "dask-worker"}},
            "spec": pending_spec(json!([container]))
        }))
        .await
        .expect("created");
    let spec = &stored["spec"];
    assert_worker_defaults(spec, "2", "3Gi");
    let args = &spec["containers"][0]["args"];
    assert_eq!(
        args,
        &json!([
            "dask-worker",
            "tcp://s:8786",
            "--nthreads",
            "2",
            "--memory-limit",
            "2816MiB",
            "--death-timeout",
            "60",
            "--name",
            "$(DASK_WORKER_NAME)"
        ])
    );
    ns.delete().await;
}

#[tokio::test]
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn unlabelled_pod_is_stored_unchanged() {
    let client = cluster().await;
    let ns = TestNamespace::create(&client, "webhook-plain").await;
    let stored = ns
        .create::<Pod>(json!({
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": pending_spec(json!([{"name": "web", "image": "nginx", "args": ["dask", "worker"]}]))
        }))
        .await
        .expect("created");
    let spec = &stored["spec"];
    assert!(dask_tolerations(spec).is_empty(), "{spec}");
    assert_eq!(
        spec["restartPolicy"], "Always",
        "the apiserver's default, untouched"
    );
    assert_eq!(spec["containers"][0]["args"], json!(["dask", "worker"]));
    assert!(spec["containers"][0].get("env").is_none());
    ns.delete().await;
}

#[tokio::test]
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn worker_deployment_and_job_templates_are_defaulted() {
    let client = cluster().await;
    let ns = TestNamespace::create(&client, "webhook-workloads").await;
    let template = json!({
        "metadata": {"labels": {"dask.org/component": "worker", "app.kubernetes.io/name": "w"}},
        "spec": pending_spec(json!([bare_worker(&["dask", "worker", "tcp://s:8786", "--nthreads", "2", "--memory-limit", "2GiB"])]))
    });
    let stored = ns
        .create::<Deployment>(json!({
            "metadata": {"name": "workers"},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app.kubernetes.io/name": "w"}}, "template": template}
        }))
        .await
        .expect("created");
    let spec = &stored["spec"]["template"]["spec"];
    assert_worker_defaults(spec, "2", "2304Mi");
    assert_eq!(
        spec["restartPolicy"], "Always",
        "Deployments only allow Always"
    );

    let mut job_template = template.clone();
    job_template["spec"]["restartPolicy"] = json!("OnFailure");
    let stored = ns
        .create::<Job>(json!({
            "metadata": {"name": "batch-workers"},
            "spec": {"parallelism": 0, "template": job_template}
        }))
        .await
        .expect("created");
    let spec = &stored["spec"]["template"]["spec"];
    assert_worker_defaults(spec, "2", "2304Mi");
    assert_eq!(spec["restartPolicy"], "Never");
    ns.delete().await;
}

#[tokio::test]
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn mismatched_worker_pod_is_refused_with_the_policy_message() {
    let client = cluster().await;
    let ns = TestNamespace::create(&client, "webhook-refuse").await;
    let mut container =
        bare_worker(&["dask", "worker", "--nthreads", "2", "--memory-limit", "4GB"]);
    container["resources"] = json!({"limits": {"cpu": "2", "memory": "6G"}});
    let error = ns
        .create::<Pod>(json!({
            "metadata": {"name": "mismatch", "labels": {"dask.org/component": "worker"}},
            "spec": pending_spec(json!([container]))
        }))
        .await
        .expect_err("refused");
    let kube::Error::Api(status) = error else {
        panic!("not an API error: {error}")
    };
    assert!(
        status.message.contains(
            "container \"worker\": --memory-limit 4GB x --nworkers 1 = 4G (4000000000 bytes), \
             but resources.limits.memory is 6G (6000000000 bytes)"
        ),
        "{}",
        status.message
    );
    assert!(
        status.message.contains("denied the request"),
        "{}",
        status.message
    );
    assert!(
        ns.api::<Pod>()
            .get_opt("mismatch")
            .await
            .expect("get")
            .is_none(),
        "nothing stored"
    );
    ns.delete().await;
}

/// Flag values that are variables, through the apiserver: one the policy can resolve (the
/// container's own `limits.memory` through a `resourceFieldRef`) is checked and the pod
/// completed; one only known when the container starts (a ConfigMap) leaves the memory
/// alone while every other default still applies; a byte count no worker can run in is
/// refused naming the unit Dask read.
#[tokio::test]
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn variable_flags_and_the_memory_floor_through_the_apiserver() {
    let client = cluster().await;
    let ns = TestNamespace::create(&client, "webhook-variables").await;

    let mut from_limits = bare_worker(&[
        "dask",
        "worker",
        "--nthreads",
        "2",
        "--memory-limit",
        "$(MEM_LIMIT)",
    ]);
    from_limits["env"] = json!([{"name": "MEM_LIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory"}}}]);
    from_limits["resources"] = json!({"limits": {"cpu": "2", "memory": "6G"}});
    let stored = ns
        .create::<Pod>(json!({
            "metadata": {"name": "from-limits", "labels": {"dask.org/component": "worker"}},
            "spec": pending_spec(json!([from_limits]))
        }))
        .await
        .expect("created");
    let container = &stored["spec"]["containers"][0];
    assert_eq!(
        container["resources"]["requests"],
        json!({"cpu": "2", "memory": "6G"}),
        "{container}"
    );
    assert_eq!(
        container["resources"]["limits"],
        json!({"cpu": "2", "memory": "6G"})
    );
    assert_eq!(
        container["args"][5], "$(MEM_LIMIT)",
        "the variable stays for the kubelet"
    );
    assert_eq!(dask_tolerations(&stored["spec"]).len(), 2);

    let mut from_config_map = bare_worker(&[
        "dask",
        "worker",
        "--nthreads",
        "2",
        "--memory-limit",
        "$(MEM)",
    ]);
    from_config_map["env"] = json!([{"name": "MEM", "valueFrom": {"configMapKeyRef": {"name": "dask-sizes", "key": "memory"}}}]);
    let stored = ns
        .create::<Pod>(json!({
            "metadata": {"name": "from-config-map", "labels": {"dask.org/component": "worker"}},
            "spec": pending_spec(json!([from_config_map]))
        }))
        .await
        .expect("created (the policy warns, it does not refuse)");
    let spec = &stored["spec"];
    assert_eq!(
        spec["containers"][0]["resources"],
        json!({"limits": {"cpu": "2"}, "requests": {"cpu": "2"}}),
        "memory left alone, cpu from --nthreads"
    );
    assert_eq!(dask_tolerations(spec).len(), 2, "{spec}");
    assert_eq!(spec["restartPolicy"], "Never");

    let error = ns
        .create::<Pod>(json!({
            "metadata": {"name": "two-bytes", "labels": {"dask.org/component": "worker"}},
            "spec": pending_spec(json!([bare_worker(&["dask", "worker", "--nthreads", "1", "--memory-limit", "2.5"])]))
        }))
        .await
        .expect_err("refused");
    let kube::Error::Api(status) = error else {
        panic!("not an API error: {error}")
    };
    assert!(
        status.message.contains(
            "--memory-limit 2.5 is 2 bytes to Dask (a number with no unit is a byte count)"
        ),
        "{}",
        status.message
    );
    ns.delete().await;
}
