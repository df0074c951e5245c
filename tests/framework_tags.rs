//! `[tags] layout = "symfony" | "symfony-versions" | "nextjs"` against the frameworks' own code
//! (`tests/frameworks/`): an application writes tagged entries through its framework, the catalog
//! event goes through `replay` (one through the worker), and the application's next reads through
//! the framework miss for the tags invalidated and hit for the others. The same entries written
//! under a second namespace and invalidated by the framework itself (`invalidateTags`,
//! `revalidateTag`) leave the same keyspace. On a single Redis and on the Cluster.
//!
//! A cache writer racing the invalidation never leaves an entry the framework would serve that was
//! written before the invalidation began, and never loses its place in the tag index (the control
//! shows that a naive invalidation does).

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::cluster::{self, ClusterWorld};
use common::framework::{App, Entry, Store};
use common::kafka::{Msg, Stream};
use common::layer::{self, TagLayout};
use common::{World, event, poll_until, redis_url};
use invalidator::config::Config;
use serde_json::json;

const RULES: &str = "rules:
  - name: product
    on: product.updated
    tags:
      - category-{category}
  - name: page
    on: page.updated
    tags:
      - _N_T_/products/{id}
";

const ENTRIES: [Entry; 3] = [
    ("product-1", &["product-1", "category-7"], "one"),
    ("product-2", &["product-2", "category-7"], "two"),
    ("product-3", &["product-3", "category-8"], "three"),
];
const KEYS: [&str; 3] = ["product-1", "product-2", "product-3"];

/// A namespace of this test's own (Symfony's may not hold `:`), `which` apart.
fn namespace(w: &World, which: &str) -> String {
    format!("{}{which}", w.p.trim_end_matches(':'))
}

fn category_event(w: &World, category: &str) -> std::path::PathBuf {
    let e = event("product.updated", "e-1", json!({ "category": category }));
    w.lines("events.jsonl", &[e])
}

/// Replays `input` with `[tags]` as `tags` on `store`; asserts it applied its events.
fn replay(w: &mut World, store: Store, tags: &str, input: &Path) {
    w.extra_config = tags.to_owned();
    let config = w.config_text_with_redis(&store.redis_config());
    let dlq = w.dlq_path();
    let args = [
        "replay",
        "--dlq",
        dlq.to_str().unwrap(),
        input.to_str().unwrap(),
    ];
    let r = w.bin_with(&config, &args, &[]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.count("dead-lettered"), 0, "{}", r.stdout);
}

/// Every key under `prefix` (on every primary of the Cluster), with its type and, for sets and
/// hashes, its members or fields; `prefix` replaced by `as_` so that two namespaces compare.
fn keyspace(store: Store, prefix: &str, as_: &str) -> BTreeSet<(String, String, Vec<String>)> {
    let swap = |b: &[u8]| b.escape_ascii().to_string().replace(prefix, as_);
    let mut out = BTreeSet::new();
    for url in store.nodes() {
        let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
        let keys: Vec<Vec<u8>> = redis::cmd("KEYS")
            .arg(format!("*{prefix}*"))
            .query(&mut c)
            .unwrap();
        for k in keys {
            let kind: String = redis::cmd("TYPE").arg(&k).query(&mut c).unwrap();
            let inner: Vec<Vec<u8>> = match kind.as_str() {
                "set" => redis::cmd("SMEMBERS").arg(&k).query(&mut c).unwrap(),
                "hash" => redis::cmd("HKEYS").arg(&k).query(&mut c).unwrap(),
                _ => Vec::new(),
            };
            let mut inner: Vec<String> = inner.iter().map(|m| swap(m)).collect();
            inner.sort();
            out.insert((swap(&k), kind, inner));
        }
    }
    out
}

/// Symfony: the event's tag invalidated as `invalidateTags` does it, then the application misses.
fn symfony(store: Store, layout: &str, client_prefix: bool) {
    let mut w = World::new();
    w.rules("rules.yaml", RULES);
    let (ours, theirs) = (namespace(&w, "o"), namespace(&w, "f"));
    let extra = |ns: &str| {
        let mut e = json!({});
        if layout == "symfony-versions" {
            e["tags_namespace"] = json!(format!("{ns}-tags"));
        }
        if client_prefix {
            e["client_prefix"] = json!(format!("{ns}-app:"));
        }
        e
    };
    let app = App::symfony(store, layout, &ours, extra(&ours));
    let reference = App::symfony(store, layout, &theirs, extra(&theirs));
    app.write(&ENTRIES);
    reference.write(&ENTRIES);
    assert_eq!(app.hits(&KEYS), KEYS, "written entries hit");

    let mut tags = format!("[tags]\nlayout = \"{layout}\"\n");
    tags += &match layout {
        "symfony-versions" => format!("namespace = \"{ours}-tags\"\n"),
        _ => format!("namespace = \"{ours}\"\n"),
    };
    if client_prefix {
        tags += &format!("client_prefix = \"{ours}-app:\"\n");
    }
    let input = category_event(&w, "7");
    replay(&mut w, store, &tags, &input);
    reference.invalidate(&["category-7"]);

    assert_eq!(
        keyspace(store, &ours, &theirs),
        keyspace(store, &theirs, &theirs),
        "the keyspace after the event is the keyspace after Symfony's invalidateTags"
    );
    assert_eq!(
        app.hits(&KEYS),
        ["product-3"],
        "{layout}: category 7 misses"
    );
    assert_eq!(reference.hits(&KEYS), ["product-3"]);
    assert_eq!(
        app.read(&["product-3"])["product-3"].as_deref(),
        Some("three")
    );
}

#[test]
fn symfony_redis_tag_aware_adapter_misses_after_the_event() {
    symfony(Store::Single, "symfony", false);
    symfony(Store::Single, "symfony", true);
}

#[test]
fn symfony_redis_tag_aware_adapter_misses_after_the_event_on_the_cluster() {
    if cluster::skipped() {
        return;
    }
    symfony(Store::Cluster, "symfony", true);
}

#[test]
fn symfony_tag_aware_adapter_misses_after_the_event() {
    symfony(Store::Single, "symfony-versions", false);
    symfony(Store::Single, "symfony-versions", true);
}

#[test]
fn symfony_tag_aware_adapter_misses_after_the_event_on_the_cluster() {
    if cluster::skipped() {
        return;
    }
    symfony(Store::Cluster, "symfony-versions", false);
}

/// Keys are bytes from the rule on: a plain `delete:` whose literal text holds Symfony's NUL
/// bytes removes a `TagAwareAdapter`'s tag version (what `symfony-versions` does for `tags:`), and
/// `explain` shows the key with `\x00`.
#[test]
fn a_rule_key_may_hold_the_nul_bytes_of_symfony_keys() {
    let mut w = World::new();
    let ns = namespace(&w, "o");
    let rules = format!(
        "rules:\n  - name: version\n    on: product.updated\n    delete:\n      - \"{ns}-tags:category-{{category}}\\0tags\\0\"\n"
    );
    w.rules("rules.yaml", &rules);
    let app = App::symfony(
        Store::Single,
        "symfony-versions",
        &ns,
        json!({ "tags_namespace": format!("{ns}-tags") }),
    );
    app.write(&ENTRIES);
    let input = category_event(&w, "7");
    let explained = w.bin(&["explain", input.to_str().unwrap()]);
    assert!(
        explained
            .stdout
            .contains(&format!("delete   {ns}-tags:category-7\\x00tags\\x00")),
        "{}",
        explained.stdout
    );
    replay(&mut w, Store::Single, "", &input);
    assert_eq!(app.hits(&KEYS), ["product-3"]);
}

/// Next.js: the event's tag revalidated as `revalidateTag` does it, then the application misses;
/// an implicit (path) tag makes the entries read under that path miss.
fn nextjs(store: Store) {
    let mut w = World::new();
    w.rules("rules.yaml", RULES);
    let (ours, theirs) = (format!("{}o:", w.p), format!("{}f:", w.p));
    let app = App::nextjs(store, &ours);
    let reference = App::nextjs(store, &theirs);
    app.write(&ENTRIES);
    reference.write(&ENTRIES);
    assert_eq!(app.hits(&KEYS), KEYS, "written entries hit");

    let tags = format!("[tags]\nlayout = \"nextjs\"\nnamespace = \"{ours}\"\n");
    let input = category_event(&w, "7");
    replay(&mut w, store, &tags, &input);
    reference.invalidate(&["category-7"]);
    assert_eq!(
        keyspace(store, &ours, &theirs),
        keyspace(store, &theirs, &theirs),
        "the keyspace after the event is the keyspace after the handler's revalidateTag"
    );
    assert_eq!(app.hits(&KEYS), ["product-3"], "category 7 misses");
    assert_eq!(reference.hits(&KEYS), ["product-3"]);

    // A path: entries read under it miss (they are written before the event), others hit.
    let under = |path: &str| json!({ "key": "product-3", "implicit_tags": [path] });
    let hits = |app: &App, path: &str| app.read_lines(vec![under(path)])["product-3"].is_some();
    assert!(hits(&app, "_N_T_/products/3"));
    let e = event("page.updated", "e-2", json!({ "id": "3" }));
    let input = w.lines("page.jsonl", &[e]);
    replay(&mut w, store, &tags, &input);
    assert!(!hits(&app, "_N_T_/products/3"), "the path was revalidated");
    assert!(
        hits(&reference, "_N_T_/products/3"),
        "another app's path stays"
    );
}

#[test]
fn nextjs_cache_handler_misses_after_the_event() {
    nextjs(Store::Single);
}

#[test]
fn nextjs_cache_handler_misses_after_the_event_on_the_cluster() {
    if cluster::skipped() {
        return;
    }
    nextjs(Store::Cluster);
}

/// The worker with `[tags]` as `tags` takes one event of category 8; `app` then misses it.
fn through_the_worker(w: World, app: &App, tags: String) {
    let mut w = w;
    w.rules("rules.yaml", RULES);
    w.extra_config = tags;
    app.write(&ENTRIES);
    let stream = Stream::new(w, "framework", 1);
    let worker = stream.start("worker", "");
    let e = event("product.updated", "e-1", json!({ "category": "8" }));
    stream.produce(0..1, &[Msg::json(0, e)]);
    worker.expect_within(Duration::from_secs(30), "category 8 misses", || {
        app.hits(&KEYS) == ["product-1", "product-2"]
    });
}

#[test]
fn symfony_misses_after_an_event_through_the_worker() {
    let w = World::new();
    let ns = namespace(&w, "o");
    let app = App::symfony(Store::Single, "symfony", &ns, json!({}));
    let tags = format!("[tags]\nlayout = \"symfony\"\nnamespace = \"{ns}\"\n");
    through_the_worker(w, &app, tags);
}

#[test]
fn nextjs_misses_after_an_event_through_the_worker() {
    let w = World::new();
    let prefix = format!("{}o:", w.p);
    let app = App::nextjs(Store::Single, &prefix);
    let tags = format!("[tags]\nlayout = \"nextjs\"\nnamespace = \"{prefix}\"\n");
    through_the_worker(w, &app, tags);
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The racing writer's log: `seq` → when its write returned (ms).
fn race_log(path: &Path) -> std::collections::HashMap<u64, u64> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| (v["seq"].as_u64().unwrap(), v["done_ms"].as_u64().unwrap()))
        .collect()
}

/// What a race left: entries served that were written before the last invalidation began, and
/// entries that exist outside the tag index (registrations lost).
struct Left {
    stale: Vec<String>,
    lost: Vec<String>,
}

/// A writer fills `race-0..8` (tag `hot`) as fast as it can (Symfony: on each miss) while
/// `invalidate` runs `rounds` times; then, the writer stopped, what is left (entry `race-i` is the key `{id_prefix}race-i`,
/// in the index when `in_index` says so).
fn race(
    store: Store,
    w: &World,
    app: &App,
    rounds: usize,
    invalidate: &dyn Fn(),
    id_prefix: &str,
    in_index: &dyn Fn(&str) -> bool,
) -> Left {
    let stop = w.path("stop");
    let log = w.path("race.jsonl");
    let mut writer = app.race("hot", 8, &stop, &log);
    let writing = poll_until(Duration::from_secs(20), Duration::from_millis(20), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() >= RACE.len())
    });
    assert!(writing, "the racing writer writes");
    let mut last_began = 0;
    for _ in 0..rounds {
        last_began = now_ms();
        invalidate();
    }
    std::fs::write(&stop, "").unwrap();
    assert!(writer.wait().unwrap().success());
    let done = race_log(&log);
    let mut stale = Vec::new();
    for (key, value) in app.read(&RACE) {
        let Some(seq) = value else { continue };
        let at = done[&seq.parse::<u64>().unwrap()];
        if at < last_began {
            stale.push(format!(
                "{key} serves write {seq}, done {} ms before the invalidation began",
                last_began - at
            ));
        }
    }
    let mut c = conn(store);
    let lost = RACE
        .iter()
        .map(|k| format!("{id_prefix}{k}"))
        .filter(|id| redis::cmd("EXISTS").arg(id).query::<bool>(&mut *c).unwrap() && !in_index(id))
        .collect();
    Left { stale, lost }
}

/// A connection to `store` (through the Cluster's routing).
fn conn(store: Store) -> Box<dyn redis::ConnectionLike> {
    match store {
        Store::Single => Box::new(common::conn()),
        Store::Cluster => Box::new(cluster::cluster_conn()),
    }
}

const RACE: [&str; 8] = [
    "race-0", "race-1", "race-2", "race-3", "race-4", "race-5", "race-6", "race-7",
];

/// `SISMEMBER set id`, on `store`.
fn member_of(store: Store, set: String) -> impl Fn(&str) -> bool {
    move |id| {
        let mut c = conn(store);
        redis::cmd("SISMEMBER")
            .arg(&set)
            .arg(id)
            .query::<bool>(&mut *c)
            .unwrap()
    }
}

/// The library's invalidation of tag `hot` in `layout`, run from a blocking closure.
fn ours<'a>(redis: &'a layer::Redis, layout: &'a TagLayout) -> impl Fn() + 'a {
    let handle = tokio::runtime::Handle::current();
    move || {
        let report = tokio::task::block_in_place(|| {
            handle.block_on(layer::apply(redis, &layer::tags(["hot"]), layout))
        });
        assert!(report.tag_failures.is_empty(), "{report:?}");
    }
}

/// Symfony: a writer racing our invalidation of its tag on `store`, then the control.
async fn symfony_race(store: Store, redis: &layer::Redis) {
    let w = World::new();
    let ns = namespace(&w, "o");
    let app = App::symfony(store, "symfony", &ns, json!({}));
    let layout = TagLayout::Sets {
        set_prefix: format!("{ns}:\0tags\0"),
        member_prefix: String::new(),
    };
    let invalidate = ours(redis, &layout);
    let in_set = member_of(store, format!("{ns}:\0tags\0hot"));
    let left = race(
        store,
        &w,
        &app,
        300,
        &invalidate,
        &format!("{ns}:"),
        &in_set,
    );
    assert!(left.stale.is_empty(), "{:?}", left.stale);
    assert!(
        left.lost.is_empty(),
        "registrations lost from the tag set: {:?}",
        left.lost
    );
    invalidate();
    assert!(
        app.hits(&RACE).is_empty(),
        "a last invalidation finds every entry"
    );

    // Control: the same race against a naive invalidation (the members unlinked, then the set
    // removed, in two steps) loses registrations: entries no later invalidation can find.
    let w = World::new();
    let ns = namespace(&w, "n");
    let app = App::symfony(store, "symfony", &ns, json!({}));
    let set = format!("{ns}:\0tags\0hot");
    let naive = || {
        let mut c = conn(store);
        let members: Vec<Vec<u8>> = redis::cmd("SMEMBERS").arg(&set).query(&mut *c).unwrap();
        for m in members {
            let _: () = redis::cmd("UNLINK").arg(m).query(&mut *c).unwrap();
        }
        let _: () = redis::cmd("DEL").arg(&set).query(&mut *c).unwrap();
    };
    let in_set = member_of(store, set.clone());
    let left = race(store, &w, &app, 300, &naive, &format!("{ns}:"), &in_set);
    assert!(
        !left.lost.is_empty(),
        "control: the naive invalidation loses registrations"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_racing_the_invalidation_leaves_nothing_stale_symfony() {
    symfony_race(Store::Single, &layer::single(redis_url()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_racing_the_invalidation_leaves_nothing_stale_symfony_on_the_cluster() {
    let Some(c) = ClusterWorld::start().await else {
        return;
    };
    symfony_race(Store::Cluster, &c.redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_racing_the_invalidation_leaves_nothing_stale_nextjs() {
    let w = World::new();
    let prefix = format!("{}o:", w.p);
    let app = App::nextjs(Store::Single, &prefix);
    let config = Config::from_toml(&format!(
        "[tags]\nlayout = \"nextjs\"\nnamespace = \"{prefix}\""
    ))
    .unwrap();
    let layout = config.tags.layout().clone();
    let redis = layer::single(redis_url()).await;
    let invalidate = ours(&redis, &layout);
    // An entry without its field in the tag map is dropped by the handler's read: not stale.
    let left = race(Store::Single, &w, &app, 100, &invalidate, &prefix, &|_| {
        true
    });
    assert!(left.stale.is_empty(), "{:?}", left.stale);
    invalidate();
    assert!(
        app.hits(&RACE).is_empty(),
        "a last invalidation finds every entry"
    );
}
