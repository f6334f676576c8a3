//! Pod status as the kubelet reports it: phase (kubelet `getPhase`), conditions
//! (`Initialized`, `ContainersReady`, `Ready`, `PodReadyToStartContainers`) and container
//! statuses, computed from what the agent knows about each container.
//!
//! Pure: the pod worker keeps [`ContainerRecord`]s up to date and asks this module what to
//! write to `pods/status`.

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, PodCondition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// How a container run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Terminated {
    /// Exit code (128 + signal when killed by a signal).
    pub exit_code: i32,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
    /// `Completed`, `Error`, `OOMKilled`, `ContainerStatusUnknown`.
    pub reason: String,
    /// Optional detail.
    pub message: Option<String>,
    /// When the run started.
    pub started_at: Timestamp,
    /// When it ended.
    pub finished_at: Timestamp,
    /// `process://<pid>` of the run.
    pub container_id: String,
}

impl Terminated {
    /// The kubelet's reason for an exit: `OOMKilled` wins, then `Completed` for 0, else `Error`.
    pub fn reason_for(exit_code: i32, oom_killed: bool) -> &'static str {
        if oom_killed {
            "OOMKilled"
        } else if exit_code == 0 {
            "Completed"
        } else {
            "Error"
        }
    }
}

/// The current state of a container.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Not running: `ContainerCreating`, `PodInitializing`, `CrashLoopBackOff`,
    /// `CreateContainerConfigError`, `RunContainerError`.
    Waiting {
        /// Reason.
        reason: String,
        /// Detail.
        message: Option<String>,
    },
    /// Running since `started_at`.
    Running {
        /// When the process started.
        started_at: Timestamp,
        /// `process://<pid>`.
        container_id: String,
    },
    /// Exited.
    Terminated(Terminated),
}

/// Everything the agent knows about one (init) container of a pod.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerRecord {
    /// Container name.
    pub name: String,
    /// Image as written in the spec.
    pub image: String,
    /// Which local environment ran it (see the image mapping).
    pub image_id: String,
    /// Current state.
    pub state: State,
    /// The previous run, if it was restarted.
    pub last_terminated: Option<Terminated>,
    /// How many times it was restarted.
    pub restart_count: i32,
}

impl ContainerRecord {
    /// A container that has not started yet, waiting for `reason`.
    pub fn waiting(name: &str, image: &str, image_id: &str, reason: &str) -> Self {
        Self {
            name: name.to_string(),
            image: image.to_string(),
            image_id: image_id.to_string(),
            state: State::Waiting {
                reason: reason.to_string(),
                message: None,
            },
            last_terminated: None,
            restart_count: 0,
        }
    }

    /// Running means ready: readiness probes are not run by this agent.
    pub fn is_running(&self) -> bool {
        matches!(self.state, State::Running { .. })
    }

    /// The terminated state of the current run, if it ended.
    pub fn terminated(&self) -> Option<&Terminated> {
        match &self.state {
            State::Terminated(t) => Some(t),
            _ => None,
        }
    }

    /// The API form.
    pub fn to_status(&self) -> ContainerStatus {
        let running = self.is_running();
        ContainerStatus {
            name: self.name.clone(),
            image: self.image.clone(),
            image_id: self.image_id.clone(),
            container_id: match &self.state {
                State::Running { container_id, .. } => Some(container_id.clone()),
                State::Terminated(t) => Some(t.container_id.clone()),
                State::Waiting { .. } => self
                    .last_terminated
                    .as_ref()
                    .map(|t| t.container_id.clone()),
            },
            state: Some(state_api(&self.state)),
            last_state: Some(
                self.last_terminated
                    .as_ref()
                    .map(|t| ContainerState {
                        terminated: Some(terminated_api(t)),
                        ..Default::default()
                    })
                    .unwrap_or_default(),
            ),
            ready: running,
            started: Some(running),
            restart_count: self.restart_count,
            ..Default::default()
        }
    }
}

fn terminated_api(t: &Terminated) -> ContainerStateTerminated {
    ContainerStateTerminated {
        exit_code: t.exit_code,
        signal: t.signal,
        reason: Some(t.reason.clone()),
        message: t.message.clone(),
        started_at: Some(Time(t.started_at)),
        finished_at: Some(Time(t.finished_at)),
        container_id: Some(t.container_id.clone()),
    }
}

fn state_api(state: &State) -> ContainerState {
    match state {
        State::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: message.clone(),
            }),
            ..Default::default()
        },
        State::Running { started_at, .. } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(Time(*started_at)),
            }),
            ..Default::default()
        },
        State::Terminated(t) => ContainerState {
            terminated: Some(terminated_api(t)),
            ..Default::default()
        },
    }
}

/// A pod phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Accepted, not all containers started.
    Pending,
    /// Bound and at least one container running (or restarting).
    Running,
    /// All containers exited 0 and will not restart.
    Succeeded,
    /// All containers ended, at least one in failure, and none will restart.
    Failed,
}

impl Phase {
    /// The API string.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        }
    }

    /// Succeeded or Failed: nothing runs any more and nothing will.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }
}

/// The kubelet's `getPhase`. `pod_is_terminal` is set once every container was stopped for
/// good (deletion, or restartPolicy says no more restarts).
pub fn phase(
    restart_policy: &str,
    init: &[ContainerRecord],
    containers: &[ContainerRecord],
    pod_is_terminal: bool,
) -> Phase {
    let mut pending_init = 0;
    let mut failed_init = 0;
    for c in init {
        match &c.state {
            State::Running { .. } => pending_init += 1,
            State::Terminated(t) => {
                if t.exit_code != 0 {
                    failed_init += 1;
                }
            }
            State::Waiting { .. } => match &c.last_terminated {
                Some(t) if t.exit_code != 0 => failed_init += 1,
                Some(_) => {}
                None => pending_init += 1,
            },
        }
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for c in containers {
        match &c.state {
            State::Running { .. } => running += 1,
            State::Terminated(t) => {
                stopped += 1;
                if t.exit_code == 0 {
                    succeeded += 1;
                }
            }
            State::Waiting { .. } => {
                if c.last_terminated.is_some() {
                    stopped += 1;
                } else {
                    waiting += 1;
                }
            }
        }
    }
    if failed_init > 0 && restart_policy == "Never" {
        return Phase::Failed;
    }
    if pod_is_terminal && running == 0 && waiting == 0 && pending_init == 0 {
        // Everything was stopped for good: the kubelet reports a terminal phase.
        return if stopped > 0 && stopped == succeeded {
            Phase::Succeeded
        } else {
            Phase::Failed
        };
    }
    if pending_init > 0 || waiting > 0 {
        return Phase::Pending;
    }
    if running > 0 {
        return Phase::Running;
    }
    if stopped > 0 {
        if restart_policy == "Always" {
            return Phase::Running;
        }
        if stopped == succeeded {
            return Phase::Succeeded;
        }
        if restart_policy == "Never" {
            return Phase::Failed;
        }
        return Phase::Running;
    }
    Phase::Pending
}

fn condition(
    type_: &str,
    ok: bool,
    reason: Option<&str>,
    message: Option<String>,
    previous: &[PodCondition],
    now: Timestamp,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    // The transition time moves only when the status changes, as in the kubelet.
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    PodCondition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.map(str::to_string),
        message,
        last_transition_time: Some(last_transition_time),
        last_probe_time: None,
        observed_generation: None,
    }
}

fn names(list: &[&ContainerRecord]) -> String {
    format!(
        "[{}]",
        list.iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    )
}

/// The conditions the kubelet owns (PodScheduled belongs to the scheduler).
pub fn conditions(
    phase: Phase,
    sandbox_ready: bool,
    init: &[ContainerRecord],
    containers: &[ContainerRecord],
    previous: &[PodCondition],
    now: Timestamp,
) -> Vec<PodCondition> {
    let mut out = Vec::with_capacity(4);
    out.push(condition(
        "PodReadyToStartContainers",
        sandbox_ready,
        None,
        None,
        previous,
        now,
    ));

    let incomplete: Vec<&ContainerRecord> = init
        .iter()
        .filter(|c| c.terminated().is_none_or(|t| t.exit_code != 0))
        .collect();
    out.push(if incomplete.is_empty() {
        condition("Initialized", true, None, None, previous, now)
    } else if phase == Phase::Succeeded {
        condition(
            "Initialized",
            true,
            Some("PodCompleted"),
            None,
            previous,
            now,
        )
    } else {
        condition(
            "Initialized",
            false,
            Some("ContainersNotInitialized"),
            Some(format!(
                "containers with incomplete status: {}",
                names(&incomplete)
            )),
            previous,
            now,
        )
    });

    let unready: Vec<&ContainerRecord> = containers.iter().filter(|c| !c.is_running()).collect();
    for type_ in ["ContainersReady", "Ready"] {
        out.push(if phase.is_terminal() {
            condition(type_, false, Some("PodCompleted"), None, previous, now)
        } else if unready.is_empty() {
            condition(type_, true, None, None, previous, now)
        } else {
            condition(
                type_,
                false,
                Some("ContainersNotReady"),
                Some(format!(
                    "containers with unready status: {}",
                    names(&unready)
                )),
                previous,
                now,
            )
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    fn running(name: &str) -> ContainerRecord {
        ContainerRecord {
            state: State::Running {
                started_at: ts(0),
                container_id: "process://1".into(),
            },
            ..ContainerRecord::waiting(name, "img", "local://img", "")
        }
    }

    fn waiting(name: &str, reason: &str) -> ContainerRecord {
        ContainerRecord::waiting(name, "img", "local://img", reason)
    }

    fn exited(name: &str, code: i32) -> ContainerRecord {
        ContainerRecord {
            state: State::Terminated(Terminated {
                exit_code: code,
                signal: None,
                reason: Terminated::reason_for(code, false).into(),
                message: None,
                started_at: ts(0),
                finished_at: ts(1),
                container_id: "process://1".into(),
            }),
            ..waiting(name, "")
        }
    }

    fn backing_off(name: &str, last_code: i32) -> ContainerRecord {
        let mut c = waiting(name, "CrashLoopBackOff");
        c.last_terminated = exited(name, last_code).terminated().cloned();
        c.restart_count = 1;
        c
    }

    #[rstest]
    #[case::all_waiting("Always", vec![], vec![waiting("a", "ContainerCreating")], false, Phase::Pending)]
    #[case::running("Never", vec![], vec![running("a")], false, Phase::Running)]
    #[case::one_running_one_waiting("Never", vec![], vec![running("a"), waiting("b", "ContainerCreating")], false, Phase::Pending)]
    #[case::never_exit_0("Never", vec![], vec![exited("a", 0)], false, Phase::Succeeded)]
    #[case::never_exit_3("Never", vec![], vec![exited("a", 3)], false, Phase::Failed)]
    #[case::never_mixed_exits("Never", vec![], vec![exited("a", 0), exited("b", 1)], false, Phase::Failed)]
    #[case::never_one_still_running("Never", vec![], vec![exited("a", 1), running("b")], false, Phase::Running)]
    #[case::always_exit_0_restarts("Always", vec![], vec![exited("a", 0)], false, Phase::Running)]
    #[case::always_in_backoff("Always", vec![], vec![backing_off("a", 1)], false, Phase::Running)]
    #[case::on_failure_exit_0("OnFailure", vec![], vec![exited("a", 0)], false, Phase::Succeeded)]
    #[case::on_failure_exit_1_restarts("OnFailure", vec![], vec![exited("a", 1)], false, Phase::Running)]
    #[case::init_running("Never", vec![running("i")], vec![waiting("a", "PodInitializing")], false, Phase::Pending)]
    #[case::init_failed_never("Never", vec![exited("i", 1)], vec![waiting("a", "PodInitializing")], false, Phase::Failed)]
    #[case::init_failed_always_retries("Always", vec![backing_off("i", 1)], vec![waiting("a", "PodInitializing")], false, Phase::Pending)]
    #[case::init_done_main_running("Never", vec![exited("i", 0)], vec![running("a")], false, Phase::Running)]
    #[case::deleted_always_sigterm("Always", vec![], vec![exited("a", 143)], true, Phase::Failed)]
    #[case::deleted_always_clean_exit("Always", vec![], vec![exited("a", 0)], true, Phase::Succeeded)]
    fn phases(
        #[case] policy: &str,
        #[case] init: Vec<ContainerRecord>,
        #[case] containers: Vec<ContainerRecord>,
        #[case] terminal: bool,
        #[case] expected: Phase,
    ) {
        assert_eq!(phase(policy, &init, &containers, terminal), expected);
    }

    fn cond<'a>(cs: &'a [PodCondition], t: &str) -> &'a PodCondition {
        cs.iter().find(|c| c.type_ == t).unwrap()
    }

    #[rstest]
    #[case::running_is_ready(Phase::Running, vec![], vec![running("a")], "True", "True", None)]
    #[case::waiting_container_not_ready(Phase::Pending, vec![], vec![running("a"), waiting("b", "x")], "True", "False", Some("containers with unready status: [b]"))]
    #[case::init_incomplete(Phase::Pending, vec![running("i1"), waiting("i2", "x")], vec![waiting("a", "PodInitializing")], "False", "False", Some("containers with unready status: [a]"))]
    #[case::succeeded_pod_completed(Phase::Succeeded, vec![], vec![exited("a", 0)], "True", "False", None)]
    fn pod_conditions(
        #[case] phase: Phase,
        #[case] init: Vec<ContainerRecord>,
        #[case] containers: Vec<ContainerRecord>,
        #[case] initialized: &str,
        #[case] ready: &str,
        #[case] ready_message: Option<&str>,
    ) {
        let cs = conditions(phase, true, &init, &containers, &[], ts(5));
        assert_eq!(cond(&cs, "Initialized").status, initialized);
        assert_eq!(cond(&cs, "Ready").status, ready);
        assert_eq!(cond(&cs, "ContainersReady").status, ready);
        assert_eq!(cond(&cs, "Ready").message.as_deref(), ready_message);
        assert_eq!(cond(&cs, "PodReadyToStartContainers").status, "True");
        if phase == Phase::Succeeded {
            assert_eq!(cond(&cs, "Ready").reason.as_deref(), Some("PodCompleted"));
        }
    }

    #[test]
    fn init_incomplete_message_lists_names() {
        let cs = conditions(
            Phase::Pending,
            true,
            &[running("i1"), waiting("i2", "x")],
            &[],
            &[],
            ts(0),
        );
        assert_eq!(
            cond(&cs, "Initialized").message.as_deref(),
            Some("containers with incomplete status: [i1 i2]")
        );
    }

    #[test]
    fn transition_time_kept_while_status_unchanged() {
        let first = conditions(Phase::Running, true, &[], &[running("a")], &[], ts(0));
        let second = conditions(Phase::Running, true, &[], &[running("a")], &first, ts(60));
        assert_eq!(
            cond(&second, "Ready").last_transition_time,
            Some(Time(ts(0)))
        );
        let third = conditions(
            Phase::Running,
            true,
            &[],
            &[backing_off("a", 1)],
            &second,
            ts(90),
        );
        assert_eq!(
            cond(&third, "Ready").last_transition_time,
            Some(Time(ts(90)))
        );
    }

    #[test]
    fn container_status_api_form() {
        let mut c = backing_off("w", 137);
        if let Some(t) = c.last_terminated.as_mut() {
            t.reason = "OOMKilled".into();
        }
        let s = c.to_status();
        assert_eq!(s.restart_count, 1);
        assert!(!s.ready);
        assert_eq!(s.started, Some(false));
        let last = s.last_state.unwrap().terminated.unwrap();
        assert_eq!(
            (last.exit_code, last.reason.as_deref()),
            (137, Some("OOMKilled"))
        );
        assert_eq!(
            s.state.unwrap().waiting.unwrap().reason.as_deref(),
            Some("CrashLoopBackOff")
        );
        assert_eq!(s.container_id.as_deref(), Some("process://1"));
        let r = running("w").to_status();
        assert!(r.ready);
        assert_eq!(r.started, Some(true));
    }

    #[rstest]
    #[case::zero(0, false, "Completed")]
    #[case::nonzero(3, false, "Error")]
    #[case::oom(137, true, "OOMKilled")]
    fn exit_reasons(#[case] code: i32, #[case] oom: bool, #[case] reason: &str) {
        assert_eq!(Terminated::reason_for(code, oom), reason);
    }
}
