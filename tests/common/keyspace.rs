//! The test Redis and one test's key space in it, shared by the tests of both crates (the Lambda
//! crate's `lambda/tests/common/mod.rs` includes this file).
//!
//! Every test gets its own random key prefix (`t{random}:`) in DB 9 of `redis://127.0.0.1:6379/9`
//! (overridden by `INVALIDATOR_TEST_REDIS_URL`), so tests never collide when run in parallel, and
//! its keys are removed when it ends. Keys are written `P:price:1`: `P:` stands for the prefix.

pub const DEFAULT_URL: &str = "redis://127.0.0.1:6379/9";

pub fn redis_url() -> String {
    std::env::var("INVALIDATOR_TEST_REDIS_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// A random prefix such as `t5f3a9c1e2b7d4a60:`.
pub fn prefix() -> String {
    format!("t{:016x}:", rand::random::<u64>())
}

pub fn conn() -> redis::Connection {
    redis::Client::open(redis_url())
        .expect("redis url")
        .get_connection()
        .expect("Redis must run on the test URL (see tests/common/keyspace.rs)")
}

/// One test's key prefix; its keys are unlinked when it is dropped.
pub struct Keyspace {
    pub p: String,
}

impl Keyspace {
    pub fn new() -> Keyspace {
        Keyspace { p: prefix() }
    }

    /// Replaces `P:` with the prefix (so rules and keys can be written as `P:price:1`).
    pub fn k(&self, text: &str) -> String {
        text.replace("P:", &self.p)
    }

    /// Sets every key (with `P:` replaced) to "v".
    pub fn set<K: AsRef<str>>(&self, c: &mut redis::Connection, keys: &[K]) {
        for k in keys {
            let _: () = redis::cmd("SET")
                .arg(self.k(k.as_ref()))
                .arg("v")
                .query(c)
                .unwrap();
        }
    }

    pub fn exists(&self, c: &mut redis::Connection, key: &str) -> bool {
        redis::cmd("EXISTS")
            .arg(self.k(key))
            .query::<i64>(c)
            .unwrap()
            == 1
    }

    /// Keys under the prefix matching `P:`-pattern (sorted).
    pub fn keys(&self, c: &mut redis::Connection, pattern: &str) -> Vec<String> {
        let mut keys: Vec<String> = redis::cmd("KEYS").arg(self.k(pattern)).query(c).unwrap();
        keys.sort();
        keys
    }

    pub fn pttl(&self, c: &mut redis::Connection, key: &str) -> i64 {
        redis::cmd("PTTL").arg(self.k(key)).query(c).unwrap()
    }
}

impl Default for Keyspace {
    fn default() -> Keyspace {
        Keyspace::new()
    }
}

impl Drop for Keyspace {
    fn drop(&mut self) {
        // Best effort clean-up of the test's keys.
        if let Ok(client) = redis::Client::open(redis_url())
            && let Ok(mut c) = client.get_connection()
        {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}*", self.p))
                .query(&mut c)
                .unwrap_or_default();
            for chunk in keys.chunks(500) {
                let _: redis::RedisResult<i64> = redis::cmd("UNLINK").arg(chunk).query(&mut c);
            }
        }
    }
}
