//! The Lambda handler on JSON fixtures of real SNS and SQS event shapes, against the real local
//! Redis (keys checked) and moto_server's SQS (the dead-letter queue).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{BATCH_KEYS, World, attr, conn, drain, failures, fixture_json, queue, sqs};
use invalidator_lambda::batch::{HandlerError, Source};
use serde_json::{Value, json};

/// The message ids of `sqs-batch.json`.
fn batch_id(i: usize) -> String {
    format!("3f3f6a52-0f4e-4a7e-9b2b-4c1f0d8e0a{:02}", i + 1)
}

#[tokio::test]
async fn sns_event_invalidates_its_keys() {
    let w = World::new();
    let mut c = conn();
    w.set(&mut c, &["P:price:2101", "P:product:2101", "P:price:9999"]);
    let app = w.app(None).await;
    let (report, response) = app.run(fixture_json("sns-price.json"), None).await.unwrap();
    assert_eq!(response.unwrap(), Value::Null);
    assert_eq!(report.source, Source::Sns);
    assert_eq!((report.done, report.summary.applied), (1, 1));
    assert!(!w.exists(&mut c, "P:price:2101"));
    assert!(!w.exists(&mut c, "P:product:2101"));
    assert!(w.exists(&mut c, "P:price:9999"), "an unrelated key stays");
}

#[tokio::test]
async fn sqs_batch_applies_the_good_and_dead_letters_the_poison() {
    let w = World::new();
    let mut c = conn();
    w.set(&mut c, BATCH_KEYS);
    w.set(&mut c, &["P:product:2006", "P:price:2005"]);
    let sqs = sqs().await;
    let dlq = queue(&sqs, "inv-dlq").await;
    let app = w.app(Some(&dlq)).await;
    let event = fixture_json("sqs-batch.json");
    let (report, response) = app.run(event.clone(), None).await.unwrap();
    let response = response.unwrap();
    assert_eq!(
        response,
        json!({"batchItemFailures": []}),
        "poison messages are dead-lettered and acknowledged"
    );
    assert_eq!(report.source, Source::Sqs { fifo: false });
    assert_eq!((report.done, report.dead_lettered), (8, 2));
    assert_eq!(report.summary.applied, 7);
    assert_eq!(report.summary.skipped, 1, "wishlist.updated has no rule");
    for k in BATCH_KEYS {
        assert!(!w.exists(&mut c, k), "{k} must be deleted");
    }
    assert!(
        w.exists(&mut c, "P:product:2006"),
        "the skipped event's key stays"
    );
    assert!(w.exists(&mut c, "P:price:2005"));

    let dead = drain(&sqs, &dlq).await;
    assert_eq!(dead.len(), 2, "{dead:?}");
    let mut by_id: Vec<_> = dead
        .iter()
        .map(|m| (attr(m, "invalidator.source.message_id").unwrap(), m))
        .collect();
    by_id.sort_by(|a, b| a.0.cmp(&b.0));
    let records = event["Records"].as_array().unwrap();
    for ((id, m), (i, reason)) in by_id.iter().zip([(4, "invalid_json"), (5, "unsafe_value")]) {
        assert_eq!(*id, batch_id(i));
        assert_eq!(
            m.body().unwrap(),
            records[i]["body"].as_str().unwrap(),
            "the body is the original payload, byte for byte"
        );
        assert_eq!(attr(m, "invalidator.reason").as_deref(), Some(reason));
        assert_eq!(attr(m, "invalidator.attempts").as_deref(), Some("1"));
        assert_eq!(
            attr(m, "invalidator.source.arn").as_deref(),
            Some("arn:aws:sqs:us-east-1:123456789012:catalog-invalidations")
        );
        assert!(!attr(m, "invalidator.error").unwrap().is_empty());
        assert!(attr(m, "invalidator.time").unwrap().starts_with("20"));
    }
    assert_eq!(
        attr(by_id[1].1, "invalidator.event_id").as_deref(),
        Some("sqs-price-unsafe")
    );
    assert_eq!(attr(by_id[0].1, "invalidator.event_id"), None);
}

#[tokio::test]
async fn a_failed_dead_letter_write_is_a_batch_item_failure() {
    let w = World::new();
    let mut c = conn();
    w.set(&mut c, BATCH_KEYS);
    // A queue that does not exist: SQS refuses the SendMessageBatch.
    let missing = format!(
        "{}/123456789012/no-such-queue-{:08x}",
        common::moto_url(),
        rand::random::<u32>()
    );
    let app = w.app(Some(&missing)).await;
    let (report, response) = app.run(fixture_json("sqs-batch.json"), None).await.unwrap();
    assert_eq!(
        failures(&response.unwrap()),
        vec![batch_id(4), batch_id(5)],
        "exactly the poison messages whose dead letter was not written"
    );
    assert_eq!(report.dead_lettered, 0);
    for k in BATCH_KEYS {
        assert!(!w.exists(&mut c, k), "{k}: the good messages are applied");
    }
}

#[tokio::test]
async fn without_a_dead_letter_queue_poison_is_left_to_the_redrive_policy() {
    let w = World::new();
    let app = w.app(None).await;
    let (report, response) = app.run(fixture_json("sqs-batch.json"), None).await.unwrap();
    assert_eq!(failures(&response.unwrap()), vec![batch_id(4), batch_id(5)]);
    assert_eq!(report.done, 8);
}

#[tokio::test]
async fn sns_poison_goes_to_the_queue_or_fails_the_invocation() {
    let w = World::new();
    let sqs = sqs().await;
    let dlq = queue(&sqs, "inv-dlq").await;
    let app = w.app(Some(&dlq)).await;
    let (report, response) = app
        .run(fixture_json("sns-poison.json"), None)
        .await
        .unwrap();
    assert_eq!(response.unwrap(), Value::Null);
    assert_eq!(report.dead_lettered, 1);
    let dead = drain(&sqs, &dlq).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].body().unwrap(),
        r#"{"type":"price.updated","id":"sns-poison","data":{"product_id":"a b","old_price":2,"new_price":1,"category_ids":["shoes"]}}"#
    );
    assert_eq!(
        attr(&dead[0], "invalidator.reason").as_deref(),
        Some("unsafe_value")
    );
    assert_eq!(
        attr(&dead[0], "invalidator.source.arn").as_deref(),
        Some("arn:aws:sns:us-east-1:123456789012:catalog-events")
    );

    // No queue: the invocation fails, so Lambda retries and then uses its on-failure destination.
    let app = w.app(None).await;
    let (_, response) = app
        .run(fixture_json("sns-poison.json"), None)
        .await
        .unwrap();
    let e = response.unwrap_err();
    assert!(matches!(e, HandlerError::NotDone { failed: 1, .. }), "{e}");
    assert!(e.to_string().contains("unsafe_value"), "{e}");
}

/// A Redis server of this test's own, on a free port, so that it can be stopped.
struct OwnRedis {
    child: Child,
    port: u16,
}

impl OwnRedis {
    fn start() -> OwnRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        OwnRedis::start_on(port)
    }

    /// On `port` (again, after [`OwnRedis::stop`]).
    fn start_on(port: u16) -> OwnRedis {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        // Owned from here: killed and reaped on drop, also when the wait below panics.
        let own = OwnRedis { child, port };
        let url = format!("redis://127.0.0.1:{port}/0");
        for _ in 0..100 {
            if redis::Client::open(url.as_str())
                .unwrap()
                .get_connection()
                .is_ok()
            {
                return own;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start on port {port}");
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn an_outage_fails_the_whole_batch_and_dead_letters_nothing() {
    let w = World::new();
    let mut redis = OwnRedis::start();
    let sqs = sqs().await;
    let dlq = queue(&sqs, "inv-dlq").await;
    let url = format!("redis://127.0.0.1:{}/0", redis.port);
    let config = invalidator::config::Config::from_toml(&w.config_text(&url, Some(&dlq), ""))
        .expect("config");
    let app = invalidator_lambda::app::App::new(
        config,
        Some(invalidator_lambda::dlq::SqsDeadLetters::new(
            sqs.clone(),
            &dlq,
        )),
    )
    .await
    .expect("init");
    redis.stop();

    let started = Instant::now();
    let (report, response) = app.run(fixture_json("sqs-batch.json"), None).await.unwrap();
    let all: Vec<String> = (0..10).map(batch_id).collect();
    assert_eq!(failures(&response.unwrap()), all);
    assert!(report.outage.is_some());
    assert_eq!(report.dead_lettered, 0);
    assert!(
        drain(&sqs, &dlq).await.is_empty(),
        "an outage dead-letters nothing"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Redis errors are retried before the batch is given up"
    );

    // Direct SNS: the invocation fails (Lambda retries it).
    let (_, response) = app.run(fixture_json("sns-price.json"), None).await.unwrap();
    assert!(matches!(
        response,
        Err(HandlerError::NotDone { failed: 1, .. })
    ));
}

#[tokio::test]
async fn invocations_retry_redis_for_retry_for_not_for_the_init_wait() {
    // Init waits for Redis at most 5 s (Lambda gives init 10 s); the commands of an invocation
    // retry within `[redis] retry_for` (30 s here), bounded by the invocation's deadline.
    let w = World::new();
    let mut redis = OwnRedis::start();
    let url = format!("redis://127.0.0.1:{}/0", redis.port);
    let text = w
        .config_text(&url, None, "")
        .replace("retry_for = \"2s\"", "retry_for = \"30s\"");
    let config = invalidator::config::Config::from_toml(&text).expect("config");
    assert_eq!(config.redis.retry_for, Duration::from_secs(30));
    let app = invalidator_lambda::app::App::new(config, None)
        .await
        .expect("init");
    redis.stop();

    // The deadline still bounds the retries.
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let (report, _) = app
        .run(fixture_json("sns-price.json"), Some(deadline))
        .await
        .unwrap();
    assert!(report.outage.is_some());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    // Redis back after 7 s, past the init wait: the invocation rides the outage out.
    let port = redis.port;
    let restart = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_secs(7));
        OwnRedis::start_on(port)
    });
    let started = Instant::now();
    let (report, response) = app.run(fixture_json("sns-price.json"), None).await.unwrap();
    let _redis = restart.await.unwrap();
    assert_eq!(report.outage, None, "after {:?}", started.elapsed());
    assert_eq!(response.unwrap(), Value::Null);
    assert_eq!(report.summary.applied, 1);
    assert!(
        started.elapsed() >= Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_wait_shortfall_fails_the_batch_and_dead_letters_nothing() {
    // The test Redis has no replica: `WAIT 1` always falls short, an outage like any other.
    let w = World::new();
    let mut config = w.config(None, "");
    config.redis.wait_replicas = 1;
    config.redis.wait_timeout = Duration::from_millis(100);
    let app = invalidator_lambda::app::App::new(config, None)
        .await
        .expect("init");
    let (report, response) = app.run(fixture_json("sqs-batch.json"), None).await.unwrap();
    let all: Vec<String> = (0..10).map(batch_id).collect();
    assert_eq!(
        failures(&response.unwrap()),
        all,
        "SQS retries every message"
    );
    let outage = report.outage.expect("an outage");
    assert!(outage.contains("WAIT"), "{outage}");
    assert_eq!(report.dead_lettered, 0);
}

#[tokio::test]
async fn the_deadline_reached_fails_the_batch() {
    let w = World::new();
    let app = w.app(None).await;
    let (report, response) = app
        .run(
            fixture_json("sqs-batch.json"),
            Some(tokio::time::Instant::now()),
        )
        .await
        .unwrap();
    assert_eq!(failures(&response.unwrap()).len(), 10);
    assert!(report.outage.unwrap().contains("deadline"));
    assert_eq!(report.dead_lettered, 0);
}

#[tokio::test]
async fn a_retried_sns_event_is_a_duplicate_within_the_dedupe_window() {
    let w = World::new();
    let mut c = conn();
    let app = w
        .app_with(None, "\n[dedupe]\nwindow = \"10m\"\nprefix = \"P:seen:\"\n")
        .await;
    w.set(&mut c, &["P:price:2101"]);
    let (r1, _) = app.run(fixture_json("sns-price.json"), None).await.unwrap();
    assert_eq!(r1.summary.applied, 1);
    assert!(!w.exists(&mut c, "P:price:2101"));
    w.set(&mut c, &["P:price:2101"]);
    let (r2, response) = app.run(fixture_json("sns-price.json"), None).await.unwrap();
    assert_eq!(response.unwrap(), Value::Null);
    assert_eq!((r2.summary.applied, r2.summary.duplicate), (0, 1));
    assert!(w.exists(&mut c, "P:price:2101"), "not applied twice");
}

#[tokio::test]
async fn redeletes_run_before_the_invocation_returns() {
    let w = World::new();
    w.rules_fixture("redelete.yaml", "rules/promo_redelete_300ms.yaml");
    let mut c = conn();
    w.set(&mut c, &["P:promo:home"]);
    let app = w.app(None).await;
    let event = json!({"Records": [{
        "messageId": "m-promo", "receiptHandle": "r", "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:q", "attributes": {},
        "body": "{\"type\":\"promotion.changed\",\"id\":\"promo-1\",\"data\":{\"section\":\"home\"}}"
    }]});
    // A cache refill lands between the delete and the redelete.
    let refill = {
        let key = w.k("P:promo:home");
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(120)).await;
            let mut c = conn();
            let _: () = redis::cmd("SET")
                .arg(key)
                .arg("stale")
                .query(&mut c)
                .unwrap();
        })
    };
    let started = Instant::now();
    let (report, _) = app.run(event, None).await.unwrap();
    refill.await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(report.summary.redeletes, 1);
    assert!(
        !w.exists(&mut c, "P:promo:home"),
        "the stale refill was deleted again"
    );
}

#[tokio::test]
async fn a_long_redelete_runs_early_within_max_redelete_wait() {
    let w = World::new();
    w.rules_fixture("redelete.yaml", "rules/promo_redelete_1h.yaml");
    let app = w.app_with(None, "max_redelete_wait = \"200ms\"\n").await;
    let event = json!({"Records": [{
        "messageId": "m-promo", "receiptHandle": "r", "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:q", "attributes": {},
        "body": "{\"type\":\"promotion.changed\",\"id\":\"promo-2\",\"data\":{\"section\":\"deals\"}}"
    }]});
    let started = Instant::now();
    let (report, _) = app.run(event, None).await.unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(10),
        "{took:?}"
    );
    assert_eq!(report.summary.redeletes, 1);
}

#[tokio::test]
async fn metrics_are_flushed_as_embedded_metric_format() {
    let w = World::new();
    let app = w.app(None).await;
    let (report, _) = app.run(fixture_json("sqs-batch.json"), None).await.unwrap();
    assert_eq!(report.done, 8);
    let mut out = Vec::new();
    invalidator_lambda::telemetry::flush(app.metrics, "req-42", &mut out);
    let text = String::from_utf8(out).unwrap();
    let docs: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each EMF document is one JSON line"))
        .collect();
    let named = |name: &str| {
        docs.iter()
            .find(|d| d.get(name).is_some())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    let d = named("invalidator_lambda_messages_total");
    assert_eq!(
        d["_aws"]["CloudWatchMetrics"][0]["Namespace"],
        "invalidator"
    );
    assert_eq!(d["RequestId"], "req-42");
    assert!(d["function"].is_string());
    let d = named("invalidator_events_total");
    assert!(d["outcome"].is_string() && d["type"].is_string(), "{d}");
    named("invalidator_dlq_total");
}

#[tokio::test]
async fn an_unknown_event_is_an_error() {
    let w = World::new();
    let app = w.app(None).await;
    let e = app
        .run(json!({"Records": [{"eventSource": "aws:kinesis"}]}), None)
        .await
        .expect_err("an error");
    assert!(e.to_string().contains("aws:kinesis"), "{e}");
    let (report, response) = app.run(json!({"Records": []}), None).await.unwrap();
    assert_eq!(report.messages, 0);
    assert_eq!(failures(&response.unwrap()), Vec::<String>::new());
}
