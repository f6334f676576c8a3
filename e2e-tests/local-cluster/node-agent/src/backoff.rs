//! Container restart backoff, as the kubelet's `flowcontrol.Backoff` does it: the first
//! restart is immediate, then 10 s doubling up to 5 min (`CrashLoopBackOff`), and the
//! backoff resets once a run lasted longer than twice the cap.

use std::time::Duration;

/// Initial delay once a container crashed twice.
pub const INITIAL: Duration = Duration::from_secs(10);
/// Upper bound of the delay.
pub const MAX: Duration = Duration::from_secs(300);

/// Per-container restart backoff. Times are offsets on any monotonic clock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backoff {
    /// The delay the next restart must wait, once an entry exists.
    current: Option<Duration>,
    /// When `current` was last set.
    last_update: Option<Duration>,
}

impl Backoff {
    /// Called when a container exited at `finished` and is to be restarted at or after `now`:
    /// returns how long to wait before starting it again.
    pub fn next_delay(&mut self, now: Duration) -> Duration {
        let expired = self
            .last_update
            .is_some_and(|last| now.saturating_sub(last) > MAX * 2);
        let delay = match self.current {
            // No entry yet (or it expired): restart right away, arm the backoff.
            None => Duration::ZERO,
            Some(_) if expired => Duration::ZERO,
            Some(d) => d,
        };
        self.current = Some(match self.current {
            Some(d) if !expired && delay > Duration::ZERO => (d * 2).min(MAX),
            _ => INITIAL,
        });
        self.last_update = Some(now + delay);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Crashes at the given times (each run starts right after its delay).
    fn delays(crash_times: &[u64]) -> Vec<u64> {
        let mut b = Backoff::default();
        crash_times
            .iter()
            .map(|t| b.next_delay(secs(*t)).as_secs())
            .collect()
    }

    #[rstest]
    #[case::first_restart_immediate(&[0], &[0])]
    #[case::then_10s_doubling(&[0, 1, 12, 33, 74], &[0, 10, 20, 40, 80])]
    #[case::capped_at_5_minutes(&[0, 1, 12, 33, 74, 155, 316, 620, 925], &[0, 10, 20, 40, 80, 160, 300, 300, 300])]
    #[case::long_run_resets(&[0, 1, 12, 1000], &[0, 10, 20, 0])]
    #[case::reset_then_grows_again(&[0, 1, 1000, 1001], &[0, 10, 0, 10])]
    fn kubelet_backoff(#[case] crashes: &[u64], #[case] expected: &[u64]) {
        assert_eq!(delays(crashes), expected);
    }
}
