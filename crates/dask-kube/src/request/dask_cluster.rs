//! A `DaskCluster` resource of the dask-kubernetes operator as a [`ClusterRequest`]: what
//! its client's `custom_cluster_spec=` sends, and what an operator reconciling one asks the
//! library for.

use super::{ClusterRequest, TemplateSource};
use crate::{Error, Result};
use serde_json::{Value, json};

impl ClusterRequest {
    /// The request a `DaskCluster` resource of the dask-kubernetes operator makes (its
    /// client's `custom_cluster_spec=`, or an operator reconciling one): the name, the
    /// worker pod spec and replicas, the scheduler pod spec, the Service's type and the idle
    /// timeout. A worker command that names itself `$(DASK_WORKER_NAME)`, as upstream's
    /// generated specs do, gets that variable from the pod's name, as upstream's operator
    /// gives it.
    ///
    /// # Example
    /// ```
    /// use dask_kube::ClusterRequest;
    /// let request = ClusterRequest::from_dask_cluster(&serde_json::json!({
    ///     "apiVersion": "kubernetes.dask.org/v1", "kind": "DaskCluster",
    ///     "metadata": {"name": "demo"},
    ///     "spec": {"worker": {"replicas": 2, "spec": {"containers": [
    ///         {"name": "worker", "image": "ghcr.io/dask/dask", "args": ["dask", "worker"]}]}},
    ///              "scheduler": {"spec": {"containers": [
    ///         {"name": "scheduler", "image": "ghcr.io/dask/dask", "args": ["dask", "scheduler"]}]},
    ///                            "service": {"type": "NodePort"}}}})).unwrap();
    /// assert_eq!(request.name.as_deref(), Some("demo"));
    /// assert_eq!(request.n_workers, Some(2));
    /// assert_eq!(request.scheduler_service_type.as_deref(), Some("NodePort"));
    /// ```
    pub fn from_dask_cluster(cluster: &Value) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidTemplate {
            what: "worker",
            origin: "the DaskCluster resource".into(),
            reason: reason.to_owned(),
        };
        if cluster.get("kind").and_then(Value::as_str) != Some("DaskCluster") {
            return Err(invalid("kind must be DaskCluster"));
        }
        let spec = cluster
            .get("spec")
            .filter(|s| s.is_object())
            .ok_or_else(|| invalid("spec is missing"))?;
        let worker = spec
            .pointer("/worker/spec")
            .filter(|s| s.is_object())
            .ok_or_else(|| invalid("spec.worker.spec is missing"))?;
        let mut worker_pod = json!({"spec": worker});
        name_workers_after_their_pods(&mut worker_pod);
        let scheduler = spec
            .pointer("/scheduler/spec")
            .filter(|s| s.is_object())
            .map(|s| TemplateSource::Pod(json!({"spec": s})));
        let replicas = match spec.pointer("/worker/replicas") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| invalid("spec.worker.replicas must be a whole number >= 0"))?,
            ),
        };
        let idle_timeout = match spec.get("idleTimeout") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) if n.as_f64().is_some_and(|t| t > 0.0) => Some(format!("{n}s")),
            // Upstream's 0 means none.
            Some(Value::Number(_)) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(invalid("spec.idleTimeout must be a number of seconds")),
        };
        Ok(ClusterRequest {
            name: cluster
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .map(str::to_owned),
            namespace: cluster
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .map(str::to_owned),
            worker_template: Some(TemplateSource::Pod(worker_pod)),
            scheduler_template: scheduler,
            n_workers: replicas,
            idle_timeout,
            scheduler_service_type: spec
                .pointer("/scheduler/service/type")
                .and_then(Value::as_str)
                .map(str::to_owned),
            ..ClusterRequest::default()
        })
    }
}

/// Gives `DASK_WORKER_NAME` from the pod's name to the containers whose args use
/// `$(DASK_WORKER_NAME)` without defining it.
fn name_workers_after_their_pods(pod: &mut Value) {
    let Some(containers) = pod
        .pointer_mut("/spec/containers")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    let reference = format!("$({})", dask_worker_spec::WORKER_NAME_ENV);
    for container in containers {
        let uses = ["command", "args"].iter().any(|key| {
            container
                .get(*key)
                .and_then(Value::as_array)
                .is_some_and(|words| {
                    words
                        .iter()
                        .any(|w| w.as_str().is_some_and(|w| w.contains(&reference)))
                })
        });
        let Some(map) = container.as_object_mut() else {
            continue;
        };
        let env = map.entry("env").or_insert_with(|| json!([]));
        if env.is_null() {
            *env = json!([]);
        }
        let Some(env) = env.as_array_mut() else {
            continue;
        };
        let defined = env.iter().any(|e| {
            e.get("name").and_then(Value::as_str) == Some(dask_worker_spec::WORKER_NAME_ENV)
        });
        if uses && !defined {
            env.push(json!({"name": dask_worker_spec::WORKER_NAME_ENV,
                            "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}));
        }
        if env.is_empty() {
            map.remove("env");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DaskConfig;
    use crate::manifests::ServiceType;
    use crate::names::NameVars;
    use rstest::rstest;

    fn vars() -> NameVars {
        NameVars {
            user: "Alice".into(),
            uuid: "0a1b2c3d4e".into(),
            env: Default::default(),
        }
    }

    #[test]
    fn an_upstream_dask_cluster_becomes_a_request() {
        let cluster = json!({
            "apiVersion": "kubernetes.dask.org/v1", "kind": "DaskCluster",
            "metadata": {"name": "simple", "namespace": "team"},
            "spec": {
                "idleTimeout": 60,
                "worker": {"replicas": 3, "spec": {"containers": [{"name": "worker", "image": "ghcr.io/dask/dask:latest",
                    "args": ["dask", "worker", "--name", "$(DASK_WORKER_NAME)", "--nthreads", "1", "--memory-limit", "1GB"]}]}},
                "scheduler": {"spec": {"containers": [{"name": "scheduler", "image": "ghcr.io/dask/dask:latest",
                    "args": ["dask", "scheduler", "--host", "0.0.0.0"]}]},
                              "service": {"type": "LoadBalancer"}}
            }
        });
        let request = ClusterRequest::from_dask_cluster(&cluster).unwrap();
        let r = request.resolve(&DaskConfig::default(), &vars()).unwrap();
        assert_eq!(
            (r.spec.name.as_str(), r.spec.namespace.as_str(), r.workers),
            ("simple", "team", 3)
        );
        assert_eq!(r.spec.service_type, ServiceType::LoadBalancer);
        assert_eq!(r.spec.scheduler_options, ["--idle-timeout", "60s"]);
        let worker = r.spec.worker_pod().unwrap().pod;
        let env = &worker["spec"]["containers"][0]["env"];
        assert!(
            env.as_array()
                .unwrap()
                .iter()
                .any(|e| e["name"] == "DASK_WORKER_NAME"
                    && e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"),
            "{env}"
        );
        assert_eq!(
            r.spec.scheduler_pod().unwrap()["spec"]["containers"][0]["image"],
            "ghcr.io/dask/dask:latest"
        );
    }

    #[rstest]
    #[case::not_a_dask_cluster(json!({"kind": "Pod"}), "kind must be DaskCluster")]
    #[case::no_worker(json!({"kind": "DaskCluster", "spec": {"scheduler": {}}}), "spec.worker.spec is missing")]
    #[case::bad_replicas(json!({"kind": "DaskCluster", "spec": {"worker": {"replicas": -1, "spec": {"containers": []}}}}), "replicas")]
    fn what_is_not_a_dask_cluster_says_why(#[case] cluster: Value, #[case] needle: &str) {
        let err = ClusterRequest::from_dask_cluster(&cluster)
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{err}");
    }
}
