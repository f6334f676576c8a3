//! The cluster's own controller: a pod per cluster that adapts it and ends it, so neither
//! needs a client process. `dask-kube controller NAME` runs in it, under the
//! `dask-kube-controller` ServiceAccount of `deploy/rbac.yaml`: pods, port-forward (the
//! scheduler's HTTP API is private to the scheduler pod with TLS, so the controller reaches
//! it as every client does) and reading its worker template; no Services, no Secrets. Its
//! ValidatingAdmissionPolicies there hold the account to its own cluster's workers.
//!
//! Why a pod of its own and not a container in the scheduler pod: a ServiceAccount is per
//! pod, so a sidecar would hand the controller's token to the scheduler (or the scheduler's
//! lack of one to the controller); and a pod can be replaced when the adapt range changes,
//! which a container of a running pod cannot. It is owned by the scheduler pod like every
//! other object of the cluster, so it goes when the cluster goes.
//!
//! It does two things: the adapt loop (when started with a range), and, when the scheduler
//! ends (its `--idle-timeout`, or any exit: the scheduler pod is `restartPolicy: Never`),
//! deleting the scheduler pod, after which the garbage collector removes the rest,
//! the controller included.

use crate::adapt::AdaptPolicy;
use crate::apiserver::ClusterApi;
use crate::manifests::{self, APP_LABEL, Owner};
use crate::{Error, Result};
use dask_worker_spec::labels;
use serde_json::{Value, json};
use std::time::Duration;
use tracing::info;

/// `dask.org/component` of the controller pod.
pub const COMPONENT: &str = "controller";
/// The ServiceAccount the controller runs as (`deploy/rbac.yaml`).
pub const SERVICE_ACCOUNT: &str = "dask-kube-controller";
/// Bound on the controller pod going after it was deleted.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// The controller pod of cluster `cluster`.
pub fn pod_name(cluster: &str) -> String {
    format!("{cluster}-controller")
}

/// What the controller pod is made of.
#[derive(Debug, Clone)]
pub struct ControllerSpec<'a> {
    /// Cluster name.
    pub cluster: &'a str,
    /// Namespace.
    pub namespace: &'a str,
    /// The scheduler pod.
    pub owner: &'a Owner,
    /// Adapt with this policy; `None`: only end the cluster when its scheduler ends.
    pub adapt: Option<&'a AdaptPolicy>,
    /// The dask-kube image.
    pub image: &'a str,
}

/// The uid and gid the controller runs as: not root, and no user of the image (65532 is the
/// `nonroot` of distroless images).
pub const RUN_AS: i64 = 65532;

/// The controller pod manifest (pure): `dask-kube controller NAME [--adapt MIN:MAX ...]`,
/// small requests, `restartPolicy: OnFailure` (a crash restarts it; it exits 0 once the
/// cluster is gone), owned by the scheduler pod. It holds a token that may create pods, so
/// it gets only what it needs: a non-root user, no capabilities, no privilege escalation,
/// a read-only root filesystem (it writes nothing) and the runtime's default seccomp
/// profile; its token is mounted explicitly (it talks to the API server), whatever the
/// ServiceAccount says.
pub fn controller_pod(spec: &ControllerSpec<'_>) -> Value {
    let mut args = vec![
        "--namespace".to_owned(),
        spec.namespace.to_owned(),
        "controller".to_owned(),
        spec.cluster.to_owned(),
    ];
    if let Some(policy) = spec.adapt {
        args.extend(policy.cli_args());
    }
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(spec.cluster),
            "namespace": spec.namespace,
            "labels": {
                labels::CLUSTER_NAME: spec.cluster,
                labels::COMPONENT: COMPONENT,
                APP_LABEL.0: APP_LABEL.1,
            },
        },
        "spec": {
            "serviceAccountName": SERVICE_ACCOUNT,
            "automountServiceAccountToken": true,
            "restartPolicy": "OnFailure",
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": RUN_AS,
                "runAsGroup": RUN_AS,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [{
                "name": COMPONENT,
                "image": spec.image,
                "args": args,
                "env": [{"name": "RUST_LOG", "value": "info"}],
                "resources": {
                    "requests": {"cpu": "10m", "memory": "16Mi"},
                    "limits": {"memory": "128Mi"},
                },
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "privileged": false,
                    "readOnlyRootFilesystem": true,
                    "capabilities": {"drop": ["ALL"]},
                },
            }],
        },
    });
    manifests::set_owner(&mut pod, spec.owner);
    pod
}

/// Creates the controller pod of a cluster, replacing the one there (a new adapt range).
/// Fails when the namespace does not allow it, e.g. no `dask-kube-controller`
/// ServiceAccount: the API server refuses the pod.
pub async fn start(api: &ClusterApi, spec: &ControllerSpec<'_>) -> Result<()> {
    stop(api, spec.cluster).await?;
    let pod = manifests::to_pod(controller_pod(spec))?;
    api.create_pod(&pod).await.map_err(|e| match e {
        // The ServiceAccount admission plugin refuses a pod whose account does not exist
        // with a 403 that is not about the caller's permissions: say what is missing.
        Error::Forbidden { message, .. }
            if message.contains("error looking up service account") =>
        {
            Error::Usage(format!(
                "namespace {} has no ServiceAccount {SERVICE_ACCOUNT} for the controller pod \
                 (apply crates/dask-kube/deploy/rbac.yaml there)",
                spec.namespace
            ))
        }
        other => other,
    })?;
    info!(cluster = %spec.cluster, adapt = ?spec.adapt.map(|p| (p.minimum, p.maximum)), "controller pod created");
    Ok(())
}

/// Deletes the controller pod of a cluster (if any) and waits until it is gone, so that
/// its adapt loop no longer acts.
pub async fn stop(api: &ClusterApi, cluster: &str) -> Result<()> {
    let name = pod_name(cluster);
    let report = api.delete_pods(std::slice::from_ref(&name), Some(0)).await;
    if let Some(failure) = report.failed.into_iter().next() {
        return Err(Error::Partial {
            action: format!("delete the controller pod {name}"),
            done: 0,
            wanted: 1,
            failures: vec![failure],
        });
    }
    let selector = format!(
        "{}={cluster},{}={COMPONENT}",
        labels::CLUSTER_NAME,
        labels::COMPONENT
    );
    let still = api
        .wait_pods_gone(&selector, std::slice::from_ref(&name), STOP_TIMEOUT)
        .await;
    if still.is_empty() {
        Ok(())
    } else {
        Err(Error::Timeout {
            what: format!("the controller pod {name} to go"),
            seconds: STOP_TIMEOUT.as_secs(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> Owner {
        Owner {
            name: "dask-ada-1".into(),
            uid: "uid-1".into(),
        }
    }

    #[test]
    fn controller_pod_adapts_with_the_policy_under_its_own_service_account() {
        let policy = AdaptPolicy::new(1, 5);
        let pod = controller_pod(&ControllerSpec {
            cluster: "dask-ada-1",
            namespace: "team",
            owner: &owner(),
            adapt: Some(&policy),
            image: crate::config::DEFAULT_CONTROLLER_IMAGE,
        });
        assert_eq!(pod["metadata"]["name"], "dask-ada-1-controller");
        assert_eq!(pod["metadata"]["labels"][labels::COMPONENT], COMPONENT);
        assert_eq!(
            pod["metadata"]["labels"][labels::CLUSTER_NAME],
            "dask-ada-1"
        );
        assert_eq!(pod["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        assert_eq!(pod["spec"]["serviceAccountName"], SERVICE_ACCOUNT);
        assert_eq!(pod["spec"]["restartPolicy"], "OnFailure");
        let args: Vec<&str> = pod["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(
            args[..4],
            ["--namespace", "team", "controller", "dask-ada-1"]
        );
        assert_eq!(args[4..6], ["--adapt", "1:5"]);
        // The pod parses as a Pod (what create_pod sends).
        manifests::to_pod(pod).unwrap();
    }

    /// What the kubelet is asked to enforce (the cluster test reads it back from the
    /// running process): a non-root uid, no capabilities, no privilege escalation, a
    /// read-only root filesystem, seccomp RuntimeDefault; and a token, which it needs.
    #[test]
    fn the_controller_pod_runs_with_the_least_it_needs() {
        let pod = controller_pod(&ControllerSpec {
            cluster: "c",
            namespace: "ns",
            owner: &owner(),
            adapt: None,
            image: "example.org/dask-kube:1",
        });
        let spec = &pod["spec"];
        assert_eq!(spec["automountServiceAccountToken"], true);
        assert_eq!(
            spec["securityContext"],
            json!({"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                   "seccompProfile": {"type": "RuntimeDefault"}})
        );
        assert_eq!(
            spec["containers"][0]["securityContext"],
            json!({"allowPrivilegeEscalation": false, "privileged": false,
                   "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}})
        );
        let typed = manifests::to_pod(pod).unwrap();
        let context = typed.spec.unwrap().containers[0]
            .security_context
            .clone()
            .unwrap();
        assert_eq!(context.read_only_root_filesystem, Some(true));
    }

    #[test]
    fn controller_pod_without_a_range_only_watches_the_scheduler() {
        let pod = controller_pod(&ControllerSpec {
            cluster: "c",
            namespace: "ns",
            owner: &owner(),
            adapt: None,
            image: "example.org/dask-kube:1",
        });
        assert_eq!(
            pod["spec"]["containers"][0]["args"],
            json!(["--namespace", "ns", "controller", "c"])
        );
        assert_eq!(
            pod["spec"]["containers"][0]["image"],
            "example.org/dask-kube:1"
        );
    }
}
