//! Deleting pods by name under flow control; a pod already gone counts as deleted, and
//! deleting again after a lost answer is harmless (the 404 then says the first worked).

use super::batch::{BatchCall, BatchReport, ItemFailure, run_batch};
use super::cluster_api::ClusterApi;
use super::create::metadata_only_answer;
use super::errors::{
    describe_kube_error, is_outage, is_retryable, map_kube_error, outcome_of, retry_after,
};
use super::retry::{BATCH_ATTEMPTS, Retries};
use crate::flow::CallOutcome;
use k8s_openapi::api::core::v1::Pod;
use kube::Resource;
use kube::api::{DeleteParams, Preconditions};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tracing::debug;

/// Why one pod of a delete batch was not deleted.
enum DeleteFailure {
    /// Its precondition failed: it changed since it was listed.
    Changed,
    /// The call failed; the message names the pod.
    Failed(String),
}

/// Bound on one delete call of a batch.
const DELETE_CALL_TIMEOUT: Duration = Duration::from_secs(30);

impl ClusterApi {
    /// Deletes pods by name under flow control (`grace_seconds` as the pods' termination
    /// grace period, `None` for theirs); a pod already gone counts as deleted.
    pub async fn delete_pods(&self, names: &[String], grace_seconds: Option<u32>) -> BatchReport {
        let params = DeleteParams {
            grace_period_seconds: grace_seconds,
            ..DeleteParams::background()
        };
        let pods: Vec<(String, DeleteParams)> = names
            .iter()
            .map(|name| (name.clone(), params.clone()))
            .collect();
        self.delete_batch(pods).await.0
    }

    /// Deletes each pod only if it is unchanged since it was listed: the delete carries the
    /// listed `resourceVersion` as a precondition, which the API server checks in the same
    /// write. A pod that changed meanwhile (a container started, so a worker may be in it now)
    /// is left alone and returned in the second list, without retrying; one already gone
    /// counts as deleted; one listed without a version is deleted as it is.
    pub async fn delete_pods_unchanged(
        &self,
        pods: &[(String, Option<String>)],
    ) -> (BatchReport, Vec<String>) {
        let pods: Vec<(String, DeleteParams)> = pods
            .iter()
            .map(|(name, version)| {
                let params = DeleteParams {
                    preconditions: version.as_ref().map(|v| Preconditions {
                        resource_version: Some(v.clone()),
                        uid: None,
                    }),
                    ..DeleteParams::background()
                };
                (name.clone(), params)
            })
            .collect();
        self.delete_batch(pods).await
    }

    /// The one delete batch: each pod with its own parameters.
    async fn delete_batch(&self, pods: Vec<(String, DeleteParams)>) -> (BatchReport, Vec<String>) {
        let outcome = run_batch(
            "delete",
            self.limits,
            self.batch_flow(),
            pods,
            |(name, params), call| async move {
                match self.delete_one(&name, &params, call).await {
                    Ok(()) => Ok(name),
                    Err(DeleteFailure::Changed) => Err(ItemFailure::Changed(name)),
                    Err(DeleteFailure::Failed(line)) => Err(ItemFailure::Failed {
                        line,
                        stops_batch: None,
                    }),
                }
            },
        )
        .await;
        (outcome.report, outcome.changed)
    }

    /// DELETEs one pod and reads nothing of the answer but its status code. It asks for the
    /// answer as `PartialObjectMetadata`, as creates do ([`metadata_only_answer`]): otherwise the
    /// API server encodes, and this client decrypts and parses, the whole pod as stored for
    /// each of a scale-down's thousand deletes, on the same cores that delete them.
    async fn delete_pod(&self, name: &str, params: &DeleteParams) -> kube::Result<()> {
        let mut request = kube::core::Request::new(Pod::url_path(&(), Some(self.namespace())))
            .delete(name, params)
            .map_err(kube::Error::BuildRequest)?;
        metadata_only_answer(&mut request, "delete");
        self.connection
            .client
            .request::<serde::de::IgnoredAny>(request)
            .await
            .map(|_| ())
    }

    async fn delete_one(
        &self,
        name: &str,
        params: &DeleteParams,
        call: BatchCall,
    ) -> std::result::Result<(), DeleteFailure> {
        let mut retries = Retries::new(BATCH_ATTEMPTS);
        loop {
            let permit = call.limiter.acquire().await;
            let result =
                tokio::time::timeout(DELETE_CALL_TIMEOUT, self.delete_pod(name, params)).await;
            let latency = permit.started().elapsed();
            let error = match result {
                Ok(Ok(_)) => {
                    permit.finish(CallOutcome::Done { latency });
                    self.answered.store(true, Ordering::Relaxed);
                    return Ok(());
                }
                Ok(Err(kube::Error::Api(s))) if s.code == 404 => {
                    permit.finish(CallOutcome::Done { latency });
                    return Ok(());
                }
                // A failed precondition: the pod is not as it was listed. Sending the same
                // precondition again cannot succeed.
                Ok(Err(kube::Error::Api(s))) if s.code == 409 && params.preconditions.is_some() => {
                    permit.finish(CallOutcome::Done { latency });
                    self.answered.store(true, Ordering::Relaxed);
                    debug!(pod = %name, message = %s.message, "not deleted: changed since listed");
                    return Err(DeleteFailure::Changed);
                }
                Ok(Err(e)) => {
                    permit.finish(outcome_of(&e, latency));
                    Some(e)
                }
                Err(_) => {
                    // Deleting again is harmless: a 404 then means the first one worked.
                    permit.finish(CallOutcome::Failed);
                    None
                }
            };
            let retryable = error.as_ref().is_none_or(is_retryable);
            let outage = error.as_ref().is_none_or(is_outage);
            if !(retryable && retries.again(outage, self.answered.load(Ordering::Relaxed))) {
                return Err(DeleteFailure::Failed(match error {
                    Some(e) => format!("{name}: {}", map_kube_error(e, &self.at("delete", "pods"))),
                    None => format!(
                        "{name}: not deleted after {} attempts (timeouts)",
                        retries.failures
                    ),
                }));
            }
            call.retried.fetch_add(1, Ordering::Relaxed);
            let wait = retries.delay(error.as_ref().and_then(retry_after));
            debug!(pod = %name, failures = retries.failures, error = ?error.as_ref().map(describe_kube_error), ?wait, "retrying delete");
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::create::METADATA_ONLY;
    use super::super::mock::{api, ok_json, status};
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn deleting_a_pod_that_is_gone_counts_as_done() {
        let (api, mut handle) = api("team");
        let server = tokio::spawn(async move {
            for _ in 0..2 {
                let (request, send) = handle.next_request().await.unwrap();
                assert_eq!(request.method(), http::Method::DELETE);
                assert_eq!(
                    request.headers()[http::header::ACCEPT],
                    METADATA_ONLY,
                    "the answer is asked for as metadata only"
                );
                if request.uri().path().ends_with("/gone") {
                    send.send_response(status(
                        404,
                        "NotFound",
                        "pods \"gone\" not found",
                        json!({"name": "gone", "kind": "pods"}),
                    ));
                } else {
                    send.send_response(ok_json(
                        json!({"metadata": {"name": "here"}, "spec": {"containers": []}}),
                    ));
                }
            }
        });
        let mut report = api.delete_pods(&["gone".into(), "here".into()], None).await;
        server.await.unwrap();
        report.done.sort();
        assert_eq!(
            report,
            BatchReport {
                done: vec!["gone".into(), "here".into()],
                failed: vec![],
                retried: 0,
            }
        );
    }
}
