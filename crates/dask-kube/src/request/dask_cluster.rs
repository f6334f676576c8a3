//! A `DaskCluster` resource of the dask-kubernetes operator as a [`ClusterRequest`]: what
//! its client's `custom_cluster_spec=` sends, and what an operator reconciling one asks the
//! library for.

use super::{ClusterRequest, ResolvedCluster, TemplateSource};
use crate::tls::TlsMode;
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

impl ResolvedCluster {
    /// The `DaskCluster` resource of this cluster, for a dask-kubernetes operator (dask-kube's
    /// or upstream's) to make: what a client creates when the operator is installed
    /// (Python's `deploy_mode="operator"`), the inverse of
    /// [`ClusterRequest::from_dask_cluster`]. The worker and scheduler pod specs are the ones
    /// dask-kube would run (the worker defaults applied, the scheduler's HTTP API routes,
    /// `--jupyter`, the env), except what only a bare pod may have or what the operator does
    /// itself: the scheduler's `restartPolicy: Never` (its Deployment restarts it) and its
    /// `--idle-timeout`, which becomes `spec.idleTimeout` (the operator deletes the whole
    /// cluster; a scheduler that exited would only be started again). `namespace` is used
    /// when the request left it to the credentials. The default TLS (a CA made for the
    /// cluster) is not carried: its Secret is made by dask-kube's pod path only, and the
    /// operators' schedulers speak `tcp://`; pods that bring their own TLS keep it.
    ///
    /// # Errors
    /// A worker template the defaults refuse, or an idle timeout that is not a duration.
    ///
    /// # Example
    /// ```
    /// use dask_kube::{ClusterRequest, DaskConfig, NameVars};
    /// let request = ClusterRequest {
    ///     image: Some("ghcr.io/dask/dask:latest".into()),
    ///     name: Some("etl".into()),
    ///     n_workers: Some(2),
    ///     idle_timeout: Some("10m".into()),
    ///     ..Default::default()
    /// };
    /// let resolved = request.resolve(&DaskConfig::default(), &NameVars::default()).unwrap();
    /// let cluster = resolved.dask_cluster("team").unwrap();
    /// assert_eq!(cluster["metadata"]["namespace"], "team");
    /// assert_eq!(cluster["spec"]["worker"]["replicas"], 2);
    /// assert_eq!(cluster["spec"]["idleTimeout"], 600);
    /// ```
    pub fn dask_cluster(&self, namespace: &str) -> Result<Value> {
        let mut spec = self.spec.clone();
        if spec.namespace.is_empty() {
            namespace.clone_into(&mut spec.namespace);
        }
        // The cluster's own CA lives in a Secret owned by the scheduler pod, which only
        // dask-kube's pod path creates; a DaskCluster's scheduler is the operator's, and
        // upstream's operator (and its client) speak plain `tcp://`. Pod templates that bring
        // their own certificates (`Provided`) keep them.
        if spec.tls == TlsMode::ClusterCa {
            tracing::info!(
                cluster = %spec.name,
                "a DaskCluster carries no cluster CA: its scheduler and workers talk tcp:// as the operator's do"
            );
            spec.tls = TlsMode::Off;
        }
        let idle_timeout = take_idle_timeout(&mut spec.scheduler_options)?;
        let worker = spec.worker_pod()?.pod;
        let mut scheduler = spec.scheduler_pod()?;
        if let Some(pod_spec) = scheduler.get_mut("spec").and_then(Value::as_object_mut) {
            pod_spec.remove("restartPolicy");
        }
        let service = spec.service(None);
        // The cluster's labels (app, cluster name, user) pass on to what the operator makes;
        // each object's component is the operator's to set.
        let mut labels = worker["metadata"]["labels"].clone();
        if let Some(map) = labels.as_object_mut() {
            map.remove(dask_worker_spec::labels::COMPONENT);
        }
        let mut cluster_spec = json!({
            "worker": {"replicas": self.workers, "spec": worker["spec"]},
            "scheduler": {"spec": scheduler["spec"], "service": service["spec"]},
        });
        if let Some(seconds) = idle_timeout {
            cluster_spec["idleTimeout"] = json!(seconds);
        }
        Ok(json!({
            "apiVersion": format!("{}/{}", crate::DASK_OPERATOR_GROUP, crate::DASK_OPERATOR_VERSION),
            "kind": "DaskCluster",
            "metadata": {
                "name": spec.name,
                "namespace": spec.namespace,
                "labels": labels,
            },
            "spec": cluster_spec,
        }))
    }
}

/// Removes `--idle-timeout T` (or `--idle-timeout=T`) from `dask scheduler` options; the
/// whole seconds of the last one (at least 1), for `DaskCluster.spec.idleTimeout`.
fn take_idle_timeout(options: &mut Vec<String>) -> Result<Option<u64>> {
    let mut value = None;
    let mut kept = Vec::with_capacity(options.len());
    let mut words = std::mem::take(options).into_iter();
    while let Some(word) = words.next() {
        if word == "--idle-timeout" {
            value = words.next();
        } else if let Some(v) = word.strip_prefix("--idle-timeout=") {
            value = Some(v.to_owned());
        } else {
            kept.push(word);
        }
    }
    *options = kept;
    value
        .map(|text| {
            crate::manifests::timedelta_seconds(&text)
                .map(|s| (s.ceil() as u64).max(1))
                .map_err(|reason| Error::Usage(format!("idle timeout: {reason}")))
        })
        .transpose()
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

    fn resolved(request: Value) -> ResolvedCluster {
        let request: ClusterRequest = serde_json::from_value(request).unwrap();
        request.resolve(&DaskConfig::default(), &vars()).unwrap()
    }

    /// What a client creates for the operator: dask-kube's pods as the specs (worker defaults
    /// applied, the scheduler's API routes), minus what a Deployment's pod may not have or
    /// the operator does itself; read back by `from_dask_cluster`, it is the same cluster.
    #[test]
    fn a_resolved_cluster_becomes_the_dask_cluster_the_operator_makes() {
        let r = resolved(
            json!({"image": "ghcr.io/dask/dask:latest", "name": "etl", "n_workers": 3,
                                "idle_timeout": "90s", "jupyter": true,
                                "scheduler_service_type": "NodePort", "env": {"A": "1"}}),
        );
        let c = r.dask_cluster("team").unwrap();
        assert_eq!(c["apiVersion"], "kubernetes.dask.org/v1");
        assert_eq!(c["kind"], "DaskCluster");
        assert_eq!(c["metadata"]["name"], "etl");
        assert_eq!(c["metadata"]["namespace"], "team");
        assert_eq!(c["metadata"]["labels"]["dask.org/cluster-name"], "etl");
        assert!(
            c["metadata"]["labels"].get("dask.org/component").is_none(),
            "{c}"
        );
        assert_eq!(c["spec"]["worker"]["replicas"], 3);
        assert_eq!(c["spec"]["idleTimeout"], 90);
        let scheduler = &c["spec"]["scheduler"]["spec"];
        assert!(
            scheduler.get("restartPolicy").is_none(),
            "a Deployment's pod restarts: {scheduler}"
        );
        let args = scheduler["containers"][0]["args"].to_string();
        assert!(
            !args.contains("--idle-timeout"),
            "the operator deletes an idle cluster: {args}"
        );
        assert!(args.contains("--jupyter"), "{args}");
        assert!(
            scheduler["containers"][0]["env"]
                .to_string()
                .contains("distributed.http.scheduler.api")
        );
        let worker = &c["spec"]["worker"]["spec"];
        assert_eq!(worker["restartPolicy"], "Never");
        assert!(
            worker["tolerations"]
                .to_string()
                .contains("k8s.dask.org/dedicated"),
            "{worker}"
        );
        assert!(
            worker["containers"][0]["env"]
                .to_string()
                .contains(r#""name":"A""#),
            "{worker}"
        );
        let service = &c["spec"]["scheduler"]["service"];
        assert_eq!(service["type"], "NodePort");
        assert_eq!(
            service["selector"],
            json!({"dask.org/cluster-name": "etl", "dask.org/component": "scheduler"})
        );
        assert_eq!(service["ports"][0]["name"], "tcp-comm");
        assert_eq!(service["ports"][1]["name"], "http-dashboard");
        assert!(
            !c.to_string().contains("dask-kube-tls") && !c.to_string().contains("tls://"),
            "no Secret the operator would never make is mounted: {c}"
        );

        let back = ClusterRequest::from_dask_cluster(&c)
            .unwrap()
            .resolve(&DaskConfig::default(), &vars())
            .unwrap();
        assert_eq!(
            (
                back.spec.name.as_str(),
                back.spec.namespace.as_str(),
                back.workers
            ),
            ("etl", "team", 3)
        );
        assert_eq!(back.spec.service_type, ServiceType::NodePort);
        assert_eq!(back.spec.scheduler_options, ["--idle-timeout", "90s"]);
    }

    #[rstest]
    #[case::none(&[], Some(None), &[])]
    #[case::spaced(&["--idle-timeout", "30m", "--jupyter"], Some(Some(1800)), &["--jupyter"])]
    #[case::joined(&["--idle-timeout=1.5"], Some(Some(2)), &[])]
    #[case::under_a_second(&["--idle-timeout", "100ms"], Some(Some(1)), &[])]
    #[case::not_a_duration(&["--idle-timeout", "soon"], None, &[])]
    fn the_idle_timeout_moves_from_the_scheduler_to_the_resource(
        #[case] options: &[&str],
        #[case] seconds: Option<Option<u64>>,
        #[case] left: &[&str],
    ) {
        let mut options: Vec<String> = options.iter().map(|s| (*s).to_owned()).collect();
        let taken = take_idle_timeout(&mut options);
        match seconds {
            Some(expected) => {
                assert_eq!(taken.unwrap(), expected);
                assert_eq!(options, left);
            }
            None => assert!(taken.is_err()),
        }
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
