//! The Node object: registration (labels, taints, capacity, address, kubelet port), the
//! Lease in `kube-node-lease` renewed every 10 s, and the periodic status heartbeat.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, NodeCondition, Taint};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::error::{Error, Result};

/// Lease renewal period (the kubelet's default).
pub const LEASE_RENEW: Duration = Duration::from_secs(10);
/// Lease duration advertised.
pub const LEASE_DURATION_SECONDS: i32 = 40;
/// Node status heartbeat period.
pub const STATUS_HEARTBEAT: Duration = Duration::from_secs(60);

/// What the Node advertises.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// Node name.
    pub name: String,
    /// Extra labels (`kubernetes.io/hostname` etc. are added).
    pub labels: BTreeMap<String, String>,
    /// Taints.
    pub taints: Vec<Taint>,
    /// Capacity = allocatable.
    pub capacity: BTreeMap<String, Quantity>,
    /// Kubelet HTTPS port.
    pub kubelet_port: u16,
    /// Reported as `nodeInfo.kubeletVersion`.
    pub kubelet_version: String,
}

/// Parses `key=value:Effect` or `key:Effect` (kubectl taint syntax).
pub fn parse_taint(s: &str) -> Result<Taint> {
    let bad = || {
        Error::Flag(format!(
            "taint {s:?}: expected key=value:Effect or key:Effect"
        ))
    };
    let (kv, effect) = s.rsplit_once(':').ok_or_else(bad)?;
    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        return Err(Error::Flag(format!(
            "taint {s:?}: effect must be NoSchedule, PreferNoSchedule or NoExecute"
        )));
    }
    let (key, value) = match kv.split_once('=') {
        Some((k, v)) => (k, Some(v.to_string())),
        None => (kv, None),
    };
    if key.is_empty() {
        return Err(bad());
    }
    Ok(Taint {
        key: key.into(),
        value,
        effect: effect.into(),
        time_added: None,
    })
}

/// Parses `key=value`.
pub fn parse_label(s: &str) -> Result<(String, String)> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.into(), v.into())),
        _ => Err(Error::Flag(format!("label {s:?}: expected key=value"))),
    }
}

/// The machine's cpu count and memory (Ki) as quantities.
pub fn machine_capacity() -> (String, String) {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| parse_meminfo_total_kib(&s))
        .unwrap_or(1024 * 1024);
    (cpus.to_string(), format!("{mem_kib}Ki"))
}

/// `MemTotal:  24570840 kB` -> 24570840.
pub fn parse_meminfo_total_kib(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "Linux".into())
}

/// Labels the kubelet always sets, plus the configured ones.
pub fn node_labels(settings: &NodeSettings) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), settings.name.clone()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), arch().to_string()),
        ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
        ("beta.kubernetes.io/arch".to_string(), arch().to_string()),
        (
            "node.kubernetes.io/instance-type".to_string(),
            "node-agent".to_string(),
        ),
    ]);
    labels.extend(settings.labels.clone());
    labels
}

fn conditions(ready: bool, previous: &[NodeCondition], now: Timestamp) -> Vec<NodeCondition> {
    let mk = |type_: &str, status: &str, reason: &str, message: &str| {
        let transition = previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        NodeCondition {
            type_: type_.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            last_heartbeat_time: Some(Time(now)),
            last_transition_time: Some(transition),
        }
    };
    vec![
        mk(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        ),
        mk(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure",
        ),
        mk(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available",
        ),
        if ready {
            mk(
                "Ready",
                "True",
                "KubeletReady",
                "kubelet is posting ready status",
            )
        } else {
            mk(
                "Ready",
                "Unknown",
                "NodeStatusUnknown",
                "Kubelet stopped posting node status.",
            )
        },
    ]
}

/// The status the agent reports (JSON merge patch: lists are replaced, so `addresses` holds
/// only the InternalIP 127.0.0.1 the apiserver must dial).
pub fn status_patch(
    settings: &NodeSettings,
    ready: bool,
    previous: &[NodeCondition],
) -> serde_json::Value {
    let machine_id = read_trim("/etc/machine-id");
    json!({
        "status": {
            "capacity": settings.capacity,
            "allocatable": settings.capacity,
            "conditions": conditions(ready, previous, Timestamp::now()),
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": settings.kubelet_port}},
            "nodeInfo": {
                "machineID": machine_id,
                "systemUUID": machine_id,
                "bootID": read_trim("/proc/sys/kernel/random/boot_id"),
                "kernelVersion": read_trim("/proc/sys/kernel/osrelease"),
                "osImage": os_image(),
                "containerRuntimeVersion": concat!("node-agent://", env!("CARGO_PKG_VERSION")),
                "kubeletVersion": settings.kubelet_version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": arch(),
            },
        }
    })
}

/// Creates or updates the Node (labels, taints, status).
///
/// The apiserver's TaintNodesByCondition admission adds `node.kubernetes.io/not-ready:NoSchedule`
/// to every new Node and the node lifecycle controller removes it once the node is Ready. This
/// cluster runs no such controller, so after reporting Ready the agent sets the taints itself
/// to exactly the configured ones.
pub async fn register(client: &Client, settings: &NodeSettings) -> Result<Node> {
    let api: Api<Node> = Api::all(client.clone());
    let labels = node_labels(settings);
    let existing = api
        .get_opt(&settings.name)
        .await
        .map_err(|e| Error::kube(format!("reading node {}", settings.name), e))?;
    let previous = match existing {
        None => {
            let node = Node {
                metadata: ObjectMeta {
                    name: Some(settings.name.clone()),
                    labels: Some(labels.clone()),
                    ..Default::default()
                },
                spec: Some(k8s_openapi::api::core::v1::NodeSpec {
                    taints: (!settings.taints.is_empty()).then(|| settings.taints.clone()),
                    ..Default::default()
                }),
                status: None,
            };
            info!(node = %settings.name, "registering node");
            api.create(&PostParams::default(), &node)
                .await
                .map_err(|e| Error::kube(format!("creating node {}", settings.name), e))?;
            Vec::new()
        }
        Some(node) => {
            info!(node = %settings.name, "updating existing node");
            node.status.and_then(|s| s.conditions).unwrap_or_default()
        }
    };
    api.patch_status(
        &settings.name,
        &PatchParams::default(),
        &Patch::Merge(&status_patch(settings, true, &previous)),
    )
    .await
    .map_err(|e| Error::kube(format!("reporting status of node {}", settings.name), e))?;
    let patch = json!({
        "metadata": {"labels": labels},
        "spec": {"taints": settings.taints, "unschedulable": null},
    });
    api.patch(
        &settings.name,
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(|e| Error::kube(format!("updating node {}", settings.name), e))
}

/// Renews the node Lease every 10 s and the status heartbeat every minute, until cancelled.
pub async fn heartbeat(
    client: Client,
    settings: NodeSettings,
    node_uid: String,
    cancel: CancellationToken,
) {
    let mut lease_tick = tokio::time::interval(LEASE_RENEW);
    let mut status_tick = tokio::time::interval(STATUS_HEARTBEAT);
    status_tick.tick().await; // registration just reported status
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = lease_tick.tick() => {
                if let Err(e) = renew_lease(&client, &settings.name, &node_uid).await {
                    warn!(node = %settings.name, error = %e, "lease renewal failed");
                }
            }
            _ = status_tick.tick() => {
                if let Err(e) = report_status(&client, &settings, true).await {
                    warn!(node = %settings.name, error = %e, "node status heartbeat failed");
                }
            }
        }
    }
}

/// Patches the node status (Ready True, or Unknown when the agent stops).
pub async fn report_status(client: &Client, settings: &NodeSettings, ready: bool) -> Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    let previous = api
        .get_status(&settings.name)
        .await
        .map_err(|e| Error::kube(format!("reading node {}", settings.name), e))?
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default();
    api.patch_status(
        &settings.name,
        &PatchParams::default(),
        &Patch::Merge(&status_patch(settings, ready, &previous)),
    )
    .await
    .map_err(|e| Error::kube(format!("reporting status of node {}", settings.name), e))?;
    Ok(())
}

async fn renew_lease(client: &Client, node: &str, node_uid: &str) -> Result<()> {
    let api: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let now = MicroTime(Timestamp::now());
    let patch = json!({"spec": {"holderIdentity": node, "renewTime": now,
                                "leaseDurationSeconds": LEASE_DURATION_SECONDS}});
    match api
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            debug!(%node, "lease renewed");
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(node.to_string()),
                    namespace: Some("kube-node-lease".into()),
                    // Owned by the Node, as the kubelet does: deleting the Node deletes it.
                    owner_references: Some(vec![OwnerReference {
                        api_version: "v1".into(),
                        kind: "Node".into(),
                        name: node.to_string(),
                        uid: node_uid.to_string(),
                        ..Default::default()
                    }]),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(node.to_string()),
                    lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
                    renew_time: Some(now),
                    ..Default::default()
                }),
            };
            api.create(&PostParams::default(), &lease)
                .await
                .map_err(|e| Error::kube(format!("creating lease for node {node}"), e))?;
            info!(%node, "lease created");
            Ok(())
        }
        Err(e) => Err(Error::kube(format!("renewing lease of node {node}"), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::key_value_effect(
        "k8s.dask.org/dedicated=worker:NoSchedule",
        "k8s.dask.org/dedicated",
        Some("worker"),
        "NoSchedule"
    )]
    #[case::key_effect("gpu:NoExecute", "gpu", None, "NoExecute")]
    #[case::empty_value("k=:PreferNoSchedule", "k", Some(""), "PreferNoSchedule")]
    fn taints(
        #[case] s: &str,
        #[case] key: &str,
        #[case] value: Option<&str>,
        #[case] effect: &str,
    ) {
        let t = parse_taint(s).unwrap();
        assert_eq!(
            (t.key.as_str(), t.value.as_deref(), t.effect.as_str()),
            (key, value, effect)
        );
    }

    #[rstest]
    #[case::no_effect("k=v")]
    #[case::bad_effect("k=v:Sometimes")]
    #[case::no_key("=v:NoSchedule")]
    fn bad_taints(#[case] s: &str) {
        assert!(parse_taint(s).is_err());
    }

    #[rstest]
    #[case::ok("pool=dask", true)]
    #[case::empty_value("pool=", true)]
    #[case::no_equals("pool", false)]
    #[case::no_key("=x", false)]
    fn labels(#[case] s: &str, #[case] ok: bool) {
        assert_eq!(parse_label(s).is_ok(), ok);
    }

    #[test]
    fn meminfo() {
        assert_eq!(
            parse_meminfo_total_kib("MemTotal:       24570840 kB\nMemFree: 1 kB\n"),
            Some(24570840)
        );
        assert_eq!(parse_meminfo_total_kib("nothing"), None);
    }

    fn settings() -> NodeSettings {
        NodeSettings {
            name: "local-node".into(),
            labels: BTreeMap::from([("pool".to_string(), "dask".to_string())]),
            taints: vec![],
            capacity: BTreeMap::from([("cpu".to_string(), Quantity("2".into()))]),
            kubelet_port: 10250,
            kubelet_version: "v1.37.2".into(),
        }
    }

    #[test]
    fn status_advertises_only_loopback_and_the_kubelet_port() {
        let p = status_patch(&settings(), true, &[]);
        assert_eq!(
            p["status"]["addresses"],
            json!([{"type": "InternalIP", "address": "127.0.0.1"}])
        );
        assert_eq!(
            p["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"],
            json!(10250)
        );
        let ready = p["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(ready["status"], "True");
        let down = status_patch(&settings(), false, &[]);
        let ready = down["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(ready["status"], "Unknown");
    }

    #[test]
    fn labels_include_hostname_and_configured() {
        let l = node_labels(&settings());
        assert_eq!(l["kubernetes.io/hostname"], "local-node");
        assert_eq!(l["pool"], "dask");
    }
}
