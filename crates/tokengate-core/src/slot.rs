//! Values a layer keeps with a principal, made on first use.
//!
//! A layer that derives something from a principal on every request (the
//! `token-expires` header value, the second a token was last used, a
//! token's own quota as a `RateLimit-Policy`) can keep it with the
//! principal instead of deriving it again: it declares a [`SlotKey`] and
//! reads through [`Principal::with_slot`](crate::Principal::with_slot)
//! (one value per cached token) or
//! [`Principal::with_grant_slot`](crate::Principal::with_grant_slot) (one
//! value per grant, shared by every token of an owner that has the same
//! rights). The principal knows nothing of what is kept.

use std::any::Any;
use std::marker::PhantomData;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Keys registered so far in this process: every principal's slots are
/// sized for all of them when its first value is kept.
static REGISTERED: AtomicUsize = AtomicUsize::new(0);

/// Names one kind of value kept with principals; declare it as a `static`
/// and [`register`](SlotKey::register) it when the layer that uses it is
/// built, so that every principal has a slot for it:
///
/// ```
/// use std::time::SystemTime;
/// use tokengate_core::SlotKey;
///
/// /// When a principal was first seen by this layer.
/// static FIRST_SEEN: SlotKey<SystemTime> = SlotKey::new();
///
/// // In the layer's constructor:
/// FIRST_SEEN.register();
/// ```
pub struct SlotKey<T> {
    /// The slot's index plus one; 0 until registered.
    index: AtomicUsize,
    /// Whether a principal without room for this key was met (said once).
    late: AtomicBool,
    _value: PhantomData<fn() -> T>,
}

impl<T> SlotKey<T> {
    /// A key; its slot is assigned when it is registered.
    pub const fn new() -> Self {
        Self {
            index: AtomicUsize::new(0),
            late: AtomicBool::new(false),
            _value: PhantomData,
        }
    }

    /// Gives the key its slot, if it has none yet, and returns its index.
    /// Every principal whose first value is kept afterwards has room for
    /// it; register before the first request (a key first used later gets
    /// its slot then, and principals cached before it make its value
    /// afresh on each read, which is logged once).
    pub fn register(&self) -> usize {
        let assigned = self.index.load(Ordering::Relaxed);
        if assigned != 0 {
            return assigned - 1;
        }
        let fresh = REGISTERED.fetch_add(1, Ordering::Relaxed) + 1;
        match self
            .index
            .compare_exchange(0, fresh, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => fresh - 1,
            Err(raced) => raced - 1,
        }
    }

    /// Says once that a principal had no room for this key.
    #[cold]
    fn note_late(&self) {
        if !self.late.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "a value kept per token was first used after principals were cached: \
                 those make it afresh on each read (register its SlotKey when the layer is built)"
            );
        }
    }
}

impl<T> Default for SlotKey<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> std::fmt::Debug for SlotKey<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotKey")
            .field("index", &self.index.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

type Value = Box<dyn Any + Send + Sync>;

/// The kept values of one principal or grant: allocated on the first
/// value kept, with a slot for every key registered by then; one thin
/// pointer until then (principals stay within their allocation class).
#[derive(Default)]
pub(crate) struct Slots(OnceLock<Box<Kept>>);

/// A slot for each key registered when the first value was kept.
struct Kept(Box<[OnceLock<Value>]>);

impl Slots {
    /// Calls `f` with the value of `key`, made by `init` on first use.
    #[inline]
    pub(crate) fn with<T, R>(
        &self,
        key: &SlotKey<T>,
        init: impl Fn() -> T,
        f: impl FnOnce(&T) -> R,
    ) -> R
    where
        T: Send + Sync + 'static,
    {
        let index = key.register();
        let kept = self.0.get_or_init(|| {
            let keys = REGISTERED.load(Ordering::Relaxed).max(index + 1);
            Box::new(Kept((0..keys).map(|_| OnceLock::new()).collect()))
        });
        let Some(slot) = kept.0.get(index) else {
            key.note_late();
            return f(&init());
        };
        let value = slot.get_or_init(|| Box::new(init()));
        match value.downcast_ref::<T>() {
            Some(value) => f(value),
            // A slot holds the type of its one key; unreachable in practice.
            None => f(&init()),
        }
    }
}

/// Kept values are derived, never part of what a grant or principal is.
impl PartialEq for Slots {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Slots {}

impl std::hash::Hash for Slots {
    fn hash<H: std::hash::Hasher>(&self, _: &mut H) {}
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use super::*;

    static COUNTED: SlotKey<u32> = SlotKey::new();

    #[test]
    fn a_value_is_made_once_and_kept() {
        let slots = Slots::default();
        let made = AtomicU32::new(0);
        let make = || made.fetch_add(1, Ordering::Relaxed) + 7;
        assert_eq!(slots.with(&COUNTED, make, |v| *v), 7);
        assert_eq!(slots.with(&COUNTED, make, |v| *v), 7);
        assert_eq!(made.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn every_registered_key_has_a_slot_and_a_late_one_still_answers() {
        static KEYS: [SlotKey<u32>; 6] = [const { SlotKey::new() }; 6];
        // More keys than any fixed number: all kept.
        for key in &KEYS {
            key.register();
        }
        let slots = Slots::default();
        for (i, key) in KEYS.iter().enumerate() {
            let made = AtomicU32::new(0);
            let make = || made.fetch_add(1, Ordering::Relaxed) + u32::try_from(i).unwrap();
            assert_eq!(slots.with(key, make, |v| *v), u32::try_from(i).unwrap());
            assert_eq!(slots.with(key, make, |v| *v), u32::try_from(i).unwrap());
            assert_eq!(made.load(Ordering::Relaxed), 1, "key {i} kept");
        }
        // A key first used after these slots were sized: made afresh, never wrong.
        static LATE: SlotKey<u32> = SlotKey::new();
        let made = AtomicU32::new(0);
        let make = || made.fetch_add(1, Ordering::Relaxed);
        assert_eq!(slots.with(&LATE, make, |v| *v), 0);
        assert_eq!(slots.with(&LATE, make, |v| *v), 1);
        // A principal whose first value comes after it has room for it.
        let fresh = Slots::default();
        assert_eq!(fresh.with(&LATE, make, |v| *v), 2);
        assert_eq!(fresh.with(&LATE, make, |v| *v), 2);
    }
}
