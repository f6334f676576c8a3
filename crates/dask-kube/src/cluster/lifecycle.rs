//! A cluster's life: [`KubeClusterBuilder::start`] creates it, [`teardown`] (the one way
//! anything is deleted) ends it, and the verbs both shells offer live here with typed
//! results: [`up`] (start, scale or adapt, wait, with interruption and cleanup of a
//! half-made cluster, optionally handing over to a detached supervisor), [`delete_cluster`]
//! (`down`) and [`cluster_logs`].

use super::reach::{LocalPorts, reach_scheduler, wait_scheduler_running};
use super::spec::KubeClusterBuilder;
use super::{
    AdaptPlacement, ClientSecurity, HandleSettings, KubeCluster, Progress, ProgressFn,
    SchedulerClient,
};
use crate::apiserver::{ClusterApi, Credentials, KubeConnection};
use crate::config::{ConfigSource, format_dashboard_link};
use crate::manifests::ClusterSpec;
use crate::manifests::{self, DASHBOARD_PORT, Owner};
use crate::names;
use crate::request::ResolvedCluster;
use crate::scaler::{CountCap, Scaler};
use crate::scheduler_api::SchedulerApi;
use crate::stored_template;
use crate::supervisor::{self, StateDir, SupervisorState};
use crate::tls::{ClusterTls, TlsMode};
use crate::{Error, Result};
use dask_worker_spec::labels;
use k8s_openapi::api::core::v1::{PodTemplate, Secret};
use serde::Serialize;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use std::time::SystemTime;
use tokio::time::Instant;
use tracing::{info, warn};

/// Bound on retiring all workers while closing.
pub const CLOSE_RETIRE_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on the pods disappearing after close deleted them.
pub const CLOSE_WAIT_TIMEOUT: Duration = Duration::from_secs(60);

/// What [`teardown`] did, and what it could not remove.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CloseReport {
    /// Workers retired before deletion.
    pub retired: usize,
    /// Pods deleted.
    pub deleted_pods: usize,
    /// Objects still present (or that could not even be listed), and why.
    pub leftovers: Vec<String>,
}

impl CloseReport {
    /// An error naming the leftovers when anything is left.
    pub fn into_result(self, cluster: &str) -> Result<Self> {
        if self.leftovers.is_empty() {
            Ok(self)
        } else {
            Err(Error::Partial {
                action: format!("delete cluster {cluster}"),
                done: self.deleted_pods,
                wanted: self.deleted_pods + self.leftovers.len(),
                failures: self.leftovers,
            })
        }
    }
}

/// Deletes a cluster: retires its workers through `scheduler` when given (bounded, since
/// their data goes with the cluster anyway), deletes the worker pods, then the Service and
/// the scheduler pod when it has one, and waits (bounded) until the pods are gone. Used by
/// `close`, `down`, and the cleanup of a start that failed or was interrupted.
///
/// Nothing is reported gone that was not seen gone: a worker list that fails is a leftover
/// (with an external scheduler nothing else owns those workers), and so is every delete
/// that failed and every pod still there after the wait.
pub async fn teardown<S: SchedulerApi>(
    api: &ClusterApi,
    scheduler: Option<&S>,
    name: &str,
    has_scheduler_pod: bool,
    grace_seconds: Option<u32>,
) -> CloseReport {
    let mut report = CloseReport::default();
    if has_scheduler_pod {
        // First, so its adapt loop does not replace the workers deleted below.
        if let Err(e) = crate::controller::stop(api, name).await {
            report.leftovers.push(e.to_string());
        }
    }
    let workers = match api
        .list_pods(&manifests::selector(name, labels::WORKER))
        .await
    {
        Ok(pods) => pods
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect::<Vec<_>>(),
        Err(e) => {
            report
                .leftovers
                .push(format!("worker pods of {name}: cannot list them: {e}"));
            Vec::new()
        }
    };
    if let Some(scheduler) = scheduler {
        retire_all(scheduler, &mut report).await;
    }
    let mut deleted = api.delete_pods(&workers, grace_seconds).await;
    if has_scheduler_pod {
        let service = manifests::service_name(name);
        if let Err(e) = api.delete_service(&service).await {
            report.leftovers.push(format!("service/{service}: {e}"));
        }
        let scheduler_pod = api.delete_pods(&[name.to_owned()], grace_seconds).await;
        deleted.done.extend(scheduler_pod.done);
        deleted.failed.extend(scheduler_pod.failed);
    }
    report
        .leftovers
        .extend(deleted.failed.into_iter().map(|f| format!("pod/{f}")));
    let cluster_pods = format!("{}={name}", labels::CLUSTER_NAME);
    let still = api
        .wait_pods_gone(&cluster_pods, &deleted.done, CLOSE_WAIT_TIMEOUT)
        .await;
    report.deleted_pods = deleted.done.len() - still.len();
    report.leftovers.extend(still.into_iter().map(|p| {
        format!(
            "pod/{p}: still present after {}s",
            CLOSE_WAIT_TIMEOUT.as_secs()
        )
    }));
    info!(cluster = %name, deleted = report.deleted_pods, leftovers = report.leftovers.len(), "cluster deleted");
    report
}

/// Lets every connected worker leave cleanly, bounded by [`CLOSE_RETIRE_TIMEOUT`].
async fn retire_all<S: SchedulerApi>(scheduler: &S, report: &mut CloseReport) {
    let Ok(Ok(workers)) = tokio::time::timeout(CLOSE_RETIRE_TIMEOUT, scheduler.workers()).await
    else {
        return;
    };
    if workers.is_empty() {
        return;
    }
    let addresses: Vec<String> = workers.into_iter().map(|w| w.address).collect();
    match tokio::time::timeout(CLOSE_RETIRE_TIMEOUT, scheduler.retire_workers(&addresses)).await {
        Ok(Ok(retired)) => report.retired = retired.len(),
        Ok(Err(e)) => warn!(error = %e, "retiring workers before deletion failed"),
        Err(_) => warn!(
            seconds = CLOSE_RETIRE_TIMEOUT.as_secs(),
            "retiring workers took too long; deleting"
        ),
    }
}

/// Deletes what a start created, after `cause` stopped it, and folds what could not be
/// deleted into the error.
async fn cleanup_after_failure(api: &ClusterApi, name: &str, cause: Error) -> Error {
    warn!(cluster = %name, error = %cause, "start failed; deleting what was created");
    let report = teardown::<SchedulerClient>(api, None, name, true, Some(0)).await;
    if report.leftovers.is_empty() {
        cause
    } else {
        Error::CleanupIncomplete {
            cause: Box::new(cause),
            leftovers: report.leftovers,
        }
    }
}

impl KubeClusterBuilder {
    /// Creates the scheduler pod and Service (and the request's workers), waits for the
    /// scheduler, and makes it reachable. Anything created is deleted again when a later
    /// step fails.
    pub async fn start(mut self) -> Result<KubeCluster> {
        let (api, resolved) = self.settle().await?;
        self.start_settled(api, resolved).await
    }

    /// Settles name and namespace and connects, creating nothing: the builder pinned to
    /// that one cluster (so [`up`] or [`KubeClusterBuilder::start`] makes exactly it, with
    /// this connection), the API of its namespace, and its name. A shell that may have to
    /// delete an interrupted start (Python's Ctrl-C in a blocking call) learns here what
    /// it would delete. Template errors come before credential errors, as in `start`.
    pub async fn pin(mut self) -> Result<(Self, ClusterApi, String)> {
        let (api, resolved) = self.settle().await?;
        self.limits = Some(api.limits());
        let name = resolved.spec.name.clone();
        Ok((
            self.name(resolved.spec.name)
                .namespace(resolved.spec.namespace),
            api,
            name,
        ))
    }

    /// Resolves the request once (templates, name, namespace, counts), checking everything
    /// that needs no cluster before connecting to one; keeps the connection for a later
    /// settle.
    async fn settle(&mut self) -> Result<(ClusterApi, ResolvedCluster)> {
        let mut resolved = self.resolve()?;
        let connection = match self.connection.clone() {
            Some(c) => c,
            None => KubeConnection::open_first(&self.credentials).await?,
        };
        self.connection = Some(connection.clone());
        if resolved.spec.namespace.is_empty() {
            resolved.spec.namespace.clone_from(&connection.namespace);
        }
        let api = ClusterApi::new(connection.in_namespace(resolved.spec.namespace.clone()))
            .with_limits(resolved.limits);
        Ok((api, resolved))
    }

    async fn start_settled(
        self,
        api: ClusterApi,
        resolved: ResolvedCluster,
    ) -> Result<KubeCluster> {
        let progress = self.progress.clone().unwrap_or_else(no_progress);
        let spec = &resolved.spec;
        let worker = spec.worker_pod()?;
        for warning in &worker.warnings {
            warn!(%warning, "worker template");
        }
        if let Some(address) = spec.external_scheduler.clone() {
            return start_external(
                &resolved,
                api,
                worker.pod,
                address,
                self.config_reader(),
                progress,
            );
        }
        // Issued before anything exists, so a failure leaves nothing to delete.
        let cluster_tls = match spec.tls {
            TlsMode::ClusterCa => Some(ClusterTls::issue(
                &spec.name,
                &spec.namespace,
                SystemTime::now(),
            )?),
            TlsMode::Provided | TlsMode::Off => None,
        };
        progress(Progress::Step(format!(
            "creating scheduler pod {}/{}",
            spec.namespace, spec.name
        )));
        let scheduler_pod = spec.scheduler_pod()?;
        let created = api.create_pod(&manifests::to_pod(scheduler_pod)?).await?;
        let owner = Owner {
            name: spec.name.clone(),
            uid: created.metadata.uid.clone().unwrap_or_default(),
        };
        // The certificates first: the scheduler pod's volume waits for them.
        if let Err(cause) =
            create_owned_objects(&api, spec, &worker.pod, &owner, cluster_tls.as_ref()).await
        {
            return Err(cleanup_after_failure(&api, &spec.name, cause).await);
        }
        info!(cluster = %spec.name, namespace = %spec.namespace, "scheduler pod created");
        let ports = LocalPorts {
            comm: resolved.local_port,
            dashboard: resolved.dashboard_port,
        };
        let initial = resolved.workers;
        let start_timeout = resolved.scheduler_start_timeout;
        let workers = async {
            if initial == 0 {
                return Ok(());
            }
            // Workers are made once the scheduler's container runs (its image pulled),
            // not at once: a Nanny's first `register_nanny` retries a refused Service
            // with exponential backoff and gives up after `distributed.comm.timeouts.connect`
            // (30 s), so a worker that starts well before its scheduler listens loses
            // seconds or fails. The scheduler then only has to import `distributed`
            // while the worker pods start; measured no slower here (see the README).
            wait_scheduler_running(&api, &spec.name, start_timeout).await?;
            progress(Progress::Step(format!("creating {initial} worker pods")));
            let (report, fatal) =
                crate::scaler::create_workers(&api, &worker.pod, Some(&owner), initial).await;
            match fatal {
                Some(e) if report.done.is_empty() => Err(e),
                // Not one could be made (a webhook down, a quota): the scale that follows
                // would only meet the same answer again.
                None if report.done.is_empty() => report
                    .into_result(&format!("create {initial} worker pods"))
                    .map(|_| ()),
                // Whatever is missing is created again by the scale that follows.
                _ => Ok(()),
            }
        };
        let setup = async {
            progress(Progress::Step("creating scheduler service".into()));
            api.apply_service(&manifests::to_service(spec.service(Some(&owner)))?)
                .await?;
            progress(Progress::Step(
                "waiting for the scheduler pod to run".into(),
            ));
            wait_scheduler_running(&api, &spec.name, start_timeout).await?;
            reach_scheduler(
                &api,
                &spec.name,
                resolved.access,
                spec.tls,
                ports,
                &progress,
            )
            .await
        };
        let connected = match tokio::join!(setup, workers) {
            (Ok(v), Ok(())) => v,
            (Err(cause), _) | (Ok(_), Err(cause)) => {
                return Err(cleanup_after_failure(&api, &spec.name, cause).await);
            }
        };
        KubeCluster::assemble(
            api,
            connected,
            spec.name.clone(),
            ClientSecurity {
                tls: spec.tls,
                client: cluster_tls,
            },
            worker.pod,
            owner,
            HandleSettings::of_resolved(&resolved, self.config_reader()),
            progress,
        )
    }
}

/// What the scheduler pod owns besides the Service and the pods: the stored worker
/// template (what `scale NAME` and the controller pod make workers from) and, with the
/// cluster's own TLS, the Secret with its certificates.
async fn create_owned_objects(
    api: &ClusterApi,
    spec: &ClusterSpec,
    worker_pod: &serde_json::Value,
    owner: &Owner,
    cluster_tls: Option<&ClusterTls>,
) -> Result<()> {
    fn typed<K: serde::de::DeserializeOwned>(
        value: serde_json::Value,
        what: &'static str,
    ) -> Result<K> {
        serde_json::from_value(value).map_err(|e| Error::InvalidTemplate {
            what,
            origin: "generated object".into(),
            reason: e.to_string(),
        })
    }
    if let Some(tls) = cluster_tls {
        let secret: Secret = typed(
            tls.secret(&spec.name, &spec.namespace, &spec.user, owner),
            "scheduler",
        )?;
        api.create_owned(&secret, &owner.uid).await?;
    }
    let template: PodTemplate = typed(
        stored_template::pod_template(spec, worker_pod, owner)?,
        "worker",
    )?;
    api.create_owned(&template, &owner.uid).await?;
    Ok(())
}

/// A cluster whose scheduler runs elsewhere: only worker pods are made, owned by nothing.
fn start_external(
    resolved: &ResolvedCluster,
    api: ClusterApi,
    worker_pod: serde_json::Value,
    address: String,
    config: Arc<dyn ConfigSource>,
    progress: ProgressFn,
) -> Result<KubeCluster> {
    let (api_host, api_port) =
        external_api_endpoint(&address, resolved.spec.external_scheduler_api.as_deref())?;
    let settings = HandleSettings::of_resolved(resolved, config);
    let scaler = Scaler::new(
        api,
        Arc::new(SchedulerClient::tcp(format!("{api_host}:{api_port}"))),
        resolved.spec.name.clone(),
        worker_pod.clone(),
        None,
    );
    Ok(KubeCluster {
        name: resolved.spec.name.clone(),
        scaler: Arc::new(scaler),
        owner: None,
        dashboard: format_dashboard_link(
            &settings.dashboard_link,
            &api_host,
            api_port,
            &settings.env,
        )?,
        security: ClientSecurity {
            tls: if address.starts_with("tls://") {
                TlsMode::Provided
            } else {
                TlsMode::Off
            },
            client: None,
        },
        address,
        forwarders: Vec::new(),
        forwards_comm: false,
        adapt: None,
        controller_adapts: false,
        worker_pod,
        progress,
        settings,
    })
}

/// The HTTP endpoint (`host`, `port`) of an external scheduler at `address`
/// (`tcp://host:port`): `api` when given (`host:port`), else the scheduler's host on the
/// dashboard port, as `dask scheduler` listens by default.
fn external_api_endpoint(address: &str, api: Option<&str>) -> Result<(String, u16)> {
    let invalid =
        |what: &str, value: &str| Error::Usage(format!("{what} {value:?}: expected host:port"));
    let split = |value: &str, what: &str| -> Result<(String, Option<u16>)> {
        let rest = value.split_once("://").map_or(value, |(_, r)| r);
        match rest.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() => Ok((
                host.to_owned(),
                Some(port.parse().map_err(|_| invalid(what, value))?),
            )),
            None if !rest.is_empty() => Ok((rest.to_owned(), None)),
            _ => Err(invalid(what, value)),
        }
    };
    match api {
        Some(api) => match split(api, "scheduler API address")? {
            (host, Some(port)) => Ok((host, port)),
            (_, None) => Err(invalid("scheduler API address", api)),
        },
        None => Ok((split(address, "scheduler address")?.0, DASHBOARD_PORT)),
    }
}

/// How `up` hands the cluster to a background supervisor (`dask-kube attach --daemon`),
/// which keeps the local listeners (same ports) and the adapt loop after `up` exits.
#[derive(Debug, Clone)]
pub struct DetachOptions {
    /// The `dask-kube` executable to run as the supervisor.
    pub exe: PathBuf,
    /// Where its state and log files go.
    pub state_dir: StateDir,
}

/// How `up` runs: what it waits for and whether it hands over. What to make (workers,
/// adapting) is the request's.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Hand over to a detached supervisor instead of returning the cluster.
    pub detach: Option<DetachOptions>,
    /// Bound on the awaited workers connecting.
    pub wait_timeout: Duration,
}

impl Default for UpOptions {
    fn default() -> Self {
        UpOptions {
            detach: None,
            wait_timeout: DEFAULT_WAIT_TIMEOUT,
        }
    }
}

/// Default bound on the awaited workers connecting.
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(300);

/// What `up` made: everything a shell prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpReport {
    /// Cluster name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// The address a `distributed.Client` here connects to.
    pub scheduler_address: String,
    /// The dashboard link, one that answers from here.
    pub dashboard: String,
    /// Workers awaited (after the cap).
    pub workers: usize,
    /// Set when `kubernetes.count.max` lowered what was asked.
    pub capped: Option<CountCap>,
    /// Seconds from the call to the awaited workers connected.
    pub ready_seconds: f64,
    /// The detached supervisor, when there is one.
    pub supervisor: Option<SupervisorState>,
    /// The controller pod, when the cluster has one (it adapts, or ends the cluster after
    /// the scheduler's idle timeout).
    pub controller: Option<String>,
    /// Why the cluster has no controller pod although adapting or an idle timeout wanted
    /// one (this process or its supervisor adapts instead).
    pub controller_unavailable: Option<String>,
    /// The cluster's TLS mode.
    pub tls: TlsMode,
    /// The client's copy of the cluster's certificates (its own CA); never serialized.
    #[serde(skip)]
    pub client_tls: Option<ClusterTls>,
}

/// How `up` ended.
pub enum UpOutcome {
    /// The cluster runs and this process holds it (foreground).
    Running(Box<KubeCluster>, UpReport),
    /// The cluster runs, held by a detached supervisor.
    Detached(UpReport),
    /// `interrupt` fired before the cluster was ready; what was made is deleted.
    Interrupted {
        /// What fired (`SIGINT`, `KeyboardInterrupt`, ...).
        reason: String,
        /// The cleanup.
        report: CloseReport,
    },
}

/// Creates a cluster and brings it to the asked state: the request's workers started, or
/// adapting from its minimum, with those workers connected. Until then `interrupt` (a
/// signal, Python's Ctrl-C) stops it and everything made so far is deleted; a failure does
/// the same and is returned with whatever could not be deleted. Where adapting runs is
/// [`KubeCluster::adapt_in`]'s to settle: the cluster's controller pod, else this process
/// (or, with `detach`, the supervisor); with an idle timeout and no adapting the controller
/// pod only ends the cluster. With `detach`, a supervisor process takes over the local
/// listeners (the same ports, so the printed links stay right) and adapting.
pub async fn up<I>(
    builder: KubeClusterBuilder,
    options: UpOptions,
    interrupt: &mut I,
) -> Result<UpOutcome>
where
    I: Future<Output = String> + Unpin,
{
    let started = Instant::now();
    let mut builder = builder;
    // A detached supervisor connects with the same credentials, given as flags.
    let credential_flags = match (&options.detach, builder.credentials.as_slice()) {
        (None, _) => Vec::new(),
        (Some(_), []) => Vec::new(),
        (Some(_), [one]) => credential_args(one)?,
        (Some(_), _) => {
            return Err(Error::Usage(
                "a detached supervisor needs one kubeconfig, not a list of credentials".into(),
            ));
        }
    };
    // Name and namespace are settled first, so an interrupted start knows what to delete.
    let (api, resolved) = builder.settle().await?;
    let name = resolved.spec.name.clone();
    let ends_when_idle = resolved.spec.external_scheduler.is_none()
        && manifests::has_idle_timeout(&resolved.spec.scheduler_options);
    let wanted = resolved.workers;
    let adapt = resolved.adapt.clone();
    // Where adapting runs: the controller pod (with a detached supervisor to fall back
    // on, the supervisor adapts where the pod cannot), or here.
    let in_cluster = resolved.spec.external_scheduler.is_none() && !resolved.adapt_here;
    let placement = match (&adapt, in_cluster, &options.detach) {
        (Some(_), true, Some(_)) => Some(AdaptPlacement::Controller),
        (Some(_), true, None) => Some(AdaptPlacement::ControllerElseHere),
        // The supervisor adapts once it runs.
        (Some(_), false, Some(_)) => None,
        (Some(_), false, None) => Some(AdaptPlacement::Here),
        (None, _, _) => None,
    };
    let mut capped = resolved.capped;
    let cluster = tokio::select! {
        c = builder.start_settled(api.clone(), resolved) => c?,
        reason = &mut *interrupt => {
            warn!(%reason, cluster = %name, "interrupted while starting; deleting what was created");
            let report = teardown::<SchedulerClient>(&api, None, &name, true, Some(0)).await;
            return Ok(UpOutcome::Interrupted { reason, report });
        }
    };
    let mut cluster = cluster;
    let mut controller = None;
    let mut controller_unavailable = None;
    let prepared = async {
        // Adapting from here starts at once (it creates the minimum itself); elsewhere the
        // minimum, created with the scheduler, is awaited first.
        if let (Some(policy), Some(AdaptPlacement::Here)) = (&adapt, placement) {
            let started = cluster
                .adapt_in(policy.clone(), AdaptPlacement::Here)
                .await?;
            capped = started.capped.or(capped);
        } else if wanted > 0 {
            // Creates what the start could not (a creation that failed is retried here).
            cluster.scale(wanted).await?;
        }
        if wanted > 0 {
            cluster
                .wait_for_workers(wanted, options.wait_timeout)
                .await?;
        }
        match (&adapt, placement) {
            (Some(policy), Some(place @ AdaptPlacement::ControllerElseHere)) => {
                let started = cluster.adapt_in(policy.clone(), place).await?;
                capped = started.capped.or(capped);
                controller = started.controller;
                controller_unavailable = started.controller_unavailable;
            }
            (Some(policy), Some(place @ AdaptPlacement::Controller)) => {
                match cluster.adapt_in(policy.clone(), place).await {
                    Ok(started) => {
                        capped = started.capped.or(capped);
                        controller = started.controller;
                    }
                    Err(e) => {
                        warn!(reason = %e, "no controller pod; the detached supervisor adapts");
                        controller_unavailable = Some(e.to_string());
                    }
                }
            }
            (None, _) if ends_when_idle => match cluster.start_controller(None).await {
                Ok(_) => controller = Some(crate::controller::pod_name(cluster.name())),
                Err(e) => {
                    warn!(reason = %e, "no controller pod: after its idle timeout the scheduler ends, but its pods stay until `dask-kube down`");
                    controller_unavailable = Some(e.to_string());
                }
            },
            _ => {}
        }
        Ok::<(), Error>(())
    };
    let outcome = tokio::select! {
        r = prepared => r.map(|()| None),
        reason = &mut *interrupt => Ok(Some(reason)),
    };
    match outcome {
        Ok(None) => {}
        Ok(Some(reason)) => {
            info!(%reason, "interrupted; deleting the cluster");
            let report = match cluster.close().await {
                Ok(r) => r,
                Err(Error::Partial { failures, .. }) => CloseReport {
                    leftovers: failures,
                    ..CloseReport::default()
                },
                Err(e) => return Err(e),
            };
            return Ok(UpOutcome::Interrupted { reason, report });
        }
        Err(e) => {
            // Nothing half-made is left: the failure is reported after deleting the cluster.
            warn!(error = %e, "up failed; deleting the cluster");
            return Err(match cluster.close().await {
                Ok(_) => e,
                Err(Error::Partial { failures, .. }) => Error::CleanupIncomplete {
                    cause: Box::new(e),
                    leftovers: failures,
                },
                Err(other) => Error::CleanupIncomplete {
                    cause: Box::new(e),
                    leftovers: vec![other.to_string()],
                },
            });
        }
    }
    let mut report = UpReport {
        name: cluster.name().to_owned(),
        namespace: cluster.namespace().to_owned(),
        scheduler_address: cluster.scheduler_address().to_owned(),
        dashboard: cluster.dashboard_link().to_owned(),
        workers: wanted,
        capped,
        ready_seconds: started.elapsed().as_secs_f64(),
        supervisor: None,
        controller,
        controller_unavailable,
        tls: cluster.security().tls,
        client_tls: cluster.security().client.clone(),
    };
    let Some(detach) = options.detach else {
        return Ok(UpOutcome::Running(Box::new(cluster), report));
    };
    let comm_port = cluster.local_address().map_or(0, |a| a.port());
    let dashboard_port = cluster.local_dashboard_address().map_or(0, |a| a.port());
    cluster.detach().await?;
    let mut args = credential_flags;
    args.extend([
        "--namespace".to_owned(),
        report.namespace.clone(),
        "attach".into(),
        report.name.clone(),
        "--daemon".into(),
        "--local-port".into(),
        comm_port.to_string(),
        "--dashboard-port".into(),
        dashboard_port.to_string(),
    ]);
    if let Some(policy) = &adapt
        && report.controller.is_none()
    {
        args.extend(policy.cli_args());
    }
    let log = detach.state_dir.log_file(&report.namespace, &report.name);
    let mut child = supervisor::spawn(&detach.exe, &args, &log)?;
    let state = supervisor::wait_ready(
        &detach.state_dir,
        &report.namespace,
        &report.name,
        &mut child,
    )
    .await?;
    // What the supervisor serves is what answers now: print its addresses.
    report.scheduler_address = state.address.clone();
    report.dashboard = state.dashboard.clone();
    report.supervisor = Some(state);
    Ok(UpOutcome::Detached(report))
}

/// The `dask-kube` flags that open a connection with `credentials` (for the detached
/// supervisor): explicit credentials cannot be passed on a command line.
fn credential_args(credentials: &Credentials) -> Result<Vec<String>> {
    match credentials {
        Credentials::Default | Credentials::InCluster => Ok(Vec::new()),
        Credentials::Kubeconfig { path, context } => {
            let mut args = Vec::new();
            if let Some(path) = path {
                args.extend(["--kubeconfig".to_owned(), path.display().to_string()]);
            }
            if let Some(context) = context {
                args.extend(["--context".to_owned(), context.clone()]);
            }
            Ok(args)
        }
        Credentials::Explicit(_) => Err(Error::Usage(
            "a detached supervisor needs a kubeconfig: explicit credentials cannot be handed to it"
                .into(),
        )),
    }
}

/// `dask-kube down NAME`: stops this host's supervisor of the cluster, retires its workers
/// (through port-forward to the scheduler, bounded: the scheduler may be broken) and
/// deletes everything. Returns whether a supervisor was stopped, and the teardown report.
pub async fn delete_cluster(
    api: &ClusterApi,
    name: &str,
    state_dir: &StateDir,
) -> Result<(bool, CloseReport)> {
    names::validate_cluster_name(name)?;
    let stopped = supervisor::stop(state_dir, api.namespace(), name).await?;
    state_dir.remove_tls(api.namespace(), name);
    let scheduler = api.get_pod(name).await?;
    let workers = api
        .list_pods(&manifests::selector(name, labels::WORKER))
        .await?;
    if scheduler.is_none() && workers.is_empty() {
        return Err(Error::ClusterNotFound {
            name: name.to_owned(),
            namespace: api.namespace().to_owned(),
        });
    }
    let scheduler_api = SchedulerClient::forwarded(api, name);
    let report = teardown(
        api,
        scheduler.is_some().then_some(&scheduler_api),
        name,
        scheduler.is_some(),
        None,
    )
    .await;
    Ok((stopped, report))
}

/// Logs of a cluster's pods, by pod: the scheduler's and every worker's, or one worker's
/// (by pod name or Dask worker name).
pub async fn cluster_logs(
    api: &ClusterApi,
    name: &str,
    worker: Option<&str>,
) -> Result<Vec<(String, String)>> {
    names::validate_cluster_name(name)?;
    let scheduler = api.get_pod(name).await?;
    let workers: Vec<String> = api
        .list_pods(&manifests::selector(name, labels::WORKER))
        .await?
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    if scheduler.is_none() && workers.is_empty() {
        return Err(Error::ClusterNotFound {
            name: name.to_owned(),
            namespace: api.namespace().to_owned(),
        });
    }
    let pods: Vec<String> = match worker {
        Some(w) => {
            let pod =
                names::pod_of_worker(w, workers.iter().map(String::as_str)).ok_or_else(|| {
                    Error::Usage(format!(
                        "no worker {w:?} in cluster {name}; workers: {}",
                        workers.join(", ")
                    ))
                })?;
            vec![pod.to_owned()]
        }
        None => scheduler
            .iter()
            .map(|_| name.to_owned())
            .chain(workers)
            .collect(),
    };
    let mut out = Vec::with_capacity(pods.len());
    for pod in pods {
        let text = api.logs(&pod, None).await?;
        out.push((pod, text));
    }
    Ok(out)
}

/// Progress events that go nowhere.
pub fn no_progress() -> ProgressFn {
    Arc::new(|_| {})
}

#[cfg(test)]
mod tests {
    use super::external_api_endpoint;

    #[test]
    fn external_scheduler_api_endpoint() {
        /// (case, scheduler address, API address, wanted endpoint or None for an error)
        type Case<'a> = (&'a str, &'a str, Option<&'a str>, Option<(&'a str, u16)>);
        let cases: &[Case] = &[
            (
                "default is the scheduler host on 8787",
                "tcp://10.0.0.5:8786",
                None,
                Some(("10.0.0.5", 8787)),
            ),
            (
                "a host without a port",
                "sched.example",
                None,
                Some(("sched.example", 8787)),
            ),
            (
                "an explicit api address wins",
                "tcp://10.0.0.5:8786",
                Some("127.0.0.1:40123"),
                Some(("127.0.0.1", 40123)),
            ),
            (
                "an explicit api address may carry a scheme",
                "tcp://h:1",
                Some("http://127.0.0.1:9"),
                Some(("127.0.0.1", 9)),
            ),
            (
                "an ipv6 api address keeps its brackets",
                "tcp://[::1]:8786",
                Some("[::1]:8787"),
                Some(("[::1]", 8787)),
            ),
            (
                "an api address needs a port",
                "tcp://h:1",
                Some("127.0.0.1"),
                None,
            ),
            (
                "an api port must be a number",
                "tcp://h:1",
                Some("127.0.0.1:http"),
                None,
            ),
            ("an empty scheduler address is refused", "", None, None),
        ];
        for (case, address, api, want) in cases {
            let got = external_api_endpoint(address, *api);
            match want {
                Some((host, port)) => {
                    let (h, p) = got.unwrap_or_else(|e| panic!("{case}: {e}"));
                    assert_eq!((h.as_str(), p), (*host, *port), "{case}");
                }
                None => {
                    let e = got.expect_err(case).to_string();
                    assert!(e.contains("expected host:port"), "{case}: {e}");
                }
            }
        }
    }
}
