//! Parsers for the forwarding headers, and the right-to-left walk.
//!
//! Both headers list one address per hop, the client first and the last
//! proxy's peer last. Only the entries appended by proxies you trust can be
//! believed, so the walk starts at the right: the first address that is not
//! a trusted proxy is the client. Anything malformed on the way stops the
//! walk and leaves the client unresolved (allowlists then deny).

use std::net::IpAddr;

use http::header::FORWARDED;
use http::{HeaderMap, HeaderName};

use crate::set::IpSet;

/// A constant name: looking a header up by `&str` parses the name first.
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Which header carries the forwarding chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (every header line, in order).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for="[2001:db8::1]:4711"`.
    Forwarded,
}

/// The result of the walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Walk {
    /// The client address.
    Client(IpAddr),
    /// A malformed entry stopped the walk inside the trusted chain.
    Malformed,
}

/// One hop of a forwarding chain, as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// A well-formed address.
    Addr(IpAddr),
    /// Anything else: ports where none belong, zone ids, `unknown`,
    /// obfuscated identifiers, garbage.
    Malformed,
}

/// Parses an `X-Forwarded-For` value: comma-separated bare addresses,
/// optional whitespace around them. No ports, no brackets, no zone ids, no
/// leading zeros.
pub fn parse_x_forwarded_for(value: &str) -> impl Iterator<Item = Hop> + '_ {
    value.split(',').map(
        |entry| match entry.trim_matches([' ', '\t']).parse::<IpAddr>() {
            Ok(addr) => Hop::Addr(addr.to_canonical()),
            Err(_) => Hop::Malformed,
        },
    )
}

/// Parses an RFC 7239 `Forwarded` value into the `for=` node of each
/// element. An element without `for=` is a malformed hop (it cannot be
/// attributed). Quoted strings may hold `,` and `;`.
pub fn parse_forwarded(value: &str) -> Vec<Hop> {
    split_outside_quotes(value, ',')
        .into_iter()
        .map(|element| {
            let mut node = None;
            for pair in split_outside_quotes(element, ';') {
                let Some((key, raw)) = pair.split_once('=') else {
                    return Hop::Malformed;
                };
                if key.trim().eq_ignore_ascii_case("for") {
                    if node.is_some() {
                        return Hop::Malformed;
                    }
                    node = Some(raw.trim());
                }
            }
            node.map_or(Hop::Malformed, parse_node)
        })
        .collect()
}

/// A `for=` node: `1.2.3.4`, `"1.2.3.4:80"`, `"[2001:db8::1]"`,
/// `"[2001:db8::1]:4711"`. `unknown` and `_obfuscated` are malformed for
/// our purpose: they cannot be matched against rules.
fn parse_node(raw: &str) -> Hop {
    let unquoted = match raw.strip_prefix('"') {
        Some(rest) => match rest.strip_suffix('"') {
            Some(inner) if !inner.contains(['"', '\\']) => inner,
            _ => return Hop::Malformed,
        },
        // Unquoted, a node is a token: a bare IPv4 address, no port, no brackets.
        None if raw.contains([':', '[', ']']) => return Hop::Malformed,
        None => raw,
    };
    let addr = if let Some(rest) = unquoted.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return Hop::Malformed;
        };
        if !(after.is_empty() || valid_port(after)) {
            return Hop::Malformed;
        }
        match v6.parse::<std::net::Ipv6Addr>() {
            Ok(v6) => IpAddr::V6(v6),
            Err(_) => return Hop::Malformed,
        }
    } else {
        let (host, port) = unquoted
            .split_once(':')
            .map_or((unquoted, ""), |(h, p)| (h, p));
        if !(port.is_empty() || valid_port(&format!(":{port}"))) {
            return Hop::Malformed;
        }
        match host.parse::<std::net::Ipv4Addr>() {
            Ok(v4) => IpAddr::V4(v4),
            Err(_) => return Hop::Malformed,
        }
    };
    Hop::Addr(addr.to_canonical())
}

/// `:1234`, or an obfuscated port `:_abc` (RFC 7239 section 6.3).
fn valid_port(text: &str) -> bool {
    let Some(port) = text.strip_prefix(':') else {
        return false;
    };
    (port.parse::<u16>().is_ok() && !port.starts_with('+'))
        || (port.starts_with('_')
            && port.len() > 1
            && port[1..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-'))
}

fn split_outside_quotes(text: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut quoted = false;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c == separator && !quoted => {
                parts.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// Resolves the client: the peer if it is not a trusted proxy; otherwise
/// the rightmost untrusted hop of the chain; the peer again when every hop
/// is trusted or the chain is empty; `Malformed` when a malformed hop is met
/// first.
pub fn walk(peer: IpAddr, trusted: &IpSet, headers: &HeaderMap, header: ForwardedHeader) -> Walk {
    let peer = peer.to_canonical();
    if !trusted.contains(peer) {
        return Walk::Client(peer);
    }
    let hops: Vec<Hop> = match header {
        ForwardedHeader::XForwardedFor => headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .map(|v| v.to_str().ok())
            .collect::<Option<Vec<_>>>()
            .map_or_else(
                || vec![Hop::Malformed],
                |lines| lines.into_iter().flat_map(parse_x_forwarded_for).collect(),
            ),
        ForwardedHeader::Forwarded => headers
            .get_all(FORWARDED)
            .iter()
            .map(|v| v.to_str().ok())
            .collect::<Option<Vec<_>>>()
            .map_or_else(
                || vec![Hop::Malformed],
                |lines| lines.into_iter().flat_map(parse_forwarded).collect(),
            ),
    };
    for hop in hops.iter().rev() {
        match hop {
            Hop::Addr(addr) if trusted.contains(*addr) => continue,
            Hop::Addr(addr) => return Walk::Client(*addr),
            Hop::Malformed => return Walk::Malformed,
        }
    }
    Walk::Client(peer)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use proptest::prelude::*;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn trusted() -> IpSet {
        IpSet::parse(["10.0.0.0/8", "fd00::/8"]).unwrap()
    }

    /// The walk over `X-Forwarded-For` from `peer`, with `trusted()` proxies.
    fn walk_xff(peer: IpAddr, headers: &HeaderMap) -> Walk {
        walk(peer, &trusted(), headers, ForwardedHeader::XForwardedFor)
    }

    fn xff(lines: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for line in lines {
            h.append("x-forwarded-for", HeaderValue::from_str(line).unwrap());
        }
        h
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let h = xff(&["1.2.3.4"]);
        assert_eq!(
            walk_xff(ip("203.0.113.5"), &h),
            Walk::Client(ip("203.0.113.5"))
        );
    }

    #[test]
    fn the_rightmost_untrusted_address_wins() {
        let h = xff(&["6.6.6.6, 198.51.100.7", "10.0.0.2"]);
        assert_eq!(
            walk_xff(ip("10.0.0.1"), &h),
            Walk::Client(ip("198.51.100.7"))
        );
    }

    #[test]
    fn all_trusted_or_empty_chains_fall_back_to_the_peer() {
        let all = xff(&["10.1.1.1, 10.2.2.2"]);
        assert_eq!(walk_xff(ip("10.0.0.1"), &all), Walk::Client(ip("10.0.0.1")));
        let none = HeaderMap::new();
        assert_eq!(
            walk_xff(ip("10.0.0.1"), &none),
            Walk::Client(ip("10.0.0.1"))
        );
    }

    #[test]
    fn malformed_entries_stop_the_walk() {
        for bad in [
            "1.2.3.4:80",
            "[::1]",
            "fe80::1%eth0",
            "unknown",
            "01.2.3.4",
            "",
            "1.2.3",
        ] {
            let h = xff(&[&format!("198.51.100.7, {bad}")]);
            assert_eq!(walk_xff(ip("10.0.0.1"), &h), Walk::Malformed, "{bad:?}");
        }
        // Garbage left of the client is never reached.
        let h = xff(&["garbage, 198.51.100.7"]);
        assert_eq!(
            walk_xff(ip("10.0.0.1"), &h),
            Walk::Client(ip("198.51.100.7"))
        );
    }

    #[test]
    fn mapped_addresses_are_canonical_and_loopback_v6_stays_v6() {
        let h = xff(&["::ffff:198.51.100.7"]);
        assert_eq!(
            walk_xff(ip("::ffff:10.0.0.1"), &h),
            Walk::Client(ip("198.51.100.7"))
        );
        let loopback = xff(&["::1"]);
        assert_eq!(walk_xff(ip("10.0.0.1"), &loopback), Walk::Client(ip("::1")));
    }

    #[test]
    fn forwarded_header_nodes_are_parsed_per_rfc_7239() {
        let hops = parse_forwarded(
            r#"for=192.0.2.60;proto=http;by=203.0.113.43, For="[2001:db8:cafe::17]:4711", for="198.51.100.1:80""#,
        );
        assert_eq!(
            hops,
            vec![
                Hop::Addr(ip("192.0.2.60")),
                Hop::Addr(ip("2001:db8:cafe::17")),
                Hop::Addr(ip("198.51.100.1"))
            ]
        );
        for bad in [
            "for=unknown",
            "for=_hidden",
            "proto=http",
            "for=\"[::1\"",
            "for=1.2.3.4;for=5.6.7.8",
            "for=\"1.2.3.4",
            "for=[::1]",
        ] {
            assert_eq!(parse_forwarded(bad), vec![Hop::Malformed], "{bad}");
        }
        assert_eq!(
            parse_forwarded(r#"for="[::1]:_port""#),
            vec![Hop::Addr(ip("::1"))]
        );
        let mut h = HeaderMap::new();
        h.append(
            FORWARDED,
            HeaderValue::from_static("for=198.51.100.9, for=10.0.0.7"),
        );
        assert_eq!(
            walk(ip("10.0.0.1"), &trusted(), &h, ForwardedHeader::Forwarded),
            Walk::Client(ip("198.51.100.9"))
        );
    }

    #[test]
    fn non_text_header_values_are_malformed() {
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"1.2.3.4\xff").unwrap(),
        );
        assert_eq!(walk_xff(ip("10.0.0.1"), &h), Walk::Malformed);
    }

    proptest! {
        #[test]
        fn xff_parsing_never_panics_and_addresses_round_trip(value in "[0-9a-fA-F:.,% \\[\\]a-z]{0,80}") {
            for hop in parse_x_forwarded_for(&value) {
                if let Hop::Addr(addr) = hop {
                    prop_assert_eq!(addr, addr.to_string().parse::<IpAddr>().unwrap().to_canonical());
                }
            }
        }

        #[test]
        fn formatted_chains_parse_back(addrs in proptest::collection::vec(any::<IpAddr>(), 1..8)) {
            let text = addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
            let parsed: Vec<Hop> = parse_x_forwarded_for(&text).collect();
            let expected: Vec<Hop> = addrs.iter().map(|a| Hop::Addr(a.to_canonical())).collect();
            prop_assert_eq!(parsed, expected);
        }

        #[test]
        fn forwarded_parsing_never_panics(value in "\\PC{0,80}") {
            let hops = parse_forwarded(&value);
            prop_assert!(!hops.is_empty());
        }
    }
}
