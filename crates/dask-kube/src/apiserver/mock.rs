//! The "API server verifier" of the mock tests: a client whose every call goes to a
//! `tower_test` handle the test answers like the API server would.

use super::{ClusterApi, KubeConnection};
use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::json;
use tower_test::mock;

/// The test's end of the mock client.
pub(crate) type Handle = mock::Handle<Request<Body>, Response<Body>>;

/// A client whose every call goes to the returned handle.
pub(crate) fn mock_client() -> (Client, Handle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), handle)
}

/// The pod and Service calls of `namespace` through a mock client.
pub(crate) fn api(namespace: &str) -> (ClusterApi, Handle) {
    let (client, handle) = mock_client();
    (
        ClusterApi::new(KubeConnection::new(
            client,
            namespace,
            "https://127.0.0.1:6443",
        )),
        handle,
    )
}

/// A `Status` answer.
pub(crate) fn status(
    code: u16,
    reason: &str,
    message: &str,
    details: serde_json::Value,
) -> Response<Body> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "details": details, "code": code,
    });
    Response::builder()
        .status(code)
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

/// A 200 with `value`.
pub(crate) fn ok_json(value: serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(200)
        .body(Body::from(serde_json::to_vec(&value).unwrap()))
        .unwrap()
}

/// The JSON body of a request.
pub(crate) async fn body_json(request: Request<Body>) -> serde_json::Value {
    let bytes = http_body_util::BodyExt::collect(request.into_body())
        .await
        .unwrap()
        .to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

/// A 404 for pod `name`.
pub(crate) fn not_found(name: &str) -> Response<Body> {
    status(
        404,
        "NotFound",
        &format!("pods \"{name}\" not found"),
        json!({"name": name, "kind": "pods"}),
    )
}
