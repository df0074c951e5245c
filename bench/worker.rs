//! Kafka worker benchmark: `cargo bench --bench worker -- [--events N] [--rate R] [--seconds S]
//! [--skip-build] [--drain-only | --latency-only]`.
//!
//! Needs a Kafka-protocol broker on `KAFKA_BROKERS` (default 127.0.0.1:19092: `scripts/tansu.sh`
//! starts Tansu there) and Redis on 127.0.0.1:6379. Only Redis DB 7 is written.
//!
//! 1. Drain: produces N `price.updated` events (default 1,000,000) for N distinct products to a new
//!    2-partition topic and prefills `price:{id}` for each. Then, on the same backlog:
//!    - a bare rdkafka consumer that does nothing with the messages drains the topic (the broker's
//!      limit on this machine);
//!    - `target/release/invalidator run` (one `delete` of `price:{product_id}`) drains it in a new
//!      group, first with librdkafka's own `fetch.queue.backoff.ms` (1 s, the control), then as
//!      shipped, on the keys prefilled again; its rate is measured from its first to its last
//!      key removed (`DBSIZE`), and its peak RSS (`VmHWM`) and CPU are read before it stops;
//!    - `invalidator replay` of the same events from a file, with the same rules, on the keys
//!      prefilled again: the worker's drain is held to it (issue 16: at least 0.8 of it);
//!    - CPU per event of the three: the worker's against the replay's plus the bare consumer's
//!      (what the Kafka client alone costs per message, which replay does not pay);
//!    - how busy the machine's cores were during the worker's drain and the replay (`/proc/stat`),
//!      with Redis's and the broker's CPU, and from them the drain / replay ratio that a worker of
//!      no overhead of its own (replay's CPU plus the bare consumer's, an event) could reach with
//!      every core busy: on a machine that runs Redis and the broker too, the ceiling of the ratio.
//! 2. Latency: a fresh topic and a running worker; events are produced at a steady R events/s (default
//!    5,000) for S seconds (default 10), each deleting its own key. Redis keyspace notifications
//!    (`__keyevent@7__:del`) tell when each key was removed; latency = removal − produce call.
//!    Prints p50, p99 and max.

#[path = "common/mod.rs"]
#[allow(dead_code)] // each benchmark uses a part of it
mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::Producer as _;

use common::args::each_arg;
use common::kafka::{
    PARTITIONS, Producer, bare_consumer, create_topic, local_broker_pid, producer, send,
};
use common::measure::{
    Busy, BusyFrom, build_release, config_toml, cpu_seconds, mib, replay_command, run_child,
    verdict,
};
use common::redis::Pipes;
use common::worker::Worker;

const DB: &str = "7";

fn redis_cli(args: &[&str]) -> String {
    common::redis::redis_cli(&["-n", DB], args)
}

/// SET {prefix}price:{id} v for every id in `ids`, through `redis-cli -n 7 --pipe`.
fn prefill(prefix: &str, ids: std::ops::Range<u64>) {
    let mut pipes = Pipes::start(&[vec!["-n".into(), DB.into()]], |_| 0);
    for id in ids {
        pipes
            .send(&["SET", &format!("{prefix}price:{id}"), "v"])
            .unwrap();
    }
    pipes.finish();
}

fn event(id: u64) -> String {
    format!(
        r#"{{"type":"price.updated","id":"b-{id}","source":"bench","data":{{"product_id":{id},"sku":"S-{id}","new_price":9.9}}}}"#
    )
}

/// A bare consumer drains the `n` events of `topic`: its events/s, and the CPU seconds this process
/// spent meanwhile (the Kafka client's own cost of `n` messages, which replay does not pay).
fn bare_drain(topic: &str, n: u64) -> (f64, f64) {
    let cpu_before = cpu_seconds(std::process::id());
    let c: BaseConsumer = bare_consumer("bare")
        .set("queued.max.messages.kbytes", "16384")
        .create()
        .expect("consumer");
    c.subscribe(&[topic]).unwrap();
    let mut got = 0u64;
    let mut first: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    while got < n && Instant::now() < deadline {
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m.expect("message");
            std::hint::black_box(m.payload());
            first.get_or_insert_with(Instant::now);
            got += 1;
        }
    }
    assert_eq!(got, n, "bare consumer drained everything");
    let rate = got as f64 / first.unwrap().elapsed().as_secs_f64();
    (rate, cpu_seconds(std::process::id()) - cpu_before)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn main() {
    let mut n: u64 = 1_000_000;
    let mut rate: u64 = 5_000;
    let mut seconds: u64 = 10;
    let (mut drain, mut latency) = (true, true);
    // `fetch.wait.max.ms` of every consumer of the latency part. Tansu answers a waiting fetch late
    // (p99 about 270 ms at librdkafka's default of 500 here), so the floor and our worker are both
    // measured with the same, lower value.
    let mut fetch_wait_ms: u64 = 10;
    // Measure the `target/release/invalidator` in place (another build's, copied there) as it is.
    let mut skip_build = false;
    each_arg(|a, args| match a {
        "--events" => n = args.number("--events N"),
        "--rate" => rate = args.number("--rate R"),
        "--seconds" => seconds = args.number("--seconds S"),
        "--latency-only" => drain = false,
        "--drain-only" => latency = false,
        "--fetch-wait-ms" => fetch_wait_ms = args.number("--fetch-wait-ms MS"),
        "--skip-build" => skip_build = true,
        _ => {}
    });
    let bin = build_release(skip_build);
    let tmp = tempfile::Builder::new()
        .prefix("invalidator-wbench-")
        .tempdir()
        .unwrap();
    redis_cli(&["FLUSHDB"]);

    if drain {
        drain_bench(&bin, tmp.path(), n);
    }
    if latency {
        let steady = (rate, seconds, fetch_wait_ms);
        println!("latency at {rate} events/s for {seconds}s, fetch.wait.max.ms = {fetch_wait_ms}:");
        latency_bench(&bin, tmp.path(), steady, true);
        latency_bench(&bin, tmp.path(), steady, false);
    }
    redis_cli(&["FLUSHDB"]);
}

/// Part 1, drain: the same backlog, by a bare consumer and by `invalidator run`.
fn drain_bench(bin: &Path, tmp: &Path, n: u64) {
    let topic = format!("wbench-{:08x}", rand::random::<u32>());
    create_topic(&topic);
    let t = Instant::now();
    prefill("", 0..n);
    println!(
        "prefilled {n} keys in DB {DB} in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let p = producer("20");
    for id in 0..n {
        send(&p, &topic, id, &event(id));
    }
    p.flush(Duration::from_secs(300)).expect("flush");
    println!(
        "produced {n} events to {topic} ({PARTITIONS} partitions) in {:.1}s ({:.0}/s)",
        t.elapsed().as_secs_f64(),
        n as f64 / t.elapsed().as_secs_f64()
    );
    let (bare, bare_cpu) = bare_drain(&topic, n);
    println!("bare rdkafka consumer: {bare:.0} events/s; {bare_cpu:.2} s CPU");

    // Control: librdkafka's own `fetch.queue.backoff.ms` (1 s), which the worker sets to 50 ms.
    let control = "\"fetch.queue.backoff.ms\" = \"1000\"";
    let slow = worker_drain(bin, tmp, &topic, n, control);
    println!(
        "invalidator run, control with fetch.queue.backoff.ms = 1000: {:.0} events/s; {:.2} s CPU",
        slow.rate, slow.cpu
    );
    prefill("", 0..n);
    let ours = worker_drain(bin, tmp, &topic, n, "");
    let left: u64 = redis_cli(&["DBSIZE"]).parse().unwrap_or(0);
    println!(
        "invalidator run: {:.0} events/s ({left} keys left in DB {DB}); ratio to the bare consumer {:.2}; {:.2} s CPU",
        ours.rate,
        ours.rate / bare,
        ours.cpu
    );
    println!("  from its first to its last key removed: {}", ours.machine);
    match ours.broker_cpu {
        Some(b) => println!(
            "the broker's CPU from the worker's start to its last event: {b:.2} s (same cores)"
        ),
        None => println!("the broker's CPU: not a process of this machine"),
    }
    println!(
        "peak RSS of invalidator run over the {n}-event backlog: {:.1} MiB",
        ours.rss_kib as f64 / 1024.0
    );
    let (replayed, replay_cpu) = replay_same(bin, tmp, &topic, n);
    println!(
        "worker drain / replay: {:.2} (goal >= 0.8: {})",
        ours.rate / replayed,
        verdict(ours.rate / replayed >= 0.8)
    );
    cpu_per_event(&ours, (replayed, replay_cpu), bare_cpu, n);
}

/// The CPU per event of the worker, the replay and the bare consumer, and the drain / replay
/// ratio a worker of no overhead of its own (the replay's CPU plus the bare consumer's, an event)
/// could reach on this machine's cores beside Redis and the broker, were all of them busy.
fn cpu_per_event(ours: &Drain, (replayed, replay_cpu): (f64, f64), bare_cpu: f64, n: u64) {
    let per = |cpu: f64| cpu / n as f64 * 1e6;
    let redis_per = ours.machine.redis / ours.machine.events.max(1) as f64;
    let broker_per = ours.broker_cpu.unwrap_or(0.0) / n as f64;
    let least = (replay_cpu + bare_cpu) / n as f64 + redis_per + broker_per;
    let ceiling = ours.machine.cores as f64 / least;
    println!(
        "a worker of no own overhead, all {} cores busy: at most {ceiling:.0} events/s \
         (replay {:.2} + bare consumer {:.2} + Redis {:.2} + broker {:.2} us CPU an event), \
         drain / replay at most {:.2}",
        ours.machine.cores,
        per(replay_cpu),
        per(bare_cpu),
        redis_per * 1e6,
        broker_per * 1e6,
        ceiling / replayed
    );
    println!(
        "CPU per event: worker {:.2} us, replay {:.2} us, bare consumer {:.2} us; \
         worker / (replay + bare consumer) {:.2}",
        per(ours.cpu),
        per(replay_cpu),
        per(bare_cpu),
        ours.cpu / (replay_cpu + bare_cpu)
    );
}

/// What a drain of [`worker_drain`] measured.
struct Drain {
    /// Events/s from the worker's first to its last key removed (Redis `DBSIZE`, every 20 ms).
    rate: f64,
    /// The worker's CPU seconds.
    cpu: f64,
    /// The worker's peak RSS.
    rss_kib: u64,
    /// The CPU seconds a broker of this machine spent from the worker's start to its last event.
    broker_cpu: Option<f64>,
    /// From the first to the last key removed: the machine's cores busy and stolen on average,
    /// and Redis's CPU seconds.
    machine: Busy,
}

/// `invalidator run` with `properties` drains the `n` events of `topic` in a new group.
fn worker_drain(bin: &Path, tmp: &Path, topic: &str, n: u64, properties: &str) -> Drain {
    let broker = local_broker_pid();
    let broker_before = broker.map(cpu_seconds);
    let worker = Worker::start(bin, tmp, topic, DB, "", properties);
    // Progress is read from Redis (the prefilled keys left), not from the worker's `/metrics`:
    // rendering it every 20 ms was 5% of the worker's CPU in a drain, which a scrape every 15 s
    // does not cost in production.
    let mut redis = redis::Client::open(format!("redis://127.0.0.1:6379/{DB}"))
        .and_then(|c| c.get_connection())
        .expect("connect to Redis");
    let mut left = || redis::cmd("DBSIZE").query::<u64>(&mut redis).unwrap_or(n);
    // When the first key went, how many had, and the machine's counts from then on.
    let mut first: Option<(Instant, u64, BusyFrom)> = None;
    let until = Instant::now() + Duration::from_secs(1800);
    loop {
        let removed = n - left().min(n);
        if removed > 0 && first.is_none() {
            first = Some((Instant::now(), removed, Busy::start(&["-n", DB])));
        }
        if removed == n || Instant::now() > until {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (at, count, machine) = first.expect("the worker removed keys");
    let elapsed = at.elapsed().as_secs_f64();
    let machine = machine.since(n - count);
    // The last unit counts its events a moment after its keys went.
    let counted = Instant::now() + Duration::from_secs(10);
    let mut done = worker.events_done();
    while done < n as f64 && Instant::now() < counted {
        std::thread::sleep(Duration::from_millis(20));
        done = worker.events_done();
    }
    assert!(done >= n as f64, "the worker applied {done} of {n} events");
    let broker_cpu = broker.zip(broker_before).map(|(p, b)| cpu_seconds(p) - b);
    let (rss_kib, cpu) = (worker.peak_rss_kib(), cpu_seconds(worker.child.id()));
    worker.stop();
    Drain {
        rate: (n - count) as f64 / elapsed,
        cpu,
        rss_kib,
        broker_cpu,
        machine,
    }
}

/// The events of [`drain_bench`] replayed from a file with the worker's rule, on the keys prefilled
/// again: what the worker is held to. Its rate, events/s, and its CPU seconds.
fn replay_same(bin: &Path, tmp: &Path, topic: &str, n: u64) -> (f64, f64) {
    let events = tmp.join(format!("{topic}.jsonl"));
    let mut text = String::with_capacity(n as usize * 120);
    for id in 0..n {
        text.push_str(&event(id));
        text.push('\n');
    }
    std::fs::write(&events, text).unwrap();
    prefill("", 0..n);
    let config = tmp.join("replay.toml");
    let redis = format!("url = \"redis://127.0.0.1:6379/{DB}\"");
    std::fs::write(&config, config_toml(&redis)).unwrap();
    let rules = tmp.join(format!("rules-{topic}"));
    let machine = Busy::start(&["-n", DB]);
    let run = run_child(
        replay_command(bin, &config, &rules, &events, false),
        "replay",
        tmp,
    );
    let machine = machine.since(n);
    assert_eq!(run.exit, 0, "the replay ran");
    let replayed = n as f64 / run.wall;
    println!(
        "invalidator replay of the same events and rules: {replayed:.0} events/s, {:.2} s CPU, peak RSS {:.1} MiB",
        run.cpu,
        mib(run.maxrss_kib)
    );
    println!("  over its run: {machine}");
    (replayed, run.cpu)
}

/// When each event (by id) was seen at the end of its path: its key removed, or its message
/// arrived at a bare consumer.
type Seen = Arc<Mutex<HashMap<u64, Instant>>>;

/// Part 2, latency at a steady rate: to the key's removal by `invalidator run` (Redis keyspace
/// notifications), or, with `bare`, to the message's arrival at a bare consumer (the broker's own
/// floor on this machine).
fn latency_bench(
    bin: &Path,
    tmp: &Path,
    (rate, seconds, fetch_wait_ms): (u64, u64, u64),
    bare: bool,
) {
    redis_cli(&["FLUSHDB"]);
    let topic = format!("wlat-{:08x}", rand::random::<u32>());
    create_topic(&topic);
    let total = rate * seconds;
    let old_notify = redis_cli(&["CONFIG", "GET", "notify-keyspace-events"]);
    let removed: Seen = Arc::default();
    let mut worker = None;
    let listener = if bare {
        bare_listener(&topic, fetch_wait_ms, seconds, total, removed.clone())
    } else {
        prefill("lat:", 0..total);
        redis_cli(&["CONFIG", "SET", "notify-keyspace-events", "Eg"]);
        let w = Worker::start(
            bin,
            tmp,
            &topic,
            DB,
            "lat:",
            &format!("\"fetch.wait.max.ms\" = \"{}\"\n", fetch_wait_ms),
        );
        w.wait_ready();
        // Let the group settle (first fetch issued) before the clock starts.
        std::thread::sleep(Duration::from_secs(2));
        worker = Some(w);
        removal_listener(total, removed.clone())
    };
    std::thread::sleep(Duration::from_millis(200));
    let (p, sent_at) = produce_steady(&topic, rate, total);
    listener.join().unwrap();
    if let Some(w) = worker {
        stop_worker(w, &old_notify);
    }
    let what = if bare {
        "arrival at a bare consumer"
    } else {
        "key removed"
    };
    let removed = removed.lock().unwrap();
    let acked = p.context().0.lock().unwrap();
    let report = |from_what: &str, from: &dyn Fn(u64) -> Option<Instant>| {
        let mut lat: Vec<f64> = (0..total)
            .filter_map(|id| {
                let r = removed.get(&id)?;
                Some(r.saturating_duration_since(from(id)?).as_secs_f64() * 1000.0)
            })
            .collect();
        lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "latency {from_what} → {what} at {rate} events/s for {seconds}s ({} of {total} observed): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            lat.len(),
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            lat.last().copied().unwrap_or(f64::NAN)
        );
    };
    report("produce call", &|id| sent_at.get(id as usize).copied());
    report("broker ack", &|id| acked.get(&id).copied());
}

/// Prints the worker's own share of the latency, stops it and sets `notify-keyspace-events` back
/// to what `CONFIG GET` read (`old_notify`).
fn stop_worker(w: Worker, old_notify: &str) {
    if let Some((p50, p99, units)) = w.unit_seconds() {
        println!(
            "the worker's own share (invalidator_unit_seconds, unit intake to done, {units} units): \
             p50 ≤ {:.0} ms, p99 ≤ {:.0} ms (histogram bucket bounds)",
            p50 * 1000.0,
            p99 * 1000.0
        );
    }
    w.stop();
    let _ = redis_cli(&[
        "CONFIG",
        "SET",
        "notify-keyspace-events",
        old_notify.lines().nth(1).unwrap_or(""),
    ]);
}

/// A bare consumer of `topic`, assigned before this returns, that records in `seen` when each of
/// the `total` messages arrives (for at most `seconds` + 30 s).
fn bare_listener(
    topic: &str,
    fetch_wait_ms: u64,
    seconds: u64,
    total: u64,
    seen: Seen,
) -> std::thread::JoinHandle<()> {
    let c: BaseConsumer = bare_consumer("bare-lat")
        .set("fetch.wait.max.ms", fetch_wait_ms.to_string())
        .create()
        .expect("consumer");
    c.subscribe(&[topic]).unwrap();
    while c.assignment().map(|a| a.count()).unwrap_or(0) == 0 {
        c.poll(Duration::from_millis(100));
    }
    std::thread::spawn(move || {
        let mut n = 0;
        let until = Instant::now() + Duration::from_secs(seconds + 30);
        while n < total && Instant::now() < until {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                let at = Instant::now();
                let id = m
                    .key()
                    .and_then(|k| std::str::from_utf8(k).ok()?.parse().ok());
                if let Some(id) = id {
                    seen.lock().unwrap().insert(id, at);
                    n += 1;
                }
            }
        }
    })
}

/// Records in `removed` when each of the `total` keys `lat:price:{id}` is deleted from DB 7
/// (keyspace notifications `__keyevent@7__:del`; gives up after 5 s without one).
fn removal_listener(total: u64, removed: Seen) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let client = redis::Client::open("redis://127.0.0.1:6379/7").unwrap();
        let mut con = client.get_connection().unwrap();
        let mut ps = con.as_pubsub();
        ps.subscribe(format!("__keyevent@{DB}__:del")).unwrap();
        ps.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut seen = 0;
        while seen < total {
            let Ok(msg) = ps.get_message() else { break };
            let at = Instant::now();
            let key: String = msg.get_payload().unwrap_or_default();
            if let Some(id) = key.strip_prefix("lat:price:").and_then(|s| s.parse().ok()) {
                removed.lock().unwrap().insert(id, at);
                seen += 1;
            }
        }
    })
}

/// Produces events 0..`total` to `topic` at `rate` events/s; returns the producer (its context
/// holds the broker's acknowledgements) and when each send call was made.
fn produce_steady(topic: &str, rate: u64, total: u64) -> (Producer, Vec<Instant>) {
    let p = producer("1");
    let mut sent_at = Vec::with_capacity(total as usize);
    let start = Instant::now();
    for id in 0..total {
        let due = start + Duration::from_secs_f64(id as f64 / rate as f64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        sent_at.push(Instant::now());
        send(&p, topic, id, &event(id));
        p.poll(Duration::ZERO);
    }
    let sent_by = start.elapsed();
    p.flush(Duration::from_secs(30)).expect("flush");
    println!(
        "producer: last send call at {:.2}s, all acknowledged at {:.2}s",
        sent_by.as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
    (p, sent_at)
}
