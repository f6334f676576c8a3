//! Projected volumes as the kubelet fills them (`pkg/volume/projected`), as pure functions:
//! which files a volume holds (service-account token, ConfigMap and Secret keys, downward API
//! fields) and when a bound token is due for a refresh.
//!
//! The ServiceAccount admission plugin gives every pod a `kube-api-access-*` projected volume
//! (token, `ca.crt` from the `kube-root-ca.crt` ConfigMap, `namespace`) mounted at
//! `/var/run/secrets/kubernetes.io/serviceaccount`, unless `automountServiceAccountToken` is
//! false on the pod or its ServiceAccount; the agent projects what the pod spec says, like the
//! kubelet. Fetching (TokenRequest, ConfigMaps, Secrets) and writing happen in
//! [`crate::volumes`].

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Container, KeyToPath, Pod, ProjectedVolumeSource};
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::downward::{self, PodFacts};
use crate::error::{Error, Result};

/// Where the admission plugin mounts the service-account volume.
pub const SERVICE_ACCOUNT_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The kubelet's default when `expirationSeconds` is unset (one hour).
pub const DEFAULT_TOKEN_SECONDS: i64 = 3600;

/// `defaultMode` when a projected volume sets none (0644).
pub const DEFAULT_MODE: u32 = 0o644;

/// The kubelet refreshes a token that is older than this whatever its lifetime.
pub const MAX_TOKEN_AGE: SignedDuration = SignedDuration::from_hours(24);

/// Upper bound of the random jitter the kubelet subtracts from refresh deadlines.
pub const MAX_JITTER: SignedDuration = SignedDuration::from_secs(10);

/// One file of a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileContent {
    /// The bytes.
    pub data: Vec<u8>,
    /// Permission bits.
    pub mode: u32,
}

/// A volume's files by relative path.
pub type Payload = BTreeMap<String, FileContent>;

/// What a TokenRequest for one projection asks for (tokens are cached per key).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenKey {
    /// `audience`, `None` for the apiserver's own audiences.
    pub audience: Option<String>,
    /// `expirationSeconds`.
    pub expiration_seconds: i64,
}

/// A token issued through the TokenRequest API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// The JWT.
    pub token: String,
    /// `status.expirationTimestamp`.
    pub expires_at: Timestamp,
    /// `spec.expirationSeconds` as granted.
    pub expiration_seconds: i64,
}

/// The kubelet's rule (`token.Manager.requiresRefresh`): refresh when less than 20% of the
/// lifetime is left, or when the token is older than 24 hours; both deadlines come `jitter`
/// earlier (the kubelet draws it in [0, 10 s) per check, so nodes do not refresh in lockstep).
pub fn refresh_due(token: &IssuedToken, now: Timestamp, jitter: SignedDuration) -> bool {
    let ttl = SignedDuration::from_secs(token.expiration_seconds);
    let issued = token.expires_at - ttl;
    if now > issued + MAX_TOKEN_AGE - jitter {
        return true;
    }
    // Integer percent as in the kubelet: (expirationSeconds * 20) / 100 seconds.
    let margin = SignedDuration::from_secs(token.expiration_seconds * 20 / 100);
    now > token.expires_at - margin - jitter
}

/// A projected volume some container mounts.
#[derive(Debug, Clone)]
pub struct ProjectedVolume {
    /// Volume name.
    pub name: String,
    /// Its source.
    pub source: ProjectedVolumeSource,
}

/// The projected volumes of a pod that at least one container or init container mounts.
pub fn mounted_projected_volumes(pod: &Pod) -> Vec<ProjectedVolume> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    let mounted: BTreeSet<&str> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.volume_mounts.iter().flatten())
        .map(|m| m.name.as_str())
        .collect();
    spec.volumes
        .iter()
        .flatten()
        .filter(|v| mounted.contains(v.name.as_str()))
        .filter_map(|v| {
            Some(ProjectedVolume {
                name: v.name.clone(),
                source: v.projected.clone()?,
            })
        })
        .collect()
}

/// The ConfigMaps, Secrets and tokens a volume needs fetched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    /// ConfigMap names.
    pub config_maps: BTreeSet<String>,
    /// Secret names.
    pub secrets: BTreeSet<String>,
    /// Token requests.
    pub tokens: BTreeSet<TokenKey>,
}

/// What `volume` refers to.
pub fn needs(volume: &ProjectedVolume) -> Needs {
    let mut n = Needs::default();
    for s in volume.source.sources.iter().flatten() {
        if let Some(cm) = &s.config_map {
            n.config_maps.insert(cm.name.clone());
        }
        if let Some(sec) = &s.secret {
            n.secrets.insert(sec.name.clone());
        }
        if let Some(t) = &s.service_account_token {
            n.tokens.insert(token_key(t));
        }
    }
    n
}

fn token_key(t: &k8s_openapi::api::core::v1::ServiceAccountTokenProjection) -> TokenKey {
    TokenKey {
        audience: t.audience.clone().filter(|a| !a.is_empty()),
        expiration_seconds: t.expiration_seconds.unwrap_or(DEFAULT_TOKEN_SECONDS),
    }
}

/// Fetched inputs of a projection; a `None` object means "does not exist".
#[derive(Debug, Clone, Default)]
pub struct Fetched {
    /// ConfigMap name -> `data` and `binaryData` merged.
    pub config_maps: BTreeMap<String, Option<BTreeMap<String, Vec<u8>>>>,
    /// Secret name -> decoded data.
    pub secrets: BTreeMap<String, Option<BTreeMap<String, Vec<u8>>>>,
    /// Current tokens.
    pub tokens: BTreeMap<TokenKey, String>,
}

fn mode_bits(mode: Option<i32>, default: u32) -> u32 {
    mode.and_then(|m| u32::try_from(m).ok())
        .map(|m| m & 0o777)
        .unwrap_or(default)
}

/// Refuses paths the kubelet's AtomicWriter refuses: absolute, `..` components, a leading `..`.
pub fn validate_path(path: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::ContainerConfig(format!(
            "invalid volume file path {path:?}: {why}"
        )))
    };
    if path.is_empty() {
        return bad("empty");
    }
    if path.starts_with('/') {
        return bad("must be relative");
    }
    if path.starts_with("..") {
        return bad("must not start with '..'");
    }
    if path.split('/').any(|c| c == ".." || c.is_empty()) {
        return bad("must not contain '..' or empty components");
    }
    Ok(())
}

fn project_keys(
    payload: &mut Payload,
    kind: &str,
    name: &str,
    data: Option<&BTreeMap<String, Vec<u8>>>,
    items: Option<&Vec<KeyToPath>>,
    optional: bool,
    default_mode: u32,
) -> Result<()> {
    let Some(data) = data else {
        if optional {
            return Ok(());
        }
        return Err(Error::ContainerConfig(format!(
            "MountVolume.SetUp failed: {} \"{name}\" not found",
            kind.to_lowercase()
        )));
    };
    match items.filter(|i| !i.is_empty()) {
        None => {
            for (k, v) in data {
                validate_path(k)?;
                payload.insert(
                    k.clone(),
                    FileContent {
                        data: v.clone(),
                        mode: default_mode,
                    },
                );
            }
        }
        Some(items) => {
            for item in items {
                validate_path(&item.path)?;
                match data.get(&item.key) {
                    Some(v) => {
                        payload.insert(
                            item.path.clone(),
                            FileContent {
                                data: v.clone(),
                                mode: mode_bits(item.mode, default_mode),
                            },
                        );
                    }
                    None if optional => {}
                    None => {
                        return Err(Error::ContainerConfig(format!(
                            "MountVolume.SetUp failed: {kind} {name:?} has no key {:?}",
                            item.key
                        )));
                    }
                }
            }
        }
    }
    Ok(())
}

/// The files of a projected volume, in source order (a later source wins a path).
pub fn payload(
    volume: &ProjectedVolume,
    facts: &PodFacts<'_>,
    fetched: &Fetched,
) -> Result<Payload> {
    let default_mode = mode_bits(volume.source.default_mode, DEFAULT_MODE);
    let mut out = Payload::new();
    for s in volume.source.sources.iter().flatten() {
        if let Some(cm) = &s.config_map {
            project_keys(
                &mut out,
                "ConfigMap",
                &cm.name,
                fetched.config_maps.get(&cm.name).and_then(Option::as_ref),
                cm.items.as_ref(),
                cm.optional == Some(true),
                default_mode,
            )?;
        }
        if let Some(sec) = &s.secret {
            project_keys(
                &mut out,
                "Secret",
                &sec.name,
                fetched.secrets.get(&sec.name).and_then(Option::as_ref),
                sec.items.as_ref(),
                sec.optional == Some(true),
                default_mode,
            )?;
        }
        if let Some(d) = &s.downward_api {
            for item in d.items.iter().flatten() {
                validate_path(&item.path)?;
                let value = match (&item.field_ref, &item.resource_field_ref) {
                    (Some(f), _) => downward::field_ref(facts, f)?,
                    (None, Some(r)) => {
                        let container = named_container(facts.pod, r.container_name.as_deref())?;
                        downward::resource_field_ref(facts, container, r)?
                    }
                    (None, None) => {
                        return Err(Error::ContainerConfig(format!(
                            "downwardAPI item {:?} has neither fieldRef nor resourceFieldRef",
                            item.path
                        )));
                    }
                };
                out.insert(
                    item.path.clone(),
                    FileContent {
                        data: value.into_bytes(),
                        mode: mode_bits(item.mode, default_mode),
                    },
                );
            }
        }
        if let Some(t) = &s.service_account_token {
            validate_path(&t.path)?;
            let key = token_key(t);
            let token = fetched.tokens.get(&key).ok_or_else(|| {
                Error::ContainerConfig(format!("no service account token for {key:?}"))
            })?;
            out.insert(
                t.path.clone(),
                FileContent {
                    data: token.clone().into_bytes(),
                    mode: default_mode,
                },
            );
        }
        if s.cluster_trust_bundle.is_some() || s.pod_certificate.is_some() {
            return Err(Error::ContainerConfig(format!(
                "volume {:?}: clusterTrustBundle and podCertificate projections are not supported by this node",
                volume.name
            )));
        }
    }
    Ok(out)
}

fn named_container<'a>(pod: &'a Pod, name: Option<&str>) -> Result<&'a Container> {
    let name = name.filter(|n| !n.is_empty()).ok_or_else(|| {
        Error::ContainerConfig("resourceFieldRef in a volume needs containerName".to_string())
    })?;
    pod.spec
        .iter()
        .flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        })
        .find(|c| c.name == name)
        .ok_or_else(|| {
            Error::ContainerConfig(format!("resourceFieldRef names unknown container {name:?}"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use rstest::rstest;
    use serde_json::json;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn token(expires: &str, seconds: i64) -> IssuedToken {
        IssuedToken {
            token: "t".into(),
            expires_at: at(expires),
            expiration_seconds: seconds,
        }
    }

    // A 3607 s token (what the admission plugin asks for) issued at 12:00:00 expires at
    // 13:00:07; 20% of 3607 is 721 s, so it is due after 12:48:06.
    #[rstest]
    #[case::fresh("2026-01-01T12:00:01Z", 0, false)]
    #[case::just_before_80_percent("2026-01-01T12:48:06Z", 0, false)]
    #[case::just_after_80_percent("2026-01-01T12:48:07Z", 0, true)]
    #[case::jitter_makes_it_earlier("2026-01-01T12:47:58Z", 9, true)]
    #[case::expired("2026-01-01T13:00:08Z", 0, true)]
    fn one_hour_token(#[case] now: &str, #[case] jitter_s: i64, #[case] due: bool) {
        let t = token("2026-01-01T13:00:07Z", 3607);
        assert_eq!(
            refresh_due(&t, at(now), SignedDuration::from_secs(jitter_s)),
            due
        );
    }

    // A 48 h token: 80% would be 38.4 h, but the 24 h rule comes first.
    #[rstest]
    #[case::at_23h("2026-01-02T11:00:00Z", false)]
    #[case::after_24h("2026-01-02T12:00:01Z", true)]
    fn long_token_refreshes_after_a_day(#[case] now: &str, #[case] due: bool) {
        let t = token("2026-01-03T12:00:00Z", 48 * 3600);
        assert_eq!(refresh_due(&t, at(now), SignedDuration::ZERO), due);
    }

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "nb", "namespace": "team", "uid": "u1", "labels": {"app": "nb"}},
            "spec": {
                "serviceAccountName": "runner",
                "containers": [{"name": "main", "resources": {"limits": {"memory": "1Gi"}},
                                "volumeMounts": [{"name": "kube-api-access-x", "mountPath": SERVICE_ACCOUNT_MOUNT, "readOnly": true}]}],
                "volumes": [
                    {"name": "kube-api-access-x", "projected": {"defaultMode": 420, "sources": [
                        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
                    ]}},
                    {"name": "unmounted", "projected": {"sources": [{"secret": {"name": "s"}}]}},
                    {"name": "scratch", "emptyDir": {}}
                ]
            }
        }))
        .unwrap()
    }

    fn with_facts<T>(pod: &Pod, f: impl FnOnce(&PodFacts<'_>) -> T) -> T {
        let alloc = BTreeMap::from([("memory".to_string(), Quantity("8Gi".into()))]);
        let facts = PodFacts {
            pod,
            node_name: "n1",
            pod_ip: None,
            host_ip: "127.0.0.1".parse().unwrap(),
            node_allocatable: &alloc,
        };
        f(&facts)
    }

    fn kube_api_access_key() -> TokenKey {
        TokenKey {
            audience: None,
            expiration_seconds: 3607,
        }
    }

    fn fetched_ok() -> Fetched {
        Fetched {
            config_maps: BTreeMap::from([(
                "kube-root-ca.crt".to_string(),
                Some(BTreeMap::from([("ca.crt".to_string(), b"PEM".to_vec())])),
            )]),
            secrets: BTreeMap::new(),
            tokens: BTreeMap::from([(kube_api_access_key(), "jwt".to_string())]),
        }
    }

    #[test]
    fn only_mounted_projected_volumes_are_projected() {
        let vols = mounted_projected_volumes(&pod());
        assert_eq!(vols.len(), 1);
        assert_eq!(vols[0].name, "kube-api-access-x");
        let n = needs(&vols[0]);
        assert_eq!(
            n.config_maps,
            BTreeSet::from(["kube-root-ca.crt".to_string()])
        );
        assert_eq!(n.tokens, BTreeSet::from([kube_api_access_key()]));
    }

    #[test]
    fn service_account_volume_has_token_ca_and_namespace() {
        let p = pod();
        let vol = &mounted_projected_volumes(&p)[0];
        let files = with_facts(&p, |f| payload(vol, f, &fetched_ok())).unwrap();
        let text = |k: &str| String::from_utf8(files[k].data.clone()).unwrap();
        assert_eq!(
            files.keys().collect::<Vec<_>>(),
            ["ca.crt", "namespace", "token"]
        );
        assert_eq!(
            (text("token"), text("ca.crt"), text("namespace")),
            ("jwt".into(), "PEM".into(), "team".into())
        );
        assert!(files.values().all(|f| f.mode == 0o644));
    }

    fn volume(sources: serde_json::Value) -> ProjectedVolume {
        ProjectedVolume {
            name: "v".into(),
            source: serde_json::from_value(json!({"defaultMode": 0o600, "sources": sources}))
                .unwrap(),
        }
    }

    #[rstest]
    #[case::missing_configmap(json!([{"configMap": {"name": "absent"}}]), "configmap \"absent\" not found")]
    #[case::missing_key(json!([{"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "nope", "path": "x"}]}}]), "has no key \"nope\"")]
    #[case::missing_secret(json!([{"secret": {"name": "creds"}}]), "secret \"creds\" not found")]
    #[case::escaping_path(json!([{"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "../x"}]}}]), "must not start with '..'")]
    #[case::absolute_path(json!([{"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "/etc/x"}]}}]), "must be relative")]
    #[case::unsupported(json!([{"clusterTrustBundle": {"path": "b", "name": "x"}}]), "not supported")]
    fn projection_errors_name_the_problem(
        #[case] sources: serde_json::Value,
        #[case] message: &str,
    ) {
        let p = pod();
        let err = with_facts(&p, |f| payload(&volume(sources), f, &fetched_ok()))
            .unwrap_err()
            .to_string();
        assert!(err.contains(message), "{err}");
    }

    #[rstest]
    #[case::optional_missing_configmap(json!([{"configMap": {"name": "absent", "optional": true}}]), &[])]
    #[case::all_keys_without_items(json!([{"configMap": {"name": "kube-root-ca.crt"}}]), &[("ca.crt", 0o600)])]
    #[case::item_mode(json!([{"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "certs/ca.pem", "mode": 0o400}]}}]), &[("certs/ca.pem", 0o400)])]
    #[case::resource_field(json!([{"downwardAPI": {"items": [{"path": "mem", "resourceFieldRef": {"containerName": "main", "resource": "limits.memory", "divisor": "1Mi"}}]}}]), &[("mem", 0o600)])]
    fn projection_cases(#[case] sources: serde_json::Value, #[case] expected: &[(&str, u32)]) {
        let p = pod();
        let files = with_facts(&p, |f| payload(&volume(sources), f, &fetched_ok())).unwrap();
        let got: Vec<(&str, u32)> = files.iter().map(|(k, v)| (k.as_str(), v.mode)).collect();
        assert_eq!(got, expected);
        if let Some(mem) = files.get("mem") {
            assert_eq!(mem.data, b"1024");
        }
    }
}
