//! The adaptive decision: a pure function of the policy, the recent history of the
//! scheduler's desired worker count and the worker pods' states. The loop that polls the
//! scheduler and acts lives in [`crate::cluster`]; everything it decides is decided here.
//!
//! Like `distributed.Adaptive`: scale up at once; scale down only after the lower target
//! held for `wait_count` polls in a row (no flapping); never outside `[minimum, maximum]`.
//! Pending pods count as coming (no duplicate creation while images pull), and ended pods
//! (OOMKilled, evicted, failed) are cleaned up and replaced.

use crate::scaling::{WorkerCounts, WorkerPodState};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Shortest poll interval: each poll is an HTTP call to the scheduler and a pod list.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Default poll interval (`distributed.adaptive.interval`).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// Default number of consecutive polls a lower target must hold
/// (`distributed.adaptive.wait-count`).
pub const DEFAULT_WAIT_COUNT: u32 = 3;
/// Default quiet time after a change before scaling down. `distributed.Adaptive` has
/// none, but its workers start in milliseconds; a worker pod takes seconds to schedule,
/// start Python and connect. Without a cooldown, the burst the scheduler asks for while
/// task durations are still unknown is deleted before it arrives: pods created and
/// removed within seconds, the flapping users reported (dask-kubernetes #674, #677).
/// The dask-kubernetes operator uses the same 15 s.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(15);

/// How to adapt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdaptPolicy {
    /// Fewest workers.
    pub minimum: u32,
    /// Most workers.
    pub maximum: u32,
    /// Time between polls.
    pub interval: Duration,
    /// Polls in a row a lower target must hold before scaling down.
    pub wait_count: u32,
    /// Quiet time after any change before scaling down.
    pub cooldown: Duration,
    /// Most workers removed in one step (`None`: no cap).
    pub max_scale_down_step: Option<u32>,
    /// Most workers added in one step (`None`: no cap).
    pub max_scale_up_step: Option<u32>,
    /// The start window of pods that replace ended workers ([`crate::start_room`]): so many
    /// start at once, or half the connected workers when more. Growth is not held.
    pub start_window: usize,
}

impl AdaptPolicy {
    /// `distributed.Adaptive`'s defaults for the range `[minimum, maximum]`, plus
    /// [`DEFAULT_COOLDOWN`].
    pub fn new(minimum: u32, maximum: u32) -> Self {
        AdaptPolicy {
            minimum,
            maximum,
            interval: DEFAULT_INTERVAL,
            wait_count: DEFAULT_WAIT_COUNT,
            cooldown: DEFAULT_COOLDOWN,
            max_scale_down_step: None,
            max_scale_up_step: None,
            start_window: crate::DEFAULT_START_WINDOW,
        }
    }

    /// A policy for `[minimum, maximum]` tuned as a shell was asked (`--interval 0.5`,
    /// Python's `adapt(interval="500ms")` read as seconds), each unset value at its
    /// default. The one place seconds become a policy: numbers of seconds must be >= 0, the
    /// interval is at least [`MIN_INTERVAL`], `wait_count` at least 1, the start window
    /// must be at least 1, and the range must not be empty.
    ///
    /// # Example
    /// ```
    /// use dask_kube::{AdaptPolicy, AdaptTuning};
    /// let policy = AdaptPolicy::from_tuning(1, 10, &AdaptTuning { cooldown: Some(5.0), ..Default::default() }).unwrap();
    /// assert_eq!(policy.cooldown, std::time::Duration::from_secs(5));
    /// assert!(AdaptPolicy::from_tuning(3, 1, &AdaptTuning::default()).is_err());
    /// ```
    pub fn from_tuning(minimum: u32, maximum: u32, tuning: &AdaptTuning) -> Result<Self> {
        let seconds = |value: Option<f64>, default: Duration, what: &str| match value {
            None => Ok(default),
            Some(v) => Duration::try_from_secs_f64(v).map_err(|_| {
                Error::Usage(format!("{what} must be a number of seconds >= 0, not {v}"))
            }),
        };
        let policy = AdaptPolicy {
            interval: seconds(tuning.interval, DEFAULT_INTERVAL, "interval")?.max(MIN_INTERVAL),
            wait_count: tuning.wait_count.unwrap_or(DEFAULT_WAIT_COUNT).max(1),
            cooldown: seconds(tuning.cooldown, DEFAULT_COOLDOWN, "cooldown")?,
            max_scale_down_step: tuning.max_scale_down_step,
            start_window: match tuning.start_window {
                None => crate::DEFAULT_START_WINDOW,
                Some(0) => {
                    return Err(Error::Usage(
                        "start_window must be at least 1: with 0 no lost worker would be replaced"
                            .into(),
                    ));
                }
                Some(n) => n,
            },
            ..AdaptPolicy::new(minimum, maximum)
        };
        policy.check_range()?;
        Ok(policy)
    }

    /// An adapt range must not be empty, wherever the loop runs.
    pub fn check_range(&self) -> Result<()> {
        if self.minimum > self.maximum {
            return Err(Error::Usage(format!(
                "adapt minimum {} is above maximum {}",
                self.minimum, self.maximum
            )));
        }
        Ok(())
    }

    /// Clamps a target into the range.
    pub fn clamp(&self, target: u32) -> u32 {
        target.clamp(self.minimum, self.maximum.max(self.minimum))
    }

    /// The `dask-kube` flags that give a controller pod or a supervisor this policy (the
    /// inverse of the CLI's parsing: `--adapt MIN:MAX` and [`AdaptTuning`]'s flags).
    pub fn cli_args(&self) -> Vec<String> {
        let mut args = vec![
            "--adapt".to_owned(),
            format!("{}:{}", self.minimum, self.maximum),
            "--interval".into(),
            self.interval.as_secs_f64().to_string(),
            "--wait-count".into(),
            self.wait_count.to_string(),
            "--cooldown".into(),
            self.cooldown.as_secs_f64().to_string(),
            "--start-window".into(),
            self.start_window.to_string(),
        ];
        if let Some(step) = self.max_scale_down_step {
            args.extend(["--max-scale-down-step".into(), step.to_string()]);
        }
        args
    }
}

/// How adapting is tuned, as the shells take it: seconds as numbers, `None` for the
/// default ([`DEFAULT_INTERVAL`], [`DEFAULT_WAIT_COUNT`], [`DEFAULT_COOLDOWN`]).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdaptTuning {
    /// Seconds between polls of the scheduler's target.
    pub interval: Option<f64>,
    /// Polls in a row a lower target must hold before scaling down.
    pub wait_count: Option<u32>,
    /// Seconds after a change before scaling down.
    pub cooldown: Option<f64>,
    /// Most workers removed per step.
    pub max_scale_down_step: Option<u32>,
    /// Replacements of ended workers that may start at once ([`AdaptPolicy::start_window`]).
    pub start_window: Option<usize>,
}

/// One poll of the scheduler's desired worker count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetSample {
    /// When (time since the controller started).
    pub at: Duration,
    /// What the scheduler asked for.
    pub target: u32,
}

/// What to do with the pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum ScaleAction {
    /// Nothing.
    Hold,
    /// Create `create` pods, reaching `to` active workers.
    Up {
        /// Pods to create.
        create: u32,
        /// Active workers after.
        to: u32,
    },
    /// Remove `remove` workers (through the scale-down plan), reaching `to`.
    Down {
        /// Workers to remove.
        remove: u32,
        /// Active workers after.
        to: u32,
    },
}

/// A decision and why it was taken (logged with every poll that changes something).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScaleDecision {
    /// The action.
    pub action: ScaleAction,
    /// Ended pods to delete (they are replaced by the action when needed).
    pub cleanup: Vec<String>,
    /// Why.
    pub reason: String,
}

/// Decides what to do now.
///
/// `history` holds the latest successful polls, oldest first (a failed poll clears it, so
/// scale-down always needs `wait_count` fresh agreeing polls); `last_change` is when the
/// controller last scaled.
///
/// # Example
/// ```
/// use dask_kube::*;
/// use std::time::Duration;
/// let policy = AdaptPolicy::new(1, 10);
/// let history = [TargetSample { at: Duration::from_secs(1), target: 4 }];
/// let decision = decide(&policy, &history, &[], None, Duration::from_secs(1));
/// assert_eq!(decision.action, ScaleAction::Up { create: 4, to: 4 });
/// ```
pub fn decide(
    policy: &AdaptPolicy,
    history: &[TargetSample],
    pods: &[WorkerPodState],
    last_change: Option<Duration>,
    now: Duration,
) -> ScaleDecision {
    let counts = WorkerCounts::of(pods);
    let cleanup: Vec<String> = pods
        .iter()
        .filter(|p| p.ended())
        .map(|p| p.name.clone())
        .collect();
    let lost: Vec<String> = pods
        .iter()
        .filter(|p| p.ended())
        .filter(|p| p.phase == crate::scaling::PodPhase::Failed || p.reason.is_some())
        .map(|p| match &p.reason {
            Some(r) => format!("{} ({r})", p.name),
            None => p.name.clone(),
        })
        .collect();
    let active = u32::try_from(counts.active()).unwrap_or(u32::MAX);
    let have = format!(
        "{} running + {} pending{}",
        counts.running,
        counts.pending,
        if lost.is_empty() {
            String::new()
        } else {
            format!(", lost {}", lost.join(", "))
        }
    );
    let decision = |action, reason: String| ScaleDecision {
        action,
        cleanup: cleanup.clone(),
        reason,
    };

    let Some(latest) = history.last() else {
        // No target yet: only enforce the minimum.
        if active < policy.minimum {
            let create = capped(policy.minimum - active, policy.max_scale_up_step);
            return decision(
                ScaleAction::Up {
                    create,
                    to: active + create,
                },
                format!(
                    "below the minimum {} ({have}); no target from the scheduler yet",
                    policy.minimum
                ),
            );
        }
        return decision(
            ScaleAction::Hold,
            format!("no target from the scheduler yet ({have})"),
        );
    };
    let wanted = policy.clamp(latest.target);
    let clamp_note = if wanted != latest.target {
        format!(
            " (scheduler asked for {}, range {}..={})",
            latest.target, policy.minimum, policy.maximum
        )
    } else {
        String::new()
    };

    if wanted > active {
        let create = capped(wanted - active, policy.max_scale_up_step);
        let why = if lost.is_empty() {
            "scale up"
        } else {
            "scale up, replacing lost workers"
        };
        return decision(
            ScaleAction::Up {
                create,
                to: active + create,
            },
            format!("{why}: target {wanted}{clamp_note}, have {have}"),
        );
    }
    if wanted == active {
        return decision(
            ScaleAction::Hold,
            format!("at target {wanted}{clamp_note} ({have})"),
        );
    }

    // wanted < active: only when the lower target held long enough.
    let wait = usize::try_from(policy.wait_count.max(1)).unwrap_or(usize::MAX);
    if history.len() < wait {
        return decision(
            ScaleAction::Hold,
            format!(
                "target {wanted}{clamp_note} below {active} active, waiting for {wait} polls in a row (have {})",
                history.len()
            ),
        );
    }
    let recent = &history[history.len() - wait..];
    let highest_recent = recent
        .iter()
        .map(|s| policy.clamp(s.target))
        .max()
        .unwrap_or(wanted);
    if highest_recent >= active {
        return decision(
            ScaleAction::Hold,
            format!(
                "target {wanted}{clamp_note} below {active} active, but not for {wait} polls in a row"
            ),
        );
    }
    if let Some(changed) = last_change
        && now.saturating_sub(changed) < policy.cooldown
    {
        let left = policy.cooldown - now.saturating_sub(changed);
        return decision(
            ScaleAction::Hold,
            format!(
                "target {highest_recent} below {active} active; cooling down for {left:?} more"
            ),
        );
    }
    let remove = capped(active - highest_recent, policy.max_scale_down_step);
    decision(
        ScaleAction::Down {
            remove,
            to: active - remove,
        },
        format!(
            "scale down: target {highest_recent}{clamp_note} held for {wait} polls, have {have}"
        ),
    )
}

fn capped(n: u32, cap: Option<u32>) -> u32 {
    match cap {
        Some(cap) => n.min(cap.max(1)),
        None => n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scaling::PodPhase;
    use crate::scaling::tests::mk_pod;
    use rstest::rstest;

    #[test]
    fn cli_args_carry_the_whole_policy() {
        let policy = AdaptPolicy {
            interval: Duration::from_millis(500),
            wait_count: 5,
            cooldown: Duration::from_secs(10),
            max_scale_down_step: Some(2),
            start_window: 3,
            ..AdaptPolicy::new(1, 4)
        };
        assert_eq!(
            policy.cli_args(),
            [
                "--adapt",
                "1:4",
                "--interval",
                "0.5",
                "--wait-count",
                "5",
                "--cooldown",
                "10",
                "--start-window",
                "3",
                "--max-scale-down-step",
                "2"
            ]
        );
    }

    #[rstest]
    #[case::defaults(AdaptTuning::default(), Ok((DEFAULT_INTERVAL, DEFAULT_WAIT_COUNT, DEFAULT_COOLDOWN)))]
    #[case::given(AdaptTuning { interval: Some(0.5), wait_count: Some(5), cooldown: Some(2.0), max_scale_down_step: None, start_window: None }, Ok((Duration::from_millis(500), 5, Duration::from_secs(2))))]
    #[case::interval_floor(AdaptTuning { interval: Some(0.0), ..Default::default() }, Ok((MIN_INTERVAL, DEFAULT_WAIT_COUNT, DEFAULT_COOLDOWN)))]
    #[case::wait_count_floor(AdaptTuning { wait_count: Some(0), ..Default::default() }, Ok((DEFAULT_INTERVAL, 1, DEFAULT_COOLDOWN)))]
    #[case::negative_cooldown(AdaptTuning { cooldown: Some(-1.0), ..Default::default() }, Err("cooldown must be a number of seconds >= 0"))]
    #[case::not_a_number(AdaptTuning { interval: Some(f64::NAN), ..Default::default() }, Err("interval must be"))]
    #[case::no_start_window(AdaptTuning { start_window: Some(0), ..Default::default() }, Err("start_window must be at least 1"))]
    fn tuning_becomes_a_policy_in_one_place(
        #[case] tuning: AdaptTuning,
        #[case] expected: std::result::Result<(Duration, u32, Duration), &str>,
    ) {
        match (AdaptPolicy::from_tuning(1, 4, &tuning), expected) {
            (Ok(p), Ok((interval, wait_count, cooldown))) => {
                assert_eq!(
                    (p.interval, p.wait_count, p.cooldown),
                    (interval, wait_count, cooldown)
                );
            }
            (Err(e), Err(needle)) => assert!(e.to_string().contains(needle), "{e}"),
            (got, want) => panic!("got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn an_empty_range_is_refused_wherever_it_runs() {
        let err = AdaptPolicy::from_tuning(5, 1, &AdaptTuning::default()).unwrap_err();
        assert_eq!(err.to_string(), "adapt minimum 5 is above maximum 1");
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn history(targets: &[u32]) -> Vec<TargetSample> {
        targets
            .iter()
            .enumerate()
            .map(|(i, t)| TargetSample {
                at: secs(i as u64 + 1),
                target: *t,
            })
            .collect()
    }

    fn running(n: usize) -> Vec<WorkerPodState> {
        (0..n)
            .map(|i| mk_pod(&format!("r{i}"), PodPhase::Running, i as i64))
            .collect()
    }

    fn with(mut pods: Vec<WorkerPodState>, extra: &[WorkerPodState]) -> Vec<WorkerPodState> {
        pods.extend_from_slice(extra);
        pods
    }

    #[rstest]
    #[case::up_at_once(AdaptPolicy::new(0, 10), &[5], running(2), ScaleAction::Up { create: 3, to: 5 })]
    #[case::up_capped_by_maximum(AdaptPolicy::new(0, 4), &[100], running(1), ScaleAction::Up { create: 3, to: 4 })]
    #[case::up_to_minimum(AdaptPolicy::new(2, 4), &[0], running(0), ScaleAction::Up { create: 2, to: 2 })]
    #[case::minimum_without_target(AdaptPolicy::new(2, 4), &[], running(1), ScaleAction::Up { create: 1, to: 2 })]
    #[case::hold_without_target(AdaptPolicy::new(0, 4), &[], running(1), ScaleAction::Hold)]
    #[case::pending_counts_as_coming(AdaptPolicy::new(0, 10), &[3], with(running(1), &[mk_pod("p1", PodPhase::Pending, 9), mk_pod("p2", PodPhase::Pending, 9)]), ScaleAction::Hold)]
    #[case::lost_worker_replaced(AdaptPolicy::new(0, 10), &[3], with(running(2), &[WorkerPodState { reason: Some("OOMKilled".into()), ..mk_pod("oom", PodPhase::Failed, 1) }]), ScaleAction::Up { create: 1, to: 3 })]
    #[case::down_needs_three_polls(AdaptPolicy::new(0, 10), &[1, 1], running(4), ScaleAction::Hold)]
    #[case::down_after_three_polls(AdaptPolicy::new(0, 10), &[1, 1, 1], running(4), ScaleAction::Down { remove: 3, to: 1 })]
    #[case::down_to_highest_recent(AdaptPolicy::new(0, 10), &[9, 2, 1, 3], running(4), ScaleAction::Down { remove: 1, to: 3 })]
    #[case::flapping_target_holds(AdaptPolicy::new(0, 10), &[1, 4, 1], running(4), ScaleAction::Hold)]
    #[case::never_below_minimum(AdaptPolicy::new(2, 10), &[0, 0, 0], running(4), ScaleAction::Down { remove: 2, to: 2 })]
    #[case::above_maximum_comes_down(AdaptPolicy::new(0, 2), &[5, 5, 5], running(4), ScaleAction::Down { remove: 2, to: 2 })]
    #[case::step_cap(AdaptPolicy { max_scale_down_step: Some(1), ..AdaptPolicy::new(0, 10) }, &[0, 0, 0], running(4), ScaleAction::Down { remove: 1, to: 3 })]
    #[case::up_step_cap(AdaptPolicy { max_scale_up_step: Some(2), ..AdaptPolicy::new(0, 10) }, &[9], running(0), ScaleAction::Up { create: 2, to: 2 })]
    #[case::wait_count_one(AdaptPolicy { wait_count: 1, ..AdaptPolicy::new(0, 10) }, &[2], running(4), ScaleAction::Down { remove: 2, to: 2 })]
    #[case::at_target(AdaptPolicy::new(0, 10), &[3, 3, 3], running(3), ScaleAction::Hold)]
    fn decides(
        #[case] policy: AdaptPolicy,
        #[case] targets: &[u32],
        #[case] pods: Vec<WorkerPodState>,
        #[case] expected: ScaleAction,
    ) {
        let decision = decide(&policy, &history(targets), &pods, None, secs(100));
        assert_eq!(decision.action, expected, "{}", decision.reason);
        assert!(!decision.reason.is_empty());
    }

    #[rstest]
    #[case::in_cooldown(secs(95), ScaleAction::Hold)]
    #[case::after_cooldown(secs(80), ScaleAction::Down { remove: 3, to: 1 })]
    fn cooldown_delays_scale_down(#[case] last_change: Duration, #[case] expected: ScaleAction) {
        let policy = AdaptPolicy {
            cooldown: secs(15),
            ..AdaptPolicy::new(0, 10)
        };
        let decision = decide(
            &policy,
            &history(&[1, 1, 1]),
            &running(4),
            Some(last_change),
            secs(100),
        );
        assert_eq!(decision.action, expected, "{}", decision.reason);
    }

    #[test]
    fn ended_pods_are_cleaned_up_and_named_in_the_reason() {
        let pods = with(
            running(1),
            &[
                WorkerPodState {
                    reason: Some("Evicted".into()),
                    ..mk_pod("ev", PodPhase::Failed, 1)
                },
                mk_pod("done", PodPhase::Succeeded, 1),
            ],
        );
        let decision = decide(
            &AdaptPolicy::new(0, 10),
            &history(&[2]),
            &pods,
            None,
            secs(1),
        );
        assert_eq!(decision.cleanup, vec!["ev".to_owned(), "done".to_owned()]);
        assert!(
            decision.reason.contains("ev (Evicted)"),
            "{}",
            decision.reason
        );
        assert_eq!(decision.action, ScaleAction::Up { create: 1, to: 2 });
    }

    #[test]
    fn deleting_pods_are_not_counted() {
        let pods = with(
            running(1),
            &[WorkerPodState {
                deleting: true,
                ..mk_pod("x", PodPhase::Running, 1)
            }],
        );
        let decision = decide(
            &AdaptPolicy::new(0, 10),
            &history(&[2]),
            &pods,
            None,
            secs(1),
        );
        assert_eq!(decision.action, ScaleAction::Up { create: 1, to: 2 });
    }
}
