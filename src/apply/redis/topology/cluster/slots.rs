//! The slot map as `CLUSTER SLOTS` tells it: the reply parsed into ranges, and the ranges into an
//! owner for each slot and the primaries to connect to.
//!
//! Pure: asking a node and connecting to the primaries are the business of [`super`].

use redis::{ConnectionInfo, Value};

use super::{NONE, SLOTS};
use crate::apply::redis::reply::{Failure, text, unexpected};
use crate::apply::redis::topology::addr_of;

/// One range of `CLUSTER SLOTS`.
pub(super) struct Range {
    start: usize,
    end: usize,
    host: String,
    port: u16,
    id: String,
}

/// `CLUSTER SLOTS`: `[[start, end, [host, port, id, ...], replicas...], ...]`. An empty host
/// (a node that does not know its own address) is the host that was asked.
pub(super) fn parse_slots(v: Value, asked: &ConnectionInfo) -> Result<Vec<Range>, Failure> {
    let bad = || unexpected("CLUSTER SLOTS", &Value::Nil);
    let Value::Array(items) = v else {
        return Err(unexpected("CLUSTER SLOTS", &v));
    };
    let asked_host = addr_of(asked)
        .rsplit_once(':')
        .map(|(h, _)| h.to_owned())
        .unwrap_or_default();
    let mut ranges = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(parts) = item else {
            return Err(bad());
        };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(primary))) =
            (parts.first(), parts.get(1), parts.get(2))
        else {
            return Err(bad());
        };
        let (Ok(start), Ok(end)) = (usize::try_from(*start), usize::try_from(*end)) else {
            return Err(bad());
        };
        if start > end || end >= SLOTS {
            return Err(bad());
        }
        let host = primary.first().and_then(text).unwrap_or_default();
        let host = if host.is_empty() || host == "?" {
            asked_host.clone()
        } else {
            host
        };
        let Some(Value::Int(port)) = primary.get(1) else {
            return Err(bad());
        };
        let Ok(port) = u16::try_from(*port) else {
            return Err(bad());
        };
        let id = primary.get(2).and_then(text).unwrap_or_default();
        ranges.push(Range {
            start,
            end,
            host,
            port,
            id,
        });
    }
    Ok(ranges)
}

/// A primary named by the ranges: host, port, node id, and one slot it owns.
pub(super) type Primary = (String, u16, String, u16);

/// Each slot's owner (an index in the primaries, or [`NONE`]), and the primaries in the order
/// first seen.
pub(super) fn owners(ranges: &[Range]) -> (Vec<u16>, Vec<Primary>) {
    let mut primaries: Vec<Primary> = Vec::new();
    let mut owners = vec![NONE; SLOTS];
    for r in ranges {
        let at = match primaries
            .iter()
            .position(|(h, p, _, _)| *h == r.host && *p == r.port)
        {
            Some(i) => i,
            None => {
                primaries.push((r.host.clone(), r.port, r.id.clone(), r.start as u16));
                primaries.len() - 1
            }
        };
        owners[r.start..=r.end].fill(at as u16);
    }
    (owners, primaries)
}

#[cfg(test)]
mod tests {
    use redis::IntoConnectionInfo;

    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn slots_reply() {
        let asked = "redis://10.0.0.9:7000".into_connection_info().unwrap();
        let v = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                Value::Array(vec![bulk("10.0.0.1"), Value::Int(7001), bulk("aaa")]),
                Value::Array(vec![bulk("10.0.0.4"), Value::Int(7004), bulk("ddd")]),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(16383),
                Value::Array(vec![bulk(""), Value::Int(7002), bulk("bbb")]),
            ]),
        ]);
        let r = parse_slots(v, &asked).unwrap();
        assert_eq!(r.len(), 2);
        // `cluster-preferred-endpoint-type unknown-endpoint` answers NULL, a node without a
        // hostname `?`: both mean the host that was asked, never a skipped primary.
        for unknown in [Value::Nil, bulk("?")] {
            let v = Value::Array(vec![Value::Array(vec![
                Value::Int(0),
                Value::Int(16383),
                Value::Array(vec![unknown, Value::Int(7003), bulk("ccc")]),
            ])]);
            let r = parse_slots(v, &asked).unwrap();
            assert_eq!((r[0].host.as_str(), r[0].port), ("10.0.0.9", 7003));
        }
        assert_eq!((r[0].start, r[0].end, r[0].port), (0, 5460, 7001));
        assert_eq!(r[0].host, "10.0.0.1");
        assert_eq!(r[1].host, "10.0.0.9");
        assert_eq!(r[1].id, "bbb");
        for odd in [
            Value::Nil,
            Value::Array(vec![Value::Int(1)]),
            Value::Array(vec![Value::Array(vec![
                Value::Int(5),
                Value::Int(99999),
                Value::Array(vec![bulk("h"), Value::Int(1)]),
            ])]),
            Value::Array(vec![Value::Array(vec![
                Value::Int(0),
                Value::Int(1),
                Value::Array(vec![bulk("h"), Value::Int(70000)]),
            ])]),
        ] {
            assert!(parse_slots(odd, &asked).is_err());
        }
    }
}
