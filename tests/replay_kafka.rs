//! `invalidator replay --from-kafka`, against the real broker the tests start (or `KAFKA_BROKERS`):
//! a time window of a topic re-invalidated after a Redis snapshot restore, and a DLQ topic
//! redriven after a rule fix; the worker's group never joined nor committed.
//!
//! Records are produced one per batch: the Tansu broker reports a partition's end as the first
//! offset of its last batch + 1 (a real Kafka reports the true end), and its ListOffsets by
//! timestamp always answers 0, so these windows hold only through the per-record filter.

mod common;

use std::time::Duration;

use common::kafka::{Msg, Stream, Worker, create_topic, free_port, price_event, read};
use common::{Run, World, conn, kafka};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const MINUTE: i64 = 60_000;

fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// `replay --from-kafka {topic} {flags}` with the stream's config (its `[kafka] group`
/// included, which the replay must leave alone).
fn replay(s: &Stream, topic: &str, flags: &[&str]) -> Run {
    replay_with(s, &s.config(free_port(), ""), topic, flags)
}

/// [`replay`] with `config` for the config text.
fn replay_with(s: &Stream, config: &str, topic: &str, flags: &[&str]) -> Run {
    let dlq = s.w.dlq_path();
    let mut args = vec![
        "replay",
        "--from-kafka",
        topic,
        "--dlq",
        dlq.to_str().unwrap(),
    ];
    args.extend(flags);
    s.w.bin_with(config, &args, &[])
}

fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap()
        .format(&Rfc3339)
        .unwrap()
}

/// The `P:price:{i}` keys left, as numbers.
fn left(s: &Stream, c: &mut redis::Connection) -> Vec<usize> {
    let mut n: Vec<usize> =
        s.w.keys(c, "P:price:*")
            .iter()
            .map(|k| k.rsplit(':').next().unwrap().parse().unwrap())
            .collect();
    n.sort_unstable();
    n
}

#[test]
fn a_time_window_is_invalidated_again_after_a_snapshot_restore() {
    let mut w = World::new();
    w.rules_fixture("price.yaml", "rules/delete_price.yaml");
    w.extra_config = "[dedupe]\nwindow = \"1h\"\nprefix = \"P:seen:\"\n".into();
    let s = Stream::new(w, "window", 2);
    let mut c = conn();
    // Event i goes to partition i % 2, with a timestamp that puts it in or out of the window of
    // the last hour: 0..10 three hours ago, 10..30 half an hour ago, 30..35 two hours ago
    // (produced after the window's events: timestamps are not ordered in a partition), 35..40
    // five minutes ago.
    let now = now_ms();
    let at = |i: usize| -> i64 {
        let i64i = i as i64;
        match i {
            0..10 => now - 180 * MINUTE + i64i,
            10..30 => now - 30 * MINUTE + i64i * 1000,
            30..35 => now - 120 * MINUTE + i64i,
            _ => now - 5 * MINUTE + i64i,
        }
    };
    let msgs: Vec<Msg> = (0..40)
        .map(|i| Msg {
            timestamp: Some(at(i)),
            ..Msg::json((i % 2) as i32, price_event(i))
        })
        .collect();
    let landed = kafka::produce_one_per_batch(&s.topic, &msgs);
    s.produced(0..40, &landed);

    // The events were applied once (their ids remembered by [dedupe]) ...
    let first = replay(&s, &s.topic, &[]);
    assert_eq!(first.code, 0, "{first:?}");
    assert_eq!(first.count("events"), 40, "{first:?}");
    assert_eq!(first.count("applied"), 40, "{first:?}");
    // ... then Redis was restored from a snapshot taken before them: every key is back.
    let all: Vec<String> = (0..40).map(|i| format!("P:price:{i}")).collect();
    s.w.set(&mut c, &all);

    // Control: the ids are remembered, so without --no-dedupe nothing is applied again.
    let control = replay(&s, &s.topic, &["--since", "1h"]);
    assert_eq!(control.code, 0, "{control:?}");
    assert_eq!(control.count("events"), 25, "{control:?}");
    assert_eq!(control.count("duplicate"), 25, "{control:?}");
    assert_eq!(control.count("outside window"), 15, "{control:?}");
    assert_eq!(left(&s, &mut c).len(), 40, "the restore bites");

    // The window from an hour ago to ten minutes ago (RFC 3339), applied again.
    let until = rfc3339(now - 10 * MINUTE);
    let run = replay(
        &s,
        &s.topic,
        &["--since", "1h", "--until", &until, "--no-dedupe"],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.count("events"), 20, "{run:?}");
    assert_eq!(run.count("applied"), 20, "{run:?}");
    assert_eq!(run.count("outside window"), 20, "{run:?}");
    assert_eq!(run.count("keys removed"), 20, "{run:?}");
    let outside: Vec<usize> = (0..10).chain(30..40).collect();
    assert_eq!(left(&s, &mut c), outside, "only the window's keys went");

    // One partition of the last hour: its events of 10..30 find their keys gone already; of
    // 35..40, the odd ones go.
    let run = replay(
        &s,
        &s.topic,
        &["--since", "1h", "--partition", "1", "--no-dedupe"],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.count("events"), 13, "{run:?}");
    assert_eq!(run.count("keys removed"), 3, "{run:?}");
    let outside: Vec<usize> = (0..10).chain(30..37).chain([38]).collect();
    assert_eq!(
        left(&s, &mut c),
        outside.into_iter().filter(|i| *i != 35).collect::<Vec<_>>()
    );

    assert_eq!(
        s.committed(),
        vec![-1001, -1001],
        "the worker's group committed nothing"
    );
}

#[test]
fn bad_windows_and_missing_topics_are_usage_errors() {
    let s = Stream::prices(1);
    let missing = kafka::name("missing");
    let cases: [(&str, &[&str], &str); 4] = [
        (&missing, &[], "no topic"),
        (
            &s.topic,
            &["--partition", "3"],
            "has no partition 3 (it has 0)",
        ),
        (
            &s.topic,
            &["--since", "yesterday"],
            "--since: `yesterday` is neither",
        ),
        (
            &s.topic,
            &["--since", "1h", "--until", "2h"],
            "--since must be before --until",
        ),
    ];
    for (topic, flags, message) in cases {
        let run = replay(&s, topic, flags);
        assert_eq!(run.code, 2, "{flags:?}: {run:?}");
        assert!(run.stderr.contains(message), "{flags:?}: {}", run.stderr);
    }
    // The window flags need --from-kafka; files and --from-kafka exclude each other.
    let run = s.w.bin(&["replay", "--since", "1h", "x.jsonl"]);
    assert_eq!(run.code, 2, "{run:?}");
    let run = s.w.bin(&["replay", "--from-kafka", &s.topic, "x.jsonl"]);
    assert_eq!(run.code, 2, "{run:?}");
}

#[test]
fn unreachable_brokers_are_an_outage() {
    let s = Stream::prices(1);
    let dead = format!("127.0.0.1:{}", free_port());
    let text = s.config(free_port(), "").replace(&kafka::brokers(), &dead);
    let run = replay_with(&s, &text, "t", &[]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stderr.contains("Kafka (metadata)"), "{}", run.stderr);
}

/// Stock events: `stock.updated` i removes `P:stock:{i}` once the fixed rule exists.
fn stock_event(i: usize) -> String {
    format!(r#"{{"type":"stock.updated","id":"s-{i}","data":{{"sku":"{i}"}}}}"#)
}

const STOCK_RULE: &str =
    "rules:\n  - name: stock\n    on: stock.updated\n    delete:\n      - P:stock:{sku}\n";

#[test]
fn the_dlq_topic_is_redriven_after_a_rule_fix() {
    let mut w = World::new();
    w.rules_fixture("price.yaml", "rules/delete_price.yaml");
    w.extra_config = "[limits]\ndead_letter_unmatched = true\n".into();
    let s = Stream::new(w, "redrive", 2);
    let dlq_topic = format!("{}.dlq", s.topic);
    create_topic(&dlq_topic, 1);
    let mut c = conn();
    let stock: Vec<String> = (0..12).map(|i| format!("P:stock:{i}")).collect();
    s.w.set(&mut c, &stock);
    // Ten native events and two in CloudEvents binary mode (attributes in headers) that no rule
    // listens to yet, two price events that apply, and one that no rule can fix.
    let mut msgs: Vec<Msg> = (0..10)
        .map(|i| Msg::json((i % 2) as i32, stock_event(i)))
        .collect();
    for i in 10..12 {
        msgs.push(Msg {
            partition: Some(0),
            key: Some(format!("sku-{i}").into_bytes()),
            payload: format!(r#"{{"sku":"{i}"}}"#).into_bytes(),
            headers: vec![
                ("ce_specversion".into(), "1.0".into()),
                ("ce_type".into(), "stock.updated".into()),
                ("ce_id".into(), format!("ce-{i}")),
                ("ce_source".into(), "inventory".into()),
            ],
            ..Msg::default()
        });
    }
    // In binary mode too, one whose `sku` no key may hold: it stays dead after the fix.
    msgs.push(Msg {
        partition: Some(1),
        key: Some(b"sku-star".to_vec()),
        payload: br#"{"sku":"*"}"#.to_vec(),
        headers: vec![
            ("ce_specversion".into(), "1.0".into()),
            ("ce_type".into(), "stock.updated".into()),
            ("ce_id".into(), "ce-star".into()),
        ],
        ..Msg::default()
    });
    msgs.push(Msg::json(1, price_event(0)));
    msgs.push(Msg::json(0, price_event(1)));
    let broken = br#"{"type":"stock.updated", oops"#.to_vec();
    msgs.push(Msg {
        partition: Some(1),
        payload: broken.clone(),
        ..Msg::default()
    });
    let landed = kafka::produce_one_per_batch(&s.topic, &msgs);
    s.produced(0..msgs.len(), &landed);

    // The worker dead-letters 14 of them to the DLQ topic, one record per batch (see the top).
    let port = free_port();
    let extra = "[kafka.properties]\n\"batch.num.messages\" = \"1\"\n";
    let config = s.config(port, "").replace("[kafka.properties]\n", extra);
    let mut worker = Worker::start(&s.w, "worker", &config, port);
    let dead = read(&dlq_topic, 1, 14, Duration::from_secs(60));
    assert_eq!(dead.len(), 14, "{}", worker.logs());
    worker.kill();
    assert_eq!(
        s.w.keys(&mut c, "P:stock:*").len(),
        12,
        "the missing rule bites"
    );

    // The fix: the rule exists. One command redrives the topic.
    s.w.rules("stock.yaml", STOCK_RULE);
    let run = replay(&s, &dlq_topic, &[]);
    assert_eq!(run.code, 1, "two stay dead: {run:?}");
    assert_eq!(run.count("events"), 14, "{run:?}");
    assert_eq!(run.count("applied"), 12, "{run:?}");
    assert_eq!(run.count("dead-lettered"), 2, "{run:?}");
    assert!(s.w.keys(&mut c, "P:stock:*").is_empty(), "{run:?}");
    // What stays dead is its original, byte for byte, with its first position, a second attempt,
    // and the Kafka key and headers it came with.
    let letters = s.w.dlq();
    assert_eq!(letters.len(), 2, "{letters:?}");
    let broken_letter = letters
        .iter()
        .find(|l| l["reason"] == "invalid_json")
        .unwrap();
    assert_eq!(
        broken_letter["payload"].as_str().unwrap().as_bytes(),
        &broken[..]
    );
    assert_eq!(broken_letter["attempts"], 2);
    assert_eq!(broken_letter["origin"]["topic"], s.topic.as_str());
    assert_eq!(broken_letter["origin"]["partition"], 1);
    assert_eq!(broken_letter["source"]["topic"], dlq_topic.as_str());
    let star = letters
        .iter()
        .find(|l| l["reason"] == "unsafe_value")
        .unwrap();
    assert_eq!(star["payload"], r#"{"sku":"*"}"#);
    assert_eq!(star["kafka"]["key"]["value"], "sku-star");
    let names: Vec<&str> = star["kafka"]["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ce_specversion", "ce_type", "ce_id"], "{star}");
    // The DLQ file replays it as the binary-mode event it was (without its headers, the payload
    // alone has no type: `missing_type`).
    let again = s.w.replay_with(&[], "dlq2.jsonl", &[&s.w.dlq_path()], &[]);
    assert_eq!(again.code, 1, "{again:?}");
    let mut reasons: Vec<String> = common::read_jsonl(&s.w.path("dlq2.jsonl"))
        .iter()
        .map(|l| l["reason"].as_str().unwrap().to_owned())
        .collect();
    reasons.sort();
    assert_eq!(reasons, ["invalid_json", "unsafe_value"], "{again:?}");
}
