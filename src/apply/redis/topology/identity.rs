//! Who a server is: its run id (a new process) and replication id (a new history: a promoted
//! replica takes a new one), and whether it is a primary.

use redis::Value;
use redis::aio::MultiplexedConnection;

use crate::apply::redis::reply::{Failure, text};

/// What tells one primary from another. A failover, a restart (a new, possibly empty dataset) and
/// an endpoint pointed at another server all change it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub run_id: String,
    pub replid: String,
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "run_id {} replid {}",
            short(&self.run_id),
            short(&self.replid)
        )
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// Asks the server at `addr` who it is (`INFO server`, `INFO replication`: one section each, as
/// Redis before 7 takes). A replica is refused with a transient failure (the caller waits for a
/// primary). `Ok(None)` when INFO is refused (some proxies): the identity is unknown, and every
/// reconnect then counts as a possible failover.
pub async fn identify(
    conn: &mut MultiplexedConnection,
    addr: &str,
) -> Result<Option<Identity>, Failure> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    pipe.cmd("INFO")
        .arg("server")
        .cmd("INFO")
        .arg("replication");
    let replies: Vec<Value> = pipe.query_async(conn).await?;
    let sections: Vec<Option<String>> = replies.iter().map(text).collect();
    let (Some(Some(server)), Some(Some(replication))) = (sections.first(), sections.get(1)) else {
        if let Some(Value::ServerError(e)) = replies.first() {
            tracing::debug!(addr, error = %e, "INFO refused: primary identity unknown");
        }
        return Ok(None);
    };
    if field(replication, "role") == Some("slave") {
        return Err(Failure::Transient(format!(
            "{addr} is a replica, not the primary (a failover in progress?)"
        )));
    }
    match (field(server, "run_id"), field(replication, "master_replid")) {
        (Some(run_id), Some(replid)) => Ok(Some(Identity {
            run_id: run_id.to_owned(),
            replid: replid.to_owned(),
        })),
        _ => Ok(None),
    }
}

/// The value of `name:value` in an INFO section.
fn field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == name).then(|| v.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields() {
        let info = "# Replication\r\nrole:master\r\nconnected_slaves:0\r\nmaster_replid:abc\r\n";
        assert_eq!(field(info, "role"), Some("master"));
        assert_eq!(field(info, "master_replid"), Some("abc"));
        assert_eq!(field(info, "master_replid2"), None);
        assert_eq!(field("", "role"), None);
    }
}
