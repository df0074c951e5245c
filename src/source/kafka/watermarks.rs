//! The per-partition watermark of done offsets: an offset is stored (and later committed) only
//! when every message before it on its partition is done.

use std::collections::{BTreeMap, HashMap};

/// Per-partition watermark of done offsets: stores only the contiguous prefix.
#[derive(Debug, Default)]
pub struct Watermarks {
    parts: HashMap<(String, i32), BTreeMap<i64, bool>>,
}

impl Watermarks {
    /// A message was taken in.
    pub fn begin(&mut self, topic: &str, partition: i32, offset: i64) {
        self.parts
            .entry((topic.to_owned(), partition))
            .or_default()
            .insert(offset, false);
    }

    /// A message is done. Returns the offset to store (the next one to read) when the partition's
    /// contiguous done prefix grew.
    pub fn finish(&mut self, topic: &str, partition: i32, offset: i64) -> Option<i64> {
        let track = self.parts.get_mut(&(topic.to_owned(), partition))?;
        if let Some(done) = track.get_mut(&offset) {
            *done = true;
        }
        let mut next = None;
        while let Some(entry) = track.first_entry() {
            if !*entry.get() {
                break;
            }
            next = Some(*entry.key() + 1);
            entry.remove();
        }
        next
    }

    /// The partition was revoked or assigned anew: it restarts from its committed offset.
    pub fn forget(&mut self, topic: &str, partition: i32) {
        self.parts.remove(&(topic.to_owned(), partition));
    }

    /// Messages taken in and not done.
    pub fn pending(&self) -> usize {
        self.parts
            .values()
            .map(|t| t.values().filter(|d| !**d).count())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_moves_only_over_a_contiguous_done_prefix() {
        let mut w = Watermarks::default();
        for o in 10..15 {
            w.begin("t", 0, o);
        }
        assert_eq!(w.finish("t", 0, 12), None, "10 and 11 are not done");
        assert_eq!(w.finish("t", 0, 11), None);
        assert_eq!(w.finish("t", 0, 10), Some(13), "10..=12 done: next is 13");
        assert_eq!(w.pending(), 2);
        assert_eq!(w.finish("t", 0, 14), None);
        assert_eq!(w.finish("t", 0, 13), Some(15));
        assert_eq!(w.pending(), 0);
    }

    #[test]
    fn partitions_are_independent_and_forgetting_drops_late_completions() {
        let mut w = Watermarks::default();
        w.begin("t", 0, 5);
        w.begin("t", 1, 7);
        assert_eq!(w.finish("t", 1, 7), Some(8));
        w.forget("t", 0);
        assert_eq!(w.finish("t", 0, 5), None, "revoked: nothing to store");
        assert_eq!(w.pending(), 0);
    }
}
