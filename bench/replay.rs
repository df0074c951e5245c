//! End-to-end replay benchmark: `cargo bench --bench replay -- [--events N] [--products N]`.
//!
//! 1. generates N events (default 1,000,000; fixed-seed LCG) of the five kinds the shipped rules
//!    handle, as JSON Lines in a temp directory;
//! 2. builds `target/release/invalidator` (`cargo build --release`);
//! 3. for the plain rules (`bench/rules-plain/`) and the shipped rules (`rules/`), real and
//!    `--dry-run`: FLUSHDB on Redis DB 8, prefills the keyspace the rules touch (`redis-cli --pipe`),
//!    runs `invalidator replay` as a child and records wall time, events/s, keys removed/s and the
//!    child's peak RSS (`wait4`);
//! 4. measures the physical limit with `redis-benchmark -P 64 ... UNLINK/DEL key:__rand_int__` on
//!    DB 8 and prints our keys/s as a ratio of it;
//! 5. sends the very keys the plain rules plan for the events (deduplicated within each unit of
//!    1,000 events, as a replay's plan is; checked against the plain dry run's count) as `UNLINK`s
//!    of 100 keys through `redis-cli --pipe`, on the keyspace prefilled as for the replay (checked:
//!    it removes what the plain replay removed), and prints the plain replay's keys/s as a ratio of
//!    the pipe's: the issue's own yardstick ("the same keys as UNLINK x100").
//!
//! Only Redis DB 8 is ever written; DB 0 is never touched. `--generate-only FILE` writes the events
//! and exits, `--prefill-only` fills DB 8 as a run starts from and exits (to profile a replay by
//! hand). The events, the prefill and the measurements are shared
//! with bench/topology.rs (bench/common/).

#[path = "common/mod.rs"]
#[allow(dead_code)] // each benchmark uses a part of it
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::args::Workload;
use common::events::{Sink, VALUE, generate_events, generate_in_tempdir, prefill_commands};
use common::measure::{
    build_release, config_toml, field, mib, print_table, replay_command, run_child, verdict,
};
use common::redis::Pipes;

const DB: &str = "8";
const REDIS_URL: &str = "redis://127.0.0.1:6379/8";

fn redis_cli(args: &[&str]) -> String {
    common::redis::redis_cli(&["-n", DB], args)
}

/// used_cpu_user + used_cpu_sys of the Redis server, in seconds.
fn redis_cpu() -> f64 {
    common::redis::redis_cpu(&["-n", DB])
}

fn dbsize() -> u64 {
    redis_cli(&["DBSIZE"]).parse().unwrap_or(0)
}

/// Streams commands into `redis-cli -n 8 --pipe`; returns (commands sent, seconds).
fn pipe(fill: impl FnOnce(&mut Sink) -> std::io::Result<u64>) -> (u64, f64) {
    let t = Instant::now();
    let mut pipes = Pipes::start(&[vec!["-n".into(), DB.into()]], |_| 0);
    fill(&mut |args| pipes.send(args)).expect("writing to redis-cli --pipe");
    let sent = pipes.finish().iter().sum();
    (sent, t.elapsed().as_secs_f64())
}

/// FLUSHDB on DB 8, then every key the shipped rules can touch for `products` products.
fn prefill(products: u64) -> (u64, f64) {
    redis_cli(&["FLUSHDB"]);
    pipe(|send| prefill_commands(products, send))
}

struct Run {
    label: String,
    wall: f64,
    events: u64,
    keys_removed: Option<u64>,
    dbsize_delta: i64,
    maxrss_kib: i64,
    /// CPU seconds of the child (user + system).
    cpu: f64,
    /// CPU seconds Redis spent during the run (INFO cpu).
    redis_cpu: f64,
    exit: i32,
    summary: String,
}

fn run_replay(
    bin: &Path,
    config: &Path,
    rules: &Path,
    events: &Path,
    dry_run: bool,
    label: &str,
    tmp: &Path,
) -> Run {
    let before = dbsize();
    let redis_before = redis_cpu();
    let child = run_child(
        replay_command(bin, config, rules, events, dry_run),
        label,
        tmp,
    );
    let redis_cpu = redis_cpu() - redis_before;
    let after = dbsize();
    Run {
        label: label.to_string(),
        wall: child.wall,
        events: field(&child.stdout, "events:").unwrap_or(0),
        keys_removed: field(&child.stdout, "keys removed:"),
        dbsize_delta: before as i64 - after as i64,
        maxrss_kib: child.maxrss_kib,
        cpu: child.cpu,
        redis_cpu,
        exit: child.exit,
        summary: child.stdout,
    }
}

/// `redis-benchmark -P 64 -n 2000000 -r 1000000 -q --dbnum 8 <CMD> key:__rand_int__`, after
/// prefilling key:000000000000 .. key:000000999999. Returns requests/s, and the keys it really
/// removed per second: 2,000,000 random picks among 1,000,000 keys find most keys already gone, so
/// only about 86% of the keyspace is removed, by 43% of the requests.
fn redis_benchmark(cmd: &str) -> (f64, f64) {
    redis_cli(&["FLUSHDB"]);
    pipe(|send| {
        for i in 0..1_000_000u64 {
            send(&["SET", &format!("key:{i:012}"), VALUE])?;
        }
        Ok(1_000_000)
    });
    let args = [
        "--dbnum",
        DB,
        "-P",
        "64",
        "-n",
        "2000000",
        "-r",
        "1000000",
        "-q",
        cmd,
        "key:__rand_int__",
    ];
    println!("$ redis-benchmark {}", args.join(" "));
    let out = Command::new("redis-benchmark")
        .args(args)
        .output()
        .expect("redis-benchmark on PATH");
    // With -q, progress lines end in \r; the final one reads "UNLINK key:__rand_int__: 512345.67
    // requests per second, p50=...".
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
    let line = text
        .lines()
        .rfind(|l| l.contains("requests per second"))
        .unwrap_or_else(|| panic!("no rate in redis-benchmark output: {text}"))
        .to_string();
    println!("  {}", line.trim());
    let left: f64 = redis_cli(&["DBSIZE"]).parse().unwrap_or(0.0);
    let words: Vec<&str> = line.split_whitespace().collect();
    let rate = words
        .iter()
        .position(|w| *w == "requests")
        .and_then(|i| i.checked_sub(1))
        .and_then(|i| words[i].parse().ok())
        .unwrap_or(0.0);
    redis_cli(&["FLUSHDB"]);
    let removed_per_s = (1_000_000.0 - left) / (2_000_000.0 / rate);
    println!(
        "  keys removed: {:.0} of 1,000,000, i.e. {removed_per_s:.0} removed/s",
        1_000_000.0 - left
    );
    (rate, removed_per_s)
}

fn main() {
    let mut generate_only: Option<PathBuf> = None;
    let mut prefill_only = false;
    let w = Workload::from_args(|a, args| match a {
        // Only write the events (for profiling a replay by hand), then exit.
        "--generate-only" => generate_only = args.next().map(PathBuf::from),
        // Only fill DB 8 as a run starts from (for profiling a real replay by hand), then exit.
        "--prefill-only" => prefill_only = true,
        _ => {}
    });
    if prefill_only {
        let (cmds, secs) = prefill(w.products);
        println!(
            "prefilled DB {DB}: {cmds} commands, {} keys in {secs:.2}s",
            dbsize()
        );
        return;
    }
    if let Some(path) = generate_only {
        let counts = generate_events(&path, w.events, w.products).unwrap();
        println!(
            "wrote {} events to {}: {counts:?}",
            w.events,
            path.display()
        );
        return;
    }
    let bin = build_release(w.skip_build);

    let (tmp, events) = generate_in_tempdir("invalidator-bench-", &w);
    let config = tmp.path().join("invalidator.toml");
    std::fs::write(&config, config_toml(&format!("url = \"{REDIS_URL}\""))).unwrap();
    let runs = run_all(&bin, &config, &events, w.products, tmp.path());
    let same = same_keys_pipe(&events, &runs, w.products);
    redis_cli(&["FLUSHDB"]);

    println!("\nphysical limit (redis-benchmark, DB {DB}, 1,000,000 keys prefilled):");
    let (unlink, unlink_removed) = redis_benchmark("UNLINK");
    let (del, _) = redis_benchmark("DEL");

    println!();
    table(&runs, unlink);
    println!(
        "redis-benchmark UNLINK: {unlink:.0} requests/s ({unlink_removed:.0} keys really removed/s); \
         DEL: {del:.0} requests/s"
    );
    println!();
    targets(&runs, unlink, unlink_removed);
    let plain = runs.iter().find(|r| r.label == "plain").expect("plain run");
    let ratio = same.wall / plain.wall;
    println!(
        "target [plain] keys/s >= 0.5 x the same keys' UNLINK x{PIPE_KEYS} pipe (the issue's yardstick; \
         {:.0} keys/s there, {:.0} here): {ratio:.2}x -> {}",
        same.keys as f64 / same.wall,
        same.keys as f64 / plain.wall,
        verdict(ratio >= 0.5)
    );
}

/// Keys per `UNLINK` of [`same_keys_pipe`], as the issue measured it.
const PIPE_KEYS: usize = 100;

/// What `redis-cli --pipe` did with the plain replay's keys.
struct SamePipe {
    keys: usize,
    wall: f64,
}

/// The issue's own yardstick: the very keys the plain rules plan for the events ([`plain_keys`]),
/// sent as `UNLINK`s of [`PIPE_KEYS`] keys through `redis-cli --pipe` on the same prefilled
/// keyspace. Checks that they are the keys the plain dry run planned and that they remove what the
/// plain replay removed.
fn same_keys_pipe(events: &Path, runs: &[Run], products: u64) -> SamePipe {
    let unit = 1000; // `[replay] batch_size`'s default: a plan deduplicates keys within a unit.
    let keys = plain_keys(events, unit);
    let planned = runs
        .iter()
        .find(|r| r.label == "plain-dry-run")
        .and_then(|r| field(&r.summary, "actions planned:"));
    assert_eq!(
        Some(keys.len() as u64),
        planned,
        "the pipe's keys are the plain rules' planned deletes"
    );
    let (_, fill) = prefill(products);
    println!(
        "\nthe same keys (the plain rules' {} planned deletes) as UNLINK x{PIPE_KEYS} through \
         redis-cli --pipe, DB {DB} prefilled as for the replay ({fill:.2}s):",
        keys.len()
    );
    let before = dbsize();
    let redis_before = redis_cpu();
    let (_, wall) = pipe(|send| {
        let mut sent = 0;
        for chunk in keys.chunks(PIPE_KEYS) {
            let mut args = Vec::with_capacity(chunk.len() + 1);
            args.push("UNLINK");
            args.extend(chunk.iter().map(String::as_str));
            send(&args)?;
            sent += 1;
        }
        Ok(sent)
    });
    let removed = before as i64 - dbsize() as i64;
    let plain = runs.iter().find(|r| r.label == "plain").expect("plain run");
    println!(
        "  {:.2}s: {:.0} keys/s, {removed} removed ({:.0}/s), Redis CPU {:.2}s (the plain replay: \
         {:.2}s, {} removed, Redis CPU {:.2}s)",
        wall,
        keys.len() as f64 / wall,
        removed as f64 / wall,
        redis_cpu() - redis_before,
        plain.wall,
        plain.dbsize_delta,
        plain.redis_cpu
    );
    assert_eq!(
        removed, plain.dbsize_delta,
        "the pipe removes what the plain replay removed"
    );
    SamePipe {
        keys: keys.len(),
        wall,
    }
}

/// The keys bench/rules-plain names for each event of `events`, in order, each once within a unit
/// of `unit` events (as a replay's plan holds them).
fn plain_keys(events: &Path, unit: usize) -> Vec<String> {
    use serde_json::Value;
    let text = std::fs::read_to_string(events).expect("the events");
    let mut keys = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (n, line) in text.lines().enumerate() {
        if n % unit == 0 {
            seen.clear();
        }
        let v: Value = serde_json::from_str(line).expect("a generated event");
        let kind = v.get("type").or_else(|| v.get("event_type"));
        let d = &v["data"];
        let named: Vec<String> = match kind.and_then(Value::as_str) {
            Some("price.updated") => vec![format!("price:{}", d["product_id"])],
            Some("inventory.changed") => vec![format!("inventory:{}", d["product_id"])],
            Some("product.updated") => vec![format!("product:{}", d["product_id"])],
            Some("promotion.changed") => d["sections"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(|s| format!("promo:{s}"))
                .collect(),
            Some("review.updated") => {
                vec![format!("review:{}", d["review_id"].as_str().unwrap_or(""))]
            }
            other => panic!("no plain rule for {other:?}"),
        };
        for k in named {
            if seen.insert(k.clone()) {
                keys.push(k);
            }
        }
    }
    keys
}

/// The plain and the shipped rules, real and `--dry-run`, each after a fresh prefill.
fn run_all(bin: &Path, config: &Path, events: &Path, products: u64, tmp: &Path) -> Vec<Run> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let plain = root.join("bench").join("rules-plain");
    let shipped = root.join("rules");
    let mut runs = Vec::new();
    for (label, rules, dry) in [
        ("plain", &plain, false),
        ("shipped", &shipped, false),
        ("plain-dry-run", &plain, true),
        ("shipped-dry-run", &shipped, true),
    ] {
        let (cmds, secs) = prefill(products);
        let keys = dbsize();
        println!("[{label}] prefilled DB {DB}: {cmds} commands, {keys} keys in {secs:.2}s");
        println!(
            "$ {} replay -c {} --rules {}{} {}",
            bin.display(),
            config.display(),
            rules.display(),
            if dry { " --dry-run" } else { "" },
            events.display()
        );
        let run = run_replay(bin, config, rules, events, dry, label, tmp);
        for l in run.summary.lines() {
            println!("    {l}");
        }
        println!(
            "  -> wall {:.2}s, child CPU {:.2}s, Redis CPU {:.2}s, peak RSS {:.1} MiB, DBSIZE delta {}, exit {}",
            run.wall,
            run.cpu,
            run.redis_cpu,
            mib(run.maxrss_kib),
            run.dbsize_delta,
            run.exit
        );
        runs.push(run);
    }
    runs
}

/// The runs side by side (keys/s also as a ratio of redis-benchmark's UNLINK requests/s), then
/// their CPU.
fn table(runs: &[Run], unlink: f64) {
    let columns = [
        ("run", 16),
        ("events", 8),
        ("wall s", 9),
        ("events/s", 11),
        ("keys removed", 12),
        ("keys/s", 11),
        ("÷ UNLINK rps", 13),
        ("peak RSS", 11),
        ("exit", 5),
    ];
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            let (kr, kps, ratio) = match r.keys_removed {
                Some(k) => (
                    k.to_string(),
                    format!("{:.0}", k as f64 / r.wall),
                    format!("{:.3}", k as f64 / r.wall / unlink),
                ),
                None => ("-".into(), "-".into(), "-".into()),
            };
            vec![
                r.label.clone(),
                r.events.to_string(),
                format!("{:.2}", r.wall),
                format!("{:.0}", r.events as f64 / r.wall),
                kr,
                kps,
                ratio,
                format!("{:.1} MiB", mib(r.maxrss_kib)),
                r.exit.to_string(),
            ]
        })
        .collect();
    print_table(&columns, &rows);
    for r in runs {
        println!(
            "{:<16} child CPU {:>6.2}s ({:.0}% of one core, {:.1} µs/event), Redis CPU {:>6.2}s, DBSIZE delta {}",
            r.label,
            r.cpu,
            100.0 * r.cpu / r.wall,
            1e6 * r.cpu / r.events.max(1) as f64,
            r.redis_cpu,
            r.dbsize_delta
        );
    }
}

/// The targets: keys/s against redis-benchmark's, peak RSS under 64 MiB.
fn targets(runs: &[Run], unlink: f64, unlink_removed: f64) {
    for r in runs.iter().filter(|r| r.keys_removed.is_some()) {
        let kps = r.keys_removed.unwrap() as f64 / r.wall;
        println!(
            "target [{}] keys/s >= 0.5 x UNLINK requests/s ({:.0}): {:.0} -> {}",
            r.label,
            0.5 * unlink,
            kps,
            verdict(kps >= 0.5 * unlink)
        );
        println!(
            "  like for like, keys removed/s >= 0.5 x redis-benchmark's keys removed/s ({:.0}): {:.2}x -> {}",
            0.5 * unlink_removed,
            kps / unlink_removed,
            verdict(kps >= 0.5 * unlink_removed)
        );
    }
    for r in runs {
        println!(
            "target [{}] peak RSS < 64 MiB: {:.1} MiB -> {}",
            r.label,
            mib(r.maxrss_kib),
            verdict(r.maxrss_kib < 64 * 1024)
        );
    }
}
