//! HTTPS server, routing and the HTTP/1.1 upgrades into port-forward sessions.
//!
//! Paths, methods and status codes follow the kubelet's restful routes
//! (`pkg/kubelet/server/server.go`): `/healthz`, `GET /containerLogs/ns/pod/container`,
//! `GET|POST /portForward/ns/pod[/uid]`; anything else is 404.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::http_util::{self, Body};
use crate::logs::{self, ContainerRef};
use crate::portforward::{self, PodTarget, websocket};
use crate::{Error, PodDirectory, Result, tls};

/// TLS handshakes that take longer than this are dropped (the apiserver is local).
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the kubelet endpoints on `listener` until `shutdown` is cancelled, then waits
/// for open connections (log follows, port-forwards) to wind down.
///
/// Makes its own self-signed certificate; fails only if that is impossible.
pub async fn serve(
    listener: TcpListener,
    pods: Arc<dyn PodDirectory>,
    shutdown: CancellationToken,
) -> Result<()> {
    let config = tls::self_signed_config()?;
    let acceptor = TlsAcceptor::from(config);
    let addr = listener.local_addr().map_err(Error::LocalAddr)?;
    info!(%addr, "kubelet api listening (https)");
    let tasks = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of descriptors and the like: transient, keep serving.
                    warn!(error = %e, "kubelet api: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        // As Go's net package does for every TCP connection of the real kubelet: without it,
        // the port-forward's first exchange waits ~40 ms on Nagle and the peer's delayed ACK.
        let _ = tcp.set_nodelay(true);
        let (acceptor, pods, shutdown, tracker) = (
            acceptor.clone(),
            pods.clone(),
            shutdown.clone(),
            tasks.clone(),
        );
        tasks.spawn(async move {
            let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "kubelet api: TLS handshake failed");
                    return;
                }
                Err(_) => {
                    debug!(%peer, "kubelet api: TLS handshake timed out");
                    return;
                }
            };
            let ctx = Ctx { pods, shutdown: shutdown.clone(), tasks: tracker };
            let service = service_fn(move |req| {
                let ctx = ctx.clone();
                async move { Ok::<_, Infallible>(ctx.handle(req)) }
            });
            let conn = http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .with_upgrades();
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                debug!(%peer, error = %Error::Http(e), "kubelet api: connection ended with an error");
            }
        });
    }
    tasks.close();
    tasks.wait().await;
    info!(%addr, "kubelet api stopped");
    Ok(())
}

/// A request path, split like the kubelet's routes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route<'a> {
    Healthz,
    ContainerLogs {
        namespace: &'a str,
        pod: &'a str,
        container: &'a str,
    },
    PortForward {
        namespace: &'a str,
        pod: &'a str,
    },
    NotFound,
}

pub(crate) fn route(path: &str) -> Route<'_> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["healthz"] => Route::Healthz,
        ["containerLogs", namespace, pod, container]
            if !namespace.is_empty() && !pod.is_empty() && !container.is_empty() =>
        {
            Route::ContainerLogs {
                namespace,
                pod,
                container,
            }
        }
        // The optional last segment is the pod UID; the apiserver never sends it and
        // our pods are identified by namespace/name alone.
        ["portForward", namespace, pod] | ["portForward", namespace, pod, _]
            if !namespace.is_empty() && !pod.is_empty() =>
        {
            Route::PortForward { namespace, pod }
        }
        _ => Route::NotFound,
    }
}

#[derive(Clone)]
struct Ctx {
    pods: Arc<dyn PodDirectory>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Ctx {
    fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_owned();
        debug!(method = %req.method(), uri = %req.uri(), "kubelet api request");
        match route(&path) {
            Route::Healthz => http_util::text(StatusCode::OK, "ok"),
            Route::ContainerLogs {
                namespace,
                pod,
                container,
            } => {
                if req.method() != Method::GET {
                    return http_util::text(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "405: Method Not Allowed",
                    );
                }
                let target = ContainerRef {
                    namespace: namespace.to_owned(),
                    pod: pod.to_owned(),
                    container: container.to_owned(),
                };
                logs::handle(req.uri().query(), &self.pods, target, self.shutdown.clone())
            }
            Route::PortForward { namespace, pod } => {
                if req.method() != Method::GET && req.method() != Method::POST {
                    return http_util::text(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "405: Method Not Allowed",
                    );
                }
                let (namespace, pod) = (namespace.to_owned(), pod.to_owned());
                self.port_forward(req, namespace, pod)
            }
            Route::NotFound => http_util::text(StatusCode::NOT_FOUND, "404 page not found"),
        }
    }

    /// Checks in the kubelet's order (websocket `port` query, pod, protocol), answers
    /// 101 and hands the upgraded connection to the matching port-forward protocol.
    fn port_forward(
        &self,
        mut req: Request<Incoming>,
        namespace: String,
        pod: String,
    ) -> Response<Body> {
        let headers = req.headers();
        let websocket = http_util::header_values(headers, header::UPGRADE.as_str())
            .iter()
            .any(|v| v.eq_ignore_ascii_case("websocket"))
            && http_util::header_contains(headers, header::CONNECTION.as_str(), "upgrade");

        let mut ports = Vec::new();
        if websocket {
            let Some(query) = http_util::parse_query(req.uri().query()) else {
                return http_util::text(StatusCode::BAD_REQUEST, "unable to parse the query");
            };
            match portforward::parse_ports(&http_util::all(&query, "port")) {
                Ok(p) => ports = p,
                Err(e) => return http_util::text(StatusCode::BAD_REQUEST, e),
            }
        }
        let Some(ip) = self.pods.pod_ip(&namespace, &pod) else {
            return http_util::text(StatusCode::NOT_FOUND, "pod does not exist");
        };
        let target = PodTarget { namespace, pod, ip };

        let mut resp = if websocket {
            match websocket_handshake(headers) {
                Ok(resp) => resp,
                Err(resp) => return *resp,
            }
        } else {
            match spdy_handshake(headers) {
                Ok(resp) => resp,
                Err(resp) => return *resp,
            }
        };
        let protocol = resp
            .headers()
            .get(header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut().insert(
            header::CONNECTION,
            http::HeaderValue::from_static("Upgrade"),
        );

        let on_upgrade = hyper::upgrade::on(&mut req);
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => TokioIo::new(u),
                Err(e) => {
                    warn!(pod = %target, error = %e, "port-forward: upgrade failed");
                    return;
                }
            };
            info!(pod = %target, websocket, ?ports, "port-forward connection opened");
            let result = if websocket {
                let ws = WebSocketStream::from_raw_socket(upgraded, Role::Server, None).await;
                let codec = websocket::ChannelCodec::for_protocol(&protocol);
                websocket::serve(ws, codec, ports, target.clone(), shutdown).await
            } else {
                portforward::spdy::serve(upgraded, target.clone(), shutdown).await
            };
            match result {
                Ok(()) => info!(pod = %target, "port-forward connection closed"),
                Err(e) => warn!(pod = %target, error = %e, "port-forward connection failed"),
            }
        });
        resp
    }
}

/// `httpstream.Handshake` plus the SPDY upgrade check: the 101 response (status set by
/// the caller) or the kubelet's error response.
fn spdy_handshake(headers: &http::HeaderMap) -> Result<Response<Body>, Box<Response<Body>>> {
    let versions = http_util::header_values(headers, "X-Stream-Protocol-Version");
    if versions.is_empty() {
        return Err(Box::new(http_util::text(
            StatusCode::BAD_REQUEST,
            format!(
                "unable to upgrade: header X-Stream-Protocol-Version does not exist in request with {} headers",
                headers.len()
            ),
        )));
    }
    let client = portforward::comma_separated(versions.iter().copied());
    if client.is_empty() {
        return Err(Box::new(http_util::text(
            StatusCode::BAD_REQUEST,
            format!(
                "unable to upgrade: header X-Stream-Protocol-Version contains {versions:?}, but no valid protocols"
            ),
        )));
    }
    let Some(protocol) = portforward::negotiate(&client, &[portforward::PROTOCOL_V1]) else {
        let mut resp = http_util::text(
            StatusCode::FORBIDDEN,
            format!(
                "unable to upgrade: unable to negotiate protocol: client supports {client:?}, server accepts [{:?}]",
                portforward::PROTOCOL_V1
            ),
        );
        resp.headers_mut().insert(
            "X-Accepted-Stream-Protocol-Versions",
            http::HeaderValue::from_static(portforward::PROTOCOL_V1),
        );
        return Err(Box::new(resp));
    };
    if !http_util::header_contains(headers, header::CONNECTION.as_str(), "upgrade")
        || !http_util::header_contains(headers, header::UPGRADE.as_str(), "spdy/3.1")
    {
        return Err(Box::new(http_util::text(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: missing upgrade headers in request",
        )));
    }
    let mut resp = Response::new(http_util::full(""));
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, http::HeaderValue::from_static("SPDY/3.1"));
    if let Ok(v) = http::HeaderValue::from_str(protocol) {
        h.insert("X-Stream-Protocol-Version", v);
    }
    Ok(resp)
}

/// RFC 6455 server handshake with the kubelet's subprotocol choice (first client
/// protocol we support; no header counts as ""). Mismatch → 403 like x/net/websocket.
fn websocket_handshake(headers: &http::HeaderMap) -> Result<Response<Body>, Box<Response<Body>>> {
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(Box::new(http_util::text(
            StatusCode::BAD_REQUEST,
            "missing Sec-WebSocket-Key",
        )));
    };
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        let mut resp = http_util::text(StatusCode::BAD_REQUEST, "unsupported websocket version");
        resp.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            http::HeaderValue::from_static("13"),
        );
        return Err(Box::new(resp));
    }
    let offered = portforward::comma_separated(http_util::header_values(
        headers,
        header::SEC_WEBSOCKET_PROTOCOL.as_str(),
    ));
    let offered = if offered.is_empty() {
        vec![""]
    } else {
        offered
    };
    let Some(protocol) = portforward::negotiate(&offered, &websocket::PROTOCOLS) else {
        return Err(Box::new(http_util::text(
            StatusCode::FORBIDDEN,
            format!(
                "requested protocol(s) are not supported: {offered:?}; supports {:?}",
                websocket::PROTOCOLS
            ),
        )));
    };
    let mut resp = Response::new(http_util::full(""));
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, http::HeaderValue::from_static("websocket"));
    if let Ok(v) = http::HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if !protocol.is_empty()
        && let Ok(v) = http::HeaderValue::from_str(protocol)
    {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    #[rstest]
    #[case::healthz("/healthz", Route::Healthz)]
    #[case::logs("/containerLogs/ns/p/c", Route::ContainerLogs { namespace: "ns", pod: "p", container: "c" })]
    #[case::port_forward("/portForward/ns/p", Route::PortForward { namespace: "ns", pod: "p" })]
    #[case::port_forward_with_uid("/portForward/ns/p/0123-uid", Route::PortForward { namespace: "ns", pod: "p" })]
    #[case::logs_missing_container("/containerLogs/ns/p", Route::NotFound)]
    #[case::logs_empty_segment("/containerLogs/ns//c", Route::NotFound)]
    #[case::logs_extra_segment("/containerLogs/ns/p/c/x", Route::NotFound)]
    #[case::root("/", Route::NotFound)]
    #[case::other_kubelet_path("/exec/ns/p/c", Route::NotFound)]
    fn routes(#[case] path: &str, #[case] want: Route<'static>) {
        assert_eq!(route(path), want);
    }

    fn hm(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                http::HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[rstest]
    #[case::what_the_apiserver_sends(&[("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"), ("X-Stream-Protocol-Version", "portforward.k8s.io")], Ok(()))]
    #[case::several_versions(&[("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"), ("X-Stream-Protocol-Version", "v9, portforward.k8s.io")], Ok(()))]
    #[case::no_version(&[("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")], Err(StatusCode::BAD_REQUEST))]
    #[case::wrong_version(&[("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"), ("X-Stream-Protocol-Version", "v4.channel.k8s.io")], Err(StatusCode::FORBIDDEN))]
    #[case::not_an_upgrade(&[("X-Stream-Protocol-Version", "portforward.k8s.io")], Err(StatusCode::BAD_REQUEST))]
    fn spdy_handshakes(#[case] headers: &[(&str, &str)], #[case] want: Result<(), StatusCode>) {
        let got = spdy_handshake(&hm(headers)).map(|r| {
            assert_eq!(r.headers()["upgrade"], "SPDY/3.1");
            assert_eq!(
                r.headers()["x-stream-protocol-version"],
                "portforward.k8s.io"
            );
        });
        assert_eq!(got.map_err(|r| r.status()), want);
    }

    #[rstest]
    #[case::kube_rs(&[("Sec-WebSocket-Protocol", "v5.channel.k8s.io, v4.channel.k8s.io")], Ok(Some("v4.channel.k8s.io")))]
    #[case::base64(&[("Sec-WebSocket-Protocol", "v4.base64.channel.k8s.io")], Ok(Some("v4.base64.channel.k8s.io")))]
    #[case::no_protocol(&[], Ok(None))]
    #[case::only_v5(&[("Sec-WebSocket-Protocol", "v5.channel.k8s.io")], Err(StatusCode::FORBIDDEN))]
    fn websocket_handshakes(
        #[case] extra: &[(&str, &str)],
        #[case] want: Result<Option<&str>, StatusCode>,
    ) {
        let mut pairs = vec![
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ];
        pairs.extend_from_slice(extra);
        let got = websocket_handshake(&hm(&pairs)).map(|r| {
            // RFC 6455 section 1.3 example key/accept pair.
            assert_eq!(
                r.headers()["sec-websocket-accept"],
                "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
            );
            r.headers()
                .get("sec-websocket-protocol")
                .map(|v| v.to_str().expect("ascii").to_owned())
        });
        assert_eq!(
            got.map_err(|r| r.status()),
            want.map(|p| p.map(str::to_owned))
        );
    }
}
