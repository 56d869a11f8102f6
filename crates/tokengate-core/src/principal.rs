//! Who is calling: the verified principal and the resolved client address.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use std::num::NonZeroU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;

use crate::audience::Audience;
use crate::binding::Binding;
use crate::id::TokenId;
use crate::record::{RateQuota, TokenRecord};
use crate::scope::ScopeSet;
use crate::slot::{SlotKey, Slots};
use crate::uses::UseLimit;

/// The verified identity behind a request, inserted into request extensions
/// by the authenticate layer and read by later layers and handlers.
///
/// Cheap to clone (one `Arc`), immutable, and free of secrets: it holds the
/// token's public id, never the token or its hash.
#[derive(Clone)]
pub struct Principal {
    inner: Arc<Inner>,
}

/// What is particular to one token.
struct Inner {
    token_id: TokenId,
    name: Box<str>,
    /// The expiry in nanoseconds since the Unix epoch (at least 1): half
    /// the size of a `SystemTime`, and principals are cached by the million.
    expires_at: Option<NonZeroU64>,
    grant: Arc<Grant>,
    /// A usage limit and a binding, boxed together: most tokens have
    /// neither, and principals are cached by the million.
    extra: Option<Box<Extra>>,
    /// What layers keep with this principal (see [`SlotKey`]).
    slots: Slots,
}

/// What few tokens have.
struct Extra {
    /// The limit, and its count's generation.
    use_limit: Option<(UseLimit, u64)>,
    /// The key or certificate the token is bound to.
    binding: Option<Binding>,
}

/// What a token may do and from where. Tokens of one owner usually share
/// it, so the verifying cache keeps one copy for all of them (see
/// [`Grants`]).
#[derive(PartialEq, Eq, Hash)]
struct Grant {
    subject: Arc<str>,
    scopes: ScopeSet,
    audiences: Box<[Audience]>,
    allowed_networks: Box<[IpNet]>,
    rate_quotas: Box<[RateQuota]>,
    metadata: BTreeMap<String, String>,
    /// What layers keep with this grant (see [`SlotKey`]).
    slots: Slots,
}

/// `net` with an IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) written
/// as the IPv4 network it stands for (`10.0.0.0/8`), as client addresses
/// are: a dual-stack socket reports IPv4 clients in mapped form, and a
/// rule must match them however either side was written.
pub fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && let Ok(mapped) = ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return IpNet::V4(mapped.trunc());
    }
    net
}

impl Grant {
    fn from_record(record: &TokenRecord) -> Self {
        Self {
            subject: record.subject.as_str().into(),
            scopes: record.scopes.clone(),
            audiences: record.audiences.as_slice().into(),
            allowed_networks: record
                .allowed_networks
                .iter()
                .map(|&net| canonical_net(net))
                .collect(),
            rate_quotas: record.rate_quotas.as_slice().into(),
            metadata: record.metadata.clone(),
            slots: Slots::default(),
        }
    }
}

/// One shared copy of each distinct grant among live principals.
///
/// Held by a verifying cache (`tokengate-cache`) and used only when a
/// principal is built (on a cache miss), through
/// [`Principal::from_record_in`]. It keeps weak references, so a grant lives exactly as
/// long as some principal uses it; dead references are purged whenever
/// the table has doubled since the last purge.
pub struct Grants {
    table: Mutex<GrantTable>,
    hasher: RandomState,
}

impl Default for Grants {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Grants {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Grants").finish_non_exhaustive()
    }
}

struct GrantTable {
    /// By the grant's hash. Two distinct grants with one hash simply do not
    /// share: the newer one takes the place.
    by_hash: HashMap<u64, Weak<Grant>>,
    purge_at: usize,
}

impl Grants {
    /// An empty table.
    pub fn new() -> Self {
        Self {
            table: Mutex::new(GrantTable {
                by_hash: HashMap::new(),
                purge_at: 1024,
            }),
            hasher: RandomState::new(),
        }
    }

    fn intern(&self, grant: Grant) -> Arc<Grant> {
        let hash = self.hasher.hash_one(&grant);
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(shared) = table.by_hash.get(&hash).and_then(Weak::upgrade)
            && *shared == grant
        {
            return shared;
        }
        let grant = Arc::new(grant);
        table.by_hash.insert(hash, Arc::downgrade(&grant));
        if table.by_hash.len() >= table.purge_at {
            table.by_hash.retain(|_, weak| weak.strong_count() > 0);
            table.purge_at = (table.by_hash.len() * 2).max(1024);
        }
        grant
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_hash
            .len()
    }
}

/// A time as nanoseconds since the Unix epoch, saturating (earlier times
/// become 1 ns, later than 2554 become the maximum).
fn pack_time(at: SystemTime) -> NonZeroU64 {
    let nanos = at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    NonZeroU64::new(nanos).unwrap_or(NonZeroU64::MIN)
}

impl Principal {
    /// The principal a token record stands for.
    pub fn from_record(record: &TokenRecord) -> Self {
        Self::with_grant(record, Arc::new(Grant::from_record(record)))
    }

    /// The principal a token record stands for, sharing its grant with
    /// other principals built through `grants`.
    pub fn from_record_in(record: &TokenRecord, grants: &Grants) -> Self {
        Self::with_grant(record, grants.intern(Grant::from_record(record)))
    }

    fn with_grant(record: &TokenRecord, grant: Arc<Grant>) -> Self {
        Self {
            inner: Arc::new(Inner {
                token_id: record.id.clone(),
                name: record.name.as_str().into(),
                expires_at: record.expires_at.map(pack_time),
                grant,
                extra: (record.uses.is_some() || record.binding.is_some()).then(|| {
                    Box::new(Extra {
                        use_limit: record.uses.map(|uses| (uses.limit, uses.generation)),
                        binding: record.binding,
                    })
                }),
                slots: Slots::default(),
            }),
        }
    }

    /// The token's usage limit, if it has one: every admitted request
    /// spends a use in the store (the count is not kept here).
    pub fn use_limit(&self) -> Option<&UseLimit> {
        self.inner
            .extra
            .as_deref()?
            .use_limit
            .as_ref()
            .map(|(limit, _)| limit)
    }

    /// The generation of a usage-limited token's count when the principal
    /// was read ([`Uses::generation`](crate::Uses::generation)); 0 without a limit.
    pub fn uses_generation(&self) -> u64 {
        self.inner
            .extra
            .as_deref()
            .and_then(|extra| extra.use_limit)
            .map_or(0, |(_, generation)| generation)
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
        &self.inner.grant.subject
    }

    /// The owner, shared: a cheap key for per-owner state (no allocation).
    pub fn subject_shared(&self) -> Arc<str> {
        Arc::clone(&self.inner.grant.subject)
    }

    /// What the token may do.
    pub fn scopes(&self) -> &ScopeSet {
        &self.inner.grant.scopes
    }

    /// The services the token may be used at.
    pub fn audiences(&self) -> &[Audience] {
        &self.inner.grant.audiences
    }

    /// When the token expires, if ever.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.inner
            .expires_at
            .map(|nanos| UNIX_EPOCH + Duration::from_nanos(nanos.get()))
    }

    /// Networks the token may be used from; empty means any.
    pub fn allowed_networks(&self) -> &[IpNet] {
        &self.inner.grant.allowed_networks
    }

    /// The token's own rate quotas (empty: the limiter's default).
    pub fn rate_quotas(&self) -> &[RateQuota] {
        &self.inner.grant.rate_quotas
    }

    /// Application labels.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.inner.grant.metadata
    }

    /// Calls `f` with the value `key` names for this principal (one per
    /// cached token), made by `init` on first use.
    #[inline]
    pub fn with_slot<T, R>(
        &self,
        key: &SlotKey<T>,
        init: impl Fn(&Self) -> T,
        f: impl FnOnce(&T) -> R,
    ) -> R
    where
        T: Send + Sync + 'static,
    {
        self.inner.slots.with(key, || init(self), f)
    }

    /// Calls `f` with the value `key` names for this principal's grant
    /// (shared by every principal with the same subject and rights), made
    /// by `init` on first use.
    #[inline]
    pub fn with_grant_slot<T, R>(
        &self,
        key: &SlotKey<T>,
        init: impl Fn(&Self) -> T,
        f: impl FnOnce(&T) -> R,
    ) -> R
    where
        T: Send + Sync + 'static,
    {
        self.inner.grant.slots.with(key, || init(self), f)
    }

    /// The key or certificate the token is bound to, if any: the
    /// authenticate layer admits it only with a proof of possession.
    pub fn binding(&self) -> Option<&Binding> {
        self.inner.extra.as_deref()?.binding.as_ref()
    }

    /// Whether the token was issued for `audience`.
    pub fn allows_audience(&self, audience: &Audience) -> bool {
        self.inner.grant.audiences.contains(audience)
    }

    /// Whether the token may be used from `ip`: always when it names no
    /// networks, otherwise only from inside one of them.
    pub fn allows_ip(&self, ip: ClientIp) -> bool {
        let networks = &self.inner.grant.allowed_networks;
        networks.is_empty() || networks.iter().any(|net| net.contains(&ip.addr()))
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Principal")
            .field("token_id", &self.inner.token_id)
            .field("name", &self.inner.name)
            .field("subject", &self.inner.grant.subject)
            .field("scopes", &self.inner.grant.scopes)
            .field("audiences", &self.inner.grant.audiences)
            .field("expires_at", &self.expires_at())
            .field("allowed_networks", &self.inner.grant.allowed_networks)
            .field("rate_quotas", &self.inner.grant.rate_quotas)
            .field("binding", &self.binding())
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
    fn principals_share_equal_grants_and_only_equal_ones() {
        let grants = Grants::new();
        let mut a = record();
        let mut b = record();
        b.id = TokenId::generate();
        b.name = "other".into();
        let (pa, pb) = (
            Principal::from_record_in(&a, &grants),
            Principal::from_record_in(&b, &grants),
        );
        assert!(Arc::ptr_eq(&pa.inner.grant, &pb.inner.grant));
        assert_eq!(pb.name(), "other");
        assert_ne!(pa.token_id(), pb.token_id());
        a.scopes = "notes:write".parse().unwrap();
        let pc = Principal::from_record_in(&a, &grants);
        assert!(!Arc::ptr_eq(&pa.inner.grant, &pc.inner.grant));
        assert_eq!(pc.scopes(), &a.scopes);
        assert_eq!(pa.scopes(), &b.scopes);
    }

    #[test]
    fn a_grant_slot_is_made_once_for_every_principal_sharing_the_grant() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static SUBJECT_LEN: SlotKey<usize> = SlotKey::new();
        static TOKEN_ID: SlotKey<String> = SlotKey::new();
        let made = AtomicUsize::new(0);
        let grants = Grants::new();
        let a = record();
        let mut b = a.clone();
        b.id = TokenId::generate();
        let (pa, pb) = (
            Principal::from_record_in(&a, &grants),
            Principal::from_record_in(&b, &grants),
        );
        let len = |p: &Principal| {
            made.fetch_add(1, Ordering::Relaxed);
            p.subject().len()
        };
        for p in [&pa, &pb, &pa] {
            assert_eq!(p.with_grant_slot(&SUBJECT_LEN, len, |n| *n), 6);
        }
        assert_eq!(
            made.load(Ordering::Relaxed),
            1,
            "one value for the shared grant"
        );
        let id = |p: &Principal| p.token_id().as_str().to_owned();
        assert_eq!(pa.with_slot(&TOKEN_ID, id, Clone::clone), a.id.as_str());
        assert_eq!(pb.with_slot(&TOKEN_ID, id, Clone::clone), b.id.as_str());
        let clone = pa.clone();
        let kept = clone.with_slot(&TOKEN_ID, |_| String::new(), Clone::clone);
        assert_eq!(kept, a.id.as_str(), "clones share the value");
        drop(pa);
    }

    #[test]
    fn dead_grants_are_purged() {
        let grants = Grants::new();
        for i in 0..5_000 {
            let mut r = record();
            r.subject = format!("user-{i}").parse().unwrap();
            drop(Principal::from_record_in(&r, &grants));
        }
        assert!(grants.len() < 2_048, "{} grants kept", grants.len());
        let kept: Vec<Principal> = (0..3_000)
            .map(|i| {
                let mut r = record();
                r.subject = format!("kept-{i}").parse().unwrap();
                Principal::from_record_in(&r, &grants)
            })
            .collect();
        assert!(grants.len() >= 3_000);
        assert_eq!(kept[2_999].subject(), "kept-2999");
    }

    #[test]
    fn a_principal_fits_a_96_byte_allocation() {
        // With the Arc's two counts (16 bytes) and the allocator's 8-byte
        // header, 72 bytes is the most that stays in glibc's 96-byte size
        // class: the memory bench's bytes per cached token rely on it.
        assert!(
            std::mem::size_of::<Inner>() <= 72,
            "{}",
            std::mem::size_of::<Inner>()
        );
    }

    #[test]
    fn the_expiry_keeps_its_nanoseconds() {
        let mut r = record();
        let at = UNIX_EPOCH + Duration::new(1_800_000_000, 123_456_789);
        r.expires_at = Some(at);
        assert_eq!(Principal::from_record(&r).expires_at(), Some(at));
        r.expires_at = None;
        assert_eq!(Principal::from_record(&r).expires_at(), None);
    }

    #[test]
    fn principal_clones_share_one_allocation() {
        let p = Principal::from_record(&record());
        let q = p.clone();
        assert!(Arc::ptr_eq(&p.inner, &q.inner));
        assert_eq!(q.subject(), "user-1");
    }
}

#[cfg(test)]
mod canonical_net_tests {
    use super::canonical_net;

    #[test]
    fn mapped_networks_become_ipv4_and_others_stay() {
        let net = |s: &str| s.parse::<ipnet::IpNet>().unwrap();
        assert_eq!(canonical_net(net("::ffff:10.0.0.0/104")), net("10.0.0.0/8"));
        assert_eq!(
            canonical_net(net("::ffff:10.1.2.3/128")),
            net("10.1.2.3/32")
        );
        assert_eq!(canonical_net(net("::1/128")), net("::1/128"));
        assert_eq!(
            canonical_net(net("::ffff:0.0.0.0/95")),
            net("::ffff:0.0.0.0/95")
        );
        assert_eq!(canonical_net(net("2001:db8::/32")), net("2001:db8::/32"));
    }
}
