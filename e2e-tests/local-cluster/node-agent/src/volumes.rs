//! A pod's projected volumes on disk: fetches what they refer to (TokenRequest, ConfigMaps,
//! Secrets), writes them with the [`atomic_writer`](crate::atomic_writer) under
//! `<pod dir>/volumes/kubernetes.io~projected/<volume>` (the kubelet's layout) and keeps the
//! service-account tokens fresh.
//!
//! Like the kubelet, the agent re-syncs every volume periodically ([`RESYNC`]); a token is
//! requested again only when [`projected::refresh_due`] says so, and a failed refresh keeps
//! the old token while it is still valid.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, ServiceAccount};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, PostParams};
use tracing::{debug, info, warn};

use crate::atomic_writer;
use crate::downward::PodFacts;
use crate::error::{Error, Result};
use crate::projected::{self, Fetched, IssuedToken, ProjectedVolume, TokenKey};

/// How often mounted volumes are re-synced (the kubelet's default `syncFrequency`).
pub const RESYNC: Duration = Duration::from_secs(60);

/// A container's bind mount of a volume directory (or a file in it, with `subPath`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// Host path.
    pub source: PathBuf,
    /// Path inside the container.
    pub target: PathBuf,
    /// Mounted read-only (projected volumes always are, as in the kubelet).
    pub read_only: bool,
}

/// The projected volumes of one pod.
#[derive(Debug)]
pub struct PodVolumes {
    root: PathBuf,
    volumes: Vec<ProjectedVolume>,
    tokens: BTreeMap<TokenKey, IssuedToken>,
    synced: bool,
}

/// A jitter in [0, 10 s) as the kubelet draws one per check (from the clock's nanoseconds:
/// good enough to keep pods from refreshing in lockstep).
fn jitter() -> SignedDuration {
    let nanos = Timestamp::now().subsec_nanosecond().unsigned_abs();
    SignedDuration::from_millis(i64::from(nanos % 10_000))
}

impl PodVolumes {
    /// The volumes of `pod`, to live under `pod_dir`.
    pub fn new(pod: &Pod, pod_dir: &Path) -> Self {
        Self {
            root: pod_dir.join("volumes").join("kubernetes.io~projected"),
            volumes: projected::mounted_projected_volumes(pod),
            tokens: BTreeMap::new(),
            synced: false,
        }
    }

    /// Whether every volume has been written at least once.
    pub fn synced(&self) -> bool {
        self.synced || self.volumes.is_empty()
    }

    /// Whether the pod has projected volumes at all.
    pub fn is_empty(&self) -> bool {
        self.volumes.is_empty()
    }

    /// The bind mounts of `container`'s projected volumes.
    pub fn mounts(
        &self,
        container: &k8s_openapi::api::core::v1::Container,
    ) -> Result<Vec<BindMount>> {
        let mut out = Vec::new();
        for m in container.volume_mounts.iter().flatten() {
            if !self.volumes.iter().any(|v| v.name == m.name) {
                continue;
            }
            if m.sub_path_expr.as_deref().is_some_and(|s| !s.is_empty()) {
                return Err(Error::ContainerConfig(format!(
                    "volume mount {:?}: subPathExpr is not supported by this node",
                    m.name
                )));
            }
            let mut source = self.root.join(&m.name);
            if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                projected::validate_path(sub)?;
                source = source.join(sub);
            }
            out.push(BindMount {
                source,
                target: PathBuf::from(&m.mount_path),
                read_only: true,
            });
        }
        Ok(out)
    }

    /// Fetches and writes every volume; `Ok(())` once all are on disk.
    pub async fn sync(&mut self, client: &Client, pod: &Pod, facts: &PodFacts<'_>) -> Result<()> {
        if self.volumes.is_empty() {
            return Ok(());
        }
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let mut fetched = Fetched::default();
        let all_needs: Vec<projected::Needs> = self.volumes.iter().map(projected::needs).collect();
        for needs in all_needs {
            for name in needs.config_maps {
                if fetched.config_maps.contains_key(&name) {
                    continue;
                }
                let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
                let cm = api
                    .get_opt(&name)
                    .await
                    .map_err(|e| Error::kube(format!("reading configmap {ns}/{name}"), e))?;
                fetched.config_maps.insert(
                    name,
                    cm.map(|c| {
                        let mut data: BTreeMap<String, Vec<u8>> = c
                            .data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, v.into_bytes()))
                            .collect();
                        data.extend(
                            c.binary_data
                                .unwrap_or_default()
                                .into_iter()
                                .map(|(k, v)| (k, v.0)),
                        );
                        data
                    }),
                );
            }
            for name in needs.secrets {
                if fetched.secrets.contains_key(&name) {
                    continue;
                }
                let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
                let s = api
                    .get_opt(&name)
                    .await
                    .map_err(|e| Error::kube(format!("reading secret {ns}/{name}"), e))?;
                fetched.secrets.insert(
                    name,
                    s.map(|s| {
                        s.data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, v.0))
                            .collect()
                    }),
                );
            }
            for key in needs.tokens {
                let token = self.token(client, pod, &key).await?;
                fetched.tokens.insert(key, token);
            }
        }
        for vol in &self.volumes {
            let payload = projected::payload(vol, facts, &fetched)?;
            let dir = self.root.join(&vol.name);
            if atomic_writer::write(&dir, &payload)? {
                debug!(volume = %vol.name, dir = %dir.display(), files = payload.len(), "volume written");
            }
        }
        self.synced = true;
        Ok(())
    }

    /// A current token for `key`: the cached one unless a refresh is due.
    async fn token(&mut self, client: &Client, pod: &Pod, key: &TokenKey) -> Result<String> {
        let now = Timestamp::now();
        if let Some(t) = self.tokens.get(key)
            && !projected::refresh_due(t, now, jitter())
        {
            return Ok(t.token.clone());
        }
        match request_token(client, pod, key).await {
            Ok(fresh) => {
                info!(pod = %pod_label(pod), expires_at = %fresh.expires_at,
                      expiration_seconds = fresh.expiration_seconds, "service account token issued");
                let token = fresh.token.clone();
                self.tokens.insert(key.clone(), fresh);
                Ok(token)
            }
            Err(e) => match self.tokens.get(key) {
                Some(old) if now < old.expires_at => {
                    warn!(pod = %pod_label(pod), error = %e, "token refresh failed; keeping the current token");
                    Ok(old.token.clone())
                }
                _ => Err(e),
            },
        }
    }
}

fn pod_label(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// `POST serviceaccounts/<sa>/token`, bound to the pod, as the kubelet asks for it.
async fn request_token(client: &Client, pod: &Pod, key: &TokenKey) -> Result<IssuedToken> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_string());
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: key.audience.clone().map(|a| vec![a]),
            expiration_seconds: Some(key.expiration_seconds),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let out = api
        .create_token_request(&sa, &PostParams::default(), &request)
        .await
        .map_err(|e| {
            Error::kube(
                format!("requesting a token for serviceaccount {ns}/{sa}"),
                e,
            )
        })?;
    let incomplete =
        || Error::ContainerConfig(format!("TokenRequest for {ns}/{sa} returned no token"));
    let status = out.status.ok_or_else(incomplete)?;
    Ok(IssuedToken {
        token: status.token.ok_or_else(incomplete)?,
        expires_at: status.expiration_timestamp.ok_or_else(incomplete)?.0,
        expiration_seconds: out
            .spec
            .and_then(|s| s.expiration_seconds)
            .unwrap_or(key.expiration_seconds),
    })
}
