//! Kafka worker benchmark: `cargo bench --bench worker -- [--events N] [--rate R] [--seconds S]`.
//!
//! Needs a Kafka-protocol broker on `KAFKA_BROKERS` (default 127.0.0.1:19092: `scripts/tansu.sh`
//! starts Tansu there) and Redis on 127.0.0.1:6379. Only Redis DB 7 is written.
//!
//! 1. Drain: produces N `price.updated` events (default 1,000,000) for N distinct products to a new
//!    2-partition topic and prefills `price:{id}` for each. Then, on the same backlog:
//!    - a bare rdkafka consumer that does nothing with the messages drains the topic (the broker's
//!      limit on this machine);
//!    - `target/release/invalidator run` (rules `bench/rules-plain/`) drains it in a new group; its
//!      rate is measured from its first to its last applied event (`/metrics`), and its peak RSS
//!      (`VmHWM`) is read before it is stopped.
//! 2. Latency: a fresh topic and a running worker; events are produced at a steady R events/s (default
//!    5,000) for S seconds (default 10), each deleting its own key. Redis keyspace notifications
//!    (`__keyevent@7__:del`) tell when each key was removed; latency = removal − produce call.
//!    Prints p50, p99 and max.

use std::collections::HashMap;
use std::io::{BufWriter, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer,
};

const DB: &str = "7";
const PARTITIONS: i32 = 2;

fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".to_owned())
}

fn redis_cli(args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-n", DB])
        .args(args)
        .output()
        .expect("redis-cli on PATH");
    assert!(out.status.success(), "redis-cli {args:?} failed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// SET price:{id} for every id in `ids`, through `redis-cli --pipe`.
fn prefill(prefix: &str, ids: std::ops::Range<u64>) {
    let mut child = Command::new("redis-cli")
        .args(["-n", DB, "--pipe"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("redis-cli on PATH");
    let mut w = BufWriter::with_capacity(1 << 20, child.stdin.take().unwrap());
    for id in ids {
        let key = format!("{prefix}price:{id}");
        write!(
            w,
            "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n$1\r\nv\r\n",
            key.len()
        )
        .unwrap();
    }
    w.flush().unwrap();
    drop(w);
    let out = child.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("errors: 0"));
}

fn create_topic(topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("admin client");
    let new = NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1));
    for r in futures::executor::block_on(admin.create_topics(&[new], &AdminOptions::new()))
        .expect("create_topics")
    {
        r.unwrap_or_else(|(t, e)| panic!("topic {t}: {e}"));
    }
}

/// Records when the broker acknowledged each event (by id).
#[derive(Default)]
struct Acks(Mutex<HashMap<u64, Instant>>);

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = Box<u64>;

    fn delivery(&self, result: &DeliveryResult<'_>, id: Box<u64>) {
        if result.is_ok() {
            self.0.lock().unwrap().insert(*id, Instant::now());
        }
    }
}

type Producer = ThreadedProducer<Acks>;

fn producer(linger_ms: &str) -> Producer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", linger_ms)
        .set("queue.buffering.max.messages", "1000000")
        .create_with_context(Acks::default())
        .expect("producer")
}

fn event(id: u64) -> String {
    format!(
        r#"{{"type":"price.updated","id":"b-{id}","source":"bench","data":{{"product_id":{id},"sku":"S-{id}","new_price":9.9}}}}"#
    )
}

fn send(p: &Producer, topic: &str, id: u64, payload: &str) {
    let key = id.to_string();
    let mut r = BaseRecord::with_opaque_to(topic, Box::new(id))
        .key(key.as_str())
        .payload(payload);
    loop {
        match p.send(r) {
            Ok(()) => return,
            Err((_, back)) => {
                p.poll(Duration::from_millis(5));
                r = back;
            }
        }
    }
}

fn bare_drain(topic: &str, n: u64) -> f64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("bare-{:08x}", rand::random::<u32>()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
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
    got as f64 / first.unwrap().elapsed().as_secs_f64()
}

struct Worker {
    child: Child,
    port: u16,
}

impl Worker {
    fn start(
        bin: &PathBuf,
        tmp: &std::path::Path,
        topic: &str,
        prefix: &str,
        properties: &str,
    ) -> Worker {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let rules = tmp.join(format!("rules-{topic}"));
        std::fs::create_dir_all(&rules).unwrap();
        std::fs::write(
            rules.join("plain.yaml"),
            format!(
                "rules:\n  - name: plain-price\n    on: price.updated\n    delete:\n      - {prefix}price:{{product_id}}\n"
            ),
        )
        .unwrap();
        let config = tmp.join(format!("{topic}.toml"));
        std::fs::write(
            &config,
            format!(
                "[redis]\nurl = \"redis://127.0.0.1:6379/{DB}\"\n\n[kafka]\nbrokers = \"{}\"\ngroup = \"w-{topic}\"\ntopics = [\"{topic}\"]\n\n\
                 [kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n{properties}\n[http]\nlisten = \"127.0.0.1:{port}\"\n",
                brokers()
            ),
        )
        .unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(&config)
            .arg("--rules")
            .arg(&rules)
            .arg("run")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(tmp.join(format!("{topic}.log"))).unwrap())
            .spawn()
            .expect("start invalidator run");
        Worker { child, port }
    }

    fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, text.split_once("\r\n\r\n")?.1.to_owned()))
    }

    /// Upper bounds of the buckets of `invalidator_unit_seconds` (intake of a unit to done)
    /// holding the 50th and 99th percentiles, and the number of units.
    fn unit_seconds(&self) -> Option<(f64, f64, f64)> {
        let (_, body) = self.get("/metrics")?;
        let buckets: Vec<(f64, f64)> = body
            .lines()
            .filter_map(|l| l.strip_prefix("invalidator_unit_seconds_bucket{le=\""))
            .filter_map(|l| {
                let (le, n) = l.split_once("\"} ")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, n.trim().parse().ok()?))
            })
            .collect();
        let total = buckets.last()?.1;
        let at = |q: f64| buckets.iter().find(|(_, n)| *n >= q * total).map(|b| b.0);
        Some((at(0.5)?, at(0.99)?, total))
    }

    fn events_done(&self) -> f64 {
        self.get("/metrics")
            .map(|(_, body)| {
                body.lines()
                    .filter(|l| l.starts_with("invalidator_events_total{"))
                    .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
                    .sum()
            })
            .unwrap_or(0.0)
    }

    fn wait_ready(&self) {
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            if matches!(self.get("/readyz"), Some((200, _))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the worker did not become ready");
    }

    fn peak_rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    fn stop(mut self) {
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn main() {
    let mut n: u64 = 1_000_000;
    let mut rate: u64 = 5_000;
    let mut seconds: u64 = 10;
    let mut drain = true;
    // `fetch.wait.max.ms` of every consumer of the latency part. Tansu answers a waiting fetch late
    // (p99 about 270 ms at librdkafka's default of 500 here), so the floor and our worker are both
    // measured with the same, lower value.
    let mut fetch_wait_ms: u64 = 10;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = || args.next().and_then(|v| v.parse().ok()).expect("a number");
        match a.as_str() {
            "--events" => n = num(),
            "--rate" => rate = num(),
            "--seconds" => seconds = num(),
            "--latency-only" => drain = false,
            "--fetch-wait-ms" => fetch_wait_ms = num(),
            _ => {}
        }
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_relative() { root.join(p) } else { p })
        .unwrap_or_else(|| root.join("target"));
    let bin = target.join("release").join("invalidator");
    println!("$ cargo build --release --bin invalidator");
    let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--bin", "invalidator"])
        .current_dir(&root)
        .status()
        .expect("running cargo");
    assert!(st.success());
    let tmp = tempfile::Builder::new()
        .prefix("invalidator-wbench-")
        .tempdir()
        .unwrap();
    redis_cli(&["FLUSHDB"]);

    if drain {
        drain_bench(&bin, tmp.path(), n);
    }
    let steady = (rate, seconds, fetch_wait_ms);
    println!("latency at {rate} events/s for {seconds}s, fetch.wait.max.ms = {fetch_wait_ms}:");
    latency_bench(&bin, tmp.path(), steady, true);
    latency_bench(&bin, tmp.path(), steady, false);
    redis_cli(&["FLUSHDB"]);
}

/// Part 1, drain: the same backlog, by a bare consumer and by `invalidator run`.
fn drain_bench(bin: &PathBuf, tmp: &std::path::Path, n: u64) {
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
    let bare = bare_drain(&topic, n);
    println!("bare rdkafka consumer: {bare:.0} events/s");

    let worker = Worker::start(bin, tmp, &topic, "", "");
    let mut first: Option<Instant> = None;
    let mut first_count = 0.0;
    let until = Instant::now() + Duration::from_secs(1800);
    let mut done = 0.0;
    while Instant::now() < until {
        done = worker.events_done();
        if done > 0.0 && first.is_none() {
            first = Some(Instant::now());
            first_count = done;
        }
        if done >= n as f64 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = first
        .expect("the worker applied events")
        .elapsed()
        .as_secs_f64();
    let ours = (done - first_count) / elapsed;
    let rss = worker.peak_rss_kib();
    let left: u64 = redis_cli(&["DBSIZE"]).parse().unwrap_or(0);
    worker.stop();
    println!(
        "invalidator run: {ours:.0} events/s ({done} events; {left} keys left in DB {DB}); ratio to the bare consumer {:.2}",
        ours / bare
    );
    println!(
        "peak RSS of invalidator run over the {n}-event backlog: {:.1} MiB",
        rss as f64 / 1024.0
    );
}

/// Part 2, latency at a steady rate: to the key's removal by `invalidator run` (Redis keyspace
/// notifications), or, with `bare`, to the message's arrival at a bare consumer (the broker's own
/// floor on this machine).
fn latency_bench(
    bin: &PathBuf,
    tmp: &std::path::Path,
    (rate, seconds, fetch_wait_ms): (u64, u64, u64),
    bare: bool,
) {
    redis_cli(&["FLUSHDB"]);
    let topic = format!("wlat-{:08x}", rand::random::<u32>());
    create_topic(&topic);
    let total = rate * seconds;
    let old_notify = redis_cli(&["CONFIG", "GET", "notify-keyspace-events"]);
    let removed: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let mut worker = None;
    let listener = if bare {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set(
                "group.id",
                format!("bare-lat-{:08x}", rand::random::<u32>()),
            )
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "6000")
            .set("fetch.wait.max.ms", fetch_wait_ms.to_string())
            .create()
            .expect("consumer");
        c.subscribe(&[&topic]).unwrap();
        while c.assignment().map(|a| a.count()).unwrap_or(0) == 0 {
            c.poll(Duration::from_millis(100));
        }
        let removed = removed.clone();
        std::thread::spawn(move || {
            let mut seen = 0;
            let until = Instant::now() + Duration::from_secs(seconds + 30);
            while seen < total && Instant::now() < until {
                if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                    let at = Instant::now();
                    let id = m
                        .key()
                        .and_then(|k| std::str::from_utf8(k).ok()?.parse().ok());
                    if let Some(id) = id {
                        removed.lock().unwrap().insert(id, at);
                        seen += 1;
                    }
                }
            }
        })
    } else {
        prefill("lat:", 0..total);
        redis_cli(&["CONFIG", "SET", "notify-keyspace-events", "Eg"]);
        let w = Worker::start(
            bin,
            tmp,
            &topic,
            "lat:",
            &format!("\"fetch.wait.max.ms\" = \"{}\"\n", fetch_wait_ms),
        );
        w.wait_ready();
        // Let the group settle (first fetch issued) before the clock starts.
        std::thread::sleep(Duration::from_secs(2));
        worker = Some(w);
        let removed = removed.clone();
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
    };
    std::thread::sleep(Duration::from_millis(200));
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
        send(&p, &topic, id, &event(id));
        p.poll(Duration::ZERO);
    }
    let sent_by = start.elapsed();
    p.flush(Duration::from_secs(30)).expect("flush");
    println!(
        "producer: last send call at {:.2}s, all acknowledged at {:.2}s",
        sent_by.as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
    listener.join().unwrap();
    if let Some(w) = worker {
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
