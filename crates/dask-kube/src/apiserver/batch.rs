//! Batches of pod creations and deletions: how they are paced ([`CreateLimits`], flow
//! control driven by the API server, [`crate::flow`]), one runner for both, and what they
//! report ([`BatchReport`]: what was done and what failed, never silently).

use crate::flow::{DEFAULT_INITIAL_IN_FLIGHT, DEFAULT_MAX_IN_FLIGHT, FlowControl, FlowLimiter};
use crate::{Error, Result};
use futures::StreamExt;
use serde::Serialize;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::{info, warn};

/// How batches of creations and deletions are paced: calls in flight at the start and at
/// most. Flow control ([`crate::flow`]) moves between 1 and `max_in_flight` on the API
/// server's signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreateLimits {
    /// Calls in flight when a batch starts.
    pub initial_in_flight: usize,
    /// Most calls in flight (a cap for clusters whose API Priority and Fairness is strict).
    pub max_in_flight: usize,
}

impl Default for CreateLimits {
    fn default() -> Self {
        CreateLimits {
            initial_in_flight: DEFAULT_INITIAL_IN_FLIGHT,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }
}

impl CreateLimits {
    /// At most `max` calls in flight (starting there too, or lower).
    pub fn with_max_in_flight(max: usize) -> Self {
        let max = max.max(1);
        CreateLimits {
            initial_in_flight: DEFAULT_INITIAL_IN_FLIGHT.min(max),
            max_in_flight: max,
        }
    }

    /// The limits `kubernetes.max-in-flight` asks for (the defaults when unset).
    pub fn from_setting(max_in_flight: Option<u32>) -> Self {
        max_in_flight.map_or_else(Self::default, |m| Self::with_max_in_flight(m as usize))
    }

    pub(crate) fn limiter(&self) -> FlowLimiter {
        FlowLimiter::new(FlowControl::new(self.initial_in_flight, self.max_in_flight))
    }
}

/// The outcome of a batch: what succeeded and what failed, never silently.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BatchReport {
    /// Names done.
    pub done: Vec<String>,
    /// Failures, each `name: reason`.
    pub failed: Vec<String>,
    /// Calls sent again after the server failed to answer, throttled or erred (each pod is
    /// still created or deleted once).
    pub retried: usize,
}

impl BatchReport {
    /// An error when anything failed.
    pub fn into_result(self, action: &str) -> Result<Vec<String>> {
        if self.failed.is_empty() {
            Ok(self.done)
        } else {
            Err(Error::Partial {
                action: action.to_owned(),
                done: self.done.len(),
                wanted: self.done.len() + self.failed.len(),
                failures: self.failed,
            })
        }
    }
}

/// Why one call of a batch did not do what it was sent for.
pub(crate) enum ItemFailure {
    /// It failed: the line for the report, and the error when it fails every other call
    /// alike (then the batch stops).
    Failed {
        line: String,
        stops_batch: Option<Error>,
    },
    /// Its precondition failed: the object changed since it was listed, and was left
    /// alone (named here, not a failure).
    Changed(String),
}

/// What a batch did: its report, the error that stopped it, and what was left alone
/// because it had changed.
pub(crate) struct BatchOutcome {
    pub(crate) report: BatchReport,
    pub(crate) fatal: Option<Error>,
    pub(crate) changed: Vec<String>,
}

/// The calls of a batch share a flow limiter and count their retries.
pub(crate) struct BatchCall {
    pub(crate) limiter: FlowLimiter,
    pub(crate) retried: Arc<AtomicUsize>,
}

/// Runs `one` for every item, at most `limits.max_in_flight` at a time under the flow
/// control of `limiter` (a batch's own, or one shared by every batch to the same API
/// server), and collects what was done and what failed. `items` is consumed as calls start, so a
/// lazy iterator keeps only the items in flight in memory. After a failure that fails
/// every call (no permission, no namespace, no server) the rest are reported as not
/// attempted and that error is returned beside the report. `verb` names the calls in logs
/// (`create`, `delete`).
pub(crate) async fn run_batch<T, I, F, Fut>(
    verb: &str,
    limits: CreateLimits,
    limiter: FlowLimiter,
    items: I,
    one: F,
) -> BatchOutcome
where
    I: IntoIterator<Item = T>,
    F: Fn(T, BatchCall) -> Fut,
    Fut: Future<Output = std::result::Result<String, ItemFailure>>,
{
    let retried = Arc::new(AtomicUsize::new(0));
    let fatal: Mutex<Option<Error>> = Mutex::new(None);
    let started = Instant::now();
    // Items are taken as calls have room: a lazy iterator renders no more at once.
    let items = items.into_iter();
    let results: Vec<std::result::Result<String, ItemFailure>> = futures::stream::iter(items)
        .map(|item| {
            let (limiter, retried, fatal, one) = (&limiter, &retried, &fatal, &one);
            async move {
                if fatal.lock().await.is_some() {
                    return Err(ItemFailure::Failed {
                        line: "not attempted after an earlier fatal error".to_owned(),
                        stops_batch: None,
                    });
                }
                let call = BatchCall {
                    limiter: limiter.clone(),
                    retried: retried.clone(),
                };
                match one(item, call).await {
                    Err(ItemFailure::Failed {
                        line,
                        stops_batch: Some(e),
                    }) => {
                        fatal.lock().await.get_or_insert(e);
                        Err(ItemFailure::Failed {
                            line,
                            stops_batch: None,
                        })
                    }
                    other => other,
                }
            }
        })
        .buffer_unordered(limits.max_in_flight.max(1))
        .collect()
        .await;
    let wanted = results.len();
    let mut report = BatchReport {
        retried: retried.load(Ordering::Relaxed),
        ..BatchReport::default()
    };
    let mut changed = Vec::new();
    for r in results {
        match r {
            Ok(name) => report.done.push(name),
            Err(ItemFailure::Failed { line, .. }) => report.failed.push(line),
            Err(ItemFailure::Changed(name)) => changed.push(name),
        }
    }
    if report.retried > 0 {
        warn!(
            verb,
            retried = report.retried,
            done = report.done.len(),
            failed = report.failed.len(),
            "the API server failed to answer or throttled some calls; they were retried (each pod is acted on once)"
        );
    }
    let (limit, _) = limiter.snapshot();
    info!(
        verb,
        wanted,
        done = report.done.len(),
        failed = report.failed.len(),
        seconds = started.elapsed().as_secs_f64(),
        final_in_flight_limit = limit,
        "pod batch finished"
    );
    BatchOutcome {
        report,
        fatal: fatal.into_inner(),
        changed,
    }
}
