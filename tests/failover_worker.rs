//! Fault tests of `invalidator run` (the Kafka worker) across a Redis failover, Jepsen-style: the
//! nemeses of tests/failover.rs (a frozen replica whose link is cut, the primary killed mid-drain
//! and the stale replica promoted: behind an endpoint, by a Sentinel, or by a Redis Cluster
//! takeover), a checker over every acknowledged event (the committed offsets reach the end of
//! every partition, and none of the events' keys is left on the new primary) and a control.
//!
//! The controls turn both protections off explicitly with [`CONTROL`] (`failover_rewind = "0s"`,
//! `wait_replicas = 0`), since `failover_rewind` is on by default. On a binary without the failover
//! settings (which refuses them as unknown keys), `CONTROL = ""` runs the controls as they are.
//! The `WAIT` variants set `failover_rewind = "0s"` so that the `WAIT` alone is proven.
//!
//! The N events are produced first, then the worker starts and the fault lands mid-drain. Every
//! test has its own servers (tests/common/topology.rs), topic, group, key prefix and HTTP port.
//! Needs the Kafka-protocol broker of the other worker tests (`bash scripts/tansu.sh`).

mod common;

use std::time::{Duration, Instant};

use common::kafka::{Msg, Stream, Worker, free_port};
use common::topology::{
    CONTROL, Cluster, Proxy, REWIND, Sentinels, Server, WAIT, count_existing, freeze, seed, until,
};

/// Keys seeded, one event each.
const N: usize = 20_000;
const PARTITIONS: i32 = 2;
/// Small units, few at a time, so that the drain lasts long enough for a fault in its middle.
const UNITS: &str = "batch_size = 20\nmax_in_flight = 1\n";

/// One test's stream of the N price events (event i deletes `P:price:{i}`), produced before the
/// worker starts, and their keys.
struct Drain {
    s: Stream,
    keys: Vec<String>,
}

impl std::ops::Deref for Drain {
    type Target = Stream;

    fn deref(&self) -> &Stream {
        &self.s
    }
}

impl Drain {
    /// Creates the topic and produces the N events.
    fn new() -> Drain {
        let s = Stream::prices(PARTITIONS);
        let keys = (0..N).map(|i| s.w.k(&format!("P:price:{i}"))).collect();
        let msgs: Vec<Msg> = (0..N)
            .map(|i| {
                Msg::json(
                    (i % PARTITIONS as usize) as i32,
                    format!(r#"{{"type":"price.updated","id":"e-{i}","data":{{"sku":"{i}"}}}}"#),
                )
            })
            .collect();
        s.produce(0..N, &msgs);
        Drain { s, keys }
    }

    /// `invalidator run` with `redis` as the body of `[redis]`.
    fn start(&self, redis: &str) -> Worker {
        let port = free_port();
        let config = self
            .s
            .config_with(&self.w.config_text_with_redis(redis), port, UNITS);
        Worker::start(&self.w, "worker", &config, port)
    }
}

/// What one run showed.
struct Verdict {
    /// The committed offsets reached the end of every partition after the fault.
    drained: bool,
    /// With `WAIT`: the committed offsets while every replica was frozen.
    committed_before: Vec<i64>,
    deleted_before: usize,
    stale: usize,
    failovers: f64,
    rewound: f64,
    shortfalls: f64,
    logs: String,
}

impl Verdict {
    /// Prints the run as `name`, then checks it with `check`.
    fn check(self, name: &str, check: fn(&Verdict)) {
        self.print(name);
        check(&self);
    }

    fn print(&self, name: &str) {
        eprintln!(
            "{name}: drained {}, committed while frozen {:?}, deleted on the old primary before the kill: {}, \
             stale on the new primary: {}, failovers {}, rewound actions {}, wait shortfalls {}",
            self.drained,
            self.committed_before,
            self.deleted_before,
            self.stale,
            self.failovers,
            self.rewound,
            self.shortfalls
        );
    }

    /// The checker: everything committed, none of the keys left.
    fn protected(&self) {
        assert!(
            self.drained,
            "the worker must ride through the failover and commit every event:\n{}",
            self.logs
        );
        assert_eq!(
            self.stale, 0,
            "{} keys of committed events are still on the new primary",
            self.stale
        );
    }

    fn rewound(&self) {
        self.protected();
        assert!(self.failovers >= 1.0, "invalidator_redis_failovers_total");
        assert!(
            self.rewound >= 1.0,
            "invalidator_redis_rewind_actions_total"
        );
    }

    /// With every replica frozen, nothing was committed before the failover.
    fn waited(&self) {
        self.protected();
        assert!(
            self.shortfalls >= 1.0,
            "invalidator_redis_wait_shortfall_total"
        );
        assert!(
            self.committed_before.iter().all(|&o| o < 0),
            "offsets {:?} committed while no replica had the deletes",
            self.committed_before
        );
    }

    fn control(&self) {
        assert!(
            self.drained,
            "the control must ride through the failover too:\n{}",
            self.logs
        );
        assert!(
            self.stale > 0,
            "the control lost no invalidation ({} deleted on the old primary before the kill): the \
             nemesis missed, the checker proves nothing",
            self.deleted_before
        );
    }
}

/// Waits (at most 60 s: the worker joins its group first) until the drain is under way on
/// `primary`: half of `keys` gone, or with `WAIT` a first unit applied and a second and a half of
/// shortfalls (the committed offsets are read then). Returns the keys deleted so far, read last,
/// just before the caller's kill, and the committed offsets.
fn wait_mid_drain(
    s: &Drain,
    worker: &mut Worker,
    primary: &Server,
    keys: usize,
    wait: bool,
) -> (usize, Vec<i64>) {
    let mut c = primary.conn();
    let mut left = keys as i64;
    let target = if wait { keys - 1 } else { keys / 2 };
    let mut exited = None;
    let ok = until(Duration::from_secs(60), || {
        exited = worker.child.try_wait().ok().flatten();
        left = redis::cmd("DBSIZE").query(&mut c).unwrap_or(left);
        left <= target as i64 || exited.is_some()
    });
    assert!(
        exited.is_none(),
        "the worker exited ({exited:?}) before the fault:\n{}",
        worker.logs()
    );
    assert!(ok, "no progress on the primary:\n{}", worker.logs());
    let mut committed = Vec::new();
    if wait {
        std::thread::sleep(Duration::from_millis(1500));
        committed = s.committed();
        // Readiness says why nothing moves (once a unit's retry budget, 2 s, ran out).
        let mut ready = None;
        let said = until(Duration::from_secs(10), || {
            ready = worker.get("/readyz");
            matches!(&ready, Some((503, body)) if body.contains("WAIT"))
        });
        assert!(said, "/readyz while every replica is frozen: {ready:?}");
    }
    left = redis::cmd("DBSIZE").query(&mut c).unwrap_or(left);
    assert!(
        left > 0,
        "the worker drained everything before the fault: make the drain longer"
    );
    (keys - left as usize, committed)
}

/// After the fault: waits until the committed offsets reach the end, reads the metrics, counts
/// the stale keys with `stale`, stops the worker.
fn verdict(
    s: &Drain,
    mut worker: Worker,
    fault: Instant,
    committed_before: Vec<i64>,
    deleted_before: usize,
    stale: impl FnOnce() -> usize,
) -> Verdict {
    let ends = s.ends();
    let drained = until(Duration::from_secs(60), || s.committed() == ends);
    eprintln!(
        "committed {:?} of {:?} {:.1} s after the fault",
        s.committed(),
        ends,
        fault.elapsed().as_secs_f64()
    );
    let v = Verdict {
        drained,
        committed_before,
        deleted_before,
        stale: stale(),
        // (+ 0.0: an empty sum is -0.)
        failovers: worker.metric("invalidator_redis_failovers_total") + 0.0,
        rewound: worker.metric("invalidator_redis_rewind_actions_total") + 0.0,
        shortfalls: worker.metric("invalidator_redis_wait_shortfall_total") + 0.0,
        logs: worker.logs(),
    };
    worker.signal(libc::SIGTERM);
    worker.wait(Duration::from_secs(15));
    v
}

// ---------------------------------------------------------------------------------------------
// A. A primary endpoint (a TCP proxy) switched to a promoted replica.

/// With `replicas = 2` (the `WAIT` variant) the second replica follows the promoted one.
fn endpoint_switch(protection: &str, replicas: usize) -> Verdict {
    let s = Drain::new();
    let p = Server::start();
    let rs: Vec<Server> = (0..replicas).map(|_| Server::start()).collect();
    for r in &rs {
        r.replica_of(&p);
    }
    seed(&p, &rs.iter().collect::<Vec<_>>(), &s.keys);
    let proxy = Proxy::start(&p.addr());
    freeze(&p, &rs.iter().collect::<Vec<_>>());

    let mut worker = s.start(&format!("url = \"{}\"\n{protection}", proxy.url()));
    let (deleted_before, committed_before) = wait_mid_drain(&s, &mut worker, &p, N, replicas > 1);
    let fault = Instant::now();
    p.kill9();
    for r in &rs {
        r.cont();
    }
    rs[0].promote();
    for r in &rs[1..] {
        r.replica_of(&rs[0]);
    }
    proxy.switch(&rs[0].addr());
    verdict(&s, worker, fault, committed_before, deleted_before, || {
        count_existing(&mut rs[0].conn(), &s.keys)
    })
}

#[test]
fn worker_endpoint_switch_with_rewind_leaves_no_stale_key() {
    endpoint_switch(REWIND, 1).check("worker, endpoint switch, rewind", Verdict::rewound);
}

#[test]
fn worker_endpoint_switch_with_wait_leaves_no_stale_key() {
    endpoint_switch(WAIT, 2).check("worker, endpoint switch, WAIT", Verdict::waited);
}

#[test]
fn worker_endpoint_switch_control_leaves_stale_keys() {
    endpoint_switch(CONTROL, 1).check("worker, endpoint switch, control", Verdict::control);
}

// ---------------------------------------------------------------------------------------------
// B. Sentinel promotes the frozen replica (resumed right after the kill: see tests/failover.rs).

fn sentinel(protection: &str) -> Verdict {
    let s = Drain::new();
    let p = Server::start();
    let r = Server::start();
    r.replica_of(&p);
    seed(&p, &[&r], &s.keys);
    let sentinels = Sentinels::start(1, &p, &[&r]);
    freeze(&p, &[&r]);

    let mut worker = s.start(&format!("{}{protection}", sentinels.config()));
    let (deleted_before, committed_before) = wait_mid_drain(&s, &mut worker, &p, N, false);
    let fault = Instant::now();
    p.kill9();
    r.cont();
    let new = sentinels.wait_new_master(&p, Duration::from_secs(30));
    assert_eq!(new, r.port, "the Sentinel promoted the replica");
    verdict(&s, worker, fault, committed_before, deleted_before, || {
        count_existing(&mut r.conn(), &s.keys)
    })
}

#[test]
fn worker_sentinel_failover_with_rewind_leaves_no_stale_key() {
    sentinel(REWIND).check("worker, sentinel, rewind", Verdict::rewound);
}

#[test]
fn worker_sentinel_failover_control_leaves_stale_keys() {
    sentinel(CONTROL).check("worker, sentinel, control", Verdict::control);
}

// ---------------------------------------------------------------------------------------------
// C. Redis Cluster: the frozen replica of one primary takes its slots over.

/// With `restart_old` (the `WAIT` variant), the killed primary is started again after the
/// takeover and rejoins as a replica of the new one. `orphaned`: how long the killed primary's
/// slots stay without one before the takeover (the replica is resumed at once).
fn cluster_takeover(protection: &str, restart_old: bool, orphaned: Duration) -> Verdict {
    let s = Drain::new();
    let c = Cluster::start();
    c.set_all(&s.keys);
    c.wait_replicas_synced();
    let p1 = c.owner_of(&s.keys[0]);
    let r1 = c.replica_of(p1);
    let own = c.by_owner(&s.keys)[&p1.port].len();
    freeze(p1, &[r1]);

    let mut worker = s.start(&format!("{}{protection}", c.config()));
    let (deleted_before, committed_before) = wait_mid_drain(&s, &mut worker, p1, own, restart_old);
    let fault = Instant::now();
    p1.kill9();
    r1.cont();
    std::thread::sleep(orphaned);
    c.takeover(r1);
    if restart_old {
        p1.restart();
    }
    verdict(&s, worker, fault, committed_before, deleted_before, || {
        c.count_existing(&s.keys)
    })
}

#[test]
fn worker_cluster_takeover_with_rewind_leaves_no_stale_key() {
    cluster_takeover(REWIND, false, Duration::ZERO)
        .check("worker, cluster takeover, rewind", Verdict::rewound);
}

#[test]
fn worker_cluster_takeover_with_wait_leaves_no_stale_key() {
    cluster_takeover(WAIT, true, Duration::ZERO)
        .check("worker, cluster takeover, WAIT", Verdict::waited);
}

#[test]
fn worker_cluster_takeover_control_leaves_stale_keys() {
    cluster_takeover(CONTROL, false, Duration::ZERO)
        .check("worker, cluster takeover, control", Verdict::control);
}

/// Slots without a primary for a second, as in a real automatic failover (node timeout, then the
/// election). With full replay units this hung the cluster client (see
/// `cluster_takeover_with_full_units_after_a_second_without_a_primary_rides_through` in
/// tests/failover.rs); the worker's units of 20 events rode through it already.
#[test]
fn worker_cluster_takeover_after_a_second_without_a_primary_rides_through() {
    cluster_takeover(REWIND, false, Duration::from_secs(1)).check(
        "worker, cluster takeover after 1 s without a primary, rewind",
        Verdict::rewound,
    );
}
