//! `invalidator replay` (and `explain`, `sweep` where they share its contract), the binary against
//! the real local Redis (DB 9 of 127.0.0.1:6379, or `INVALIDATOR_TEST_REDIS_URL`): the exit status
//! (0 clean, 1 dead letters, 2 usage, rules or config, 3 Redis unavailable), dry runs and
//! `explain`, Lambda event files as input, and a summary that accounts for every line.
//!
//! Rules, configurations and inputs are fixtures of `tests/fixtures/replay_cli/` (`P:` stands for
//! the test's key prefix). Every test works under its own random key prefix, so the tests run in
//! parallel.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::topology::Server;
use common::{World, conn, event, fixture, fixture_lines, read_jsonl, summary_count};
use serde_json::{Value, json};

/// Deletes `P:k:{n}` for every `k.changed` event.
const K_RULES: &str = "rules/delete_k.yaml";

/// Every key under the prefix with its type, value (strings and sets) and whether it has a TTL.
fn snapshot(w: &World, c: &mut redis::Connection) -> BTreeMap<String, (String, String, i64)> {
    let mut out = BTreeMap::new();
    for k in w.keys(c, "P:*") {
        let t: String = redis::cmd("TYPE").arg(&k).query(c).unwrap();
        let v = match t.as_str() {
            "string" => redis::cmd("GET").arg(&k).query::<String>(c).unwrap(),
            "set" => {
                let mut m: Vec<String> = redis::cmd("SMEMBERS").arg(&k).query(c).unwrap();
                m.sort();
                m.join(",")
            }
            _ => String::new(),
        };
        let ttl: i64 = redis::cmd("TTL").arg(&k).query(c).unwrap();
        out.insert(k, (t, v, ttl.signum()));
    }
    out
}

#[test]
fn clean_replay_exits_zero_and_writes_no_dlq() {
    let w = World::new().with_rules(K_RULES);
    let mut c = conn();
    w.set(&mut c, &["P:k:1", "P:k:2"]);
    let r = w.replay(&w.input_fixture("replay_cli/clean.jsonl"));
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.count("applied"), 2);
    assert_eq!(r.count("skipped"), 1);
    assert_eq!(r.count("keys removed"), 2);
    assert!(!w.dlq_path().exists());
    assert!(w.keys(&mut c, "P:*").is_empty());
}

#[test]
fn unparsable_rules_exit_2_with_file_line_column() {
    let w = World::new();
    w.rules_fixture("bad.yaml", "replay_cli/bad.yaml");
    let input = w.input_fixture("replay_cli/one_event.jsonl");
    let r = w.bin(&["replay", input.to_str().unwrap()]);
    assert_eq!(r.code, 2, "{r:?}");
    let re = regex::Regex::new(r"bad\.yaml:\d+:\d+").unwrap();
    assert!(
        re.is_match(&r.stderr),
        "no file:line:column in {}",
        r.stderr
    );
}

#[test]
fn unknown_config_key_exits_2_naming_it() {
    let w = World::new()
        .with_config("replay_cli/misspelt_limit.toml")
        .with_rules(K_RULES);
    let input = w.input_fixture("replay_cli/one_event.jsonl");
    let r = w.bin(&["replay", input.to_str().unwrap()]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("max_fanoutt"), "{}", r.stderr);
}

/// Usage errors of `replay`: (what is wrong, the arguments after `replay`; `INPUT` stands for an
/// input file, `MISSING` for a file that does not exist).
const USAGE_ERRORS: &[(&str, &[&str])] = &[
    ("--dlq is also an input", &["--dlq", "INPUT", "INPUT"]),
    (
        "--dlq is the input by another path",
        &["--dlq", "INPUT_BY_ANOTHER_PATH", "INPUT"],
    ),
    (
        "--dlq is a link to the input",
        &["--dlq", "LINK_TO_INPUT", "INPUT"],
    ),
    ("a rate of 0", &["--rate", "0", "INPUT"]),
    (
        "a rate too slow to ever end",
        &["--rate", "1e-300", "INPUT"],
    ),
    ("an infinite rate", &["--rate", "inf", "INPUT"]),
    ("an input that does not exist", &["MISSING"]),
];

#[test]
fn usage_errors_exit_2_and_touch_nothing() {
    let w = World::new().with_rules(K_RULES);
    let mut c = conn();
    w.set(&mut c, &["P:k:1"]);
    let input = w.input_fixture("replay_cli/one_event.jsonl");
    let missing = w.path("missing.jsonl");
    let dir = input.parent().unwrap();
    let another_path = dir.join(".").join(input.file_name().unwrap());
    let link = w.path("link.jsonl");
    std::os::unix::fs::symlink(&input, &link).unwrap();
    for (case, args) in USAGE_ERRORS {
        let mut full = vec!["replay"];
        full.extend(args.iter().map(|a| match *a {
            "INPUT" => input.to_str().unwrap(),
            "INPUT_BY_ANOTHER_PATH" => another_path.to_str().unwrap(),
            "LINK_TO_INPUT" => link.to_str().unwrap(),
            "MISSING" => missing.to_str().unwrap(),
            a => a,
        }));
        let r = w.bin(&full);
        assert_eq!(r.code, 2, "{case}: {r:?}");
        assert!(w.exists(&mut c, "P:k:1"), "{case}: the key is touched");
    }
}

#[test]
fn redis_unreachable_exits_3_and_dead_letters_nothing() {
    let w = World::new().with_rules(K_RULES);
    let input = w.input_fixture("replay_cli/an_event_and_a_broken_line.jsonl");
    let started = Instant::now();
    let r = w.replay_with(
        &[],
        "dlq.jsonl",
        &[&input],
        &[
            ("INVALIDATOR_REDIS__URL", "redis://127.0.0.1:1/9"),
            ("INVALIDATOR_REDIS__RETRY_FOR", "1s"),
        ],
    );
    assert_eq!(r.code, 3, "{r:?}");
    assert!(
        !w.dlq_path().exists(),
        "nothing is dead-lettered for an outage"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn redis_lost_mid_replay_exits_3_and_dead_letters_nothing() {
    // A Redis of this test's own, killed while the replay runs (never the shared one).
    let private = Server::start();
    let w = World::new().with_rules(K_RULES);
    let mut lines: Vec<String> = (0..60)
        .map(|i| event("k.changed", &format!("e{i}"), json!({ "n": i })))
        .collect();
    lines.push("{broken".into());
    let input = w.lines("in.jsonl", &lines);
    let dlq = w.dlq_path();
    let config = w.config_text_with_redis(&format!(
        "url = \"{}\"\nretry_for = \"1s\"\n",
        private.url()
    ));
    let mut replay = w.spawn_bin(
        "replay",
        &config,
        &[
            "replay",
            "--rate",
            "20",
            "--dlq",
            dlq.to_str().unwrap(),
            input.to_str().unwrap(),
        ],
    );
    std::thread::sleep(Duration::from_millis(700));
    private.kill9();
    let r = replay
        .wait(Duration::from_secs(30))
        .expect("the replay did not stop after Redis went away");
    let stdout = &r.stdout;
    assert_eq!(r.code, 3, "{stdout}\n{}", r.stderr);
    assert!(stdout.contains("NOT applied"), "{stdout}");
    let events = summary_count(stdout, "events").unwrap();
    assert_eq!(events, 61, "every event of the input is counted: {stdout}");
    assert!(summary_count(stdout, "applied").unwrap() < 60, "{stdout}");
    assert!(!dlq.exists(), "nothing is dead-lettered for an outage");
}

#[test]
fn without_the_replicas_wait_asks_for_replay_and_sweep_stop_with_exit_3() {
    // The test Redis has no replica: `WAIT 1` always falls short, an outage like any other.
    let w = World::new().with_rules(K_RULES);
    w.rules_fixture("ttl.yaml", "replay_cli/ttl_k_30s.yaml");
    let mut c = conn();
    w.set(&mut c, &["P:k:1"]);
    let input = w.input_fixture("replay_cli/one_event.jsonl");
    let env = [
        ("INVALIDATOR_REDIS__WAIT_REPLICAS", "1"),
        ("INVALIDATOR_REDIS__WAIT_TIMEOUT", "100ms"),
        ("INVALIDATOR_REDIS__RETRY_FOR", "1s"),
    ];
    let r = w.replay_with(&[], "dlq.jsonl", &[&input], &env);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(
        r.stdout.contains("stopped: Redis unavailable: WAIT"),
        "{}",
        r.stdout
    );
    assert!(r.count("wait shortfalls") >= 1, "{}", r.stdout);
    assert_eq!(r.count("NOT applied"), 1, "{}", r.stdout);
    assert!(
        !w.dlq_path().exists(),
        "nothing is dead-lettered for an outage"
    );

    // A key over policy: the sweep writes, and its WAIT falls short too.
    w.set(&mut c, &["P:k:2"]);
    let r = w.bin_env(&["sweep"], &env);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stderr.contains("WAIT"), "{}", r.stderr);
}

#[test]
fn dry_run_and_explain_touch_nothing() {
    let w = World::new()
        .with_config("config/dedupe_10m.toml")
        .with_rules("replay_cli/every_action.yaml");
    let mut c = conn();
    w.set(&mut c, &["P:price:1", "P:page:1:a", "P:reco:1", "P:cart:1"]);
    let _: i64 = redis::cmd("SADD")
        .arg(w.k("P:tag:product:1"))
        .arg(w.k("P:cart:1"))
        .query(&mut c)
        .unwrap();
    let before = snapshot(&w, &mut c);
    // An event and a broken line.
    let input = w.input_fixture("replay_cli/dry_run.jsonl");
    let event = &fixture_lines("replay_cli/dry_run.jsonl")[0];
    let r = w.replay_with(&["--dry-run"], "dlq.jsonl", &[&input], &[]);
    assert!(r.code == 0 || r.code == 1, "{r:?}");
    assert!(r.stdout.contains("dry run"), "{}", r.stdout);
    assert_eq!(snapshot(&w, &mut c), before);
    assert!(!w.dlq_path().exists(), "a dry run writes no DLQ");

    let r = w.bin(&["explain", event]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains(&w.k("P:price:1")), "{}", r.stdout);
    let r = w.bin(&["explain", "--json", event]);
    assert_eq!(r.code, 0, "{r:?}");
    serde_json::from_str::<Value>(&r.stdout).expect("explain --json prints JSON");
    assert_eq!(snapshot(&w, &mut c), before);

    // The same event applied for real is not a duplicate: the dry run remembered nothing.
    let r = w.replay(&input);
    assert_eq!(r.count("applied"), 1, "{r:?}");
    assert_eq!(r.count("duplicate"), 0);
    assert!(!w.exists(&mut c, "P:price:1"));
}

#[test]
fn lambda_sns_and_sqs_event_files_replay() {
    let w = World::new().with_rules("replay_cli/lambda_event_files.yaml");
    let mut c = conn();
    w.set(
        &mut c,
        &[
            "P:price:1001",
            "P:inventory:1002",
            "P:review:1003",
            "P:review:r:r-77",
            "P:price:1002",
        ],
    );
    let (sns, sqs) = (fixture("sns-event.json"), fixture("sqs-event.json"));
    let r = w.replay_with(&[], "dlq.jsonl", &[&sns, &sqs], &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(r.count("events"), 4);
    assert_eq!(r.count("applied"), 3);
    assert_eq!(r.count("dead-lettered"), 1);
    assert_eq!(w.keys(&mut c, "P:*"), vec![w.k("P:price:1002")]);
    let recs = read_jsonl(&w.dlq_path());
    assert_eq!(recs.len(), 1);
    assert_eq!(
        recs[0]["source"]["message_id"],
        "7a0c1b2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d"
    );
    assert_eq!(recs[0]["reason"], "invalid_json");
    assert_eq!(
        recs[0]["payload"],
        r#"{"type": "price.updated", "data": {"product_id": "#
    );
}

/// `every_outcome.jsonl`: 12 events applied (ids `P:a1`..`P:a12`), a blank line, two copies of
/// applied ids (duplicates), an event whose condition is false and one of a type no rule takes
/// (skipped), a line of spaces, and five dead letters: not JSON, no `type`, an unsafe value, a
/// template error (no `n`) and `42` (not an object; an array would be a list of events).
#[test]
fn summary_accounts_for_every_non_empty_line() {
    // Small units: duplicates and dead letters fall in other units than their first occurrence.
    let w = World::new()
        .with_config("replay_cli/small_units_with_dedupe.toml")
        .with_rules("replay_cli/k_unless_zero.yaml");
    let mut c = conn();
    let keys: Vec<String> = (1..=12).map(|i| format!("P:k:{i}")).collect();
    w.set(&mut c, &keys);
    let lines = fixture_lines("replay_cli/every_outcome.jsonl");
    let non_empty = lines.iter().filter(|l| !l.trim().is_empty()).count() as u64;
    let r = w.replay(&w.input_fixture("replay_cli/every_outcome.jsonl"));
    assert_eq!(r.code, 1, "{r:?}");
    let (a, s, d, x) = (
        r.count("applied"),
        r.count("skipped"),
        r.count("duplicate"),
        r.count("dead-lettered"),
    );
    assert_eq!(a + s + d + x, non_empty, "{}", r.stdout);
    assert_eq!(r.count("events"), non_empty, "{}", r.stdout);
    assert_eq!((a, s, d, x), (12, 2, 2, 5), "{}", r.stdout);
    assert_eq!(r.count("keys removed"), 12);
    assert_eq!(read_jsonl(&w.dlq_path()).len() as u64, x);
}

/// Units run concurrently but are accounted in input order: the DLQ file reads as the input does.
#[test]
fn units_in_flight_are_accounted_in_input_order() {
    let w = World::new()
        .with_config("replay_cli/units_in_flight.toml")
        .with_rules(K_RULES);
    let mut c = conn();
    let mut lines = Vec::new();
    for i in 0..300 {
        if i % 7 == 3 {
            lines.push(format!("{{bad json {i}"));
        } else {
            w.set(&mut c, &[format!("P:k:{i}")]);
            lines.push(event("k.changed", &format!("e{i}"), json!({ "n": i })));
        }
    }
    let r = w.replay(&w.lines("in.jsonl", &lines));
    let bad = lines.iter().filter(|l| l.starts_with("{bad")).count() as u64;
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(
        (r.count("applied"), r.count("dead-lettered")),
        (300 - bad, bad),
        "{r:?}"
    );
    assert!(w.keys(&mut c, "P:k:*").is_empty(), "every key removed");
    let dlq: Vec<u64> = read_jsonl(&w.dlq_path())
        .iter()
        .map(|r| r["source"]["line"].as_u64().expect("line number"))
        .collect();
    let mut sorted = dlq.clone();
    sorted.sort_unstable();
    assert_eq!(dlq, sorted, "DLQ records in input order");
    assert_eq!(dlq.len() as u64, bad);
}
