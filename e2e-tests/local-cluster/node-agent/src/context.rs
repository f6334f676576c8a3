//! What every part of the agent shares: the client, the node's identity, the pod network,
//! the image mapping, the hosts files and the registry of pods.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::Client;
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use crate::config::Config;
use crate::dns::HostsManager;
use crate::ipam::Allocator;
use crate::memory::MemoryWatchdog;
use crate::netns::PodNetwork;
use crate::registry::PodRegistry;

/// Shared agent state (one per agent process).
pub struct NodeContext {
    /// API client.
    pub client: Client,
    /// This node's name.
    pub node_name: String,
    /// The node's address as reported in `status.hostIP` (127.0.0.1: the apiserver's view).
    pub host_ip: IpAddr,
    /// Agent state directory; pod dirs live in `<state>/pods`.
    pub state_dir: PathBuf,
    /// Image -> local environment mapping.
    pub images: Config,
    /// Bridge, subnet, naming.
    pub network: PodNetwork,
    /// Pod IP allocation.
    pub ipam: Mutex<Allocator>,
    /// Memory limit enforcement.
    pub watchdog: MemoryWatchdog,
    /// Pods for the kubelet API.
    pub registry: Arc<PodRegistry>,
    /// Hosts files.
    pub hosts: HostsManager,
    /// Node allocatable, the default of unset limits in the downward API.
    pub allocatable: BTreeMap<String, Quantity>,
    /// Upper bound of the grace period when the agent itself stops.
    pub shutdown_grace: Duration,
    /// Event recorder for pods (`reportingController: kubelet`).
    pub kubelet_events: Recorder,
    /// Every Service of the cluster (the `<SVC>_SERVICE_HOST` environment).
    pub services: kube::runtime::reflector::Store<Service>,
    /// True once `services` has been listed.
    pub services_ready: tokio::sync::watch::Receiver<bool>,
}

impl NodeContext {
    /// The directory of one pod.
    pub fn pod_dir(&self, namespace: &str, name: &str, uid: &str) -> PathBuf {
        self.state_dir
            .join("pods")
            .join(format!("{namespace}_{name}_{uid}"))
    }

    /// Publishes a pod event in the background (events are best effort, as in the kubelet).
    pub fn pod_event(&self, pod: &Pod, warning: bool, reason: &str, note: String) {
        publish(
            self.kubelet_events.clone(),
            pod.object_ref(&()),
            warning,
            reason,
            note,
        );
    }
}

/// A recorder for `controller` (`kubelet`, `default-scheduler`) on node `instance`.
pub fn recorder(client: Client, controller: &str, instance: &str) -> Recorder {
    Recorder::new(
        client,
        Reporter {
            controller: controller.to_string(),
            instance: Some(instance.to_string()),
        },
    )
}

/// Publishes an event in the background; failures are only logged at debug level.
pub fn publish(
    recorder: Recorder,
    reference: ObjectReference,
    warning: bool,
    reason: &str,
    note: String,
) {
    let ev = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.to_string(),
        note: Some(note.chars().take(1000).collect()),
        action: reason.to_string(),
        secondary: None,
    };
    tokio::spawn(async move {
        if let Err(e) = recorder.publish(&ev, &reference).await {
            tracing::debug!(error = %e, reason = %ev.reason, "event not published");
        }
    });
}

/// A readiness flag for a reflector store that any number of tasks can wait on.
///
/// kube-runtime 5.0's `Store::wait_until_ready` keeps only the last waiter's waker (one
/// oneshot receiver behind a mutex), so with two tasks waiting one of them sleeps forever.
/// One task waits on the store here and publishes the result on a watch channel.
pub fn readiness<K>(store: kube::runtime::reflector::Store<K>) -> tokio::sync::watch::Receiver<bool>
where
    K: kube::Resource + Clone + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        if store.wait_until_ready().await.is_ok() {
            let _ = tx.send(true);
        }
    });
    rx
}

/// Waits until every flag is true; false if a flag's sender went away first.
pub async fn all_ready(flags: &mut [tokio::sync::watch::Receiver<bool>]) -> bool {
    for f in flags.iter_mut() {
        if f.wait_for(|r| *r).await.is_err() {
            return false;
        }
    }
    true
}
