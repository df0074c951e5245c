//! `invalidator run` against a real Kafka-protocol broker (`KAFKA_BROKERS`, default the local Tansu
//! started by scripts/tansu.sh) and the real local Redis: the worker runs as a child process, as in
//! production, and is stopped with real signals.
//!
//! Every test uses its own topic, consumer group, key prefix and HTTP port.

mod common;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::kafka::{
    Msg, Worker, committed, create_topic, free_port, header, name, produce, read, wait_until,
    worker_config,
};
use common::{World, conn, redis_url};
use rdkafka::Message;

const RULES: &str =
    "rules:\n  - name: price\n    on: price.updated\n    delete:\n      - P:price:{sku}\n";

fn event(i: usize) -> String {
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    format!(r#"{{"type":"price.updated","id":"e-{i}","time":"{now}","data":{{"sku":"{i}"}}}}"#)
}

struct Setup {
    w: World,
    topic: String,
    group: String,
    partitions: i32,
    /// (partition, offset) → event number, from the delivery reports.
    sent: RefCell<BTreeMap<(i32, i64), usize>>,
}

fn setup(partitions: i32) -> Setup {
    let w = World::new();
    w.rules("price.yaml", RULES);
    let topic = name("it");
    create_topic(&topic, partitions);
    Setup {
        w,
        topic: topic.clone(),
        group: name("g"),
        partitions,
        sent: RefCell::default(),
    }
}

impl Setup {
    fn config(&self, port: u16, extra_kafka: &str) -> String {
        format!(
            "{}\n{}",
            self.w.config_text(),
            worker_config(&self.group, &self.topic, port, extra_kafka)
        )
    }

    fn start(&self, name: &str, extra_kafka: &str) -> Worker {
        let port = free_port();
        Worker::start(&self.w, name, &self.config(port, extra_kafka), port)
    }

    /// Seeds `P:price:{i}` for every i and produces event i to partition i % partitions.
    fn seed_and_produce(&self, c: &mut redis::Connection, range: std::ops::Range<usize>) {
        let keys: Vec<String> = range.clone().map(|i| format!("P:price:{i}")).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        self.w.set(c, &keys);
        let msgs: Vec<Msg> = range
            .clone()
            .map(|i| Msg::json((i % self.partitions as usize) as i32, event(i)))
            .collect();
        self.produced(range, &produce(&self.topic, &msgs));
    }

    /// Records where events `range` landed.
    fn produced(&self, range: std::ops::Range<usize>, at: &[(i32, i64)]) {
        let mut sent = self.sent.borrow_mut();
        for (i, &pos) in range.zip(at) {
            sent.insert(pos, i);
        }
    }

    /// The offset after the last event produced, per partition.
    fn ends(&self) -> Vec<i64> {
        let mut ends = vec![0; self.partitions as usize];
        for &(p, o) in self.sent.borrow().keys() {
            ends[p as usize] = ends[p as usize].max(o + 1);
        }
        ends
    }

    /// The events below the committed offsets `upto` (true) and the others (false).
    fn split(&self, upto: &[i64]) -> (Vec<usize>, Vec<usize>) {
        let mut below = Vec::new();
        let mut above = Vec::new();
        for (&(p, o), &i) in self.sent.borrow().iter() {
            if o < upto[p as usize] {
                below.push(i);
            } else {
                above.push(i);
            }
        }
        (below, above)
    }

    fn remaining(&self, c: &mut redis::Connection) -> usize {
        self.w.keys(c, "P:price:*").len()
    }

    fn committed(&self) -> Vec<i64> {
        committed(&self.group, &self.topic, self.partitions)
    }

    fn all_committed(&self) -> bool {
        let (c, e) = (self.committed(), self.ends());
        if c != e {
            eprintln!("committed {c:?}, end {e:?}");
        }
        c == e
    }
}

fn must(ok: bool, what: &str, worker: &Worker) {
    assert!(ok, "{what}\n--- worker log ---\n{}", worker.logs());
}

#[test]
fn end_to_end_applies_commits_and_exports_metrics() {
    let s = setup(3);
    let mut c = conn();
    s.seed_and_produce(&mut c, 0..270);
    // CloudEvents binary mode: attributes in ce_* headers, the payload is `data`.
    let mut binary = Vec::new();
    for i in 270..300 {
        s.w.set(&mut c, &[&format!("P:price:{i}")]);
        binary.push(Msg {
            partition: Some(i % 3),
            key: Some(format!("sku-{i}").into_bytes()),
            payload: format!(r#"{{"sku":"{i}"}}"#).into_bytes(),
            headers: vec![
                ("ce_specversion".into(), "1.0".into()),
                ("ce_type".into(), "price.updated".into()),
                ("ce_id".into(), format!("ce-{i}")),
                ("ce_source".into(), "pricing".into()),
            ],
        });
    }
    let at = produce(&s.topic, &binary);
    s.produced(270..300, &at);

    let mut worker = s.start("w", "");
    must(
        wait_until(Duration::from_secs(60), || s.remaining(&mut c) == 0),
        "every key invalidated",
        &worker,
    );
    must(
        wait_until(Duration::from_secs(20), || s.all_committed()),
        "offsets committed up to the end of every partition",
        &worker,
    );
    must(worker.ready(), "ready while consuming", &worker);
    let applied = r#"invalidator_events_total{type="price.updated",outcome="applied"}"#;
    must(
        wait_until(Duration::from_secs(5), || worker.metric(applied) == 300.0),
        "300 applied in /metrics",
        &worker,
    );
    assert_eq!(worker.metric("invalidator_redis_keys_removed_total"), 300.0);
    assert_eq!(
        worker.metric("invalidator_event_age_seconds_count"),
        270.0,
        "the 270 events with a `time` are in the age histogram"
    );
    assert!(
        worker
            .metrics()
            .contains("invalidator_event_age_seconds_bucket{le=\"0.005\"}")
    );
    must(
        wait_until(Duration::from_secs(15), || {
            worker.metrics().contains(&format!(
                "invalidator_consumer_lag{{topic=\"{}\",partition=\"2\"}} 0",
                s.topic
            ))
        }),
        "consumer lag per partition, 0 once drained",
        &worker,
    );
    assert_eq!(worker.get("/healthz").map(|r| r.0), Some(200));

    worker.signal(libc::SIGTERM);
    let status = worker.wait(Duration::from_secs(15));
    must(
        status.is_some_and(|s| s.success()),
        "exit 0 on SIGTERM",
        &worker,
    );
}

#[test]
fn poison_messages_go_to_the_dlq_topic_with_headers_and_the_partition_keeps_flowing() {
    let s = setup(1);
    let dlq = format!("{}.dlq", s.topic);
    create_topic(&dlq, 1);
    let mut c = conn();
    s.w.set(
        &mut c,
        &["P:price:0", "P:price:1", "P:price:2", "P:price:3"],
    );
    let bad_json = Msg {
        partition: Some(0),
        key: Some(b"k-bad".to_vec()),
        payload: b"{\"type\": \"price.updated\", oops".to_vec(),
        headers: vec![("traceparent".into(), "00-abc-01".into())],
    };
    let no_type = Msg::json(0, r#"{"id":"nt","data":{"sku":"9"}}"#.into());
    let unsafe_value = Msg::json(
        0,
        r#"{"type":"price.updated","id":"uv","data":{"sku":"*"}}"#.into(),
    );
    let at = produce(
        &s.topic,
        &[
            Msg::json(0, event(0)),
            bad_json.clone(),
            Msg::json(0, event(1)),
            no_type.clone(),
            Msg::json(0, event(2)),
            unsafe_value.clone(),
            Msg::json(0, event(3)),
        ],
    );
    s.produced(0..7, &at);
    let worker = s.start("w", "");
    must(
        wait_until(Duration::from_secs(60), || s.remaining(&mut c) == 0),
        "the good events around the poison ones are applied",
        &worker,
    );
    must(
        wait_until(Duration::from_secs(20), || s.all_committed()),
        "the partition is committed past the poison messages",
        &worker,
    );
    let dead = read(&dlq, 1, 3, Duration::from_secs(20));
    assert_eq!(dead.len(), 3, "three dead letters");
    let expect = [
        (&bad_json, "invalid_json", at[1].1),
        (&no_type, "missing_type", at[3].1),
        (&unsafe_value, "unsafe_value", at[5].1),
    ];
    for (m, (orig, reason, offset)) in dead.iter().zip(expect) {
        assert_eq!(
            m.payload(),
            Some(orig.payload.as_slice()),
            "byte-exact payload"
        );
        assert_eq!(m.key(), orig.key.as_deref(), "original key");
        assert_eq!(header(m, "invalidator.reason"), Some(reason));
        assert!(header(m, "invalidator.error").is_some_and(|e| !e.is_empty()));
        assert_eq!(header(m, "invalidator.attempts"), Some("1"));
        assert_eq!(
            header(m, "invalidator.source.topic"),
            Some(s.topic.as_str())
        );
        assert_eq!(header(m, "invalidator.source.partition"), Some("0"));
        assert_eq!(
            header(m, "invalidator.source.offset"),
            Some(offset.to_string().as_str())
        );
        assert!(header(m, "invalidator.time").is_some_and(|t| t.starts_with("20")));
    }
    assert_eq!(
        header(&dead[0], "traceparent"),
        Some("00-abc-01"),
        "original headers kept"
    );
    assert_eq!(header(&dead[2], "invalidator.event_id"), Some("uv"));
    assert_eq!(
        worker.metric(r#"invalidator_dlq_total{reason="unsafe_value"}"#),
        1.0
    );
}

#[test]
fn the_offset_does_not_pass_a_dead_letter_until_the_dlq_accepted_it() {
    let s = setup(1);
    let mut c = conn();
    s.w.set(&mut c, &["P:price:0", "P:price:1", "P:price:2"]);
    let at = produce(
        &s.topic,
        &[
            Msg::json(0, event(0)),
            Msg::json(0, "not json".into()),
            Msg::json(0, event(1)),
            Msg::json(0, event(2)),
        ],
    );
    s.produced(0..4, &at);
    let poison = at[1].1;
    // A DLQ topic that does not exist and a broker that does not create it: the write fails.
    let missing = name("missing");
    let extra = format!("dlq_topic = \"{missing}\"\n");
    let port = free_port();
    let config = s.config(port, &extra).replace(
        "[kafka.properties]\n",
        "[kafka.properties]\n\"message.timeout.ms\" = \"1500\"\n\"allow.auto.create.topics\" = \"false\"\n",
    );
    let mut worker = Worker::start(&s.w, "w1", &config, port);
    must(
        wait_until(Duration::from_secs(60), || s.remaining(&mut c) == 0),
        "the events after the poison message are applied",
        &worker,
    );
    // Give the commit timer several turns: the offset must stay at the poison message.
    std::thread::sleep(Duration::from_secs(4));
    let held = s.committed();
    assert!(
        held == vec![poison] || held == vec![-1001],
        "committed offset {held:?} must not pass the poison message at {poison} before the DLQ write"
    );
    must(
        !worker.ready(),
        "not ready while dead letters are at risk",
        &worker,
    );
    assert!(
        worker.logs().contains("DLQ write failed"),
        "{}",
        worker.logs()
    );
    worker.signal(libc::SIGKILL);
    worker.wait(Duration::from_secs(5));

    // With a DLQ topic that exists, the same message is dead-lettered and the offset moves on.
    let dlq = format!("{}.dlq", s.topic);
    create_topic(&dlq, 1);
    let worker = s.start("w2", "");
    must(
        wait_until(Duration::from_secs(30), || s.all_committed()),
        "committed past the poison message after the DLQ write",
        &worker,
    );
    let dead = read(&dlq, 1, 1, Duration::from_secs(20));
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload(), Some(&b"not json"[..]));
    assert_eq!(
        header(&dead[0], "invalidator.source.offset"),
        Some(poison.to_string().as_str())
    );
}

#[test]
fn kill_9_mid_stream_then_restart_applies_every_event_at_least_once() {
    let s = setup(2);
    let mut c = conn();
    let n = 4000;
    s.seed_and_produce(&mut c, 0..n);
    // Small units so that the kill lands mid-stream.
    let mut worker = s.start("w1", "batch_size = 20\nmax_in_flight = 1\n");
    must(
        wait_until(Duration::from_secs(60), || s.remaining(&mut c) < n - 200),
        "some progress before the kill",
        &worker,
    );
    worker.signal(libc::SIGKILL);
    worker.wait(Duration::from_secs(5)).expect("killed");
    let at_kill = s.committed();
    let (below, above) = s.split(&at_kill);
    // Offsets committed before the kill were applied: their keys are gone.
    for i in below {
        assert!(
            !s.w.exists(&mut c, &format!("P:price:{i}")),
            "event {i} committed but its key exists"
        );
    }
    // Everything from the committed offsets on must be applied again: put those keys back.
    let restored = above.len();
    for i in above {
        s.w.set(&mut c, &[&format!("P:price:{i}")]);
    }
    assert!(restored > 0, "the kill happened mid-stream");
    let worker = s.start("w2", "");
    must(
        wait_until(Duration::from_secs(90), || s.remaining(&mut c) == 0),
        "after the restart every event not committed is applied",
        &worker,
    );
    must(
        wait_until(Duration::from_secs(20), || s.all_committed()),
        "everything committed",
        &worker,
    );
}

#[test]
fn a_second_worker_takes_over_the_partitions_of_one_that_stops() {
    let s = setup(4);
    let mut c = conn();
    let a = s.start("a", "");
    let mut b = s.start("b", "");
    must(
        wait_until(Duration::from_secs(60), || a.ready() && b.ready()),
        "both workers joined the group",
        &a,
    );
    s.seed_and_produce(&mut c, 0..400);
    must(
        wait_until(Duration::from_secs(60), || s.remaining(&mut c) == 0),
        "the first 400 applied",
        &a,
    );
    let by_a = a.metric("invalidator_events_total{");
    let by_b = b.metric("invalidator_events_total{");
    assert_eq!(by_a + by_b, 400.0);
    assert!(
        by_a > 0.0 && by_b > 0.0,
        "the partitions are shared: a={by_a} b={by_b}"
    );
    b.signal(libc::SIGKILL);
    b.wait(Duration::from_secs(5)).expect("b killed");
    s.seed_and_produce(&mut c, 400..800);
    must(
        wait_until(Duration::from_secs(90), || s.remaining(&mut c) == 0),
        "the survivor applies the events of every partition",
        &a,
    );
    must(
        wait_until(Duration::from_secs(20), || s.all_committed()),
        "every partition committed",
        &a,
    );
}

/// A Redis of our own (on a free port, persisting to a temp dir) that the test can stop and start.
struct OwnRedis {
    port: u16,
    dir: tempfile::TempDir,
}

impl OwnRedis {
    fn start() -> OwnRedis {
        let r = OwnRedis {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
        };
        r.up();
        r
    }

    fn up(&self) {
        let status = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--daemonize", "yes", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .status()
            .expect("redis-server");
        assert!(status.success());
        assert!(wait_until(Duration::from_secs(5), || self.conn().is_some()));
    }

    /// Stops it, saving the data set so that `up` finds it again.
    fn down(&self) {
        let _ = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "shutdown", "save"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        assert!(wait_until(Duration::from_secs(5), || self.conn().is_none()));
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn conn(&self) -> Option<redis::Connection> {
        let mut c = redis::Client::open(self.url())
            .ok()?
            .get_connection()
            .ok()?;
        redis::cmd("PING").query::<String>(&mut c).ok()?;
        Some(c)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "shutdown", "nosave"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn a_redis_outage_pauses_dead_letters_nothing_and_resumes() {
    let s = setup(2);
    create_topic(&format!("{}.dlq", s.topic), 1);
    let redis = OwnRedis::start();
    let mut c = redis.conn().unwrap();
    let n = 3000;
    let keys: Vec<String> = (0..n).map(|i| s.w.k(&format!("P:price:{i}"))).collect();
    for chunk in keys.chunks(500) {
        let _: () = redis::cmd("MSET")
            .arg(
                chunk
                    .iter()
                    .flat_map(|k| [k.as_str(), "v"])
                    .collect::<Vec<_>>(),
            )
            .query(&mut c)
            .unwrap();
    }
    let port = free_port();
    let config = s
        .config(port, "batch_size = 50\nmax_in_flight = 1\n")
        .replace(&redis_url(), &redis.url())
        .replace(
            "retry_for = \"5s\"",
            "retry_for = \"5s\"\nresponse_timeout = \"500ms\"\nconnect_timeout = \"500ms\"",
        );
    let worker = Worker::start(&s.w, "w", &config, port);
    must(
        wait_until(Duration::from_secs(60), || worker.ready()),
        "ready",
        &worker,
    );
    // Produce in a steady stream while Redis goes away and comes back.
    let topic = s.topic.clone();
    let producer = std::thread::spawn(move || {
        let mut at = Vec::new();
        for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
            let msgs: Vec<Msg> = chunk
                .iter()
                .map(|&i| Msg::json((i % 2) as i32, event(i)))
                .collect();
            at.extend(produce(&topic, &msgs));
            std::thread::sleep(Duration::from_millis(50));
        }
        at
    });
    let remaining = |c: &mut redis::Connection| {
        keys.iter()
            .filter(|k| {
                redis::cmd("EXISTS")
                    .arg(k.as_str())
                    .query::<i64>(c)
                    .unwrap()
                    == 1
            })
            .count()
    };
    must(
        wait_until(Duration::from_secs(60), || remaining(&mut c) < n - 300),
        "progress before the outage",
        &worker,
    );
    drop(c);
    redis.down();
    must(
        wait_until(Duration::from_secs(15), || !worker.ready()),
        "readiness drops while Redis is down",
        &worker,
    );
    let during = s.committed();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        s.committed(),
        during,
        "nothing is committed while nothing can be applied"
    );
    redis.up();
    let mut c = redis.conn().unwrap();
    // What was committed during the outage had been applied before it.
    let at = producer.join().unwrap();
    s.produced(0..n, &at);
    let (below, _) = s.split(&during);
    for i in below {
        let k = &keys[i];
        assert_eq!(
            redis::cmd("EXISTS")
                .arg(k.as_str())
                .query::<i64>(&mut c)
                .unwrap(),
            0,
            "{k} committed but not applied"
        );
    }
    must(
        wait_until(Duration::from_secs(30), || worker.ready()),
        "readiness returns with Redis",
        &worker,
    );
    must(
        wait_until(Duration::from_secs(90), || remaining(&mut c) == 0),
        "every event applied after Redis returned",
        &worker,
    );
    must(
        wait_until(Duration::from_secs(20), || s.all_committed()),
        "everything committed",
        &worker,
    );
    assert!(
        read(&format!("{}.dlq", s.topic), 1, 1, Duration::from_secs(3)).is_empty(),
        "nothing dead-lettered for an outage"
    );
    assert_eq!(worker.metric("invalidator_dlq_total"), 0.0);
    assert!(worker.metric("invalidator_unit_retries_total") >= 1.0);
}

#[test]
fn sigterm_finishes_in_flight_work_commits_and_exits_0_within_the_deadline() {
    let s = setup(2);
    let mut c = conn();
    let n = 3000;
    s.seed_and_produce(&mut c, 0..n);
    let mut worker = s.start("w", "batch_size = 50\n");
    must(
        wait_until(Duration::from_secs(60), || s.remaining(&mut c) < n - 100),
        "some progress",
        &worker,
    );
    let sent = std::time::Instant::now();
    worker.signal(libc::SIGTERM);
    let status = worker.wait(Duration::from_secs(12));
    must(
        status.is_some_and(|s| s.success()),
        "exit 0 within the 10 s deadline",
        &worker,
    );
    assert!(sent.elapsed() < Duration::from_secs(11));
    let logs = worker.logs();
    assert!(logs.contains("clean=true"), "{logs}");
    // The commit at shutdown covers everything the worker applied: no committed offset is ahead of
    // an applied event, and nothing applied is left uncommitted but for the last unit's.
    let at_exit = s.committed();
    let (below, above) = s.split(&at_exit);
    for i in below {
        assert!(
            !s.w.exists(&mut c, &format!("P:price:{i}")),
            "event {i} committed, key exists"
        );
    }
    for i in above {
        assert!(
            s.w.exists(&mut c, &format!("P:price:{i}")),
            "event {i} applied but not committed: the commit at shutdown is incomplete"
        );
    }
}

/// `redelete_after`: a copy written again just after the invalidation (a reader that fetched the old
/// price just before it) is deleted once more; the redelete runs beside the units, and the worker
/// keeps consuming meanwhile.
#[test]
fn redelete_after_deletes_a_copy_written_again_after_the_invalidation() {
    let s = setup(1);
    s.w.rules(
        "price.yaml",
        "rules:\n  - name: price\n    on: price.updated\n    delete:\n      - P:price:{sku}\n    redelete_after: 1s\n",
    );
    let worker = s.start("w", "");
    let mut c = conn();
    s.seed_and_produce(&mut c, 0..1);
    must(
        wait_until(Duration::from_secs(20), || !s.w.exists(&mut c, "P:price:0")),
        "the key deleted",
        &worker,
    );
    // The stale refill, well within the second before the redelete.
    s.w.set(&mut c, &["P:price:0"]);
    s.seed_and_produce(&mut c, 1..2);
    must(
        wait_until(Duration::from_secs(10), || !s.w.exists(&mut c, "P:price:1")),
        "the next event applied",
        &worker,
    );
    must(
        wait_until(Duration::from_secs(10), || {
            !s.w.exists(&mut c, "P:price:0") && !s.w.exists(&mut c, "P:price:1")
        }),
        "the refilled key deleted again by the redelete",
        &worker,
    );
    // Two deletes and at least the one redelete that found the refilled key.
    must(
        wait_until(Duration::from_secs(5), || {
            worker.metric("invalidator_redis_keys_removed_total") >= 3.0
        }),
        "3 keys removed in /metrics",
        &worker,
    );

    let mut worker = worker;
    worker.signal(libc::SIGTERM);
    let status = worker.wait(Duration::from_secs(15));
    must(
        status.is_some_and(|s| s.success()),
        "exit 0 on SIGTERM",
        &worker,
    );
}
