//! Event types and sources repeat: a catalog sends a handful of each, millions of times. The
//! decoder hands out the string it made for the same text last time on this thread instead of
//! allocating each event's own copy (and freeing it with the event): an event costs two reference
//! counts here, not two allocations and two frees.
//!
//! Bounded whatever producers send: [`SLOTS`] recent strings a thread for each of the two, each at
//! most the longest accepted type or source, replaced in turn when a new one comes (a producer that
//! sends every event with another type only makes every lookup miss).

use std::cell::RefCell;
use std::sync::Arc;

/// How many recent strings a thread keeps for each of types and sources.
const SLOTS: usize = 16;

/// The last [`SLOTS`] distinct strings seen, replaced in turn.
#[derive(Default)]
struct Recent {
    slots: [Option<Arc<str>>; SLOTS],
    next: usize,
}

impl Recent {
    fn get(&mut self, text: &str) -> Arc<str> {
        if let Some(seen) = self.slots.iter().flatten().find(|s| ***s == *text) {
            return seen.clone();
        }
        let new: Arc<str> = Arc::from(text);
        self.slots[self.next] = Some(new.clone());
        self.next = (self.next + 1) % SLOTS;
        new
    }
}

thread_local! {
    static TYPES: RefCell<Recent> = RefCell::default();
    static SOURCES: RefCell<Recent> = RefCell::default();
}

/// An event type as the shared string events of that type hold.
pub(super) fn event_type(text: &str) -> Arc<str> {
    TYPES.with_borrow_mut(|r| r.get(text))
}

/// A `source` as the shared string events from that source hold.
pub(super) fn source(text: &str) -> Arc<str> {
    SOURCES.with_borrow_mut(|r| r.get(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_text_is_the_same_string_and_the_cache_stays_bounded() {
        let a = event_type("price.updated");
        let b = event_type("price.updated");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&*a, "price.updated");
        // Types and sources are kept apart.
        assert!(!Arc::ptr_eq(&a, &source("price.updated")));
        // A flood of new types replaces the old ones in turn and keeps at most SLOTS of them.
        for n in 0..10 * SLOTS {
            assert_eq!(&*event_type(&format!("t{n}")), format!("t{n}"));
        }
        let kept = TYPES.with_borrow(|r| r.slots.iter().flatten().count());
        assert_eq!(kept, SLOTS);
        drop(b);
        assert_eq!(Arc::strong_count(&a), 1, "no longer held by the cache");
        let again = event_type("price.updated");
        assert!(!Arc::ptr_eq(&a, &again));
        assert_eq!(a, again);
    }
}
