//! Cost of the pure planning functions, for `dask-kube bench` (figures, not a timed test).

use crate::adapt::{AdaptPolicy, TargetSample, decide};
use crate::scaling::{PodPhase, SchedulerWorker, WorkerPodState, plan_scale_down};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Pods in the synthetic cluster the planners are timed on.
pub const BENCH_PODS: usize = 1_000;
/// Calls per measurement.
pub const BENCH_ITERATIONS: u32 = 200;

/// A synthetic cluster: `n` pods, a tenth Pending, a twentieth Failed, the rest connected.
pub fn synthetic_cluster(n: usize) -> (Vec<WorkerPodState>, Vec<SchedulerWorker>) {
    let pods: Vec<WorkerPodState> = (0..n)
        .map(|i| WorkerPodState {
            name: format!("dask-bench-worker-{i:05}"),
            phase: match i % 20 {
                0 | 10 => PodPhase::Pending,
                5 => PodPhase::Failed,
                _ => PodPhase::Running,
            },
            deleting: false,
            created: i64::try_from(i).unwrap_or_default(),
            reason: None,
            ips: vec![format!("10.0.{}.{}", i / 250, i % 250)],
            started: i % 20 != 0,
            resource_version: Some(i.to_string()),
            unschedulable: false,
            start_gate: false,
        })
        .collect();
    let workers = pods
        .iter()
        .filter(|p| p.phase == PodPhase::Running)
        .enumerate()
        .map(|(i, p)| SchedulerWorker {
            name: p.name.clone(),
            address: format!("tcp://{}:40000", p.ips.first().map_or("", String::as_str)),
            nanny: None,
            managed_bytes: Some((i as u64 * 7919) % 1_000_000),
            busy: Some(i % 3 == 0),
        })
        .collect();
    (pods, workers)
}

fn per_call(iterations: u32, mut f: impl FnMut()) -> Duration {
    let started = Instant::now();
    for _ in 0..iterations {
        f();
    }
    started.elapsed() / iterations
}

/// Times `plan_scale_down` and `decide` on [`BENCH_PODS`] pods; one line per figure.
pub fn planning_costs() -> Vec<String> {
    let (pods, workers) = synthetic_cluster(BENCH_PODS);
    let plan = per_call(BENCH_ITERATIONS, || {
        black_box(plan_scale_down(
            black_box(&pods),
            black_box(Some(&workers)),
            BENCH_PODS / 2,
            false,
        ));
    });
    let policy = AdaptPolicy::new(1, 2_000);
    let history: Vec<TargetSample> = (0..4u32)
        .map(|i| TargetSample {
            at: Duration::from_secs(u64::from(i)),
            target: 100,
        })
        .collect();
    let decision = per_call(BENCH_ITERATIONS, || {
        black_box(decide(
            black_box(&policy),
            black_box(&history),
            black_box(&pods),
            None,
            Duration::from_secs(10),
        ));
    });
    vec![
        format!(
            "plan_scale_down ({BENCH_PODS} pods, remove {}): {:.1} us per call",
            BENCH_PODS / 2,
            plan.as_secs_f64() * 1e6
        ),
        format!(
            "adapt::decide ({BENCH_PODS} pods, 4 samples): {:.1} us per call",
            decision.as_secs_f64() * 1e6
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_cluster_has_every_kind_of_pod() {
        let (pods, workers) = synthetic_cluster(40);
        assert_eq!(
            pods.iter().filter(|p| p.phase == PodPhase::Pending).count(),
            4
        );
        assert_eq!(
            pods.iter().filter(|p| p.phase == PodPhase::Failed).count(),
            2
        );
        assert_eq!(workers.len(), 34);
        let plan = plan_scale_down(&pods, Some(&workers), 10, false);
        assert_eq!(plan.removes(), 10);
    }

    #[test]
    fn planning_costs_report_both_functions() {
        let lines = planning_costs();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("plan_scale_down"));
        assert!(lines[1].starts_with("adapt::decide"));
    }
}
