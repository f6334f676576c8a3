//! Pod IP allocation in the agent's subnet (IPv4). Pure.
//!
//! Next-fit rather than lowest-free, so an IP just released is not handed to the next pod
//! at once (a client still talking to the old pod would reach the new one).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::str::FromStr;

use crate::error::{Error, Result};

/// An IPv4 subnet such as `10.244.0.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    network: u32,
    prefix: u8,
}

impl FromStr for Subnet {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::Network(format!("pod subnet {s:?}: {why}"));
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| bad("expected a.b.c.d/prefix"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad("not an IPv4 address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| bad("bad prefix length"))?;
        if !(8..=29).contains(&prefix) {
            return Err(bad("prefix length must be between 8 and 29"));
        }
        let mask = u32::MAX << (32 - prefix);
        let network = u32::from(addr);
        if network & !mask != 0 {
            return Err(bad("host bits are set (use the network address)"));
        }
        Ok(Self { network, prefix })
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.network), self.prefix)
    }
}

impl Subnet {
    /// Prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The bridge's (host side) address: the first host address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network + 1)
    }

    /// The service proxy's address: the last host address (never given to a pod).
    pub fn service_proxy(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network + self.size() - 2)
    }

    fn size(&self) -> u32 {
        1u32 << (32 - self.prefix)
    }

    /// True if `ip` is inside the subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & (u32::MAX << (32 - self.prefix)) == self.network
    }

    /// The host index of `ip` (0 = network address).
    pub fn index_of(&self, ip: Ipv4Addr) -> Option<u32> {
        self.contains(ip).then(|| u32::from(ip) - self.network)
    }

    /// True if the two subnets share any address.
    pub fn overlaps(&self, other: &Subnet) -> bool {
        let p = self.prefix.min(other.prefix);
        let mask = u32::MAX << (32 - p);
        self.network & mask == other.network & mask
    }
}

/// Hands out pod addresses: everything but the network, gateway, service proxy and
/// broadcast addresses.
#[derive(Debug, Clone)]
pub struct Allocator {
    subnet: Subnet,
    used: BTreeSet<u32>,
    next: u32,
}

impl Allocator {
    /// An allocator with every pod address free.
    pub fn new(subnet: Subnet) -> Self {
        Self {
            subnet,
            used: BTreeSet::new(),
            next: 2,
        }
    }

    /// Allocates `preferred` if it is a free pod address, else the next free one after the
    /// last allocation. `None` when the subnet is full.
    pub fn allocate(&mut self, preferred: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        let first = 2;
        let last = self.subnet.size() - 3; // service proxy and broadcast excluded
        if let Some(idx) = preferred.and_then(|ip| self.subnet.index_of(ip))
            && (first..=last).contains(&idx)
            && self.used.insert(idx)
        {
            return Some(Ipv4Addr::from(self.subnet.network + idx));
        }
        let count = last - first + 1;
        for step in 0..count {
            let idx = first + (self.next - first + step) % count;
            if self.used.insert(idx) {
                self.next = if idx == last { first } else { idx + 1 };
                return Some(Ipv4Addr::from(self.subnet.network + idx));
            }
        }
        None
    }

    /// Returns `ip` to the pool.
    pub fn release(&mut self, ip: Ipv4Addr) {
        if let Some(idx) = self.subnet.index_of(ip) {
            self.used.remove(&idx);
        }
    }

    /// Number of addresses in use.
    pub fn in_use(&self) -> usize {
        self.used.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::slash_24("10.244.0.0/24", true)]
    #[case::slash_16("10.245.0.0/16", true)]
    #[case::host_bits_set("10.244.0.1/24", false)]
    #[case::no_prefix("10.244.0.0", false)]
    #[case::too_small("10.244.0.0/30", false)]
    #[case::ipv6("fd00::/64", false)]
    fn subnet_parsing(#[case] s: &str, #[case] ok: bool) {
        assert_eq!(s.parse::<Subnet>().is_ok(), ok, "{s}");
    }

    #[test]
    fn gateway_and_first_pod_address() {
        let subnet: Subnet = "10.244.0.0/24".parse().unwrap();
        assert_eq!(subnet.gateway(), Ipv4Addr::new(10, 244, 0, 1));
        assert_eq!(subnet.service_proxy(), Ipv4Addr::new(10, 244, 0, 254));
        let mut a = Allocator::new(subnet);
        assert_eq!(a.allocate(None), Some(Ipv4Addr::new(10, 244, 0, 2)));
        assert_eq!(a.allocate(None), Some(Ipv4Addr::new(10, 244, 0, 3)));
    }

    #[test]
    fn released_address_is_not_reused_at_once() {
        let mut a = Allocator::new("10.244.0.0/24".parse().unwrap());
        let first = a.allocate(None).unwrap();
        a.release(first);
        assert_ne!(a.allocate(None), Some(first));
    }

    #[test]
    fn full_subnet_and_wraparound() {
        let mut a = Allocator::new("10.0.0.0/29".parse().unwrap());
        let got: Vec<_> = (0..6).map(|_| a.allocate(None)).collect();
        assert_eq!(
            got.iter().flatten().count(),
            4,
            "8 addresses - network, gateway, service proxy, broadcast"
        );
        assert_eq!(got[4], None);
        assert!(
            !got.contains(&Some(Ipv4Addr::new(10, 0, 0, 6))),
            "proxy address"
        );
        a.release(Ipv4Addr::new(10, 0, 0, 3));
        assert_eq!(a.allocate(None), Some(Ipv4Addr::new(10, 0, 0, 3)));
    }

    #[rstest]
    #[case::free_preferred(Some(Ipv4Addr::new(10, 244, 0, 77)), Ipv4Addr::new(10, 244, 0, 77))]
    #[case::gateway_not_allowed(Some(Ipv4Addr::new(10, 244, 0, 1)), Ipv4Addr::new(10, 244, 0, 2))]
    #[case::outside_subnet(Some(Ipv4Addr::new(10, 9, 0, 7)), Ipv4Addr::new(10, 244, 0, 2))]
    #[case::service_proxy_not_allowed(
        Some(Ipv4Addr::new(10, 244, 0, 254)),
        Ipv4Addr::new(10, 244, 0, 2)
    )]
    #[case::broadcast_not_allowed(
        Some(Ipv4Addr::new(10, 244, 0, 255)),
        Ipv4Addr::new(10, 244, 0, 2)
    )]
    fn preferred_address(#[case] preferred: Option<Ipv4Addr>, #[case] expected: Ipv4Addr) {
        let mut a = Allocator::new("10.244.0.0/24".parse().unwrap());
        assert_eq!(a.allocate(preferred), Some(expected));
    }

    #[rstest]
    #[case::same("10.244.0.0/24", "10.244.0.0/24", true)]
    #[case::neighbours("10.244.0.0/24", "10.244.1.0/24", false)]
    #[case::contained("10.244.0.0/16", "10.244.1.0/24", true)]
    fn overlap(#[case] a: &str, #[case] b: &str, #[case] expected: bool) {
        let (a, b): (Subnet, Subnet) = (a.parse().unwrap(), b.parse().unwrap());
        assert_eq!(a.overlaps(&b), expected);
        assert_eq!(b.overlaps(&a), expected);
    }
}
