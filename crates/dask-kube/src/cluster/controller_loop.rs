//! The loop of a cluster's controller pod ([`crate::controller`] makes the pod): adapt
//! until the scheduler ends, then delete the cluster. An upper-layer verb, so the pod's
//! manifest and start/stop stay below [`KubeCluster`], which uses them.

use super::{AdaptPlacement, KubeCluster, Reconnect};
use crate::adapt::AdaptPolicy;
use crate::{Error, Result};
use std::future::Future;
use std::time::Duration;
use tracing::{info, warn};

/// Time between looks at the scheduler pod.
const CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Whether the scheduler pod is done: phase `Succeeded`/`Failed` (an exit, with
/// `restartPolicy: Never`), or gone.
fn scheduler_ended(pod: Option<&k8s_openapi::api::core::v1::Pod>) -> Option<String> {
    let Some(pod) = pod else {
        return Some("the scheduler pod is gone".into());
    };
    if pod.metadata.deletion_timestamp.is_some() {
        return Some("the scheduler pod is being deleted".into());
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    matches!(phase, Some("Succeeded" | "Failed"))
        .then(|| format!("the scheduler pod's phase is {}", phase.unwrap_or_default()))
}

/// `dask-kube controller NAME`: adapts (with `policy`) until the scheduler ends, then
/// deletes the cluster; stops early (the cluster stays) when `stop` resolves (SIGTERM: the
/// pod is being replaced or deleted).
pub async fn run_controller(
    name: &str,
    reconnect: Reconnect,
    policy: Option<AdaptPolicy>,
    stop: impl Future<Output = String>,
) -> Result<()> {
    // Only the scheduler's HTTP API is used here: the certificates are not read (and the
    // controller's role may not read Secrets).
    let reconnect = Reconnect {
        skip_client_tls: true,
        ..reconnect
    };
    let mut cluster = KubeCluster::from_name(name, reconnect).await?;
    if let Some(policy) = policy {
        let started = cluster
            .adapt_in(policy.clone(), AdaptPlacement::Here)
            .await?;
        if let Some(cap) = started.capped {
            warn!(%cap, "kubernetes.count.max caps the adapt range");
        }
        info!(cluster = %name, minimum = policy.minimum, maximum = policy.maximum, "adapting");
    }
    let api = cluster.api().clone();
    tokio::pin!(stop);
    let ended = loop {
        tokio::select! {
            signal = &mut stop => {
                info!(%signal, cluster = %name, "stopping; the cluster stays");
                return cluster.detach().await;
            }
            () = tokio::time::sleep(CHECK_INTERVAL) => {}
        }
        match api.get_pod(name).await {
            Ok(pod) => {
                if let Some(reason) = scheduler_ended(pod.as_ref()) {
                    break reason;
                }
            }
            Err(e) => warn!(error = %e, "cannot read the scheduler pod; trying again"),
        }
    };
    info!(cluster = %name, %ended, "the scheduler ended; deleting the cluster");
    if let Err(e) = cluster.stop_adapting().await {
        warn!(error = %e, "the adapt loop ended with an error");
    }
    // No retiring: the scheduler is gone. Not `teardown`, which deletes this pod first (and
    // needs Services): only the scheduler pod, and the garbage collector takes the rest
    // (the Service, the workers, this pod), all owned by it.
    let deleted = api.delete_pods(&[name.to_owned()], Some(0)).await;
    match deleted.failed.into_iter().next() {
        None => Ok(()),
        Some(failure) => Err(Error::Partial {
            action: format!("delete the scheduler pod {name}"),
            done: 0,
            wanted: 1,
            failures: vec![failure],
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Pod, PodStatus};
    use rstest::rstest;

    fn pod_in(phase: &str, deleting: bool) -> Pod {
        let mut pod = Pod {
            status: Some(PodStatus {
                phase: Some(phase.into()),
                ..PodStatus::default()
            }),
            ..Pod::default()
        };
        if deleting {
            pod.metadata.deletion_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                ));
        }
        pod
    }

    #[rstest]
    #[case::running("Running", false, false)]
    #[case::pending("Pending", false, false)]
    #[case::idle_timeout_exit("Succeeded", false, true)]
    #[case::crashed("Failed", false, true)]
    #[case::being_deleted("Running", true, true)]
    fn scheduler_end_is_its_pod_finishing(
        #[case] phase: &str,
        #[case] deleting: bool,
        #[case] ended: bool,
    ) {
        assert_eq!(
            scheduler_ended(Some(&pod_in(phase, deleting))).is_some(),
            ended
        );
    }

    #[test]
    fn a_gone_scheduler_pod_has_ended() {
        assert!(scheduler_ended(None).is_some());
    }
}
