//! Which worker pods to create or remove, as pure functions of pod states and the workers
//! the scheduler knows.
//!
//! # Which pod a worker is in
//! Workers are matched to pods by what a pod is, not by what its worker is called
//! ([`place_workers`]): a user's `--name` (`$(POD_NAME)-w`, or any name) must not make a pod
//! that holds data look empty.
//! 1. **The pod's IP.** A worker listens in its pod's network namespace, so the host of its
//!    address (`tcp://10.244.0.7:40123`) is one of the pod's `status.podIPs`, whatever
//!    `--name` says. An IP that one live pod has places the worker in that pod.
//! 2. **The pod's name, where the IP cannot tell.** `hostNetwork` pods share their node's IP,
//!    and a pod's IP may not be in its status yet when its worker connects. Then the pod whose
//!    name appears in the worker's name, address host or nanny host decides (the default name
//!    is the pod's name, `<pod>-<i>` with `--nworkers`, `$(POD_NAME)-w` with a custom one), as
//!    a whole name: bounded by the text's ends or by characters other than `[a-z0-9]`.
//! 3. **Otherwise the worker may be in several pods**: every live pod with its IP (a shared
//!    IP), or, when no pod has its IP and no pod's name is in it (`--contact-address`, a
//!    status not written yet), every started pod that no worker was placed in. Each of those
//!    pods *may hold data*: it is never deleted as empty and never retired on its own.
//!
//! Only a started pod can hold a worker (a container of it has run), so a Pending pod none of
//! whose containers started holds nothing, with or without an answer from the scheduler. Its
//! delete carries the `resourceVersion` it was listed at as a precondition: a pod whose
//! container started meanwhile changed, and the API server refuses to delete it.
//!
//! # Scale-down order
//! What users of the classic KubeCluster asked for: ended pods (Succeeded/Failed) are always
//! cleaned up; then pods that hold no worker go first: Pending pods none of whose containers
//! started, then (when the scheduler answered) started pods no connected worker may be in;
//! only then are connected workers retired through the scheduler, which moves their data away
//! first. A pod is deleted after retiring only when the scheduler confirmed retiring every
//! worker in it *and* a fresh look at the pods and the scheduler's workers, taken after that
//! answer, finds no worker that may be in it ([`retired_pods_to_delete`]): a nanny that
//! restarted its worker under a new address keeps the pod. When the scheduler does not answer,
//! refuses, times out or retires only some workers, every pod that may hold data is kept and
//! reported ([`KeptPod`]); a pod in phase `Unknown` (its node stopped reporting, its worker may
//! still run) is never deleted on the scheduler's silence.
//!
//! One window is left: a worker that connects between the scheduler's answer and the DELETE of
//! its started, not-yet-connected pod (one round trip). It holds only what it was given in that
//! round trip.

use k8s_openapi::api::core::v1::Pod;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// A worker pod's phase as far as scaling cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PodPhase {
    /// Not started yet (unscheduled, pulling, starting).
    Pending,
    /// Running.
    Running,
    /// Exited 0 (a retired worker, or a worker whose scheduler went away).
    Succeeded,
    /// Exited non-zero, OOM-killed, evicted.
    Failed,
    /// The node stopped reporting.
    Unknown,
}

impl PodPhase {
    /// Whether the pod has ended.
    pub fn finished(self) -> bool {
        matches!(self, PodPhase::Succeeded | PodPhase::Failed)
    }
}

/// What scaling needs to know about one worker pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerPodState {
    /// Pod name (= Dask worker name unless the template sets `--name`).
    pub name: String,
    /// Phase.
    pub phase: PodPhase,
    /// Being deleted already (`deletionTimestamp` set).
    pub deleting: bool,
    /// Creation time, seconds since the epoch (0 when unknown): newer pods go first.
    pub created: i64,
    /// Why it ended (`OOMKilled`, `Evicted`, `Error`), if it did.
    pub reason: Option<String>,
    /// Its IPs (`status.podIPs`, else `status.podIP`): the hosts its workers listen on.
    pub ips: Vec<String>,
    /// Whether any of its containers started (is running or ran): only then can a worker be
    /// in it.
    pub started: bool,
    /// `metadata.resourceVersion` as listed: a delete justified by this state is sent with it
    /// as a precondition, so a pod that changed since is not deleted.
    pub resource_version: Option<String>,
    /// No node can take it (`PodScheduled=False`, reason `Unschedulable`): it starts nothing
    /// while it waits, so it takes no place in the start window ([`crate::start_room`]).
    pub unschedulable: bool,
    /// It holds dask-kube's start gate ([`crate::START_GATE`]): the operator created it to
    /// replace an ended worker while the start window was full.
    pub start_gate: bool,
}

impl WorkerPodState {
    /// Reads the state from a pod object.
    pub fn from_pod(pod: &Pod) -> Self {
        let status = pod.status.as_ref();
        let phase = match status.and_then(|s| s.phase.as_deref()) {
            Some("Running") => PodPhase::Running,
            Some("Succeeded") => PodPhase::Succeeded,
            Some("Failed") => PodPhase::Failed,
            Some("Unknown") => PodPhase::Unknown,
            _ => PodPhase::Pending,
        };
        let container_states = status
            .and_then(|s| s.container_statuses.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|c| c.state.as_ref());
        let mut started = false;
        let mut terminated_reason = None;
        for state in container_states {
            started |= state.running.is_some() || state.terminated.is_some();
            if terminated_reason.is_none() {
                terminated_reason = state.terminated.as_ref().and_then(|t| t.reason.clone());
            }
        }
        let reason = status
            .and_then(|s| s.reason.clone())
            .or(terminated_reason)
            .filter(|_| phase.finished());
        let mut ips: Vec<String> = Vec::new();
        let listed = status
            .and_then(|s| s.pod_ips.as_ref())
            .into_iter()
            .flatten()
            .map(|ip| ip.ip.clone())
            .chain(status.and_then(|s| s.pod_ip.clone()));
        for ip in listed {
            if !ip.is_empty() && !ips.contains(&ip) {
                ips.push(ip);
            }
        }
        WorkerPodState {
            name: pod.metadata.name.clone().unwrap_or_default(),
            phase,
            deleting: pod.metadata.deletion_timestamp.is_some(),
            created: pod
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second())
                .unwrap_or_default(),
            reason,
            ips,
            // Phase Running or Unknown says a container ran even when the list carried no
            // container statuses.
            started: started || matches!(phase, PodPhase::Running | PodPhase::Unknown),
            resource_version: pod.metadata.resource_version.clone(),
            unschedulable: crate::unschedulable(pod),
            start_gate: crate::holds_start_gate(pod),
        }
    }

    /// Counts as a worker that is there or coming: not ended and not being deleted.
    pub fn active(&self) -> bool {
        !self.phase.finished() && !self.deleting
    }

    /// Ended and not being deleted yet: to clean up, and to name in messages.
    pub fn ended(&self) -> bool {
        self.phase.finished() && !self.deleting
    }

    /// Pending and none of its containers started: no worker can be in it.
    pub fn not_started(&self) -> bool {
        self.phase == PodPhase::Pending && !self.started
    }
}

/// A worker as the scheduler reports it (`/api/v1/get_workers`, enriched with
/// `/json/identity.json` metrics when available).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SchedulerWorker {
    /// Worker name (the pod name, `<pod>-<i>` with `--nworkers`, or the template's `--name`).
    pub name: String,
    /// Worker address (`tcp://10.244.0.7:40123`): what `retire_workers` takes; its host is
    /// the pod's IP.
    pub address: String,
    /// Its nanny's address, when known (same host as the worker).
    pub nanny: Option<String>,
    /// Bytes of data it holds, when known.
    pub managed_bytes: Option<u64>,
    /// Whether it is running tasks, when known.
    pub busy: Option<bool>,
}

/// The host of a Dask address: `10.0.0.1` of `tcp://10.0.0.1:8786`, `fd00::1` of
/// `tls://[fd00::1]:8786`, `w.ns.svc` of `tcp://w.ns.svc:1`.
///
/// # Example
/// ```
/// use dask_kube::address_host;
/// assert_eq!(address_host("tcp://10.0.0.1:8786"), "10.0.0.1");
/// assert_eq!(address_host("tls://[fd00::1]:8786"), "fd00::1");
/// ```
pub fn address_host(address: &str) -> &str {
    let rest = address.split_once("://").map_or(address, |(_, rest)| rest);
    if let Some(bracketed) = rest.strip_prefix('[') {
        return bracketed.split(']').next().unwrap_or(bracketed);
    }
    match rest.rsplit_once(':') {
        Some((host, _port)) if !host.contains(':') => host,
        _ => rest,
    }
}

/// One spelling per host: IPs parsed (`fd00:0::1` = `fd00::1`), names lowercased.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum HostKey {
    Ip(IpAddr),
    Name(String),
}

fn host_key(host: &str) -> HostKey {
    host.parse::<IpAddr>()
        .map_or_else(|_| HostKey::Name(host.to_ascii_lowercase()), HostKey::Ip)
}

/// The pods of `names` that `text` names as a whole: bounded by the text's ends or by a
/// character other than `[a-z0-9]` (`c-worker-ab` in `c-worker-ab-w`, not in `c-worker-abc`).
fn pods_named_in<'p>(text: &str, names: &BTreeSet<&'p str>, found: &mut BTreeSet<&'p str>) {
    let text = text.to_ascii_lowercase();
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    let mut starts = Vec::new();
    let mut ends = Vec::new();
    let mut previous = None;
    for (i, c) in text.char_indices() {
        let here = Some(c);
        if alnum(here) && !alnum(previous) {
            starts.push(i);
        }
        if !alnum(here) && alnum(previous) {
            ends.push(i);
        }
        previous = here;
    }
    if alnum(previous) {
        ends.push(text.len());
    }
    for &start in &starts {
        for &end in ends.iter().filter(|&&e| e > start) {
            if let Some(name) = text.get(start..end).and_then(|t| names.get(t)) {
                found.insert(name);
            }
        }
    }
}

/// Where the scheduler's workers are: in which pod surely, and in which pods perhaps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement<'a> {
    /// Workers surely in the pod (by pod name).
    pub placed: BTreeMap<String, Vec<&'a SchedulerWorker>>,
    /// Workers that may be in the pod, or in another (by pod name).
    pub unsure: BTreeMap<String, Vec<&'a SchedulerWorker>>,
}

impl Placement<'_> {
    /// Whether any worker is or may be in `pod`: it may hold data.
    pub fn may_hold_data(&self, pod: &str) -> bool {
        self.placed.contains_key(pod) || self.unsure.contains_key(pod)
    }

    /// The pods a worker is surely in: the connected ones, as the start window counts them.
    pub fn connected_pods(&self) -> BTreeSet<&str> {
        self.placed
            .iter()
            .filter(|(_, workers)| !workers.is_empty())
            .map(|(pod, _)| pod.as_str())
            .collect()
    }

    /// The addresses of the workers that are or may be in `pod`.
    pub fn addresses_in(&self, pod: &str) -> Vec<String> {
        self.placed
            .get(pod)
            .into_iter()
            .chain(self.unsure.get(pod))
            .flatten()
            .map(|w| w.address.clone())
            .collect()
    }
}

/// Matches the scheduler's workers to the live (not ended) pods among `pods` (see the module
/// docs for the rules).
///
/// # Example
/// ```
/// use dask_kube::*;
/// // A template that names its workers itself: the pod's IP still finds the pod.
/// let pod = WorkerPodState { name: "c-worker-abcde".into(), phase: PodPhase::Running,
///     deleting: false, created: 0, reason: None, ips: vec!["10.0.0.7".into()],
///     started: true, resource_version: None, unschedulable: false, start_gate: false };
/// let worker = SchedulerWorker { name: "alice".into(), address: "tcp://10.0.0.7:40123".into(),
///     nanny: None, managed_bytes: None, busy: None };
/// let placement = place_workers(&[pod], std::slice::from_ref(&worker));
/// assert_eq!(placement.placed["c-worker-abcde"], vec![&worker]);
/// ```
pub fn place_workers<'a>(pods: &[WorkerPodState], workers: &'a [SchedulerWorker]) -> Placement<'a> {
    let live: Vec<&WorkerPodState> = pods.iter().filter(|p| !p.phase.finished()).collect();
    let mut by_ip: BTreeMap<HostKey, Vec<&str>> = BTreeMap::new();
    for pod in &live {
        let keys: BTreeSet<HostKey> = pod.ips.iter().map(|ip| host_key(ip)).collect();
        for key in keys {
            by_ip.entry(key).or_default().push(pod.name.as_str());
        }
    }
    let names: BTreeSet<&str> = live.iter().map(|p| p.name.as_str()).collect();
    let started: BTreeSet<&str> = live
        .iter()
        .filter(|p| p.started)
        .map(|p| p.name.as_str())
        .collect();
    // Among several pods, a worker can only be in those that started (if any did).
    let plausible = |candidates: Vec<&'_ str>| -> Vec<String> {
        let running: Vec<&str> = candidates
            .iter()
            .copied()
            .filter(|p| started.contains(p))
            .collect();
        let chosen = if running.is_empty() {
            candidates
        } else {
            running
        };
        chosen.into_iter().map(str::to_owned).collect()
    };
    let mut placement = Placement::default();
    let mut nowhere: Vec<&SchedulerWorker> = Vec::new();
    for worker in workers {
        let host = address_host(&worker.address);
        let at_ip: &[&str] = by_ip.get(&host_key(host)).map_or(&[], Vec::as_slice);
        let candidates: Vec<String> = if let [pod] = at_ip {
            vec![(*pod).to_owned()]
        } else {
            let mut named = BTreeSet::new();
            pods_named_in(&worker.name, &names, &mut named);
            pods_named_in(host, &names, &mut named);
            if let Some(nanny) = &worker.nanny {
                pods_named_in(address_host(nanny), &names, &mut named);
            }
            let both: Vec<&str> = at_ip
                .iter()
                .copied()
                .filter(|p| named.contains(p))
                .collect();
            match (at_ip.is_empty(), both.is_empty()) {
                (true, _) => plausible(named.into_iter().collect()),
                (false, true) => plausible(at_ip.to_vec()),
                (false, false) => plausible(both),
            }
        };
        match candidates.as_slice() {
            [] => nowhere.push(worker),
            [pod] => placement
                .placed
                .entry(pod.clone())
                .or_default()
                .push(worker),
            several => {
                for pod in several {
                    placement
                        .unsure
                        .entry(pod.clone())
                        .or_default()
                        .push(worker);
                }
            }
        }
    }
    if !nowhere.is_empty() {
        // Not by IP, not by name: it may be in any started pod that no worker was placed in
        // (a pod's workers all listen on its IP; one that advertises another address does so
        // for a pod none of whose workers was found).
        for pod in live
            .iter()
            .filter(|p| p.started && !placement.placed.contains_key(&p.name))
        {
            placement
                .unsure
                .entry(pod.name.clone())
                .or_default()
                .extend(nowhere.iter().copied());
        }
    }
    placement
}

/// The workers surely in each pod (see [`place_workers`]), for listing which pod holds which
/// worker.
pub fn workers_by_pod<'a>(
    pods: &[WorkerPodState],
    workers: &'a [SchedulerWorker],
) -> BTreeMap<String, Vec<&'a SchedulerWorker>> {
    place_workers(pods, workers).placed
}

/// Why a pod is deleted without retiring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeleteReason {
    /// It ended (Succeeded/Failed); cleaning it up loses nothing.
    Finished,
    /// Pending and none of its containers started: no worker can be in it. Deleted only if
    /// unchanged since it was listed.
    Pending,
    /// Started, but the scheduler knows no worker that may be in it: holds no data. Deleted
    /// only if unchanged since it was listed.
    NotConnected,
    /// Forced: the user accepted losing its data.
    Forced,
}

impl DeleteReason {
    /// Whether the delete rests on the pod's listed state, and so is sent with its
    /// `resourceVersion` as a precondition.
    pub fn needs_unchanged_pod(self) -> bool {
        matches!(self, DeleteReason::Pending | DeleteReason::NotConnected)
    }
}

/// Why a pod that scale-down would have removed is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeepReason {
    /// The scheduler did not answer: whether a worker in it holds data is unknown.
    SchedulerSilent,
    /// A connected worker could not be matched to one pod and may be in this one.
    UnidentifiedWorker,
    /// The scheduler did not confirm retiring its workers (refused, timed out, or left them
    /// out of its answer).
    RetireNotConfirmed,
    /// After retiring, a worker is in it (a nanny restarted its worker at a new address).
    WorkerInPod,
    /// After retiring, the pods or the scheduler's workers could not be looked at again.
    NoFreshLook,
    /// It changed after it was listed (a container started): the API server refused the
    /// delete.
    Changed,
}

impl KeepReason {
    /// What it means, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            KeepReason::SchedulerSilent => {
                "the scheduler did not answer, so whether its workers hold data is unknown"
            }
            KeepReason::UnidentifiedWorker => {
                "a connected worker matches no single pod (not by IP, not by name) and may be in it"
            }
            KeepReason::RetireNotConfirmed => "the scheduler did not confirm retiring its workers",
            KeepReason::WorkerInPod => "a worker is in it again after retiring (restarted)",
            KeepReason::NoFreshLook => "after retiring, its workers could not be checked again",
            KeepReason::Changed => "it changed since it was listed (a container started)",
        }
    }
}

/// A pod kept although scale-down wanted it gone, since it may hold data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeptPod {
    /// Pod name.
    pub pod: String,
    /// Why.
    pub reason: KeepReason,
    /// Addresses of the workers concerned.
    pub workers: Vec<String>,
    /// The error behind it, when there is one.
    pub detail: Option<String>,
}

impl std::fmt::Display for KeptPod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: kept, {}", self.pod, self.reason.describe())?;
        if !self.workers.is_empty() {
            write!(f, " ({})", self.workers.join(", "))?;
        }
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

/// A pod to retire through the scheduler before deleting it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetireTarget {
    /// Pod name.
    pub pod: String,
    /// Addresses of its workers.
    pub addresses: Vec<String>,
}

/// What a scale-down does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ScaleDownPlan {
    /// Pods to delete at once, with the reason.
    pub delete_now: Vec<(String, DeleteReason)>,
    /// Pods to retire first (delete after the scheduler confirms).
    pub retire: Vec<RetireTarget>,
    /// Pods it would have removed but keeps, since they may hold data.
    pub kept: Vec<KeptPod>,
}

impl ScaleDownPlan {
    /// How many active workers this plan removes (finished pods do not count).
    pub fn removes(&self) -> usize {
        self.delete_now
            .iter()
            .filter(|(_, r)| *r != DeleteReason::Finished)
            .count()
            + self.retire.len()
    }
}

/// The worker pods that ended, when every worker pod of the cluster has ended and none is
/// left that could still connect: a flag `dask worker` refuses, an image that exits, a
/// memory limit below what a worker needs to start. Waiting for workers past that point
/// only runs out its timeout. `None` while any worker pod is Pending, Running or Unknown
/// (it may still connect), or when no pod ended (pods being deleted count for neither:
/// someone is scaling).
pub fn every_worker_pod_ended(pods: &[WorkerPodState]) -> Option<Vec<&WorkerPodState>> {
    if pods.iter().any(WorkerPodState::active) {
        return None;
    }
    let ended: Vec<&WorkerPodState> = pods.iter().filter(|p| p.ended()).collect();
    (!ended.is_empty()).then_some(ended)
}

/// `a (Failed, OOMKilled), b (Succeeded)`: the ended pods among `pods` for a message, at
/// most `limit` named; empty when none ended.
pub fn describe_ended_pods(pods: &[WorkerPodState], limit: usize) -> String {
    let ended: Vec<String> = pods
        .iter()
        .filter(|p| p.ended())
        .map(|p| match &p.reason {
            Some(reason) => format!("{} ({:?}, {reason})", p.name, p.phase),
            None => format!("{} ({:?})", p.name, p.phase),
        })
        .collect();
    match ended.len() {
        0 => String::new(),
        n if n > limit => format!("{} and {} more", ended[..limit].join(", "), n - limit),
        _ => ended.join(", "),
    }
}

/// Plans removing `n_to_remove` active worker pods (see the module docs for the order).
/// `workers` is the scheduler's answer, `None` when it did not answer: then only what holds
/// no worker for sure is removed and the rest is kept. With `force`, pods that may hold data
/// are deleted without retiring (their data is lost).
///
/// # Example
/// ```
/// use dask_kube::*;
/// let pod = |name: &str, phase, ip: &str| WorkerPodState {
///     name: name.into(), phase, deleting: false, created: 0, reason: None,
///     ips: vec![ip.into()], started: phase != PodPhase::Pending, resource_version: None,
///     unschedulable: false, start_gate: false };
/// let pods = [pod("w-a", PodPhase::Running, "10.0.0.1"), pod("w-b", PodPhase::Pending, ""),
///             pod("w-c", PodPhase::Failed, "10.0.0.3")];
/// let workers = [SchedulerWorker { name: "a".into(), address: "tcp://10.0.0.1:1".into(),
///     nanny: None, managed_bytes: None, busy: None }];
/// let plan = plan_scale_down(&pods, Some(&workers), 2, false);
/// assert_eq!(plan.delete_now, vec![("w-c".to_owned(), DeleteReason::Finished),
///                                  ("w-b".to_owned(), DeleteReason::Pending)]);
/// assert_eq!(plan.retire, vec![RetireTarget { pod: "w-a".into(),
///                                             addresses: vec!["tcp://10.0.0.1:1".into()] }]);
/// ```
pub fn plan_scale_down(
    pods: &[WorkerPodState],
    workers: Option<&[SchedulerWorker]>,
    n_to_remove: usize,
    force: bool,
) -> ScaleDownPlan {
    let mut plan = ScaleDownPlan::default();
    for pod in pods.iter().filter(|p| p.ended()) {
        plan.delete_now
            .push((pod.name.clone(), DeleteReason::Finished));
    }
    let placement = workers.map(|w| place_workers(pods, w));
    let may_hold = |pod: &WorkerPodState| {
        placement
            .as_ref()
            .is_some_and(|pl| pl.may_hold_data(&pod.name))
    };
    let mut active: Vec<&WorkerPodState> = pods.iter().filter(|p| p.active()).collect();
    // Newest first within each class: the most recent pods are the least likely to have
    // started or to hold anything.
    active.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| b.name.cmp(&a.name)));
    let mut remaining = n_to_remove;
    let mut taken: BTreeSet<&str> = BTreeSet::new();

    // 1. Not started: no worker can be in it, whatever the scheduler says.
    // 2. Started, and the scheduler answered and knows no worker that may be in it.
    let holds_none = |pod: &WorkerPodState| {
        if may_hold(pod) {
            None
        } else if pod.not_started() {
            Some(DeleteReason::Pending)
        } else {
            placement.as_ref().map(|_| DeleteReason::NotConnected)
        }
    };
    let mut empty: Vec<(&WorkerPodState, DeleteReason)> = active
        .iter()
        .filter_map(|pod| holds_none(pod).map(|reason| (*pod, reason)))
        .collect();
    // Stable: the first class first, newest first within each.
    empty.sort_by_key(|(_, reason)| *reason != DeleteReason::Pending);
    for (pod, reason) in empty.into_iter().take(remaining) {
        plan.delete_now.push((pod.name.clone(), reason));
        taken.insert(&pod.name);
        remaining -= 1;
    }
    if remaining == 0 {
        return plan;
    }
    let rest: Vec<&WorkerPodState> = active
        .iter()
        .copied()
        .filter(|p| !taken.contains(p.name.as_str()))
        .collect();
    let Some(placement) = placement else {
        // The scheduler did not answer: the rest may hold data.
        for pod in rest.into_iter().take(remaining) {
            if force {
                plan.delete_now
                    .push((pod.name.clone(), DeleteReason::Forced));
            } else {
                plan.kept.push(KeptPod {
                    pod: pod.name.clone(),
                    reason: KeepReason::SchedulerSilent,
                    workers: Vec::new(),
                    detail: None,
                });
            }
        }
        return plan;
    };
    // 3. Connected: idle before busy, least data first, newest first. A pod with a worker
    // that may be elsewhere is not retired on its own (retiring its sure workers would leave
    // the unsure one); it is kept, last.
    let rank = |pod: &WorkerPodState| {
        let workers: Vec<&SchedulerWorker> = placement
            .placed
            .get(&pod.name)
            .into_iter()
            .chain(placement.unsure.get(&pod.name))
            .flatten()
            .copied()
            .collect();
        let busy = workers.iter().any(|w| w.busy == Some(true));
        let bytes: u64 = workers.iter().map(|w| w.managed_bytes.unwrap_or(0)).sum();
        (
            !force && placement.unsure.contains_key(&pod.name),
            busy,
            bytes,
            std::cmp::Reverse(pod.created),
        )
    };
    let mut connected = rest;
    connected.sort_by_cached_key(|p| rank(p));
    for pod in connected.into_iter().take(remaining) {
        if force {
            plan.delete_now
                .push((pod.name.clone(), DeleteReason::Forced));
        } else if let Some(unsure) = placement.unsure.get(&pod.name) {
            plan.kept.push(KeptPod {
                pod: pod.name.clone(),
                reason: KeepReason::UnidentifiedWorker,
                workers: unsure.iter().map(|w| w.address.clone()).collect(),
                detail: None,
            });
        } else {
            plan.retire.push(RetireTarget {
                pod: pod.name.clone(),
                addresses: placement.addresses_in(&pod.name),
            });
        }
    }
    plan
}

/// After the scheduler answered a retirement: which of `targets` may be deleted, and which
/// are kept and why. `retired` holds the addresses the scheduler confirmed retired; `fresh`
/// is a look at the pods and then the scheduler's workers taken after that answer (`None`
/// when either could not be had). A pod is deleted only when every worker asked for is
/// confirmed *and* no worker the scheduler knows now may be in it (a nanny that restarted its
/// worker gives it a new address on the same pod).
pub fn retired_pods_to_delete(
    targets: &[RetireTarget],
    retired: &BTreeSet<String>,
    fresh: Option<(&[WorkerPodState], &[SchedulerWorker])>,
) -> (Vec<String>, Vec<KeptPod>) {
    let placement = fresh.map(|(pods, workers)| place_workers(pods, workers));
    let mut delete = Vec::new();
    let mut kept = Vec::new();
    for target in targets {
        let unconfirmed: Vec<String> = target
            .addresses
            .iter()
            .filter(|a| !retired.contains(*a))
            .cloned()
            .collect();
        let (reason, workers) = if !unconfirmed.is_empty() {
            (KeepReason::RetireNotConfirmed, unconfirmed)
        } else {
            match &placement {
                None => (KeepReason::NoFreshLook, Vec::new()),
                Some(pl) if pl.may_hold_data(&target.pod) => {
                    (KeepReason::WorkerInPod, pl.addresses_in(&target.pod))
                }
                Some(_) => {
                    delete.push(target.pod.clone());
                    continue;
                }
            }
        };
        kept.push(KeptPod {
            pod: target.pod.clone(),
            reason,
            workers,
            detail: None,
        });
    }
    (delete, kept)
}

/// Counts of a cluster's worker pods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WorkerCounts {
    /// Running (or Unknown) and not being deleted.
    pub running: usize,
    /// Pending and not being deleted: coming.
    pub pending: usize,
    /// Ended (Succeeded/Failed), not yet cleaned up.
    pub finished: usize,
    /// Being deleted.
    pub deleting: usize,
}

impl WorkerCounts {
    /// Counts pod states.
    pub fn of(pods: &[WorkerPodState]) -> Self {
        let mut counts = WorkerCounts::default();
        for pod in pods {
            if pod.deleting {
                counts.deleting += 1;
            } else if pod.phase.finished() {
                counts.finished += 1;
            } else if pod.phase == PodPhase::Pending {
                counts.pending += 1;
            } else {
                counts.running += 1;
            }
        }
        counts
    }

    /// Workers there or coming.
    pub fn active(&self) -> usize {
        self.running + self.pending
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rstest::rstest;

    fn ended(name: &str, phase: PodPhase, reason: Option<&str>) -> WorkerPodState {
        WorkerPodState {
            reason: reason.map(Into::into),
            ..mk_pod(name, phase, 0)
        }
    }

    fn deleting(name: &str, phase: PodPhase) -> WorkerPodState {
        WorkerPodState {
            deleting: true,
            ..mk_pod(name, phase, 0)
        }
    }

    #[rstest]
    #[case::no_pods(vec![], None)]
    #[case::every_pod_failed(vec![ended("a", PodPhase::Failed, Some("Error")), ended("b", PodPhase::Failed, None)], Some(vec!["a", "b"]))]
    #[case::succeeded_counts_as_ended(vec![ended("a", PodPhase::Succeeded, None)], Some(vec!["a"]))]
    #[case::one_still_pending(vec![ended("a", PodPhase::Failed, None), mk_pod("b", PodPhase::Pending, 0)], None)]
    #[case::one_still_running(vec![ended("a", PodPhase::Failed, None), mk_pod("b", PodPhase::Running, 0)], None)]
    #[case::unknown_may_come_back(vec![ended("a", PodPhase::Failed, None), mk_pod("b", PodPhase::Unknown, 0)], None)]
    #[case::all_running(vec![mk_pod("a", PodPhase::Running, 0)], None)]
    #[case::ended_pods_being_deleted_are_someone_scaling(vec![deleting("a", PodPhase::Failed)], None)]
    #[case::a_deleted_one_beside_an_ended_one(vec![deleting("a", PodPhase::Running), ended("b", PodPhase::Failed, None)], Some(vec!["b"]))]
    fn the_wait_for_workers_gives_up_only_when_every_worker_pod_ended(
        #[case] pods: Vec<WorkerPodState>,
        #[case] expected: Option<Vec<&str>>,
    ) {
        let got = every_worker_pod_ended(&pods)
            .map(|v| v.iter().map(|p| p.name.as_str()).collect::<Vec<_>>());
        assert_eq!(got, expected);
    }

    #[rstest]
    #[case::none_ended(vec![mk_pod("a", PodPhase::Running, 0)], 3, "")]
    #[case::with_and_without_reason(vec![ended("a", PodPhase::Failed, Some("OOMKilled")), mk_pod("b", PodPhase::Running, 0), ended("c", PodPhase::Succeeded, None)], 3, "a (Failed, OOMKilled), c (Succeeded)")]
    #[case::beyond_the_limit(vec![ended("a", PodPhase::Failed, None), ended("b", PodPhase::Failed, None), ended("c", PodPhase::Failed, None)], 2, "a (Failed), b (Failed) and 1 more")]
    #[case::being_deleted_is_not_named(vec![deleting("a", PodPhase::Failed)], 3, "")]
    fn ended_worker_pods_are_named_for_messages(
        #[case] pods: Vec<WorkerPodState>,
        #[case] limit: usize,
        #[case] expected: &str,
    ) {
        assert_eq!(describe_ended_pods(&pods, limit), expected);
    }

    /// A pod without IPs, started unless Pending (tests of the order name pods and workers
    /// alike, so the name rule places them).
    pub(crate) fn mk_pod(name: &str, phase: PodPhase, created: i64) -> WorkerPodState {
        WorkerPodState {
            name: name.into(),
            phase,
            deleting: false,
            created,
            reason: None,
            ips: Vec::new(),
            started: phase != PodPhase::Pending,
            resource_version: None,
            unschedulable: false,
            start_gate: false,
        }
    }

    /// A started pod at `ip`.
    fn at(name: &str, ip: &str) -> WorkerPodState {
        WorkerPodState {
            ips: vec![ip.into()],
            ..mk_pod(name, PodPhase::Running, 0)
        }
    }

    /// A pod that is Pending with no container started yet, at `ip` (`""`: none yet).
    fn unstarted(name: &str, ip: &str) -> WorkerPodState {
        WorkerPodState {
            ips: if ip.is_empty() {
                vec![]
            } else {
                vec![ip.into()]
            },
            ..mk_pod(name, PodPhase::Pending, 0)
        }
    }

    fn mk_worker(name: &str, bytes: u64, busy: bool) -> SchedulerWorker {
        SchedulerWorker {
            name: name.into(),
            address: format!("tcp://{name}:1"),
            nanny: None,
            managed_bytes: Some(bytes),
            busy: Some(busy),
        }
    }

    /// Worker `name` listening at `address` (`10.0.0.1:40000`).
    fn listening(name: &str, address: &str) -> SchedulerWorker {
        SchedulerWorker {
            name: name.into(),
            address: format!("tcp://{address}"),
            nanny: None,
            managed_bytes: Some(0),
            busy: Some(false),
        }
    }

    #[rstest]
    #[case::ipv4("tcp://10.0.0.1:8786", "10.0.0.1")]
    #[case::tls("tls://10.0.0.1:8786", "10.0.0.1")]
    #[case::ipv6("tcp://[fd00::1]:8786", "fd00::1")]
    #[case::hostname("tcp://w-1.dask.ns.svc:8786", "w-1.dask.ns.svc")]
    #[case::no_port("tcp://10.0.0.1", "10.0.0.1")]
    #[case::no_scheme("10.0.0.1:1", "10.0.0.1")]
    #[case::bare_ipv6("fd00::1", "fd00::1")]
    fn the_host_of_a_dask_address(#[case] address: &str, #[case] host: &str) {
        assert_eq!(address_host(address), host);
    }

    type Where<'a> = Vec<(&'a str, Vec<&'a str>)>;

    fn names_of<'a>(
        map: &'a BTreeMap<String, Vec<&SchedulerWorker>>,
    ) -> Vec<(&'a str, Vec<&'a str>)> {
        map.iter()
            .map(|(pod, ws)| (pod.as_str(), ws.iter().map(|w| w.name.as_str()).collect()))
            .collect()
    }

    #[rstest]
    #[case::default_names(vec![at("a", "10.0.0.1"), at("b", "10.0.0.2")], vec![listening("a", "10.0.0.1:4"), listening("b", "10.0.0.2:4")], vec![("a", vec!["a"]), ("b", vec!["b"])], vec![])]
    #[case::custom_names_by_ip(vec![at("a", "10.0.0.1"), at("b", "10.0.0.2")], vec![listening("alice", "10.0.0.1:4"), listening("bob", "10.0.0.2:4")], vec![("a", vec!["alice"]), ("b", vec!["bob"])], vec![])]
    #[case::the_ip_wins_over_a_misleading_name(vec![at("a", "10.0.0.1"), at("b", "10.0.0.2")], vec![listening("b", "10.0.0.1:4")], vec![("a", vec!["b"])], vec![])]
    #[case::ipv6_spelled_differently(vec![at("a", "fd00:0:0::1")], vec![listening("x", "[fd00::1]:4")], vec![("a", vec!["x"])], vec![])]
    #[case::nworkers_share_the_pod_ip(vec![at("p", "10.0.0.1")], vec![listening("p-0", "10.0.0.1:4"), listening("p-1", "10.0.0.1:5")], vec![("p", vec!["p-0", "p-1"])], vec![])]
    #[case::a_stale_ip_of_an_ended_pod(vec![WorkerPodState { phase: PodPhase::Failed, ..at("old", "10.0.0.1") }, at("new", "10.0.0.1")], vec![listening("x", "10.0.0.1:4")], vec![("new", vec!["x"])], vec![])]
    #[case::host_network_default_names(vec![at("a", "192.168.0.5"), at("b", "192.168.0.5")], vec![listening("a", "192.168.0.5:4"), listening("b", "192.168.0.5:5")], vec![("a", vec!["a"]), ("b", vec!["b"])], vec![])]
    #[case::host_network_pod_name_in_a_custom_name(vec![at("c-worker-ab", "192.168.0.5"), at("c-worker-cd", "192.168.0.5")], vec![listening("c-worker-ab-w", "192.168.0.5:4")], vec![("c-worker-ab", vec!["c-worker-ab-w"])], vec![])]
    #[case::host_network_names_that_say_nothing(vec![at("a", "192.168.0.5"), at("b", "192.168.0.5")], vec![listening("alice", "192.168.0.5:4")], vec![], vec![("a", vec!["alice"]), ("b", vec!["alice"])])]
    #[case::host_network_a_pod_not_started_holds_none(vec![at("a", "192.168.0.5"), unstarted("b", "192.168.0.5")], vec![listening("alice", "192.168.0.5:4")], vec![("a", vec!["alice"])], vec![])]
    #[case::ip_not_in_the_status_yet_named(vec![at("a", "10.0.0.1"), WorkerPodState { ips: vec![], ..at("b", "") }], vec![listening("a", "10.0.0.1:4"), listening("b-w", "10.0.0.9:4")], vec![("a", vec!["a"]), ("b", vec!["b-w"])], vec![])]
    #[case::ip_not_in_the_status_yet_unnamed(vec![at("a", "10.0.0.1"), WorkerPodState { ips: vec![], ..at("b", "") }, unstarted("c", "")], vec![listening("a", "10.0.0.1:4"), listening("zed", "10.0.0.9:4")], vec![("a", vec!["a"])], vec![("b", vec!["zed"])])]
    #[case::contact_address_naming_the_pod(vec![at("a", "10.0.0.1"), at("b", "10.0.0.2")], vec![listening("x", "b.workers.ns.svc:4")], vec![("b", vec!["x"])], vec![])]
    #[case::a_longer_name_is_not_the_pod(vec![at("c-worker-ab", "10.0.0.1")], vec![listening("c-worker-abc", "10.9.9.9:4")], vec![], vec![("c-worker-ab", vec!["c-worker-abc"])])]
    fn workers_are_placed_by_what_the_pod_is(
        #[case] pods: Vec<WorkerPodState>,
        #[case] workers: Vec<SchedulerWorker>,
        #[case] placed: Where<'_>,
        #[case] unsure: Where<'_>,
    ) {
        let placement = place_workers(&pods, &workers);
        assert_eq!(names_of(&placement.placed), placed, "placed");
        assert_eq!(names_of(&placement.unsure), unsure, "unsure");
    }

    #[test]
    fn a_nanny_named_after_its_pod_places_its_worker() {
        let pods = [at("a", "192.168.0.5"), at("b", "192.168.0.5")];
        let worker = SchedulerWorker {
            nanny: Some("tcp://b.nannies.ns.svc:9".into()),
            ..listening("alice", "192.168.0.5:4")
        };
        let placement = place_workers(&pods, std::slice::from_ref(&worker));
        assert_eq!(names_of(&placement.placed), vec![("b", vec!["alice"])]);
    }

    fn cluster() -> (Vec<WorkerPodState>, Vec<SchedulerWorker>) {
        let pods = vec![
            mk_pod("done", PodPhase::Succeeded, 1),
            mk_pod("oom", PodPhase::Failed, 2),
            mk_pod("old-pending", PodPhase::Pending, 3),
            mk_pod("new-pending", PodPhase::Pending, 9),
            mk_pod("starting", PodPhase::Running, 8),
            mk_pod("busy", PodPhase::Running, 4),
            mk_pod("heavy", PodPhase::Running, 5),
            mk_pod("light", PodPhase::Running, 6),
            WorkerPodState {
                deleting: true,
                ..mk_pod("going", PodPhase::Running, 7)
            },
        ];
        let workers = vec![
            mk_worker("busy", 10, true),
            mk_worker("heavy", 1_000, false),
            mk_worker("light", 10, false),
            mk_worker("going", 0, false),
        ];
        (pods, workers)
    }

    fn names(plan: &ScaleDownPlan) -> (Vec<&str>, Vec<&str>) {
        (
            plan.delete_now.iter().map(|(n, _)| n.as_str()).collect(),
            plan.retire.iter().map(|t| t.pod.as_str()).collect(),
        )
    }

    fn kept(plan: &ScaleDownPlan) -> Vec<(&str, KeepReason)> {
        plan.kept
            .iter()
            .map(|k| (k.pod.as_str(), k.reason))
            .collect()
    }

    #[rstest]
    #[case::nothing_to_remove_still_cleans_finished(0, false, vec!["done", "oom"], vec![])]
    #[case::pending_newest_first(1, false, vec!["done", "oom", "new-pending"], vec![])]
    #[case::all_pending(2, false, vec!["done", "oom", "new-pending", "old-pending"], vec![])]
    #[case::then_not_connected(3, false, vec!["done", "oom", "new-pending", "old-pending", "starting"], vec![])]
    #[case::then_idle_least_data(4, false, vec!["done", "oom", "new-pending", "old-pending", "starting"], vec!["light"])]
    #[case::busy_last(6, false, vec!["done", "oom", "new-pending", "old-pending", "starting"], vec!["light", "heavy", "busy"])]
    #[case::more_than_there_is(20, false, vec!["done", "oom", "new-pending", "old-pending", "starting"], vec!["light", "heavy", "busy"])]
    #[case::forced_deletes_without_retiring(4, true, vec!["done", "oom", "new-pending", "old-pending", "starting", "light"], vec![])]
    fn scale_down_order(
        #[case] n: usize,
        #[case] force: bool,
        #[case] delete_now: Vec<&str>,
        #[case] retire: Vec<&str>,
    ) {
        let (pods, workers) = cluster();
        let plan = plan_scale_down(&pods, Some(&workers), n, force);
        assert_eq!(names(&plan), (delete_now, retire));
        assert!(plan.removes() <= n);
        assert!(plan.kept.is_empty());
    }

    #[test]
    fn multi_worker_pods_retire_all_their_workers() {
        let pods = vec![mk_pod("p", PodPhase::Running, 1)];
        let workers = vec![mk_worker("p-0", 0, false), mk_worker("p-1", 0, false)];
        let plan = plan_scale_down(&pods, Some(&workers), 1, false);
        assert_eq!(
            plan.retire,
            vec![RetireTarget {
                pod: "p".into(),
                addresses: vec!["tcp://p-0:1".into(), "tcp://p-1:1".into()]
            }]
        );
    }

    /// Issue 24, case 1: workers named by the template (`--name $(POD_NAME)-w` or anything)
    /// are retired like any other, not deleted as "not connected".
    #[rstest]
    #[case::pod_name_and_suffix("w")]
    #[case::unrelated_names("")]
    fn workers_with_custom_names_are_retired_not_deleted(#[case] suffix: &str) {
        let pods = vec![
            WorkerPodState {
                created: 1,
                ..at("c-worker-aaaaa", "10.0.0.1")
            },
            WorkerPodState {
                created: 2,
                ..at("c-worker-bbbbb", "10.0.0.2")
            },
        ];
        let name = |pod: &str, other: &str| {
            if suffix.is_empty() {
                other.to_owned()
            } else {
                format!("{pod}-{suffix}")
            }
        };
        let workers = vec![
            listening(&name("c-worker-aaaaa", "alice"), "10.0.0.1:4"),
            listening(&name("c-worker-bbbbb", "bob"), "10.0.0.2:4"),
        ];
        let plan = plan_scale_down(&pods, Some(&workers), 1, false);
        assert!(plan.delete_now.is_empty(), "{plan:?}");
        assert_eq!(
            plan.retire,
            vec![RetireTarget {
                pod: "c-worker-bbbbb".into(),
                addresses: vec!["tcp://10.0.0.2:4".into()]
            }]
        );
    }

    /// Issue 24, case 4: without the scheduler's answer only pods none of whose containers
    /// started go; Running, Unknown and started Pending pods are kept.
    #[rstest]
    #[case::keeps_what_may_hold_data(false, vec!["unstarted"], vec![("running", KeepReason::SchedulerSilent), ("unknown", KeepReason::SchedulerSilent), ("started-pending", KeepReason::SchedulerSilent)])]
    #[case::forced_deletes_them(true, vec!["unstarted", "running", "unknown", "started-pending"], vec![])]
    fn without_the_scheduler_only_unstarted_pods_go(
        #[case] force: bool,
        #[case] deleted: Vec<&str>,
        #[case] expected_kept: Vec<(&str, KeepReason)>,
    ) {
        let pods = vec![
            WorkerPodState {
                created: 4,
                ..unstarted("unstarted", "10.0.0.4")
            },
            WorkerPodState {
                created: 3,
                ..at("running", "10.0.0.3")
            },
            WorkerPodState {
                created: 2,
                phase: PodPhase::Unknown,
                ..at("unknown", "10.0.0.2")
            },
            WorkerPodState {
                created: 1,
                phase: PodPhase::Pending,
                ..at("started-pending", "10.0.0.1")
            },
        ];
        let plan = plan_scale_down(&pods, None, 4, force);
        assert_eq!(names(&plan), (deleted, vec![]));
        assert_eq!(kept(&plan), expected_kept);
    }

    #[test]
    fn an_unknown_pod_without_workers_goes_when_the_scheduler_says_so() {
        let pods = vec![WorkerPodState {
            phase: PodPhase::Unknown,
            ..at("unknown", "10.0.0.2")
        }];
        let plan = plan_scale_down(&pods, Some(&[]), 1, false);
        assert_eq!(
            plan.delete_now,
            vec![("unknown".to_owned(), DeleteReason::NotConnected)]
        );
    }

    /// Issue 24, case 2: a worker whose pod was listed before it started (no IP yet, no
    /// container started) but that connected before the scheduler was asked: the pod is not
    /// deleted as Pending.
    #[test]
    fn a_pending_pod_with_a_connected_worker_is_retired() {
        let pods = vec![
            WorkerPodState {
                created: 1,
                ..at("c-worker-aaaaa", "10.0.0.1")
            },
            WorkerPodState {
                created: 2,
                ..unstarted("c-worker-bbbbb", "")
            },
        ];
        let workers = vec![
            listening("c-worker-aaaaa", "10.0.0.1:4"),
            listening("c-worker-bbbbb", "10.0.0.2:4"),
        ];
        let plan = plan_scale_down(&pods, Some(&workers), 1, false);
        assert!(plan.delete_now.is_empty(), "{plan:?}");
        assert_eq!(names(&plan).1, vec!["c-worker-bbbbb"]);
    }

    /// A worker that matches no pod may be in any started pod no worker was placed in: none
    /// of those is deleted as empty or retired on its own; pods with known workers still are.
    #[test]
    fn an_unidentified_worker_keeps_the_pods_it_may_be_in() {
        let pods = vec![
            WorkerPodState {
                created: 1,
                ..at("a", "10.0.0.1")
            },
            WorkerPodState {
                created: 2,
                ..at("b", "10.0.0.2")
            },
            WorkerPodState {
                created: 3,
                ..unstarted("c", "")
            },
        ];
        let workers = vec![
            listening("a", "10.0.0.1:4"),
            listening("zed", "203.0.113.9:4"),
        ];
        let plan = plan_scale_down(&pods, Some(&workers), 3, false);
        assert_eq!(names(&plan), (vec!["c"], vec!["a"]));
        assert_eq!(kept(&plan), vec![("b", KeepReason::UnidentifiedWorker)]);
        assert_eq!(plan.kept[0].workers, vec!["tcp://203.0.113.9:4".to_owned()]);
    }

    fn target(pod: &str, addresses: &[&str]) -> RetireTarget {
        RetireTarget {
            pod: pod.into(),
            addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
        }
    }

    /// Issue 24, case 3 and the scheduler's failures: a pod goes only when the scheduler
    /// confirmed every worker and a fresh look finds none in it.
    #[rstest]
    #[case::confirmed_and_gone(&["tcp://10.0.0.1:4", "tcp://10.0.0.1:5"], Some(vec![]), None)]
    #[case::partial(&["tcp://10.0.0.1:4"], Some(vec![]), Some(KeepReason::RetireNotConfirmed))]
    #[case::refused_and_the_worker_vanished(&[], Some(vec![]), Some(KeepReason::RetireNotConfirmed))]
    #[case::refused_still_connected(&[], Some(vec![listening("p-0", "10.0.0.1:4")]), Some(KeepReason::RetireNotConfirmed))]
    #[case::nanny_restarted_at_a_new_address(&["tcp://10.0.0.1:4", "tcp://10.0.0.1:5"], Some(vec![listening("p-0", "10.0.0.1:6")]), Some(KeepReason::WorkerInPod))]
    #[case::restarted_under_a_custom_name(&["tcp://10.0.0.1:4", "tcp://10.0.0.1:5"], Some(vec![listening("alice", "10.0.0.1:6")]), Some(KeepReason::WorkerInPod))]
    #[case::no_fresh_look(&["tcp://10.0.0.1:4", "tcp://10.0.0.1:5"], None, Some(KeepReason::NoFreshLook))]
    fn a_retired_pod_is_deleted_only_when_confirmed_and_empty(
        #[case] retired: &[&str],
        #[case] fresh_workers: Option<Vec<SchedulerWorker>>,
        #[case] expected: Option<KeepReason>,
    ) {
        let targets = [target("p", &["tcp://10.0.0.1:4", "tcp://10.0.0.1:5"])];
        let pods = [at("p", "10.0.0.1"), at("q", "10.0.0.2")];
        let retired: BTreeSet<String> = retired.iter().map(|a| (*a).to_owned()).collect();
        let fresh = fresh_workers.as_ref().map(|ws| (&pods[..], ws.as_slice()));
        let (delete, kept) = retired_pods_to_delete(&targets, &retired, fresh);
        match expected {
            None => {
                assert_eq!(delete, vec!["p".to_owned()]);
                assert!(kept.is_empty());
            }
            Some(reason) => {
                assert!(delete.is_empty(), "{delete:?}");
                assert_eq!(
                    kept.iter().map(|k| k.reason).collect::<Vec<_>>(),
                    vec![reason]
                );
            }
        }
    }

    #[test]
    fn kept_pods_say_why_and_which_workers() {
        let kept = KeptPod {
            pod: "p".into(),
            reason: KeepReason::RetireNotConfirmed,
            workers: vec!["tcp://10.0.0.1:4".into()],
            detail: Some("the Dask scheduler answered 500".into()),
        };
        assert_eq!(
            kept.to_string(),
            "p: kept, the scheduler did not confirm retiring its workers (tcp://10.0.0.1:4): \
             the Dask scheduler answered 500"
        );
    }

    #[test]
    fn counts_pending_as_coming() {
        let (pods, _) = cluster();
        let counts = WorkerCounts::of(&pods);
        assert_eq!(
            counts,
            WorkerCounts {
                running: 4,
                pending: 2,
                finished: 2,
                deleting: 1
            }
        );
        assert_eq!(counts.active(), 6);
    }

    #[test]
    fn reads_failure_reason_from_pod() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "w", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "status": {"phase": "Failed", "containerStatuses": [{
                "name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}
            }]}
        }))
        .unwrap();
        let state = WorkerPodState::from_pod(&pod);
        assert_eq!(state.phase, PodPhase::Failed);
        assert_eq!(state.reason.as_deref(), Some("OOMKilled"));
        assert_eq!(state.created, 1_767_225_600);
    }

    #[rstest]
    #[case::pending_waiting(json!({"phase": "Pending", "containerStatuses": [{"name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}}]}), false, vec![])]
    #[case::pending_unscheduled(json!({"phase": "Pending"}), false, vec![])]
    #[case::pending_with_a_running_container(json!({"phase": "Pending", "podIP": "10.0.0.1", "containerStatuses": [{"name": "c", "image": "i", "imageID": "", "ready": true, "restartCount": 0, "state": {"running": {}}}]}), true, vec!["10.0.0.1"])]
    #[case::running_dual_stack(json!({"phase": "Running", "podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}]}), true, vec!["10.0.0.1", "fd00::1"])]
    #[case::unknown(json!({"phase": "Unknown", "podIP": "10.0.0.1"}), true, vec!["10.0.0.1"])]
    fn reads_ips_and_whether_a_container_started(
        #[case] status: serde_json::Value,
        #[case] started: bool,
        #[case] ips: Vec<&str>,
    ) {
        let pod: Pod = serde_json::from_value(
            json!({"metadata": {"name": "w", "resourceVersion": "42"}, "status": status}),
        )
        .unwrap();
        let state = WorkerPodState::from_pod(&pod);
        assert_eq!(state.started, started);
        assert_eq!(state.ips, ips);
        assert_eq!(state.resource_version.as_deref(), Some("42"));
    }

    use serde_json::json;
}
