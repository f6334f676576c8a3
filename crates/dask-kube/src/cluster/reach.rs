//! Reaching a cluster's scheduler: the Service from inside the cluster, else local listeners
//! on 127.0.0.1 carried over port-forward streams (one for the comm port, one for the
//! dashboard). With TLS the scheduler's HTTP server answers on its pod's loopback only, so
//! its API and dashboard go through port-forward from inside the cluster too. Also waiting
//! for the scheduler pod to run, and saying why when it does not.

use crate::apiserver::ClusterApi;
use crate::manifests::{DASHBOARD_PORT, SCHEDULER_PORT, service_name};
use crate::portforward::{LocalForwarder, PodPortConnect};
use crate::scaling::SchedulerWorker;
use crate::scheduler_api::{HttpSchedulerApi, SchedulerApi, TcpConnect};
use crate::tls::TlsMode;
use crate::{Error, Result};
use k8s_openapi::api::core::v1::Pod;
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::time::Instant;
use tracing::debug;

use super::{POLL_INTERVAL, Progress, ProgressFn};

/// Bound on the scheduler's HTTP API answering once the pod runs.
pub const SCHEDULER_API_TIMEOUT: Duration = Duration::from_secs(60);

/// How the scheduler is reached (operator-era `port_forward_cluster_ip=`: `True` is
/// `PortForward`, `False` `Direct`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Inside the cluster when the Service resolves, else port-forward.
    #[default]
    Auto,
    /// Always through kube-rs port-forward and a local listener.
    PortForward,
    /// Always through the Service DNS name (inside the cluster).
    Direct,
}

/// The scheduler HTTP client, however it connects.
pub enum SchedulerClient {
    /// Over port-forward streams.
    Forwarded(Box<HttpSchedulerApi<PodPortConnect>>),
    /// Over TCP.
    Tcp(Box<HttpSchedulerApi<TcpConnect>>),
}

impl SchedulerApi for SchedulerClient {
    async fn adaptive_target(&self) -> Result<u32> {
        match self {
            SchedulerClient::Forwarded(a) => a.adaptive_target().await,
            SchedulerClient::Tcp(a) => a.adaptive_target().await,
        }
    }
    async fn workers(&self) -> Result<Vec<SchedulerWorker>> {
        match self {
            SchedulerClient::Forwarded(a) => a.workers().await,
            SchedulerClient::Tcp(a) => a.workers().await,
        }
    }
    async fn retire_workers(&self, addresses: &[String]) -> Result<BTreeSet<String>> {
        match self {
            SchedulerClient::Forwarded(a) => a.retire_workers(addresses).await,
            SchedulerClient::Tcp(a) => a.retire_workers(addresses).await,
        }
    }
    async fn idle_since(&self) -> Result<Option<f64>> {
        match self {
            SchedulerClient::Forwarded(a) => a.idle_since().await,
            SchedulerClient::Tcp(a) => a.idle_since().await,
        }
    }
    fn endpoint(&self) -> String {
        match self {
            SchedulerClient::Forwarded(a) => a.endpoint(),
            SchedulerClient::Tcp(a) => a.endpoint(),
        }
    }
}

impl SchedulerClient {
    /// The scheduler's HTTP API through port-forward streams to its pod (works from
    /// anywhere the API server is reachable; used when no local listener is wanted).
    pub fn forwarded(api: &ClusterApi, pod: &str) -> Self {
        SchedulerClient::Forwarded(Box::new(HttpSchedulerApi::new(PodPortConnect::new(
            api.pods(),
            pod,
            DASHBOARD_PORT,
        ))))
    }

    /// The scheduler's HTTP API over TCP at `host:port`.
    pub fn tcp(address: impl Into<String>) -> Self {
        SchedulerClient::Tcp(Box::new(HttpSchedulerApi::new(TcpConnect {
            address: address.into(),
        })))
    }
}

/// A reachable scheduler: its HTTP client, the address a `distributed.Client` here
/// connects to, the local listeners that carry it (none inside the cluster), and where the
/// dashboard answers (host, port).
pub(crate) struct Connected {
    pub(crate) scheduler: SchedulerClient,
    pub(crate) address: String,
    /// The local listeners: the comm port's first when `forwards_comm`, then the
    /// dashboard's.
    pub(crate) forwarders: Vec<LocalForwarder>,
    pub(crate) dashboard: (String, u16),
    /// Whether the first listener carries the comm port (not inside the cluster, where the
    /// Service does).
    pub(crate) forwards_comm: bool,
}

/// How often the wait for the scheduler's HTTP API asks whether the scheduler pod ended.
const POD_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How often the scheduler's HTTP API is asked through port-forward while its log is
/// followed for the line that says it listens: a fallback for a scheduler whose logging
/// does not print that line (the log says it first otherwise).
const LOG_FOLLOWED_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Whether a scheduler log line says it listens: `distributed.scheduler` logs
/// `Scheduler at: tcp://...` once its comm listener is up, and its HTTP server (the API
/// dask-kube asks) started before that, in `Scheduler.__init__`. dask-kubernetes classic
/// waits for the same line.
pub(crate) fn says_scheduler_listening(line: &str) -> bool {
    line.contains("Scheduler at:")
}

/// Local ports for the listeners (0 picks a free one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LocalPorts {
    pub(crate) comm: u16,
    pub(crate) dashboard: u16,
}

/// Lookups of the Service name inside a pod before port-forward is chosen instead, and the
/// pause between them: the Service was created a moment ago, and cluster DNS learns of it
/// through its own watch.
const SERVICE_LOOKUP_ATTEMPTS: u32 = 6;
const SERVICE_LOOKUP_PAUSE: Duration = Duration::from_millis(500);

/// Whether to use the Service directly: inside a pod (the service-account env is set) and
/// the Service name resolves.
pub(crate) async fn use_service(access: Access, service_host: &str) -> bool {
    match access {
        Access::Direct => true,
        Access::PortForward => false,
        Access::Auto => {
            if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() {
                return false;
            }
            for attempt in 1..=SERVICE_LOOKUP_ATTEMPTS {
                match tokio::net::lookup_host(format!("{service_host}:{SCHEDULER_PORT}")).await {
                    Ok(_) => return true,
                    Err(e) => {
                        debug!(service = %service_host, attempt, error = %e, "the Service name does not resolve (yet)")
                    }
                }
                if attempt < SERVICE_LOOKUP_ATTEMPTS {
                    tokio::time::sleep(SERVICE_LOOKUP_PAUSE).await;
                }
            }
            false
        }
    }
}

/// Makes the scheduler reachable: the Service inside the cluster, else local listeners
/// forwarding to the pod. Waits until its HTTP API answers. With TLS the addresses are
/// `tls://` and the scheduler's HTTP server (on its pod's loopback only) is reached through
/// port-forward from inside the cluster too, with a local listener for the dashboard link.
pub(crate) async fn reach_scheduler(
    api: &ClusterApi,
    name: &str,
    access: Access,
    tls: TlsMode,
    ports: LocalPorts,
    progress: &ProgressFn,
) -> Result<Connected> {
    let service_host = format!("{}.{}", service_name(name), api.namespace());
    let scheme = tls.scheme();
    let dashboard_forwarder = || async {
        // The dashboard gets its own local listener, so the printed link works from a
        // browser here; a detached supervisor takes over both ports.
        LocalForwarder::start(
            SocketAddr::from((Ipv4Addr::LOCALHOST, ports.dashboard)),
            PodPortConnect::new(api.pods(), name, DASHBOARD_PORT),
        )
        .await
    };
    let connected = if use_service(access, &service_host).await {
        if tls.private_http() {
            let dashboard = dashboard_forwarder().await?;
            let dashboard_port = dashboard.address().port();
            Connected {
                scheduler: SchedulerClient::forwarded(api, name),
                address: format!("{scheme}://{service_host}:{SCHEDULER_PORT}"),
                forwarders: vec![dashboard],
                dashboard: (Ipv4Addr::LOCALHOST.to_string(), dashboard_port),
                forwards_comm: false,
            }
        } else {
            Connected {
                scheduler: SchedulerClient::tcp(format!("{service_host}:{DASHBOARD_PORT}")),
                address: format!("{scheme}://{service_host}:{SCHEDULER_PORT}"),
                forwarders: Vec::new(),
                dashboard: (service_host, DASHBOARD_PORT),
                forwards_comm: false,
            }
        }
    } else {
        let comm = LocalForwarder::start(
            SocketAddr::from((Ipv4Addr::LOCALHOST, ports.comm)),
            PodPortConnect::new(api.pods(), name, SCHEDULER_PORT),
        )
        .await?;
        let address = format!("{scheme}://{}", comm.address());
        let dashboard = dashboard_forwarder().await?;
        let dashboard_port = dashboard.address().port();
        Connected {
            scheduler: SchedulerClient::forwarded(api, name),
            address,
            forwarders: vec![comm, dashboard],
            dashboard: (Ipv4Addr::LOCALHOST.to_string(), dashboard_port),
            forwards_comm: true,
        }
    };
    progress(Progress::Step(format!(
        "waiting for the scheduler API at {}",
        connected.scheduler.endpoint()
    )));
    let deadline = Instant::now() + SCHEDULER_API_TIMEOUT;
    // Whether the pod ended is asked at most once a second, not at every poll: while the
    // scheduler imports, the apiserver's CPU is the workers' too.
    let mut next_pod_check = Instant::now();
    // Through port-forward every attempt is a new upgraded connection through the
    // apiserver (about 20 of them while a scheduler imports on a busy node): when the
    // first attempt fails, one followed log says when to ask again instead. Started only
    // then, so connecting to a long-running scheduler reads no log. It ends with `false`
    // when the log ends without the line or cannot be read: then polling takes over.
    let mut log_says_listening = std::pin::pin!(async {
        match api.follow_log_until(name, says_scheduler_listening).await {
            Ok(found) => found,
            Err(e) => {
                debug!(pod = %name, error = %e, "cannot follow the scheduler log; polling its API");
                false
            }
        }
    });
    let mut log_followed = matches!(connected.scheduler, SchedulerClient::Forwarded(_));
    loop {
        match connected.scheduler.adaptive_target().await {
            Ok(_) => break,
            // Waiting cannot grant a permission.
            Err(e @ Error::Forbidden { .. }) => return Err(e),
            Err(e) if Instant::now() >= deadline => {
                return Err(Error::Timeout {
                    what: format!("the scheduler's HTTP API ({e})"),
                    seconds: SCHEDULER_API_TIMEOUT.as_secs(),
                });
            }
            Err(_) => {
                // The pod may have ended meanwhile: say so rather than time out.
                if Instant::now() >= next_pod_check {
                    next_pod_check = Instant::now() + POD_CHECK_INTERVAL;
                    if let Ok(Some(pod)) = api.get_pod(name).await
                        && pod_has_ended(&pod)
                    {
                        return Err(scheduler_failure(api, name, &pod).await);
                    }
                }
                if log_followed {
                    tokio::select! {
                        found = &mut log_says_listening => {
                            debug!(pod = %name, found, "scheduler log followed");
                            log_followed = false;
                        }
                        () = tokio::time::sleep(LOG_FOLLOWED_POLL_INTERVAL) => {}
                    }
                } else {
                    tokio::time::sleep(POLL_INTERVAL).await;
                }
            }
        }
    }
    Ok(connected)
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

fn pod_has_ended(pod: &Pod) -> bool {
    matches!(phase(pod), Some("Failed" | "Succeeded"))
}

/// Waits until the scheduler pod runs; a pod that ends or never starts is an error that
/// says why.
pub(crate) async fn wait_scheduler_running(
    api: &ClusterApi,
    name: &str,
    timeout: Duration,
) -> Result<()> {
    let cond = |pod: Option<&Pod>| {
        pod.is_none_or(|p| matches!(phase(p), Some("Running" | "Failed" | "Succeeded")))
    };
    let waited = api
        .wait_pod(name, &format!("scheduler pod {name} to run"), timeout, cond)
        .await;
    let pod = match waited {
        Ok(pod) => pod,
        Err(Error::Timeout { what, seconds }) => {
            let detail = match api.get_pod(name).await {
                Ok(Some(p)) => describe_pod_status(&p),
                _ => String::new(),
            };
            return Err(Error::Timeout {
                what: format!("{what}{detail}"),
                seconds,
            });
        }
        Err(e) => return Err(e),
    };
    let Some(pod) = pod else {
        return Err(Error::SchedulerFailed {
            pod: name.to_owned(),
            reason: "it was deleted".into(),
        });
    };
    match phase(&pod) {
        Some("Running") => Ok(()),
        _ => Err(scheduler_failure(api, name, &pod).await),
    }
}

/// The error for a scheduler pod that ended: phase, container state and its last log lines.
pub(crate) async fn scheduler_failure(api: &ClusterApi, name: &str, pod: &Pod) -> Error {
    let logs = api.logs(name, None).await.unwrap_or_default();
    Error::SchedulerFailed {
        pod: name.to_owned(),
        reason: describe_ended_pod(pod, &logs),
    }
}

/// Lines of a log shown when the scheduler or a worker pod fails.
const FAILURE_LOG_LINES: usize = 10;

/// `phase X (container state...); last log lines: ...` of a pod that ended (the scheduler,
/// or the worker pods when none of them is left to connect).
pub(crate) fn describe_ended_pod(pod: &Pod, logs: &str) -> String {
    let phase = phase(pod).unwrap_or("Unknown");
    let lines: Vec<&str> = logs.lines().collect();
    let tail = &lines[lines.len().saturating_sub(FAILURE_LOG_LINES)..];
    format!(
        "phase {phase}{}{}",
        describe_pod_status(pod),
        if tail.is_empty() {
            String::new()
        } else {
            format!("; last log lines:\n{}", tail.join("\n"))
        }
    )
}

/// ` (reason: message; ...)` of a pod that is stuck or ended, for messages; empty when the
/// status says nothing useful.
pub(crate) fn describe_pod_status(pod: &Pod) -> String {
    let Some(status) = pod.status.as_ref() else {
        return String::new();
    };
    let mut parts = Vec::new();
    for c in status.conditions.iter().flatten() {
        if c.status == "False"
            && let Some(message) = &c.message
        {
            parts.push(format!("{}: {message}", c.type_));
        }
    }
    for cs in status.container_statuses.iter().flatten() {
        let Some(state) = &cs.state else { continue };
        if let Some(w) = &state.waiting {
            parts.push(
                format!(
                    "{} waiting: {} {}",
                    cs.name,
                    w.reason.as_deref().unwrap_or_default(),
                    w.message.as_deref().unwrap_or_default()
                )
                .trim_end()
                .to_owned(),
            );
        }
        if let Some(t) = &state.terminated {
            parts.push(format!(
                "{} exited {} ({})",
                cs.name,
                t.exit_code,
                t.reason.as_deref().unwrap_or_default()
            ));
        }
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use serde_json::{Value, json};

    fn pod(status: Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "c"}, "status": status})).unwrap()
    }

    #[rstest]
    #[case::no_status(json!(null), "")]
    #[case::running(json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}), "")]
    #[case::unschedulable(
        json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
               "message": "0/1 nodes are available: 1 Insufficient memory."}]}),
        " (PodScheduled: 0/1 nodes are available: 1 Insufficient memory.)"
    )]
    #[case::image_pull(
        json!({"phase": "Pending", "containerStatuses": [{"name": "scheduler", "image": "i", "imageID": "", "ready": false,
               "restartCount": 0, "state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}}}]}),
        " (scheduler waiting: ErrImagePull not found)"
    )]
    #[case::waiting_without_message(
        json!({"phase": "Pending", "containerStatuses": [{"name": "scheduler", "image": "i", "imageID": "", "ready": false,
               "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}}]}),
        " (scheduler waiting: ContainerCreating)"
    )]
    #[case::exited(
        json!({"phase": "Failed", "containerStatuses": [{"name": "scheduler", "image": "i", "imageID": "", "ready": false,
               "restartCount": 0, "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}]}),
        " (scheduler exited 1 (Error))"
    )]
    #[case::condition_and_container(
        json!({"phase": "Failed", "conditions": [{"type": "Ready", "status": "False", "message": "containers with unready status: [scheduler]"}],
               "containerStatuses": [{"name": "scheduler", "image": "i", "imageID": "", "ready": false,
               "restartCount": 0, "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}),
        " (Ready: containers with unready status: [scheduler]; scheduler exited 137 (OOMKilled))"
    )]
    fn describes_what_a_pod_status_says(#[case] status: Value, #[case] expected: &str) {
        assert_eq!(describe_pod_status(&pod(status)), expected);
    }

    #[rstest]
    #[case::distributed_default_format(
        "2026-11-30 14:58:38,100 - distributed.scheduler - INFO -   Scheduler at:   tcp://10.244.0.43:8786",
        true
    )]
    #[case::tls_and_a_custom_format("INFO Scheduler at: tls://dask.ns:8786", true)]
    #[case::the_dashboard_line_after_it(
        "2026-11-30 14:58:38,100 - distributed.scheduler - INFO -   dashboard at:  http://10.244.0.43:8787/status",
        false
    )]
    #[case::state_start_before_listening(
        "2026-11-30 14:58:37,901 - distributed.scheduler - INFO - State start",
        false
    )]
    #[case::an_empty_line("", false)]
    fn the_scheduler_log_line_that_says_it_listens(#[case] line: &str, #[case] listening: bool) {
        assert_eq!(says_scheduler_listening(line), listening);
    }

    #[rstest]
    #[case::no_logs("", "phase Failed (scheduler exited 2 (Error))")]
    #[case::short_log(
        "boom\n",
        "phase Failed (scheduler exited 2 (Error)); last log lines:\nboom"
    )]
    #[case::only_the_last_ten(
        &(1..=15).map(|i| format!("line {i}\n")).collect::<String>(),
        &format!("phase Failed (scheduler exited 2 (Error)); last log lines:\n{}",
                 (6..=15).map(|i| format!("line {i}")).collect::<Vec<_>>().join("\n"))
    )]
    fn a_failed_scheduler_is_described_with_its_last_log_lines(
        #[case] logs: &str,
        #[case] expected: &str,
    ) {
        let failed = pod(
            json!({"phase": "Failed", "containerStatuses": [{"name": "scheduler", "image": "i", "imageID": "",
                   "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 2, "reason": "Error"}}}]}),
        );
        assert_eq!(describe_ended_pod(&failed, logs), expected);
    }
}
