//! Keyed token hashes: what the store keeps instead of tokens.
//!
//! A [`TokenHash`] is HMAC-SHA256 of the whole token under a server-side
//! [`Pepper`] that is kept outside the store. A leaked database alone cannot
//! confirm a guessed token, and a leaked pepper alone holds no token.
//!
//! Every pepper carries a [`KeyId`], and every hash remembers the key that
//! made it, so peppers can be rotated later without guessing which key a
//! stored hash belongs to.
//!
//! ```
//! use tokengate_core::{KeyId, Pepper, TokenFormat, TokenHasher};
//!
//! let hasher = TokenHasher::new(Pepper::generate(KeyId::new(1)));
//! let token = TokenFormat::default().generate();
//! let hash = hasher.hash(&token);
//! assert_eq!(hash, hasher.hash(&token));
//! assert_eq!(hash.key_id(), KeyId::new(1));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::hash::{Hash, Hasher};

use hmac::{Hmac, KeyInit, Mac};
use rand::Rng;
use rand::rand_core::UnwrapErr;
use rand::rngs::SysRng;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::token::Token;

/// Identifies one pepper among those a deployment has used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(u32);

impl KeyId {
    /// A key id from its number.
    pub const fn new(id: u32) -> Self {
        Self(id)
    }

    /// The number of this key id.
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "k{}", self.0)
    }
}

/// The server-side HMAC key under which tokens are hashed.
///
/// At least [`Pepper::MIN_LEN`] bytes. `Debug` shows only the key id, and the
/// bytes are zeroed on drop.
#[derive(Clone)]
pub struct Pepper {
    id: KeyId,
    key: Zeroizing<Vec<u8>>,
}

impl Pepper {
    /// The shortest pepper accepted, in bytes.
    pub const MIN_LEN: usize = 32;
    /// The longest pepper accepted, in bytes (one SHA-256 block; longer keys
    /// would be hashed down by HMAC anyway).
    pub const MAX_LEN: usize = 64;

    /// A pepper from raw key bytes.
    pub fn new(id: KeyId, key: impl Into<Vec<u8>>) -> Result<Self, PepperError> {
        let key = Zeroizing::new(key.into());
        if !(Self::MIN_LEN..=Self::MAX_LEN).contains(&key.len()) {
            return Err(PepperError::Length { len: key.len() });
        }
        Ok(Self { id, key })
    }

    /// A pepper from hexadecimal text (e.g. the `TOKENGATE_PEPPER` variable).
    /// The error never echoes the text.
    pub fn from_hex(id: KeyId, text: &str) -> Result<Self, PepperError> {
        let bytes = Zeroizing::new(hex::decode(text.trim()).map_err(|_| PepperError::NotHex)?);
        Self::new(id, bytes.as_slice())
    }

    /// A fresh random pepper of 32 bytes from the operating system's CSPRNG.
    ///
    /// # Panics
    ///
    /// Only if the operating system cannot supply randomness.
    pub fn generate(id: KeyId) -> Self {
        let mut key = Zeroizing::new(vec![0u8; Self::MIN_LEN]);
        UnwrapErr(SysRng).fill_bytes(&mut key);
        Self { id, key }
    }

    /// The key id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The key as hexadecimal text, for writing a pepper file. Handle with care.
    pub fn expose_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.key.as_slice()))
    }
}

impl fmt::Debug for Pepper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pepper")
            .field("id", &self.id)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Why a pepper was refused. Never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PepperError {
    /// Too short or too long.
    #[error(
        "pepper must be {} to {} bytes, got {len}",
        Pepper::MIN_LEN,
        Pepper::MAX_LEN
    )]
    Length {
        /// The length that was given.
        len: usize,
    },
    /// Hex text that does not decode.
    #[error("pepper is not valid hexadecimal")]
    NotHex,
    /// An entry whose key id is not a number, or repeats another's.
    #[error(
        "each pepper entry must be KEYID:HEX with a key id of its own (or one bare HEX, key 1)"
    )]
    BadKeyId,
    /// No pepper at all.
    #[error("holds no pepper")]
    Empty,
}

/// The peppers of a database: the current one, and those rotated out
/// that tokens may still be hashed under (newest first).
#[derive(Debug)]
pub struct Peppers {
    /// New tokens are hashed under this one.
    pub current: Pepper,
    /// Rotated out; tokens found under them move to the current one.
    pub previous: Vec<Pepper>,
}

impl Peppers {
    /// The hasher: the current pepper, knowing the previous ones.
    pub fn hasher(self) -> TokenHasher {
        TokenHasher::new(self.current).with_previous(self.previous)
    }
}

/// Hashes tokens under one pepper, knowing the peppers rotated out.
///
/// The HMAC key schedule is computed once here; each hash clones the keyed
/// state, so hashing costs two SHA-256 compressions plus the token's blocks.
///
/// Clones share one set of peppers: [`TokenHasher::replace`] swaps it for
/// every clone at once (the authenticate layer's, the lifecycle's, the
/// admin API's), so a running server picks up a pepper rotation or
/// retirement without a restart. A hash in progress finishes under the
/// set it started with.
#[derive(Clone)]
pub struct TokenHasher {
    keys: std::sync::Arc<arc_swap::ArcSwap<Keys>>,
}

/// The current pepper's keyed state and those rotated out, newest first.
struct Keys {
    current: Keyed,
    previous: Box<[Keyed]>,
}

/// One pepper's HMAC state, its key schedule computed.
#[derive(Clone)]
struct Keyed {
    key_id: KeyId,
    mac: Hmac<Sha256>,
}

impl Keyed {
    #[allow(
        clippy::needless_pass_by_value,
        reason = "consuming the pepper wipes it when the key schedule is built"
    )]
    fn new(pepper: Pepper) -> Self {
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&pepper.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        Self {
            key_id: pepper.id,
            mac,
        }
    }

    fn hash(&self, bytes: &[u8]) -> TokenHash {
        let mut mac = self.mac.clone();
        mac.update(bytes);
        TokenHash {
            key_id: self.key_id,
            digest: mac.finalize().into_bytes().into(),
        }
    }
}

impl TokenHasher {
    /// A hasher for `pepper`. Takes the pepper so that its bytes are wiped
    /// as soon as the key schedule is computed.
    pub fn new(pepper: Pepper) -> Self {
        let keys = Keys {
            current: Keyed::new(pepper),
            previous: Box::new([]),
        };
        Self {
            keys: std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(keys)),
        }
    }

    /// This hasher, also knowing `previous` peppers (newest first): after
    /// a pepper rotation, a token the store does not know under the
    /// current pepper is looked up under each of these, and moved to the
    /// current one where found (lazy migration). Costs an unknown token
    /// one more hash and lookup per previous pepper.
    #[must_use]
    pub fn with_previous(self, previous: impl IntoIterator<Item = Pepper>) -> Self {
        let current = self.keys.load().current.clone();
        self.keys.store(std::sync::Arc::new(Keys {
            current,
            previous: previous.into_iter().map(Keyed::new).collect(),
        }));
        self
    }

    /// Hashes under `peppers` from now on, in this hasher and every clone
    /// of it: the current pepper for new hashes, the previous ones for
    /// lookups of tokens not yet moved. A pepper left out (retired) is
    /// never used again.
    pub fn replace(&self, peppers: Peppers) {
        let Peppers { current, previous } = peppers;
        self.keys.store(std::sync::Arc::new(Keys {
            current: Keyed::new(current),
            previous: previous.into_iter().map(Keyed::new).collect(),
        }));
    }

    /// Whether peppers rotated out are still known.
    pub fn has_previous(&self) -> bool {
        !self.keys.load().previous.is_empty()
    }

    /// The key ids of the peppers rotated out, newest first.
    pub fn previous_key_ids(&self) -> Vec<KeyId> {
        self.keys.load().previous.iter().map(|k| k.key_id).collect()
    }

    /// The hashes of a token's text under each previous pepper, newest
    /// first (empty without any).
    pub fn previous_hashes(&self, token: &str) -> Vec<TokenHash> {
        let keys = self.keys.load();
        keys.previous
            .iter()
            .map(|k| k.hash(token.as_bytes()))
            .collect()
    }

    /// The key id of the pepper in use.
    pub fn key_id(&self) -> KeyId {
        self.keys.load().current.key_id
    }

    /// The keyed hash of `token`.
    pub fn hash(&self, token: &Token) -> TokenHash {
        self.hash_bytes(token.expose_secret().as_bytes())
    }

    /// The keyed hash of a token's text that passed
    /// [`TokenFormat::validate`](crate::TokenFormat::validate): the same value as
    /// [`TokenHasher::hash`] of the parsed token, without an owned copy.
    pub fn hash_str(&self, token: &str) -> TokenHash {
        self.hash_bytes(token.as_bytes())
    }

    /// A value that identifies the pepper without revealing it: 16 bytes of
    /// HMAC-SHA256 of a fixed label (which no token can equal: it holds
    /// spaces), in hex. A store records it beside the key id, so that
    /// opening the store with a missing or different pepper is an error
    /// instead of a silently empty token set.
    pub fn pepper_check(&self) -> String {
        let digest = self.hash_bytes(b"tokengate pepper check v1").digest;
        hex::encode(&digest[..16])
    }

    /// The keyed hash of raw token bytes.
    pub(crate) fn hash_bytes(&self, bytes: &[u8]) -> TokenHash {
        self.keys.load().current.hash(bytes)
    }
}

impl fmt::Debug for TokenHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenHasher")
            .field("key_id", &self.key_id())
            .field("previous", &self.previous_key_ids())
            .finish_non_exhaustive()
    }
}

/// HMAC-SHA256 of a token under a pepper: the key the store is indexed by.
///
/// Equality is constant time. `Debug` and `Display` show the key id and the
/// first 8 hex digits only (a keyed fingerprint, safe to log).
#[derive(Clone, Copy)]
pub struct TokenHash {
    key_id: KeyId,
    digest: [u8; 32],
}

impl TokenHash {
    /// A hash from its parts, e.g. as read back from a store.
    pub const fn from_parts(key_id: KeyId, digest: [u8; 32]) -> Self {
        Self { key_id, digest }
    }

    /// The id of the pepper that made this hash.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The 32 digest bytes.
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// The digest as 64 lowercase hex digits (for stores that index text).
    pub fn to_hex(&self) -> String {
        hex::encode(self.digest)
    }

    /// A short fingerprint for logs: the key id and the first 8 hex digits.
    pub fn fingerprint(&self) -> String {
        format!("{}:{}", self.key_id, hex::encode(&self.digest[..4]))
    }
}

impl PartialEq for TokenHash {
    /// Constant time: the digests are compared as four words folded into
    /// one difference, then tested once with `subtle` (a hash-table probe
    /// compares keys on every lookup, so this is on the request path).
    fn eq(&self, other: &Self) -> bool {
        let word = |d: &[u8; 32], i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&d[i * 8..i * 8 + 8]);
            u64::from_ne_bytes(w)
        };
        let diff = (0..4).fold(0u64, |acc, i| {
            acc | (word(&self.digest, i) ^ word(&other.digest, i))
        });
        self.key_id == other.key_id && bool::from(diff.ct_eq(&0))
    }
}

impl Eq for TokenHash {}

impl Hash for TokenHash {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // The digest is uniformly random: eight of its bytes are a fine hash.
        let mut head = [0u8; 8];
        head.copy_from_slice(&self.digest[..8]);
        state.write_u64(u64::from_le_bytes(head));
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({})", self.fingerprint())
    }
}

impl fmt::Display for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.fingerprint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::TokenFormat;

    fn hmac_hex(key: &[u8], data: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
        mac.update(data);
        hex::encode(mac.finalize().into_bytes())
    }

    /// RFC 4231, section 4: the HMAC-SHA-256 outputs of test cases 1 to 7
    /// (case 5's output is truncated to 128 bits by the RFC).
    #[test]
    fn hmac_sha256_matches_rfc4231_vectors() {
        let cases: [(Vec<u8>, Vec<u8>, &str); 7] = [
            (
                vec![0x0b; 20],
                b"Hi There".to_vec(),
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            ),
            (
                b"Jefe".to_vec(),
                b"what do ya want for nothing?".to_vec(),
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                vec![0xaa; 20],
                vec![0xdd; 50],
                "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
            ),
            (
                (1u8..=25).collect(),
                vec![0xcd; 50],
                "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
            ),
            (
                vec![0x0c; 20],
                b"Test With Truncation".to_vec(),
                "a3b6167473100ee06e0c796c2955552b",
            ),
            (
                vec![0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First".to_vec(),
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            ),
            (
                vec![0xaa; 131],
                b"This is a test using a larger than block-size key and a larger than block-size data. The key needs to be hashed before being used by the HMAC algorithm.".to_vec(),
                "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
            ),
        ];
        for (i, (key, data, expected)) in cases.iter().enumerate() {
            let got = hmac_hex(key, data);
            assert!(got.starts_with(expected), "case {}: {got}", i + 1);
        }
    }

    #[test]
    fn token_hasher_is_hmac_sha256_of_the_whole_token() {
        let key = [7u8; 32];
        let hasher = TokenHasher::new(Pepper::new(KeyId::new(3), key).unwrap());
        let token = TokenFormat::default().generate();
        let hash = hasher.hash(&token);
        assert_eq!(
            hash.to_hex(),
            hmac_hex(&key, token.expose_secret().as_bytes())
        );
        assert_eq!(hash.key_id(), KeyId::new(3));
    }

    #[test]
    fn hashing_the_text_equals_hashing_the_token() {
        let hasher = TokenHasher::new(Pepper::generate(KeyId::new(1)));
        let token = TokenFormat::default().generate();
        assert_eq!(hasher.hash_str(token.expose_secret()), hasher.hash(&token));
    }

    #[test]
    fn hashes_differing_in_any_byte_or_key_are_unequal() {
        let base = TokenHash::from_parts(KeyId::new(1), [7; 32]);
        for i in 0..32 {
            let mut digest = [7; 32];
            digest[i] ^= 1;
            assert_ne!(
                base,
                TokenHash::from_parts(KeyId::new(1), digest),
                "byte {i}"
            );
        }
        assert_ne!(base, TokenHash::from_parts(KeyId::new(2), [7; 32]));
        assert_eq!(base, TokenHash::from_parts(KeyId::new(1), [7; 32]));
    }

    #[test]
    fn different_peppers_give_different_hashes() {
        let token = TokenFormat::default().generate();
        let a = TokenHasher::new(Pepper::new(KeyId::new(1), [1u8; 32]).unwrap()).hash(&token);
        let b = TokenHasher::new(Pepper::new(KeyId::new(1), [2u8; 32]).unwrap()).hash(&token);
        assert_ne!(a, b);
    }

    #[test]
    fn short_long_and_non_hex_peppers_are_refused() {
        assert_eq!(
            Pepper::new(KeyId::new(1), [0u8; 31]).unwrap_err(),
            PepperError::Length { len: 31 }
        );
        assert_eq!(
            Pepper::new(KeyId::new(1), [0u8; 65]).unwrap_err(),
            PepperError::Length { len: 65 }
        );
        assert_eq!(
            Pepper::from_hex(KeyId::new(1), "zz").unwrap_err(),
            PepperError::NotHex
        );
        let hex64 = "ab".repeat(32);
        let pepper = Pepper::from_hex(KeyId::new(9), &format!(" {hex64}\n")).unwrap();
        assert_eq!(pepper.expose_hex().as_str(), hex64);
    }

    #[test]
    fn pepper_and_hasher_debug_hide_key_material() {
        let pepper = Pepper::new(KeyId::new(1), [0xab; 32]).unwrap();
        let shown = format!("{pepper:?} {:?}", TokenHasher::new(pepper.clone()));
        assert!(!shown.contains("ab, ") && !shown.contains("abab") && !shown.contains("171"));
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn hash_display_is_a_short_fingerprint() {
        let hash = TokenHash::from_parts(KeyId::new(2), [0x11; 32]);
        assert_eq!(hash.to_string(), "k2:11111111");
        assert_eq!(format!("{hash:?}"), "TokenHash(k2:11111111)");
    }

    #[test]
    fn generated_peppers_differ() {
        let a = Pepper::generate(KeyId::new(1)).expose_hex();
        let b = Pepper::generate(KeyId::new(1)).expose_hex();
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }

    #[test]
    fn pepper_check_tells_peppers_apart_without_revealing_them() {
        let pepper = Pepper::new(KeyId::new(1), [0xab; 32]).unwrap();
        let check = TokenHasher::new(pepper.clone()).pepper_check();
        assert_eq!(check.len(), 32);
        assert_eq!(check, TokenHasher::new(pepper.clone()).pepper_check());
        assert!(!check.contains(pepper.expose_hex().as_str()));
        let other = TokenHasher::new(Pepper::new(KeyId::new(1), [0xac; 32]).unwrap());
        assert_ne!(check, other.pepper_check());
    }
}
