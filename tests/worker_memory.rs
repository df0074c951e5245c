//! The Kafka worker's memory while Redis stalls: `[kafka] max_in_flight_bytes` bounds the payload
//! bytes its units in flight and the batch being filled hold (`invalidator_in_flight_bytes`).
//!
//! Each test has its own `redis-server`, frozen (SIGSTOP) once the worker is ready and thawed
//! after a while. The worker waits up to a minute for a reply (`response_timeout`), so the stall
//! reads as a slow Redis, not an outage: nothing pauses fetching, and the units pile up until a
//! bound stops them. Large events (500 kB, within the 1 MiB `max_event_bytes`) are produced
//! during the stall; `/metrics` is read every 50 ms throughout. After the thaw every event must be
//! applied and committed. The control is the same stall with a budget too large to bind, and
//! the peak RSS (`VmHWM`) is printed for both (docs/operations.md quotes the figures).
//! Needs the Kafka-protocol broker of the other worker tests (`bash scripts/tansu.sh`).

mod common;

use std::time::{Duration, Instant};

use common::kafka::{Msg, Stream, Worker, free_port};
use common::topology::{Server, count_existing, set_all};

/// The payload of each event, about: a `price.updated` event padded with `data.pad`.
const EVENT_BYTES: usize = 500_000;
const MIB: f64 = (1 << 20) as f64;
const GAUGE: &str = "invalidator_in_flight_bytes";

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// What a stall showed.
struct Stall {
    /// The highest `invalidator_in_flight_bytes` seen, during the stall and the drain after it.
    max_held: f64,
    /// The worker's peak RSS (`VmHWM`, KiB) at the end of the stall, and after the drain.
    hwm_stalled: u64,
    hwm_drained: u64,
    /// Units tried again for an outage (`invalidator_unit_retries_total`).
    retries: f64,
}

/// Event `i`: deletes `P:price:{i}`, padded to about [`EVENT_BYTES`].
fn big_event(i: usize) -> String {
    let head = format!(r#"{{"type":"price.updated","id":"e-{i}","data":{{"sku":"{i}","pad":""#);
    let pad = "x".repeat(EVENT_BYTES - head.len() - 3);
    format!("{head}{pad}\"}}}}")
}

/// `VmHWM` of process `pid`, in KiB.
fn vm_hwm(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// Freezes the worker's Redis, produces `n` large events, watches the gauge for `settle` after
/// the last one, thaws Redis and expects every event applied and committed. `response_timeout`:
/// how long the worker waits for Redis to answer (a minute: a slow Redis; less than the stall: an
/// outage, which pauses fetching and retries the units).
fn stall(name: &str, n: usize, response_timeout: &str, extra_kafka: &str) -> Stall {
    let settle = secs(5);
    let s = Stream::prices(2);
    let redis = Server::start();
    let mut c = redis.conn();
    let keys: Vec<String> = (0..n).map(|i| s.w.k(&format!("P:price:{i}"))).collect();
    set_all(&mut c, &keys);
    let port = free_port();
    let redis_section = format!(
        "url = \"{}\"\nresponse_timeout = \"{response_timeout}\"\nconnect_timeout = \"500ms\"\n",
        redis.url()
    );
    let config = s.config_with(
        &s.w.config_text_with_redis(&redis_section),
        port,
        extra_kafka,
    );
    let worker = Worker::start(&s.w, name, &config, port);
    worker.expect_within(secs(60), "ready", || worker.ready());
    redis.stop();
    let topic = s.topic.clone();
    let producer = std::thread::spawn(move || {
        let msgs: Vec<Msg> = (0..n)
            .map(|i| Msg::json((i % 2) as i32, big_event(i)))
            .collect();
        common::kafka::produce(&topic, &msgs)
    });
    let mut max_held = 0f64;
    let mut watch = || max_held = max_held.max(worker.metric(GAUGE));
    while !producer.is_finished() {
        watch();
        std::thread::sleep(Duration::from_millis(50));
    }
    let settled = Instant::now() + settle;
    while Instant::now() < settled {
        watch();
        std::thread::sleep(Duration::from_millis(50));
    }
    let hwm_stalled = vm_hwm(worker.child.id());
    redis.cont();
    s.produced(0..n, &producer.join().unwrap());
    worker.expect_within(secs(120), "every event applied after Redis thawed", || {
        watch();
        count_existing(&mut c, &keys) == 0
    });
    worker.expect_within(secs(20), "everything committed", || s.all_committed());
    assert_eq!(
        worker.metric("invalidator_dlq_total"),
        0.0,
        "nothing dead-lettered"
    );
    let stalled = Stall {
        max_held,
        hwm_stalled,
        hwm_drained: vm_hwm(worker.child.id()),
        retries: worker.metric("invalidator_unit_retries_total"),
    };
    eprintln!(
        "{name}: {n} events of {EVENT_BYTES} B, [kafka] {}: most held {:.1} MiB; VmHWM {:.0} MiB at \
         the end of the stall, {:.0} MiB after the drain",
        extra_kafka.trim().replace('\n', ", "),
        stalled.max_held / MIB,
        stalled.hwm_stalled as f64 / 1024.0,
        stalled.hwm_drained as f64 / 1024.0,
    );
    stalled
}

impl Stall {
    /// At most the 4 MiB budget was held, and at least half of it: the stall did fill the budget
    /// (the test sees what it bounds).
    fn held_within_a_filled_4mib_budget(&self) {
        assert!(
            self.max_held <= 4.0 * MIB,
            "held {} bytes, over the 4 MiB budget",
            self.max_held
        );
        assert!(
            self.max_held >= 2.0 * MIB,
            "held only {} bytes",
            self.max_held
        );
    }
}

#[test]
fn a_small_budget_bounds_what_a_stall_holds_and_nothing_is_lost() {
    let s = stall(
        "budget-4mib",
        120,
        "60s",
        "max_in_flight_bytes = \"4MiB\"\n",
    );
    s.held_within_a_filled_4mib_budget();
}

/// The stall as an outage (replies time out after 500 ms): the units fail and are retried, fetching
/// is paused, and the consumer, polled meanwhile to stay in the group, brings nothing over the
/// budget.
#[test]
fn a_small_budget_holds_through_an_outage_too() {
    let s = stall(
        "outage-4mib",
        60,
        "500ms",
        "max_in_flight_bytes = \"4MiB\"\n",
    );
    assert!(s.retries >= 1.0, "the stall was not an outage");
    s.held_within_a_filled_4mib_budget();
}

/// Control: the same stall with a budget that does not bind holds far more than the small budget
/// above allows, so that test would see a budget that did nothing.
#[test]
fn control_a_budget_that_does_not_bind_lets_a_stall_hold_far_more() {
    let s = stall(
        "budget-1gib",
        200,
        "60s",
        "max_in_flight_bytes = \"1GiB\"\n",
    );
    assert!(
        s.max_held >= 16.0 * MIB,
        "held only {} bytes without a binding budget",
        s.max_held
    );
}

/// The default budget (64 MiB) under a backlog larger than it and librdkafka's queue (16 MiB):
/// the bound holds, and the peak RSS is the figure docs/operations.md quotes.
#[test]
fn the_default_budget_bounds_a_large_backlog() {
    let s = stall("budget-default", 200, "60s", "");
    assert!(
        s.max_held <= 64.0 * MIB,
        "held {} bytes, over the 64 MiB default",
        s.max_held
    );
    assert!(s.max_held >= 32.0 * MIB, "held only {} bytes", s.max_held);
}
