//! Fault tests of `invalidator replay` across a Redis failover, Jepsen-style: a nemesis, a checker,
//! a control.
//!
//! - **Nemesis.** A replica is frozen (SIGSTOP) and its replication link cut before the replay
//!   starts (`CLIENT KILL TYPE replica`: with a SIGSTOP alone, the kernel's socket buffers, about
//!   half a MB on loopback, would still carry the first writes to the replica, which applies them
//!   when it resumes), so the primary acknowledges every delete while the replica gets none.
//!   Halfway through the replay the primary is killed (`kill -9`) and the stale replica becomes the
//!   primary: behind an endpoint (a TCP proxy, `REPLICAOF NO ONE`, the endpoint switched and its
//!   connections dropped), promoted by a Sentinel, or by `CLUSTER FAILOVER TAKEOVER` in a Redis
//!   Cluster.
//! - **Checker.** The replay exits 0, so every event was acknowledged: none of its keys may be left
//!   on the new primary (0 stale keys).
//! - **Control.** The same run without the protection must leave stale keys, so that the checker is
//!   seen to fail. The controls turn both protections off explicitly with [`CONTROL`]
//!   (`failover_rewind = "0s"`, `wait_replicas = 0`), since `failover_rewind` is on by default.
//!   On a binary without the failover settings (which refuses them as unknown keys),
//!   `CONTROL = ""` runs the controls as they are.
//!
//! The protections (`[redis]` of invalidator.toml): `failover_rewind` (when the primary behind the
//! connection changes, the invalidations of the last 30 s are applied again on the new one before
//! anything more is acknowledged) and `wait_replicas` (`WAIT` after each unit; a shortfall is an
//! outage: the unit is applied again, to whatever is primary then, and never acknowledged). The
//! `WAIT` variants set `failover_rewind = "0s"` so that the `WAIT` alone is proven.
//!
//! Every test starts its own servers (tests/common/topology.rs: own ports, temp dirs, killed on
//! drop) and uses its own key prefix, so the tests run in parallel. Counts are printed (`eprintln`)
//! so that a failure reads as a history.

mod common;

use std::time::{Duration, Instant};

use common::topology::{
    CONTROL, Cluster, Proxy, REWIND, Sentinels, Server, WAIT, count_existing, freeze, seed, until,
};
use common::{Run, Spawned, World, summary_count};

/// Keys seeded, one event each: 20,000, or `FAILOVER_KEYS` (BENCHMARKS.md's runs at 1,000,000).
fn n() -> usize {
    std::env::var("FAILOVER_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

/// Events per second (`--rate`): the replay lasts about 5 s.
fn rate() -> String {
    (n() / 5).to_string()
}

/// How long the replay may take from the fault to its exit: it rides through in seconds.
const RIDE_THROUGH: Duration = Duration::from_secs(60);

/// One test's world, keys and input file (event i deletes `P:price:{i}`).
struct Workload {
    w: World,
    keys: Vec<String>,
}

impl Workload {
    fn new() -> Workload {
        let w = World::new().with_rules("rules/delete_price.yaml");
        let keys = (0..n()).map(|i| w.k(&format!("P:price:{i}"))).collect();
        let lines: Vec<String> = (0..n())
            .map(|i| format!(r#"{{"type":"price.updated","id":"e-{i}","data":{{"sku":"{i}"}}}}"#))
            .collect();
        w.lines("events.jsonl", &lines);
        Workload { w, keys }
    }

    /// `invalidator replay --rate {n/5} events.jsonl` in the background, with `redis` as the body
    /// of `[redis]` (plus a 30 s `retry_for`).
    fn replay(&self, redis: &str) -> Spawned {
        let config = self
            .w
            .config_text_with_redis(&format!("{redis}retry_for = \"30s\"\n"));
        let input = self.w.path("events.jsonl").display().to_string();
        let dlq = self.w.path("dlq.jsonl").display().to_string();
        self.w.spawn_bin(
            "replay",
            &config,
            &["replay", "--rate", &rate(), "--dlq", &dlq, &input],
        )
    }
}

/// Waits (at most 20 s) until `cond` holds while the replay runs; panics with its output if it
/// exits first.
fn wait_while_running(replay: &mut Spawned, what: &str, mut cond: impl FnMut() -> bool) {
    let ok = until(Duration::from_secs(20), || cond() || !replay.running());
    assert!(
        replay.running(),
        "the replay ended before {what}:\n{}\n{}",
        replay.stdout(),
        replay.stderr()
    );
    assert!(ok, "no {what} within 20 s:\n{}", replay.stderr());
}

/// Waits for the replay's exit after the fault (at most [`RIDE_THROUGH`]).
fn finish(replay: &mut Spawned, fault: Instant) -> Run {
    let run = replay.wait(RIDE_THROUGH).unwrap_or_else(|| {
        panic!(
            "the replay did not finish within {RIDE_THROUGH:?} of the failover (on a Redis \
             Cluster, see cluster_takeover_with_full_units_after_a_second_...):\n{}",
            replay.stderr()
        )
    });
    eprintln!(
        "replay exited {} {:.1} s after the fault",
        run.code,
        fault.elapsed().as_secs_f64()
    );
    run
}

/// Waits for the replay's exit after the fault, then counts the `stale` keys on the new primary.
fn verdict(
    replay: &mut Spawned,
    fault: Instant,
    deleted_before: usize,
    stale: impl FnOnce() -> usize,
) -> Verdict {
    let run = finish(replay, fault);
    Verdict {
        run,
        deleted_before,
        stale: stale(),
    }
}

/// What one run showed.
struct Verdict {
    run: Run,
    /// Keys deleted on the old primary before it was killed.
    deleted_before: usize,
    /// Keys of acknowledged events still on the new primary.
    stale: usize,
}

impl Verdict {
    /// Prints the run as `name`, then checks it with `check`.
    fn check(self, name: &str, check: fn(&Verdict)) {
        self.print(name);
        check(&self);
    }

    fn print(&self, name: &str) {
        eprintln!(
            "{name}: exit {}, deleted on the old primary before the kill: {}, stale on the new primary: {}, \
             failovers: {:?}, rewound actions: {:?}, wait shortfalls: {:?}",
            self.run.code,
            self.deleted_before,
            self.stale,
            summary_count(&self.run.stdout, "failovers"),
            summary_count(&self.run.stdout, "rewound actions"),
            summary_count(&self.run.stdout, "wait shortfalls"),
        );
    }

    /// The checker: every event acknowledged (exit 0), none of their keys left.
    fn protected(&self) {
        assert_eq!(
            self.run.code, 0,
            "the replay must ride through the failover:\n{}\n{}",
            self.run.stdout, self.run.stderr
        );
        assert_eq!(
            self.stale, 0,
            "{} keys of acknowledged events are still on the new primary:\n{}",
            self.stale, self.run.stdout
        );
    }

    /// The checker after a rewind: it also saw the failover and applied actions again.
    fn rewound(&self) {
        self.protected();
        assert!(
            self.run.count("failovers") >= 1,
            "failover counted:\n{}",
            self.run.stdout
        );
        assert!(
            self.run.count("rewound actions") >= 1,
            "actions rewound:\n{}",
            self.run.stdout
        );
    }

    /// The checker after `WAIT`: shortfalls were seen while the replicas were frozen.
    fn waited(&self) {
        self.protected();
        assert!(
            self.run.count("wait shortfalls") >= 1,
            "shortfalls counted:\n{}",
            self.run.stdout
        );
    }

    /// The control: the run itself succeeded, and the checker fails on it.
    fn control(&self) {
        assert_eq!(
            self.run.code, 0,
            "the control must ride through the failover too:\n{}\n{}",
            self.run.stdout, self.run.stderr
        );
        assert!(
            self.stale > 0,
            "the control lost no invalidation ({} deleted on the old primary before the kill): the \
             nemesis missed, the checker proves nothing",
            self.deleted_before
        );
    }
}

/// Waits, while the replay runs, until it made progress on `primary`: half of `keys` gone, or with
/// `WAIT` (where nothing is acknowledged while the replicas are frozen) a first unit applied and
/// a second and a half of shortfalls.
fn wait_mid_run(replay: &mut Spawned, primary: &Server, keys: usize, wait: bool) -> usize {
    let mut c = primary.conn();
    let mut left = keys as i64;
    let target = if wait { keys - 1 } else { keys / 2 };
    wait_while_running(replay, "progress on the primary", || {
        left = redis::cmd("DBSIZE").query(&mut c).unwrap_or(left);
        left <= target as i64
    });
    if wait {
        std::thread::sleep(Duration::from_millis(1500));
        assert!(
            replay.running(),
            "the replay ended while every replica was frozen: WAIT acknowledged nothing?\n{}",
            replay.stdout()
        );
        left = redis::cmd("DBSIZE").query(&mut c).unwrap_or(left);
    }
    keys - left as usize
}

// ---------------------------------------------------------------------------------------------
// A. A primary endpoint (a TCP proxy) switched to a promoted replica.

fn endpoint_switch(protection: &str) -> Verdict {
    let wl = Workload::new();
    let p = Server::start();
    let r = Server::start();
    r.replica_of(&p);
    seed(&p, &[&r], &wl.keys);
    let proxy = Proxy::start(&p.addr());
    freeze(&p, &[&r]);

    let mut replay = wl.replay(&format!("url = \"{}\"\n{protection}", proxy.url()));
    let deleted_before = wait_mid_run(&mut replay, &p, n(), false);
    let fault = Instant::now();
    p.kill9();
    r.cont();
    r.promote();
    proxy.switch(&r.addr());
    verdict(&mut replay, fault, deleted_before, || {
        count_existing(&mut r.conn(), &wl.keys)
    })
}

#[test]
fn endpoint_switch_with_rewind_leaves_no_stale_key() {
    endpoint_switch(REWIND).check("endpoint switch, rewind", Verdict::rewound);
}

#[test]
fn endpoint_switch_control_leaves_stale_keys() {
    endpoint_switch(CONTROL).check("endpoint switch, control", Verdict::control);
}

/// A-WAIT: two frozen replicas; the replay stalls (nothing acknowledged) until the failover, after
/// which one replica is promoted and the other follows it, so `WAIT 1` is met again.
#[test]
fn endpoint_switch_with_wait_leaves_no_stale_key() {
    let wl = Workload::new();
    let p = Server::start();
    let r1 = Server::start();
    let r2 = Server::start();
    r1.replica_of(&p);
    r2.replica_of(&p);
    seed(&p, &[&r1, &r2], &wl.keys);
    let proxy = Proxy::start(&p.addr());
    freeze(&p, &[&r1, &r2]);

    let mut replay = wl.replay(&format!("url = \"{}\"\n{WAIT}", proxy.url()));
    let deleted_before = wait_mid_run(&mut replay, &p, n(), true);
    let fault = Instant::now();
    p.kill9();
    r1.cont();
    r2.cont();
    r1.promote();
    r2.replica_of(&r1);
    proxy.switch(&r1.addr());
    verdict(&mut replay, fault, deleted_before, || {
        count_existing(&mut r1.conn(), &wl.keys)
    })
    .check("endpoint switch, WAIT", Verdict::waited);
}

// ---------------------------------------------------------------------------------------------
// B. Sentinel promotes the frozen replica.
//
// Sentinel promotes a replica only if it answered within the last 5 s, its `INFO` is fresh and it
// is not subjectively down. A replica still frozen when the failover starts (the primary seen
// down for `down-after-milliseconds`, 1 s) is skipped: `-failover-abort-no-good-slave`, and the
// next attempt comes only after twice the `failover-timeout` (measured here: resumed 4 s after the
// kill, promoted 12.3 s after it). So the nemesis resumes the replicas (SIGCONT) right after the
// kill: they answer again before the Sentinel even sees the primary down, report their link down
// (from then on the Sentinel refreshes their `INFO` every second), and their
// `master_link_down_since` starts when they resume, far under the `10 × down-after` limit. The
// frozen replica, stale as it is, is then promoted about 2 s after the kill.

/// The Sentinel topology: P, the replicas (1, or 2 with `WAIT`), one Sentinel.
struct SentinelSetup {
    wl: Workload,
    p: Server,
    replicas: Vec<Server>,
    sentinels: Sentinels,
}

fn sentinel_setup(replicas: usize) -> SentinelSetup {
    let wl = Workload::new();
    let p = Server::start();
    let replicas: Vec<Server> = (0..replicas).map(|_| Server::start()).collect();
    for r in &replicas {
        r.replica_of(&p);
    }
    let refs: Vec<&Server> = replicas.iter().collect();
    seed(&p, &refs, &wl.keys);
    let sentinels = Sentinels::start(1, &p, &refs);
    SentinelSetup {
        wl,
        p,
        replicas,
        sentinels,
    }
}

impl SentinelSetup {
    /// Freezes the replicas, replays with `redis` lines, and mid-run kills P and resumes the
    /// replicas at once; returns the replay, the keys deleted before the kill, the fault's time
    /// and the port of the new primary.
    fn run(&self, redis: &str, wait: bool) -> (Spawned, usize, Instant, u16) {
        let refs: Vec<&Server> = self.replicas.iter().collect();
        freeze(&self.p, &refs);
        let mut replay = self.wl.replay(redis);
        let deleted_before = wait_mid_run(&mut replay, &self.p, n(), wait);
        let fault = Instant::now();
        self.p.kill9();
        for r in &self.replicas {
            r.cont();
        }
        let new = self
            .sentinels
            .wait_new_master(&self.p, Duration::from_secs(30));
        eprintln!(
            "the Sentinel promoted port {new} {:.1} s after the kill",
            fault.elapsed().as_secs_f64()
        );
        // The Sentinel points the other replicas at the new primary.
        for r in self.replicas.iter().filter(|r| r.port != new) {
            r.wait_synced(self.server(new));
        }
        (replay, deleted_before, fault, new)
    }

    fn server(&self, port: u16) -> &Server {
        self.replicas
            .iter()
            .find(|r| r.port == port)
            .unwrap_or_else(|| panic!("port {port} is not one of the replicas"))
    }
}

fn sentinel(protection: &str, replicas: usize) -> Verdict {
    let s = sentinel_setup(replicas);
    let (mut replay, deleted_before, fault, new) = s.run(
        &format!("{}{protection}", s.sentinels.config()),
        replicas > 1,
    );
    verdict(&mut replay, fault, deleted_before, || {
        count_existing(&mut s.server(new).conn(), &s.wl.keys)
    })
}

#[test]
fn sentinel_failover_with_rewind_leaves_no_stale_key() {
    sentinel(REWIND, 1).check("sentinel, rewind", Verdict::rewound);
}

/// Two frozen replicas: the Sentinel promotes one and points the other at it, so `WAIT 1` is met.
#[test]
fn sentinel_failover_with_wait_leaves_no_stale_key() {
    sentinel(WAIT, 2).check("sentinel, WAIT", Verdict::waited);
}

#[test]
fn sentinel_failover_control_leaves_stale_keys() {
    sentinel(CONTROL, 1).check("sentinel, control", Verdict::control);
}

/// B behind an endpoint: the Sentinel promotes the replica and the endpoint (the proxy) follows
/// the Sentinel's new master, as a Sentinel-driven virtual IP or HAProxy does; the invalidator
/// knows only the endpoint's URL.
fn sentinel_endpoint(protection: &str) -> Verdict {
    let s = sentinel_setup(1);
    let proxy = Proxy::start(&s.p.addr());
    let (mut replay, deleted_before, fault, new) =
        s.run(&format!("url = \"{}\"\n{protection}", proxy.url()), false);
    proxy.switch(&s.server(new).addr());
    verdict(&mut replay, fault, deleted_before, || {
        count_existing(&mut s.server(new).conn(), &s.wl.keys)
    })
}

#[test]
fn sentinel_behind_an_endpoint_with_rewind_leaves_no_stale_key() {
    sentinel_endpoint(REWIND).check("sentinel behind an endpoint, rewind", Verdict::rewound);
}

#[test]
fn sentinel_behind_an_endpoint_control_leaves_stale_keys() {
    sentinel_endpoint(CONTROL).check("sentinel behind an endpoint, control", Verdict::control);
}

// ---------------------------------------------------------------------------------------------
// C. Redis Cluster: the frozen replica of one primary takes its slots over.
//
// On a cluster each key of a unit is its own `UNLINK` (slots differ), so a replay unit of the
// default size (`--rate 4000`: 400 events) puts hundreds of commands in flight on the dying
// primary: that is the regression test at the end. The other cluster tests replay in units of 20
// events, so that each proves one thing, deterministically.

/// Replay units of 20 events.
const SMALL_UNITS: &str = "[replay]\nbatch_size = 20\n";

/// `units`: extra config (`SMALL_UNITS` or ""). With `restart_old`, the killed primary is started
/// again after the takeover: it rejoins as a replica of the new one, so that `WAIT 1` is met on
/// its slots. `orphaned`: how long the killed primary's slots stay without one before the
/// takeover (the replica is resumed at once).
fn cluster_takeover(
    protection: &str,
    units: &str,
    restart_old: bool,
    orphaned: Duration,
) -> Verdict {
    let mut wl = Workload::new();
    wl.w.extra_config = units.to_owned();
    let c = Cluster::start();
    c.set_all(&wl.keys);
    c.wait_replicas_synced();
    let p1 = c.owner_of(&wl.keys[0]);
    let r1 = c.replica_of(p1);
    let own = c.by_owner(&wl.keys)[&p1.port].len();
    eprintln!(
        "primary {} owns {own} of the {} keys; its replica {} is frozen",
        p1.port,
        n(),
        r1.port
    );
    freeze(p1, &[r1]);

    let mut replay = wl.replay(&format!("{}{protection}", c.config()));
    let deleted_before = wait_mid_run(&mut replay, p1, own, restart_old);
    let fault = Instant::now();
    p1.kill9();
    r1.cont();
    std::thread::sleep(orphaned);
    c.takeover(r1);
    eprintln!(
        "node {} took the slots over {:.1} s after the kill",
        r1.port,
        fault.elapsed().as_secs_f64()
    );
    if restart_old {
        p1.restart();
    }
    verdict(&mut replay, fault, deleted_before, || {
        c.count_existing(&wl.keys)
    })
}

#[test]
fn cluster_takeover_with_rewind_leaves_no_stale_key() {
    cluster_takeover(REWIND, SMALL_UNITS, false, Duration::ZERO)
        .check("cluster takeover, rewind", Verdict::rewound);
}

#[test]
fn cluster_takeover_with_wait_leaves_no_stale_key() {
    cluster_takeover(WAIT, SMALL_UNITS, true, Duration::ZERO)
        .check("cluster takeover, WAIT", Verdict::waited);
}

#[test]
fn cluster_takeover_control_leaves_stale_keys() {
    cluster_takeover(CONTROL, SMALL_UNITS, false, Duration::ZERO)
        .check("cluster takeover, control", Verdict::control);
}

/// Regression: with units of the default size (hundreds of commands in flight on the primary
/// that dies) and its slots without a primary for a second, as in a real automatic failover
/// (node timeout, then the election), the binary's cluster client (redis-rs 1.8) hung: the slot
/// refresh begun when the primary died never ended, every command then timed out after about
/// 35 s, again and again, and the replay had not exited after 400 s (its `retry_for` counts the
/// backoff sleeps, not the attempts). It hung in 10 runs of 10 alone (once it rode through beside
/// another test); with the takeover at once, in about 1 run of 3 to 10; with units of 20 events,
/// never.
#[test]
fn cluster_takeover_with_full_units_after_a_second_without_a_primary_rides_through() {
    cluster_takeover(REWIND, "", false, Duration::from_secs(1)).check(
        "cluster takeover, full units, 1 s without a primary, rewind",
        Verdict::rewound,
    );
}
