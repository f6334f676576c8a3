//! When a failed call is sent again, and after how long: a few attempts with exponential
//! backoff and jitter, honouring the server's `retryAfterSeconds`, and longer (within a
//! budget) through an outage of a server that answered before.

use super::errors::{describe_kube_error, is_outage, is_retryable, retry_after};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tracing::debug;

/// First retry delay.
pub(crate) const RETRY_INITIAL: Duration = Duration::from_millis(200);
/// Longest retry delay.
pub(crate) const RETRY_MAX_DELAY: Duration = Duration::from_secs(5);
/// Attempts per call (the first plus retries).
pub(crate) const RETRY_ATTEMPTS: u32 = 6;
/// How long a call keeps being retried while an API server that answered this client before
/// does not answer now (connections refused, 503/504, throttled, timeouts): a restart of the
/// API server, a rolling upgrade of the control plane or a load balancer's failover takes seconds
/// to a minute, and a batch that waits it out leaves an exact count where one that gives up
/// leaves half a scale-up. Before the first answer an unreachable server is reported after
/// [`RETRY_ATTEMPTS`] (a wrong address should not make the user wait).
pub(crate) const RETRY_BUDGET: Duration = Duration::from_secs(120);
/// Attempts per pod of a batch: throttling is waited out by flow control, so a batch on a
/// busy API server gets more tries than a single call.
pub(crate) const BATCH_ATTEMPTS: u32 = 10;
/// Attempts for a create an admission webhook could not be called for: a webhook that is down
/// (with `failurePolicy: Fail`) is a configuration problem the user must see at once, not load
/// to wait out; three tries ride over a blip.
pub(crate) const WEBHOOK_ATTEMPTS: u32 = 3;

/// The retries of one call.
#[derive(Debug)]
pub(crate) struct Retries {
    pub(crate) failures: u32,
    max_attempts: u32,
    first_failure: Option<Instant>,
}

impl Retries {
    pub(crate) fn new(max_attempts: u32) -> Self {
        Retries {
            failures: 0,
            max_attempts,
            first_failure: None,
        }
    }

    /// Counts a failure; whether to try again: within the attempts, or during an outage of a
    /// server that has answered before, within [`RETRY_BUDGET`] of the first failure.
    pub(crate) fn again(&mut self, outage: bool, server_answered_before: bool) -> bool {
        let first = *self.first_failure.get_or_insert_with(Instant::now);
        self.failures += 1;
        self.failures < self.max_attempts
            || (outage && server_answered_before && first.elapsed() < RETRY_BUDGET)
    }

    /// The wait before the next attempt: doubling from [`RETRY_INITIAL`] to
    /// [`RETRY_MAX_DELAY`], 50-100% of it at random so that a batch's calls do not all come
    /// back at the same instant; the server's `retryAfterSeconds` when it gave one.
    pub(crate) fn delay(&self, server_hint: Option<Duration>) -> Duration {
        if let Some(hint) = server_hint {
            return hint.min(RETRY_MAX_DELAY);
        }
        let exponent = self.failures.saturating_sub(1).min(16);
        let full = RETRY_INITIAL
            .saturating_mul(1 << exponent)
            .min(RETRY_MAX_DELAY);
        let jitter = f64::from(uuid::Uuid::new_v4().as_bytes()[0]) / 255.0;
        full.mul_f64(0.5 + jitter / 2.0)
    }
}

/// Runs `call` until it succeeds, fails for good, or its retries are used ([`Retries`]:
/// [`RETRY_ATTEMPTS`], or [`RETRY_BUDGET`] through an outage of a server that answered
/// before), with exponential backoff honouring the server's `retryAfterSeconds`.
/// `answered` records that the server answered (any success).
pub(crate) async fn with_retry<T, F, Fut>(
    what: &str,
    answered: &AtomicBool,
    mut call: F,
) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let mut retries = Retries::new(RETRY_ATTEMPTS);
    loop {
        match call().await {
            Ok(v) => {
                answered.store(true, Ordering::Relaxed);
                return Ok(v);
            }
            Err(e)
                if is_retryable(&e)
                    && retries.again(is_outage(&e), answered.load(Ordering::Relaxed)) =>
            {
                let wait = retries.delay(retry_after(&e));
                debug!(what, failures = retries.failures, error = %describe_kube_error(&e), ?wait, "retrying");
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attempts bound every retry; only an outage of a server that answered before is
    /// waited out longer, and only within the budget.
    #[rstest::rstest]
    #[case::within_attempts(3, false, false, Duration::ZERO, true)]
    #[case::attempts_used(6, false, true, Duration::ZERO, false)]
    #[case::outage_before_any_answer_is_not_waited_out(6, true, false, Duration::ZERO, false)]
    #[case::outage_after_an_answer_is_waited_out(30, true, true, Duration::from_secs(60), true)]
    #[case::outage_past_the_budget(30, true, true, RETRY_BUDGET, false)]
    #[tokio::test(start_paused = true)]
    async fn when_a_failed_call_is_sent_again(
        #[case] failures: u32,
        #[case] outage: bool,
        #[case] answered_before: bool,
        #[case] since_first_failure: Duration,
        #[case] again: bool,
    ) {
        let mut retries = Retries::new(RETRY_ATTEMPTS);
        for _ in 1..failures {
            retries.again(outage, answered_before);
        }
        tokio::time::advance(since_first_failure).await;
        assert_eq!(retries.again(outage, answered_before), again);
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_honours_the_server() {
        let mut retries = Retries::new(RETRY_ATTEMPTS);
        for failures in 1..=12u32 {
            retries.again(false, false);
            let full = RETRY_INITIAL
                .saturating_mul(1 << (failures - 1).min(16))
                .min(RETRY_MAX_DELAY);
            let delay = retries.delay(None);
            assert!(
                delay >= full / 2 && delay <= full,
                "{failures}: {delay:?} vs {full:?}"
            );
        }
        assert_eq!(
            retries.delay(Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            retries.delay(Some(Duration::from_secs(600))),
            RETRY_MAX_DELAY
        );
    }
}
