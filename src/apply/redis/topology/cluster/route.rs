//! A batch on the primaries of a slot map: one pipeline per primary, primaries in parallel,
//! replies put back in order; `MOVED` and `ASK` followed (at most five redirects); a multi-key
//! `UNLINK` refused with `TRYAGAIN` (its slot migrating) sent again one key at a time.
//!
//! It reads the slot map and never changes it: a `MOVED` only marks the map stale, to be read
//! again by the next lease ([`super::Cluster`]).

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use redis::{Cmd, Value};

use super::{Cluster, MAX_REDIRECTS, SlotMap, split_addr};
use crate::apply::redis::batch::{Batch, barrier_key, pipeline};
use crate::apply::redis::reply::{Failure, Reply, unexpected};
use crate::apply::redis::topology::{Kind, Lease, NodeConn, reply, values, with_addr};

/// A redirect of one command: the node named, and whether it is an `ASK`.
fn redirect(v: &Value) -> Option<(String, u16, bool)> {
    let Value::ServerError(e) = v else {
        return None;
    };
    let ask = match e.code() {
        "MOVED" => false,
        "ASK" => true,
        _ => return None,
    };
    // "<slot> <host>:<port>"
    let mut parts = e.details()?.split_whitespace();
    let slot = parts
        .next()?
        .parse()
        .ok()
        .filter(|&s: &u16| usize::from(s) < super::SLOTS)?;
    let addr = parts.next()?;
    Some((addr.to_owned(), slot, ask))
}

/// Runs `batch` on the primaries of `map` (see the module docs).
pub(in crate::apply::redis::topology) async fn run(
    lease: &Lease,
    map: &SlotMap,
    index: usize,
    batch: Batch,
) -> Result<Vec<Reply>, Failure> {
    let slots = batch.slots.clone();
    let (mut replies, splits) = route(lease, map, index, batch.cmds, &slots, batch.writes).await?;
    if !splits.is_empty() {
        one_key_at_a_time(
            lease,
            map,
            index,
            splits,
            &slots,
            batch.writes,
            &mut replies,
        )
        .await?;
    }
    Ok(replies
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err("no reply".into())))
        .collect())
}

/// A multi-key UNLINK refused with TRYAGAIN: its slot is migrating and its keys are on both sides.
/// One UNLINK per key instead, each following its own redirect; their counts summed into the
/// reply of the UNLINK they came from.
async fn one_key_at_a_time(
    lease: &Lease,
    map: &SlotMap,
    index: usize,
    splits: Vec<(usize, Cmd)>,
    slots: &[u16],
    writes: bool,
    replies: &mut [Option<Reply>],
) -> Result<(), Failure> {
    let mut cmds = Vec::new();
    let mut sub_slots = Vec::new();
    let mut of = Vec::new();
    for (i, cmd) in splits {
        replies[i] = Some(Ok(Value::Int(0)));
        for key in cmd.args_iter().skip(1) {
            if let redis::Arg::Simple(k) = key {
                let mut c = redis::cmd("UNLINK");
                c.arg(k);
                cmds.push(c);
                sub_slots.push(slots[i]);
                of.push(i);
            }
        }
    }
    let (sub, again) = route(lease, map, index, cmds, &sub_slots, writes).await?;
    if !again.is_empty() {
        return Err(Failure::Transient(
            "TRYAGAIN: a slot is migrating; one key at a time was refused too".into(),
        ));
    }
    for (i, r) in of.into_iter().zip(sub) {
        let n = match r {
            Some(Ok(Value::Int(n))) => n,
            Some(Ok(other)) => return Err(unexpected("UNLINK", &other)),
            Some(Err(e)) => return Err(Failure::Fatal(e)),
            None => 0,
        };
        if let Some(Ok(Value::Int(total))) = &mut replies[i] {
            *total += n;
        }
    }
    Ok(())
}

/// A command sent to the wrong node: its place, where to, its slot, whether it is an `ASK`, and
/// the command.
type Redirect = (usize, String, u16, bool, Cmd);

/// What a round of `route` gathers: the replies in their places, the redirects still to follow,
/// and the multi-key `UNLINK`s refused with `TRYAGAIN`.
struct Routed {
    replies: Vec<Option<Reply>>,
    pending: Vec<Redirect>,
    splits: Vec<(usize, Cmd)>,
}

/// The replies of `cmds` (the hash slot of each in `slots`) in order, following redirects; and
/// the multi-key `UNLINK`s refused with `TRYAGAIN` (a slot migrating), left without a reply.
async fn route(
    lease: &Lease,
    map: &SlotMap,
    index: usize,
    cmds: Vec<Cmd>,
    slots: &[u16],
    writes: bool,
) -> Result<(Vec<Option<Reply>>, Vec<(usize, Cmd)>), Failure> {
    let Kind::Cluster {
        topo, redirects, ..
    } = &lease.kind
    else {
        unreachable!("a cluster batch runs on a cluster lease");
    };
    let mut routed = Routed {
        replies: vec![None; cmds.len()],
        pending: Vec::new(),
        splits: Vec::new(),
    };
    let groups = by_primary(topo, map, cmds, slots)?;
    send_to_primaries(lease, map, index, groups, writes, &mut routed).await?;
    for _ in 0..MAX_REDIRECTS {
        if routed.pending.is_empty() {
            break;
        }
        if routed.pending.iter().any(|(_, _, _, ask, _)| !ask) {
            topo.stale.store(true, Ordering::SeqCst);
        }
        follow_redirects(lease, topo, map, index, redirects, writes, &mut routed).await?;
    }
    if !routed.pending.is_empty() {
        return Err(Failure::Transient(format!(
            "commands still redirected after {MAX_REDIRECTS} redirects (slots migrating?)"
        )));
    }
    Ok((routed.replies, routed.splits))
}

/// The commands for one primary: their places in the batch, and the commands.
type Group = (Vec<usize>, Vec<Cmd>);

/// One [`Group`] per primary (by index in the map). A slot without a primary marks the map stale
/// and fails the attempt.
fn by_primary(
    topo: &Cluster,
    map: &SlotMap,
    cmds: Vec<Cmd>,
    slots: &[u16],
) -> Result<Vec<Group>, Failure> {
    let mut groups: Vec<Group> = (0..map.nodes.len()).map(|_| Default::default()).collect();
    for (i, (cmd, &s)) in cmds.into_iter().zip(slots).enumerate() {
        match groups.get_mut(usize::from(map.owners[usize::from(s)])) {
            Some((idxs, cmds)) => {
                idxs.push(i);
                cmds.push(cmd);
            }
            None => {
                topo.stale.store(true, Ordering::SeqCst);
                return Err(Failure::Transient(format!(
                    "slot {s} has no primary in the cluster's slot map"
                )));
            }
        }
    }
    Ok(groups)
}

/// One pipeline per primary that has commands, primaries in parallel.
async fn send_to_primaries(
    lease: &Lease,
    map: &SlotMap,
    index: usize,
    groups: Vec<Group>,
    writes: bool,
    routed: &mut Routed,
) -> Result<(), Failure> {
    let sends = groups
        .into_iter()
        .enumerate()
        .filter(|(_, (idxs, _))| !idxs.is_empty())
        .map(|(owner, (idxs, cmds))| {
            let node = map.nodes[owner].conn(index);
            async move {
                let pipe = pipeline(cmds.into_iter());
                let r = values(&node, &pipe).await;
                (node, idxs, pipe, r)
            }
        });
    for (node, idxs, pipe, r) in futures::future::join_all(sends).await {
        let vals = r?;
        if writes {
            lease.wrote(&node);
        }
        let sent = idxs.into_iter().zip(pipe.cmd_iter());
        routed.settle(&node, sent.zip(vals))?;
    }
    Ok(())
}

/// One round of redirects: the pending commands, one pipeline per node named (`ASKING` before each
/// `ASK`ed command), nodes one after the other; their redirects pending for the next round.
async fn follow_redirects(
    lease: &Lease,
    topo: &Cluster,
    map: &SlotMap,
    index: usize,
    redirects: &tokio::sync::Mutex<HashMap<String, NodeConn>>,
    writes: bool,
    routed: &mut Routed,
) -> Result<(), Failure> {
    let mut by_node: HashMap<String, Vec<(usize, u16, bool, Cmd)>> = HashMap::new();
    for (i, addr, slot, ask, cmd) in routed.pending.drain(..) {
        by_node.entry(addr).or_default().push((i, slot, ask, cmd));
    }
    for (addr, items) in by_node {
        let (_, slot, ask, _) = items[0];
        let node = redirected(topo, map, index, redirects, &addr, slot, ask).await?;
        let mut pipe = pipeline(std::iter::empty());
        for (_, _, ask, cmd) in &items {
            if *ask {
                pipe.cmd("ASKING").ignore();
            }
            pipe.add_command(cmd.clone());
        }
        let vals = values(&node, &pipe).await?;
        if writes {
            lease.wrote(&node);
        }
        let sent = items.iter().map(|(i, _, _, cmd)| (*i, cmd));
        routed.settle(&node, sent.zip(vals))?;
    }
    Ok(())
}

impl Routed {
    /// Puts the replies of a pipeline sent to `node` in their places, redirects in `pending`, and
    /// multi-key `UNLINK`s refused with `TRYAGAIN` in `splits`.
    fn settle<'a>(
        &mut self,
        node: &NodeConn,
        sent: impl Iterator<Item = ((usize, &'a Cmd), Value)>,
    ) -> Result<(), Failure> {
        for ((i, cmd), v) in sent {
            if let Some((addr, slot, ask)) = redirect(&v) {
                self.pending.push((i, addr, slot, ask, cmd.clone()));
            } else if matches!(&v, Value::ServerError(e) if e.code() == "TRYAGAIN")
                && is_multi_key_unlink(cmd)
            {
                self.splits.push((i, cmd.clone()));
            } else {
                self.replies[i] = Some(reply(&node.addr, v)?);
            }
        }
        Ok(())
    }
}

fn is_multi_key_unlink(cmd: &Cmd) -> bool {
    let mut args = cmd.args_iter();
    matches!(args.next(), Some(redis::Arg::Simple(b"UNLINK"))) && args.count() > 1
}

/// A connection to the node a redirect named: the map's own when the node is a primary of the map,
/// otherwise one made once per lease (its `WAIT` barrier in the redirected `slot`).
async fn redirected(
    topo: &Cluster,
    map: &SlotMap,
    index: usize,
    redirects: &tokio::sync::Mutex<HashMap<String, NodeConn>>,
    addr: &str,
    slot: u16,
    ask: bool,
) -> Result<NodeConn, Failure> {
    if let Some(n) = map.nodes.iter().find(|n| &*n.addr == addr) {
        return Ok(n.conn(index));
    }
    let mut r = redirects.lock().await;
    if let Some(n) = r.get(addr) {
        return Ok(n.clone());
    }
    let Some((host, port)) = split_addr(addr) else {
        return Err(Failure::Fatal(format!(
            "redirect to `{addr}`: not host:port"
        )));
    };
    let info = with_addr(&topo.seeds[0], host, port);
    let node = NodeConn {
        addr: addr.into(),
        conn: topo.opts.one(&info).await?,
        barrier: barrier_key(Some(slot)).into(),
        asking: ask,
    };
    r.insert(addr.to_owned(), node.clone());
    Ok(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects() {
        let moved = redis::parse_redis_value(b"-MOVED 3999 127.0.0.1:6381\r\n").unwrap();
        assert_eq!(
            redirect(&moved),
            Some(("127.0.0.1:6381".into(), 3999, false))
        );
        let ask = redis::parse_redis_value(b"-ASK 3999 127.0.0.1:6382\r\n").unwrap();
        assert_eq!(redirect(&ask), Some(("127.0.0.1:6382".into(), 3999, true)));
        let other = redis::parse_redis_value(b"-WRONGTYPE no\r\n").unwrap();
        assert_eq!(redirect(&other), None);
        assert_eq!(redirect(&Value::Int(1)), None);
    }
}
