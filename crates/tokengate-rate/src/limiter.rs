//! One named quota and what it counts by.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Extensions, HeaderMap, HeaderValue};
use ipnet::{Ipv4Net, Ipv6Net};
use tokengate_core::{ClientIp, Denial, IpReason, Principal, RateLimitPolicy, RateQuota, SlotKey};

use crate::gcra::Gcra;
use crate::state::RateKey;

/// A user key function: reads the request's headers and extensions.
pub type KeyFn = Arc<dyn Fn(&HeaderMap, &Extensions) -> Option<Arc<str>> + Send + Sync>;

/// What a limiter counts by.
#[derive(Clone)]
#[non_exhaustive]
pub enum KeyBy {
    /// The token (needs the principal). A quota stored on the token record
    /// overrides the limiter's.
    Token,
    /// The token's owner: every token of one subject shares the quota.
    Owner,
    /// The client address (`ClientIp::of`, from the request's trail): a limit before
    /// authentication, against key spraying and brute force.
    ClientIp,
    /// A user function; `None` means the request has no key.
    Custom(KeyFn),
}

impl fmt::Debug for KeyBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Token => "Token",
            Self::Owner => "Owner",
            Self::ClientIp => "ClientIp",
            Self::Custom(_) => "Custom",
        })
    }
}

/// A named quota and its key.
#[derive(Debug, Clone)]
pub struct Limiter {
    pub(crate) name: Arc<str>,
    pub(crate) quota: RateQuota,
    pub(crate) gcra: Gcra,
    pub(crate) key: KeyBy,
    /// The policy and its header for the limiter's own quota, made once;
    /// `None` for a name that cannot be a policy name (refused by the layer).
    own_policy: Option<QuotaPolicy>,
    /// Client addresses count by network: (IPv4 prefix, IPv6 prefix).
    ip_prefixes: (u8, u8),
}

impl Limiter {
    /// `quota` per token, named `per-token`; the token's own quota wins.
    pub fn per_token(quota: RateQuota) -> Self {
        Self::new("per-token", quota, KeyBy::Token)
    }

    /// `quota` per owner, named `per-owner`.
    pub fn per_owner(quota: RateQuota) -> Self {
        Self::new("per-owner", quota, KeyBy::Owner)
    }

    /// `quota` per client address, named `per-ip`.
    pub fn per_client_ip(quota: RateQuota) -> Self {
        Self::new("per-ip", quota, KeyBy::ClientIp)
    }

    /// `quota` per key of `key`, under `name`.
    pub fn keyed(
        name: &str,
        quota: RateQuota,
        key: impl Fn(&HeaderMap, &Extensions) -> Option<Arc<str>> + Send + Sync + 'static,
    ) -> Self {
        Self::new(name, quota, KeyBy::Custom(Arc::new(key)))
    }

    fn new(name: &str, quota: RateQuota, key: KeyBy) -> Self {
        Self {
            name: name.into(),
            quota,
            gcra: Gcra::new(quota),
            key,
            own_policy: own_policy(name, quota),
            ip_prefixes: (32, 64),
        }
    }

    /// For a per-client-address limiter, counts addresses by network: every
    /// IPv4 address in one `/v4` and every IPv6 address in one `/v6` share
    /// a bucket. Defaults: `/32` (each IPv4 address) and `/64` (each IPv6
    /// subnet: an ordinary home or cloud host owns a whole /64, so keying by
    /// /128 would hand it 2^64 fresh budgets). Prefixes are capped at 32
    /// and 128.
    pub fn client_ip_prefixes(mut self, v4: u8, v6: u8) -> Self {
        self.ip_prefixes = (v4.min(32), v6.min(128));
        self
    }

    /// Renames the limiter (the name appears in `RateLimit-Policy`).
    pub fn named(mut self, name: &str) -> Self {
        self.name = name.into();
        self.own_policy = own_policy(name, self.quota);
        self
    }

    /// Whether the name can appear in a `RateLimit-Policy` header.
    pub(crate) fn has_valid_name(&self) -> bool {
        self.own_policy.is_some()
    }

    /// The limiter's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key and quota of a request, and a token's further quotas
    /// (empty but for a token limiter), or `None` when it has no key.
    pub(crate) fn key_of<'a>(
        &self,
        headers: &HeaderMap,
        extensions: &'a Extensions,
    ) -> Option<(RateKey, Gcra, RateQuota, &'a [RateQuota])> {
        let principal = || extensions.get::<Principal>();
        match &self.key {
            KeyBy::Token => {
                let p = principal()?;
                let (gcra, quota, further) = match p.rate_quotas() {
                    [first, further @ ..] => (Gcra::new(*first), *first, further),
                    [] => (self.gcra, self.quota, &[][..]),
                };
                Some((RateKey::Token(p.token_id().clone()), gcra, quota, further))
            }
            KeyBy::Owner => Some((
                RateKey::Owner(principal()?.subject_shared()),
                self.gcra,
                self.quota,
                &[],
            )),
            KeyBy::ClientIp => Some((
                RateKey::Ip(network_of(
                    ClientIp::of(extensions)?.addr(),
                    self.ip_prefixes,
                )),
                self.gcra,
                self.quota,
                &[],
            )),
            KeyBy::Custom(f) => Some((
                RateKey::Custom(f(headers, extensions)?),
                self.gcra,
                self.quota,
                &[],
            )),
        }
    }

    /// The refusal for a request without this limiter's key.
    pub(crate) fn missing_key_denial(&self) -> Denial {
        match self.key {
            KeyBy::ClientIp => Denial::IpForbidden(IpReason::Unresolved),
            _ => Denial::MissingToken,
        }
    }

    /// The IETF `RateLimit-Policy` view of `quota` under this limiter's
    /// name, with its header value: made once for the limiter's own quota,
    /// and once per grant for a token's own quota (kept by the principal in
    /// `extensions`).
    pub(crate) fn policy(&self, quota: RateQuota, extensions: &Extensions) -> Option<QuotaPolicy> {
        match &self.own_policy {
            Some(own) if quota == self.quota => Some(own.clone()),
            _ => match (&self.key, extensions.get::<Principal>()) {
                (KeyBy::Token, Some(principal)) if principal.rate_quotas().contains(&quota) => {
                    token_policy(principal, &self.name, quota)
                }
                _ => own_policy(&self.name, quota),
            },
        }
    }
}

/// A quota as a limiter states it: the policy and its `RateLimit-Policy`
/// header value.
pub(crate) type QuotaPolicy = (RateLimitPolicy, HeaderValue);

/// A token's own quotas as the first limiter to state them did (one per
/// quota, in order), kept with the token's grant (tokens sharing a grant
/// share them).
static TOKEN_POLICY: SlotKey<Box<[Option<QuotaPolicy>]>> = SlotKey::new();

/// Gives the per-token policy its slot, before any request.
pub(crate) fn register_slots() {
    TOKEN_POLICY.register();
}

/// `principal`'s own `quota` as the limiter called `name` states it:
/// rendered once per grant for the first limiter that asks, afresh for a
/// limiter of another name.
pub(crate) fn token_policy(
    principal: &Principal,
    name: &str,
    quota: RateQuota,
) -> Option<QuotaPolicy> {
    let quotas = principal.rate_quotas();
    let Some(index) = quotas.iter().position(|q| *q == quota) else {
        return own_policy(name, quota);
    };
    let kept = principal.with_grant_slot(
        &TOKEN_POLICY,
        |_| quotas.iter().map(|&q| own_policy(name, q)).collect(),
        |kept| {
            kept.get(index)
                .cloned()
                .flatten()
                .filter(|(policy, _)| policy.name() == name)
        },
    );
    kept.or_else(|| own_policy(name, quota))
}

/// `addr` with the host bits past its family's prefix cleared.
fn network_of(addr: IpAddr, (v4, v6): (u8, u8)) -> IpAddr {
    match addr {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Net::new(a, v4).map_or(a, |n| n.network())),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Net::new(a, v6).map_or(a, |n| n.network())),
    }
}

/// The policy `quota` is stated as, in a window of whole seconds: the
/// time an empty bucket takes to fill again, rounded up. The quota (`q`)
/// is the larger of the burst and the sustained rate over that window.
/// GCRA admits a whole burst at once, so the requests left (`r`) can reach
/// the burst: a `q` below it would show more remaining than the quota
/// (`q=50;w=1` beside `r=99`). A `q` of the burst alone would understate
/// a fast rate whose refill time rounds up to a second (5/s with a burst
/// of 3 is `q=5;w=1`, not `q=3;w=1`).
fn own_policy(name: &str, quota: RateQuota) -> Option<QuotaPolicy> {
    let burst = u64::from(quota.burst().get());
    let interval = quota.emission_interval().as_nanos().max(1);
    let refill = quota
        .emission_interval()
        .as_nanos()
        .saturating_mul(u128::from(burst));
    let window_secs = refill.div_ceil(1_000_000_000).max(1);
    let sustained = window_secs.saturating_mul(1_000_000_000) / interval;
    let quota = burst.max(u64::try_from(sustained).unwrap_or(u64::MAX));
    let window = Duration::from_secs(u64::try_from(window_secs).unwrap_or(u64::MAX));
    let policy = RateLimitPolicy::new(name, quota, window).ok()?;
    let header = policy.policy_header();
    Some((policy, header))
}
