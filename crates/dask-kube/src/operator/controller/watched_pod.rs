//! Pods as the operator's pod watch reads them: only what the pod store keeps (what
//! `prune_pod` keeps of a whole pod), parsed as such instead of parsed whole and pruned.
//!
//! Each worker pod reaches the operator two or three times while a cluster starts (the list
//! or the watch's ADDED, then MODIFIED as the scheduler and kubelet write its status), and
//! each time as the whole pod: the worker template with its containers, args, env,
//! resources, tolerations and affinity, and the managedFields of every writer. Parsing all
//! of that into a `Pod` only to drop it cost the operator CPU the API server needed while
//! 1,000 pods were created on the same two cores (perf: whole-`Pod` deserialization at
//! least 14.5% of samples, managedFields 5.7%, besides the allocations); serde skips what a
//! type does not name without building it. Reading only this cut the operator's CPU for
//! that scenario by about a quarter (e2e-tests/operator/README.md).

use k8s_openapi::api::core::v1::{Pod, PodSchedulingGate, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::core::NamespaceResourceScope;
use kube::runtime::watcher;
use serde::{Deserialize, Deserializer};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// A pod read from the watch as the store keeps it: its metadata but managedFields, its
/// status, and of its spec only the scheduling gates (the start window reads them); the
/// spec is `None` when there are none. Equal to a whole pod after `prune_pod`.
#[derive(Clone, Debug)]
pub(super) struct WatchedPod(pub(super) Pod);

impl WatchedPod {
    /// A watch event of pods as the store's (`Pod`) event.
    pub(super) fn into_pod_event(event: watcher::Event<Self>) -> watcher::Event<Pod> {
        use watcher::Event;
        match event {
            Event::Apply(p) => Event::Apply(p.0),
            Event::Delete(p) => Event::Delete(p.0),
            Event::Init => Event::Init,
            Event::InitApply(p) => Event::InitApply(p.0),
            Event::InitDone => Event::InitDone,
        }
    }
}

/// The API path, kind and version are a pod's: only the parsing differs.
impl kube::Resource for WatchedPod {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        Pod::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        Pod::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        Pod::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        Pod::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.0.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.0.metadata
    }
}

impl<'de> Deserialize<'de> for WatchedPod {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let Repr {
            metadata,
            spec,
            status,
        } = Repr::deserialize(deserializer)?;
        let m = metadata;
        // Every field named, none defaulted: a field a newer k8s-openapi adds to
        // `ObjectMeta` fails the build here instead of going missing from the store.
        let metadata = ObjectMeta {
            annotations: m.annotations,
            creation_timestamp: m.creation_timestamp,
            deletion_grace_period_seconds: m.deletion_grace_period_seconds,
            deletion_timestamp: m.deletion_timestamp,
            finalizers: m.finalizers,
            generate_name: m.generate_name,
            generation: m.generation,
            labels: m.labels,
            managed_fields: None,
            name: m.name,
            namespace: m.namespace,
            owner_references: m.owner_references,
            resource_version: m.resource_version,
            self_link: m.self_link,
            uid: m.uid,
        };
        let spec = spec.and_then(|s| s.scheduling_gates).map(|gates| PodSpec {
            scheduling_gates: Some(gates),
            ..PodSpec::default()
        });
        Ok(Self(Pod {
            metadata,
            spec,
            status,
        }))
    }
}

#[derive(Deserialize)]
struct Repr {
    #[serde(default)]
    metadata: Meta,
    #[serde(default)]
    spec: Option<Gates>,
    #[serde(default)]
    status: Option<PodStatus>,
}

/// `ObjectMeta` but `managedFields`.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Meta {
    annotations: Option<BTreeMap<String, String>>,
    creation_timestamp: Option<Time>,
    deletion_grace_period_seconds: Option<i64>,
    deletion_timestamp: Option<Time>,
    finalizers: Option<Vec<String>>,
    generate_name: Option<String>,
    generation: Option<i64>,
    labels: Option<BTreeMap<String, String>>,
    name: Option<String>,
    namespace: Option<String>,
    owner_references: Option<Vec<OwnerReference>>,
    resource_version: Option<String>,
    self_link: Option<String>,
    uid: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Gates {
    scheduling_gates: Option<Vec<PodSchedulingGate>>,
}

#[cfg(test)]
mod tests {
    use super::WatchedPod;
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::{Value, json};

    /// A worker pod as the API server sends it: the whole template, managedFields from
    /// three writers, a status with conditions and container states.
    fn worker(gated: bool, status: Value) -> Value {
        let mut pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "c-default-worker-abcde", "namespace": "ns",
                "generateName": "c-default-worker-",
                "uid": "u-1", "resourceVersion": "42", "generation": 1,
                "creationTimestamp": "2026-12-07T10:00:00Z",
                "labels": {"dask.org/cluster-name": "c", "dask.org/component": "worker",
                           "dask.org/workergroup-name": "default"},
                "annotations": {"dask.org/create-token": "t"},
                "finalizers": ["example.com/keep"],
                "ownerReferences": [{"apiVersion": "kubernetes.dask.org/v1",
                                     "kind": "DaskWorkerGroup", "name": "c-default",
                                     "uid": "g-1", "controller": true,
                                     "blockOwnerDeletion": true}],
                "managedFields": [
                    {"manager": "dask-kube", "operation": "Update", "apiVersion": "v1",
                     "time": "2026-12-07T10:00:00Z", "fieldsType": "FieldsV1",
                     "fieldsV1": {"f:metadata": {"f:labels": {".": {}}}}},
                    {"manager": "kube-scheduler", "operation": "Update", "apiVersion": "v1",
                     "subresource": "status", "fieldsType": "FieldsV1",
                     "fieldsV1": {"f:status": {"f:conditions": {}}}},
                ],
            },
            "spec": {
                "containers": [{"name": "worker", "image": "ghcr.io/dask/dask:latest",
                                "args": ["dask", "worker", "--nthreads", "2",
                                         "--memory-limit", "4GiB"],
                                "env": [{"name": "DASK_SCHEDULER_ADDRESS",
                                         "value": "tcp://c-scheduler.ns.svc:8786"}],
                                "resources": {"limits": {"cpu": "2", "memory": "4Gi"},
                                              "requests": {"cpu": "2", "memory": "4Gi"}}}],
                "restartPolicy": "Never",
                "tolerations": [{"key": "k8s.dask.org/dedicated", "operator": "Equal",
                                 "value": "worker", "effect": "NoSchedule"}],
                "nodeSelector": {"pool": "none"},
            },
            "status": status,
        });
        if gated {
            pod["spec"]["schedulingGates"] = json!([{"name": crate::START_GATE}]);
        }
        pod
    }

    /// Parsed lean, a pod equals the same pod parsed whole and pruned as the store prunes
    /// it: every field a reconcile can read is there, for every shape of pod the store holds.
    #[test]
    fn a_watched_pod_is_the_whole_pod_pruned() {
        let running = json!({
            "phase": "Running", "podIP": "10.244.1.7", "podIPs": [{"ip": "10.244.1.7"}],
            "hostIP": "10.0.0.2", "startTime": "2026-12-07T10:00:01Z", "qosClass": "Guaranteed",
            "conditions": [{"type": "Ready", "status": "True",
                            "lastTransitionTime": "2026-12-07T10:00:05Z"}],
            "containerStatuses": [{"name": "worker", "image": "i", "imageID": "",
                                   "ready": true, "restartCount": 0,
                                   "state": {"running": {"startedAt": "2026-12-07T10:00:04Z"}}}],
        });
        let pending = json!({
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                            "message": "0/3 nodes are available"}],
        });
        let failed = json!({
            "phase": "Failed", "reason": "Evicted", "message": "low on memory",
            "containerStatuses": [{"name": "worker", "image": "i", "imageID": "",
                                   "ready": false, "restartCount": 0,
                                   "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}],
        });
        let mut deleting = worker(false, running.clone());
        deleting["metadata"]["deletionTimestamp"] = json!("2026-12-07T10:01:00Z");
        deleting["metadata"]["deletionGracePeriodSeconds"] = json!(30);
        let cases = [
            ("running", worker(false, running)),
            ("pending, no status yet", worker(false, Value::Null)),
            ("pending, unschedulable", worker(false, pending.clone())),
            ("held by the start window", worker(true, pending)),
            ("failed", worker(false, failed)),
            ("being deleted", deleting),
            ("bare", json!({"metadata": {"name": "p"}})),
        ];
        for (case, json) in cases {
            let mut whole: Pod = serde_json::from_value(json.clone()).unwrap();
            super::super::prune_pod(&mut whole);
            let lean: WatchedPod = serde_json::from_value(json).unwrap();
            assert_eq!(lean.0, whole, "{case}");
        }
    }

    /// A watch event of the wire parses, and an event the server sends malformed is an
    /// error, as it is for a whole `Pod`, not a pod with fields missing.
    #[test]
    fn a_watch_event_parses_and_a_malformed_one_is_an_error() {
        let line = json!({"type": "MODIFIED", "object": worker(true, json!({"phase": "Pending"}))});
        let event: kube::core::WatchEvent<WatchedPod> = serde_json::from_value(line).unwrap();
        let kube::core::WatchEvent::Modified(pod) = event else {
            panic!("not a MODIFIED event");
        };
        assert!(crate::holds_start_gate(&pod.0));
        for bad in [
            json!({"metadata": {"name": 7}}),
            json!({"metadata": {"labels": ["a"]}}),
            json!({"status": {"phase": 1}}),
            json!({"spec": {"schedulingGates": {"name": "g"}}}),
            json!("a string"),
        ] {
            assert!(
                serde_json::from_value::<WatchedPod>(bad.clone()).is_err(),
                "{bad}"
            );
            assert!(serde_json::from_value::<Pod>(bad.clone()).is_err(), "{bad}");
        }
    }
}
