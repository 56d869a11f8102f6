//! Who is calling: the verified principal and the resolved client address.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use http::HeaderValue;
use std::time::SystemTime;

use ipnet::IpNet;

use crate::audience::Audience;
use crate::id::TokenId;
use crate::record::{RateQuota, TokenRecord};
use crate::scope::ScopeSet;

/// The verified identity behind a request, inserted into request extensions
/// by the authenticate layer and read by later layers and handlers.
///
/// Cheap to clone (one `Arc`), immutable, and free of secrets: it holds the
/// token's public id, never the token or its hash.
#[derive(Clone)]
pub struct Principal {
    inner: Arc<Inner>,
}

struct Inner {
    token_id: TokenId,
    name: String,
    subject: Arc<str>,
    scopes: ScopeSet,
    audiences: Vec<Audience>,
    expires_at: Option<SystemTime>,
    allowed_networks: Vec<IpNet>,
    rate_quota: Option<RateQuota>,
    metadata: BTreeMap<String, String>,
    /// The expiry as a response header value, made once per principal.
    expiry_header: OnceLock<Option<HeaderValue>>,
}

impl Principal {
    /// The principal a token record stands for.
    pub fn from_record(record: &TokenRecord) -> Self {
        Self {
            inner: Arc::new(Inner {
                token_id: record.id.clone(),
                name: record.name.clone(),
                subject: record.subject.as_str().into(),
                scopes: record.scopes.clone(),
                audiences: record.audiences.clone(),
                expires_at: record.expires_at,
                allowed_networks: record.allowed_networks.clone(),
                rate_quota: record.rate_quota,
                metadata: record.metadata.clone(),
                expiry_header: OnceLock::new(),
            }),
        }
    }

    /// The token's public id.
    pub fn token_id(&self) -> &TokenId {
        &self.inner.token_id
    }

    /// The token's label.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The owner of the token.
    pub fn subject(&self) -> &str {
        &self.inner.subject
    }

    /// The owner, shared: a cheap key for per-owner state (no allocation).
    pub fn subject_shared(&self) -> Arc<str> {
        Arc::clone(&self.inner.subject)
    }

    /// What the token may do.
    pub fn scopes(&self) -> &ScopeSet {
        &self.inner.scopes
    }

    /// The services the token may be used at.
    pub fn audiences(&self) -> &[Audience] {
        &self.inner.audiences
    }

    /// When the token expires, if ever.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.inner.expires_at
    }

    /// Networks the token may be used from; empty means any.
    pub fn allowed_networks(&self) -> &[IpNet] {
        &self.inner.allowed_networks
    }

    /// The token's own rate quota, if it has one.
    pub fn rate_quota(&self) -> Option<RateQuota> {
        self.inner.rate_quota
    }

    /// Application labels.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.inner.metadata
    }

    /// The expiry rendered as a header value by `render`, once per
    /// principal (and so once per cached token, not once per request).
    pub fn expiry_header(
        &self,
        render: impl FnOnce(SystemTime) -> Option<HeaderValue>,
    ) -> Option<HeaderValue> {
        self.inner
            .expiry_header
            .get_or_init(|| self.inner.expires_at.and_then(render))
            .clone()
    }

    /// Whether the token was issued for `audience`.
    pub fn allows_audience(&self, audience: &Audience) -> bool {
        self.inner.audiences.contains(audience)
    }

    /// Whether the token may be used from `ip`: always when it names no
    /// networks, otherwise only from inside one of them.
    pub fn allows_ip(&self, ip: ClientIp) -> bool {
        let networks = &self.inner.allowed_networks;
        networks.is_empty() || networks.iter().any(|net| net.contains(&ip.addr()))
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Principal")
            .field("token_id", &self.inner.token_id)
            .field("name", &self.inner.name)
            .field("subject", &self.inner.subject)
            .field("scopes", &self.inner.scopes)
            .field("audiences", &self.inner.audiences)
            .field("expires_at", &self.inner.expires_at)
            .field("allowed_networks", &self.inner.allowed_networks)
            .field("rate_quota", &self.inner.rate_quota)
            .finish_non_exhaustive()
    }
}

/// The address of the client, as resolved through trusted proxies by the
/// client-IP layer and shared with every later layer through request
/// extensions.
///
/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are stored as IPv4, so
/// IPv4 rules match clients of dual-stack sockets; `::1` stays IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientIp(IpAddr);

impl ClientIp {
    /// The client address, canonicalised.
    pub fn new(addr: IpAddr) -> Self {
        Self(addr.to_canonical())
    }

    /// The address.
    pub fn addr(self) -> IpAddr {
        self.0
    }
}

impl From<IpAddr> for ClientIp {
    fn from(addr: IpAddr) -> Self {
        Self::new(addr)
    }
}

impl fmt::Display for ClientIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::record::tests::record;

    #[test]
    fn mapped_ipv4_is_canonicalised_but_loopback_v6_is_not() {
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(
            ClientIp::new(mapped).addr(),
            IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))
        );
        assert_eq!(
            ClientIp::new(IpAddr::V6(Ipv6Addr::LOCALHOST)).addr(),
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        );
    }

    #[test]
    fn network_allowlist_matches_mapped_clients() {
        let mut r = record();
        r.allowed_networks = vec!["10.0.0.0/8".parse().unwrap()];
        let p = Principal::from_record(&r);
        assert!(p.allows_ip(ClientIp::new("::ffff:10.1.2.3".parse().unwrap())));
        assert!(!p.allows_ip(ClientIp::new("11.0.0.1".parse().unwrap())));
        let open = Principal::from_record(&record());
        assert!(open.allows_ip(ClientIp::new("11.0.0.1".parse().unwrap())));
    }

    #[test]
    fn audience_must_be_listed() {
        let p = Principal::from_record(&record());
        assert!(p.allows_audience(&"notes".parse().unwrap()));
        assert!(!p.allows_audience(&"billing".parse().unwrap()));
    }

    #[test]
    fn principal_clones_share_one_allocation() {
        let p = Principal::from_record(&record());
        let q = p.clone();
        assert!(Arc::ptr_eq(&p.inner, &q.inner));
        assert_eq!(q.subject(), "user-1");
    }
}
