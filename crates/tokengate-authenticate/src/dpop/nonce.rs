//! Server nonces (RFC 9449 §9): a value the server hands out in
//! `DPoP-Nonce` that the next proofs must carry, so a proof made ahead
//! of time (by a thief with a moment's access to the key) expires with
//! the nonce.
//!
//! Stateless and shared by every instance without a store: a nonce is the
//! number of the period it was made in and a MAC of that number under the
//! token pepper, which every instance of a deployment holds. The nonce of
//! the current period and of the one before are accepted; a client
//! refused with `use_dpop_nonce` retries with the nonce of the refusal.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderValue;
use tokengate_core::TokenHasher;

/// Nonces of `period_nanos` periods, made and checked under `hasher`'s
/// current pepper.
#[derive(Clone)]
pub(crate) struct Nonces {
    pub(crate) period_nanos: u64,
}

impl Nonces {
    fn mac(hasher: &TokenHasher, period: u64) -> [u8; 16] {
        let digest = hasher.hash_str(&format!("tokengate-dpop-nonce:{period}"));
        let mut mac = [0; 16];
        mac.copy_from_slice(&digest.digest()[..16]);
        mac
    }

    fn period(&self, now: u64) -> u64 {
        now / self.period_nanos.max(1)
    }

    /// The nonce of `now`'s period.
    pub(crate) fn current(&self, hasher: &TokenHasher, now: u64) -> HeaderValue {
        let period = self.period(now);
        let mut bytes = [0; 24];
        bytes[..8].copy_from_slice(&period.to_be_bytes());
        bytes[8..].copy_from_slice(&Self::mac(hasher, period));
        HeaderValue::from_str(&URL_SAFE_NO_PAD.encode(bytes))
            .unwrap_or_else(|_| HeaderValue::from_static("nonce"))
    }

    /// Whether `nonce` is of this period or the one before.
    pub(crate) fn accepts(&self, hasher: &TokenHasher, nonce: Option<&str>, now: u64) -> bool {
        let Some(bytes) = nonce
            .filter(|n| n.len() == 32)
            .and_then(|n| URL_SAFE_NO_PAD.decode(n).ok())
        else {
            return false;
        };
        let Ok(period) = <[u8; 8]>::try_from(&bytes[..8]).map(u64::from_be_bytes) else {
            return false;
        };
        let current = self.period(now);
        (period == current || period.saturating_add(1) == current)
            && bool::from(subtle::ConstantTimeEq::ct_eq(
                &bytes[8..],
                &Self::mac(hasher, period)[..],
            ))
    }
}

#[cfg(test)]
mod tests {
    use tokengate_core::{KeyId, Pepper};

    use super::*;

    #[test]
    fn a_nonce_holds_for_its_period_and_the_next_under_the_same_pepper_only() {
        let hasher = TokenHasher::new(Pepper::new(KeyId::new(1), [1; 32]).unwrap());
        let other = TokenHasher::new(Pepper::new(KeyId::new(1), [2; 32]).unwrap());
        let nonces = Nonces { period_nanos: 100 };
        let nonce = nonces.current(&hasher, 250);
        let text = nonce.to_str().unwrap();
        assert!(nonces.accepts(&hasher, Some(text), 299));
        assert!(nonces.accepts(&hasher, Some(text), 399), "one period late");
        assert!(
            !nonces.accepts(&hasher, Some(text), 400),
            "two periods late"
        );
        assert!(!nonces.accepts(&hasher, Some(text), 150), "from the future");
        assert!(
            !nonces.accepts(&other, Some(text), 250),
            "another deployment"
        );
        assert!(!nonces.accepts(&hasher, None, 250));
        assert!(!nonces.accepts(&hasher, Some("short"), 250));
        let mut forged = text.to_owned();
        forged.replace_range(31.., if text.ends_with('A') { "B" } else { "A" });
        assert!(!nonces.accepts(&hasher, Some(&forged), 250));
    }
}
