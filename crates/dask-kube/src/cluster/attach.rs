//! `dask-kube attach NAME` (and the detached supervisor `up --detach` starts): holds an
//! existing cluster's local listeners, and adapting, until interrupted or the cluster is
//! gone. The process and state-file mechanics are [`crate::supervisor`]'s.

use super::{Access, AdaptPlacement, KubeCluster, Reconnect};
use crate::Result;
use crate::adapt::AdaptPolicy;
use crate::manifests::{ADAPT_ANNOTATION, SUPERVISOR_ANNOTATION};
use crate::supervisor::{self, StateDir, SupervisorState};
use std::collections::BTreeMap;
use std::time::Duration;
use tracing::{info, warn};

/// What a supervisor keeps alive for a cluster.
#[derive(Debug, Clone, Default)]
pub struct AttachOptions {
    /// Adapt with this policy.
    pub adapt: Option<AdaptPolicy>,
    /// Local port of the scheduler address (0 picks one).
    pub local_port: u16,
    /// Local port of the dashboard (0 picks one).
    pub dashboard_port: u16,
    /// Run as the detached supervisor: own session, state file.
    pub daemon: bool,
}

/// Interval of the check that the scheduler pod still exists.
const SCHEDULER_GONE_CHECK: Duration = Duration::from_secs(5);

/// `dask-kube attach NAME`: holds the local listeners of an existing cluster (and adapts it)
/// until `interrupt` fires or the scheduler pod is gone. Records itself on the scheduler pod
/// (annotations) and, as a daemon, in the state file `up --detach` waits for; `on_ready`
/// gets the state once the listeners answer.
pub async fn supervise<I>(
    name: &str,
    reconnect: Reconnect,
    options: AttachOptions,
    dir: &StateDir,
    interrupt: &mut I,
    on_ready: impl FnOnce(&SupervisorState),
) -> Result<()>
where
    I: std::future::Future<Output = String> + Unpin,
{
    if options.daemon {
        // Own session: the terminal's Ctrl-C and hangup do not reach the supervisor.
        let _ = nix::unistd::setsid();
    }
    // Inside the cluster (a notebook pod) the scheduler's Service is the address to print,
    // as for every other command there; a local comm listener only when asked for by port.
    // The dashboard's port alone does not decide: with TLS the scheduler's HTTP server is
    // private, so `up` hands over a dashboard listener even when it used the Service.
    let access = if options.local_port == 0 {
        Access::Auto
    } else {
        Access::PortForward
    };
    let mut cluster = KubeCluster::from_name(
        name,
        Reconnect {
            access,
            local_port: options.local_port,
            dashboard_port: options.dashboard_port,
            ..reconnect
        },
    )
    .await?;
    let ns = cluster.namespace().to_owned();
    let pid = std::process::id();
    let host = supervisor::hostname();
    if let Some(policy) = options.adapt.clone()
        && let Some(cap) = cluster.adapt_in(policy, AdaptPlacement::Here).await?.capped
    {
        warn!(%cap, "adapt maximum capped");
    }
    let mut annotations =
        BTreeMap::from([(SUPERVISOR_ANNOTATION.to_owned(), format!("{host}:{pid}"))]);
    if let Some(p) = &options.adapt {
        annotations.insert(
            ADAPT_ANNOTATION.to_owned(),
            format!("{}:{}", p.minimum, p.maximum),
        );
    }
    if let Err(e) = cluster
        .api()
        .apply_supervisor_annotations(name, &annotations)
        .await
    {
        warn!(error = %e, "cannot record the supervisor on the scheduler pod");
    }
    let state = SupervisorState {
        name: name.to_owned(),
        namespace: ns.clone(),
        pid,
        host,
        address: cluster.scheduler_address().to_owned(),
        dashboard: cluster.dashboard_link().to_owned(),
        adapt: options.adapt.as_ref().map(|p| (p.minimum, p.maximum)),
        log: dir.log_file(&ns, name),
    };
    if options.daemon {
        dir.write(&state)?;
    }
    info!(cluster = %name, address = %state.address, dashboard = %state.dashboard, "attached");
    on_ready(&state);
    // Until interrupted, or the scheduler pod is gone (nothing left to keep alive).
    let gone = async {
        loop {
            tokio::time::sleep(SCHEDULER_GONE_CHECK).await;
            if let Ok(None) = cluster.api().get_pod(name).await {
                return;
            }
        }
    };
    tokio::select! {
        reason = &mut *interrupt => info!(%reason, "supervisor stopping"),
        () = gone => info!(cluster = %name, "scheduler pod gone; supervisor exits"),
    }
    if let Err(e) = cluster
        .api()
        .apply_supervisor_annotations(name, &BTreeMap::new())
        .await
    {
        warn!(error = %e, "cannot clear the supervisor annotations");
    }
    if options.daemon {
        dir.remove(&ns, name, pid);
    }
    cluster.detach().await
}
