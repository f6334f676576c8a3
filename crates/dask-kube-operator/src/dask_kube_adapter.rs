//! ADAPTER: every item this crate takes from the dask-kube library, in one place.
//!
//! dask-kube's public API is being reshaped (issue 25: private modules behind a deliberate
//! `pub use` surface). This module is the only one that names dask-kube's paths, so that
//! change touches it alone. What it adds locally is marked `LOCAL:` with the library signature that
//! would replace it (listed in the crate README, "What dask-kube should export").

pub(crate) use dask_kube::{
    AdaptPolicy, CallOutcome, Connect, DEFAULT_INITIAL_IN_FLIGHT, DEFAULT_MAX_IN_FLIGHT,
    DeleteReason, FlowControl, FlowLimiter, ForwardedStream, HttpSchedulerApi, PodPhase,
    PodPortConnect, RetireTarget, ScaleAction, SchedulerApi, SchedulerWorker, TargetSample,
    TcpConnect, WorkerPodState, decide, place_workers, plan_scale_down, retired_pods_to_delete,
};

/// A client for `config` over dask-kube's HTTP/2 stack (one TLS connection for the
/// operator's concurrent calls): dask-kube's [`dask_kube::KubeConnection`] made from it.
pub(crate) fn build_client(config: kube::Config) -> dask_kube::Result<kube::Client> {
    Ok(dask_kube::KubeConnection::from_config(config)?.client)
}

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::time::Duration;

/// Bound on one `check_idle` call.
const IDLE_CHECK_TIMEOUT: Duration = Duration::from_secs(15);

/// LOCAL: when the scheduler has been idle since (`GET /api/v1/check_idle`, seconds since
/// the epoch), `None` while it is busy. Wanted in dask-kube as
/// `SchedulerApi::idle_since(&self) -> impl Future<Output = Result<Option<f64>>>`.
pub(crate) async fn idle_since<C: Connect>(connector: &C) -> Result<Option<f64>, String> {
    let work = async {
        let io = connector.connect().await.map_err(|e| e.to_string())?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let request = http::Request::get("/api/v1/check_idle")
            .header(http::header::HOST, "scheduler")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if !status.is_success() {
            return Err(format!(
                "GET /api/v1/check_idle answered {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        parse_idle_since(&body)
    };
    tokio::time::timeout(IDLE_CHECK_TIMEOUT, work)
        .await
        .map_err(|_| {
            format!(
                "no answer from {} within {IDLE_CHECK_TIMEOUT:?}",
                connector.describe()
            )
        })?
}

/// `{"idle_since": 1700000000.5}` -> `Some(1700000000.5)`; `null` -> `None`.
fn parse_idle_since(body: &[u8]) -> Result<Option<f64>, String> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| format!("check_idle answered something that is not JSON: {e}"))?;
    match value.get("idle_since") {
        Some(serde_json::Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| format!("check_idle answered idle_since {v}, not a number")),
        None => Err(format!("check_idle answered {value} without idle_since")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::idle(br#"{"idle_since": 1700000000.5}"#, Ok(Some(1_700_000_000.5)))]
    #[case::busy(br#"{"idle_since": null}"#, Ok(None))]
    #[case::integer(br#"{"idle_since": 17}"#, Ok(Some(17.0)))]
    fn idle_since_is_read(#[case] body: &[u8], #[case] expected: Result<Option<f64>, String>) {
        assert_eq!(parse_idle_since(body), expected);
    }

    #[rstest]
    #[case::not_json(b"<html>")]
    #[case::no_field(br#"{"x": 1}"#)]
    #[case::a_string(br#"{"idle_since": "soon"}"#)]
    fn idle_since_refuses_other_answers(#[case] body: &[u8]) {
        assert!(parse_idle_since(body).is_err());
    }
}
