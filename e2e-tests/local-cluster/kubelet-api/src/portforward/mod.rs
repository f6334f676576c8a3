//! `/portForward/{namespace}/{pod}`: the two wire protocols the apiserver can hand us.
//!
//! What kube-apiserver v1.37 sends (`pkg/registry/core/pod/rest/subresources.go`,
//! `PortForwardREST.Connect`): unless the Node declares the `ExtendWebSocketsToKubelet`
//! feature in `status.declaredFeatures` (ours does not), requests reach us through
//! `translator.NewTranslatingHandler(upgradeAwareProxy, tunnelingHandler,
//! IsWebSocketRequestWithTunnelingProtocol)`:
//!
//! * kubectl ≥ 1.31 asks the apiserver for a websocket with subprotocol
//!   `SPDY/3.1+portforward.k8s.io`. The tunneling handler
//!   (`staging/src/k8s.io/apiserver/pkg/util/proxy/streamtunnel.go`) turns that into
//!   `POST /portForward/ns/pod` with `Upgrade: SPDY/3.1` and `X-Stream-Protocol-Version:
//!   portforward.k8s.io`, then copies bytes both ways: the client's SPDY frames arrive
//!   here unchanged. Older kubectl (or `KUBECTL_PORT_FORWARD_WEBSOCKETS=false`) sends
//!   that SPDY upgrade itself; the upgrade-aware proxy passes it through. → [`spdy`].
//! * kube-rs asks for a plain websocket (`v5.channel.k8s.io, v4.channel.k8s.io`,
//!   `?ports=…`). No tunneling prefix, so the upgrade-aware proxy forwards the websocket
//!   request as is, and the kubelet serves the channel protocol
//!   (`k8s.io/cri-streaming/pkg/streaming/portforward/websocket.go`). → [`websocket`].

pub mod pairing;
pub mod spdy;
pub mod websocket;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// The SPDY port-forward subprotocol (`X-Stream-Protocol-Version`).
pub const PROTOCOL_V1: &str = "portforward.k8s.io";

/// Give up connecting to a pod port after this long (a pod IP that drops SYNs would
/// otherwise hold the stream for the kernel's ~2 min).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Read size when copying from the pod (one DATA frame / websocket message each).
pub(crate) const COPY_CHUNK: usize = 32 * 1024;

/// The pod whose ports a connection forwards to.
#[derive(Debug, Clone)]
pub struct PodTarget {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Where its ports are reachable (its network namespace's IP).
    pub ip: IpAddr,
}

impl fmt::Display for PodTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.pod)
    }
}

impl PodTarget {
    /// The message the kubelet puts on the error stream when forwarding fails.
    pub(crate) fn forward_error(&self, port: u16, err: &dyn fmt::Display) -> String {
        format!("error forwarding port {port} to pod {self}: {err}")
    }

    /// Connects to one of the pod's ports.
    pub(crate) async fn connect(
        &self,
        port: u16,
        cancel: &CancellationToken,
    ) -> Result<TcpStream, String> {
        let addr = SocketAddr::new(self.ip, port);
        tokio::select! {
            r = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)) => match r {
                Ok(Ok(stream)) => {
                    // Small interactive exchanges should not wait for Nagle.
                    let _ = stream.set_nodelay(true);
                    Ok(stream)
                }
                Ok(Err(e)) => Err(format!("dial tcp {addr}: {e}")),
                Err(_) => Err(format!("dial tcp {addr}: timed out after {}s", CONNECT_TIMEOUT.as_secs())),
            },
            () = cancel.cancelled() => Err(format!("dial tcp {addr}: cancelled")),
        }
    }
}

/// The first protocol in the client's preference order that we support (the order
/// httpstream.Handshake and the websocket handshake use), or `None`.
pub(crate) fn negotiate<'a>(client: &[&'a str], server: &[&str]) -> Option<&'a str> {
    client.iter().copied().find(|c| server.contains(c))
}

/// Splits comma-separated header values into trimmed, non-empty items, across all
/// occurrences of the header (Go's `commaSeparatedHeaderValues`).
pub(crate) fn comma_separated<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    values
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// Parses the websocket `ports` query parameter(s) like `NewV4Options`: repeatable,
/// comma-separated, each 1..=65535.
pub(crate) fn parse_ports(values: &[&str]) -> Result<Vec<u16>, String> {
    if values.is_empty() {
        return Err("query parameter \"port\" is required".into());
    }
    let mut ports = Vec::new();
    for value in values {
        if value.is_empty() {
            return Err("query parameter \"port\" cannot be empty".into());
        }
        for p in value.split(',') {
            let port: u16 = p
                .parse()
                .map_err(|e| format!("unable to parse {value:?} as a port: {e}"))?;
            if port < 1 {
                return Err(format!("port {value:?} must be > 0"));
            }
            ports.push(port);
        }
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    #[rstest]
    #[case::first_client_choice_wins(&["v5.channel.k8s.io", "v4.channel.k8s.io"], Some("v4.channel.k8s.io"))]
    #[case::client_order_not_server_order(&["v4.base64.channel.k8s.io", "v4.channel.k8s.io"], Some("v4.base64.channel.k8s.io"))]
    #[case::nothing_common(&["v5.channel.k8s.io"], None)]
    #[case::no_protocol_header_means_empty(&[""], Some(""))]
    fn protocol_negotiation(#[case] client: &[&str], #[case] want: Option<&str>) {
        let server = ["", "v4.channel.k8s.io", "v4.base64.channel.k8s.io"];
        assert_eq!(negotiate(client, &server), want);
    }

    #[rstest]
    #[case::one(&["8080"], Ok(vec![8080]))]
    #[case::comma_list(&["80,1234"], Ok(vec![80, 1234]))]
    #[case::repeated(&["80", "81,82"], Ok(vec![80, 81, 82]))]
    #[case::missing(&[], Err(()))]
    #[case::empty(&[""], Err(()))]
    #[case::zero(&["0"], Err(()))]
    #[case::too_big(&["65536"], Err(()))]
    #[case::not_a_number(&["http"], Err(()))]
    fn ports_query(#[case] values: &[&str], #[case] want: Result<Vec<u16>, ()>) {
        assert_eq!(parse_ports(values).map_err(|_| ()), want);
    }

    #[test]
    fn comma_separated_values_span_header_occurrences() {
        assert_eq!(
            comma_separated(["a, b", " ", "c,,d "]),
            vec!["a", "b", "c", "d"]
        );
    }
}
