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
use std::sync::atomic::{AtomicUsize, Ordering};

/// How many keys a process may declare. A key beyond them still works:
/// its value is made afresh on every read instead of kept.
pub const SLOTS: usize = 4;

/// Keys declared so far in this process.
static DECLARED: AtomicUsize = AtomicUsize::new(0);

/// Names one kind of value kept with principals; declare it as a `static`:
///
/// ```
/// use std::time::SystemTime;
/// use tokengate_core::SlotKey;
///
/// /// When a principal was first seen by this layer.
/// static FIRST_SEEN: SlotKey<SystemTime> = SlotKey::new();
/// ```
pub struct SlotKey<T> {
    /// The slot's index plus one; 0 until first used.
    index: AtomicUsize,
    _value: PhantomData<fn() -> T>,
}

impl<T> SlotKey<T> {
    /// A key; its slot is assigned on first use.
    pub const fn new() -> Self {
        Self {
            index: AtomicUsize::new(0),
            _value: PhantomData,
        }
    }

    /// The key's slot, or `None` when every slot was taken by other keys.
    fn index(&self) -> Option<usize> {
        let assigned = self.index.load(Ordering::Relaxed);
        if assigned != 0 {
            return (assigned <= SLOTS).then_some(assigned - 1);
        }
        let fresh = DECLARED.fetch_add(1, Ordering::Relaxed) + 1;
        let index =
            match self
                .index
                .compare_exchange(0, fresh, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    if fresh > SLOTS {
                        // Once per key: said, never a silent slowdown.
                        tracing::warn!(
                            slots = SLOTS,
                            keys = fresh,
                            "a value kept per token has no slot left: it is computed on every \
                             request (raise tokengate_core::SLOTS)"
                        );
                    }
                    fresh
                }
                Err(raced) => raced,
            };
        (index <= SLOTS).then_some(index - 1)
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
            .finish()
    }
}

type Value = Box<dyn Any + Send + Sync>;

/// The kept values of one principal or grant: allocated on the first
/// value kept, one pointer until then.
#[derive(Default)]
pub(crate) struct Slots(OnceLock<Box<[OnceLock<Value>; SLOTS]>>);

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
        let Some(index) = key.index() else {
            return f(&init());
        };
        let slots = self.0.get_or_init(Box::default);
        let value = slots[index].get_or_init(|| Box::new(init()));
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
    fn a_key_beyond_the_slots_still_answers_without_keeping() {
        let beyond: SlotKey<u32> = SlotKey {
            index: AtomicUsize::new(SLOTS + 1),
            _value: PhantomData,
        };
        let slots = Slots::default();
        let made = AtomicU32::new(0);
        let make = || made.fetch_add(1, Ordering::Relaxed);
        assert_eq!(slots.with(&beyond, make, |v| *v), 0);
        assert_eq!(slots.with(&beyond, make, |v| *v), 1);
    }
}
