//! Lean pod lists: only the metadata and status fields dask-kube reads (no spec, no
//! managedFields), a page at a time, so listing thousands of pods takes little memory.

use super::retry::with_retry;
use k8s_openapi::api::core::v1::{ContainerState, Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Client;
use kube::api::ListParams;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;

/// Pods per page of a list (bounds the memory a list of thousands of pods takes).
const LIST_PAGE: u32 = 250;

/// Lists the pods matching `selector` in `namespace` (every namespace with `None`), lean.
pub(crate) async fn list_lean(
    client: &Client,
    answered: &AtomicBool,
    namespace: Option<&str>,
    selector: &str,
) -> Result<Vec<Pod>, kube::Error> {
    let path = match namespace {
        Some(ns) => format!("/api/v1/namespaces/{ns}/pods"),
        None => "/api/v1/pods".to_owned(),
    };
    let mut out = Vec::new();
    let mut continue_token: Option<String> = None;
    loop {
        let mut params = ListParams::default().labels(selector).limit(LIST_PAGE);
        if let Some(token) = &continue_token {
            params = params.continue_token(token);
        }
        let request = kube::core::Request::new(&path)
            .list(&params)
            .map_err(kube::Error::BuildRequest)?;
        let page: LeanPodList = with_retry("list pods", answered, || {
            let request = clone_request(&request);
            let client = client.clone();
            async move { client.request::<LeanPodList>(request).await }
        })
        .await?;
        out.extend(page.items.into_iter().map(LeanPod::into_pod));
        match page.metadata.continue_token.filter(|t| !t.is_empty()) {
            Some(token) => continue_token = Some(token),
            None => return Ok(out),
        }
    }
}

fn clone_request(request: &http::Request<Vec<u8>>) -> http::Request<Vec<u8>> {
    let mut copy = http::Request::new(request.body().clone());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.headers_mut() = request.headers().clone();
    copy
}

/// A pod list with only what dask-kube reads.
#[derive(Deserialize)]
struct LeanPodList {
    #[serde(default)]
    metadata: LeanListMeta,
    #[serde(default)]
    items: Vec<LeanPod>,
}

#[derive(Deserialize, Default)]
struct LeanListMeta {
    #[serde(rename = "continue")]
    continue_token: Option<String>,
}

#[derive(Deserialize)]
struct LeanPod {
    metadata: LeanMeta,
    #[serde(default)]
    status: Option<LeanStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeanMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<BTreeMap<String, String>>,
    creation_timestamp: Option<Time>,
    deletion_timestamp: Option<Time>,
    /// What a delete's precondition names ([`super::ClusterApi::delete_pods_unchanged`]).
    resource_version: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeanStatus {
    phase: Option<String>,
    reason: Option<String>,
    /// What a worker's address is matched against (several with dual-stack).
    #[serde(rename = "podIP")]
    pod_ip: Option<String>,
    #[serde(rename = "podIPs")]
    pod_ips: Option<Vec<k8s_openapi::api::core::v1::PodIP>>,
    container_statuses: Option<Vec<LeanContainerStatus>>,
    /// `Ready` says a scheduler an operator's Deployment made answers its readiness probe.
    conditions: Option<Vec<LeanCondition>>,
}

#[derive(Deserialize)]
struct LeanCondition {
    #[serde(rename = "type")]
    type_: String,
    status: String,
}

#[derive(Deserialize)]
struct LeanContainerStatus {
    name: String,
    state: Option<ContainerState>,
}

impl LeanPod {
    fn into_pod(self) -> Pod {
        let LeanMeta {
            name,
            namespace,
            uid,
            labels,
            annotations,
            creation_timestamp,
            deletion_timestamp,
            resource_version,
        } = self.metadata;
        Pod {
            metadata: ObjectMeta {
                name,
                namespace,
                uid,
                labels,
                annotations,
                creation_timestamp,
                deletion_timestamp,
                resource_version,
                ..ObjectMeta::default()
            },
            spec: None,
            status: self.status.map(|s| PodStatus {
                phase: s.phase,
                reason: s.reason,
                pod_ip: s.pod_ip,
                pod_ips: s.pod_ips,
                container_statuses: s.container_statuses.map(|cs| {
                    cs.into_iter()
                        .map(|c| k8s_openapi::api::core::v1::ContainerStatus {
                            name: c.name,
                            state: c.state,
                            ..Default::default()
                        })
                        .collect()
                }),
                conditions: s.conditions.map(|cs| {
                    cs.into_iter()
                        .map(|c| k8s_openapi::api::core::v1::PodCondition {
                            type_: c.type_,
                            status: c.status,
                            ..Default::default()
                        })
                        .collect()
                }),
                ..PodStatus::default()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LeanPodList;

    /// What a lean list keeps of a pod's status: the operator client waits for `Ready` of the
    /// scheduler pod its Deployment made, so a list without conditions never sees it ready.
    #[test]
    fn a_lean_pod_keeps_phase_containers_and_the_ready_condition() {
        let list: LeanPodList = serde_json::from_value(serde_json::json!({
            "metadata": {},
            "items": [{
                "metadata": {"name": "s", "labels": {"dask.org/component": "scheduler"}},
                "spec": {"containers": [{"name": "scheduler", "image": "i"}]},
                "status": {
                    "phase": "Running",
                    "conditions": [
                        {"type": "PodScheduled", "status": "True"},
                        {"type": "Ready", "status": "True", "lastTransitionTime": "2026-12-06T20:00:00Z"}
                    ],
                    "containerStatuses": [{"name": "scheduler", "state": {"running": {}}}]
                }
            }]
        }))
        .unwrap();
        let pod = list.items.into_iter().next().unwrap().into_pod();
        let status = pod.status.unwrap();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        let conditions = status.conditions.unwrap();
        assert!(
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        );
        assert!(pod.spec.is_none(), "no spec is kept");
    }
}
