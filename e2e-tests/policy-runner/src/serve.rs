//! `serve`: a mutating admission webhook over TLS that answers AdmissionReview v1 with
//! the same evaluation path as `run` (fresh instance per request, 2 s deadline).
//!
//! Paths follow policy-server: `POST /validate/<policy-name>`; `POST /mutate` is an
//! alias; `GET /readiness` answers 200 once the policy is loaded.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, error, info, warn};

use crate::admission::{
    AdmissionRequest, AdmissionReviewResponse, InputForm, parse_request_document,
};
use crate::evaluator::Evaluator;
use crate::{Error, Result};

/// Largest AdmissionReview body accepted (the apiserver's own request limit is 3 MiB
/// of object; reviews carry object and oldObject).
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /readiness`.
    Readiness,
    /// `POST /validate/<our policy>` or `POST /mutate`.
    Review,
    /// A path this server does not serve.
    NotFound(String),
    /// A known path with the wrong method.
    MethodNotAllowed(&'static str),
}

/// Routes by method and path (query string excluded: the apiserver appends `?timeout=`).
pub fn route(method: &Method, path: &str, policy_name: &str) -> Route {
    let review_path = path == "/mutate"
        || path
            .strip_prefix("/validate/")
            .is_some_and(|name| name == policy_name);
    if review_path {
        return if method == Method::POST {
            Route::Review
        } else {
            Route::MethodNotAllowed("POST")
        };
    }
    if path == "/readiness" {
        return if method == Method::GET || method == Method::HEAD {
            Route::Readiness
        } else {
            Route::MethodNotAllowed("GET")
        };
    }
    match path.strip_prefix("/validate/") {
        Some(name) => Route::NotFound(format!(
            "unknown policy {name:?}: this server serves {policy_name:?}"
        )),
        None => Route::NotFound(format!("no such path {path:?}")),
    }
}

/// Decodes a webhook body: it must be an AdmissionReview with a valid `request`.
pub fn decode_review(body: &[u8]) -> std::result::Result<AdmissionRequest, String> {
    match parse_request_document(body) {
        Ok((request, InputForm::Review)) => Ok(request),
        Ok((_, InputForm::BareRequest)) => Err(
            "expected an AdmissionReview (admission.k8s.io/v1) with a `request` member".to_owned(),
        ),
        Err(e) => Err(e.to_string()),
    }
}

/// The webhook: one policy with its settings.
#[derive(Debug)]
pub struct Webhook {
    evaluator: Arc<Evaluator>,
    policy_name: String,
}

impl Webhook {
    /// A webhook serving `evaluator` under `/validate/<policy_name>`.
    pub fn new(evaluator: Arc<Evaluator>, policy_name: impl Into<String>) -> Self {
        Self {
            evaluator,
            policy_name: policy_name.into(),
        }
    }

    /// Answers one HTTP request.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        match route(req.method(), req.uri().path(), &self.policy_name) {
            Route::Readiness => text(StatusCode::OK, "ready"),
            Route::NotFound(msg) => text(StatusCode::NOT_FOUND, &msg),
            Route::MethodNotAllowed(allowed) => {
                let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
                resp.headers_mut()
                    .insert(header::ALLOW, header::HeaderValue::from_static(allowed));
                resp
            }
            Route::Review => self.review(req.into_body()).await,
        }
    }

    async fn review(&self, body: Incoming) -> Response<Full<Bytes>> {
        let start = Instant::now();
        let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("AdmissionReview larger than {MAX_BODY_BYTES} bytes"),
                );
            }
            Err(e) => return text(StatusCode::BAD_REQUEST, &format!("cannot read body: {e}")),
        };
        let request = match decode_review(&body) {
            Ok(request) => request,
            Err(msg) => {
                warn!(error = %msg, "malformed AdmissionReview");
                return text(
                    StatusCode::BAD_REQUEST,
                    &format!("malformed AdmissionReview: {msg}"),
                );
            }
        };
        let evaluator = Arc::clone(&self.evaluator);
        let evaluated = tokio::task::spawn_blocking(move || {
            let response = evaluator.evaluate(&request);
            (request, response)
        })
        .await;
        let (request, response) = match evaluated {
            Ok(pair) => pair,
            Err(e) => {
                error!(error = %e, "policy evaluation task failed");
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "policy evaluation failed",
                );
            }
        };
        info!(
            uid = request.uid(),
            kind = request.kind(),
            operation = request.operation(),
            namespace = request.namespace(),
            name = request.name(),
            allowed = response.allowed,
            patched = response.patch.is_some(),
            elapsed_us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX),
            "admission review"
        );
        match serde_json::to_vec(&AdmissionReviewResponse::new(response)) {
            Ok(json) => {
                let mut resp = Response::new(Full::new(Bytes::from(json)));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/json"),
                );
                resp
            }
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("cannot serialize AdmissionReview: {e}"),
            ),
        }
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Binds the listen address.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Listen { addr, source })
}

/// Serves HTTPS on `listener` until `shutdown` completes. Each connection is served on
/// its own task; evaluation runs on the blocking pool.
pub async fn run(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    webhook: Arc<Webhook>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => {
                info!("shutting down");
                return Ok(());
            }
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let webhook = Arc::clone(&webhook);
        tokio::spawn(async move {
            let stream = match acceptor.accept(tcp).await {
                Ok(stream) => stream,
                Err(e) => {
                    debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let service = service_fn(move |req| {
                let webhook = Arc::clone(&webhook);
                async move { Ok::<_, Infallible>(webhook.handle(req).await) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, error = %e, "connection error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use serde_json::json;

    const NAME: &str = "dask-worker-defaults";

    #[rstest]
    #[case::validate_our_policy(Method::POST, "/validate/dask-worker-defaults", Route::Review)]
    #[case::mutate_alias(Method::POST, "/mutate", Route::Review)]
    #[case::readiness(Method::GET, "/readiness", Route::Readiness)]
    #[case::readiness_head(Method::HEAD, "/readiness", Route::Readiness)]
    #[case::get_on_review_path(
        Method::GET,
        "/validate/dask-worker-defaults",
        Route::MethodNotAllowed("POST")
    )]
    #[case::post_on_readiness(Method::POST, "/readiness", Route::MethodNotAllowed("GET"))]
    #[case::other_policy(Method::POST, "/validate/other", Route::NotFound(
        "unknown policy \"other\": this server serves \"dask-worker-defaults\"".to_owned()))]
    #[case::unknown_path(Method::GET, "/", Route::NotFound("no such path \"/\"".to_owned()))]
    fn routes_like_policy_server(#[case] method: Method, #[case] path: &str, #[case] want: Route) {
        assert_eq!(route(&method, path, NAME), want);
    }

    #[rstest]
    #[case::review(json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "u", "kind": {"kind": "Pod"}, "operation": "CREATE"}}), Ok("u"))]
    #[case::bare_request_refused(json!({"uid": "u", "kind": {"kind": "Pod"}, "operation": "CREATE"}),
        Err("expected an AdmissionReview"))]
    #[case::review_without_uid(json!({"kind": "AdmissionReview", "request": {"operation": "CREATE"}}),
        Err("missing `uid`"))]
    fn decodes_reviews(
        #[case] body: serde_json::Value,
        #[case] want: std::result::Result<&str, &str>,
    ) {
        let got = serde_json::to_vec(&body)
            .map_err(|e| e.to_string())
            .and_then(|b| decode_review(&b));
        match (got, want) {
            (Ok(req), Ok(uid)) => assert_eq!(req.uid(), uid),
            (Err(msg), Err(needle)) => {
                assert!(msg.contains(needle), "{msg:?} should contain {needle:?}")
            }
            (got, want) => panic!("got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn garbage_body_is_refused_with_parse_error() {
        let Err(msg) = decode_review(b"<xml/>") else {
            panic!("garbage must be refused");
        };
        assert!(msg.contains("failed to parse admission request"), "{msg}");
    }
}
