//! Per-pod hosts files: the cluster DNS of this agent.
//!
//! There is no CoreDNS. Every Service name (`svc.ns`, `svc.ns.svc`, `svc.ns.svc.cluster.local`,
//! and the bare `svc` inside its own namespace) maps to what cluster DNS would answer: the
//! ClusterIP (served by the agent's [service proxy](crate::proxy)), or for a headless Service
//! (`clusterIP: None`) the IP of one Ready pod its selector picks (DNS would list them all; a
//! hosts file gives the oldest). Pods with `hostname` + `subdomain` get their own records.
//!
//! Pure: services and pods in, file text out.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Service};

/// One address and the names that resolve to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    /// Address.
    pub ip: IpAddr,
    /// Fully qualified names.
    pub names: Vec<String>,
    /// The namespace of the Service: pods there also get the bare name.
    pub namespace: String,
    /// The bare name for pods of the same namespace.
    pub short_name: String,
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

fn pod_ip(pod: &Pod) -> Option<IpAddr> {
    pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()
}

/// Resolves every Service to its ClusterIP, or a headless one to one endpoint pod IP.
///
/// For headless Services the oldest matching pod wins, so a name does not flap between
/// replicas; pods that are not Ready (unless `publishNotReadyAddresses`) or are being deleted
/// are not endpoints. ExternalName Services get no entry (that needs a CNAME).
pub fn resolve_services(
    services: &[Arc<Service>],
    pods: &[Arc<Pod>],
    domain: &str,
) -> Vec<HostEntry> {
    let mut entries = Vec::new();
    for svc in services {
        let (Some(name), Some(ns)) = (
            svc.metadata.name.as_deref(),
            svc.metadata.namespace.as_deref(),
        ) else {
            continue;
        };
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        let names = vec![
            format!("{name}.{ns}"),
            format!("{name}.{ns}.svc"),
            format!("{name}.{ns}.svc.{domain}"),
        ];
        if let Some(ip) = crate::services::cluster_ip(svc) {
            entries.push(HostEntry {
                ip: IpAddr::V4(ip),
                names,
                namespace: ns.to_string(),
                short_name: name.to_string(),
            });
            continue;
        }
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
            continue;
        };
        let not_ready_ok = spec.publish_not_ready_addresses == Some(true);
        let mut candidates: Vec<(&Pod, IpAddr)> = pods
            .iter()
            .map(Arc::as_ref)
            .filter(|p| p.metadata.namespace.as_deref() == Some(ns))
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| {
                let labels = p.metadata.labels.as_ref();
                selector
                    .iter()
                    .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
            })
            .filter(|p| not_ready_ok || pod_ready(p))
            .filter_map(|p| pod_ip(p).map(|ip| (p, ip)))
            .collect();
        candidates.sort_by(|(a, _), (b, _)| {
            let key = |p: &Pod| {
                (
                    p.metadata.creation_timestamp.clone().map(|t| t.0),
                    p.metadata.name.clone(),
                )
            };
            key(a).cmp(&key(b))
        });
        if let Some((_, ip)) = candidates.first() {
            entries.push(HostEntry {
                ip: *ip,
                names,
                namespace: ns.to_string(),
                short_name: name.to_string(),
            });
        }
        // Pods with hostname + subdomain = this service get their own records (StatefulSet style).
        for p in pods
            .iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(ns))
        {
            let Some(ps) = p.spec.as_ref() else { continue };
            let (Some(host), Some(sub)) = (ps.hostname.as_deref(), ps.subdomain.as_deref()) else {
                continue;
            };
            if sub != name {
                continue;
            }
            if let Some(ip) = pod_ip(p) {
                entries.push(HostEntry {
                    ip,
                    names: vec![
                        format!("{host}.{sub}.{ns}"),
                        format!("{host}.{sub}.{ns}.svc"),
                        format!("{host}.{sub}.{ns}.svc.{domain}"),
                    ],
                    namespace: ns.to_string(),
                    short_name: format!("{host}.{sub}"),
                });
            }
        }
    }
    entries.sort_by(|a, b| a.names.cmp(&b.names));
    entries
}

/// What identifies the pod in its own hosts file.
#[derive(Debug, Clone)]
pub struct PodIdentity<'a> {
    /// Pod name (the hostname unless `spec.hostname` says otherwise).
    pub name: &'a str,
    /// Namespace.
    pub namespace: &'a str,
    /// The pod IP.
    pub ip: Option<IpAddr>,
    /// `spec.hostname`.
    pub hostname: Option<&'a str>,
    /// `spec.subdomain`.
    pub subdomain: Option<&'a str>,
    /// `spec.hostAliases` as (ip, names).
    pub host_aliases: Vec<(String, Vec<String>)>,
}

/// The hostname the pod's processes see (`spec.hostname` or the pod name, at most 63 chars).
pub fn pod_hostname(name: &str, hostname: Option<&str>) -> String {
    let h = hostname.filter(|h| !h.is_empty()).unwrap_or(name);
    h.chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches(['-', '.'])
        .to_string()
}

/// Renders the pod's hosts file, like the kubelet's managed one plus the Service names.
pub fn render(pod: &PodIdentity<'_>, services: &[HostEntry], domain: &str) -> String {
    let mut out = String::from(
        "# Kubernetes-managed hosts file (node-agent: Service names map to a Ready pod IP).\n\
         127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\n\
         fe00::1\tip6-allnodes\n\
         fe00::2\tip6-allrouters\n",
    );
    let hostname = pod_hostname(pod.name, pod.hostname);
    if let Some(ip) = pod.ip {
        match pod.subdomain.filter(|s| !s.is_empty()) {
            Some(sub) => out.push_str(&format!(
                "{ip}\t{hostname}.{sub}.{ns}.svc.{domain}\t{hostname}\n",
                ns = pod.namespace
            )),
            None => out.push_str(&format!("{ip}\t{hostname}\n")),
        }
    }
    if !pod.host_aliases.is_empty() {
        out.push_str("\n# Entries added by HostAliases.\n");
        for (ip, names) in &pod.host_aliases {
            out.push_str(&format!("{ip}\t{}\n", names.join("\t")));
        }
    }
    if !services.is_empty() {
        out.push_str("\n# Services (ClusterIP; headless: a Ready endpoint pod's IP).\n");
    }
    // One line per address keeps glibc's "first line wins" lookups unambiguous.
    let mut by_ip: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
    for e in services {
        let names = by_ip.entry(e.ip).or_default();
        names.extend(e.names.iter().cloned());
        if e.namespace == pod.namespace {
            names.push(e.short_name.clone());
        }
    }
    for (ip, names) in by_ip {
        out.push_str(&format!("{ip}\t{}\n", names.join(" ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use serde_json::json;

    fn pod(
        name: &str,
        ns: &str,
        labels: serde_json::Value,
        ip: Option<&str>,
        ready: bool,
        created: &str,
    ) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": ns, "labels": labels,
                             "creationTimestamp": created},
                "spec": {"containers": [{"name": "c"}]},
                "status": {"podIP": ip,
                           "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
            }))
            .unwrap(),
        )
    }

    fn svc(name: &str, ns: &str, selector: serde_json::Value) -> Arc<Service> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": ns},
                "spec": {"clusterIP": "None", "selector": selector, "ports": [{"port": 8786}]}
            }))
            .unwrap(),
        )
    }

    fn cluster_ip_svc(name: &str, ns: &str, spec: serde_json::Value) -> Arc<Service> {
        Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": name, "namespace": ns}, "spec": spec}),
            )
            .unwrap(),
        )
    }

    #[rstest]
    #[case::cluster_ip_whatever_the_pods(json!({"clusterIP": "10.96.4.5", "selector": {"app": "x"}}), Some("10.96.4.5"))]
    #[case::cluster_ip_without_selector(json!({"clusterIP": "10.96.0.1"}), Some("10.96.0.1"))]
    #[case::external_name(json!({"type": "ExternalName", "externalName": "example.org"}), None)]
    fn cluster_ip_services_resolve_to_their_cluster_ip(
        #[case] spec: serde_json::Value,
        #[case] expected: Option<&str>,
    ) {
        let services = vec![cluster_ip_svc("kubernetes", "default", spec)];
        let entries = resolve_services(&services, &[], "cluster.local");
        assert_eq!(
            entries.first().map(|e| e.ip.to_string()),
            expected.map(String::from)
        );
        if let Some(e) = entries.first() {
            assert_eq!(
                e.names,
                vec![
                    "kubernetes.default",
                    "kubernetes.default.svc",
                    "kubernetes.default.svc.cluster.local"
                ]
            );
        }
    }

    fn sched_labels() -> serde_json::Value {
        json!({"dask.org/cluster-name": "c1", "dask.org/component": "scheduler"})
    }

    #[rstest]
    #[case::ready_pod_selected(vec![pod("s", "ns1", sched_labels(), Some("10.244.0.5"), true, "2026-01-01T00:00:00Z")], Some("10.244.0.5"))]
    #[case::unready_pod_not_an_endpoint(vec![pod("s", "ns1", sched_labels(), Some("10.244.0.5"), false, "2026-01-01T00:00:00Z")], None)]
    #[case::pod_without_ip(vec![pod("s", "ns1", sched_labels(), None, true, "2026-01-01T00:00:00Z")], None)]
    #[case::other_namespace_ignored(vec![pod("s", "ns2", sched_labels(), Some("10.244.0.5"), true, "2026-01-01T00:00:00Z")], None)]
    #[case::label_mismatch(vec![pod("s", "ns1", json!({"dask.org/cluster-name": "c2", "dask.org/component": "scheduler"}), Some("10.244.0.5"), true, "2026-01-01T00:00:00Z")], None)]
    #[case::oldest_ready_pod_wins(vec![
        pod("b", "ns1", sched_labels(), Some("10.244.0.9"), true, "2026-01-02T00:00:00Z"),
        pod("a", "ns1", sched_labels(), Some("10.244.0.8"), true, "2026-01-01T00:00:00Z")], Some("10.244.0.8"))]
    fn service_resolution(#[case] pods: Vec<Arc<Pod>>, #[case] expected: Option<&str>) {
        let services = vec![svc("c1", "ns1", sched_labels())];
        let entries = resolve_services(&services, &pods, "cluster.local");
        assert_eq!(
            entries.first().map(|e| e.ip.to_string()),
            expected.map(String::from)
        );
        if let Some(e) = entries.first() {
            assert_eq!(
                e.names,
                vec!["c1.ns1", "c1.ns1.svc", "c1.ns1.svc.cluster.local"]
            );
        }
    }

    #[test]
    fn headless_services_without_selector_are_skipped() {
        let services = vec![svc("kubernetes", "default", json!({}))];
        let pods = vec![pod(
            "x",
            "default",
            json!({}),
            Some("10.244.0.2"),
            true,
            "2026-01-01T00:00:00Z",
        )];
        assert!(resolve_services(&services, &pods, "cluster.local").is_empty());
    }

    #[test]
    fn renders_kubelet_style_file_with_service_names() {
        let entries = vec![
            HostEntry {
                ip: "10.244.0.5".parse().unwrap(),
                names: vec![
                    "sched.ns1".into(),
                    "sched.ns1.svc".into(),
                    "sched.ns1.svc.cluster.local".into(),
                ],
                namespace: "ns1".into(),
                short_name: "sched".into(),
            },
            HostEntry {
                ip: "10.244.0.6".parse().unwrap(),
                names: vec!["other.ns2".into()],
                namespace: "ns2".into(),
                short_name: "other".into(),
            },
        ];
        let me = PodIdentity {
            name: "worker-1",
            namespace: "ns1",
            ip: Some("10.244.0.7".parse().unwrap()),
            hostname: None,
            subdomain: None,
            host_aliases: vec![("10.1.2.3".into(), vec!["foo.local".into(), "bar".into()])],
        };
        let text = render(&me, &entries, "cluster.local");
        assert!(text.starts_with("# Kubernetes-managed hosts file"));
        assert!(text.contains("127.0.0.1\tlocalhost\n"));
        assert!(text.contains("10.244.0.7\tworker-1\n"));
        assert!(text.contains("10.1.2.3\tfoo.local\tbar\n"));
        assert!(
            text.contains(
                "10.244.0.5\tsched.ns1 sched.ns1.svc sched.ns1.svc.cluster.local sched\n"
            )
        );
        assert!(
            text.contains("10.244.0.6\tother.ns2\n"),
            "no bare name across namespaces:\n{text}"
        );
    }

    #[rstest]
    #[case::pod_name("w-1", None, "w-1")]
    #[case::spec_hostname("w-1", Some("sched-0"), "sched-0")]
    #[case::truncated_to_63(&"a".repeat(70), None, &"a".repeat(63))]
    fn hostnames(#[case] name: &str, #[case] hostname: Option<&str>, #[case] expected: &str) {
        assert_eq!(pod_hostname(name, hostname), expected);
    }

    #[test]
    fn subdomain_pod_line_is_fully_qualified() {
        let me = PodIdentity {
            name: "web-0",
            namespace: "ns",
            ip: Some("10.244.0.3".parse().unwrap()),
            hostname: Some("web-0"),
            subdomain: Some("web"),
            host_aliases: vec![],
        };
        assert!(
            render(&me, &[], "cluster.local")
                .contains("10.244.0.3\tweb-0.web.ns.svc.cluster.local\tweb-0\n")
        );
    }
}
