//! Specifications as data. A case is a folder `tests/fixtures/{topic}/{case}/` that reads as
//! "given this Redis, when these events are replayed under these rules, then this":
//!
//! - `rules.yaml`: the rules;
//! - `config.toml` (optional): more configuration (`[limits]`, `[tags]`, …);
//! - `given.json` (optional): what Redis holds before;
//! - `events.jsonl`: the events, replayed through the binary
//!   (`invalidator replay --dlq dlq.jsonl events.jsonl`, which must end within 20 s);
//! - `expected.json`: the exit status, the summary, what Redis holds after, the dead letters.
//!
//! `P:` stands for the test's own key prefix everywhere. A key may end in a range `{a..b}`, which
//! stands for the keys ending in `a` to `b - 1`.
//!
//! `given.json`:
//! ```json
//! { "keys": ["P:price:1"],                 // SET k v
//!   "values": {"P:tag:product:7": "5"},    // SET k value
//!   "expiring_ms": {"P:reco:long": 3600000}, // SET k v PX ms
//!   "sets": {"P:tag:product:7": ["P:cart:1"]} } // SADD
//! ```
//!
//! `expected.json` (every field but `exit` and `summary` optional):
//! ```json
//! { "exit": 1,
//!   "summary": {"events": 2, "applied": 1, "dead-lettered": 1, "keys removed": 2},
//!   "gone": ["P:price:1"], "kept": ["P:price:2"],
//!   "keys": ["P:price:2"],                 // exactly the keys under the prefix after
//!   "counts": {"P:page:*": 0},             // how many keys match each pattern after
//!   "values": {"P:tag:product:7": "6"},
//!   "set_sizes": {"P:tag:product:8": 1},
//!   "ttl_ms": {"P:reco:long": [1, 30000]}, // PTTL within, bounds included
//!   "dead_letters": [{"event_id": "e1", "reason": "unsafe_value"}], // every record, in order;
//!                                          // "reason" may list the reasons accepted
//!   "because": {"keys removed": "two of the three keys existed"} } // said when that check fails
//! ```
//! The summary labels are those the binary prints (a line it prints only when not 0, such as
//! `paths logged` or `redeletes`, counts as 0 when absent).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::{Run, World, conn, fixture, read_jsonl};

/// Summary lines the binary prints only when their count is not 0.
const PRINTED_WHEN_NOT_ZERO: &[&str] = &[
    "paths logged",
    "redeletes",
    "NOT applied",
    "wait shortfalls",
];

/// How long the replay of a case may take.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(20);

/// One case, loaded, with its world (rules and configuration written).
pub struct Spec {
    /// `{topic}/{case}`, named in every failure.
    pub name: String,
    dir: PathBuf,
    pub w: World,
    pub expected: Value,
}

/// Runs the case `{topic}/{case}`: given, when replayed, then as expected.
pub fn check(topic: &str, case: &str) {
    checked(topic, case);
}

/// [`check`], returning the case and the connection for the checks a test adds in code.
pub fn checked(topic: &str, case: &str) -> (Spec, redis::Connection) {
    let spec = Spec::load(topic, case);
    let mut c = conn();
    spec.given(&mut c);
    let run = spec.replay();
    spec.then(&mut c, &run);
    (spec, c)
}

impl Spec {
    /// Loads the case and writes its rules and configuration into a new [`World`].
    pub fn load(topic: &str, case: &str) -> Spec {
        let name = format!("{topic}/{case}");
        let dir = fixture(&name);
        assert!(dir.is_dir(), "no case folder {}", dir.display());
        let mut w = World::new();
        if let Some(config) = read(&dir, "config.toml") {
            w.extra_config = config;
        }
        w.rules_fixture("rules.yaml", &format!("{name}/rules.yaml"));
        let expected =
            json(&dir, "expected.json").unwrap_or_else(|| panic!("{name}: no expected.json"));
        Spec {
            name,
            dir,
            w,
            expected,
        }
    }

    /// Writes `given.json` into Redis.
    pub fn given(&self, c: &mut redis::Connection) {
        let Some(given) = json(&self.dir, "given.json") else {
            return;
        };
        let mut pipe = redis::pipe();
        for k in self.expand_all(&given["keys"]) {
            pipe.cmd("SET").arg(k).arg("v").ignore();
        }
        for (k, v) in entries(&given["values"]) {
            pipe.cmd("SET").arg(self.w.k(k)).arg(text(v)).ignore();
        }
        for (k, ms) in entries(&given["expiring_ms"]) {
            let ms = ms.as_u64().expect("expiring_ms: milliseconds");
            for k in self.expand(k) {
                pipe.cmd("SET").arg(k).arg("v").arg("PX").arg(ms).ignore();
            }
        }
        for (set, members) in entries(&given["sets"]) {
            pipe.cmd("SADD")
                .arg(self.w.k(set))
                .arg(self.expand_all(members))
                .ignore();
        }
        let () = pipe
            .query(c)
            .unwrap_or_else(|e| panic!("{}: given.json: {e}", self.name));
    }

    /// Replays `events.jsonl` through the binary into `dlq.jsonl`.
    pub fn replay(&self) -> Run {
        let input = self.w.input_fixture(&format!("{}/events.jsonl", self.name));
        let dlq = self.w.dlq_path();
        let mut replay = self.w.spawn_bin(
            "replay",
            &self.w.config_text(),
            &[
                "replay",
                "--dlq",
                dlq.to_str().unwrap(),
                input.to_str().unwrap(),
            ],
        );
        replay.wait(REPLAY_TIMEOUT).unwrap_or_else(|| {
            panic!(
                "{}: the replay did not end within {REPLAY_TIMEOUT:?}\n{}",
                self.name,
                replay.stderr()
            )
        })
    }

    /// Checks `expected.json` against the run and Redis.
    pub fn then(&self, c: &mut redis::Connection, run: &Run) {
        let e = &self.expected;
        let name = &self.name;
        let because = |what: &str| -> String {
            match e["because"][what].as_str() {
                Some(why) => format!("{name}: {what}: {why}"),
                None => format!("{name}: {what}"),
            }
        };
        let code = e["exit"].as_i64().expect("expected.json: exit");
        assert_eq!(i64::from(run.code), code, "{}\n{run:?}", because("exit"));
        let summary = entries(&e["summary"]);
        assert!(!summary.is_empty(), "{name}: expected.json: summary");
        for (label, want) in summary {
            let got = match super::summary_count(&run.stdout, label) {
                None if PRINTED_WHEN_NOT_ZERO.contains(&label.as_str()) => 0,
                got => got.unwrap_or_else(|| panic!("{name}: no `{label}` in\n{}", run.stdout)),
            };
            assert_eq!(
                Some(got),
                want.as_u64(),
                "{}\n{}",
                because(label),
                run.stdout
            );
        }
        for k in self.expand_all(&e["gone"]) {
            assert!(
                !exists(c, &k),
                "{}: {k} must be gone",
                because(&self.unprefixed(&k))
            );
        }
        for k in self.expand_all(&e["kept"]) {
            assert!(
                exists(c, &k),
                "{}: {k} must be kept",
                because(&self.unprefixed(&k))
            );
        }
        if e.get("keys").is_some() {
            let mut want = self.expand_all(&e["keys"]);
            want.sort();
            assert_eq!(self.w.keys(c, "P:*"), want, "{}", because("keys"));
        }
        for (pattern, n) in entries(&e["counts"]) {
            let got = self.w.keys(c, pattern).len() as u64;
            assert_eq!(Some(got), n.as_u64(), "{}", because(pattern));
        }
        for (k, v) in entries(&e["values"]) {
            let got: Option<String> = redis::cmd("GET").arg(self.w.k(k)).query(c).unwrap();
            assert_eq!(got.as_deref(), Some(text(v).as_str()), "{}", because(k));
        }
        for (set, n) in entries(&e["set_sizes"]) {
            let got: u64 = redis::cmd("SCARD").arg(self.w.k(set)).query(c).unwrap();
            assert_eq!(Some(got), n.as_u64(), "{}", because(set));
        }
        for (k, range) in entries(&e["ttl_ms"]) {
            let (lo, hi) = (range[0].as_i64().unwrap(), range[1].as_i64().unwrap());
            for key in self.expand(k) {
                let t: i64 = redis::cmd("PTTL").arg(&key).query(c).unwrap();
                assert!(
                    (lo..=hi).contains(&t),
                    "{}: PTTL of {key} is {t}, not in {lo}..={hi}",
                    because(k)
                );
            }
        }
        if let Some(want) = e.get("dead_letters") {
            self.check_dead_letters(want.as_array().expect("dead_letters: a list"));
        }
    }

    /// Every record of `dlq.jsonl`, in order, as `want` says.
    fn check_dead_letters(&self, want: &[Value]) {
        let name = &self.name;
        let got = read_jsonl(&self.w.dlq_path());
        let seen: Vec<String> = got
            .iter()
            .map(|r| format!("{} {}", r["event_id"], r["reason"]))
            .collect();
        assert_eq!(got.len(), want.len(), "{name}: dead letters {seen:?}");
        for (n, (rec, want)) in got.iter().zip(want).enumerate() {
            if let Some(id) = want.get("event_id") {
                assert_eq!(&rec["event_id"], id, "{name}: dead letter {n}: {rec}");
            }
            let accepted: Vec<&Value> = match &want["reason"] {
                Value::Array(reasons) => reasons.iter().collect(),
                one => vec![one],
            };
            assert!(
                accepted.contains(&&rec["reason"]),
                "{name}: dead letter {n} ({}): reason {} is not one of {accepted:?}: {rec}",
                rec["event_id"],
                rec["reason"]
            );
        }
    }

    /// The keys of a list of keys and ranges (`P:` replaced).
    pub fn expand_all(&self, keys: &Value) -> Vec<String> {
        keys.as_array()
            .map(|l| {
                l.iter()
                    .flat_map(|k| self.expand(k.as_str().expect("a key")))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `P:k:{0..3}` → `{p}k:0`, `{p}k:1`, `{p}k:2`; any other key → itself (`P:` replaced).
    pub fn expand(&self, key: &str) -> Vec<String> {
        let key = self.w.k(key);
        let range = key
            .strip_suffix('}')
            .and_then(|k| k.rsplit_once('{'))
            .and_then(|(stem, r)| {
                let (a, b) = r.split_once("..")?;
                Some((
                    stem.to_owned(),
                    a.parse::<u64>().ok()?..b.parse::<u64>().ok()?,
                ))
            });
        match range {
            Some((stem, range)) => range.map(|i| format!("{stem}{i}")).collect(),
            None => vec![key],
        }
    }

    /// `{p}price:1` → `P:price:1` (as `because` names keys).
    fn unprefixed(&self, key: &str) -> String {
        key.replacen(&self.w.p, "P:", 1)
    }
}

fn read(dir: &std::path::Path, file: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(file)).ok()
}

fn json(dir: &std::path::Path, file: &str) -> Option<Value> {
    let text = read(dir, file)?;
    Some(serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}/{file}: {e}", dir.display())))
}

/// The entries of a JSON object (none for anything else).
fn entries(v: &Value) -> Vec<(&String, &Value)> {
    v.as_object()
        .map(|m| m.iter().collect())
        .unwrap_or_default()
}

/// A string, or a number as text.
fn text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

fn exists(c: &mut redis::Connection, key: &str) -> bool {
    redis::cmd("EXISTS").arg(key).query::<i64>(c).unwrap() == 1
}
