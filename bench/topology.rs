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
mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::{
    build_release, config_toml, field, generate_events, prefill_commands, redis_cli, redis_cpu,
    replay_command, run_child,
};
use invalidator::apply::redis::slot;

const SLOTS: usize = 16384;
/// The default `failover_rewind_max_bytes`.
const REWIND_CAP: u64 = 64 << 20;
/// The default `failover_rewind`, in seconds.
const REWIND_WINDOW: f64 = 30.0;

fn cli(port: u16, args: &[&str]) -> String {
    redis_cli(&["-p", &port.to_string()], args)
}

/// `name:value` of an `INFO` text.
fn info<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// `$ program args...`, an empty argument shown as `""`.
fn shown(program: &str, args: &[&str]) -> String {
    let mut s = format!("$ {program}");
    for a in args {
        s.push(' ');
        s.push_str(if a.is_empty() { "\"\"" } else { a });
    }
    s
}

fn mib(kib: i64) -> f64 {
    kib as f64 / 1024.0
}

/// The `redis-server`s this benchmark started: killed (and reaped) when dropped, also during a
/// panic's unwinding.
struct Servers {
    dir: PathBuf,
    children: Vec<(u16, Child)>,
}

impl Servers {
    fn new(dir: &Path) -> Servers {
        Servers {
            dir: dir.to_owned(),
            children: Vec::new(),
        }
    }

    /// Starts a `redis-server` on a free port (and, for a Cluster node, a free bus port at
    /// port + 10000) in a directory of its own, and waits until it answers `PING`. A port taken
    /// meanwhile by someone else makes it try another.
    fn start(&mut self, name: &str, extra: &[&str]) -> u16 {
        let cluster = extra.contains(&"--cluster-enabled");
        for _ in 0..10 {
            let port = free_port(cluster);
            let dir = self.dir.join(format!("{name}-{port}"));
            std::fs::create_dir_all(&dir).unwrap();
            let port_s = port.to_string();
            let dir_s = dir.to_string_lossy().into_owned();
            let mut args = vec![
                "--port",
                &port_s,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &dir_s,
            ];
            args.extend_from_slice(extra);
            let log = File::create(dir.join("redis.log")).unwrap();
            let mut child = Command::new("redis-server")
                .args(&args)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("redis-server on PATH");
            let t = Instant::now();
            let up = loop {
                if child.try_wait().unwrap().is_some() {
                    break false;
                }
                let pong = Command::new("redis-cli")
                    .args(["-p", &port_s, "PING"])
                    .stderr(Stdio::null())
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG")
                    .unwrap_or(false);
                if pong {
                    break true;
                }
                if t.elapsed() > Duration::from_secs(20) {
                    let _ = child.kill();
                    let _ = child.wait();
                    break false;
                }
                sleep(Duration::from_millis(50));
            };
            if up {
                println!("{}   # {name}", shown("redis-server", &args));
                self.children.push((port, child));
                return port;
            }
            let log = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
            eprintln!(
                "redis-server on {port} did not start, trying another port:\n{}",
                log.lines().rev().take(5).collect::<Vec<_>>().join("\n")
            );
        }
        panic!("could not start redis-server {name}");
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A loopback port nobody listens on now; for a Cluster node, port + 10000 too (its bus).
fn free_port(cluster: bool) -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("binding a loopback port")
            .port();
        if !cluster {
            return port;
        }
        if let Some(bus) = port.checked_add(10000)
            && TcpListener::bind(("127.0.0.1", bus)).is_ok()
        {
            return port;
        }
    }
}

/// The primaries (ports, in order) of the Cluster `port` belongs to, and the index of the owner
/// of every slot, from `CLUSTER NODES`.
fn cluster_owners(port: u16) -> (Vec<u16>, Vec<usize>) {
    let text = cli(port, &["CLUSTER", "NODES"]);
    let mut primaries: Vec<(u16, Vec<(usize, usize)>)> = Vec::new();
    for line in text.lines() {
        // <id> <ip:port@cport> <flags> <master> <ping> <pong> <epoch> <link> <slot ranges>...
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 || !f[2].split(',').any(|x| x == "master") {
            continue;
        }
        let addr = f[1].split('@').next().unwrap();
        let p: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
        let ranges = f[8..]
            .iter()
            .filter(|r| !r.starts_with('[')) // slots importing or migrating
            .map(|r| {
                let (a, b) = r.split_once('-').unwrap_or((r, r));
                (a.parse().unwrap(), b.parse().unwrap())
            })
            .collect();
        primaries.push((p, ranges));
    }
    primaries.sort();
    let mut owners = vec![usize::MAX; SLOTS];
    for (i, (_, ranges)) in primaries.iter().enumerate() {
        for &(a, b) in ranges {
            owners[a..=b].iter_mut().for_each(|o| *o = i);
        }
    }
    assert!(
        owners.iter().all(|&o| o != usize::MAX),
        "some slots have no owner:\n{text}"
    );
    (primaries.into_iter().map(|(p, _)| p).collect(), owners)
}

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
    let mut pipes = common::Pipes::start(&targets, route);
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
    let mut calls = calls(primaries);
    let redis_cpu = cpu(primaries) - before;
    for (name, n) in &mut calls {
        *n -= calls_before.get(name).copied().unwrap_or(0);
    }
    // Our own `INFO commandstats` (the first one) counts in the second.
    if let Some(n) = calls.get_mut("info") {
        *n = n.saturating_sub(primaries.len() as u64);
    }
    calls.retain(|_, n| *n > 0);
    let mut calls: Vec<(String, u64)> = calls.into_iter().collect();
    calls.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let (keys_left, keys_no_ttl) = keyspace(primaries);
    for l in child.stdout.lines() {
        println!("    {l}");
    }
    let stderr =
        std::fs::read_to_string(ctx.tmp.join(format!("{label}.stderr"))).unwrap_or_default();
    if !stderr.trim().is_empty() {
        let lines: Vec<&str> = stderr.lines().collect();
        println!("  stderr ({} lines), the first ones:", lines.len());
        for l in lines.iter().take(5) {
            println!("    {l}");
        }
    }
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

/// Keys, and keys without a TTL, summed over `ports` (`INFO keyspace`: `db0:keys=N,expires=M,...`).
fn keyspace(ports: &[u16]) -> (u64, u64) {
    let (mut keys, mut expires) = (0, 0);
    for &p in ports {
        let text = cli(p, &["INFO", "keyspace"]);
        let Some(db0) = info(&text, "db0") else {
            continue;
        };
        for kv in db0.split(',') {
            match kv.split_once('=') {
                Some(("keys", v)) => keys += v.parse::<u64>().unwrap_or(0),
                Some(("expires", v)) => expires += v.parse::<u64>().unwrap_or(0),
                _ => {}
            }
        }
    }
    (keys, keys - expires)
}

/// Calls of each command (`INFO commandstats`), summed over `ports`.
fn calls(ports: &[u16]) -> BTreeMap<String, u64> {
    let mut calls = BTreeMap::new();
    for &p in ports {
        // cmdstat_unlink:calls=123,usec=...
        for line in cli(p, &["INFO", "commandstats"]).lines() {
            let Some((name, rest)) = line
                .strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            let n = rest
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            *calls.entry(name.to_owned()).or_default() += n;
        }
    }
    calls
}

fn table(runs: &[Run]) {
    println!(
        "{:<18} {:>8} {:>8} {:>10} {:>12} {:>10} {:>10} {:>11} {:>11} {:>12} {:>9} {:>4}",
        "run",
        "events",
        "wall s",
        "events/s",
        "keys removed",
        "keys left",
        "no TTL",
        "child CPU s",
        "Redis CPU s",
        "peak RSS",
        "shortfall",
        "exit"
    );
    for r in runs {
        println!(
            "{:<18} {:>8} {:>8.2} {:>10.0} {:>12} {:>10} {:>10} {:>11.2} {:>11.2} {:>8.1} MiB {:>9} {:>4}",
            r.label,
            r.events,
            r.wall,
            r.eps(),
            r.keys_removed,
            r.keys_left,
            r.keys_no_ttl,
            r.cpu,
            r.redis_cpu,
            mib(r.maxrss_kib),
            r.wait_shortfalls,
            r.exit
        );
    }
}

fn verdict(met: bool) -> &'static str {
    if met { "MET" } else { "MISSED" }
}

/// 1. One redis-server against a 3-primary Cluster.
fn cluster_section(ctx: &Ctx) {
    println!("\n== 1. Cluster (3 primaries) vs a single redis-server ==");
    let mut servers = Servers::new(&ctx.tmp);
    let single = servers.start("single", &[]);
    let nodes: Vec<u16> = (1..=3)
        .map(|i| {
            servers.start(
                &format!("cluster-{i}"),
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                ],
            )
        })
        .collect();
    let addrs: Vec<String> = nodes.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut args = vec!["--cluster", "create"];
    args.extend(addrs.iter().map(String::as_str));
    args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
    println!("{}", shown("redis-cli", &args));
    let out = Command::new("redis-cli")
        .args(&args)
        .output()
        .expect("redis-cli on PATH");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("All 16384 slots covered"),
        "redis-cli --cluster create failed:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = Instant::now();
    for &p in &nodes {
        while info(&cli(p, &["CLUSTER", "INFO"]), "cluster_state") != Some("ok") {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "cluster_state not ok on {p}"
            );
            sleep(Duration::from_millis(100));
        }
    }
    println!(
        "cluster_state:ok on every node after {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let (primaries, owners) = cluster_owners(nodes[0]);
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
    println!();
    table(&runs);
    for pair in runs.chunks(2) {
        let [s, c] = pair else { continue };
        let ratio = c.eps() / s.eps();
        println!(
            "target [{}] cluster events/s >= 0.8 x single: {:.0} / {:.0} = {ratio:.2}x -> {}",
            c.label,
            c.eps(),
            s.eps(),
            verdict(ratio >= 0.8)
        );
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
    }
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
    println!();
    table(&runs);
    for pair in runs.chunks(2) {
        let [w0, w1] = pair else { continue };
        let ratio = w1.eps() / w0.eps();
        println!(
            "target [{}] wait_replicas=1 at most 20% slower than 0: {:.0} / {:.0} = {ratio:.2}x -> {}",
            w1.label,
            w1.eps(),
            w0.eps(),
            verdict(ratio >= 0.8)
        );
        println!(
            "target [{}] wait shortfalls = 0: {} -> {}",
            w1.label,
            w1.wait_shortfalls,
            verdict(w1.wait_shortfalls == 0 && w1.exit == 0)
        );
    }
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
    let mut n_events: u64 = 1_000_000;
    let mut products: u64 = 300_000;
    let mut skip_build = false;
    let mut only: Option<String> = None;
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
            "--only" => {
                let v = args.next().expect("--only cluster|wait|rewind");
                assert!(
                    ["cluster", "wait", "rewind"].contains(&v.as_str()),
                    "--only cluster|wait|rewind, not {v}"
                );
                only = Some(v);
            }
            _ => {} // `cargo bench` passes --bench
        }
    }
    let started = Instant::now();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bin = build_release(skip_build);
    let tmp = tempfile::Builder::new()
        .prefix("invalidator-topology-")
        .tempdir()
        .unwrap();
    let events = tmp.path().join("events.jsonl");
    let t = Instant::now();
    let counts = generate_events(&events, n_events, products).unwrap();
    println!(
        "generated {n_events} events ({:.1} MiB) in {:.2}s: price {} / inventory {} / product {} / promotion {} / review {}; {products} products",
        std::fs::metadata(&events).unwrap().len() as f64 / 1048576.0,
        t.elapsed().as_secs_f64(),
        counts[0],
        counts[1],
        counts[2],
        counts[3],
        counts[4]
    );
    let ctx = Ctx {
        bin,
        events,
        tmp: tmp.path().to_owned(),
        products,
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
