//! The node's service proxy: what kube-proxy does for ClusterIPs.
//!
//! Every pod routes the Service CIDRs to this agent's proxy namespace (`dk-<tag>-svc`), where
//! the CIDRs are local routes and IPv4 forwarding is on (in that namespace only). Frontends
//! whose endpoints are pods are DNATed there with nftables ([`crate::dnat`]), as kube-proxy's
//! nftables mode does, so a client gets the endpoint's own answer to its handshake, "connection
//! refused" included. The one frontend the proxy namespace cannot reach, the `kubernetes`
//! Service (the apiserver listens on the host's 127.0.0.1), is served in user space: a listener
//! on its ClusterIP:port in the proxy namespace, each accepted connection forwarded from the
//! host's namespace. A ClusterIP:port without endpoints has neither a rule nor a listener, so a
//! client gets "connection refused" at once, as kube-proxy's REJECT rule gives it.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::dnat;
use crate::error::{Error, Result};
use crate::netns::{PodNetwork, in_netns};
use crate::services::{Frontend, backend_order};

/// How long a connect to one backend may take before the next one is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

struct Listener {
    frontend: watch::Sender<Arc<Frontend>>,
    cancel: CancellationToken,
}

/// The DNAT table and user-space listeners of one agent's proxy namespace.
pub struct ServiceProxy {
    netns: String,
    netns_path: PathBuf,
    listeners: HashMap<SocketAddrV4, Listener>,
    /// The ruleset last loaded; `None` after a failed load, so the next reconcile retries.
    applied: Option<String>,
    cancel: CancellationToken,
}

/// Turns IPv4 forwarding on inside the network namespace at `netns_path` (DNATed packets leave
/// the proxy namespace through the interface they came in by). `/proc/sys/net` shows the
/// namespace of the thread that opens it, so the host's own setting is never touched.
async fn enable_forwarding(netns_path: PathBuf) -> Result<()> {
    let shown = netns_path.display().to_string();
    in_netns(netns_path, move || {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|e| {
            Error::io(
                format!("turning on IPv4 forwarding in {shown} (ClusterIP DNAT)"),
                e,
            )
        })
    })
    .await
}

/// Binds a listener inside the network namespace at `netns_path` (a socket belongs to the
/// namespace it was created in, whatever thread uses it later).
async fn bind_in_netns(netns_path: PathBuf, addr: SocketAddrV4) -> Result<TcpListener> {
    let std_listener = in_netns(netns_path, move || {
        let l = std::net::TcpListener::bind(addr).map_err(|e| {
            Error::io(
                format!("listening on {addr} in the service proxy namespace"),
                e,
            )
        })?;
        l.set_nonblocking(true)
            .map_err(|e| Error::io("making a listener non-blocking", e))?;
        Ok(l)
    })
    .await?;
    TcpListener::from_std(std_listener).map_err(|e| Error::io("registering a listener", e))
}

async fn serve(
    listener: TcpListener,
    addr: SocketAddrV4,
    frontend: watch::Receiver<Arc<Frontend>>,
    cancel: CancellationToken,
) {
    let counter = AtomicU64::new(0);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((client, peer)) => {
                    let fe = frontend.borrow().clone();
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(forward(client, peer, fe, n, addr));
                }
                Err(e) => {
                    warn!(%addr, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

async fn forward(
    mut client: TcpStream,
    peer: SocketAddr,
    fe: Arc<Frontend>,
    n: u64,
    addr: SocketAddrV4,
) {
    let _ = client.set_nodelay(true);
    for backend in backend_order(&fe, n, peer.ip()) {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(backend)).await {
            Ok(Ok(mut upstream)) => {
                let _ = upstream.set_nodelay(true);
                debug!(service = %fe.service, %peer, %backend, "proxying");
                if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                    debug!(service = %fe.service, %backend, error = %e, "proxied connection ended");
                }
                return;
            }
            Ok(Err(e)) => {
                debug!(service = %fe.service, %backend, error = %e, "backend refused; trying the next")
            }
            Err(_) => {
                debug!(service = %fe.service, %backend, "backend connect timed out; trying the next")
            }
        }
    }
    warn!(service = %fe.service, frontend = %addr, %peer, "no backend accepted the connection; resetting it");
    let _ = client.set_zero_linger();
}

impl ServiceProxy {
    /// Creates the proxy namespace on the agent's bridge, turns forwarding on there and loads
    /// an empty DNAT table (which fails at once, with nft's message, where nftables is missing).
    pub async fn start(network: &PodNetwork, cancel: CancellationToken) -> Result<Self> {
        let ns = network.create_proxy_netns().await?;
        let netns_path = PodNetwork::netns_path(&ns);
        let empty = dnat::render_ruleset(&BTreeMap::new());
        let ready = async {
            enable_forwarding(netns_path.clone()).await?;
            dnat::apply(&ns, &empty).await
        };
        if let Err(e) = ready.await {
            network.destroy_netns(&ns).await;
            return Err(e);
        }
        Ok(Self {
            netns: ns,
            netns_path,
            listeners: HashMap::new(),
            applied: Some(empty),
            cancel,
        })
    }

    /// DNATs every frontend whose endpoints are reachable from the proxy namespace, listens on
    /// the others that have backends, and does nothing for the rest.
    pub async fn reconcile(&mut self, desired: BTreeMap<SocketAddrV4, Frontend>) {
        let started = std::time::Instant::now();
        let ruleset = dnat::render_ruleset(&desired);
        let mut dnat_changed = false;
        if self.applied.as_deref() != Some(ruleset.as_str()) {
            match dnat::apply(&self.netns, &ruleset).await {
                Ok(()) => {
                    dnat_changed = true;
                    self.applied = Some(ruleset);
                }
                Err(e) => {
                    self.applied = None;
                    warn!(netns = %self.netns, error = %e, "cannot load the ClusterIP DNAT rules (retried on the next change)");
                }
            }
        }
        let (mut added, mut removed, mut updated) = (0usize, 0usize, 0usize);
        let wanted: BTreeMap<SocketAddrV4, Frontend> = desired
            .into_iter()
            .filter(|(_, f)| !f.backends.is_empty() && dnat::needs_user_space(f))
            .collect();
        let stale: Vec<SocketAddrV4> = self
            .listeners
            .keys()
            .filter(|a| !wanted.contains_key(a))
            .copied()
            .collect();
        for addr in stale {
            if let Some(l) = self.listeners.remove(&addr) {
                l.cancel.cancel();
                removed += 1;
                debug!(%addr, "listener removed");
            }
        }
        for (addr, fe) in wanted {
            if let Some(l) = self.listeners.get(&addr) {
                let changed = l.frontend.send_if_modified(|cur| {
                    if **cur == fe {
                        false
                    } else {
                        *cur = Arc::new(fe.clone());
                        true
                    }
                });
                updated += usize::from(changed);
                continue;
            }
            match bind_in_netns(self.netns_path.clone(), addr).await {
                Ok(listener) => {
                    let (tx, rx) = watch::channel(Arc::new(fe));
                    let cancel = self.cancel.child_token();
                    tokio::spawn(serve(listener, addr, rx, cancel.clone()));
                    self.listeners.insert(
                        addr,
                        Listener {
                            frontend: tx,
                            cancel,
                        },
                    );
                    added += 1;
                }
                Err(e) => {
                    warn!(%addr, service = %fe.service, error = %e, "cannot listen (retried on the next change)")
                }
            }
        }
        if dnat_changed || added + removed + updated > 0 {
            info!(
                dnat_changed,
                listeners = self.listeners.len(),
                added,
                removed,
                updated,
                took_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                "service proxy updated"
            );
        }
    }
}
