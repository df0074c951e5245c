//! Replies, and which failures a retry can fix.
//!
//! A command's own error reply (`WRONGTYPE`, an ACL refusal of one command) stays a per-command
//! [`Reply`] for the caller to judge. A reply that says the server cannot serve right now
//! (`LOADING`, `BUSY`, `READONLY`, `OOM`, `MASTERDOWN`, `TRYAGAIN`, `CLUSTERDOWN`, `NOREPLICAS`)
//! is an outage: it fails the whole attempt as [`Failure::Transient`], and is never dead-lettered.

use redis::Value;

use super::RedisError;

/// One command's reply: a value, or that command's own permanent error.
pub type Reply = Result<Value, String>;

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// A retry can fix it: a lost connection, a timeout, a failover in progress, a `WAIT`
    /// shortfall, a server that is loading or out of memory.
    Transient(String),
    /// No retry fixes it (authentication refused, a reply of the wrong shape).
    Fatal(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Transient(e) | Failure::Fatal(e) => f.write_str(e),
        }
    }
}

impl From<redis::RedisError> for Failure {
    fn from(e: redis::RedisError) -> Failure {
        if is_transient(&e) {
            Failure::Transient(e.to_string())
        } else {
            Failure::Fatal(e.to_string())
        }
    }
}

impl From<Failure> for RedisError {
    fn from(f: Failure) -> RedisError {
        match f {
            Failure::Transient(e) | Failure::Fatal(e) => RedisError::Unavailable(e),
        }
    }
}

/// Error codes that mean "not now" rather than "not this command".
const OUTAGE_CODES: &[&str] = &[
    "LOADING",
    "BUSY",
    "READONLY",
    "OOM",
    "MASTERDOWN",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "NOREPLICAS",
];

/// True for errors a retry can fix.
pub fn is_transient(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_cluster_error()
        || e.code().is_some_and(|c| OUTAGE_CODES.contains(&c))
        || !matches!(e.retry_method(), redis::RetryMethod::NoRetry)
}

/// True when a server error reply is an outage (see [`OUTAGE_CODES`]).
pub fn is_outage_code(code: &str) -> bool {
    OUTAGE_CODES.contains(&code)
}

/// An unexpected reply, as a permanent failure of the attempt.
pub fn unexpected(what: &str, v: &Value) -> Failure {
    let mut text = format!("{v:?}");
    if text.len() > 200 {
        let mut end = 200;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    Failure::Fatal(format!("unexpected {what} reply: {text}"))
}

pub fn int(v: &Reply) -> Result<u64, Failure> {
    int_signed(v).map(|n| n.max(0) as u64)
}

pub fn int_signed(v: &Reply) -> Result<i64, Failure> {
    match v {
        Ok(Value::Int(n)) => Ok(*n),
        Err(e) => Err(Failure::Fatal(e.clone())),
        Ok(other) => Err(unexpected("integer", other)),
    }
}

pub fn sum_ints(values: &[Reply]) -> Result<u64, Failure> {
    values.iter().map(int).sum()
}

/// The members of an array or set reply, byte for byte (keys and members are bytes).
pub fn members(v: Value) -> Result<Vec<Vec<u8>>, Failure> {
    match v {
        Value::Array(items) | Value::Set(items) => items
            .into_iter()
            .map(|i| match i {
                Value::BulkString(b) => Ok(b),
                Value::SimpleString(s) => Ok(s.into_bytes()),
                other => Err(unexpected("member", &other)),
            })
            .collect(),
        Value::Nil => Ok(Vec::new()),
        other => Err(unexpected("array", &other)),
    }
}

/// `[cursor, [items...]]` of `SCAN`/`SSCAN`.
pub fn parse_scan(v: Value) -> Result<(u64, Vec<Vec<u8>>), Failure> {
    let Value::Array(mut parts) = v else {
        return Err(unexpected("SCAN", &v));
    };
    if parts.len() != 2 {
        return Err(unexpected("SCAN", &Value::Array(parts)));
    }
    let items = members(parts.pop().unwrap_or(Value::Nil))?;
    let cursor = match parts.pop() {
        Some(Value::BulkString(b)) => std::str::from_utf8(&b).ok().and_then(|s| s.parse().ok()),
        Some(Value::SimpleString(s)) => s.parse().ok(),
        Some(Value::Int(n)) => u64::try_from(n).ok(),
        _ => None,
    };
    match cursor {
        Some(c) => Ok((c, items)),
        None => Err(Failure::Fatal("SCAN reply without a cursor".into())),
    }
}

/// A bulk or simple string reply as text.
pub fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(code: &str) -> redis::RedisError {
        match redis::parse_redis_value(format!("-{code} details\r\n").as_bytes()) {
            Ok(Value::ServerError(e)) => e.into(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn outages_are_transient() {
        for code in OUTAGE_CODES {
            assert!(is_transient(&server_error(code)), "{code}");
        }
        assert!(!is_transient(&server_error("WRONGTYPE")));
        assert!(!is_transient(&server_error("NOPERM")));
    }

    #[test]
    fn odd_scan_replies_are_failures_not_panics() {
        assert!(parse_scan(Value::Nil).is_err());
        assert!(parse_scan(Value::Array(vec![])).is_err());
        assert!(parse_scan(Value::Array(vec![Value::Int(-1), Value::Array(vec![])])).is_err());
        assert!(
            parse_scan(Value::Array(vec![
                Value::BulkString(b"x".to_vec()),
                Value::Array(vec![])
            ]))
            .is_err()
        );
        assert_eq!(
            parse_scan(Value::Array(vec![
                Value::BulkString(b"17".to_vec()),
                Value::Array(vec![Value::BulkString(b"k\xff".to_vec())])
            ])),
            Ok((17, vec![b"k\xff".to_vec()]))
        );
    }
}
