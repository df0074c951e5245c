//! The tests' one door into the Redis layer of the library (`invalidator::apply::redis`): connecting
//! it, the plans the tests apply through it (deletes, patterns, tags, expires) and the checks of the
//! tag index under concurrent cache writers. The tests of the layer itself (Redis Cluster routing
//! and resharding, the tag index) go through here, so that a change of its API is adapted in one
//! place.

use std::time::Duration;

use redis::ConnectionLike;

#[allow(unused_imports)] // not every test binary uses every name
pub use invalidator::apply::redis::{ApplyReport, Redis, slot};
pub use invalidator::config::{RedisConfig, TagLayout};
use invalidator::plan::Expire;
pub use invalidator::plan::Plan;

/// Connects the layer to `config`, retrying for `retry_for`.
pub async fn connect(config: &RedisConfig, retry_for: Duration) -> Result<Redis, String> {
    Redis::connect(config, Some(retry_for))
        .await
        .map_err(|e| e.to_string())
}

/// Connects the layer to the one Redis at `url` (retrying for 5 s); panics if it cannot.
pub async fn single(url: String) -> Redis {
    connect(&RedisConfig::single(url), Duration::from_secs(5))
        .await
        .expect("connect the Redis layer")
}

/// A plan deleting `keys`.
pub fn delete<K: ToString>(keys: impl IntoIterator<Item = K>) -> Plan {
    let mut plan = Plan::default();
    for k in keys {
        plan.deletes.insert(k.to_string().into_bytes());
    }
    plan
}

/// A plan deleting the keys that match `patterns`.
pub fn delete_matching<K: ToString>(patterns: impl IntoIterator<Item = K>) -> Plan {
    let mut plan = Plan::default();
    plan.patterns
        .extend(patterns.into_iter().map(|k| k.to_string()));
    plan
}

/// A plan invalidating `tags`, the n-th requested by the n-th event of its unit.
pub fn tags<K: ToString>(tags: impl IntoIterator<Item = K>) -> Plan {
    let mut plan = Plan::default();
    for (n, t) in (0..).zip(tags) {
        plan.tags.insert(t.to_string(), vec![n]);
    }
    plan
}

/// A plan shortening the TTL of `keys` to `ttl` (no jitter).
pub fn expire<K: ToString>(keys: impl IntoIterator<Item = K>, ttl: Duration) -> Plan {
    let mut plan = Plan::default();
    let e = Expire { ttl, jitter: 0.0 };
    for k in keys {
        plan.expires.insert(k.to_string(), e);
    }
    plan
}

/// Applies `plan` with its tags kept in `layout`; panics on an error of the unit.
pub async fn apply(redis: &Redis, plan: &Plan, layout: &TagLayout) -> ApplyReport {
    redis
        .apply(plan, layout)
        .await
        .unwrap_or_else(|e| panic!("apply {plan:?}: {e}"))
}

/// Set-mode invalidations of every one of `tags`, `rounds` times over, each without a failed tag;
/// the keys they removed.
pub async fn invalidate_over_and_over(
    redis: &Redis,
    tags: &[String],
    tag_prefix: &str,
    rounds: usize,
) -> u64 {
    let plan = self::tags(tags);
    let mut removed = 0;
    for _ in 0..rounds {
        let report = apply(redis, &plan, &TagLayout::set(tag_prefix)).await;
        assert!(report.tag_failures.is_empty(), "{report:?}");
        removed += report.keys_removed;
    }
    removed
}

/// Asserts that the cache writers (`fills`) and the invalidations (`removed`) ran side by side,
/// and that every key of `work` (tag set → its keys) that exists is a member of its tag's set.
pub fn assert_no_live_key_left_out_of_its_tag_set(
    c: &mut impl ConnectionLike,
    work: &[(String, Vec<String>)],
    removed: u64,
    fills: u64,
) {
    assert!(
        removed > 100 && fills > 100,
        "the writer and the invalidation must have run side by side: {removed} removed, {fills} fills"
    );
    let mut lost = Vec::new();
    for (set, keys) in work {
        for k in keys {
            let exists: bool = redis::cmd("EXISTS").arg(k).query(c).unwrap();
            let indexed: bool = redis::cmd("SISMEMBER").arg(set).arg(k).query(c).unwrap();
            if exists && !indexed {
                lost.push(k.clone());
            }
        }
    }
    assert!(
        lost.is_empty(),
        "{} live keys lost from their tag index, e.g. {:?} ({removed} removed, {fills} fills)",
        lost.len(),
        &lost[..lost.len().min(5)],
    );
}

/// Ten tags `t0`..`t9` of ten keys each (`{p}k:{tag}:{i}`): (tag names, tag set → keys).
pub fn hot_tags(p: &str, tag_prefix: &str) -> (Vec<String>, Vec<(String, Vec<String>)>) {
    let tags: Vec<String> = (0..10).map(|t| format!("t{t}")).collect();
    let work = tags
        .iter()
        .map(|t| {
            let keys = (0..10).map(|i| format!("{p}k:{t}:{i}")).collect();
            (format!("{tag_prefix}{t}"), keys)
        })
        .collect();
    (tags, work)
}

/// The plan of one event (`kind`, `data`, id `e1`) under the rules of `yaml`, as the engine makes
/// it (a cascade's sets are read as empty).
pub fn plan_of(yaml: &str, kind: &str, data: serde_json::Value) -> Plan {
    use invalidator::event::Event;
    use invalidator::rules::{CompileOptions, NoMembers, RuleSet};

    let rules = RuleSet::from_sources(
        &[("c.yaml".into(), yaml.to_owned())],
        &CompileOptions::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let event = Event {
        id: "e1".into(),
        id_given: true,
        kind: kind.into(),
        time: None,
        source: None,
        data: rules.data_fields().keep(data),
    };
    let ep = rules.plan_event(&event, &NoMembers).unwrap();
    let mut plan = Plan::default();
    ep.add_to(&mut plan, 0);
    plan
}

/// A `ttl_policies` entry: keys matching `pattern` live at most `max_ttl` (the sweep sets
/// `max_ttl` minus up to `jitter` of it).
pub fn ttl_policy(
    pattern: String,
    max_ttl: Duration,
    jitter: f64,
) -> invalidator::rules::TtlPolicy {
    invalidator::rules::TtlPolicy {
        pattern,
        max_ttl,
        jitter,
        at: "test".into(),
    }
}
