//! The kubelet's HTTPS endpoints — `containerLogs`, `portForward` and `healthz` — for pods
//! that the node agent runs as local processes.
//!
//! kube-apiserver never talks to pods itself: `kubectl logs`, `kubectl port-forward` and
//! kube-rs' `Api::<Pod>::logs` / `Api::<Pod>::portforward` all end up as requests from the
//! apiserver to `https://<node InternalIP>:<daemonEndpoints.kubeletEndpoint.port>`. This
//! crate answers those requests the way the real kubelet (v1.37) does, so the real
//! apiserver and real clients work unchanged against our process-based "node":
//!
//! * `GET /containerLogs/{namespace}/{pod}/{container}` with `follow`, `tailLines`,
//!   `limitBytes`, `sinceSeconds`/`sinceTime`, `timestamps`, `previous` ([`logs`]).
//! * `GET|POST /portForward/{namespace}/{pod}[/{uid}]`: SPDY/3.1 (`portforward.k8s.io`,
//!   what kubectl sends, also when it talks websockets to the apiserver: the apiserver
//!   tunnels the client's SPDY bytes to the kubelet) and the websocket channel protocol
//!   (`v4.channel.k8s.io`, what kube-rs sends; the apiserver proxies it as is).
//! * `GET /healthz`.
//!
//! The node agent implements [`PodDirectory`] and calls [`serve`].

mod error;
mod http_util;
pub mod logs;
pub mod portforward;
mod server;
pub mod spdy;
mod tls;

use std::net::IpAddr;
use std::path::PathBuf;

pub use error::{Error, Result};
pub use server::serve;

/// What the endpoints need to know about the pods of this node; implemented by the node
/// agent, which owns the pods' processes, log files and network namespaces.
///
/// Methods are called on every request (and, while a log is followed, a few times a
/// second), so they should answer from memory.
pub trait PodDirectory: Send + Sync + 'static {
    /// Path of the log file of a container (stdout+stderr, plain text lines), newest run.
    fn container_log(&self, namespace: &str, pod: &str, container: &str) -> Option<PathBuf>;

    /// The address where the pod's ports are reachable from the agent (its netns IP).
    fn pod_ip(&self, namespace: &str, pod: &str) -> Option<IpAddr>;

    /// Log file of the previous (terminated) run of a container, for `kubectl logs
    /// --previous`. `None` (the default) answers like the kubelet when there is no
    /// previous run: 400 `previous terminated container ... not found`.
    fn previous_container_log(
        &self,
        _namespace: &str,
        _pod: &str,
        _container: &str,
    ) -> Option<PathBuf> {
        None
    }

    /// Whether the newest run of the container may still write to its log. `follow`
    /// ends once this is false and the file is drained, as `kubectl logs -f` ends when a
    /// container exits. The default (always true) ends a follow only when the client
    /// leaves, the pod disappears or [`container_log`](Self::container_log) points to a
    /// new run.
    fn container_running(&self, _namespace: &str, _pod: &str, _container: &str) -> bool {
        true
    }
}
