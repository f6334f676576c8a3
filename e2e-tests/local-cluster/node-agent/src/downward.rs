//! A container's environment as the kubelet builds it: `envFrom`, `env` with `$(VAR)`
//! expansion, downward API `fieldRef` / `resourceFieldRef`, ConfigMap and Secret keys.
//!
//! Pure: the ConfigMaps and Secrets a container refers to are fetched beforehand (see
//! [`referenced_sources`]) and handed in as [`EnvSources`], so every rule here is unit-tested.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{
    Container, EnvVarSource, ObjectFieldSelector, Pod, ResourceFieldSelector,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::error::{Error, Result};
use crate::expand::expand;
use crate::quantity;

/// Facts about the running pod that the downward API exposes.
#[derive(Debug, Clone)]
pub struct PodFacts<'a> {
    /// The pod (metadata and spec are read).
    pub pod: &'a Pod,
    /// The node it runs on.
    pub node_name: &'a str,
    /// Its IP in its network namespace.
    pub pod_ip: Option<IpAddr>,
    /// The node's address.
    pub host_ip: IpAddr,
    /// The node's allocatable resources: the default for unset limits, as in the kubelet.
    pub node_allocatable: &'a BTreeMap<String, Quantity>,
}

/// ConfigMap and Secret contents the container refers to (`None` means "does not exist"),
/// and the Service variables the kubelet adds.
#[derive(Debug, Clone, Default)]
pub struct EnvSources {
    /// ConfigMap name -> data.
    pub config_maps: BTreeMap<String, Option<BTreeMap<String, String>>>,
    /// Secret name -> decoded data.
    pub secrets: BTreeMap<String, Option<BTreeMap<String, String>>>,
    /// `<SVC>_SERVICE_HOST` etc. (see [`crate::services::service_env`]).
    pub services: Vec<(String, String)>,
}

/// Names of the ConfigMaps and Secrets a container's env refers to: `(config_maps, secrets)`.
pub fn referenced_sources(container: &Container) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut cms = BTreeSet::new();
    let mut secrets = BTreeSet::new();
    for from in container.env_from.iter().flatten() {
        if let Some(r) = &from.config_map_ref {
            cms.insert(r.name.clone());
        }
        if let Some(r) = &from.secret_ref {
            secrets.insert(r.name.clone());
        }
    }
    for var in container.env.iter().flatten() {
        if let Some(src) = &var.value_from {
            if let Some(r) = &src.config_map_key_ref {
                cms.insert(r.name.clone());
            }
            if let Some(r) = &src.secret_key_ref {
                secrets.insert(r.name.clone());
            }
        }
    }
    (cms, secrets)
}

/// The environment variables Kubernetes defines for `container`, in definition order.
///
/// `$(VAR)` references in values see variables defined earlier in the same list (and
/// `envFrom`), then the Service variables, exactly like the kubelet; the image's own
/// environment is not part of it. The Service variables follow the container's own, for the
/// names the container does not define.
pub fn container_env(
    facts: &PodFacts<'_>,
    container: &Container,
    sources: &EnvSources,
) -> Result<Vec<(String, String)>> {
    let mut vars: Vec<(String, String)> = Vec::new();
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match sources.config_maps.get(&r.name).cloned().flatten() {
                Some(data) => {
                    vars.extend(data.into_iter().map(|(k, v)| (format!("{prefix}{k}"), v)))
                }
                None if r.optional == Some(true) => {}
                None => {
                    return Err(Error::ContainerConfig(format!(
                        "configmap \"{}\" not found",
                        r.name
                    )));
                }
            }
        }
        if let Some(r) = &from.secret_ref {
            match sources.secrets.get(&r.name).cloned().flatten() {
                Some(data) => {
                    vars.extend(data.into_iter().map(|(k, v)| (format!("{prefix}{k}"), v)))
                }
                None if r.optional == Some(true) => {}
                None => {
                    return Err(Error::ContainerConfig(format!(
                        "secret \"{}\" not found",
                        r.name
                    )));
                }
            }
        }
    }
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (_, Some(source)) => match value_from(facts, container, source, sources)? {
                Some(v) => v,
                // An optional key that is missing defines no variable at all.
                None => continue,
            },
            (Some(value), None) => expand(value, &|name| {
                vars.iter()
                    .rev()
                    .chain(sources.services.iter())
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            }),
            (None, None) => String::new(),
        };
        vars.push((var.name.clone(), value));
    }
    let mut vars = dedup_last_wins(vars);
    for (k, v) in &sources.services {
        if !vars.iter().any(|(name, _)| name == k) {
            vars.push((k.clone(), v.clone()));
        }
    }
    Ok(vars)
}

/// Keeps the last definition of each name, in the order of first definition.
fn dedup_last_wins(vars: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(vars.len());
    for (k, v) in vars {
        match out.iter_mut().find(|(name, _)| *name == k) {
            Some(slot) => slot.1 = v,
            None => out.push((k, v)),
        }
    }
    out
}

fn value_from(
    facts: &PodFacts<'_>,
    container: &Container,
    source: &EnvVarSource,
    sources: &EnvSources,
) -> Result<Option<String>> {
    if let Some(field) = &source.field_ref {
        return field_ref(facts, field).map(Some);
    }
    if let Some(res) = &source.resource_field_ref {
        return resource_field_ref(facts, container, res).map(Some);
    }
    if let Some(r) = &source.config_map_key_ref {
        let optional = r.optional == Some(true);
        return key_ref(&sources.config_maps, "ConfigMap", &r.name, &r.key, optional);
    }
    if let Some(r) = &source.secret_key_ref {
        let optional = r.optional == Some(true);
        return key_ref(&sources.secrets, "Secret", &r.name, &r.key, optional);
    }
    Err(Error::ContainerConfig(
        "env valueFrom has no supported source".to_string(),
    ))
}

/// `configMapKeyRef` / `secretKeyRef`: the key's value, `None` when optional and missing,
/// else the kubelet's error (`couldn't find key k in Secret s`, `secret "s" not found`).
fn key_ref(
    store: &BTreeMap<String, Option<BTreeMap<String, String>>>,
    kind: &str,
    name: &str,
    key: &str,
    optional: bool,
) -> Result<Option<String>> {
    match store.get(name).and_then(Option::as_ref) {
        Some(data) => match data.get(key) {
            Some(v) => Ok(Some(v.clone())),
            None if optional => Ok(None),
            None => Err(Error::ContainerConfig(format!(
                "couldn't find key {key} in {kind} {name}"
            ))),
        },
        None if optional => Ok(None),
        None => Err(Error::ContainerConfig(format!(
            "{} \"{name}\" not found",
            kind.to_lowercase()
        ))),
    }
}

/// Resolves a downward API `fieldRef` path.
pub fn field_ref(facts: &PodFacts<'_>, field: &ObjectFieldSelector) -> Result<String> {
    let meta = &facts.pod.metadata;
    let path = field.field_path.as_str();
    let map_key = |prefix: &str| -> Option<String> {
        let inner = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(inner.to_string())
    };
    let value = match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => facts.node_name.to_string(),
        "spec.serviceAccountName" => facts
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => facts.host_ip.to_string(),
        "status.podIP" | "status.podIPs" => {
            facts.pod_ip.map(|ip| ip.to_string()).unwrap_or_default()
        }
        _ => {
            if let Some(key) = map_key("metadata.labels['") {
                meta.labels
                    .as_ref()
                    .and_then(|l| l.get(&key))
                    .cloned()
                    .unwrap_or_default()
            } else if let Some(key) = map_key("metadata.annotations['") {
                meta.annotations
                    .as_ref()
                    .and_then(|a| a.get(&key))
                    .cloned()
                    .unwrap_or_default()
            } else {
                return Err(Error::ContainerConfig(format!(
                    "unsupported fieldRef fieldPath {path:?}"
                )));
            }
        }
    };
    Ok(value)
}

/// Resolves a downward API `resourceFieldRef` (unset limits default to node allocatable).
pub fn resource_field_ref(
    facts: &PodFacts<'_>,
    container: &Container,
    sel: &ResourceFieldSelector,
) -> Result<String> {
    let target = match sel.container_name.as_deref() {
        None | Some("") => container,
        Some(name) => facts
            .pod
            .spec
            .iter()
            .flat_map(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
            })
            .find(|c| c.name == name)
            .ok_or_else(|| {
                Error::ContainerConfig(format!("resourceFieldRef names unknown container {name:?}"))
            })?,
    };
    let (kind, resource) = sel.resource.split_once('.').ok_or_else(|| {
        Error::ContainerConfig(format!("unsupported resourceFieldRef {:?}", sel.resource))
    })?;
    let resources = target.resources.as_ref();
    let declared = match kind {
        "limits" => resources
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get(resource)),
        "requests" => resources
            .and_then(|r| r.requests.as_ref())
            .and_then(|l| l.get(resource)),
        _ => {
            return Err(Error::ContainerConfig(format!(
                "unsupported resourceFieldRef {:?}",
                sel.resource
            )));
        }
    };
    let value = match (declared, kind) {
        (Some(q), _) => quantity::parse(&q.0)?,
        (None, "limits") => match facts.node_allocatable.get(resource) {
            Some(q) => quantity::parse(&q.0)?,
            None => quantity::Milli(0),
        },
        (None, _) => quantity::Milli(0),
    };
    let divisor = match &sel.divisor {
        Some(q) => quantity::parse(&q.0)?,
        None => quantity::Milli(1000),
    };
    if divisor.0 <= 0 {
        return Err(Error::ContainerConfig(format!(
            "resourceFieldRef divisor {:?} must be positive",
            sel.divisor
        )));
    }
    let result = if resource == "cpu" {
        // ceil(milli / divisor milli), like the kubelet's convertResourceCPUToString.
        div_ceil(value.0, divisor.0)
    } else {
        div_ceil(value.ceil_units(), divisor.ceil_units().max(1))
    };
    Ok(result.to_string())
}

fn div_ceil(a: i128, b: i128) -> i128 {
    let q = a.div_euclid(b);
    if a.rem_euclid(b) == 0 { q } else { q + 1 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements};
    use rstest::rstest;

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "w-1", "namespace": "dask", "uid": "u-123",
                         "labels": {"dask.org/cluster-name": "c1"},
                         "annotations": {"note": "hi"}},
            "spec": {"serviceAccountName": "sa", "containers": [
                {"name": "worker", "image": "ghcr.io/dask/dask",
                 "resources": {"limits": {"memory": "2Gi", "cpu": "1500m"},
                               "requests": {"memory": "1G"}}},
                {"name": "side", "image": "busybox"}
            ]}
        }))
        .unwrap()
    }

    fn allocatable() -> BTreeMap<String, Quantity> {
        [("cpu", "2"), ("memory", "8Gi")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
            .collect()
    }

    fn field(path: &str) -> String {
        let pod = pod();
        let alloc = allocatable();
        let facts = PodFacts {
            pod: &pod,
            node_name: "local-node",
            pod_ip: Some("10.244.0.7".parse().unwrap()),
            host_ip: "127.0.0.1".parse().unwrap(),
            node_allocatable: &alloc,
        };
        field_ref(
            &facts,
            &ObjectFieldSelector {
                field_path: path.into(),
                api_version: None,
            },
        )
        .unwrap()
    }

    #[rstest]
    #[case::name("metadata.name", "w-1")]
    #[case::namespace("metadata.namespace", "dask")]
    #[case::uid("metadata.uid", "u-123")]
    #[case::node_name("spec.nodeName", "local-node")]
    #[case::service_account("spec.serviceAccountName", "sa")]
    #[case::pod_ip("status.podIP", "10.244.0.7")]
    #[case::host_ip("status.hostIP", "127.0.0.1")]
    #[case::label("metadata.labels['dask.org/cluster-name']", "c1")]
    #[case::missing_label_is_empty("metadata.labels['nope']", "")]
    #[case::annotation("metadata.annotations['note']", "hi")]
    fn field_refs(#[case] path: &str, #[case] expected: &str) {
        assert_eq!(field(path), expected);
    }

    fn resource(container: usize, res: &str, divisor: Option<&str>) -> String {
        let pod = pod();
        let alloc = allocatable();
        let facts = PodFacts {
            pod: &pod,
            node_name: "n",
            pod_ip: None,
            host_ip: "127.0.0.1".parse().unwrap(),
            node_allocatable: &alloc,
        };
        let c = &pod.spec.as_ref().unwrap().containers[container];
        let sel = ResourceFieldSelector {
            container_name: None,
            resource: res.into(),
            divisor: divisor.map(|d| Quantity(d.into())),
        };
        resource_field_ref(&facts, c, &sel).unwrap()
    }

    #[rstest]
    #[case::memory_limit_bytes(0, "limits.memory", None, "2147483648")]
    #[case::memory_limit_in_mi(0, "limits.memory", Some("1Mi"), "2048")]
    #[case::cpu_limit_rounds_up_to_cores(0, "limits.cpu", None, "2")]
    #[case::cpu_limit_in_millicores(0, "limits.cpu", Some("1m"), "1500")]
    #[case::memory_request(0, "requests.memory", None, "1000000000")]
    #[case::unset_cpu_request_is_zero(0, "requests.cpu", None, "0")]
    #[case::unset_limit_defaults_to_allocatable(1, "limits.memory", None, "8589934592")]
    fn resource_field_refs(
        #[case] container: usize,
        #[case] res: &str,
        #[case] divisor: Option<&str>,
        #[case] expected: &str,
    ) {
        assert_eq!(resource(container, res, divisor), expected);
    }

    #[test]
    fn env_expands_in_order_and_resolves_sources() {
        let pod = pod();
        let alloc = allocatable();
        let facts = PodFacts {
            pod: &pod,
            node_name: "n",
            pod_ip: None,
            host_ip: "127.0.0.1".parse().unwrap(),
            node_allocatable: &alloc,
        };
        let container: Container = serde_json::from_value(serde_json::json!({
            "name": "c",
            "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}],
            "env": [
                {"name": "LATER_REF", "value": "$(HOST)"},
                {"name": "HOST", "value": "sched"},
                {"name": "ADDR", "value": "tcp://$(HOST):8786"},
                {"name": "FROM_CM", "value": "$(CM_k)"},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "s", "key": "nope", "optional": true}}},
                {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}
            ]
        }))
        .unwrap();
        let mut sources = EnvSources::default();
        sources.config_maps.insert(
            "cm".into(),
            Some([("k".to_string(), "v".to_string())].into()),
        );
        sources.secrets.insert(
            "s".into(),
            Some([("k".to_string(), "pw".to_string())].into()),
        );
        let env = container_env(&facts, &container, &sources).unwrap();
        let get = |n: &str| env.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("CM_k"), Some("v"));
        assert_eq!(
            get("LATER_REF"),
            Some("$(HOST)"),
            "a reference to a later variable stays"
        );
        assert_eq!(get("ADDR"), Some("tcp://sched:8786"));
        assert_eq!(get("FROM_CM"), Some("v"));
        assert_eq!(get("POD"), Some("w-1"));
        assert_eq!(get("OPT"), None, "a missing optional key defines nothing");
        assert_eq!(get("SECRET"), Some("pw"));
        assert_eq!(referenced_sources(&container).0.len(), 1);
    }

    #[test]
    fn service_variables_expand_and_yield_to_the_containers_own() {
        let pod = pod();
        let alloc = allocatable();
        let facts = PodFacts {
            pod: &pod,
            node_name: "n",
            pod_ip: None,
            host_ip: "127.0.0.1".parse().unwrap(),
            node_allocatable: &alloc,
        };
        let container: Container = serde_json::from_value(serde_json::json!({
            "name": "c",
            "env": [
                {"name": "API", "value": "https://$(KUBERNETES_SERVICE_HOST):$(KUBERNETES_SERVICE_PORT)"},
                {"name": "KUBERNETES_SERVICE_PORT", "value": "6443"}
            ]
        }))
        .unwrap();
        let sources = EnvSources {
            services: vec![
                ("KUBERNETES_SERVICE_HOST".into(), "10.96.0.1".into()),
                ("KUBERNETES_SERVICE_PORT".into(), "443".into()),
            ],
            ..Default::default()
        };
        let env = container_env(&facts, &container, &sources).unwrap();
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            ["API", "KUBERNETES_SERVICE_PORT", "KUBERNETES_SERVICE_HOST"]
        );
        let get = |n: &str| env.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(
            get("API"),
            Some("https://10.96.0.1:443"),
            "a Service variable fills what the container has not defined yet"
        );
        assert_eq!(
            get("KUBERNETES_SERVICE_PORT"),
            Some("6443"),
            "the container's own wins"
        );
    }

    #[rstest]
    #[case::missing_configmap(serde_json::json!({"configMapKeyRef": {"name": "absent", "key": "k"}}), "configmap \"absent\" not found")]
    #[case::missing_key(serde_json::json!({"configMapKeyRef": {"name": "cm", "key": "zzz"}}), "couldn't find key zzz in ConfigMap cm")]
    #[case::unsupported_field(serde_json::json!({"fieldRef": {"fieldPath": "spec.hostname"}}), "unsupported fieldRef fieldPath \"spec.hostname\"")]
    fn env_errors_are_clear(#[case] value_from: serde_json::Value, #[case] message: &str) {
        let pod = pod();
        let alloc = allocatable();
        let facts = PodFacts {
            pod: &pod,
            node_name: "n",
            pod_ip: None,
            host_ip: "127.0.0.1".parse().unwrap(),
            node_allocatable: &alloc,
        };
        let container = Container {
            name: "c".into(),
            env: Some(vec![EnvVar {
                name: "X".into(),
                value: None,
                value_from: Some(serde_json::from_value(value_from).unwrap()),
            }]),
            resources: Some(ResourceRequirements::default()),
            ..Default::default()
        };
        let mut sources = EnvSources::default();
        sources
            .config_maps
            .insert("cm".into(), Some(BTreeMap::new()));
        sources.config_maps.insert("absent".into(), None);
        let err = container_env(&facts, &container, &sources).unwrap_err();
        assert_eq!(err.to_string(), message);
    }
}
