//! A minimal default-scheduler: binds pending pods to a Ready node that passes the filters
//! (taints, nodeSelector / required affinity, resources) over every node in the cluster, or
//! marks them `PodScheduled=False, reason Unschedulable` with kube-scheduler's message.
//!
//! Driven by watch events (pods, nodes), never by polling.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::Recorder;
use kube::runtime::reflector::Store;
use kube::{Client, Resource};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::context::publish;
use crate::scheduling::{
    Resources, filter_node, holds_resources, pod_requests, unschedulable_message,
};

/// How long a binding we made counts against a node before the watch shows it.
const ASSUME_TTL: Duration = Duration::from_secs(30);

/// The scheduler loop.
pub struct Scheduler {
    client: Client,
    pods: Store<Pod>,
    nodes: Store<Node>,
    recorder: Recorder,
    trigger: Arc<Notify>,
    /// Pods bound by us that the store may not show bound yet: uid -> (node, requests, when).
    assumed: HashMap<String, (String, Resources, Instant)>,
    /// Last Unschedulable message reported per pod uid (avoids re-patching the same).
    reported: HashMap<String, String>,
    /// Readiness of the pod and node caches.
    ready: Vec<tokio::sync::watch::Receiver<bool>>,
}

/// True if this scheduler is responsible for the pod now.
pub fn wants(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    spec.node_name.as_deref().is_none_or(str::is_empty)
        && spec
            .scheduler_name
            .as_deref()
            .is_none_or(|s| s == "default-scheduler")
        && pod.metadata.deletion_timestamp.is_none()
        && holds_resources(pod)
}

fn key_time(pod: &Pod) -> (Option<Timestamp>, String) {
    (
        pod.metadata.creation_timestamp.as_ref().map(|t| t.0),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

impl Scheduler {
    /// A scheduler over the given stores; `trigger` is notified on every watch event, `ready`
    /// turn true once the stores are filled (see [`crate::context::readiness`]).
    pub fn new(
        client: Client,
        pods: Store<Pod>,
        nodes: Store<Node>,
        recorder: Recorder,
        trigger: Arc<Notify>,
        ready: Vec<tokio::sync::watch::Receiver<bool>>,
    ) -> Self {
        Self {
            client,
            pods,
            nodes,
            recorder,
            trigger,
            assumed: HashMap::new(),
            reported: HashMap::new(),
            ready,
        }
    }

    /// Runs scheduling passes on every trigger until cancelled.
    pub async fn run(mut self, cancel: CancellationToken) {
        // Deciding before both caches are filled would call pods unschedulable for nothing.
        tokio::select! {
            _ = cancel.cancelled() => return,
            ok = crate::context::all_ready(&mut self.ready) => if !ok { return },
        }
        self.pass().await;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.trigger.notified() => {}
            }
            self.pass().await;
        }
    }

    /// Per-node resource use from the store plus our recent bindings.
    fn usage(&mut self, pods: &[Arc<Pod>]) -> BTreeMap<String, Resources> {
        let mut used: BTreeMap<String, Resources> = BTreeMap::new();
        let mut bound_uids = std::collections::HashSet::new();
        for p in pods {
            let Some(node) = p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .filter(|n| !n.is_empty())
            else {
                continue;
            };
            if let Some(uid) = &p.metadata.uid {
                bound_uids.insert(uid.clone());
            }
            if !holds_resources(p) {
                continue;
            }
            let slot = used.entry(node).or_default();
            for (k, v) in pod_requests(p) {
                *slot.entry(k).or_default() += v;
            }
        }
        let now = Instant::now();
        self.assumed.retain(|uid, (_, _, at)| {
            !bound_uids.contains(uid) && now.duration_since(*at) < ASSUME_TTL
        });
        for (node, req, _) in self.assumed.values() {
            let slot = used.entry(node.clone()).or_default();
            for (k, v) in req {
                *slot.entry(k.clone()).or_default() += v;
            }
        }
        used
    }

    async fn pass(&mut self) {
        let pods = self.pods.state();
        let mut nodes = self.nodes.state();
        nodes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        debug!(nodes = nodes.len(), pods = pods.len(), "scheduling pass");
        let mut used = self.usage(&pods);
        let mut pending: Vec<&Arc<Pod>> = pods
            .iter()
            .filter(|p| wants(p))
            .filter(|p| {
                !self
                    .assumed
                    .contains_key(p.metadata.uid.as_deref().unwrap_or_default())
            })
            .collect();
        pending.sort_by_key(|p| key_time(p));
        let live: std::collections::HashSet<String> =
            pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
        self.reported.retain(|uid, _| live.contains(uid));
        for pod in pending {
            let empty = Resources::new();
            let verdicts: Vec<(String, Vec<String>)> = nodes
                .iter()
                .map(|n| {
                    let name = n.metadata.name.clone().unwrap_or_default();
                    let reasons = filter_node(pod, n, used.get(&name).unwrap_or(&empty));
                    (name, reasons)
                })
                .collect();
            // Spread: the feasible node with the fewest pods.
            let choice = verdicts
                .iter()
                .filter(|(_, r)| r.is_empty())
                .map(|(n, _)| n)
                .min_by_key(|n| {
                    used.get(*n)
                        .and_then(|u| u.get("pods"))
                        .copied()
                        .unwrap_or(0)
                });
            match choice {
                Some(node) => {
                    if self.bind(pod, node).await {
                        let req = pod_requests(pod);
                        let slot = used.entry(node.clone()).or_default();
                        for (k, v) in &req {
                            *slot.entry(k.clone()).or_default() += v;
                        }
                        if let Some(uid) = &pod.metadata.uid {
                            self.assumed
                                .insert(uid.clone(), (node.clone(), req, Instant::now()));
                        }
                    }
                }
                None => {
                    let reasons: Vec<Vec<String>> = verdicts.into_iter().map(|(_, r)| r).collect();
                    let message = unschedulable_message(nodes.len(), &reasons);
                    self.mark_unschedulable(pod, &message).await;
                }
            }
        }
    }

    async fn bind(&self, pod: &Pod, node: &str) -> bool {
        let (Some(ns), Some(name)) = (
            pod.metadata.namespace.as_deref(),
            pod.metadata.name.as_deref(),
        ) else {
            return false;
        };
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let binding = Binding {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(ns.to_string()),
                uid: pod.metadata.uid.clone(),
                ..Default::default()
            },
            target: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(node.to_string()),
                ..Default::default()
            },
        };
        match api
            .create_subresource::<_, serde_json::Value>(
                "binding",
                name,
                &PostParams::default(),
                &binding,
            )
            .await
        {
            Ok(_) => {
                info!(pod = %format!("{ns}/{name}"), %node, "bound pod");
                publish(
                    self.recorder.clone(),
                    pod.object_ref(&()),
                    false,
                    "Scheduled",
                    format!("Successfully assigned {ns}/{name} to {node}"),
                );
                true
            }
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {
                debug!(pod = %format!("{ns}/{name}"), code = s.code, "binding skipped: pod already bound or gone");
                false
            }
            Err(e) => {
                warn!(pod = %format!("{ns}/{name}"), %node, error = %e, "binding failed");
                false
            }
        }
    }

    async fn mark_unschedulable(&mut self, pod: &Pod, message: &str) {
        let (Some(ns), Some(name), Some(uid)) = (
            pod.metadata.namespace.as_deref(),
            pod.metadata.name.as_deref(),
            pod.metadata.uid.as_deref(),
        ) else {
            return;
        };
        let current = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"));
        let already = current.is_some_and(|c| {
            c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
                && c.message.as_deref() == Some(message)
        });
        if already || self.reported.get(uid).map(String::as_str) == Some(message) {
            return;
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let patch = serde_json::json!({"status": {"conditions": [{
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": message,
            "lastTransitionTime": Time(Timestamp::now()),
            "lastProbeTime": null,
        }]}});
        match api
            .patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
        {
            Ok(_) => {
                info!(pod = %format!("{ns}/{name}"), %message, "pod unschedulable");
                self.reported.insert(uid.to_string(), message.to_string());
                publish(
                    self.recorder.clone(),
                    pod.object_ref(&()),
                    true,
                    "FailedScheduling",
                    message.to_string(),
                );
            }
            Err(e) => {
                warn!(pod = %format!("{ns}/{name}"), error = %e, "could not report Unschedulable")
            }
        }
    }
}
