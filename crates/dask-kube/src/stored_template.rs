//! The worker template as a running cluster keeps it: a `PodTemplate` object
//! `<cluster>-worker`, owned by the scheduler pod, from which `dask-kube scale NAME` (from
//! anywhere, later) and the cluster's controller pod make workers identical to the first.
//!
//! Why a `PodTemplate` and not an annotation on the scheduler pod (as before) or a
//! ConfigMap: whoever may write the template decides what the controller pod creates, so
//! it must be writable only by those who may create such pods themselves. An annotation is
//! writable by anyone who may patch pods, a ConfigMap by anyone with Kubernetes' `edit`
//! role; `podtemplates` are in none of the built-in roles (`view`, `edit`, `admin`), only
//! in dask-kube's own (`deploy/rbac.yaml`). It is also a typed pod spec, which the
//! controller's ValidatingAdmissionPolicy compares a created pod with, field by field.

use crate::manifests::{APP_LABEL, ClusterSpec, Owner, USER_LABEL};
use crate::names::WORKER_NAME_INFIX;
use crate::tls::TlsMode;
use crate::{Error, Result};
use dask_worker_spec::labels;
use serde_json::{Map, Value, json};

/// `dask.org/component` of the stored template (and the label the controller's
/// ValidatingAdmissionPolicy selects its parameters by).
pub const COMPONENT: &str = "worker-template";
/// Annotation of the stored template with the cluster's [`TlsMode`], which says how a
/// client reconnecting by name reaches the scheduler.
pub const TLS_ANNOTATION: &str = "dask.org/tls";

/// The stored template of cluster `cluster`: `<cluster>-worker`.
pub fn name(cluster: &str) -> String {
    format!("{cluster}-worker")
}

/// The `PodTemplate` of `spec`'s cluster holding `worker_pod` (a pod from
/// [`ClusterSpec::worker_pod`]: its labels, annotations and spec), owned by `owner`.
pub fn pod_template(spec: &ClusterSpec, worker_pod: &Value, owner: &Owner) -> Result<Value> {
    let pod_spec = worker_pod
        .get("spec")
        .filter(|s| s.is_object())
        .ok_or_else(|| invalid(&spec.name, "the worker pod has no spec"))?;
    let mut template_metadata = Map::new();
    for key in ["labels", "annotations"] {
        if let Some(v) = worker_pod["metadata"].get(key).filter(|v| v.is_object()) {
            template_metadata.insert(key.into(), v.clone());
        }
    }
    Ok(json!({
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {
            "name": name(&spec.name),
            "namespace": spec.namespace,
            "labels": {
                labels::CLUSTER_NAME: spec.name,
                labels::COMPONENT: COMPONENT,
                APP_LABEL.0: APP_LABEL.1,
                USER_LABEL: spec.user,
            },
            "annotations": {TLS_ANNOTATION: spec.tls.as_str()},
            "ownerReferences": [owner.reference()],
        },
        "template": {
            "metadata": template_metadata,
            "spec": pod_spec,
        },
    }))
}

/// What a cluster's stored template says: the worker pod new workers are made from (no
/// owner; `generateName: <cluster>-worker-`) and the cluster's TLS mode.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTemplate {
    /// The worker pod.
    pub worker_pod: Value,
    /// How the cluster's client, scheduler and workers talk.
    pub tls: TlsMode,
}

/// Reads cluster `cluster`'s stored template (in `namespace`) back into a worker pod.
pub fn read(cluster: &str, namespace: &str, pod_template: &Value) -> Result<StoredTemplate> {
    let template = pod_template
        .get("template")
        .ok_or_else(|| invalid(cluster, "it has no template"))?;
    let spec = template
        .get("spec")
        .filter(|s| s.is_object())
        .ok_or_else(|| invalid(cluster, "its template has no spec"))?;
    let mut metadata = Map::new();
    metadata.insert(
        "generateName".into(),
        json!(format!("{cluster}{WORKER_NAME_INFIX}")),
    );
    metadata.insert("namespace".into(), json!(namespace));
    for key in ["labels", "annotations"] {
        if let Some(v) = template
            .get("metadata")
            .and_then(|m| m.get(key))
            .filter(|v| v.is_object())
        {
            metadata.insert(key.into(), v.clone());
        }
    }
    let tls = match pod_template["metadata"]["annotations"][TLS_ANNOTATION].as_str() {
        Some(mode) => mode.parse()?,
        None => TlsMode::Off,
    };
    Ok(StoredTemplate {
        worker_pod: json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": metadata,
            "spec": spec,
        }),
        tls,
    })
}

fn invalid(cluster: &str, reason: &str) -> Error {
    Error::InvalidTemplate {
        what: "worker",
        origin: format!("PodTemplate {}", name(cluster)),
        reason: format!("{reason}; was this cluster made by this version of dask-kube?"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests::ServiceType;
    use crate::template::PodTemplate;
    use dask_worker_spec::WorkerDefaults;
    use rstest::rstest;

    fn spec(tls: TlsMode) -> ClusterSpec {
        ClusterSpec {
            name: "etl".into(),
            namespace: "team".into(),
            user: "alice".into(),
            worker: PodTemplate::from_yaml(
                include_str!("../tests/fixtures/worker-spec.yml"),
                "worker-spec.yml",
                "worker",
            )
            .unwrap(),
            scheduler: None,
            scheduler_options: vec![],
            defaults: WorkerDefaults::default(),
            external_scheduler: None,
            external_scheduler_api: None,
            adaptive_target_duration: None,
            service_type: ServiceType::ClusterIP,
            tls,
        }
    }

    fn owner() -> Owner {
        Owner {
            name: "etl".into(),
            uid: "uid-1".into(),
        }
    }

    /// What `scale` reads back is the worker pod `up` made, whatever the TLS mode.
    #[rstest]
    #[case::cluster_ca(TlsMode::ClusterCa)]
    #[case::provided(TlsMode::Provided)]
    #[case::off(TlsMode::Off)]
    fn the_worker_pod_round_trips(#[case] tls: TlsMode) {
        let spec = spec(tls);
        let worker = spec.worker_pod().unwrap().pod;
        let stored = pod_template(&spec, &worker, &owner()).unwrap();
        let _: k8s_openapi::api::core::v1::PodTemplate =
            serde_json::from_value(stored.clone()).unwrap();
        let back = read("etl", "team", &stored).unwrap();
        assert_eq!(back.worker_pod, worker);
        assert_eq!(back.tls, tls);
    }

    #[test]
    fn it_is_named_labelled_and_owned_for_the_policy() {
        let spec = spec(TlsMode::ClusterCa);
        let stored = pod_template(&spec, &spec.worker_pod().unwrap().pod, &owner()).unwrap();
        assert_eq!(stored["metadata"]["name"], "etl-worker");
        assert_eq!(stored["metadata"]["labels"][labels::COMPONENT], COMPONENT);
        assert_eq!(stored["metadata"]["labels"][labels::CLUSTER_NAME], "etl");
        assert_eq!(stored["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        assert_eq!(
            stored["template"]["spec"]["containers"][0]["image"],
            "ghcr.io/dask/dask:latest"
        );
    }

    #[test]
    fn a_template_of_an_older_dask_kube_says_so() {
        let err = read("etl", "team", &json!({"metadata": {}})).unwrap_err();
        assert!(
            err.to_string().contains("this version of dask-kube"),
            "{err}"
        );
    }
}
