//! The per-partition watermark of done offsets: an offset is stored (and later committed) only
//! when every message before it on its partition is done.

use std::collections::{HashMap, VecDeque};

/// Per-partition watermark of done offsets: stores only the contiguous prefix.
///
/// A partition's messages come in offset order, so each keeps a queue of (offset, done) sorted by
/// offset: taking one in appends, finishing one is a binary search, and the done prefix is popped
/// from the front. Topics are looked up by `&str`: nothing is allocated per message. Messages are
/// begun and finished by runs of one partition: one lookup a run, not one a message.
#[derive(Debug, Default)]
pub struct Watermarks {
    topics: HashMap<String, HashMap<i32, VecDeque<(i64, bool)>>>,
}

impl Watermarks {
    /// A run of messages of one partition was taken in, in this order.
    pub fn begin_all(&mut self, topic: &str, partition: i32, offsets: impl Iterator<Item = i64>) {
        let partitions = match self.topics.get_mut(topic) {
            Some(p) => p,
            None => self.topics.entry(topic.to_owned()).or_default(),
        };
        let track = partitions.entry(partition).or_default();
        for offset in offsets {
            match track.back() {
                Some(&(last, _)) if last >= offset => {
                    // Out of order (a seek back): keep the queue sorted, once per offset, and an
                    // offset taken in again is not done until its new copy is.
                    match track.binary_search_by_key(&offset, |&(o, _)| o) {
                        Ok(at) => track[at].1 = false,
                        Err(at) => track.insert(at, (offset, false)),
                    }
                }
                _ => track.push_back((offset, false)),
            }
        }
    }

    /// A unit's messages of one partition are done. Returns the offset to store (the next one to
    /// read) when the partition's contiguous done prefix grew. One lookup of the partition for
    /// the unit, not one per message.
    pub fn finish_all(&mut self, topic: &str, partition: i32, offsets: &[i64]) -> Option<i64> {
        let track = self.topics.get_mut(topic)?.get_mut(&partition)?;
        // A unit's offsets of a partition were taken in one after the other, so each is usually
        // the entry after the one before it; only when it is not is the queue searched.
        let mut last: Option<usize> = None;
        for &offset in offsets {
            let next = last
                .map(|i| i + 1)
                .filter(|&i| track.get(i).is_some_and(|&(o, _)| o == offset));
            let Some(at) = next.or_else(|| track.binary_search_by_key(&offset, |&(o, _)| o).ok())
            else {
                continue;
            };
            track[at].1 = true;
            last = Some(at);
        }
        let mut next = None;
        while let Some(&(o, true)) = track.front() {
            next = Some(o + 1);
            track.pop_front();
        }
        next
    }

    /// The partition was revoked or assigned anew: it restarts from its committed offset.
    pub fn forget(&mut self, topic: &str, partition: i32) {
        if let Some(partitions) = self.topics.get_mut(topic) {
            partitions.remove(&partition);
        }
    }

    /// Messages taken in and not done.
    pub fn pending(&self) -> usize {
        self.topics
            .values()
            .flat_map(HashMap::values)
            .map(|t| t.iter().filter(|(_, d)| !d).count())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Watermarks {
        /// One message taken in.
        fn begin(&mut self, topic: &str, partition: i32, offset: i64) {
            self.begin_all(topic, partition, std::iter::once(offset));
        }

        /// One message done.
        fn finish(&mut self, topic: &str, partition: i32, offset: i64) -> Option<i64> {
            self.finish_all(topic, partition, &[offset])
        }
    }

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
    fn a_units_offsets_finish_at_once_as_one_by_one() {
        let mut w = Watermarks::default();
        for o in 10..16 {
            w.begin("t", 0, o);
        }
        assert_eq!(w.finish_all("t", 0, &[11, 12, 14]), None, "10 is not done");
        assert_eq!(w.finish_all("t", 0, &[10, 15]), Some(13), "14 waits for 13");
        assert_eq!(w.finish_all("t", 0, &[13]), Some(16));
        assert_eq!(w.finish_all("t", 0, &[]), None);
        assert_eq!(w.finish_all("t", 1, &[1]), None, "an unknown partition");
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

    /// Runs of offsets taken in at once, and units of offsets in any order (ascending runs, runs
    /// with gaps, reversed, unknown offsets) finished at once, do what the same offsets one by one
    /// would: the walk from the entry before finds what the search finds.
    #[test]
    fn runs_at_once_match_their_offsets_one_by_one() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(16);
        let mut next = move |n: u64| rng.random_range(0..n);
        for _ in 0..500 {
            let (mut units, mut one_by_one) = (Watermarks::default(), Watermarks::default());
            let mut taken: Vec<i64> = Vec::new();
            for _ in 0..next(40) {
                let o = match next(5) {
                    0 => next(60) as i64,
                    _ => taken.last().map_or(0, |l| l + 1 + next(2) as i64),
                };
                one_by_one.begin("t", 0, o);
                taken.push(o);
            }
            let mut begun = 0;
            while begun < taken.len() {
                let n = (1 + next(8) as usize).min(taken.len() - begun);
                units.begin_all("t", 0, taken[begun..begun + n].iter().copied());
                begun += n;
            }
            assert_eq!(units.pending(), one_by_one.pending(), "{taken:?}");
            while !taken.is_empty() {
                let n = (1 + next(6) as usize).min(taken.len());
                let mut unit: Vec<i64> = taken.drain(..n).collect();
                match next(4) {
                    0 => unit.reverse(),
                    1 => unit.push(1000 + next(5) as i64),
                    _ => {}
                }
                let at_once = units.finish_all("t", 0, &unit);
                let mut by_one = None;
                for &o in &unit {
                    by_one = one_by_one.finish("t", 0, o).or(by_one);
                }
                assert_eq!(at_once, by_one, "{unit:?}");
                assert_eq!(units.pending(), one_by_one.pending(), "{unit:?}");
            }
        }
    }

    #[test]
    fn an_offset_taken_in_out_of_order_keeps_its_place() {
        let mut w = Watermarks::default();
        for o in [3, 5, 4] {
            w.begin("t", 0, o);
        }
        assert_eq!(w.finish("t", 0, 5), None);
        w.begin("t", 0, 5);
        assert_eq!(w.pending(), 3, "5 once, not done again");
        assert_eq!(w.finish("t", 0, 4), None);
        assert_eq!(w.finish("t", 0, 3), Some(5));
        assert_eq!(w.finish("t", 0, 5), Some(6));
        assert_eq!(w.finish("t", 9, 5), None, "an unknown partition");
        assert_eq!(w.finish("u", 0, 5), None, "an unknown topic");
    }
}
