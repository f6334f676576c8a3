//! Creating pods: one, or a batch under flow control in which a retry never makes a
//! second pod (each pod is named here and carries a token, so a create whose answer was
//! lost is looked up before it is sent again).

use super::batch::{BatchCall, BatchReport, ItemFailure, run_batch};
use super::cluster_api::ClusterApi;
use super::errors::{
    ambiguous, at, describe_kube_error, fails_every_call, is_outage, is_retryable,
    is_webhook_failure, map_kube_error, outcome_of, retry_after,
};
use super::retry::{BATCH_ATTEMPTS, Retries, WEBHOOK_ATTEMPTS, with_retry};
use crate::flow::CallOutcome;
use crate::{Error, Result};
use k8s_openapi::api::core::v1::Pod;
use kube::Resource;
use kube::api::PostParams;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tracing::debug;

/// Bound on one create call of a batch; a call that takes longer has an unknown outcome,
/// which is then checked before any retry.
pub(crate) const BATCH_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Annotation with a random token per created pod: when a create's answer is lost, the pod
/// found under its name is ours only if it carries our token.
pub(crate) const CREATE_TOKEN_ANNOTATION: &str = "dask.org/create-token";
/// Length of the random suffix of a generated name.
const SUFFIX_LEN: usize = 5;

impl ClusterApi {
    /// Creates one pod (with retries): the scheduler pod, the controller pod. It carries a
    /// [`CREATE_TOKEN_ANNOTATION`] as a batch's pods do, so when an answer is lost after the
    /// pod was stored, the retry's 409 is recognised as this very pod (same name, same token)
    /// instead of failing the start: a fixed name cannot make a second pod, and now a lost
    /// answer does not make a failure either.
    pub async fn create_pod(&self, pod: &Pod) -> Result<Pod> {
        let mut pod = pod.clone();
        let token = assign_name(&mut pod);
        let name = pod.metadata.name.clone().unwrap_or_default();
        let pods = self.pods();
        let params = PostParams::default();
        let created = with_retry("create pod", &self.answered, || pods.create(&params, &pod)).await;
        match created {
            Err(kube::Error::Api(s))
                if s.code == 409 && self.created_by_us(&name, &token).await? =>
            {
                debug!(pod = %name, "create answer lost; the pod is ours");
                self.get_pod(&name)
                    .await?
                    .ok_or_else(|| map_kube_error(kube::Error::Api(s), &self.at("create", "pods")))
            }
            other => at(other, &self.at("create", "pods")),
        }
    }

    /// Creates pods under flow control; each failure is reported, and each pod that exists
    /// is reported once. Pods with a `generateName` get their name here (the same random
    /// suffix the API server would pick) and a [`CREATE_TOKEN_ANNOTATION`], so a create
    /// whose answer is lost (timeout, broken connection, 5xx) is checked by name before it
    /// is sent again: a retry never makes a second pod. Permission, namespace and
    /// unreachable-server errors stop the batch (they fail every call) and are returned
    /// beside the report. `pods` is consumed as calls start, so a lazy iterator keeps only
    /// the pods in flight in memory.
    pub async fn create_pods<I>(&self, pods: I) -> (BatchReport, Option<Error>)
    where
        I: IntoIterator<Item = Pod>,
    {
        let outcome = run_batch(
            "create",
            self.limits,
            self.batch_flow(),
            pods,
            |pod, call| async move {
                self.create_one(pod, call)
                    .await
                    .map_err(|e| ItemFailure::Failed {
                        line: e.to_string(),
                        stops_batch: fails_every_call(&e).then_some(e),
                    })
            },
        )
        .await;
        (outcome.report, outcome.fatal)
    }

    /// POSTs `pod` and reads of the answer only the name the pod got. A batch needs
    /// nothing else, so it asks for the answer as `PartialObjectMetadata` (as a
    /// metadata-only get does) rather than the whole pod as stored (the worker template,
    /// the defaults the API server added): the API server encodes, and the client decrypts
    /// and reads, well under half the bytes (1,448 of 3,735 for a small pod, measured
    /// pretty-printed with curl), on the same cores that create the pods.
    async fn post_pod(&self, params: &PostParams, pod: &Pod) -> kube::Result<CreatedPod> {
        let body = serde_json::to_vec(pod).map_err(kube::Error::SerdeError)?;
        let mut request = kube::core::Request::new(Pod::url_path(&(), Some(self.namespace())))
            .create(params, body)
            .map_err(kube::Error::BuildRequest)?;
        metadata_only_answer(&mut request, "create");
        self.connection.client.request::<CreatedPod>(request).await
    }

    /// One pod of a batch, retried under flow control ([`Retries`]) without ever creating it
    /// twice: a create whose answer is lost is looked up by name and token before it is sent
    /// again, and when the lookup fails too the same name is sent (a 409 then tells).
    async fn create_one(&self, mut pod: Pod, call: BatchCall) -> Result<String> {
        let mut token = assign_name(&mut pod);
        let params = PostParams::default();
        let mut retries = Retries::new(BATCH_ATTEMPTS);
        let last_error = loop {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let permit = call.limiter.acquire().await;
            let result =
                tokio::time::timeout(BATCH_CALL_TIMEOUT, self.post_pod(&params, &pod)).await;
            let latency = permit.started().elapsed();
            let error = match result {
                Ok(Ok(created)) => {
                    permit.finish(CallOutcome::Done { latency });
                    self.answered.store(true, Ordering::Relaxed);
                    return Ok(created.metadata.name.unwrap_or(name));
                }
                Ok(Err(e)) => {
                    permit.finish(outcome_of(&e, latency));
                    Some(e)
                }
                Err(_) => {
                    permit.finish(CallOutcome::Failed);
                    debug!(pod = %name, "create timed out; checking before retrying");
                    None
                }
            };
            let error = match error {
                Some(e) if !is_retryable(&e) => {
                    return Err(map_kube_error(e, &self.at("create", "pods")));
                }
                other => other,
            };
            match &error {
                Some(kube::Error::Api(s)) if s.code == 409 => {
                    // Ours, from an attempt whose answer was lost; or a name another pod
                    // has, and then a new name. Unknown (the lookup failed): ask again.
                    match self.created_by_us(&name, &token).await {
                        Ok(true) => return Ok(name),
                        Ok(false) => {
                            debug!(pod = %name, "name taken by another pod; picking a new one");
                            pod.metadata.name = None;
                            pod.metadata.generate_name = Some(
                                name.get(..name.len().saturating_sub(SUFFIX_LEN))
                                    .unwrap_or_default()
                                    .to_owned(),
                            );
                            token = assign_name(&mut pod);
                            continue;
                        }
                        Err(_) => {}
                    }
                }
                Some(e) if !ambiguous(e) => {}
                // The answer was lost or the server failed after it may have stored it.
                _ => {
                    if let Ok(true) = self.created_by_us(&name, &token).await {
                        return Ok(name);
                    }
                }
            }
            let outage = error.as_ref().is_none_or(is_outage);
            let webhook = error.as_ref().is_some_and(is_webhook_failure);
            if !retries.again(outage, self.answered.load(Ordering::Relaxed))
                || (webhook && retries.failures >= WEBHOOK_ATTEMPTS)
            {
                break error;
            }
            call.retried.fetch_add(1, Ordering::Relaxed);
            let wait = retries.delay(error.as_ref().and_then(retry_after));
            debug!(pod = %name, failures = retries.failures, error = ?error.as_ref().map(describe_kube_error), ?wait, "retrying create");
            tokio::time::sleep(wait).await;
        };
        let name = pod.metadata.name.clone().unwrap_or_default();
        if self.created_by_us(&name, &token).await? {
            return Ok(name);
        }
        Err(match last_error {
            Some(e) => map_kube_error(e, &self.at("create", "pods")),
            None => Error::Timeout {
                what: format!(
                    "creating pod {name} ({} attempts; it does not exist)",
                    retries.failures
                ),
                seconds: BATCH_CALL_TIMEOUT.as_secs(),
            },
        })
    }

    /// Whether pod `name` exists and carries our create token.
    async fn created_by_us(&self, name: &str, token: &str) -> Result<bool> {
        let pods = self.pods();
        let found = with_retry("get pod", &self.answered, || pods.get_metadata_opt(name)).await;
        let found = at(found, &self.at("get", "pods"))?;
        Ok(found.is_some_and(|p| {
            p.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(CREATE_TOKEN_ANNOTATION))
                .is_some_and(|t| t == token)
        }))
    }
}

/// Gives a pod that has only a `generateName` its name, as the API server would (the same
/// alphabet and length), and a fresh create token; returns the token.
fn assign_name(pod: &mut Pod) -> String {
    let token = uuid::Uuid::new_v4().simple().to_string();
    if pod.metadata.name.is_none()
        && let Some(prefix) = pod.metadata.generate_name.clone()
    {
        pod.metadata.name = Some(format!("{prefix}{}", random_suffix()));
        pod.metadata.generate_name = None;
    }
    pod.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(CREATE_TOKEN_ANNOTATION.to_owned(), token.clone());
    token
}

/// [`SUFFIX_LEN`] characters of the API server's `generateName` alphabet (no vowels, no
/// look-alikes).
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes = *uuid::Uuid::new_v4().as_bytes();
    bytes
        .iter()
        .take(SUFFIX_LEN)
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect()
}

/// The answer of a create or a delete as its metadata only (the media type kube's
/// `get_metadata` asks for); errors still come as a `Status`.
pub(super) const METADATA_ONLY: &str =
    "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";

/// Asks for `request`'s answer as metadata only ([`METADATA_ONLY`]) and names the call
/// `verb` for kube's trace span: what every call of a pod batch sends.
pub(super) fn metadata_only_answer(request: &mut http::Request<Vec<u8>>, verb: &'static str) {
    request.headers_mut().insert(
        http::header::ACCEPT,
        http::HeaderValue::from_static(METADATA_ONLY),
    );
    request.extensions_mut().insert(verb);
}

/// What a batch reads of a create's answer ([`ClusterApi::post_pod`]); serde skips the rest
/// without building it.
#[derive(serde::Deserialize)]
struct CreatedPod {
    #[serde(default)]
    metadata: CreatedMeta,
}

#[derive(serde::Deserialize, Default)]
struct CreatedMeta {
    name: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::super::batch::CreateLimits;
    use super::super::mock::{api, body_json, not_found, ok_json, status};
    use super::*;
    use http::Response;
    use kube::client::Body;
    use serde_json::json;

    fn worker(n: usize) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"generateName": "c-worker-", "labels": {"n": n.to_string()}},
            "spec": {"containers": [{"name": "w", "image": "i"}]}
        }))
        .unwrap()
    }

    fn created(request_body: &serde_json::Value, name: &str) -> Response<Body> {
        let mut pod = request_body.clone();
        pod["metadata"]["name"] = json!(name);
        ok_json(pod)
    }

    fn metadata_of(name: &str, token: Option<&str>) -> Response<Body> {
        ok_json(
            json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                       "metadata": {"name": name, "annotations": token.map(|t| json!({CREATE_TOKEN_ANNOTATION: t})).unwrap_or(json!({}))}}),
        )
    }

    /// 429 is retried as is; a 409 means the name is taken (checked: not ours) so a new
    /// name is drawn; a 503 may have stored the pod, so it is looked up (absent) before the
    /// same name is sent again.
    #[tokio::test(start_paused = true)]
    async fn creation_retries_throttling_and_conflicts_without_duplicates() {
        let (api, mut handle) = api("team");
        let server = tokio::spawn(async move {
            let mut names = Vec::new();
            let post = |names: &mut Vec<String>, body: serde_json::Value| {
                assert!(body["metadata"].get("generateName").is_none(), "{body}");
                let name = body["metadata"]["name"].as_str().unwrap().to_owned();
                assert!(
                    name.starts_with("c-worker-") && name.len() == "c-worker-".len() + 5,
                    "{name}"
                );
                assert!(body["metadata"]["annotations"][CREATE_TOKEN_ANNOTATION].is_string());
                names.push(name.clone());
                name
            };
            // 1: throttled.
            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(request.method(), http::Method::POST);
            assert_eq!(request.uri().path(), "/api/v1/namespaces/team/pods");
            assert_eq!(
                request.headers()[http::header::ACCEPT],
                METADATA_ONLY,
                "a create asks only for the pod's metadata back"
            );
            post(&mut names, body_json(request).await);
            send.send_response(status(
                429,
                "TooManyRequests",
                "slow down",
                json!({"retryAfterSeconds": 1}),
            ));
            // 2: the name is taken by someone else's pod.
            let (request, send) = handle.next_request().await.unwrap();
            let name = post(&mut names, body_json(request).await);
            send.send_response(status(
                409,
                "AlreadyExists",
                "exists",
                json!({"name": name, "kind": "pods"}),
            ));
            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(request.method(), http::Method::GET);
            assert!(request.uri().path().ends_with(&format!("/pods/{name}")));
            send.send_response(metadata_of(&name, Some("someone-else")));
            // 3: a server error: was it stored? No.
            let (request, send) = handle.next_request().await.unwrap();
            let name = post(&mut names, body_json(request).await);
            send.send_response(status(503, "ServiceUnavailable", "try again", json!({})));
            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(request.method(), http::Method::GET);
            send.send_response(not_found(&name));
            // 4: created.
            let (request, send) = handle.next_request().await.unwrap();
            let body = body_json(request).await;
            let name = post(&mut names, body.clone());
            send.send_response(created(&body, &name));
            names
        });
        let (report, fatal) = api.create_pods(vec![worker(0)]).await;
        let names = tokio::time::timeout(Duration::from_secs(60), server)
            .await
            .unwrap()
            .unwrap();
        assert!(fatal.is_none());
        assert_eq!(names[0], names[1], "429 retries the same name");
        assert_ne!(names[1], names[2], "a taken name is replaced");
        assert_eq!(
            names[2], names[3],
            "after a 503 the same name is sent again"
        );
        assert_eq!(
            report,
            BatchReport {
                done: vec![names[3].clone()],
                failed: vec![],
                retried: 2,
            }
        );
    }

    /// The batch takes its pods as calls have room, so a caller that renders each pod as it
    /// is taken (the operator's worker pods) holds no more pods than calls in flight.
    #[tokio::test(start_paused = true)]
    async fn a_batch_takes_its_pods_only_as_calls_have_room() {
        use std::sync::Arc;
        use std::sync::atomic::AtomicUsize;
        let limits = CreateLimits {
            initial_in_flight: 4,
            max_in_flight: 4,
        };
        let (api, mut handle) = api("team");
        let api = api.with_limits(limits);
        let taken = Arc::new(AtomicUsize::new(0));
        let server = {
            let taken = taken.clone();
            tokio::spawn(async move {
                let mut most_taken_ahead = 0;
                for answered in 0..100 {
                    let (request, send) = handle.next_request().await.unwrap();
                    let ahead = taken.load(Ordering::SeqCst) - answered;
                    most_taken_ahead = most_taken_ahead.max(ahead);
                    let body = body_json(request).await;
                    let name = body["metadata"]["name"].as_str().unwrap().to_owned();
                    send.send_response(created(&body, &name));
                }
                most_taken_ahead
            })
        };
        let pods = (0..100).map(|n| {
            taken.fetch_add(1, Ordering::SeqCst);
            worker(n)
        });
        let (report, fatal) = api.create_pods(pods).await;
        let most_taken_ahead = server.await.unwrap();
        assert!(fatal.is_none());
        assert_eq!(report.done.len(), 100);
        assert!(
            most_taken_ahead <= limits.max_in_flight,
            "{most_taken_ahead} pods taken before their calls had room (max {} in flight)",
            limits.max_in_flight
        );
    }

    /// Batches of two namespaces' APIs given one flow limiter share it: the 429 one batch
    /// met halves the limit the other batch starts with (the operator's many groups back off
    /// together), where each batch alone starts afresh.
    #[tokio::test(start_paused = true)]
    async fn a_shared_flow_carries_throttling_from_one_batch_to_the_next() {
        use crate::flow::{FlowControl, FlowLimiter};
        let flow = FlowLimiter::new(FlowControl::new(16, 16));
        let (team_a, mut handle_a) = api("a");
        let team_a = team_a.with_shared_flow(flow.clone());
        let server = tokio::spawn(async move {
            let (request, send) = handle_a.next_request().await.unwrap();
            body_json(request).await;
            send.send_response(status(
                429,
                "TooManyRequests",
                "slow down",
                json!({"retryAfterSeconds": 1}),
            ));
            let (request, send) = handle_a.next_request().await.unwrap();
            let body = body_json(request).await;
            let name = body["metadata"]["name"].as_str().unwrap().to_owned();
            send.send_response(created(&body, &name));
        });
        let (report, fatal) = team_a.create_pods(vec![worker(0)]).await;
        tokio::time::timeout(Duration::from_secs(60), server)
            .await
            .unwrap()
            .unwrap();
        assert!(fatal.is_none());
        assert_eq!(report.done.len(), 1);
        let (limit, in_flight) = flow.snapshot();
        assert_eq!(in_flight, 0);
        assert!(
            limit < 16,
            "the throttled batch lowered the shared limit: {limit}"
        );
        let (team_b, _handle_b) = api("b");
        let team_b = team_b.with_shared_flow(flow.clone());
        assert_eq!(
            team_b.batch_flow().snapshot().0,
            limit,
            "the next batch starts there"
        );
    }

    /// The scheduler pod's create answer lost after it was stored: the retry's 409 is found
    /// to be this very pod (its create token), and the start goes on with it.
    #[tokio::test(start_paused = true)]
    async fn a_lost_answer_to_the_scheduler_pods_create_is_this_pod() {
        let (api, mut handle) = api("team");
        let server = tokio::spawn(async move {
            let (request, send) = handle.next_request().await.unwrap();
            let body = body_json(request).await;
            assert_eq!(body["metadata"]["name"], "etl");
            let token = body["metadata"]["annotations"][CREATE_TOKEN_ANNOTATION]
                .as_str()
                .unwrap()
                .to_owned();
            send.send_response(status(
                503,
                "ServiceUnavailable",
                "stored, answer lost",
                json!({}),
            ));
            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(request.method(), http::Method::POST);
            send.send_response(status(
                409,
                "AlreadyExists",
                "exists",
                json!({"name": "etl", "kind": "pods"}),
            ));
            // 409 is retried as a batch retries it, then looked up.
            loop {
                let (request, send) = handle.next_request().await.unwrap();
                if request.method() == http::Method::POST {
                    send.send_response(status(
                        409,
                        "AlreadyExists",
                        "exists",
                        json!({"name": "etl", "kind": "pods"}),
                    ));
                    continue;
                }
                assert!(request.uri().path().ends_with("/pods/etl"));
                send.send_response(metadata_of("etl", Some(&token)));
                break;
            }
            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(request.method(), http::Method::GET);
            send.send_response(ok_json(json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "etl", "uid": "uid-1"}})));
        });
        let scheduler: Pod = serde_json::from_value(json!({
            "metadata": {"name": "etl"},
            "spec": {"containers": [{"name": "s", "image": "i"}]}
        }))
        .unwrap();
        let created = tokio::time::timeout(Duration::from_secs(300), api.create_pod(&scheduler))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(created.metadata.uid.as_deref(), Some("uid-1"));
        server.await.unwrap();
    }

    /// A fixed name another pod already has is still an error (not ours: another token).
    #[tokio::test(start_paused = true)]
    async fn a_fixed_name_taken_by_another_pod_is_an_error() {
        let (api, mut handle) = api("team");
        let server = tokio::spawn(async move {
            loop {
                let (request, send) = handle.next_request().await.unwrap();
                if request.method() == http::Method::POST {
                    send.send_response(status(
                        409,
                        "AlreadyExists",
                        "exists",
                        json!({"name": "etl", "kind": "pods"}),
                    ));
                    continue;
                }
                send.send_response(metadata_of("etl", Some("someone-else")));
                break;
            }
        });
        let scheduler: Pod = serde_json::from_value(json!({
            "metadata": {"name": "etl"},
            "spec": {"containers": [{"name": "s", "image": "i"}]}
        }))
        .unwrap();
        let err = tokio::time::timeout(Duration::from_secs(300), api.create_pod(&scheduler))
            .await
            .unwrap()
            .unwrap_err();
        assert!(err.to_string().contains("exists"), "{err}");
        server.await.unwrap();
    }

    /// A create whose answer is lost (the connection broke after the server stored it) is
    /// found by its name and token, and not sent again.
    #[tokio::test(start_paused = true)]
    async fn a_lost_answer_is_looked_up_not_repeated() {
        let (api, mut handle) = api("team");
        let server = tokio::spawn(async move {
            let (request, send) = handle.next_request().await.unwrap();
            let body = body_json(request).await;
            let name = body["metadata"]["name"].as_str().unwrap().to_owned();
            let token = body["metadata"]["annotations"][CREATE_TOKEN_ANNOTATION]
                .as_str()
                .unwrap()
                .to_owned();
            send.send_response(status(
                504,
                "Timeout",
                "the server was unable to return a response in the time allotted",
                json!({}),
            ));
            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(request.method(), http::Method::GET);
            send.send_response(metadata_of(&name, Some(&token)));
            (name, handle)
        });
        let (report, fatal) = api.create_pods(vec![worker(0)]).await;
        let (name, _handle) = tokio::time::timeout(Duration::from_secs(60), server)
            .await
            .unwrap()
            .unwrap();
        assert!(fatal.is_none());
        assert_eq!(report.done, vec![name]);
    }

    #[tokio::test(start_paused = true)]
    async fn partial_failure_is_reported_not_hidden() {
        let (api, mut handle) = api("team");
        let server = tokio::spawn(async move {
            let mut n = 0;
            while let Some((request, send)) = handle.next_request().await {
                let body = body_json(request).await;
                if body["metadata"]["labels"]["n"] == "1" {
                    send.send_response(status(
                        422,
                        "Invalid",
                        "spec.containers[0].image: Required value",
                        json!({}),
                    ));
                } else {
                    n += 1;
                    send.send_response(created(&body, &format!("c-worker-{n}")));
                }
            }
        });
        let api = api.with_limits(CreateLimits {
            initial_in_flight: 2,
            max_in_flight: 2,
        });
        let (report, fatal) = api.create_pods((0..3).map(worker)).await;
        drop(api);
        server.abort();
        assert!(fatal.is_none());
        assert_eq!(report.done.len(), 2);
        assert_eq!(report.failed.len(), 1);
        assert!(
            report.failed[0].contains("Required value"),
            "{:?}",
            report.failed
        );
        let err = report.into_result("create workers").unwrap_err();
        assert_eq!(err.exit_code(), crate::error::exit::PARTIAL);
        assert!(err.to_string().contains("2 of 3 done"), "{err}");
    }

    #[tokio::test]
    async fn forbidden_names_the_missing_permission_and_stops_the_batch() {
        let (api, mut handle) = api("team");
        let server = tokio::spawn(async move {
            let (_, send) = handle.next_request().await.unwrap();
            send.send_response(status(403, "Forbidden", "pods is forbidden: User \"system:serviceaccount:team:x\" cannot create resource \"pods\"", json!({"kind": "pods"})));
            handle
        });
        let api = api.with_limits(CreateLimits::with_max_in_flight(1));
        let (report, fatal) = api.create_pods((0..3).map(worker)).await;
        let _handle = server.await.unwrap();
        let fatal = fatal.expect("forbidden is fatal");
        let text = fatal.to_string();
        assert!(
            text.contains("lacks permission to create pods in namespace team"),
            "{text}"
        );
        assert!(text.contains("crates/dask-kube/deploy/rbac.yaml"), "{text}");
        assert_eq!(report.done.len(), 0);
        assert_eq!(
            report.failed.len(),
            3,
            "later pods are reported as not attempted"
        );
    }

    #[tokio::test]
    async fn missing_namespace_says_so() {
        let (api, mut handle) = api("nope");
        let server = tokio::spawn(async move {
            let (_, send) = handle.next_request().await.unwrap();
            send.send_response(status(
                404,
                "NotFound",
                "namespaces \"nope\" not found",
                json!({"name": "nope", "kind": "namespaces"}),
            ));
        });
        let err = api.create_pod(&worker(0)).await.unwrap_err();
        server.await.unwrap();
        assert!(
            matches!(err, Error::NamespaceNotFound(ref ns) if ns == "nope"),
            "{err}"
        );
        assert_eq!(err.exit_code(), crate::error::exit::NOT_FOUND);
    }
}
