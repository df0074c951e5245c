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
//!    DB 8 and prints our keys/s as a ratio of it.
//!
//! Only Redis DB 8 is ever written; DB 0 is never touched. `--generate-only FILE` writes the events
//! and exits (to profile a replay by hand). The events, the prefill and the measurements are shared
//! with bench/topology.rs (bench/common/).

#[path = "common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::{
    Sink, VALUE, build_release, config_toml, field, generate_events, prefill_commands,
    replay_command, run_child,
};

const DB: &str = "8";
const REDIS_URL: &str = "redis://127.0.0.1:6379/8";

fn redis_cli(args: &[&str]) -> String {
    common::redis_cli(&["-n", DB], args)
}

/// used_cpu_user + used_cpu_sys of the Redis server, in seconds.
fn redis_cpu() -> f64 {
    common::redis_cpu(&["-n", DB])
}

fn dbsize() -> u64 {
    redis_cli(&["DBSIZE"]).parse().unwrap_or(0)
}

/// Streams commands into `redis-cli -n 8 --pipe`; returns (commands sent, seconds).
fn pipe(fill: impl FnOnce(&mut Sink) -> std::io::Result<u64>) -> (u64, f64) {
    let t = Instant::now();
    let mut pipes = common::Pipes::start(&[vec!["-n".into(), DB.into()]], |_| 0);
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
    let mut n_events: u64 = 1_000_000;
    let mut products: u64 = 300_000;
    let mut skip_build = false;
    let mut generate_only: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--events" => {
                n_events = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--events N")
            }
            "--products" => {
                products = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--products N")
            }
            "--skip-build" => skip_build = true,
            // Only write the events (for profiling a replay by hand), then exit.
            "--generate-only" => generate_only = args.next().map(PathBuf::from),
            _ => {} // `cargo bench` passes --bench
        }
    }
    if let Some(path) = generate_only {
        let counts = generate_events(&path, n_events, products).unwrap();
        println!("wrote {n_events} events to {}: {counts:?}", path.display());
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bin = build_release(skip_build);

    let tmp = tempfile::Builder::new()
        .prefix("invalidator-bench-")
        .tempdir()
        .unwrap();
    let events = tmp.path().join("events.jsonl");
    let t = Instant::now();
    let counts = generate_events(&events, n_events, products).unwrap();
    let size = std::fs::metadata(&events).unwrap().len();
    println!(
        "generated {n_events} events ({:.1} MiB) in {:.2}s: price {} / inventory {} / product {} / promotion {} / review {}; {products} products",
        size as f64 / 1048576.0,
        t.elapsed().as_secs_f64(),
        counts[0],
        counts[1],
        counts[2],
        counts[3],
        counts[4]
    );
    let config = tmp.path().join("invalidator.toml");
    std::fs::write(&config, config_toml(&format!("url = \"{REDIS_URL}\""))).unwrap();

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
        let run = run_replay(&bin, &config, rules, &events, dry, label, tmp.path());
        for l in run.summary.lines() {
            println!("    {l}");
        }
        println!(
            "  -> wall {:.2}s, child CPU {:.2}s, Redis CPU {:.2}s, peak RSS {:.1} MiB, DBSIZE delta {}, exit {}",
            run.wall,
            run.cpu,
            run.redis_cpu,
            run.maxrss_kib as f64 / 1024.0,
            run.dbsize_delta,
            run.exit
        );
        runs.push(run);
    }
    redis_cli(&["FLUSHDB"]);

    println!("\nphysical limit (redis-benchmark, DB {DB}, 1,000,000 keys prefilled):");
    let (unlink, unlink_removed) = redis_benchmark("UNLINK");
    let (del, _) = redis_benchmark("DEL");

    println!();
    println!(
        "{:<16} {:>8} {:>9} {:>11} {:>12} {:>11} {:>13} {:>11} {:>5}",
        "run",
        "events",
        "wall s",
        "events/s",
        "keys removed",
        "keys/s",
        "÷ UNLINK rps",
        "peak RSS",
        "exit"
    );
    let mut cpu_lines = Vec::new();
    for r in &runs {
        let eps = r.events as f64 / r.wall;
        let (kr, kps, ratio) = match r.keys_removed {
            Some(k) => (
                k.to_string(),
                format!("{:.0}", k as f64 / r.wall),
                format!("{:.3}", k as f64 / r.wall / unlink),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        println!(
            "{:<16} {:>8} {:>9.2} {:>11.0} {:>12} {:>11} {:>13} {:>7.1} MiB {:>5}",
            r.label,
            r.events,
            r.wall,
            eps,
            kr,
            kps,
            ratio,
            r.maxrss_kib as f64 / 1024.0,
            r.exit
        );
        cpu_lines.push(format!(
            "{:<16} child CPU {:>6.2}s ({:.0}% of one core, {:.1} µs/event), Redis CPU {:>6.2}s, DBSIZE delta {}",
            r.label,
            r.cpu,
            100.0 * r.cpu / r.wall,
            1e6 * r.cpu / r.events.max(1) as f64,
            r.redis_cpu,
            r.dbsize_delta
        ));
    }
    for l in &cpu_lines {
        println!("{l}");
    }
    println!(
        "redis-benchmark UNLINK: {unlink:.0} requests/s ({unlink_removed:.0} keys really removed/s); \
         DEL: {del:.0} requests/s"
    );
    println!();
    for r in runs.iter().filter(|r| r.keys_removed.is_some()) {
        let kps = r.keys_removed.unwrap() as f64 / r.wall;
        println!(
            "target [{}] keys/s >= 0.5 x UNLINK requests/s ({:.0}): {:.0} -> {}",
            r.label,
            0.5 * unlink,
            kps,
            if kps >= 0.5 * unlink { "MET" } else { "MISSED" }
        );
        println!(
            "  like for like, keys removed/s >= 0.5 x redis-benchmark's keys removed/s ({:.0}): {:.2}x -> {}",
            0.5 * unlink_removed,
            kps / unlink_removed,
            if kps >= 0.5 * unlink_removed {
                "MET"
            } else {
                "MISSED"
            }
        );
    }
    for r in &runs {
        println!(
            "target [{}] peak RSS < 64 MiB: {:.1} MiB -> {}",
            r.label,
            r.maxrss_kib as f64 / 1024.0,
            if r.maxrss_kib < 64 * 1024 {
                "MET"
            } else {
                "MISSED"
            }
        );
    }
}
