//! The sets that `for_each_member_of` cascades walk, read with `SSCAN`.

use std::collections::HashMap;

use super::retry::retrying;
use super::{Redis, RedisError, reply};

impl Redis {
    /// Members of the given sets (`for_each_member_of`), read with `SSCAN` in pipelined rounds. A
    /// set is read no further once it holds more than `limit` members (the planner refuses it as
    /// `fanout_exceeded`), so a huge set costs a few rounds, not its whole size in memory. A key
    /// that is not a set gives an error string for that set only. Members are bytes.
    pub async fn members(
        &self,
        sets: &[String],
        limit: usize,
    ) -> Result<HashMap<String, Result<Vec<Vec<u8>>, String>>, RedisError> {
        let inner = &self.inner;
        retrying(inner.retry_for, "SSCAN", || async move {
            let lease = self.lease().await?;
            let mut out: HashMap<String, Result<Vec<Vec<u8>>, String>> = HashMap::new();
            let mut active: Vec<(&String, u64)> = sets.iter().map(|s| (s, 0)).collect();
            // One pipelined round of SSCANs over every set still being read.
            while !active.is_empty() {
                let mut b = inner.reads();
                for (s, cursor) in &active {
                    b.cmd("SSCAN", s.as_str())
                        .arg(s.as_str())
                        .arg(*cursor)
                        .arg("COUNT")
                        .arg(inner.settings.scan_count);
                }
                let replies = lease.run(b).await?;
                let mut next = Vec::new();
                for ((s, _), r) in active.into_iter().zip(replies) {
                    let (cursor, found) = match r {
                        Err(e) => {
                            out.insert(s.clone(), Err(format!("SSCAN {s}: {e}")));
                            continue;
                        }
                        Ok(other) => reply::parse_scan(other)?,
                    };
                    let Ok(members) = out.entry(s.clone()).or_insert_with(|| Ok(Vec::new())) else {
                        continue;
                    };
                    members.extend(found);
                    // Past the limit the planner refuses the set: reading on would only hold
                    // memory. (SSCAN may repeat a member; the count errs on the high side.)
                    if cursor != 0 && members.len() <= limit {
                        next.push((s, cursor));
                    }
                }
                active = next;
            }
            for members in out.values_mut().flatten() {
                members.sort_unstable();
                members.dedup();
            }
            Ok(out)
        })
        .await
    }
}
