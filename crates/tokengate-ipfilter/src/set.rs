//! A set of networks with O(log n) membership: merged, sorted ranges.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};
use tokengate_core::Echo;

/// A set of networks (CIDR blocks), stored as sorted, merged address
/// ranges: membership is a binary search, whatever the number of rules.
///
/// Rules for IPv4-mapped IPv6 networks (`::ffff:10.0.0.0/104`) are stored
/// as the IPv4 networks they mean, and addresses are canonicalised before
/// lookup, so `::ffff:10.1.2.3` matches `10.0.0.0/8` and `::1` never
/// becomes `0.0.0.1`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

/// A network that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{input} is not a network: expected CIDR such as 10.0.0.0/8 or 2001:db8::/32, or a single address"
)]
pub struct CidrError {
    input: Echo,
}

/// Parses `10.0.0.0/8`, `2001:db8::/32` or a bare address (a /32 or
/// /128). Host bits after the prefix are ignored (`10.1.2.3/8` is
/// `10.0.0.0/8`). Surrounding whitespace is not accepted.
pub fn parse_net(text: &str) -> Result<IpNet, CidrError> {
    let error = || CidrError {
        input: Echo::new(text, 100),
    };
    if text.contains('/') {
        text.parse::<IpNet>()
            .map(|net| net.trunc())
            .map_err(|_| error())
    } else {
        text.parse::<IpAddr>().map(IpNet::from).map_err(|_| error())
    }
}

impl IpSet {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// A set of the networks in `nets` (each parsed with [`parse_net`]);
    /// the error names the first bad one.
    pub fn parse<I>(nets: I) -> Result<Self, CidrError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        nets.into_iter()
            .map(|n| parse_net(n.as_ref()))
            .collect::<Result<Vec<_>, _>>()
            .map(Self::from_nets)
    }

    /// A set of `nets`.
    pub fn from_nets(nets: impl IntoIterator<Item = IpNet>) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for net in nets {
            match canonical_net(net) {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => v6.push((u128::from(n.network()), u128::from(n.broadcast()))),
            }
        }
        Self {
            v4: merge(v4),
            v6: merge(v6),
        }
    }

    /// Whether the set holds no network.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// How many disjoint ranges the networks merged into.
    pub fn ranges(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Whether `addr` (canonicalised) is in one of the networks.
    pub fn contains(&self, addr: IpAddr) -> bool {
        match addr.to_canonical() {
            IpAddr::V4(a) => lookup(&self.v4, u32::from(a)),
            IpAddr::V6(a) => lookup(&self.v6, u128::from(a)),
        }
    }
}

/// `::ffff:a.b.c.d/p` with p >= 96 is the IPv4 network `a.b.c.d/(p-96)`.
fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.network().to_ipv4_mapped()
        && let Ok(n) = Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return IpNet::V4(n);
    }
    net
}

fn merge<T: Ord + Copy + Successor>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut merged: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match merged.last_mut() {
            Some(last) if last.1.successor().is_none_or(|next| start <= next) => {
                last.1 = last.1.max(end);
            }
            _ => merged.push((start, end)),
        }
    }
    merged.shrink_to_fit();
    merged
}

fn lookup<T: Ord + Copy>(ranges: &[(T, T)], addr: T) -> bool {
    // The last range starting at or before `addr` is the only candidate.
    let after = ranges.partition_point(|&(start, _)| start <= addr);
    after > 0 && ranges[after - 1].1 >= addr
}

trait Successor: Sized {
    fn successor(self) -> Option<Self>;
}

impl Successor for u32 {
    fn successor(self) -> Option<Self> {
        self.checked_add(1)
    }
}

impl Successor for u128 {
    fn successor(self) -> Option<Self> {
        self.checked_add(1)
    }
}

/// The reference the fast set is tested against: a linear scan.
#[doc(hidden)]
pub fn naive_contains(nets: &[IpNet], addr: IpAddr) -> bool {
    let addr = addr.to_canonical();
    nets.iter().any(|net| canonical_net(*net).contains(&addr))
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use ipnet::Ipv6Net;
    use proptest::prelude::*;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn membership_at_the_edges() {
        let set = IpSet::parse(["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]).unwrap();
        for inside in [
            "10.0.0.0",
            "10.255.255.255",
            "192.0.2.7",
            "2001:db8::1",
            "2001:db8:ffff:ffff::",
        ] {
            assert!(set.contains(ip(inside)), "{inside}");
        }
        for outside in [
            "9.255.255.255",
            "11.0.0.0",
            "192.0.2.6",
            "192.0.2.8",
            "2001:db9::",
            "::",
        ] {
            assert!(!set.contains(ip(outside)), "{outside}");
        }
    }

    #[test]
    fn mapped_rules_and_addresses_match_as_ipv4_but_loopback_does_not() {
        let set = IpSet::parse(["10.0.0.0/8", "::ffff:192.0.2.0/120"]).unwrap();
        assert!(set.contains(ip("::ffff:10.1.2.3")));
        assert!(set.contains(ip("192.0.2.44")));
        let zero = IpSet::parse(["0.0.0.0/8"]).unwrap();
        assert!(!zero.contains(ip("::1")), "::1 must not become 0.0.0.1");
    }

    #[test]
    fn overlapping_and_adjacent_ranges_merge() {
        let set = IpSet::parse(["10.0.0.0/9", "10.128.0.0/9", "10.1.0.0/16", "0.0.0.0/0"]).unwrap();
        assert_eq!(set.ranges(), 1);
        let all = IpSet::parse(["255.255.255.255", "255.255.255.254"]).unwrap();
        assert_eq!(all.ranges(), 1);
        assert!(all.contains(ip("255.255.255.255")));
    }

    #[test]
    fn bad_networks_are_named() {
        for bad in [
            "10.0.0.0/33",
            "10.0.0",
            "10.0.0.0/",
            " 10.0.0.0/8",
            "fe80::1%eth0",
            "unknown",
            "::/129",
        ] {
            let err = IpSet::parse([bad]).unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        assert_eq!(parse_net("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
    }

    fn arb_net() -> impl Strategy<Value = IpNet> {
        prop_oneof![
            (any::<u32>(), 0u8..=32)
                .prop_map(|(a, p)| IpNet::V4(Ipv4Net::new(Ipv4Addr::from(a), p).unwrap().trunc())),
            (any::<u128>(), 0u8..=128)
                .prop_map(|(a, p)| IpNet::V6(Ipv6Net::new(Ipv6Addr::from(a), p).unwrap().trunc())),
            (any::<u32>(), 96u8..=128).prop_map(|(a, p)| {
                IpNet::V6(
                    Ipv6Net::new(Ipv4Addr::from(a).to_ipv6_mapped(), p)
                        .unwrap()
                        .trunc(),
                )
            }),
            // Narrow v4 space so rules overlap and addresses hit them.
            (0u32..4096, 20u8..=32).prop_map(|(a, p)| IpNet::V4(
                Ipv4Net::new(Ipv4Addr::from(a << 8), p).unwrap().trunc()
            )),
        ]
    }

    fn arb_addr() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<IpAddr>(),
            (0u32..(4096 << 8)).prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
            (0u32..(4096 << 8)).prop_map(|a| IpAddr::V6(Ipv4Addr::from(a).to_ipv6_mapped())),
        ]
    }

    proptest! {
        #[test]
        fn the_fast_set_agrees_with_a_linear_scan(
            nets in proptest::collection::vec(arb_net(), 0..40),
            addrs in proptest::collection::vec(arb_addr(), 1..40),
        ) {
            let set = IpSet::from_nets(nets.iter().copied());
            for addr in addrs {
                prop_assert_eq!(set.contains(addr), naive_contains(&nets, addr), "{}", addr);
            }
        }

        #[test]
        fn cidr_text_round_trips(net in arb_net()) {
            let parsed = parse_net(&net.to_string()).unwrap();
            prop_assert_eq!(parsed, net);
        }

        #[test]
        fn cidr_parsing_never_panics(text in "[0-9a-f:./%]{0,45}") {
            if let Ok(net) = parse_net(&text) {
                prop_assert_eq!(parse_net(&net.to_string()).unwrap(), net);
            }
        }
    }
}
