//! What kube-proxy and the kubelet derive from Services and EndpointSlices, as pure functions:
//! the ClusterIP frontends with their backends (what the service proxy serves), the choice of
//! a backend per connection, and the docker-link style `<SVC>_SERVICE_HOST` environment.
//!
//! Endpoint rules follow kube-proxy (`pkg/proxy/topology.go`, `endpointslicecache.go`): a
//! missing `ready`/`serving` condition counts as true, ready endpoints serve; when none is
//! ready, endpoints that are serving *and* terminating do (graceful termination); with
//! `internalTrafficPolicy: Local` only endpoints on this node count. Ports are matched by the
//! Service port's name and protocol against the slice's ports, which is how a named
//! `targetPort` resolves (the EndpointSlice controller already wrote the number per pod).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};

/// The label an EndpointSlice carries with its Service's name.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// How a frontend picks a backend for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Affinity {
    /// Round robin over the backends.
    None,
    /// `sessionAffinity: ClientIP`: one client address always gets the same backend while the
    /// backend set is unchanged.
    ClientIp,
}

/// One ClusterIP:port of one Service (TCP) and where its connections go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frontend {
    /// `namespace/name:port-name` (port name may be empty), for logs.
    pub service: String,
    /// Backends (pod IP:targetPort), sorted.
    pub backends: Vec<SocketAddr>,
    /// Backend selection.
    pub affinity: Affinity,
}

/// The ClusterIP of a Service if it has one (not headless, not ExternalName, IPv4).
pub fn cluster_ip(svc: &Service) -> Option<Ipv4Addr> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    spec.cluster_ip.as_deref()?.parse().ok()
}

fn port_protocol(p: &ServicePort) -> &str {
    p.protocol.as_deref().unwrap_or("TCP")
}

/// Whether `svc` is the `default/kubernetes` Service, whose backend is the apiserver itself.
///
/// This cluster runs the apiserver with `--endpoint-reconciler-type=none` (it listens on the
/// host's 127.0.0.1, which an EndpointSlice may not name), so that Service has no slices: the
/// agent forwards it to the apiserver address of its own kubeconfig instead.
pub fn is_apiserver_service(svc: &Service) -> bool {
    svc.metadata.namespace.as_deref() == Some("default")
        && svc.metadata.name.as_deref() == Some("kubernetes")
}

#[derive(Debug, Clone, Copy)]
struct Usable {
    ready: bool,
    serving: bool,
    terminating: bool,
}

fn conditions(ep: &Endpoint) -> Usable {
    let c = ep.conditions.clone().unwrap_or_default();
    Usable {
        ready: c.ready.unwrap_or(true),
        serving: c.serving.unwrap_or(true),
        terminating: c.terminating.unwrap_or(false),
    }
}

/// The backends of one Service port from the Service's EndpointSlices.
pub fn port_backends(
    svc: &Service,
    port: &ServicePort,
    slices: &[Arc<EndpointSlice>],
    node_name: &str,
) -> Vec<SocketAddr> {
    let (Some(ns), Some(name)) = (
        svc.metadata.namespace.as_deref(),
        svc.metadata.name.as_deref(),
    ) else {
        return Vec::new();
    };
    let local_only = svc
        .spec
        .as_ref()
        .and_then(|s| s.internal_traffic_policy.as_deref())
        == Some("Local");
    let want_name = port.name.as_deref().unwrap_or("");
    let want_proto = port_protocol(port);
    // (address, usable) over every slice of the Service; an address may appear in two slices
    // for a moment while the controller moves it.
    let mut candidates: Vec<(SocketAddr, Usable)> = Vec::new();
    for slice in slices {
        if slice.metadata.namespace.as_deref() != Some(ns)
            || slice.address_type != "IPv4"
            || slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                .map(String::as_str)
                != Some(name)
        {
            continue;
        }
        let Some(number) = slice.ports.iter().flatten().find_map(|p| {
            (p.name.as_deref().unwrap_or("") == want_name
                && p.protocol.as_deref().unwrap_or("TCP") == want_proto)
                .then_some(p.port)
                .flatten()
        }) else {
            continue;
        };
        let Ok(number) = u16::try_from(number) else {
            continue;
        };
        for ep in slice.endpoints.iter().flatten() {
            if local_only && ep.node_name.as_deref() != Some(node_name) {
                continue;
            }
            let usable = conditions(ep);
            for addr in &ep.addresses {
                if let Ok(ip) = addr.parse::<Ipv4Addr>() {
                    candidates.push((SocketAddr::new(IpAddr::V4(ip), number), usable));
                }
            }
        }
    }
    let ready: BTreeSet<SocketAddr> = candidates
        .iter()
        .filter(|(_, u)| u.ready)
        .map(|(a, _)| *a)
        .collect();
    let chosen = if ready.is_empty() {
        candidates
            .iter()
            .filter(|(_, u)| u.serving && u.terminating)
            .map(|(a, _)| *a)
            .collect()
    } else {
        ready
    };
    chosen.into_iter().collect()
}

/// Every TCP ClusterIP:port this node's proxy serves, with its backends (possibly none).
///
/// UDP and SCTP ports are left out: the proxy is a TCP proxy (see the README).
pub fn frontends(
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
    node_name: &str,
    apiserver: SocketAddr,
) -> BTreeMap<SocketAddrV4, Frontend> {
    let mut out = BTreeMap::new();
    for svc in services {
        let Some(ip) = cluster_ip(svc) else { continue };
        let spec = svc.spec.as_ref();
        let affinity = match spec.and_then(|s| s.session_affinity.as_deref()) {
            Some("ClientIP") => Affinity::ClientIp,
            _ => Affinity::None,
        };
        for port in spec.and_then(|s| s.ports.as_ref()).into_iter().flatten() {
            if port_protocol(port) != "TCP" {
                continue;
            }
            let Ok(number) = u16::try_from(port.port) else {
                continue;
            };
            let backends = if is_apiserver_service(svc) {
                vec![apiserver]
            } else {
                port_backends(svc, port, slices, node_name)
            };
            out.insert(
                SocketAddrV4::new(ip, number),
                Frontend {
                    service: format!(
                        "{}/{}:{}",
                        svc.metadata.namespace.as_deref().unwrap_or_default(),
                        svc.metadata.name.as_deref().unwrap_or_default(),
                        port.name.as_deref().unwrap_or_default()
                    ),
                    backends,
                    affinity,
                },
            );
        }
    }
    out
}

/// The backend order for one connection: the preferred backend first, then the others (the
/// proxy tries the next one when a connect fails, as kube-proxy's userspace mode did).
///
/// `counter` is the frontend's connection count (round robin); `client` the peer address.
pub fn backend_order(frontend: &Frontend, counter: u64, client: IpAddr) -> Vec<SocketAddr> {
    let n = frontend.backends.len();
    if n == 0 {
        return Vec::new();
    }
    let start = match frontend.affinity {
        Affinity::None => counter,
        Affinity::ClientIp => fnv1a(client.to_string().as_bytes()),
    };
    let start = usize::try_from(start % n as u64).unwrap_or(0);
    (0..n).map(|i| frontend.backends[(start + i) % n]).collect()
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// `my-svc` -> `MY_SVC` (the kubelet's `makeEnvVariableName`).
fn env_name(service: &str) -> String {
    service.replace('-', "_").to_uppercase()
}

/// The environment the kubelet gives every container for Services (`envvars.FromServices`
/// after `getServiceEnvVarMap`): the `default/kubernetes` Service always, and with
/// `enableServiceLinks` (default true) every Service with a ClusterIP in the pod's namespace.
///
/// Per Service: `<SVC>_SERVICE_HOST`, `<SVC>_SERVICE_PORT` (first port),
/// `<SVC>_SERVICE_PORT_<NAME>` per named port, and Docker link variables `<SVC>_PORT`,
/// `<SVC>_PORT_<port>_<PROTO>{,_PROTO,_PORT,_ADDR}`. Sorted by Service name.
pub fn service_env(
    services: &[Arc<Service>],
    pod_namespace: &str,
    enable_service_links: bool,
) -> Vec<(String, String)> {
    let mut chosen: BTreeMap<String, &Service> = BTreeMap::new();
    for svc in services {
        if cluster_ip(svc).is_none() {
            continue;
        }
        let Some(name) = svc.metadata.name.as_deref() else {
            continue;
        };
        let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
        if ns == "default" && name == "kubernetes" {
            chosen.entry(name.to_string()).or_insert(svc);
        } else if ns == pod_namespace && enable_service_links {
            chosen.insert(name.to_string(), svc);
        }
    }
    let mut env = Vec::new();
    for (name, svc) in chosen {
        let (Some(ip), Some(ports)) = (
            cluster_ip(svc),
            svc.spec.as_ref().and_then(|s| s.ports.as_ref()),
        ) else {
            continue;
        };
        let Some(first) = ports.first() else { continue };
        let prefix = env_name(&name);
        env.push((format!("{prefix}_SERVICE_HOST"), ip.to_string()));
        env.push((format!("{prefix}_SERVICE_PORT"), first.port.to_string()));
        for p in ports {
            if let Some(pn) = p.name.as_deref().filter(|n| !n.is_empty()) {
                env.push((
                    format!("{prefix}_SERVICE_PORT_{}", env_name(pn)),
                    p.port.to_string(),
                ));
            }
        }
        for (i, p) in ports.iter().enumerate() {
            let proto = port_protocol(p);
            let url = format!("{}://{ip}:{}", proto.to_lowercase(), p.port);
            if i == 0 {
                env.push((format!("{prefix}_PORT"), url.clone()));
            }
            let pp = format!("{prefix}_PORT_{}_{}", p.port, proto.to_uppercase());
            env.push((pp.clone(), url));
            env.push((format!("{pp}_PROTO"), proto.to_lowercase()));
            env.push((format!("{pp}_PORT"), p.port.to_string()));
            env.push((format!("{pp}_ADDR"), ip.to_string()));
        }
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use serde_json::json;

    fn svc(ns: &str, name: &str, spec: serde_json::Value) -> Arc<Service> {
        Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": name, "namespace": ns}, "spec": spec}),
            )
            .unwrap(),
        )
    }

    fn slice(
        ns: &str,
        svc: &str,
        ports: serde_json::Value,
        endpoints: serde_json::Value,
    ) -> Arc<EndpointSlice> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": format!("{svc}-x"), "namespace": ns,
                             "labels": {SERVICE_NAME_LABEL: svc}},
                "addressType": "IPv4",
                "ports": ports,
                "endpoints": endpoints,
            }))
            .unwrap(),
        )
    }

    fn ep(
        ip: &str,
        ready: Option<bool>,
        serving: Option<bool>,
        terminating: Option<bool>,
        node: &str,
    ) -> serde_json::Value {
        json!({"addresses": [ip], "nodeName": node,
               "conditions": {"ready": ready, "serving": serving, "terminating": terminating}})
    }

    fn addrs(v: &[&str]) -> Vec<SocketAddr> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    const API: &str = "127.0.0.1:6443";

    fn web() -> Arc<Service> {
        svc(
            "ns",
            "web",
            json!({"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}),
        )
    }

    #[rstest]
    #[case::ready_endpoints(vec![ep("10.244.0.5", Some(true), None, None, "n1"), ep("10.244.0.6", None, None, None, "n1")],
                            &["10.244.0.5:8080", "10.244.0.6:8080"])]
    #[case::not_ready_left_out(vec![ep("10.244.0.5", Some(false), Some(false), None, "n1"), ep("10.244.0.6", Some(true), None, None, "n1")],
                               &["10.244.0.6:8080"])]
    #[case::terminating_serving_used_when_none_ready(vec![ep("10.244.0.5", Some(false), Some(true), Some(true), "n1")],
                                                     &["10.244.0.5:8080"])]
    #[case::terminating_ignored_while_others_ready(vec![ep("10.244.0.5", Some(false), Some(true), Some(true), "n1"), ep("10.244.0.6", Some(true), None, None, "n1")],
                                                   &["10.244.0.6:8080"])]
    #[case::not_serving_terminating_never(vec![ep("10.244.0.5", Some(false), Some(false), Some(true), "n1")], &[])]
    #[case::no_endpoints(vec![], &[])]
    fn endpoint_conditions(#[case] endpoints: Vec<serde_json::Value>, #[case] expected: &[&str]) {
        let slices = vec![slice(
            "ns",
            "web",
            json!([{"name": "http", "port": 8080}]),
            json!(endpoints),
        )];
        let f = frontends(&[web()], &slices, "n1", API.parse().unwrap());
        let fe = &f[&"10.96.0.10:80".parse().unwrap()];
        assert_eq!(fe.backends, addrs(expected));
        assert_eq!(fe.service, "ns/web:http");
    }

    #[rstest]
    #[case::named_port_matches(json!([{"name": "http", "port": 8080}]), &["10.244.0.5:8080"])]
    #[case::other_port_name(json!([{"name": "metrics", "port": 9090}]), &[])]
    #[case::other_protocol(json!([{"name": "http", "port": 8080, "protocol": "UDP"}]), &[])]
    fn slice_ports_are_matched_by_name_and_protocol(
        #[case] ports: serde_json::Value,
        #[case] expected: &[&str],
    ) {
        let slices = vec![slice(
            "ns",
            "web",
            ports,
            json!([ep("10.244.0.5", None, None, None, "n1")]),
        )];
        let f = frontends(&[web()], &slices, "n1", API.parse().unwrap());
        assert_eq!(
            f[&"10.96.0.10:80".parse().unwrap()].backends,
            addrs(expected)
        );
    }

    #[test]
    fn slices_of_other_services_and_namespaces_are_ignored_and_duplicates_merged() {
        let e = json!([ep("10.244.0.5", None, None, None, "n1")]);
        let p = json!([{"name": "http", "port": 8080}]);
        let slices = vec![
            slice("ns", "web", p.clone(), e.clone()),
            slice("ns", "web", p.clone(), e.clone()),
            slice(
                "other",
                "web",
                p.clone(),
                json!([ep("10.244.0.7", None, None, None, "n1")]),
            ),
            slice(
                "ns",
                "api",
                p,
                json!([ep("10.244.0.8", None, None, None, "n1")]),
            ),
        ];
        let f = frontends(&[web()], &slices, "n1", API.parse().unwrap());
        assert_eq!(
            f[&"10.96.0.10:80".parse().unwrap()].backends,
            addrs(&["10.244.0.5:8080"])
        );
    }

    #[test]
    fn internal_traffic_policy_local_keeps_this_nodes_endpoints() {
        let s = svc(
            "ns",
            "web",
            json!({"clusterIP": "10.96.0.10", "internalTrafficPolicy": "Local",
                                        "ports": [{"name": "http", "port": 80}]}),
        );
        let slices = vec![slice(
            "ns",
            "web",
            json!([{"name": "http", "port": 8080}]),
            json!([
                ep("10.244.0.5", None, None, None, "n1"),
                ep("10.244.9.5", None, None, None, "n2")
            ]),
        )];
        let f = frontends(&[s], &slices, "n1", API.parse().unwrap());
        assert_eq!(
            f[&"10.96.0.10:80".parse().unwrap()].backends,
            addrs(&["10.244.0.5:8080"])
        );
    }

    #[rstest]
    #[case::headless(json!({"clusterIP": "None", "ports": [{"port": 80}]}), 0)]
    #[case::external_name(json!({"type": "ExternalName", "externalName": "example.org", "ports": [{"port": 80}]}), 0)]
    #[case::no_cluster_ip_yet(json!({"ports": [{"port": 80}]}), 0)]
    #[case::udp_only(json!({"clusterIP": "10.96.0.11", "ports": [{"port": 53, "protocol": "UDP"}]}), 0)]
    #[case::tcp_and_udp(json!({"clusterIP": "10.96.0.11", "ports": [{"name": "a", "port": 53, "protocol": "UDP"}, {"name": "b", "port": 53}]}), 1)]
    #[case::node_port_has_a_cluster_ip(json!({"type": "NodePort", "clusterIP": "10.96.0.11", "ports": [{"port": 80, "nodePort": 30080}]}), 1)]
    fn which_services_get_frontends(#[case] spec: serde_json::Value, #[case] count: usize) {
        let f = frontends(&[svc("ns", "s", spec)], &[], "n1", API.parse().unwrap());
        assert_eq!(f.len(), count, "{f:?}");
    }

    #[test]
    fn kubernetes_service_goes_to_the_apiserver() {
        let k = svc(
            "default",
            "kubernetes",
            json!({"clusterIP": "10.96.0.1",
                    "ports": [{"name": "https", "port": 443, "targetPort": 6443}]}),
        );
        let f = frontends(&[k], &[], "n1", "127.0.0.1:26443".parse().unwrap());
        assert_eq!(
            f[&"10.96.0.1:443".parse().unwrap()].backends,
            addrs(&["127.0.0.1:26443"])
        );
        let elsewhere = svc(
            "ns",
            "kubernetes",
            json!({"clusterIP": "10.96.0.9", "ports": [{"port": 443}]}),
        );
        let f = frontends(&[elsewhere], &[], "n1", API.parse().unwrap());
        assert!(f[&"10.96.0.9:443".parse().unwrap()].backends.is_empty());
    }

    fn fe(backends: &[&str], affinity: Affinity) -> Frontend {
        Frontend {
            service: "ns/s:".into(),
            backends: addrs(backends),
            affinity,
        }
    }

    #[test]
    fn round_robin_starts_at_the_next_backend_and_keeps_the_rest_as_fallbacks() {
        let f = fe(&["10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1"], Affinity::None);
        let client: IpAddr = "10.244.0.9".parse().unwrap();
        let firsts: Vec<SocketAddr> = (0..4).map(|c| backend_order(&f, c, client)[0]).collect();
        assert_eq!(
            firsts,
            addrs(&["10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1", "10.0.0.1:1"])
        );
        assert_eq!(
            backend_order(&f, 1, client),
            addrs(&["10.0.0.2:1", "10.0.0.3:1", "10.0.0.1:1"])
        );
        assert!(backend_order(&fe(&[], Affinity::None), 0, client).is_empty());
    }

    #[test]
    fn client_ip_affinity_sticks() {
        let f = fe(
            &["10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1"],
            Affinity::ClientIp,
        );
        let a: IpAddr = "10.244.0.9".parse().unwrap();
        let first = backend_order(&f, 0, a)[0];
        assert!((1..20).all(|c| backend_order(&f, c, a)[0] == first));
    }

    fn env_of(services: &[Arc<Service>], ns: &str, links: bool) -> Vec<(String, String)> {
        service_env(services, ns, links)
    }

    fn kubernetes() -> Arc<Service> {
        svc(
            "default",
            "kubernetes",
            json!({"clusterIP": "10.96.0.1", "ports": [{"name": "https", "port": 443}]}),
        )
    }

    #[test]
    fn kubernetes_service_env_like_the_kubelet() {
        let env = env_of(&[kubernetes()], "team", true);
        let expected: Vec<(String, String)> = [
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
            ("KUBERNETES_SERVICE_PORT_HTTPS", "443"),
            ("KUBERNETES_PORT", "tcp://10.96.0.1:443"),
            ("KUBERNETES_PORT_443_TCP", "tcp://10.96.0.1:443"),
            ("KUBERNETES_PORT_443_TCP_PROTO", "tcp"),
            ("KUBERNETES_PORT_443_TCP_PORT", "443"),
            ("KUBERNETES_PORT_443_TCP_ADDR", "10.96.0.1"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(env, expected);
    }

    #[rstest]
    #[case::same_namespace_with_links("team", true, true)]
    #[case::links_disabled("team", false, false)]
    #[case::other_namespace("elsewhere", true, false)]
    fn namespace_services_need_service_links(
        #[case] pod_ns: &str,
        #[case] links: bool,
        #[case] present: bool,
    ) {
        let sched = svc(
            "team",
            "my-sched",
            json!({"clusterIP": "10.96.3.4",
                        "ports": [{"name": "tcp-comm", "port": 8786}, {"name": "http-dashboard", "port": 8787}]}),
        );
        let headless = svc(
            "team",
            "workers",
            json!({"clusterIP": "None", "ports": [{"port": 1}]}),
        );
        let env = env_of(&[kubernetes(), sched, headless], pod_ns, links);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(
            get("KUBERNETES_SERVICE_HOST"),
            Some("10.96.0.1"),
            "always there"
        );
        assert_eq!(get("MY_SCHED_SERVICE_HOST").is_some(), present);
        assert!(
            get("WORKERS_SERVICE_HOST").is_none(),
            "headless Services get no variables"
        );
        if present {
            assert_eq!(get("MY_SCHED_SERVICE_PORT"), Some("8786"));
            assert_eq!(get("MY_SCHED_SERVICE_PORT_HTTP_DASHBOARD"), Some("8787"));
            assert_eq!(get("MY_SCHED_PORT"), Some("tcp://10.96.3.4:8786"));
            assert_eq!(get("MY_SCHED_PORT_8787_TCP_ADDR"), Some("10.96.3.4"));
        }
    }
}
