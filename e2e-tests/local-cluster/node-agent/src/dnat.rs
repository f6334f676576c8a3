//! ClusterIP frontends as kube-proxy's nftables mode makes them: DNAT to an endpoint.
//!
//! The rules live in one table of the agent's service proxy namespace (`dk-<tag>-svc`), the
//! gateway pods route the Service CIDRs to. A pod's SYN to `ClusterIP:port` is rewritten
//! there to `endpoint:targetPort` and forwarded back onto the bridge, masqueraded to the proxy
//! namespace's address so the answer comes back through it and is un-NATed. The endpoint's
//! kernel answers the client's handshake: an endpoint that does not listen yet gives the client
//! "connection refused" (its RST, translated back), which is what Dask's `connect()` retries;
//! a user-space proxy would have completed the handshake first and could then only reset.
//!
//! Nothing here touches the host's tables: the table, the forwarding switch and the conntrack
//! entries all belong to the proxy namespace and go with it (`cluster down`, `node-agent
//! cleanup`), and two clusters on one host never see each other's rules.
//!
//! Rendering is pure ([`render_ruleset`]); [`apply`] hands the text to `nft -f -` in the
//! namespace, which replaces the whole table in one transaction.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, SocketAddrV4};
use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};
use crate::services::{Affinity, Frontend};

/// The table the agent owns in its proxy namespace.
pub const TABLE: &str = "dask_services";

/// Whether `frontend` must be served by the user-space forwarder rather than DNAT: a backend
/// on the host's loopback (the apiserver behind the `kubernetes` Service) is not reachable from
/// the proxy namespace, only from the host's namespace where the agent runs.
pub fn needs_user_space(frontend: &Frontend) -> bool {
    frontend.backends.iter().any(|b| b.ip().is_loopback())
}

/// The IPv4 backends of a frontend (DNAT here is IPv4 only, like the pod network).
fn v4_backends(frontend: &Frontend) -> Vec<SocketAddrV4> {
    frontend
        .backends
        .iter()
        .filter_map(|b| match b {
            SocketAddr::V4(v4) => Some(*v4),
            SocketAddr::V6(_) => None,
        })
        .collect()
}

/// A comment nft accepts: printable ASCII without quotes (Service and port names are DNS
/// labels, so this changes nothing in practice).
fn comment(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The whole table for `frontends`: one DNAT rule per `ClusterIP:port` with IPv4 backends (and
/// not served in user space), round robin (`numgen inc`) or by client address (`jhash ip saddr`,
/// `sessionAffinity: ClientIP`), and masquerading of what was DNATed.
///
/// A frontend without backends gets no rule: its packets reach the namespace's local route for
/// the Service CIDR, where nothing listens, so the client gets "connection refused" at once,
/// as kube-proxy's REJECT rule gives it.
///
/// The text starts by creating and deleting the table, so `nft -f` replaces it atomically
/// whether or not it existed.
pub fn render_ruleset(frontends: &BTreeMap<SocketAddrV4, Frontend>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "table ip {TABLE}");
    let _ = writeln!(out, "delete table ip {TABLE}");
    let _ = writeln!(out, "table ip {TABLE} {{");
    let _ = writeln!(out, "  chain prerouting {{");
    let _ = writeln!(
        out,
        "    type nat hook prerouting priority dstnat; policy accept;"
    );
    for (addr, fe) in frontends {
        if needs_user_space(fe) {
            continue;
        }
        let backends = v4_backends(fe);
        if backends.is_empty() {
            continue;
        }
        let selector = match fe.affinity {
            Affinity::None => "numgen inc",
            Affinity::ClientIp => "jhash ip saddr",
        };
        let map = backends
            .iter()
            .enumerate()
            .map(|(i, b)| format!("{i} : {} . {}", b.ip(), b.port()))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            out,
            "    ip daddr {} tcp dport {} dnat to {selector} mod {} map {{ {map} }} comment \"{}\"",
            addr.ip(),
            addr.port(),
            backends.len(),
            comment(&fe.service),
        );
    }
    let _ = writeln!(out, "  }}");
    let _ = writeln!(out, "  chain postrouting {{");
    let _ = writeln!(
        out,
        "    type nat hook postrouting priority srcnat; policy accept;"
    );
    let _ = writeln!(out, "    ct status dnat masquerade");
    let _ = writeln!(out, "  }}");
    let _ = writeln!(out, "}}");
    out
}

/// Loads `ruleset` with `nft -f -` inside the network namespace `netns`.
pub async fn apply(netns: &str, ruleset: &str) -> Result<()> {
    let args = ["netns", "exec", netns, "nft", "-f", "-"];
    let command = format!("ip {}", args.join(" "));
    let mut child = tokio::process::Command::new("ip")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::io(format!("running `{command}`"), e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(ruleset.as_bytes())
            .await
            .map_err(|e| Error::io(format!("writing the ruleset to `{command}`"), e))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| Error::io(format!("waiting for `{command}`"), e))?;
    if !out.status.success() {
        return Err(Error::Command {
            command: format!("{command} (is nftables installed?)"),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn fe(service: &str, backends: &[&str], affinity: Affinity) -> Frontend {
        Frontend {
            service: service.into(),
            backends: backends.iter().map(|b| b.parse().unwrap()).collect(),
            affinity,
        }
    }

    fn rules(frontends: &[(&str, Frontend)]) -> Vec<String> {
        let map: BTreeMap<SocketAddrV4, Frontend> = frontends
            .iter()
            .map(|(a, f)| (a.parse().unwrap(), f.clone()))
            .collect();
        render_ruleset(&map)
            .lines()
            .filter(|l| l.contains("dnat to"))
            .map(|l| l.trim().to_string())
            .collect()
    }

    #[rstest]
    #[case::round_robin_over_two_endpoints(
        vec![("10.98.0.10:8786", fe("ns/sched:tcp-comm", &["10.244.12.5:8786", "10.244.12.6:8786"], Affinity::None))],
        vec!["ip daddr 10.98.0.10 tcp dport 8786 dnat to numgen inc mod 2 map { 0 : 10.244.12.5 . 8786, 1 : 10.244.12.6 . 8786 } comment \"ns/sched:tcp-comm\""]
    )]
    #[case::client_ip_affinity_hashes_the_source(
        vec![("10.98.0.11:80", fe("ns/web:", &["10.244.12.7:8080"], Affinity::ClientIp))],
        vec!["ip daddr 10.98.0.11 tcp dport 80 dnat to jhash ip saddr mod 1 map { 0 : 10.244.12.7 . 8080 } comment \"ns/web:\""]
    )]
    #[case::no_endpoints_no_rule_so_connections_are_refused(
        vec![("10.98.0.12:80", fe("ns/empty:", &[], Affinity::None))],
        vec![]
    )]
    #[case::apiserver_on_loopback_is_left_to_user_space(
        vec![("10.98.0.1:443", fe("default/kubernetes:https", &["127.0.0.1:6463"], Affinity::None))],
        vec![]
    )]
    #[case::ipv6_endpoints_are_skipped(
        vec![("10.98.0.13:80", fe("ns/v6:", &["[fd00::1]:80", "10.244.12.8:80"], Affinity::None))],
        vec!["ip daddr 10.98.0.13 tcp dport 80 dnat to numgen inc mod 1 map { 0 : 10.244.12.8 . 80 } comment \"ns/v6:\""]
    )]
    #[case::odd_characters_in_a_comment_cannot_break_the_ruleset(
        vec![("10.98.0.14:80", fe("ns/a\"b c:", &["10.244.12.9:80"], Affinity::None))],
        vec!["ip daddr 10.98.0.14 tcp dport 80 dnat to numgen inc mod 1 map { 0 : 10.244.12.9 . 80 } comment \"ns/a_b_c:\""]
    )]
    fn dnat_rules(#[case] frontends: Vec<(&str, Frontend)>, #[case] expected: Vec<&str>) {
        assert_eq!(rules(&frontends), expected);
    }

    #[test]
    fn ruleset_replaces_the_table_and_masquerades_what_it_dnats() {
        let text = render_ruleset(&BTreeMap::new());
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        assert_eq!(
            &lines[..3],
            &[
                "table ip dask_services",
                "delete table ip dask_services",
                "table ip dask_services {"
            ]
        );
        assert!(lines.contains(&"ct status dnat masquerade"), "{text}");
        assert!(
            lines.contains(&"type nat hook prerouting priority dstnat; policy accept;"),
            "{text}"
        );
    }

    #[rstest]
    #[case::pod_backends(&["10.244.12.5:80"], false)]
    #[case::apiserver_on_loopback(&["127.0.0.1:6443"], true)]
    #[case::no_backends(&[], false)]
    fn user_space_only_for_loopback_backends(#[case] backends: &[&str], #[case] expected: bool) {
        assert_eq!(
            needs_user_space(&fe("ns/s:", backends, Affinity::None)),
            expected
        );
    }
}
