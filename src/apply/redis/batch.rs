//! The commands of one round trip, and where each must go.
//!
//! On a single Redis a [`Batch`] is one pipeline. On a Redis Cluster each command carries the
//! hash slot of its key, and the lease sends one pipeline per primary (see
//! [`super::topology::Lease::run`]); multi-key commands never cross a slot.

use redis::{Cmd, Pipeline};

/// Commands sent together; failed commands give error replies of their own.
pub struct Batch {
    pub(super) cmds: Vec<Cmd>,
    /// The hash slot of each command (Cluster only; empty otherwise).
    pub(super) slots: Vec<u16>,
    cluster: bool,
    /// Some command writes: the connections it runs on must be confirmed by `WAIT`.
    pub(super) writes: bool,
}

impl Batch {
    /// A batch of reads (`SSCAN`, `EXISTS`, `PTTL`).
    pub fn reads(cluster: bool) -> Batch {
        Batch::new(cluster, false)
    }

    /// A batch with writes (`UNLINK`, `PEXPIRE`, `INCR`, `SREM`, `SADD`, `SET`).
    pub fn writes(cluster: bool) -> Batch {
        Batch::new(cluster, true)
    }

    fn new(cluster: bool, writes: bool) -> Batch {
        Batch {
            cmds: Vec::new(),
            slots: Vec::new(),
            cluster,
            writes,
        }
    }

    /// Starts command `name` whose keys hash to the slot of `route`; add its arguments to the
    /// command returned.
    ///
    /// Room is made for a few short arguments beside the key: buffers grown one argument at a
    /// time (`realloc`) were 7% of a shipped-rules replay's instructions.
    pub fn cmd(&mut self, name: &str, route: impl AsRef<[u8]>) -> &mut Cmd {
        let route = route.as_ref();
        self.cmd_sized(name, route, 4, 2 * route.len() + 24)
    }

    /// [`Batch::cmd`] with room for `args` more arguments of `bytes` bytes in all.
    pub fn cmd_sized(&mut self, name: &str, route: &[u8], args: usize, bytes: usize) -> &mut Cmd {
        let slot = self.cluster.then(|| slot(route));
        self.push(slot, name, args, bytes)
    }

    fn push(&mut self, slot: Option<u16>, name: &str, args: usize, bytes: usize) -> &mut Cmd {
        self.slots.extend(slot);
        let mut cmd = Cmd::with_capacity(1 + args, name.len() + bytes);
        cmd.arg(name);
        self.cmds.push(cmd);
        self.cmds.last_mut().expect("just pushed")
    }

    /// `SREM set members...`, its buffers made to measure.
    pub fn srem(&mut self, set: &str, members: &[Vec<u8>]) {
        let bytes = set.len() + members.iter().map(Vec::len).sum::<usize>();
        self.cmd_sized("SREM", set.as_bytes(), 1 + members.len(), bytes)
            .arg(set)
            .arg(members);
    }

    /// One `UNLINK` of `keys` (all of `slot` on a Cluster), its buffers made to measure.
    fn push_unlink(&mut self, slot: Option<u16>, keys: &[&[u8]]) {
        let bytes = keys.iter().map(|k| k.len()).sum();
        self.push(slot, "UNLINK", keys.len(), bytes).arg(keys);
    }

    pub fn len(&self) -> usize {
        self.cmds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cmds.is_empty()
    }

    /// The commands as one pipeline whose failed commands give error replies of their own.
    pub fn into_pipeline(self) -> Pipeline {
        pipeline(self.cmds.into_iter())
    }

    /// Adds `UNLINK`s of `keys`, at most `per` keys each, never across slots; returns how many.
    pub fn unlinks<'a>(&mut self, keys: impl IntoIterator<Item = &'a [u8]>, per: usize) -> usize {
        let before = self.len();
        if self.cluster {
            let mut keyed: Vec<(u16, &[u8])> = keys.into_iter().map(|k| (slot(k), k)).collect();
            keyed.sort_unstable_by_key(|&(s, _)| s);
            let mut chunk: Vec<&[u8]> = Vec::with_capacity(per);
            for same in keyed.chunk_by(|a, b| a.0 == b.0) {
                for part in same.chunks(per) {
                    chunk.clear();
                    chunk.extend(part.iter().map(|&(_, k)| k));
                    self.push_unlink(Some(part[0].0), &chunk);
                }
            }
        } else {
            let mut chunk: Vec<&[u8]> = Vec::with_capacity(per);
            for k in keys {
                chunk.push(k);
                if chunk.len() == per {
                    self.push_unlink(None, &chunk);
                    chunk.clear();
                }
            }
            if !chunk.is_empty() {
                self.push_unlink(None, &chunk);
            }
        }
        self.len() - before
    }
}

/// The key written just before a `WAIT` (see [`super::topology::Lease::wait`]): on a single Redis
/// `invalidator:wait`; on a Cluster one in `slot`, `invalidator:wait:{tag}`.
pub fn barrier_key(slot: Option<u16>) -> String {
    match slot {
        None => "invalidator:wait".to_owned(),
        Some(s) => format!(
            "invalidator:wait:{{{}}}",
            slot_tags()[usize::from(s) % 16384]
        ),
    }
}

/// For every hash slot, a short tag (a decimal number) that hashes to it; made once, on first
/// use (about 160,000 hashes).
fn slot_tags() -> &'static [String] {
    static TAGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    TAGS.get_or_init(|| {
        let mut tags = vec![String::new(); 16384];
        let mut missing = tags.len();
        let mut i = 0u64;
        while missing > 0 {
            let tag = i.to_string();
            let t = &mut tags[usize::from(slot(tag.as_bytes()))];
            if t.is_empty() {
                *t = tag;
                missing -= 1;
            }
            i += 1;
        }
        tags
    })
}

/// `cmds` as one pipeline whose failed commands give error replies of their own.
pub fn pipeline(cmds: impl ExactSizeIterator<Item = Cmd>) -> Pipeline {
    let mut pipe = Pipeline::with_capacity(cmds.len());
    pipe.ignore_errors();
    for c in cmds {
        pipe.add_command(c);
    }
    pipe
}

/// The Redis Cluster hash slot of a key: CRC16/XMODEM (the `crc16` crate, as the redis crate
/// uses) of the key or of its `{hash tag}`, modulo 16384. The redis crate's own
/// `cluster_routing::Slot::for_key` gives no number to group commands by node; a test checks that
/// the two always agree.
pub fn slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16::State::<crc16::XMODEM>::calculate(hashed) % 16384
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::cluster_routing::Slot;

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"{}foo"), 9500);
    }

    #[test]
    fn slots_match_the_redis_crate() {
        let mut keys: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"{".to_vec(),
            b"}{".to_vec(),
            b"{}".to_vec(),
            b"a{b}c{d}".to_vec(),
            b"{{a}}".to_vec(),
            b"price:{42}:x".to_vec(),
            b"\xff\x00{\x01}".to_vec(),
        ];
        for i in 0..20_000u32 {
            let r = rand::random::<u64>().to_le_bytes();
            let mut k = format!("k{i}:").into_bytes();
            k.extend(r.iter().map(|b| b"{}ab:"[(*b % 5) as usize]));
            keys.push(k);
        }
        for k in &keys {
            assert_eq!(
                Slot::new(slot(k)),
                Some(Slot::for_key(k)),
                "{:?}",
                String::from_utf8_lossy(k)
            );
        }
    }

    #[test]
    fn barrier_keys_hash_to_their_slot() {
        for s in [0u16, 1, 5461, 10922, 16383] {
            assert_eq!(slot(barrier_key(Some(s)).as_bytes()), s);
        }
        assert_eq!(barrier_key(None), "invalidator:wait");
    }

    #[test]
    fn cluster_unlinks_never_cross_a_slot() {
        let keys: Vec<String> = (0..1000).map(|i| format!("k:{i}")).collect();
        let mut b = Batch::writes(true);
        let n = b.unlinks(keys.iter().map(String::as_bytes), 3);
        assert_eq!(n, b.len());
        assert_eq!(b.slots.len(), n);
        for (cmd, &s) in b.cmds.iter().zip(&b.slots) {
            for arg in cmd.args_iter().skip(1) {
                let redis::Arg::Simple(k) = arg else { panic!() };
                assert_eq!(slot(k), s);
            }
        }
        let mut single = Batch::writes(false);
        assert_eq!(single.unlinks(keys.iter().map(String::as_bytes), 300), 4);
        assert!(single.slots.is_empty());
    }
}
