//! The event ids of the units in flight, so that two copies of one event applied at the same time
//! (before either remembered its id in Redis) are applied once, and a copy is dropped only when an
//! earlier one succeeded: a unit that meets an id held by another waits for that unit to end,
//! then asks Redis whether it was remembered.
//!
//! A waiting unit holds none of its ids (it takes all of them at once, or none), so units never
//! wait on each other in a circle.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

#[derive(Default)]
pub(super) struct InFlightIds {
    /// Id → a receiver that closes when the unit holding it ends.
    held: Mutex<HashMap<Arc<str>, watch::Receiver<()>>>,
}

/// Ids a unit holds; released when it ends, however it ends.
pub(super) struct Held<'a> {
    ids: Vec<Arc<str>>,
    set: &'a InFlightIds,
    /// Dropped with the unit: every unit waiting for one of its ids wakes up.
    _ended: watch::Sender<()>,
}

impl InFlightIds {
    /// Takes `ids` once no unit in flight holds any of them.
    pub async fn take(&self, ids: Vec<Arc<str>>) -> Held<'_> {
        loop {
            let busy: Vec<watch::Receiver<()>> = {
                let mut held = self.held.lock().expect("in-flight ids lock");
                let busy: Vec<_> = ids.iter().filter_map(|id| held.get(id).cloned()).collect();
                if busy.is_empty() {
                    let (ended, rx) = watch::channel(());
                    for id in &ids {
                        held.insert(id.clone(), rx.clone());
                    }
                    return Held {
                        ids,
                        set: self,
                        _ended: ended,
                    };
                }
                busy
            };
            for mut rx in busy {
                // Closed when the holder ends; nothing is ever sent.
                let _ = rx.changed().await;
            }
        }
    }

    /// Takes the ids among `ids` that no unit holds, at once (dry runs, which write nothing to
    /// wait for); returns which were busy.
    pub fn take_free(&self, ids: Vec<Arc<str>>) -> (Held<'_>, Vec<bool>) {
        let mut held = self.held.lock().expect("in-flight ids lock");
        let busy: Vec<bool> = ids.iter().map(|id| held.contains_key(id)).collect();
        let (ended, rx) = watch::channel(());
        let free: Vec<Arc<str>> = ids
            .into_iter()
            .zip(&busy)
            .filter(|(_, b)| !**b)
            .map(|(id, _)| id)
            .collect();
        for id in &free {
            held.insert(id.clone(), rx.clone());
        }
        let unit = Held {
            ids: free,
            set: self,
            _ended: ended,
        };
        (unit, busy)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut held = self.set.held.lock().expect("in-flight ids lock");
        for id in &self.ids {
            held.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_second_copy_waits_for_the_first_to_end() {
        let ids = InFlightIds::default();
        let first = ids.take(vec!["e-1".into(), "e-2".into()]).await;
        let second = ids.take(vec!["e-2".into(), "e-3".into()]);
        tokio::pin!(second);
        let waited = tokio::time::timeout(Duration::from_millis(50), &mut second).await;
        assert!(waited.is_err(), "e-2 is held by the first unit");
        assert!(
            ids.held.lock().unwrap().get("e-3").is_none(),
            "a waiting unit holds nothing"
        );
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(1), second)
            .await
            .unwrap();
        assert_eq!(second.ids, vec![Arc::from("e-2"), Arc::from("e-3")]);
    }

    #[test]
    fn a_dry_run_takes_what_is_free_and_says_what_is_busy() {
        let ids = InFlightIds::default();
        let (_first, busy) = ids.take_free(vec!["a".into()]);
        assert_eq!(busy, vec![false]);
        let (_second, busy) = ids.take_free(vec!["a".into(), "b".into()]);
        assert_eq!(busy, vec![true, false]);
    }
}
