//! One task per pod bound to this node, doing what the kubelet's pod worker does: set up the
//! pod's network namespace, hosts file and projected volumes (re-synced every minute, which
//! refreshes service-account tokens), run init containers in order, then the containers,
//! restart them per `restartPolicy` with backoff, report status, and on deletion stop the
//! processes (SIGTERM, grace period, SIGKILL) and finish the deletion.
//!
//! The worker owns every process of its pod; nothing of a pod outlives its worker.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ContainerStateTerminated, ContainerStatus, Pod, Secret,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::context::NodeContext;
use crate::dns::PodHostsFile;
use crate::downward::{self, EnvSources, PodFacts};
use crate::error::{Error, Result};
use crate::expand::expand_with;
use crate::hosts::pod_hostname;
use crate::netns::PodNetwork;
use crate::podstatus::{self, ContainerRecord, State, Terminated};
use crate::process::{self, Exit, LaunchSpec, Signaller};
use crate::quantity;
use crate::registry::{PodEntry, log_path};
use crate::volumes::{PodVolumes, RESYNC};

/// Grace period used when the pod object vanished without one (force deletion), like the
/// kubelet's minimum.
const MIN_GRACE: Duration = Duration::from_secs(2);
/// How long to wait for processes after SIGKILL before giving up on them.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// Retry delay for container config errors (missing ConfigMap, ...).
const CONFIG_RETRY: Duration = Duration::from_secs(10);
/// First retry delay for volumes that cannot be written yet (doubling, like the kubelet's
/// volume manager, up to [`MOUNT_RETRY_MAX`]).
const MOUNT_RETRY: Duration = Duration::from_millis(500);
/// Upper bound of the volume retry delay.
const MOUNT_RETRY_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Init,
    Main,
}

#[derive(Debug)]
struct ExitEvent {
    kind: Kind,
    idx: usize,
    run_id: u64,
    exit: Exit,
    oom: bool,
    finished_at: Timestamp,
}

struct ActiveRun {
    run_id: u64,
    signaller: Signaller,
    started_at: Timestamp,
    container_id: String,
}

struct Slot {
    spec: Container,
    record: ContainerRecord,
    run: Option<ActiveRun>,
    backoff: Backoff,
    /// When a waiting container is due to start.
    start_at: Option<Instant>,
    /// Will not run again (exited for good, or the pod is stopping).
    finished: bool,
    /// The next run is a restart: `restartCount` goes up when it is created (not before,
    /// so a container in CrashLoopBackOff shows the count of runs so far minus one).
    pending_restart: bool,
}

/// Messages from the agent to a pod worker.
pub type PodUpdates = watch::Receiver<Option<Arc<Pod>>>;

/// Runs one pod until it is deleted (or the agent stops).
pub struct PodWorker {
    ctx: Arc<NodeContext>,
    pod: Arc<Pod>,
    uid: String,
    ns: String,
    name: String,
    updates: PodUpdates,
    shutdown: CancellationToken,
    dir: PathBuf,
    ip: Option<Ipv4Addr>,
    netns: Option<String>,
    init: Vec<Slot>,
    main: Vec<Slot>,
    next_init: usize,
    /// No container will run again: the phase is final.
    terminal: bool,
    start_time: Timestamp,
    last_status: Option<serde_json::Value>,
    run_counter: u64,
    exits_tx: mpsc::UnboundedSender<ExitEvent>,
    exits_rx: mpsc::UnboundedReceiver<ExitEvent>,
    epoch: Instant,
    volumes: PodVolumes,
    /// The next delay of volume set-up retries.
    mount_retry: Duration,
}

fn restart_policy(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always")
}

fn termination_grace(pod: &Pod) -> Duration {
    let secs = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30);
    Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

fn terminated_from_api(t: &ContainerStateTerminated) -> Terminated {
    let now = Timestamp::now();
    Terminated {
        exit_code: t.exit_code,
        signal: t.signal,
        reason: t.reason.clone().unwrap_or_else(|| "Error".into()),
        message: t.message.clone(),
        started_at: t.started_at.as_ref().map(|x| x.0).unwrap_or(now),
        finished_at: t.finished_at.as_ref().map(|x| x.0).unwrap_or(now),
        container_id: t.container_id.clone().unwrap_or_default(),
    }
}

/// The container could not be found after an agent restart (the kubelet's wording).
fn status_unknown(container_id: Option<String>) -> Terminated {
    let now = Timestamp::now();
    Terminated {
        exit_code: 137,
        signal: None,
        reason: "ContainerStatusUnknown".into(),
        message: Some("The container could not be located when the pod was terminated".into()),
        started_at: now,
        finished_at: now,
        container_id: container_id.unwrap_or_default(),
    }
}

impl PodWorker {
    /// A worker for `pod`; call [`PodWorker::run`].
    pub fn new(
        ctx: Arc<NodeContext>,
        pod: Arc<Pod>,
        updates: PodUpdates,
        shutdown: CancellationToken,
    ) -> Self {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let dir = ctx.pod_dir(&ns, &name, &uid);
        let slots = |list: Option<&Vec<Container>>, reason: &str| -> Vec<Slot> {
            list.into_iter()
                .flatten()
                .map(|c| {
                    let image = c.image.clone().unwrap_or_default();
                    let image_id = ctx
                        .images
                        .resolve(&image)
                        .map(|m| m.image_id(&image))
                        .unwrap_or_default();
                    Slot {
                        spec: c.clone(),
                        record: ContainerRecord::waiting(&c.name, &image, &image_id, reason),
                        run: None,
                        backoff: Backoff::default(),
                        start_at: None,
                        finished: false,
                        pending_restart: false,
                    }
                })
                .collect()
        };
        let spec = pod.spec.as_ref();
        let has_init = spec
            .and_then(|s| s.init_containers.as_ref())
            .is_some_and(|v| !v.is_empty());
        let init = slots(
            spec.and_then(|s| s.init_containers.as_ref()),
            "PodInitializing",
        );
        let main = slots(
            spec.map(|s| &s.containers),
            if has_init {
                "PodInitializing"
            } else {
                "ContainerCreating"
            },
        );
        let (exits_tx, exits_rx) = mpsc::unbounded_channel();
        let volumes = PodVolumes::new(&pod, &dir);
        let start_time = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map(|t| t.0)
            .unwrap_or_else(Timestamp::now);
        Self {
            ctx,
            pod,
            uid,
            ns,
            name,
            updates,
            shutdown,
            dir,
            ip: None,
            netns: None,
            init,
            main,
            next_init: 0,
            terminal: false,
            start_time,
            last_status: None,
            run_counter: 0,
            exits_tx,
            exits_rx,
            epoch: Instant::now(),
            volumes,
            mount_retry: MOUNT_RETRY,
        }
    }

    fn api(&self) -> Api<Pod> {
        Api::namespaced(self.ctx.client.clone(), &self.ns)
    }

    fn pod_label(&self) -> String {
        format!("{}/{}", self.ns, self.name)
    }

    /// Drives the pod to the end of its life.
    pub async fn run(mut self) {
        let pod_label = self.pod_label();
        if let Err(e) = std::fs::create_dir_all(&self.dir) {
            warn!(pod = %pod_label, error = %e, "cannot create pod directory");
        }
        self.ctx.registry.insert(
            &self.ns,
            &self.name,
            PodEntry {
                uid: self.uid.clone(),
                dir: self.dir.clone(),
                ..Default::default()
            },
        );
        let phase = self.pod.status.as_ref().and_then(|s| s.phase.clone());
        let already_terminal = matches!(phase.as_deref(), Some("Succeeded" | "Failed"));
        if self.pod.metadata.deletion_timestamp.is_some() {
            // A new worker owns no process yet: a pod being deleted just goes.
            self.finish_deletion().await;
            return;
        }
        if already_terminal {
            self.terminal = true;
            self.wait_for_deletion().await;
            return;
        }
        self.recover_from_status();
        if !self.terminal {
            if let Err(e) = self.create_sandbox().await {
                warn!(pod = %pod_label, error = %e, "pod sandbox setup failed");
                self.ctx.pod_event(
                    &self.pod,
                    true,
                    "FailedCreatePodSandBox",
                    format!("Failed to create pod sandbox: {e}"),
                );
                for s in self.init.iter_mut().chain(self.main.iter_mut()) {
                    s.record.state = State::Waiting {
                        reason: "ContainerCreating".into(),
                        message: Some(format!("pod sandbox setup failed: {e}")),
                    };
                }
                self.sync_status().await;
                // Without a sandbox nothing can run; wait for deletion, then clean up.
                self.wait_for_deletion().await;
                return;
            }
            self.schedule_next_stage(Instant::now());
        }
        self.check_terminal().await;
        self.sync_status().await;
        self.event_loop().await;
    }

    /// After an agent restart the pod's processes are gone: account for them like the kubelet
    /// accounts for lost containers (restart count + 1, or ContainerStatusUnknown).
    fn recover_from_status(&mut self) {
        let Some(status) = self.pod.status.clone() else {
            return;
        };
        let policy = restart_policy(&self.pod).to_string();
        let find = |list: &Option<Vec<ContainerStatus>>, name: &str| -> Option<ContainerStatus> {
            list.iter().flatten().find(|c| c.name == name).cloned()
        };
        let inits_done = !self.init.is_empty()
            && self.init.iter().all(|s| {
                find(&status.init_container_statuses, &s.spec.name)
                    .and_then(|c| c.state.and_then(|st| st.terminated))
                    .is_some_and(|t| t.exit_code == 0)
            });
        if inits_done {
            for s in &mut self.init {
                if let Some(t) = find(&status.init_container_statuses, &s.spec.name)
                    .and_then(|c| c.state.and_then(|st| st.terminated))
                {
                    s.record.state = State::Terminated(terminated_from_api(&t));
                    s.finished = true;
                }
            }
            self.next_init = self.init.len();
        }
        for s in &mut self.main {
            let Some(prev) = find(&status.container_statuses, &s.spec.name) else {
                continue;
            };
            let state = prev.state.clone().unwrap_or_default();
            let was_started = state.running.is_some() || state.terminated.is_some();
            if !was_started {
                s.record.restart_count = prev.restart_count;
                s.record.last_terminated = prev
                    .last_state
                    .and_then(|l| l.terminated)
                    .map(|t| terminated_from_api(&t));
                continue;
            }
            let lost = match &state.terminated {
                Some(t) => terminated_from_api(t),
                None => status_unknown(prev.container_id.clone()),
            };
            let done = match policy.as_str() {
                "Never" => true,
                "OnFailure" => lost.exit_code == 0,
                _ => false,
            };
            if done {
                s.record.state = State::Terminated(lost);
                s.record.restart_count = prev.restart_count;
                s.finished = true;
            } else {
                s.record.restart_count = prev.restart_count;
                s.record.last_terminated = Some(lost);
                s.pending_restart = true;
            }
        }
        if !self.main.is_empty() && self.main.iter().all(|s| s.finished) {
            self.terminal = true;
        }
    }

    async fn create_sandbox(&mut self) -> Result<()> {
        let preferred: Option<Ipv4Addr> = self
            .pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok());
        let ip = {
            let mut ipam = self
                .ctx
                .ipam
                .lock()
                .map_err(|_| Error::Network("ip allocator lock poisoned".into()))?;
            ipam.allocate(preferred)
        }
        .ok_or_else(|| Error::Network(format!("pod subnet {} is full", self.ctx.network.subnet)))?;
        self.ip = Some(ip);
        let ns = self.ctx.network.create_pod_netns(&self.uid, ip).await?;
        self.netns = Some(ns);
        let spec = self.pod.spec.clone().unwrap_or_default();
        let hosts = PodHostsFile {
            path: self.dir.join("hosts"),
            name: self.name.clone(),
            namespace: self.ns.clone(),
            ip: Some(IpAddr::V4(ip)),
            hostname: spec.hostname.clone(),
            subdomain: spec.subdomain.clone(),
            host_aliases: spec
                .host_aliases
                .iter()
                .flatten()
                .map(|a| (a.ip.clone(), a.hostnames.clone().unwrap_or_default()))
                .collect(),
        };
        self.ctx.hosts.register(&self.uid, hosts)?;
        self.ctx
            .registry
            .update(&self.ns, &self.name, &self.uid, |e| {
                e.ip = Some(IpAddr::V4(ip))
            });
        info!(pod = %self.pod_label(), ip = %ip, "pod sandbox ready");
        Ok(())
    }

    /// Arms the next container(s) to start: the next init container, or all containers.
    fn schedule_next_stage(&mut self, at: Instant) {
        while self.next_init < self.init.len() && self.init[self.next_init].finished {
            self.next_init += 1;
        }
        if self.next_init < self.init.len() {
            let s = &mut self.init[self.next_init];
            if s.run.is_none() && s.start_at.is_none() {
                s.start_at = Some(at);
            }
            return;
        }
        for s in &mut self.main {
            if s.run.is_none() && s.start_at.is_none() && !s.finished {
                s.start_at = Some(at);
                if matches!(&s.record.state, State::Waiting { reason, .. } if reason == "PodInitializing")
                {
                    s.record.state = State::Waiting {
                        reason: "ContainerCreating".into(),
                        message: None,
                    };
                }
            }
        }
    }

    fn next_start(&self) -> Option<Instant> {
        if self.terminal {
            return None;
        }
        self.init
            .iter()
            .chain(self.main.iter())
            .filter_map(|s| s.start_at)
            .min()
    }

    async fn event_loop(&mut self) {
        let mut resync = tokio::time::interval_at(Instant::now() + RESYNC, RESYNC);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next = self.next_start();
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => {
                    let grace = termination_grace(&self.pod).min(self.ctx.shutdown_grace);
                    info!(pod = %self.pod_label(), grace_s = grace.as_secs(), "agent stopping: stopping pod processes");
                    self.stop_all(grace, "agent stopping").await;
                    self.release_sandbox().await;
                    return;
                }
                changed = self.updates.changed() => {
                    let latest = if changed.is_ok() { self.updates.borrow_and_update().clone() } else { None };
                    match latest {
                        None => {
                            info!(pod = %self.pod_label(), "pod removed from the API: killing its processes");
                            self.stop_all(MIN_GRACE, "pod deleted").await;
                            self.cleanup_after_deletion().await;
                            return;
                        }
                        Some(pod) => {
                            let deleting = pod.metadata.deletion_timestamp.is_some();
                            self.pod = pod;
                            if deleting {
                                let grace = termination_grace(&self.pod);
                                info!(pod = %self.pod_label(), grace_s = grace.as_secs(), "pod deleted: stopping containers");
                                self.stop_all(grace, "pod deletion").await;
                                self.terminal = true;
                                self.sync_status().await;
                                self.finish_deletion().await;
                                return;
                            }
                        }
                    }
                }
                Some(ev) = self.exits_rx.recv() => {
                    self.on_exit(ev).await;
                }
                _ = sleep_until_opt(next), if next.is_some() => {
                    self.start_due().await;
                }
                _ = resync.tick(), if !self.volumes.is_empty() && self.netns.is_some() && !self.terminal => {
                    if let Err(e) = self.sync_volumes().await {
                        warn!(pod = %self.pod_label(), error = %e, "volume re-sync failed");
                    }
                }
            }
            self.check_terminal().await;
            self.sync_status().await;
        }
    }

    /// Once no container will run again: release the network, keep the logs.
    async fn check_terminal(&mut self) {
        if self.terminal && self.netns.is_some() && self.all_stopped() {
            self.release_sandbox().await;
            return;
        }
        if self.terminal {
            return;
        }
        let policy = restart_policy(&self.pod).to_string();
        let init_failed = self
            .init
            .iter()
            .any(|s| s.finished && s.record.terminated().is_some_and(|t| t.exit_code != 0));
        let all_main_done = !self.main.is_empty() && self.main.iter().all(|s| s.finished);
        if (init_failed && policy == "Never") || all_main_done {
            self.terminal = true;
            if self.all_stopped() {
                self.release_sandbox().await;
            }
        }
    }

    fn all_stopped(&self) -> bool {
        self.init
            .iter()
            .chain(self.main.iter())
            .all(|s| s.run.is_none())
    }

    fn slot_mut(&mut self, kind: Kind, idx: usize) -> Option<&mut Slot> {
        match kind {
            Kind::Init => self.init.get_mut(idx),
            Kind::Main => self.main.get_mut(idx),
        }
    }

    async fn start_due(&mut self) {
        let now = Instant::now();
        let due: Vec<(Kind, usize)> = self
            .init
            .iter()
            .enumerate()
            .map(|(i, s)| (Kind::Init, i, s))
            .chain(
                self.main
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (Kind::Main, i, s)),
            )
            .filter(|(_, _, s)| s.start_at.is_some_and(|t| t <= now) && s.run.is_none())
            .map(|(k, i, _)| (k, i))
            .collect();
        for (kind, idx) in due {
            if let Some(s) = self.slot_mut(kind, idx) {
                s.start_at = None;
            }
            self.start_container(kind, idx).await;
        }
    }

    fn facts(&self) -> PodFacts<'_> {
        PodFacts {
            pod: &self.pod,
            node_name: &self.ctx.node_name,
            pod_ip: self.ip.map(IpAddr::V4),
            host_ip: self.ctx.host_ip,
            node_allocatable: &self.ctx.allocatable,
        }
    }

    /// Writes (or refreshes) the pod's projected volumes.
    async fn sync_volumes(&mut self) -> Result<()> {
        let facts = PodFacts {
            pod: &self.pod,
            node_name: &self.ctx.node_name,
            pod_ip: self.ip.map(IpAddr::V4),
            host_ip: self.ctx.host_ip,
            node_allocatable: &self.ctx.allocatable,
        };
        self.volumes.sync(&self.ctx.client, &self.pod, &facts).await
    }

    /// The Service variables for this pod, once the agent has listed the Services (the
    /// kubelet, too, waits for its Service informer before it starts containers).
    async fn service_env(&self) -> Result<Vec<(String, String)>> {
        let mut ready = self.ctx.services_ready.clone();
        match tokio::time::timeout(Duration::from_secs(30), ready.wait_for(|r| *r)).await {
            Ok(Ok(_)) => {}
            _ => {
                return Err(Error::ContainerConfig(
                    "services have not been listed yet".into(),
                ));
            }
        }
        let links = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.enable_service_links)
            .unwrap_or(true);
        Ok(crate::services::service_env(
            &self.ctx.services.state(),
            &self.ns,
            links,
        ))
    }

    async fn fetch_sources(&self, container: &Container) -> Result<EnvSources> {
        let (cms, secrets) = downward::referenced_sources(container);
        let mut sources = EnvSources {
            services: self.service_env().await?,
            ..Default::default()
        };
        let cm_api: Api<ConfigMap> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        for name in cms {
            let cm = cm_api
                .get_opt(&name)
                .await
                .map_err(|e| Error::kube(format!("reading configmap {}/{name}", self.ns), e))?;
            sources
                .config_maps
                .insert(name, cm.map(|c| c.data.unwrap_or_default()));
        }
        let secret_api: Api<Secret> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        for name in secrets {
            let s = secret_api
                .get_opt(&name)
                .await
                .map_err(|e| Error::kube(format!("reading secret {}/{name}", self.ns), e))?;
            sources.secrets.insert(
                name,
                s.map(|s| {
                    let mut data: BTreeMap<String, String> = s
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                        .collect();
                    data.extend(s.string_data.unwrap_or_default());
                    data
                }),
            );
        }
        Ok(sources)
    }

    /// Builds the launch spec: the image mapping's environment, the Kubernetes env on top,
    /// `$(VAR)` expansion of command and args, the executable resolved in the container PATH.
    async fn launch_spec(&self, kind: Kind, idx: usize) -> Result<LaunchSpec> {
        let slot = match kind {
            Kind::Init => &self.init[idx],
            Kind::Main => &self.main[idx],
        };
        let c = &slot.spec;
        let image = c.image.clone().unwrap_or_default();
        let mapping = self
            .ctx
            .images
            .resolve(&image)
            .ok_or_else(|| Error::Spec(format!("no image mapping matches image {image:?}")))?;
        let sources = self.fetch_sources(c).await?;
        let facts = self.facts();
        let mounts = self.volumes.mounts(c)?;
        let staging_dir = self.dir.join(".mounts");
        let k8s_env = downward::container_env(&facts, c, &sources)?;
        let spec = self.pod.spec.as_ref();
        let hostname = pod_hostname(&self.name, spec.and_then(|s| s.hostname.as_deref()));
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), mapping.path_env()),
            ("HOSTNAME".into(), hostname.clone()),
            ("HOME".into(), self.dir.to_string_lossy().into_owned()),
        ];
        let set = |env: &mut Vec<(String, String)>, k: &str, v: &str| match env
            .iter_mut()
            .find(|(n, _)| n == k)
        {
            Some(slot) => slot.1 = v.to_string(),
            None => env.push((k.to_string(), v.to_string())),
        };
        for (k, v) in &mapping.env {
            set(&mut env, k, v);
        }
        for (k, v) in &k8s_env {
            set(&mut env, k, v);
        }
        let expand = |list: &Option<Vec<String>>| -> Vec<String> {
            list.iter()
                .flatten()
                .map(|s| expand_with(s, &k8s_env))
                .collect()
        };
        let mut argv = mapping.argv(&expand(&c.command), &expand(&c.args))?;
        let path_env = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let cwd = match c.working_dir.as_deref().filter(|d| !d.is_empty()) {
            Some(dir) => {
                let p = PathBuf::from(dir);
                if !p.is_dir() {
                    return Err(Error::Spec(format!(
                        "chdir to cwd ({dir:?}) set in config.json failed: no such file or directory on this host"
                    )));
                }
                p
            }
            None => self.dir.clone(),
        };
        argv[0] = process::resolve_program(&argv[0], &path_env, &cwd)?
            .to_string_lossy()
            .into_owned();
        let netns = self
            .netns
            .as_deref()
            .ok_or_else(|| Error::Network("pod has no network namespace".into()))?;
        Ok(LaunchSpec {
            argv,
            env,
            cwd,
            netns_path: PodNetwork::netns_path(netns),
            hosts_file: self.dir.join("hosts"),
            mounts,
            staging_dir,
            hostname,
            log_path: log_path(&self.dir, &c.name),
            pid_file: self.dir.join(format!("{}.pid", c.name)),
        })
    }

    async fn start_container(&mut self, kind: Kind, idx: usize) {
        let pod_label = self.pod_label();
        if !self.volumes.synced()
            && let Err(e) = self.sync_volumes().await
        {
            // The kubelet keeps such a pod in ContainerCreating with a FailedMount event and
            // retries soon (a new namespace gets its kube-root-ca.crt a moment after the pod).
            warn!(pod = %pod_label, error = %e, "volumes not ready");
            self.ctx
                .pod_event(&self.pod, true, "FailedMount", e.to_string());
            let delay = self.mount_retry;
            self.mount_retry = (delay * 2).min(MOUNT_RETRY_MAX);
            if let Some(slot) = self.slot_mut(kind, idx) {
                slot.record.state = State::Waiting {
                    reason: "ContainerCreating".into(),
                    message: Some(e.to_string()),
                };
                slot.start_at = Some(Instant::now() + delay);
            }
            return;
        }
        let spec = match self.launch_spec(kind, idx).await {
            Ok(s) => s,
            Err(e) => {
                self.start_failed(kind, idx, e);
                return;
            }
        };
        let limit = {
            let Some(slot) = self.slot_mut(kind, idx) else {
                return;
            };
            slot.spec
                .resources
                .as_ref()
                .and_then(|r| r.limits.as_ref())
                .and_then(|l| l.get("memory"))
                .map(|q| quantity::parse_bytes(&q.0))
        };
        let limit = match limit {
            Some(Ok(b)) => Some(u64::try_from(b.max(0)).unwrap_or(u64::MAX)),
            Some(Err(e)) => {
                self.start_failed(kind, idx, e);
                return;
            }
            None => None,
        };
        let mut running = match process::spawn(&spec).await {
            Ok(r) => r,
            Err(e) => {
                self.start_failed(kind, idx, e);
                return;
            }
        };
        self.run_counter += 1;
        let run_id = self.run_counter;
        let name = match self.slot_mut(kind, idx) {
            Some(s) => s.spec.name.clone(),
            None => return,
        };
        let guard = match (limit, running.mnt_ns_inode()) {
            (Some(l), Some(ns)) => Some(self.ctx.watchdog.watch(
                ns,
                l,
                format!("{pod_label}/{name}"),
            )),
            (Some(_), None) => {
                warn!(pod = %pod_label, container = %name, "memory limit not enforced: mount namespace unknown");
                None
            }
            (None, _) => None,
        };
        let tx = self.exits_tx.clone();
        let signaller = running.signaller();
        let (pid, started_at, container_id) =
            (running.pid, running.started_at, running.container_id());
        tokio::spawn(async move {
            let exit = running.wait().await;
            let oom = guard.as_ref().is_some_and(|g| g.oom_killed());
            drop(guard);
            let _ = tx.send(ExitEvent {
                kind,
                idx,
                run_id,
                exit,
                oom,
                finished_at: Timestamp::now(),
            });
        });
        if let Some(slot) = self.slot_mut(kind, idx) {
            if std::mem::take(&mut slot.pending_restart) {
                slot.record.restart_count += 1;
            }
            slot.record.state = State::Running {
                started_at,
                container_id: container_id.clone(),
            };
            slot.run = Some(ActiveRun {
                run_id,
                signaller,
                started_at,
                container_id,
            });
        }
        self.ctx
            .registry
            .update(&self.ns, &self.name, &self.uid, |e| {
                e.running.insert(name.clone());
            });
        info!(pod = %pod_label, container = %name, pid, argv = ?spec.argv, "container started");
        self.ctx.pod_event(
            &self.pod,
            false,
            "Started",
            format!("Started container {name}"),
        );
    }

    /// The container could not be started: config errors wait and retry, start errors count
    /// as a failed run (exit code 128, reason StartError), like containerd reports them.
    fn start_failed(&mut self, kind: Kind, idx: usize, err: Error) {
        let pod_label = self.pod_label();
        let pod = self.pod.clone();
        let ctx = self.ctx.clone();
        let is_config = matches!(
            err,
            Error::ContainerConfig(_) | Error::Kube { .. } | Error::Quantity { .. }
        );
        let Some(slot) = self.slot_mut(kind, idx) else {
            return;
        };
        let name = slot.spec.name.clone();
        warn!(pod = %pod_label, container = %name, error = %err, "container could not start");
        if is_config {
            slot.record.state = State::Waiting {
                reason: "CreateContainerConfigError".into(),
                message: Some(err.to_string()),
            };
            slot.start_at = Some(Instant::now() + CONFIG_RETRY);
            ctx.pod_event(&pod, true, "Failed", format!("Error: {err}"));
            return;
        }
        let now = Timestamp::now();
        let t = Terminated {
            exit_code: 128,
            signal: None,
            reason: "StartError".into(),
            message: Some(err.to_string()),
            started_at: now,
            finished_at: now,
            container_id: String::new(),
        };
        ctx.pod_event(&pod, true, "Failed", format!("Error: {err}"));
        if let Some(slot) = self.slot_mut(kind, idx)
            && std::mem::take(&mut slot.pending_restart)
        {
            slot.record.restart_count += 1;
        }
        self.after_run(kind, idx, t);
    }

    async fn on_exit(&mut self, ev: ExitEvent) {
        let pod_label = self.pod_label();
        let Some(slot) = self.slot_mut(ev.kind, ev.idx) else {
            return;
        };
        let Some(run) = slot.run.take_if(|r| r.run_id == ev.run_id) else {
            return;
        };
        let name = slot.spec.name.clone();
        let reason = Terminated::reason_for(ev.exit.code, ev.oom).to_string();
        let t = Terminated {
            exit_code: ev.exit.code,
            signal: ev.exit.signal,
            reason: reason.clone(),
            message: None,
            started_at: run.started_at,
            finished_at: ev.finished_at,
            container_id: run.container_id,
        };
        info!(pod = %pod_label, container = %name, exit_code = ev.exit.code, %reason, "container exited");
        self.ctx
            .registry
            .update(&self.ns, &self.name, &self.uid, |e| {
                e.running.remove(&name);
            });
        if ev.oom {
            self.ctx.pod_event(
                &self.pod,
                true,
                "OOMKilling",
                format!("Memory limit exceeded: killed container {name}"),
            );
        }
        self.after_run(ev.kind, ev.idx, t);
    }

    /// Records a finished run and decides about the next one (restartPolicy + backoff).
    fn after_run(&mut self, kind: Kind, idx: usize, t: Terminated) {
        let policy = restart_policy(&self.pod).to_string();
        let stopping = self.terminal;
        let now_mono = self.epoch.elapsed();
        let pod_desc = format!("{}_{}({})", self.name, self.ns, self.uid);
        let pod = self.pod.clone();
        let ctx = self.ctx.clone();
        let Some(slot) = self.slot_mut(kind, idx) else {
            return;
        };
        let restart = !stopping
            && match (kind, policy.as_str()) {
                (Kind::Init, _) => t.exit_code != 0 && policy != "Never",
                (Kind::Main, "Never") => false,
                (Kind::Main, "OnFailure") => t.exit_code != 0,
                (Kind::Main, _) => true,
            };
        if !restart {
            let next_stage = kind == Kind::Init && t.exit_code == 0 && !stopping;
            slot.record.state = State::Terminated(t);
            slot.finished = true;
            if next_stage {
                self.schedule_next_stage(Instant::now());
            }
            return;
        }
        let delay = slot.backoff.next_delay(now_mono);
        slot.record.last_terminated = Some(t);
        slot.pending_restart = true;
        if delay.is_zero() {
            slot.record.state = State::Waiting {
                reason: "ContainerCreating".into(),
                message: None,
            };
        } else {
            let msg = format!(
                "back-off {}s restarting failed container={} pod={pod_desc}",
                delay.as_secs(),
                slot.spec.name
            );
            ctx.pod_event(
                &pod,
                true,
                "BackOff",
                format!("Back-off restarting failed container {}", slot.spec.name),
            );
            slot.record.state = State::Waiting {
                reason: "CrashLoopBackOff".into(),
                message: Some(msg),
            };
        }
        slot.start_at = Some(Instant::now() + delay);
    }

    /// SIGTERM every running container, wait up to `grace`, SIGKILL what is left.
    async fn stop_all(&mut self, grace: Duration, why: &str) {
        self.terminal = true;
        for s in self.init.iter_mut().chain(self.main.iter_mut()) {
            s.start_at = None;
            if let Some(run) = &s.run {
                info!(pod = %format!("{}/{}", self.ns, self.name), container = %s.spec.name, reason = why, "stopping container");
                run.signaller.terminate();
            }
        }
        let names: Vec<String> = self
            .init
            .iter()
            .chain(self.main.iter())
            .filter(|s| s.run.is_some())
            .map(|s| s.spec.name.clone())
            .collect();
        if names.is_empty() {
            return;
        }
        self.ctx.pod_event(
            &self.pod,
            false,
            "Killing",
            format!("Stopping container {}", names.join(", ")),
        );
        let deadline = Instant::now() + grace;
        while !self.all_stopped() {
            tokio::select! {
                Some(ev) = self.exits_rx.recv() => self.on_exit(ev).await,
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        if self.all_stopped() {
            return;
        }
        for s in self.init.iter().chain(self.main.iter()) {
            if let Some(run) = &s.run {
                warn!(pod = %format!("{}/{}", self.ns, self.name), container = %s.spec.name, "grace period over: SIGKILL");
                run.signaller.kill().await;
            }
        }
        let deadline = Instant::now() + KILL_WAIT;
        while !self.all_stopped() {
            tokio::select! {
                Some(ev) = self.exits_rx.recv() => self.on_exit(ev).await,
                _ = tokio::time::sleep_until(deadline) => {
                    warn!(pod = %self.pod_label(), "processes did not exit after SIGKILL");
                    break;
                }
            }
        }
    }

    /// Kills anything left in the pod's network namespace and frees the network.
    async fn release_sandbox(&mut self) {
        if let Some(ns) = self.netns.take() {
            self.ctx.network.destroy_netns(&ns).await;
        }
        if let Some(ip) = self.ip.take()
            && let Ok(mut ipam) = self.ctx.ipam.lock()
        {
            ipam.release(ip);
        }
        self.ctx.hosts.unregister(&self.uid);
        self.ctx
            .registry
            .update(&self.ns, &self.name, &self.uid, |e| {
                e.ip = None;
                e.running.clear();
            });
    }

    async fn cleanup_after_deletion(&mut self) {
        self.release_sandbox().await;
        self.ctx.registry.remove(&self.ns, &self.name, &self.uid);
        if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(pod = %self.pod_label(), error = %e, "could not remove pod directory");
        }
    }

    /// Completes a graceful deletion: delete with grace 0 and a UID precondition (so a new
    /// pod with the same name is never hit), then forget the pod.
    async fn finish_deletion(&mut self) {
        self.release_sandbox().await;
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match self.api().delete(&self.name, &dp).await {
            Ok(_) => info!(pod = %self.pod_label(), "pod deleted"),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {
                debug!(pod = %self.pod_label(), code = s.code, "pod already gone");
            }
            Err(e) => warn!(pod = %self.pod_label(), error = %e, "final delete failed"),
        }
        self.cleanup_after_deletion().await;
    }

    /// For pods that will not run (terminal, or sandbox failed): wait for the deletion.
    async fn wait_for_deletion(&mut self) {
        loop {
            if self.pod.metadata.deletion_timestamp.is_some() {
                self.finish_deletion().await;
                return;
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => {
                    self.release_sandbox().await;
                    return;
                }
                changed = self.updates.changed() => {
                    let latest = if changed.is_ok() { self.updates.borrow_and_update().clone() } else { None };
                    match latest {
                        Some(pod) => self.pod = pod,
                        None => {
                            self.cleanup_after_deletion().await;
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Patches `pods/status` when what the agent would report changed.
    async fn sync_status(&mut self) {
        let init: Vec<ContainerRecord> = self.init.iter().map(|s| s.record.clone()).collect();
        let main: Vec<ContainerRecord> = self.main.iter().map(|s| s.record.clone()).collect();
        let phase = podstatus::phase(
            restart_policy(&self.pod),
            &init,
            &main,
            self.terminal && self.all_stopped(),
        );
        let previous = self
            .pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let mut conditions = podstatus::conditions(
            phase,
            self.netns.is_some() || phase.is_terminal() || self.terminal,
            &init,
            &main,
            &previous,
            Timestamp::now(),
        );
        if phase.is_terminal() {
            // The sandbox is gone once the pod finished.
            if let Some(c) = conditions
                .iter_mut()
                .find(|c| c.type_ == "PodReadyToStartContainers")
            {
                c.status = "False".into();
            }
        }
        // Strategic merge merges conditions by type field by field: absent fields would keep
        // stale values, so reason and message are always sent (null clears them).
        let conditions: Vec<serde_json::Value> = conditions
            .iter()
            .map(|c| {
                let mut v = serde_json::to_value(c).unwrap_or_default();
                for field in ["reason", "message"] {
                    if v.get(field).is_none() {
                        v[field] = serde_json::Value::Null;
                    }
                }
                v
            })
            .collect();
        let mut status = serde_json::json!({
            "phase": phase.as_str(),
            "conditions": conditions,
            "hostIP": self.ctx.host_ip.to_string(),
            "hostIPs": [{"ip": self.ctx.host_ip.to_string()}],
            "startTime": Time(self.start_time),
            "containerStatuses": main.iter().map(ContainerRecord::to_status).collect::<Vec<_>>(),
        });
        if !init.is_empty() {
            status["initContainerStatuses"] = serde_json::to_value(
                init.iter()
                    .map(ContainerRecord::to_status)
                    .collect::<Vec<_>>(),
            )
            .unwrap_or_default();
        }
        let ip = self
            .ip
            .map(|i| i.to_string())
            .or_else(|| self.pod.status.as_ref().and_then(|s| s.pod_ip.clone()));
        if let Some(ip) = ip {
            status["podIP"] = serde_json::Value::String(ip.clone());
            status["podIPs"] = serde_json::json!([{"ip": ip}]);
        }
        // Transition times are "now" for new conditions: compare without them.
        let comparable = {
            let mut s = status.clone();
            if let Some(cs) = s["conditions"].as_array_mut() {
                for c in cs {
                    c.as_object_mut().map(|o| o.remove("lastTransitionTime"));
                }
            }
            s
        };
        if self.last_status.as_ref() == Some(&comparable) {
            return;
        }
        // The uid is a precondition, as in the kubelet's status patches: a pod deleted and
        // created again under the same name (dask-kube replaces its controller pod so) must
        // not get the old one's status, e.g. its container's exit.
        let patch = serde_json::json!({"metadata": {"uid": self.uid}, "status": status});
        match self
            .api()
            .patch_status(
                &self.name,
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await
        {
            Ok(pod) => {
                debug!(pod = %self.pod_label(), phase = phase.as_str(), "status updated");
                // Our copy's conditions feed the next transition-time bookkeeping.
                self.pod = Arc::new(pod);
                self.last_status = Some(comparable);
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                debug!(pod = %self.pod_label(), "status not updated: pod is gone");
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                debug!(pod = %self.pod_label(), reason = %s.message, "status not updated: a new pod has the name");
            }
            Err(e) => warn!(pod = %self.pod_label(), error = %e, "status update failed"),
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
