//! The table behind the positive cache: read-optimised, sharded, bounded.
//!
//! Why not moka here: a cache hit is the request path of every
//! authenticated request, and moka's `get` records the read for its
//! frequency sketch and access-order deque (several times this table's
//! cost of a hit; `BENCHMARKS.md` has the figures) and keeps a few
//! hundred bytes of bookkeeping per entry.
//! The positive set is small and read-mostly, its keys are HMAC outputs
//! (uniformly random and secret-keyed, so their bytes are the hash), and
//! correctness never depends on eviction: expiry, revocation and the TTL
//! are judged on every hit by the caller. What this table needs is a
//! bound, cheap reads and a sensible victim when full:
//!
//! - **Shards** of `RwLock`ed tables: a hit takes one shard's read lock.
//!   The bound is global (one atomic count, touched only by inserts and
//!   removals), so the table fills to exactly `max_entries` however the
//!   keys fall into shards.
//! - **Slots** in a `Vec` with a `u32` index in a hashbrown `HashTable`:
//!   a fixed-size slot and a few bytes of index, no per-entry allocation.
//! - **CLOCK eviction** (second chance): a hit sets the slot's referenced
//!   bit (one relaxed store, only when it was clear); a full shard's insert
//!   sweeps a hand over the slots, taking the first stale slot or the first
//!   not referenced since the hand last passed. Hot tokens stay; a flood
//!   of one-off tokens recycles its own slots.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use hashbrown::HashTable;

use tokengate_core::TokenHash;

/// Most shards: enough to spread two to a few dozen cores.
const MAX_SHARDS: usize = 64;
/// Fewest entries a shard is given before another shard is added.
const MIN_PER_SHARD: usize = 16;

pub(super) struct Table<V> {
    shards: Box<[RwLock<Shard<V>>]>,
    /// Entries held, across shards.
    count: AtomicUsize,
    max: usize,
}

struct Shard<V> {
    /// Positions in `slots`, hashed by the key's first digest word.
    index: HashTable<u32>,
    slots: Vec<Slot<V>>,
    /// The CLOCK hand: the next slot to consider for eviction.
    hand: usize,
}

/// One cached key with its value.
pub(super) struct Slot<V> {
    hash: TokenHash,
    referenced: AtomicBool,
    /// When the value was inserted, in nanoseconds since the Unix epoch on
    /// the cache's clock.
    pub(super) inserted_at: u64,
    pub(super) value: V,
}

/// Eight digest bytes from `at`, as a word. The digest is uniform and
/// secret-keyed, so its words serve as hashes.
fn word(hash: &TokenHash, at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&hash.digest()[at..at + 8]);
    u64::from_le_bytes(bytes)
}

/// The slot-table hash of a key: its first digest word.
fn slot_hash(hash: &TokenHash) -> u64 {
    word(hash, 0)
}

/// The shard-choosing hash of a key: the next word, so shard and slot
/// choices are independent.
fn shard_hash(hash: &TokenHash) -> u64 {
    word(hash, 8)
}

/// A slot position as stored in the index. Positions stay below the shard's
/// bound, which [`Table::new`] keeps within `u32`.
fn position(at: usize) -> u32 {
    u32::try_from(at).unwrap_or(u32::MAX)
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

impl<V> Table<V> {
    /// A table holding at most `max_entries` entries (at least one; at
    /// most `u32::MAX` a shard).
    pub(super) fn new(max_entries: u64) -> Self {
        let shards = usize::try_from(max_entries / MIN_PER_SHARD as u64)
            .unwrap_or(MAX_SHARDS)
            .clamp(1, MAX_SHARDS);
        let max = usize::try_from(max_entries)
            .unwrap_or(usize::MAX)
            .clamp(1, shards.saturating_mul(u32::MAX as usize));
        Self {
            shards: (0..shards)
                .map(|_| {
                    RwLock::new(Shard {
                        index: HashTable::new(),
                        slots: Vec::new(),
                        hand: 0,
                    })
                })
                .collect(),
            count: AtomicUsize::new(0),
            max,
        }
    }

    fn shard(&self, hash: &TokenHash) -> &RwLock<Shard<V>> {
        let at = usize::try_from(shard_hash(hash) % self.shards.len() as u64).unwrap_or(0);
        &self.shards[at]
    }

    /// Runs `f` on the slot for `hash` under its shard's read lock, marking
    /// it referenced; `None` if absent.
    pub(super) fn get<R>(&self, hash: &TokenHash, f: impl FnOnce(&Slot<V>) -> R) -> Option<R> {
        let shard = read(self.shard(hash));
        let slot = shard.find(hash)?;
        if !slot.referenced.load(Ordering::Relaxed) {
            slot.referenced.store(true, Ordering::Relaxed);
        }
        Some(f(slot))
    }

    /// Inserts or replaces the value for `hash`. When the table is full, a
    /// slot of the key's shard is reused: the first for which `stale`
    /// holds or that was not referenced since the CLOCK hand last passed
    /// it. (A full table with an empty shard skips caching the value.)
    pub(super) fn insert(
        &self,
        hash: TokenHash,
        value: V,
        inserted_at: u64,
        stale: impl Fn(&Slot<V>) -> bool,
    ) {
        let mut guard = write(self.shard(&hash));
        let shard = &mut *guard;
        let slot = Slot {
            hash,
            referenced: AtomicBool::new(false),
            inserted_at,
            value,
        };
        let key = slot_hash(&hash);
        if let Some(at) = shard.position(&hash) {
            shard.slots[at] = slot;
            return;
        }
        // Claim room first, so racing inserts in other shards cannot both
        // take the last place.
        let claimed = self.count.fetch_add(1, Ordering::Relaxed) < self.max;
        if claimed && shard.slots.len() < u32::MAX as usize {
            let at = position(shard.slots.len());
            shard.slots.push(slot);
            let slots = &shard.slots;
            shard
                .index
                .insert_unique(key, at, |&i| slot_hash(&slots[i as usize].hash));
            return;
        }
        self.count.fetch_sub(1, Ordering::Relaxed);
        if shard.slots.is_empty() {
            return;
        }
        let victim = shard.victim(&stale);
        shard.unindex(victim);
        shard.slots[victim] = slot;
        let slots = &shard.slots;
        shard.index.insert_unique(key, position(victim), |&i| {
            slot_hash(&slots[i as usize].hash)
        });
    }

    /// Removes `hash`, if present.
    pub(super) fn remove(&self, hash: &TokenHash) {
        let mut guard = write(self.shard(hash));
        let shard = &mut *guard;
        let Some(at) = shard.position(hash) else {
            return;
        };
        shard.unindex(at);
        shard.slots.swap_remove(at);
        self.count.fetch_sub(1, Ordering::Relaxed);
        // The last slot moved into `at`: point its index entry there.
        if let Some(moved) = shard.slots.get(at) {
            let moved_key = slot_hash(&moved.hash);
            let last = position(shard.slots.len());
            if let Some(entry) = shard.index.find_mut(moved_key, |&i| i == last) {
                *entry = position(at);
            }
        }
        if shard.hand > shard.slots.len() {
            shard.hand = 0;
        }
    }

    /// Removes everything.
    pub(super) fn clear(&self) {
        for shard in &*self.shards {
            let mut shard = write(shard);
            self.count.fetch_sub(shard.slots.len(), Ordering::Relaxed);
            shard.index = HashTable::new();
            shard.slots = Vec::new();
            shard.hand = 0;
        }
    }

    /// How many entries are held.
    pub(super) fn len(&self) -> usize {
        self.shards.iter().map(|s| read(s).slots.len()).sum()
    }
}

impl<V> Shard<V> {
    fn position(&self, hash: &TokenHash) -> Option<usize> {
        let slots = &self.slots;
        self.index
            .find(slot_hash(hash), |&i| slots[i as usize].hash == *hash)
            .map(|&i| i as usize)
    }

    fn find(&self, hash: &TokenHash) -> Option<&Slot<V>> {
        self.position(hash).map(|at| &self.slots[at])
    }

    /// Removes the index entry of the slot at `at` (the slot stays).
    fn unindex(&mut self, at: usize) {
        let key = slot_hash(&self.slots[at].hash);
        if let Ok(entry) = self.index.find_entry(key, |&i| i as usize == at) {
            entry.remove();
        }
    }

    /// The slot to overwrite in a full shard: the CLOCK sweep. Ends within
    /// two turns of the hand (the first turn clears every referenced bit).
    fn victim(&mut self, stale: &impl Fn(&Slot<V>) -> bool) -> usize {
        let len = self.slots.len();
        for _ in 0..2 * len {
            let at = self.hand % len;
            self.hand = (at + 1) % len;
            let slot = &self.slots[at];
            if stale(slot) || !slot.referenced.swap(false, Ordering::Relaxed) {
                return at;
            }
        }
        self.hand
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;
    use tokengate_core::KeyId;

    fn key(n: u16) -> TokenHash {
        let mut digest = [0u8; 32];
        // Spread the number over both hash words and the tail, like a digest.
        digest[..2].copy_from_slice(&n.to_le_bytes());
        digest[8..10].copy_from_slice(&n.wrapping_mul(40_503).to_le_bytes());
        digest[30..].copy_from_slice(&n.to_be_bytes());
        TokenHash::from_parts(KeyId::new(1), digest)
    }

    fn get(table: &Table<u32>, n: u16) -> Option<u32> {
        table.get(&key(n), |slot| slot.value)
    }

    #[test]
    fn insert_get_replace_remove() {
        let table = Table::new(100);
        table.insert(key(1), 10, 0, |_| false);
        table.insert(key(2), 20, 0, |_| false);
        assert_eq!(get(&table, 1), Some(10));
        table.insert(key(1), 11, 5, |_| false);
        assert_eq!(get(&table, 1), Some(11));
        assert_eq!(table.get(&key(1), |s| s.inserted_at), Some(5));
        assert_eq!(table.len(), 2);
        table.remove(&key(1));
        assert_eq!(get(&table, 1), None);
        assert_eq!(get(&table, 2), Some(20));
        table.clear();
        assert_eq!(table.len(), 0);
        assert_eq!(get(&table, 2), None);
    }

    #[test]
    fn a_full_table_keeps_its_bound_and_the_referenced_entries() {
        // Under 16 entries: one shard, so the bound is exact.
        let table = Table::new(4);
        for n in 0..4 {
            table.insert(key(n), u32::from(n), 0, |_| false);
        }
        // Entries 0 and 2 are read; 1 and 3 are not.
        assert_eq!(get(&table, 0), Some(0));
        assert_eq!(get(&table, 2), Some(2));
        table.insert(key(10), 10, 0, |_| false);
        table.insert(key(11), 11, 0, |_| false);
        assert_eq!(table.len(), 4);
        assert_eq!(get(&table, 1), None, "unreferenced entries go first");
        assert_eq!(get(&table, 3), None);
        assert_eq!(
            get(&table, 0),
            Some(0),
            "referenced entries get a second chance"
        );
        assert_eq!(get(&table, 2), Some(2));
        assert_eq!(get(&table, 10), Some(10));
        assert_eq!(get(&table, 11), Some(11));
    }

    #[test]
    fn stale_entries_are_evicted_before_referenced_ones() {
        let table = Table::new(3);
        for n in 0..3 {
            table.insert(key(n), u32::from(n), u64::from(n), |_| false);
            assert_eq!(get(&table, n), Some(u32::from(n)));
        }
        // Every entry is referenced; the one inserted at 1 is stale.
        table.insert(key(9), 9, 9, |slot| slot.inserted_at == 1);
        assert_eq!(get(&table, 1), None);
        assert_eq!(get(&table, 0), Some(0));
        assert_eq!(get(&table, 2), Some(2));
        assert_eq!(get(&table, 9), Some(9));
    }

    #[test]
    fn many_shards_bound_the_total() {
        let table = Table::new(1_000);
        for n in 0..5_000u16 {
            table.insert(key(n), u32::from(n), 0, |_| false);
        }
        let shards = table.shards.len();
        assert!(shards > 1);
        assert_eq!(table.len(), 1_000, "the bound is global and exact");
    }

    #[test]
    fn concurrent_writers_and_readers_keep_the_count_and_the_bound() {
        let table = std::sync::Arc::new(Table::new(200));
        let threads: Vec<_> = (0..4u16)
            .map(|t| {
                let table = std::sync::Arc::clone(&table);
                std::thread::spawn(move || {
                    for i in 0..5_000u16 {
                        let k = i.wrapping_mul(7).wrapping_add(t * 13) % 1_000;
                        match i % 5 {
                            0 | 1 => table.insert(key(k), u32::from(k), 0, |_| false),
                            2 => table.remove(&key(k)),
                            3 if i % 500 == 3 => table.clear(),
                            _ => {
                                if let Some(v) = get(&table, k) {
                                    assert_eq!(v, u32::from(k), "a key answers its own value");
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert!(table.len() <= 200, "{} entries", table.len());
        assert_consistent(&table);
    }

    /// The count matches the slots, and every slot is indexed once, at its
    /// own position.
    fn assert_consistent(table: &Table<u32>) {
        assert_eq!(table.count.load(Ordering::Relaxed), table.len());
        for shard in &*table.shards {
            let shard = read(shard);
            assert_eq!(shard.index.len(), shard.slots.len());
            for (at, slot) in shard.slots.iter().enumerate() {
                assert_eq!(shard.position(&slot.hash), Some(at));
            }
        }
    }

    #[derive(Debug, Clone, Copy)]
    enum Op {
        Insert(u16, u32),
        Remove(u16),
        Get(u16),
        Clear,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..64u16, any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            3 => (0..64u16).prop_map(Op::Remove),
            6 => (0..64u16).prop_map(Op::Get),
            1 => Just(Op::Clear),
        ]
    }

    /// Applies `op` to the table and to a model map; for a read, what each
    /// answered.
    fn apply(
        table: &Table<u32>,
        model: &mut HashMap<u16, u32>,
        op: Op,
    ) -> Option<(Option<u32>, Option<u32>)> {
        match op {
            Op::Insert(k, v) => {
                table.insert(key(k), v, 0, |_| false);
                model.insert(k, v);
            }
            Op::Remove(k) => {
                table.remove(&key(k));
                model.remove(&k);
            }
            Op::Get(k) => return Some((get(table, k), model.get(&k).copied())),
            Op::Clear => {
                table.clear();
                model.clear();
            }
        }
        None
    }

    proptest! {
        /// With room for every key, the table behaves as a map.
        #[test]
        fn agrees_with_a_map_when_roomy(ops in proptest::collection::vec(op(), 1..300)) {
            let table = Table::new(1_000);
            let mut model = HashMap::new();
            for op in ops {
                if let Some((found, expected)) = apply(&table, &mut model, op) {
                    prop_assert_eq!(found, expected);
                }
                prop_assert_eq!(table.len(), model.len());
                assert_consistent(&table);
            }
        }

        /// When full, the table never exceeds its bound, holds what was
        /// just inserted, and never answers with a value other than the one
        /// last inserted for that key.
        #[test]
        fn bounded_and_never_wrong(ops in proptest::collection::vec(op(), 1..300)) {
            let table = Table::new(8);
            let mut model = HashMap::new();
            for op in ops {
                let written = match op {
                    Op::Insert(k, v) => Some((k, Some(v))),
                    Op::Remove(k) => Some((k, None)),
                    _ => None,
                };
                if let Some((Some(found), expected)) = apply(&table, &mut model, op) {
                    prop_assert_eq!(Some(found), expected);
                }
                if let Some((k, value)) = written {
                    prop_assert_eq!(get(&table, k), value);
                }
                prop_assert!(table.len() <= 8);
                assert_consistent(&table);
            }
        }
    }
}
