//! `IpRules`: which addresses pass, deny first.

use std::net::IpAddr;

use tokengate_core::IpReason;

use crate::set::{CidrError, IpSet};

/// Which addresses pass. Deny always wins over allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpRules {
    allow: Option<IpSet>,
    deny: IpSet,
}

impl IpRules {
    /// Every address passes except those in `deny`.
    pub fn deny_list<I>(deny: I) -> Result<Self, CidrError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        Ok(Self {
            allow: None,
            deny: IpSet::parse(deny)?,
        })
    }

    /// Only addresses in `allow` pass, and not those in `deny`. An empty
    /// allowlist lets nothing through.
    pub fn allow_list<A, D>(allow: A, deny: D) -> Result<Self, CidrError>
    where
        A: IntoIterator,
        A::Item: AsRef<str>,
        D: IntoIterator,
        D::Item: AsRef<str>,
    {
        Ok(Self {
            allow: Some(IpSet::parse(allow)?),
            deny: IpSet::parse(deny)?,
        })
    }

    /// The rules command-line flags describe: an allowlist when `allow`
    /// names any network, otherwise a deny list.
    pub fn from_lists<A, D>(allow: A, deny: D) -> Result<Self, CidrError>
    where
        A: IntoIterator,
        A::Item: AsRef<str>,
        D: IntoIterator,
        D::Item: AsRef<str>,
    {
        let allow: Vec<A::Item> = allow.into_iter().collect();
        if allow.is_empty() {
            Self::deny_list(deny)
        } else {
            Self::allow_list(allow, deny)
        }
    }

    /// Why `addr` is refused, if it is.
    pub fn decide(&self, addr: IpAddr) -> Result<(), IpReason> {
        if self.deny.contains(addr) {
            return Err(IpReason::Denied);
        }
        match &self.allow {
            Some(allow) if !allow.contains(addr) => Err(IpReason::NotAllowed),
            _ => Ok(()),
        }
    }
}
