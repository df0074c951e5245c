//! Redis topologies benchmark:
//! `cargo bench --bench topology -- [--events N] [--products N] [--skip-build] [--only cluster|wait|rewind]`.
//!
//! It starts its own `redis-server`s on free loopback ports, in a temp directory
//! (`redis-server --port P --bind 127.0.0.1 --save "" --appendonly no --dir D`), and kills them at
//! the end, also on a panic. No other Redis is touched (not 6379, not a test cluster).
//!
//! The events (default 1,000,000) and the keyspace are those of bench/replay.rs (bench/common/):
//! before every run the servers are flushed (`FLUSHALL`) and prefilled with `redis-cli -p P --pipe`,
//! on a Cluster one pipe per primary, each command sent to the primary that owns the slot of its
//! key. Every run is `target/release/invalidator replay` as a child, with the plain rules
//! (`bench/rules-plain/`) or the shipped ones (`rules/`), and records wall time, events/s, keys
//! removed, the keys left without a TTL (the shipped rules shorten TTLs, so how many keys with one
//! are left depends on timing), the child's CPU and peak RSS (`wait4`) and the servers' CPU
//! (`INFO cpu`).
//!
//! 1. `cluster`: one redis-server against a 3-primary Redis Cluster (`--cluster-enabled yes`,
//!    `redis-cli --cluster create ... --cluster-replicas 0`). Goal: cluster events/s >= 0.8 x single.
//!    The keys removed and the keys left without a TTL must be the same: the same invalidations
//!    were applied.
//! 2. `wait`: a primary and one replica (`--replicaof`), `wait_replicas = 0` against `= 1`, the
//!    replica caught up before each run. Goal: at most 20% slower with `WAIT`, and no shortfall.
//! 3. `rewind`: one redis-server, shipped rules, `failover_rewind = "0s"` against the default (30s,
//!    64 MiB cap), and a control with the cap lifted (16 GiB): the peak RSS of each. The control
//!    shows what the window would hold; the default run, that the cap bounds it.
//!
//! Figures are printed, never asserted (a target reads MET or MISSED).

#[path = "common/mod.rs"]
#[allow(dead_code)] // each benchmark uses a part of it
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::args::Workload;
use common::events::{generate_in_tempdir, prefill_commands};
use common::measure::{
    build_release, config_toml, field, mib, print_table, replay_command, run_child, verdict,
};
use common::redis::{Pipes, calls, cli, info, keyspace, redis_cpu};
use common::servers::{Servers, shown, start_cluster};
use invalidator::apply::redis::slot;

/// The default `failover_rewind_max_bytes`.
const REWIND_CAP: u64 = 64 << 20;
/// The default `failover_rewind`, in seconds.
const REWIND_WINDOW: f64 = 30.0;

/// A part of the benchmark (`--only` names it).
type Section = fn(&Ctx);

/// What the benchmark works with.
struct Ctx {
    bin: PathBuf,
    events: PathBuf,
    tmp: PathBuf,
    products: u64,
    plain: PathBuf,
    shipped: PathBuf,
}

impl Ctx {
    fn rules(&self) -> [(&'static str, &Path); 2] {
        [("plain", &self.plain), ("shipped", &self.shipped)]
    }
}

/// `FLUSHALL` on every primary, then the keyspace, each command to the primary that owns the
/// slot of its key (`owners`; `None`: a single server).
fn prefill(label: &str, primaries: &[u16], owners: Option<&[usize]>, products: u64) {
    for &p in primaries {
        cli(p, &["FLUSHALL"]);
    }
    let t = Instant::now();
    let targets: Vec<Vec<String>> = primaries
        .iter()
        .map(|p| vec!["-p".to_owned(), p.to_string()])
        .collect();
    let route = |args: &[&str]| owners.map_or(0, |o| o[usize::from(slot(args[1].as_bytes()))]);
    let mut pipes = Pipes::start(&targets, route);
    prefill_commands(products, &mut |args| pipes.send(args)).expect("writing to redis-cli --pipe");
    let sent = pipes.finish();
    let keys: u64 = primaries
        .iter()
        .map(|&p| cli(p, &["DBSIZE"]).parse::<u64>().unwrap_or(0))
        .sum();
    for (p, n) in primaries.iter().zip(&sent) {
        println!("[{label}] $ redis-cli -p {p} FLUSHALL; redis-cli -p {p} --pipe   # {n} commands");
    }
    println!(
        "[{label}] prefilled {keys} keys in {:.2}s",
        t.elapsed().as_secs_f64()
    );
}

struct Run {
    label: String,
    wall: f64,
    events: u64,
    keys_removed: u64,
    /// DBSIZE over the primaries after the run.
    keys_left: u64,
    /// The keys left without a TTL: unlike `keys_left`, the same whatever the timing.
    keys_no_ttl: u64,
    /// CPU seconds of the child (user + system).
    cpu: f64,
    /// CPU seconds of the primaries during the run (INFO cpu), summed.
    redis_cpu: f64,
    maxrss_kib: i64,
    exit: i32,
    wait_shortfalls: u64,
    failovers: u64,
}

impl Run {
    fn eps(&self) -> f64 {
        self.events as f64 / self.wall
    }
}

/// `invalidator replay` of the events with `redis` as the `[redis]` section; Redis CPU is summed
/// over `primaries`.
fn replay(ctx: &Ctx, label: &str, redis: &str, rules: &Path, primaries: &[u16]) -> Run {
    let config = ctx.tmp.join(format!("{label}.toml"));
    std::fs::write(&config, config_toml(redis)).unwrap();
    let cmd = replay_command(&ctx.bin, &config, rules, &ctx.events, false);
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    println!(
        "{}   # [redis] {}",
        shown(&ctx.bin.to_string_lossy(), &args),
        redis.replace('\n', "; ")
    );
    let cpu = |ps: &[u16]| -> f64 { ps.iter().map(|p| redis_cpu(&["-p", &p.to_string()])).sum() };
    let before = cpu(primaries);
    let calls_before = calls(primaries);
    let child = run_child(cmd, label, &ctx.tmp);
    let calls_after = calls(primaries);
    let redis_cpu = cpu(primaries) - before;
    let calls = calls_between(calls_before, calls_after, primaries.len());
    let (keys_left, keys_no_ttl) = keyspace(primaries);
    for l in child.stdout.lines() {
        println!("    {l}");
    }
    print_stderr(&ctx.tmp.join(format!("{label}.stderr")));
    let shown_calls: Vec<String> = calls.iter().map(|(c, n)| format!("{c} {n}")).collect();
    println!(
        "  Redis commands run (summed over the primaries): {}",
        shown_calls.join(", ")
    );
    let run = Run {
        label: label.to_owned(),
        wall: child.wall,
        events: field(&child.stdout, "events:").unwrap_or(0),
        keys_removed: field(&child.stdout, "keys removed:").unwrap_or(0),
        keys_left,
        keys_no_ttl,
        cpu: child.cpu,
        redis_cpu,
        maxrss_kib: child.maxrss_kib,
        exit: child.exit,
        wait_shortfalls: field(&child.stdout, "wait shortfalls:").unwrap_or(0),
        failovers: field(&child.stdout, "failovers:").unwrap_or(0),
    };
    println!(
        "  -> wall {:.2}s, {:.0} events/s, child CPU {:.2}s, Redis CPU {:.2}s, peak RSS {:.1} MiB, keys left {} ({} without a TTL), failovers {}, exit {}",
        run.wall,
        run.eps(),
        run.cpu,
        run.redis_cpu,
        mib(run.maxrss_kib),
        run.keys_left,
        run.keys_no_ttl,
        run.failovers,
        run.exit
    );
    run
}

/// The calls of each command from `before` to `after` (`INFO commandstats` of `servers`
/// servers), those made, most first.
fn calls_between(
    before: BTreeMap<String, u64>,
    mut after: BTreeMap<String, u64>,
    servers: usize,
) -> Vec<(String, u64)> {
    for (name, n) in &mut after {
        *n -= before.get(name).copied().unwrap_or(0);
    }
    // Our own `INFO commandstats` (the first one) counts in the second.
    if let Some(n) = after.get_mut("info") {
        *n = n.saturating_sub(servers as u64);
    }
    after.retain(|_, n| *n > 0);
    let mut calls: Vec<(String, u64)> = after.into_iter().collect();
    calls.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    calls
}

/// The first lines of the child's stderr (in `path`), if it wrote any.
fn print_stderr(path: &Path) {
    let stderr = std::fs::read_to_string(path).unwrap_or_default();
    if !stderr.trim().is_empty() {
        let lines: Vec<&str> = stderr.lines().collect();
        println!("  stderr ({} lines), the first ones:", lines.len());
        for l in lines.iter().take(5) {
            println!("    {l}");
        }
    }
}

fn table(runs: &[Run]) {
    let columns = [
        ("run", 18),
        ("events", 8),
        ("wall s", 8),
        ("events/s", 10),
        ("keys removed", 12),
        ("keys left", 10),
        ("no TTL", 10),
        ("child CPU s", 11),
        ("Redis CPU s", 11),
        ("peak RSS", 12),
        ("shortfall", 9),
        ("exit", 4),
    ];
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                r.label.clone(),
                r.events.to_string(),
                format!("{:.2}", r.wall),
                format!("{:.0}", r.eps()),
                r.keys_removed.to_string(),
                r.keys_left.to_string(),
                r.keys_no_ttl.to_string(),
                format!("{:.2}", r.cpu),
                format!("{:.2}", r.redis_cpu),
                format!("{:.1} MiB", mib(r.maxrss_kib)),
                r.wait_shortfalls.to_string(),
                r.exit.to_string(),
            ]
        })
        .collect();
    print_table(&columns, &rows);
}

/// The runs side by side, then for each pair (a baseline, the other) the target `goal`: the
/// other's events/s at least 0.8 x the baseline's; then `more` targets of the pair.
fn table_and_pairs(runs: &[Run], goal: &str, more: impl Fn(&Run, &Run)) {
    println!();
    table(runs);
    for pair in runs.chunks(2) {
        let [base, other] = pair else { continue };
        let ratio = other.eps() / base.eps();
        println!(
            "target [{}] {goal}: {:.0} / {:.0} = {ratio:.2}x -> {}",
            other.label,
            other.eps(),
            base.eps(),
            verdict(ratio >= 0.8)
        );
        more(base, other);
    }
}

/// 1. One redis-server against a 3-primary Cluster.
fn cluster_section(ctx: &Ctx) {
    println!("\n== 1. Cluster (3 primaries) vs a single redis-server ==");
    let mut servers = Servers::new(&ctx.tmp);
    let single = servers.start("single", &[]);
    let (primaries, owners) = start_cluster(&mut servers, 3);
    let seeds: Vec<String> = primaries
        .iter()
        .map(|p| format!("\"redis://127.0.0.1:{p}\""))
        .collect();
    let cluster_toml = format!("cluster = [{}]", seeds.join(", "));
    let single_toml = format!("url = \"redis://127.0.0.1:{single}/0\"");

    let mut runs = Vec::new();
    for (rules_name, rules) in ctx.rules() {
        let label = format!("single-{rules_name}");
        prefill(&label, &[single], None, ctx.products);
        runs.push(replay(ctx, &label, &single_toml, rules, &[single]));
        let label = format!("cluster-{rules_name}");
        prefill(&label, &primaries, Some(&owners), ctx.products);
        runs.push(replay(ctx, &label, &cluster_toml, rules, &primaries));
    }
    for &p in primaries.iter().chain([&single]) {
        cli(p, &["FLUSHALL"]);
    }
    table_and_pairs(&runs, "cluster events/s >= 0.8 x single", |s, c| {
        println!(
            "  same effect as single: keys removed {} vs {}, keys left without a TTL {} vs {} -> {}",
            c.keys_removed,
            s.keys_removed,
            c.keys_no_ttl,
            s.keys_no_ttl,
            if c.keys_removed == s.keys_removed
                && c.keys_no_ttl == s.keys_no_ttl
                && c.exit == 0
                && s.exit == 0
            {
                "SAME"
            } else {
                "DIFFERENT"
            }
        );
    });
}

/// Until the replica on `replica` has everything its primary `primary` has sent; seconds waited.
fn wait_caught_up(primary: u16, replica: u16) -> f64 {
    let t = Instant::now();
    loop {
        let p = cli(primary, &["INFO", "replication"]);
        let r = cli(replica, &["INFO", "replication"]);
        let up = info(&r, "master_link_status") == Some("up");
        let sent = info(&p, "master_repl_offset").and_then(|v| v.parse::<u64>().ok());
        let got = info(&r, "slave_repl_offset").and_then(|v| v.parse::<u64>().ok());
        if up && sent.is_some() && sent == got {
            return t.elapsed().as_secs_f64();
        }
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "the replica did not catch up: primary {sent:?}, replica {got:?}, link up {up}"
        );
        sleep(Duration::from_millis(100));
    }
}

/// 2. `wait_replicas = 0` against `= 1`, a primary with one replica.
fn wait_section(ctx: &Ctx) {
    println!("\n== 2. WAIT: a primary and one replica, wait_replicas = 0 vs 1 ==");
    let mut servers = Servers::new(&ctx.tmp);
    let primary = servers.start("wait-primary", &[]);
    let primary_s = primary.to_string();
    let replica = servers.start("wait-replica", &["--replicaof", "127.0.0.1", &primary_s]);
    let secs = wait_caught_up(primary, replica);
    println!("master_link_status:up on the replica after {secs:.1}s");
    let mut runs = Vec::new();
    for (rules_name, rules) in ctx.rules() {
        for wait in [0, 1] {
            let label = format!("wait{wait}-{rules_name}");
            prefill(&label, &[primary], None, ctx.products);
            let secs = wait_caught_up(primary, replica);
            println!("[{label}] replica caught up with the primary after {secs:.1}s more");
            let toml = format!("url = \"redis://127.0.0.1:{primary}/0\"\nwait_replicas = {wait}");
            runs.push(replay(ctx, &label, &toml, rules, &[primary]));
        }
    }
    cli(primary, &["FLUSHALL"]);
    table_and_pairs(
        &runs,
        "wait_replicas=1 at most 20% slower than 0",
        |_, w1| {
            println!(
                "target [{}] wait shortfalls = 0: {} -> {}",
                w1.label,
                w1.wait_shortfalls,
                verdict(w1.wait_shortfalls == 0 && w1.exit == 0)
            );
        },
    );
}

/// 3. The failover rewind window's memory: off, the default, and the default without its cap.
fn rewind_section(ctx: &Ctx) {
    println!("\n== 3. Failover rewind memory: one redis-server, shipped rules ==");
    let mut servers = Servers::new(&ctx.tmp);
    let port = servers.start("rewind", &[]);
    let url = format!("url = \"redis://127.0.0.1:{port}/0\"");
    let mut runs = Vec::new();
    for (label, extra) in [
        ("rewind-off", "\nfailover_rewind = \"0s\""),
        ("rewind-default", ""),
        (
            "rewind-uncapped",
            "\nfailover_rewind_max_bytes = 17179869184",
        ),
    ] {
        prefill(label, &[port], None, ctx.products);
        runs.push(replay(
            ctx,
            label,
            &format!("{url}{extra}"),
            &ctx.shipped,
            &[port],
        ));
    }
    cli(port, &["FLUSHALL"]);
    println!();
    table(&runs);
    let [off, capped, uncapped] = &runs[..] else {
        unreachable!()
    };
    rewind_targets(off, capped, uncapped);
}

/// What the rewind runs (window off, capped, uncapped) show of the window's memory.
fn rewind_targets(off: &Run, capped: &Run, uncapped: &Run) {
    let cap = REWIND_CAP as f64 / 1048576.0;
    let held = mib(capped.maxrss_kib - off.maxrss_kib);
    let would = mib(uncapped.maxrss_kib - off.maxrss_kib);
    println!(
        "peak RSS: off {:.1} MiB, default (30s, cap {cap:.0} MiB) {:.1} MiB (+{held:.1}), cap lifted {:.1} MiB (+{would:.1})",
        mib(off.maxrss_kib),
        mib(capped.maxrss_kib),
        mib(uncapped.maxrss_kib),
    );
    if capped.wall > REWIND_WINDOW {
        println!(
            "the default run took {:.1}s, longer than the {REWIND_WINDOW:.0}s window: the window filled and its oldest entries aged out",
            capped.wall
        );
    } else {
        println!(
            "the default run took {:.1}s, less than the {REWIND_WINDOW:.0}s window: nothing aged out, the whole replay stayed in the window up to its cap",
            capped.wall
        );
    }
    if would > cap {
        println!(
            "uncapped, the window took ~{would:.0} MiB (> the {cap:.0} MiB cap): the cap was reached"
        );
    } else {
        println!(
            "uncapped, the window took ~{would:.0} MiB (<= the {cap:.0} MiB cap): the cap was not reached at this size; run more events to test it"
        );
    }
    println!(
        "target [rewind-default] peak RSS - off <= the {cap:.0} MiB cap: +{held:.1} MiB -> {}",
        verdict(held <= cap)
    );
    println!(
        "  (the cap counts the bytes of the keys and tags kept; RSS adds the allocator's share)"
    );
    if would > cap {
        println!(
            "target [rewind-default] the cap bounds the window: +{held:.1} MiB capped < +{would:.1} MiB uncapped -> {}",
            verdict(held < would)
        );
    }
}

fn main() {
    let mut only: Option<String> = None;
    let w = Workload::from_args(|a, args| {
        if a == "--only" {
            let v = args.next().expect("--only cluster|wait|rewind");
            assert!(
                ["cluster", "wait", "rewind"].contains(&v.as_str()),
                "--only cluster|wait|rewind, not {v}"
            );
            only = Some(v);
        }
    });
    let started = Instant::now();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bin = build_release(w.skip_build);
    let (tmp, events) = generate_in_tempdir("invalidator-topology-", &w);
    let ctx = Ctx {
        bin,
        events,
        tmp: tmp.path().to_owned(),
        products: w.products,
        plain: root.join("bench").join("rules-plain"),
        shipped: root.join("rules"),
    };
    let sections: [(&str, Section); 3] = [
        ("cluster", cluster_section),
        ("wait", wait_section),
        ("rewind", rewind_section),
    ];
    let mut took = Vec::new();
    for (name, section) in sections {
        if only.as_ref().is_some_and(|o| o != name) {
            continue;
        }
        let t = Instant::now();
        section(&ctx);
        took.push(format!("{name} {:.0}s", t.elapsed().as_secs_f64()));
    }
    println!(
        "\ntotal {:.0}s ({})",
        started.elapsed().as_secs_f64(),
        took.join(", ")
    );
}
