//! What every reconcile shares: the client, the watched objects (reflector stores), the
//! pods it created or deleted that the stores do not show yet, the scheduler connection
//! and the event recorder.

use crate::operator::names::{CLUSTER_LABEL, COMPONENT_LABEL, SCHEDULER_COMPONENT};
use crate::operator::reconcile::AdaptMemory;
use crate::operator::resources::{DaskAutoscaler, DaskCluster, DaskWorkerGroup};
use crate::{ClusterApi, CreateLimits, FlowControl, FlowLimiter, KubeConnection, SchedulerClient};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// The namespaces the operator serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace (a ClusterRole install).
    AllNamespaces,
    /// One namespace (a Role install).
    Namespace(String),
}

impl Scope {
    /// An Api over the scope.
    pub fn api<K>(&self, client: &Client) -> Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
    {
        match self {
            Scope::AllNamespaces => Api::all(client.clone()),
            Scope::Namespace(ns) => Api::namespaced(client.clone(), ns),
        }
    }
}

/// How the operator reaches a scheduler's HTTP API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SchedulerAccess {
    /// Through the scheduler Service's cluster DNS name (the operator runs in the cluster).
    Service,
    /// Through a port-forward to the scheduler pod (the operator runs outside, as kopf does
    /// in upstream's tests).
    PortForward,
}

/// The objects the operator watches, as its reflectors see them.
#[derive(Clone)]
pub struct Stores {
    /// DaskClusters.
    pub clusters: Store<DaskCluster>,
    /// DaskWorkerGroups.
    pub groups: Store<DaskWorkerGroup>,
    /// Pods with a `dask.org/cluster-name` label.
    pub pods: Store<Pod>,
    /// Deployments with `dask.org/component=scheduler`.
    pub deployments: Store<Deployment>,
    /// Services with `dask.org/component=scheduler`.
    pub services: Store<Service>,
}

impl Stores {
    /// Pods of `namespace` whose labels include every `(key, value)`: the store's own, shared
    /// (a reconcile of a group of 1,000 pods copies 1,000 pointers, not 1,000 pods).
    pub fn pods_labelled(&self, namespace: &str, labels: &[(&str, &str)]) -> Vec<Arc<Pod>> {
        self.pods
            .state()
            .into_iter()
            .filter(|p| p.namespace().as_deref() == Some(namespace))
            .filter(|p| {
                labels
                    .iter()
                    .all(|(k, v)| p.labels().get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    /// The running scheduler pod of a cluster, and whether it is ready.
    pub fn scheduler_pod(&self, namespace: &str, cluster: &str) -> Option<(String, bool)> {
        self.pods_labelled(
            namespace,
            &[
                (CLUSTER_LABEL, cluster),
                (COMPONENT_LABEL, SCHEDULER_COMPONENT),
            ],
        )
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .map(|p| {
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            (p.name_any(), ready)
        })
        .max_by_key(|(_, ready)| *ready)
    }
}

/// Worker pods a group's reconcile created, deleted or released from the start gate that
/// the pod store does not reflect yet. Without them a reconcile triggered before the watch
/// delivers its own creations would create the workers again (Kubernetes' ReplicaSet
/// controller keeps the same "expectations"), and one before it delivers a release would
/// count the pod as still held and let another start in its place.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expectations {
    created: BTreeMap<String, Instant>,
    deleted: BTreeMap<String, Instant>,
    released: BTreeMap<String, Instant>,
}

/// How long an expectation holds when the watch never confirms it (a create that failed
/// after all, a watch that lost events).
pub const EXPECTATION_TTL: Duration = Duration::from_secs(60);

impl Expectations {
    /// Records a pod this operator created.
    pub fn created(&mut self, pod: &str, now: Instant) {
        self.created.insert(pod.to_owned(), now);
    }

    /// Whether some creation or deletion is not confirmed by the watch yet.
    pub fn outstanding(&self) -> bool {
        !self.created.is_empty() || !self.deleted.is_empty()
    }

    /// Records a pod this operator deleted.
    pub fn deleted(&mut self, pod: &str, now: Instant) {
        self.deleted.insert(pod.to_owned(), now);
    }

    /// Records a pod whose start gate this operator removed.
    pub fn released(&mut self, pod: &str, now: Instant) {
        self.released.insert(pod.to_owned(), now);
    }

    /// The observed pods as they will be: a pod created but not seen yet is added (owned by
    /// `owner`, Pending), a pod deleted but still seen is marked deleting, a pod released
    /// but still seen holding the start gate is shown without it. Confirmed and expired
    /// expectations are dropped.
    pub fn reconcile_view(
        &mut self,
        observed: Vec<Arc<Pod>>,
        owner: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
        now: Instant,
    ) -> Vec<Arc<Pod>> {
        let seen: BTreeSet<String> = observed.iter().map(|p| p.name_any()).collect();
        self.created
            .retain(|name, at| !seen.contains(name) && now.duration_since(*at) < EXPECTATION_TTL);
        let gone_or_going: BTreeSet<String> = observed
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .map(|p| p.name_any())
            .collect();
        self.deleted.retain(|name, at| {
            gone_or_going.contains(name) && now.duration_since(*at) < EXPECTATION_TTL
        });
        let held: BTreeSet<String> = observed
            .iter()
            .filter(|p| crate::holds_start_gate(p))
            .map(|p| p.name_any())
            .collect();
        self.released
            .retain(|name, at| held.contains(name) && now.duration_since(*at) < EXPECTATION_TTL);
        let mut pods: Vec<Arc<Pod>> = observed
            .into_iter()
            .map(|mut p| {
                // Copied only here: the store's pod stays as the watch saw it.
                if self.deleted.contains_key(&p.name_any()) {
                    Arc::make_mut(&mut p).metadata.deletion_timestamp =
                        Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
                }
                if self.released.contains_key(&p.name_any())
                    && let Some(gates) = Arc::make_mut(&mut p)
                        .spec
                        .as_mut()
                        .and_then(|s| s.scheduling_gates.as_mut())
                {
                    gates.retain(|g| g.name != crate::START_GATE);
                }
                p
            })
            .collect();
        for name in self.created.keys() {
            let pending = json!({
                "metadata": {"name": name, "ownerReferences": [owner]},
                "status": {"phase": "Pending"},
            });
            if let Ok(pod) = serde_json::from_value(pending) {
                pods.push(Arc::new(pod));
            }
        }
        pods
    }
}

/// Everything a reconcile needs.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// The connection it came from (the server's URL for messages).
    connection: KubeConnection,
    /// How each batch of pod creations and deletions is capped (`--max-in-flight`).
    limits: CreateLimits,
    /// The watched objects.
    pub stores: Stores,
    /// How schedulers are reached.
    pub scheduler_access: SchedulerAccess,
    /// The operator's name in events (`source.component`, `reportingComponent`).
    pub reporter: String,
    /// This operator process in events (`reportingInstance`: its pod's name).
    pub reporter_instance: String,
    /// Flow control of pod creations and deletions, shared by every reconcile's batches
    /// (one API server): [`ClusterApi::with_shared_flow`].
    pub flow: FlowLimiter,
    /// When the operator started (the autoscaler's clock).
    pub started: Instant,
    /// The start window of pods that replace ended workers (`--start-window`).
    pub start_window: usize,
    expectations: Mutex<HashMap<ObjectRef<DaskWorkerGroup>, Expectations>>,
    adapt: Mutex<HashMap<ObjectRef<DaskAutoscaler>, AdaptMemory>>,
    /// Tests: every scheduler's HTTP API is at this `host:port` (a fake on loopback).
    #[cfg(test)]
    pub(crate) fixed_scheduler: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Context {
    /// A context over `stores`.
    pub fn new(
        connection: KubeConnection,
        limits: CreateLimits,
        stores: Stores,
        scheduler_access: SchedulerAccess,
        reporter: String,
    ) -> Self {
        let reporter_instance = std::env::var("POD_NAME").unwrap_or_else(|_| reporter.clone());
        Context {
            client: connection.client.clone(),
            connection,
            limits,
            stores,
            scheduler_access,
            reporter,
            reporter_instance,
            flow: FlowLimiter::new(FlowControl::new(
                limits.initial_in_flight,
                limits.max_in_flight,
            )),
            started: Instant::now(),
            start_window: crate::DEFAULT_START_WINDOW,
            expectations: Mutex::default(),
            adapt: Mutex::default(),
            #[cfg(test)]
            fixed_scheduler: None,
        }
    }

    /// Runs `f` on a group's expectations.
    pub fn with_expectations<T>(
        &self,
        group: &ObjectRef<DaskWorkerGroup>,
        f: impl FnOnce(&mut Expectations) -> T,
    ) -> T {
        f(lock(&self.expectations).entry(group.clone()).or_default())
    }

    /// Forgets a deleted group's expectations.
    pub fn forget_group(&self, group: &ObjectRef<DaskWorkerGroup>) {
        lock(&self.expectations).remove(group);
    }

    /// Runs `f` on an autoscaler's memory.
    pub fn with_adapt_memory<T>(
        &self,
        autoscaler: &ObjectRef<DaskAutoscaler>,
        f: impl FnOnce(&mut AdaptMemory) -> T,
    ) -> T {
        f(lock(&self.adapt).entry(autoscaler.clone()).or_default())
    }

    /// Forgets a deleted autoscaler's memory.
    pub fn forget_autoscaler(&self, autoscaler: &ObjectRef<DaskAutoscaler>) {
        lock(&self.adapt).remove(autoscaler);
    }

    /// The library's pod and Service calls in `namespace`, their batches under the
    /// operator's shared flow control.
    pub fn api(&self, namespace: &str) -> ClusterApi {
        ClusterApi::new(self.connection.clone().in_namespace(namespace))
            .with_limits(self.limits)
            .with_shared_flow(self.flow.clone())
    }

    /// A client of a cluster's scheduler HTTP API: the Service from inside the cluster, a
    /// port-forward to the scheduler pod from outside; `None` when it cannot be reached now
    /// (port-forward and no running scheduler pod).
    pub fn scheduler(&self, namespace: &str, cluster: &str) -> Option<SchedulerClient> {
        #[cfg(test)]
        if let Some(address) = &self.fixed_scheduler {
            return Some(SchedulerClient::tcp(address.clone()));
        }
        match self.scheduler_access {
            SchedulerAccess::Service => Some(SchedulerClient::tcp(format!(
                "{}.{namespace}:{}",
                crate::operator::names::scheduler_name(cluster),
                crate::operator::names::DASHBOARD_PORT,
            ))),
            SchedulerAccess::PortForward => {
                let (pod, _) = self.stores.scheduler_pod(namespace, cluster)?;
                Some(SchedulerClient::forwarded(&self.api(namespace), &pod))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn pod(name: &str, deleting: bool) -> Pod {
        let mut p: Pod = serde_json::from_value(
            json!({"metadata": {"name": name}, "status": {"phase": "Running"}}),
        )
        .unwrap();
        if deleting {
            p.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        }
        p
    }

    fn names(pods: &[Arc<Pod>]) -> Vec<String> {
        pods.iter()
            .map(|p| {
                let phase = p
                    .status
                    .as_ref()
                    .and_then(|s| s.phase.clone())
                    .unwrap_or_default();
                let deleting = if p.metadata.deletion_timestamp.is_some() {
                    " deleting"
                } else {
                    ""
                };
                format!("{} {phase}{deleting}", p.name_any())
            })
            .collect()
    }

    #[test]
    fn expectations_fill_in_what_the_watch_has_not_shown_yet() {
        let owner = OwnerReference {
            uid: "g".into(),
            ..OwnerReference::default()
        };
        let t0 = Instant::now();
        let mut e = Expectations::default();
        e.created("new", t0);
        e.deleted("old", t0);
        let stored_old = Arc::new(pod("old", false));
        let view = e.reconcile_view(
            vec![Arc::new(pod("a", false)), Arc::clone(&stored_old)],
            &owner,
            t0,
        );
        assert_eq!(
            names(&view),
            ["a Running", "old Running deleting", "new Pending"]
        );
        assert!(
            stored_old.metadata.deletion_timestamp.is_none(),
            "the view's mark is on a copy: the store's pod stays as the watch saw it"
        );
        assert_eq!(
            view[2].metadata.owner_references.as_ref().unwrap()[0].uid,
            "g"
        );

        // The watch shows both: nothing is filled in any more.
        let view = e.reconcile_view(
            vec![
                Arc::new(pod("a", false)),
                Arc::new(pod("old", true)),
                Arc::new(pod("new", false)),
            ],
            &owner,
            t0,
        );
        assert_eq!(
            names(&view),
            ["a Running", "old Running deleting", "new Running"]
        );
        assert_eq!(e, Expectations::default());
    }

    /// A released pod the watch still shows holding the gate is seen without it (else the
    /// next reconcile counts it as held and lets another pod start in its place), on a copy;
    /// once the watch shows it released, or the expectation expires, the pod is as listed.
    #[test]
    fn a_release_is_seen_before_the_watch_shows_it() {
        let owner = OwnerReference::default();
        let gated = |name: &str| {
            let mut p = pod(name, false);
            p.spec = Some(k8s_openapi::api::core::v1::PodSpec {
                scheduling_gates: Some(vec![k8s_openapi::api::core::v1::PodSchedulingGate {
                    name: crate::START_GATE.into(),
                }]),
                ..Default::default()
            });
            Arc::new(p)
        };
        let t0 = Instant::now();
        let mut e = Expectations::default();
        e.released("r", t0);
        let stored = gated("r");
        let view = e.reconcile_view(vec![Arc::clone(&stored), gated("held")], &owner, t0);
        let still_held: Vec<bool> = view.iter().map(|p| crate::holds_start_gate(p)).collect();
        assert_eq!(still_held, [false, true]);
        assert!(
            crate::holds_start_gate(&stored),
            "the store's pod is unchanged"
        );
        // Expired: the pod is as the watch shows it.
        let view = e.reconcile_view(vec![gated("r")], &owner, t0 + EXPECTATION_TTL);
        assert!(crate::holds_start_gate(&view[0]));
        // Confirmed by the watch: forgotten.
        let mut e = Expectations::default();
        e.released("r", t0);
        e.reconcile_view(vec![Arc::new(pod("r", false))], &owner, t0);
        assert_eq!(e, Expectations::default());
    }

    #[test]
    fn expectations_expire() {
        let owner = OwnerReference::default();
        let t0 = Instant::now();
        let mut e = Expectations::default();
        e.created("lost", t0);
        let later = t0 + EXPECTATION_TTL;
        assert!(e.reconcile_view(vec![], &owner, later).is_empty());
    }
}
