//! `invalidator run` against a real Kafka-protocol broker (`KAFKA_BROKERS`, default the local Tansu
//! started by scripts/tansu.sh) and the real local Redis: the worker runs as a child process, as in
//! production, and is stopped with real signals.
//!
//! Every test uses its own topic, consumer group, key prefix and HTTP port (a
//! [`common::kafka::Stream`] of price events: event i deletes `P:price:{i}`).

mod common;

use std::time::{Duration, Instant};

use common::conn;
use common::kafka::{
    Msg, Stream, Worker, create_topic, free_port, header, name, price_event,
    produce_with_raw_header, read,
};
use common::topology::Server;
use rdkafka::Message;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[test]
fn end_to_end_applies_commits_and_exports_metrics() {
    let s = Stream::prices(3);
    let mut c = conn();
    s.seed_and_produce(&mut c, 0..270);
    // CloudEvents binary mode: attributes in ce_* headers, the payload is `data`.
    let mut binary = Vec::new();
    for i in 270..300 {
        s.w.set(&mut c, &[format!("P:price:{i}")]);
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
            ..Msg::default()
        });
    }
    s.produce(270..300, &binary);

    let mut worker = s.start("w", "");
    s.expect_drained_by(&worker, &mut c, secs(60), "every key invalidated");
    worker.expect(worker.ready(), "ready while consuming");
    let applied = r#"invalidator_events_total{type="price.updated",outcome="applied"}"#;
    worker.expect_within(secs(5), "300 applied in /metrics", || {
        worker.metric(applied) == 300.0
    });
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
    let lag = format!(
        "invalidator_consumer_lag{{topic=\"{}\",partition=\"2\"}} 0",
        s.topic
    );
    worker.expect_within(
        secs(15),
        "consumer lag per partition, 0 once drained",
        || worker.metrics().contains(&lag),
    );
    assert_eq!(worker.get("/healthz").map(|r| r.0), Some(200));

    worker.terminate(secs(15), "exit 0 on SIGTERM");
}

#[test]
fn poison_messages_go_to_the_dlq_topic_with_headers_and_the_partition_keeps_flowing() {
    let s = Stream::prices(1);
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
        ..Msg::default()
    };
    let no_type = Msg::json(0, r#"{"id":"nt","data":{"sku":"9"}}"#.into());
    let unsafe_value = Msg::json(
        0,
        r#"{"type":"price.updated","id":"uv","data":{"sku":"*"}}"#.into(),
    );
    let at = s.produce(
        0..7,
        &[
            Msg::json(0, price_event(0)),
            bad_json.clone(),
            Msg::json(0, price_event(1)),
            no_type.clone(),
            Msg::json(0, price_event(2)),
            unsafe_value.clone(),
            Msg::json(0, price_event(3)),
        ],
    );
    let worker = s.start("w", "");
    s.expect_drained_by(
        &worker,
        &mut c,
        secs(60),
        "the good events around the poison ones are applied",
    );
    let dead = read(&dlq, 1, 3, secs(20));
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
            "{reason}: byte-exact payload"
        );
        assert_eq!(m.key(), orig.key.as_deref(), "{reason}: original key");
        assert_eq!(header(m, "invalidator.reason"), Some(reason));
        assert!(
            header(m, "invalidator.error").is_some_and(|e| !e.is_empty()),
            "{reason}"
        );
        assert_eq!(header(m, "invalidator.attempts"), Some("1"), "{reason}");
        assert_eq!(
            header(m, "invalidator.source.topic"),
            Some(s.topic.as_str()),
            "{reason}"
        );
        assert_eq!(
            header(m, "invalidator.source.partition"),
            Some("0"),
            "{reason}"
        );
        assert_eq!(
            header(m, "invalidator.source.offset"),
            Some(offset.to_string().as_str()),
            "{reason}"
        );
        assert!(
            header(m, "invalidator.time").is_some_and(|t| t.starts_with("20")),
            "{reason}"
        );
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
fn a_header_name_that_is_not_utf8_crashes_nothing() {
    // rdkafka's own header reader panics on such a name; one message like this once put every
    // worker of a group into a crash loop.
    let s = Stream::prices(1);
    let mut c = conn();
    s.w.set(&mut c, &["P:price:0", "P:price:1"]);
    produce_with_raw_header(&s.topic, 0, price_event(0).as_bytes(), b"\xff\xfebad");
    s.produce(1..2, &[Msg::json(0, price_event(1))]);
    let worker = s.start("w", "");
    s.expect_drained_by(
        &worker,
        &mut c,
        secs(60),
        "the event with the odd header and the one after it are applied",
    );
    assert!(worker.ready(), "still up and ready:\n{}", worker.logs());
}

#[test]
fn a_dead_letter_too_large_for_the_dlq_topic_goes_cut_and_the_partition_moves_on() {
    let s = Stream::prices(1);
    let dlq = format!("{}.dlq", s.topic);
    create_topic(&dlq, 1);
    let mut c = conn();
    s.w.set(&mut c, &["P:price:0", "P:price:1"]);
    // A malformed event of 60 KB between two good ones, and a DLQ producer that takes at most
    // 20,000 bytes: the whole letter is refused for good (MSG_SIZE_TOO_LARGE).
    let big = format!("{{\"type\": \"price.updated\", oops {}", "x".repeat(60_000));
    let poison = Msg {
        partition: Some(0),
        key: Some(b"k-big".to_vec()),
        payload: big.clone().into_bytes(),
        headers: vec![("traceparent".into(), "00-abc-01".into())],
        ..Msg::default()
    };
    s.produce(
        0..3,
        &[
            Msg::json(0, price_event(0)),
            poison,
            Msg::json(0, price_event(1)),
        ],
    );
    let port = free_port();
    let config = s.config(port, "").replace(
        "[kafka.properties]\n",
        "[kafka.properties]\n\"message.max.bytes\" = \"20000\"\n",
    );
    let worker = Worker::start(&s.w, "w", &config, port);
    s.expect_drained_by(
        &worker,
        &mut c,
        secs(60),
        "the events around the oversized poison one are applied",
    );
    let dead = read(&dlq, 1, 1, secs(20));
    assert_eq!(dead.len(), 1, "the poison message reached the DLQ topic");
    let m = &dead[0];
    assert_eq!(header(m, "invalidator.reason"), Some("invalid_json"));
    assert_eq!(header(m, "invalidator.truncated"), Some("true"));
    let size = big.len().to_string();
    assert_eq!(header(m, "invalidator.payload_bytes"), Some(size.as_str()));
    let hash = format!(
        "{:x}",
        <sha2::Sha256 as sha2::Digest>::digest(big.as_bytes())
    );
    assert_eq!(header(m, "invalidator.payload_sha256"), Some(hash.as_str()));
    assert_eq!(
        m.payload(),
        Some(&big.as_bytes()[..16 * 1024]),
        "the first 16 KiB"
    );
    assert_eq!(m.key(), Some(&b"k-big"[..]), "the key is kept");
    assert_eq!(
        header(m, "traceparent"),
        None,
        "the original headers are not"
    );
    assert_eq!(worker.metric("invalidator_dlq_truncated_total"), 1.0);
}

#[test]
fn the_offset_does_not_pass_a_dead_letter_until_the_dlq_accepted_it() {
    let s = Stream::prices(1);
    let mut c = conn();
    s.w.set(&mut c, &["P:price:0", "P:price:1", "P:price:2"]);
    let at = s.produce(
        0..4,
        &[
            Msg::json(0, price_event(0)),
            Msg::json(0, "not json".into()),
            Msg::json(0, price_event(1)),
            Msg::json(0, price_event(2)),
        ],
    );
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
    worker.expect_within(
        secs(60),
        "the events after the poison message are applied",
        || s.remaining(&mut c) == 0,
    );
    // Give the commit timer several turns: the offset must stay at the poison message.
    std::thread::sleep(secs(4));
    let held = s.committed();
    assert!(
        held == vec![poison] || held == vec![-1001],
        "committed offset {held:?} must not pass the poison message at {poison} before the DLQ write"
    );
    worker.expect(!worker.ready(), "not ready while dead letters are at risk");
    assert!(
        worker.logs().contains("DLQ write failed"),
        "{}",
        worker.logs()
    );
    worker.kill();

    // With a DLQ topic that exists, the same message is dead-lettered and the offset moves on.
    let dlq = format!("{}.dlq", s.topic);
    create_topic(&dlq, 1);
    let worker = s.start("w2", "");
    worker.expect_within(
        secs(30),
        "committed past the poison message after the DLQ write",
        || s.all_committed(),
    );
    let dead = read(&dlq, 1, 1, secs(20));
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload(), Some(&b"not json"[..]));
    assert_eq!(
        header(&dead[0], "invalidator.source.offset"),
        Some(poison.to_string().as_str())
    );
}

#[test]
fn kill_9_mid_stream_then_restart_applies_every_event_at_least_once() {
    let s = Stream::prices(2);
    let mut c = conn();
    let n = 4000;
    s.seed_and_produce(&mut c, 0..n);
    // Small units so that the kill lands mid-stream.
    let mut worker = s.start("w1", "batch_size = 20\nmax_in_flight = 1\n");
    worker.expect_within(secs(60), "some progress before the kill", || {
        s.remaining(&mut c) < n - 200
    });
    worker.kill().expect("killed");
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
        s.w.set(&mut c, &[format!("P:price:{i}")]);
    }
    assert!(restored > 0, "the kill happened mid-stream");
    let worker = s.start("w2", "");
    s.expect_drained_by(
        &worker,
        &mut c,
        secs(90),
        "after the restart every event not committed is applied",
    );
}

#[test]
fn a_second_worker_takes_over_the_partitions_of_one_that_stops() {
    let s = Stream::prices(4);
    let mut c = conn();
    let a = s.start("a", "");
    let mut b = s.start("b", "");
    a.expect_within(secs(60), "both workers joined the group", || {
        a.ready() && b.ready()
    });
    s.seed_and_produce(&mut c, 0..400);
    a.expect_within(secs(60), "the first 400 applied", || {
        s.remaining(&mut c) == 0
    });
    let by_a = a.metric("invalidator_events_total{");
    let by_b = b.metric("invalidator_events_total{");
    assert_eq!(by_a + by_b, 400.0);
    assert!(
        by_a > 0.0 && by_b > 0.0,
        "the partitions are shared: a={by_a} b={by_b}"
    );
    b.kill().expect("b killed");
    s.seed_and_produce(&mut c, 400..800);
    s.expect_drained_by(
        &a,
        &mut c,
        secs(90),
        "the survivor applies the events of every partition",
    );
}

/// A worker joins while another consumes a stream: the rebalance revokes partitions whose messages
/// sit in the busy worker's batch and units. Every event is applied, and the group's commits reach
/// the end of every partition: no watermark of a revoked partition holds an offset back, and no
/// message taken in before the revocation is tracked after it.
#[test]
fn a_worker_joining_mid_stream_takes_partitions_over_and_everything_is_committed() {
    let s = Stream::prices(4);
    let mut c = conn();
    let a = s.start("a", "batch_size = 10\nmax_in_flight = 1\n");
    a.expect_within(secs(60), "the first worker joined", || a.ready());
    let mut b: Option<Worker> = None;
    let mut n = 0;
    // Events keep coming while the second worker joins, and a while after.
    let mut after_join = 0;
    while after_join < 5 {
        s.seed_and_produce(&mut c, n..n + 400);
        n += 400;
        std::thread::sleep(Duration::from_millis(100));
        match &b {
            None if n >= 2000 => b = Some(s.start("b", "batch_size = 10\n")),
            Some(b) if b.ready() => after_join += 1,
            _ => {}
        }
        assert!(n < 400_000, "the second worker never joined");
    }
    let b = b.expect("started");
    s.expect_drained_by(&a, &mut c, secs(120), "every event applied by the two");
    let (by_a, by_b) = (
        a.metric("invalidator_events_total{"),
        b.metric("invalidator_events_total{"),
    );
    assert!(by_a + by_b >= n as f64, "a={by_a} b={by_b} of {n}");
    assert!(
        by_b > 0.0,
        "the second worker took partitions over: b={by_b}"
    );
}

#[test]
fn a_redis_outage_pauses_dead_letters_nothing_and_resumes() {
    let s = Stream::prices(2);
    create_topic(&format!("{}.dlq", s.topic), 1);
    // A Redis of the test's own, stopped (its data saved) and started again.
    let redis = Server::start();
    let mut c = redis.conn();
    let n = 3000;
    let keys: Vec<String> = (0..n).map(|i| s.w.k(&format!("P:price:{i}"))).collect();
    common::topology::set_all(&mut c, &keys);
    let port = free_port();
    let config = s
        .config_with(
            &s.w.config_text_with_redis(&format!(
                "url = \"{}\"\nretry_for = \"5s\"\nresponse_timeout = \"500ms\"\nconnect_timeout = \"500ms\"\n",
                redis.url()
            )),
            port,
            "batch_size = 50\nmax_in_flight = 1\n",
        );
    let worker = Worker::start(&s.w, "w", &config, port);
    worker.expect_within(secs(60), "ready", || worker.ready());
    // Produce in a steady stream while Redis goes away and comes back.
    let topic = s.topic.clone();
    let producer = std::thread::spawn(move || {
        let mut at = Vec::new();
        for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
            let msgs: Vec<Msg> = chunk
                .iter()
                .map(|&i| Msg::json((i % 2) as i32, price_event(i)))
                .collect();
            at.extend(common::kafka::produce(&topic, &msgs));
            std::thread::sleep(Duration::from_millis(50));
        }
        at
    });
    let remaining = |c: &mut redis::Connection| common::topology::count_existing(c, &keys);
    worker.expect_within(secs(60), "progress before the outage", || {
        remaining(&mut c) < n - 300
    });
    drop(c);
    redis.shutdown_saving();
    worker.expect_within(secs(15), "readiness drops while Redis is down", || {
        !worker.ready()
    });
    let during = s.committed();
    std::thread::sleep(secs(3));
    assert_eq!(
        s.committed(),
        during,
        "nothing is committed while nothing can be applied"
    );
    redis.restart();
    let mut c = redis.conn();
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
    worker.expect_within(secs(30), "readiness returns with Redis", || worker.ready());
    worker.expect_within(secs(90), "every event applied after Redis returned", || {
        remaining(&mut c) == 0
    });
    worker.expect_within(secs(20), "everything committed", || s.all_committed());
    assert!(
        read(&format!("{}.dlq", s.topic), 1, 1, secs(3)).is_empty(),
        "nothing dead-lettered for an outage"
    );
    assert_eq!(worker.metric("invalidator_dlq_total"), 0.0);
    assert!(worker.metric("invalidator_unit_retries_total") >= 1.0);
}

#[test]
fn sigterm_finishes_in_flight_work_commits_and_exits_0_within_the_deadline() {
    let s = Stream::prices(2);
    let mut c = conn();
    let n = 3000;
    s.seed_and_produce(&mut c, 0..n);
    let mut worker = s.start("w", "batch_size = 50\n");
    worker.expect_within(secs(60), "some progress", || s.remaining(&mut c) < n - 100);
    let sent = Instant::now();
    worker.terminate(secs(12), "exit 0 within the 10 s deadline");
    assert!(sent.elapsed() < secs(11));
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
    let s = Stream::prices(1);
    s.w.rules_fixture("price.yaml", "kafka/price_redelete_after_1s.yaml");
    let mut worker = s.start("w", "");
    let mut c = conn();
    let hits = r#"invalidator_redelete_hits_total{rule="price"}"#;
    let redeletes = r#"invalidator_redeletes_total{rule="price"}"#;
    worker.expect_within(secs(20), "the rule's redelete counters shown at 0", || {
        worker.metrics().contains(hits) && worker.metrics().contains(redeletes)
    });
    s.seed_and_produce(&mut c, 0..1);
    worker.expect_within(secs(20), "the key deleted", || {
        !s.w.exists(&mut c, "P:price:0")
    });
    // The stale refill, well within the second before the redelete.
    s.w.set(&mut c, &["P:price:0"]);
    s.seed_and_produce(&mut c, 1..2);
    worker.expect_within(secs(10), "the next event applied", || {
        !s.w.exists(&mut c, "P:price:1")
    });
    worker.expect_within(
        secs(10),
        "the refilled key deleted again by the redelete",
        || !s.w.exists(&mut c, "P:price:0") && !s.w.exists(&mut c, "P:price:1"),
    );
    // Two deletes and at least the one redelete that found the refilled key.
    worker.expect_within(secs(5), "3 keys removed in /metrics", || {
        worker.metric("invalidator_redis_keys_removed_total") >= 3.0
    });
    // Both keys deleted again; only the refilled one was found: the stale refill caught.
    worker.expect_within(secs(5), "the redeletes counted under the rule", || {
        worker.metric(redeletes) == 2.0
    });
    assert_eq!(worker.metric(hits), 1.0, "{}", worker.metrics());

    worker.terminate(secs(15), "exit 0 on SIGTERM");
}
