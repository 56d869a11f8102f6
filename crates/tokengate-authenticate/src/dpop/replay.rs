//! The proofs this instance has seen, in memory, bounded.
//!
//! A proof is acceptable while its `iat` is within the window of the
//! clock, so for at most two windows of server time: each key is kept at
//! least that long, in two generations of sets. A key goes into the
//! current set; when the current set is two windows old it becomes the
//! previous one and the previous one is dropped. A lookup asks both. Each
//! entry is 16 bytes of a hash plus the set's control byte and spare
//! room: `dpop_replay_memory` in the benches measures it.

use std::collections::HashSet;
use std::hash::BuildHasherDefault;
use std::sync::{Mutex, PoisonError};

/// The keys are SHA-256 prefixes already: hashing them again is waste.
#[derive(Default)]
pub(crate) struct PrefixHasher(u64);

impl std::hash::Hasher for PrefixHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for (i, byte) in bytes.iter().take(8).enumerate() {
            self.0 ^= u64::from(*byte) << (8 * i);
        }
    }

    fn write_u128(&mut self, value: u128) {
        // The low half of a uniformly random value.
        #[allow(clippy::cast_possible_truncation, reason = "the low 64 bits")]
        let low = value as u64;
        self.0 = low;
    }
}

type Keys = HashSet<u128, BuildHasherDefault<PrefixHasher>>;

const SHARDS: usize = 16;

/// What the record says of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Not seen before; recorded now.
    First,
    /// Seen before.
    Again,
    /// The record is full: refused (503), never forgotten early.
    Full,
}

struct Shard {
    current: Keys,
    previous: Keys,
    /// When `current` started, in nanoseconds of the layer's clock.
    started: u64,
}

/// Keys seen within the last two windows, in memory.
pub(crate) struct MemoryReplay {
    shards: [Mutex<Shard>; SHARDS],
    /// How long a generation lasts: two windows.
    generation: u64,
    /// The most keys a shard holds in its two sets.
    per_shard: usize,
}

impl MemoryReplay {
    /// A record for proofs acceptable for `window_nanos` either side of
    /// now, holding at most `capacity` keys.
    pub(crate) fn new(window_nanos: u64, capacity: usize) -> Self {
        Self {
            shards: std::array::from_fn(|_| {
                Mutex::new(Shard {
                    current: Keys::default(),
                    previous: Keys::default(),
                    started: 0,
                })
            }),
            generation: window_nanos.saturating_mul(2).max(1),
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    /// Records `key` at `now` (nanoseconds), or says it was seen.
    pub(crate) fn record(&self, key: u128, now: u64) -> Seen {
        let index = usize::try_from(key >> 124).unwrap_or(0) % SHARDS;
        let mut shard = self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let age = now.saturating_sub(shard.started);
        if age >= self.generation {
            // Two generations behind: nothing in either set is needed.
            shard.previous = if age >= self.generation.saturating_mul(2) {
                Keys::default()
            } else {
                std::mem::take(&mut shard.current)
            };
            shard.current = Keys::default();
            shard.started = now;
        }
        if shard.previous.contains(&key) || shard.current.contains(&key) {
            return Seen::Again;
        }
        if shard.current.len() + shard.previous.len() >= self.per_shard {
            return Seen::Full;
        }
        shard.current.insert(key);
        Seen::First
    }

    /// The keys held now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(PoisonError::into_inner);
                s.current.len() + s.previous.len()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn a_key_is_refused_for_two_windows_then_forgotten() {
        let replay = MemoryReplay::new(60 * SECOND, 1_000);
        let key = 0xfeed_u128 << 100;
        assert_eq!(replay.record(key, 1), Seen::First);
        assert_eq!(replay.record(key, 2), Seen::Again);
        // Still refused at the very end of its acceptance (two windows).
        assert_eq!(replay.record(key, 120 * SECOND), Seen::Again);
        assert_eq!(replay.record(key, 239 * SECOND), Seen::Again);
        // Past four windows both generations have turned over.
        assert_eq!(replay.record(key, 481 * SECOND), Seen::First);
    }

    #[test]
    fn a_full_record_refuses_instead_of_forgetting() {
        let replay = MemoryReplay::new(60 * SECOND, 16);
        // One shard holds one key: the second key of the shard is refused.
        let (a, b) = (1u128 << 124, (1u128 << 124) | 7);
        assert_eq!(replay.record(a, 1), Seen::First);
        assert_eq!(replay.record(b, 2), Seen::Full);
        assert_eq!(replay.record(a, 3), Seen::Again);
        assert_eq!(replay.len(), 1);
        // Once the key may be forgotten, there is room again.
        assert_eq!(replay.record(b, 300 * SECOND), Seen::First);
    }
}
