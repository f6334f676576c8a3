//! Pod networking with iproute2: one network namespace per pod, a veth pair into the agent's
//! Linux bridge, addresses from the agent's subnet.
//!
//! Nothing is routed beyond the subnet: pods get the connected route of the bridge and a route
//! for each Service CIDR via the service proxy's namespace (`dk-<tag>-svc`, the subnet's last
//! address, the only place that forwards and NATs: [`crate::dnat`]), so a pod reaches other
//! pods of this agent, the host's bridge address and ClusterIPs, nothing else.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};

use tracing::{debug, info, warn};

use crate::error::{Error, Result};
use crate::ipam::Subnet;
use crate::procfs;

/// Where `ip netns add` puts namespace files.
pub const NETNS_DIR: &str = "/run/netns";

/// The discard port (RFC 863): where a pod's announcing datagram goes (nothing listens on
/// the host, which answers with an ICMP port unreachable; the ARP request is what counts).
const DISCARD_PORT: u16 = 9;

/// Runs `f` inside the network namespace at `netns_path` and returns its result.
///
/// `setns` changes only the calling thread, and what a socket or `/proc/sys/net` belongs
/// to is fixed by the thread that opens it: a short-lived thread enters the namespace, runs
/// `f` and exits, so no runtime thread ever changes namespace.
pub(crate) async fn in_netns<T, F>(netns_path: PathBuf, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        std::thread::spawn(move || -> Result<T> {
            let ns = std::fs::File::open(&netns_path)
                .map_err(|e| Error::io(format!("opening {}", netns_path.display()), e))?;
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| Error::sys(format!("entering {}", netns_path.display()), e))?;
            f()
        })
        .join()
        .map_err(|_| Error::Network("a thread in a network namespace panicked".into()))?
    })
    .await
    .map_err(|e| Error::Network(format!("a task in a network namespace failed: {e}")))?
}

/// A short, stable tag for one agent instance (state dir + node name), used in every name
/// the agent creates so two agents on one machine never touch each other's namespaces.
pub fn instance_tag(state_dir: &Path, node_name: &str) -> String {
    // FNV-1a: stable across Rust versions, unlike DefaultHasher.
    let mut h: u32 = 0x811c_9dc5;
    for b in state_dir
        .to_string_lossy()
        .bytes()
        .chain([0u8])
        .chain(node_name.bytes())
    {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{:06x}", h & 0x00ff_ffff)
}

/// The netns name prefix of an agent instance.
pub fn netns_prefix(tag: &str) -> String {
    format!("dk-{tag}-")
}

/// Netns name of the service proxy of an agent instance.
pub fn proxy_netns_name(tag: &str) -> String {
    format!("{}svc", netns_prefix(tag))
}

/// Netns name of a pod.
pub fn netns_name(tag: &str, pod_uid: &str) -> String {
    format!("{}{pod_uid}", netns_prefix(tag))
}

/// Host-side veth name of a pod (at most 15 characters, unique per agent via the IP index).
pub fn veth_name(tag: &str, ip_index: u32) -> String {
    format!("dk{tag}x{ip_index:x}")
}

/// Parses `ip -o -4 addr show` into (interface, cidr) pairs.
pub fn parse_ipv4_addrs(output: &str) -> Vec<(String, String)> {
    output
        .lines()
        .filter_map(|line| {
            let mut it = line.split_whitespace();
            let _idx = it.next()?;
            let iface = it.next()?.trim_end_matches(':').to_string();
            let _family = it.next().filter(|f| *f == "inet")?;
            let cidr = it.next()?.to_string();
            Some((iface, cidr))
        })
        .collect()
}

/// Parses `ip netns list` (lines like `name (id: 3)` or `name`).
pub fn parse_netns_list(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

fn network_of(cidr: &str) -> Option<Subnet> {
    let (addr, prefix) = cidr.split_once('/')?;
    let addr: std::net::Ipv4Addr = addr.parse().ok()?;
    let prefix: u32 = prefix.parse().ok()?;
    if prefix == 0 || prefix > 32 {
        return None;
    }
    let net = u32::from(addr) & (u32::MAX << (32 - prefix));
    // Subnet::from_str refuses very small/large prefixes; clamp for the overlap test only.
    let p = prefix.clamp(8, 29);
    let net = net & (u32::MAX << (32 - p));
    format!("{}/{}", std::net::Ipv4Addr::from(net), p)
        .parse()
        .ok()
}

/// Runs `ip` with `args`, returning stdout; a failure carries ip's stderr.
pub async fn ip(args: &[&str]) -> Result<String> {
    let out = tokio::process::Command::new("ip")
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| {
            Error::io(
                format!("running `ip {}` (is iproute2 installed?)", args.join(" ")),
                e,
            )
        })?;
    if !out.status.success() {
        return Err(Error::Command {
            command: format!("ip {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The agent's pod network: a bridge and a subnet.
#[derive(Debug, Clone)]
pub struct PodNetwork {
    /// Bridge device name.
    pub bridge: String,
    /// Pod subnet; the bridge holds its first address.
    pub subnet: Subnet,
    /// Instance tag used in netns and veth names.
    pub tag: String,
    /// Service CIDRs routed to the service proxy (empty: no route, e.g. for `cleanup`).
    pub service_cidrs: Vec<String>,
}

impl PodNetwork {
    /// Creates the bridge (idempotent) after checking no other interface uses the subnet.
    pub async fn ensure_bridge(&self) -> Result<()> {
        let addrs = parse_ipv4_addrs(&ip(&["-o", "-4", "addr", "show"]).await?);
        for (iface, cidr) in &addrs {
            if iface != &self.bridge
                && let Some(net) = network_of(cidr)
                && net.overlaps(&self.subnet)
            {
                return Err(Error::Network(format!(
                    "pod subnet {} overlaps {cidr} on interface {iface}; choose another --pod-subnet",
                    self.subnet
                )));
            }
        }
        if ip(&["link", "show", "dev", &self.bridge]).await.is_err() {
            ip(&["link", "add", &self.bridge, "type", "bridge"]).await?;
            info!(bridge = %self.bridge, "created bridge");
        }
        let gw = format!("{}/{}", self.subnet.gateway(), self.subnet.prefix());
        ip(&["addr", "replace", &gw, "dev", &self.bridge]).await?;
        ip(&["link", "set", &self.bridge, "up"]).await?;
        Ok(())
    }

    /// Removes the bridge (best effort, when the agent stops).
    pub async fn remove_bridge(&self) {
        match ip(&["link", "del", &self.bridge]).await {
            Ok(_) => info!(bridge = %self.bridge, "removed bridge"),
            Err(e) => debug!(bridge = %self.bridge, error = %e, "bridge not removed"),
        }
    }

    /// Path of a namespace file.
    pub fn netns_path(name: &str) -> PathBuf {
        Path::new(NETNS_DIR).join(name)
    }

    /// Creates a pod's namespace with `eth0` = `ip`, plugged into the bridge.
    pub async fn create_pod_netns(
        &self,
        pod_uid: &str,
        ip_addr: std::net::Ipv4Addr,
    ) -> Result<String> {
        let ns = netns_name(&self.tag, pod_uid);
        let idx = self
            .subnet
            .index_of(ip_addr)
            .ok_or_else(|| Error::Network(format!("{ip_addr} is outside {}", self.subnet)))?;
        let veth = veth_name(&self.tag, idx);
        // Leftovers of a crashed run with the same names would make `add` fail.
        self.destroy_netns(&ns).await;
        let _ = ip(&["link", "del", &veth]).await;
        let cidr = format!("{ip_addr}/{}", self.subnet.prefix());
        let mut steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", &ns],
            vec![
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
            vec!["link", "set", &veth, "master", &self.bridge],
            vec!["link", "set", &veth, "up"],
            vec!["-n", &ns, "addr", "add", &cidr, "dev", "eth0"],
            vec!["-n", &ns, "link", "set", "eth0", "up"],
            vec!["-n", &ns, "link", "set", "lo", "up"],
        ];
        let proxy = self.subnet.service_proxy().to_string();
        for cidr in &self.service_cidrs {
            steps.push(vec![
                "-n", &ns, "route", "add", cidr, "via", &proxy, "dev", "eth0",
            ]);
        }
        for step in steps {
            if let Err(e) = ip(&step).await {
                self.destroy_netns(&ns).await;
                let _ = ip(&["link", "del", &veth]).await;
                return Err(e);
            }
        }
        self.forget_previous_owner(ip_addr).await;
        self.announce(&ns).await;
        debug!(netns = %ns, %veth, ip = %ip_addr, "pod network ready");
        Ok(ns)
    }

    /// A pod IP is handed out again once the allocator has gone round the subnet, with a
    /// new MAC. A neighbour entry left for it in the service proxy's namespace (or the
    /// host's) still points at the previous pod's MAC: the first SYNs of a ClusterIP
    /// connection to the new pod go nowhere until the kernel re-resolves, after
    /// `delay_first_probe_time` (5 s) and probes, and a Dask worker's first connect to its
    /// scheduler hangs for ~10 s. Those entries are never collected below `gc_thresh1`
    /// (128). Real CNIs send a gratuitous ARP for a new pod for this reason (the bridge
    /// plugin does); these two stale entries are deleted, so a missing one is resolved at once,
    /// and [`Self::announce`] updates everyone else's.
    /// Best effort: no entry (the usual case) is not an error.
    async fn forget_previous_owner(&self, ip_addr: std::net::Ipv4Addr) {
        let addr = ip_addr.to_string();
        let proxy = proxy_netns_name(&self.tag);
        let stale = [
            (
                "service proxy",
                vec!["-n", proxy.as_str(), "neigh", "del", &addr, "dev", "eth0"],
            ),
            ("host", vec!["neigh", "del", &addr, "dev", &self.bridge]),
        ];
        for (namespace, args) in stale {
            if ip(&args).await.is_ok() {
                debug!(ip = %addr, namespace, "deleted a stale neighbour entry of a reused pod IP");
            }
        }
    }

    /// Tells every namespace on the bridge (other pods', the proxy's, the host's) that
    /// still maps the new pod's IP to a previous pod's MAC about the new one, as a CNI's
    /// gratuitous ARP does: a datagram from the pod to the gateway's discard port makes the
    /// pod's kernel broadcast an ARP request for the gateway, which carries the pod's IP and
    /// MAC, and Linux updates an existing entry for a sender it hears (`arp_process`), even
    /// with `arp_accept=0`. Without it a pod that had talked to the previous owner (a Dask
    /// worker fetching data from a worker whose IP came back) waits ~10 s on its first
    /// connection. [`Self::forget_previous_owner`] still deletes the two entries on the
    /// ClusterIP path: an update is not taken from a sender heard within `locktime` (1 s).
    /// Best effort: a failure is logged.
    async fn announce(&self, ns: &str) {
        let gateway = SocketAddrV4::new(self.subnet.gateway(), DISCARD_PORT);
        let sent = in_netns(Self::netns_path(ns), move || {
            let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
                .map_err(|e| Error::io("opening a UDP socket in a pod namespace", e))?;
            socket
                .send_to(&[], gateway)
                .map_err(|e| Error::io(format!("sending to {gateway}"), e))
        })
        .await;
        if let Err(e) = sent {
            warn!(netns = %ns, error = %e, "could not announce a new pod's address to its neighbours");
        }
    }

    /// Creates the service proxy's namespace: `eth0` on the bridge with the subnet's last
    /// address, and every Service CIDR as a local route (`ip route add local`), so a socket
    /// there can listen on any ClusterIP without an address per Service.
    pub async fn create_proxy_netns(&self) -> Result<String> {
        let ns = proxy_netns_name(&self.tag);
        let addr = self.subnet.service_proxy();
        let idx = self
            .subnet
            .index_of(addr)
            .ok_or_else(|| Error::Network(format!("{addr} is outside {}", self.subnet)))?;
        let veth = veth_name(&self.tag, idx);
        self.destroy_netns(&ns).await;
        let _ = ip(&["link", "del", &veth]).await;
        let cidr = format!("{addr}/{}", self.subnet.prefix());
        let mut steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", &ns],
            vec![
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
            vec!["link", "set", &veth, "master", &self.bridge],
            vec!["link", "set", &veth, "up"],
            vec!["-n", &ns, "addr", "add", &cidr, "dev", "eth0"],
            vec!["-n", &ns, "link", "set", "eth0", "up"],
            vec!["-n", &ns, "link", "set", "lo", "up"],
        ];
        for c in &self.service_cidrs {
            steps.push(vec!["-n", &ns, "route", "add", "local", c, "dev", "lo"]);
        }
        for step in steps {
            if let Err(e) = ip(&step).await {
                self.destroy_netns(&ns).await;
                let _ = ip(&["link", "del", &veth]).await;
                return Err(e);
            }
        }
        info!(netns = %ns, ip = %addr, cidrs = ?self.service_cidrs, "service proxy network ready");
        Ok(ns)
    }

    /// Kills every process left in a namespace and deletes it (its veth pair goes with it).
    pub async fn destroy_netns(&self, ns: &str) {
        let path = Self::netns_path(ns);
        let Some(inode) = procfs::file_inode(&path) else {
            return;
        };
        kill_ns_members("net", inode).await;
        if let Err(e) = ip(&["netns", "del", ns]).await {
            warn!(netns = %ns, error = %e, "could not delete network namespace");
        }
    }

    /// Names of this instance's namespaces that exist now.
    pub async fn list_own(&self) -> Result<Vec<String>> {
        let prefix = netns_prefix(&self.tag);
        Ok(parse_netns_list(&ip(&["netns", "list"]).await?)
            .into_iter()
            .filter(|n| n.starts_with(&prefix))
            .collect())
    }
}

/// SIGKILLs every process whose `kind` namespace is `inode`, until none is left (bounded).
pub async fn kill_ns_members(kind: &str, inode: u64) -> usize {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let mut killed = 0;
    for _ in 0..50 {
        let pids = procfs::pids_in_ns(kind, inode);
        let live: Vec<i32> = pids.into_iter().filter(|p| procfs::alive(*p)).collect();
        if live.is_empty() {
            break;
        }
        for pid in live {
            if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                killed += 1;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[test]
    fn parses_addr_output() {
        let out = "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever\n\
                   4: eth0    inet 192.0.2.2/24 brd 192.0.2.255 scope global eth0\\ x\n\
                   7: dkbr0    inet 10.244.0.1/24 scope global dkbr0\n";
        assert_eq!(
            parse_ipv4_addrs(out),
            vec![
                ("lo".to_string(), "127.0.0.1/8".to_string()),
                ("eth0".to_string(), "192.0.2.2/24".to_string()),
                ("dkbr0".to_string(), "10.244.0.1/24".to_string()),
            ]
        );
    }

    #[test]
    fn parses_netns_list() {
        assert_eq!(
            parse_netns_list("dk-abc-1 (id: 0)\nother\n\n"),
            vec!["dk-abc-1", "other"]
        );
    }

    #[rstest]
    #[case::slash_24_index(0xff, "dkabcdefxff")]
    #[case::largest_slash_8_index(0xfffffe, "dkabcdefxfffffe")]
    fn veth_names_fit_ifnamsiz(#[case] idx: u32, #[case] expected: &str) {
        let name = veth_name("abcdef", idx);
        assert_eq!(name, expected);
        assert!(name.len() <= 15);
    }

    #[test]
    fn instance_tags_differ_per_state_dir_and_node() {
        let a = instance_tag(Path::new("/s1"), "local-node");
        assert_eq!(a.len(), 6);
        assert_eq!(a, instance_tag(Path::new("/s1"), "local-node"));
        assert_ne!(a, instance_tag(Path::new("/s2"), "local-node"));
        assert_ne!(a, instance_tag(Path::new("/s1"), "other-node"));
    }

    #[rstest]
    #[case::host_addr_in_other_net("192.0.2.2/24", "10.244.0.0/24", false)]
    #[case::same_net("10.244.0.9/24", "10.244.0.0/24", true)]
    #[case::wider_net("10.0.0.1/8", "10.244.0.0/24", true)]
    #[case::loopback("127.0.0.1/8", "10.244.0.0/24", false)]
    fn overlap_detection(#[case] cidr: &str, #[case] subnet: &str, #[case] expected: bool) {
        let s: Subnet = subnet.parse().unwrap();
        assert_eq!(network_of(cidr).unwrap().overlaps(&s), expected);
    }
}
