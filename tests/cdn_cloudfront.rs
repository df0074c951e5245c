//! CloudFront targets end to end: the engine (real Redis) with CloudFront batchers pointed at
//! moto_server (a distribution created per test, checked with ListInvalidations/GetInvalidation)
//! or at a local stub endpoint (wiremock) that answers with CloudFront's XML, errors included.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use common::World;
use common::aws::{
    cloudfront, create_distribution, created_xml, error_xml, invalidations, moto_url, request_paths,
};
use common::engine::{Engine, EngineError, Outcome, UnitResult, process, process_concurrently};
use wiremock::matchers::{any, body_string_contains, method, path_regex};
use wiremock::{Match, Mock, MockServer, Request, ResponseTemplate};

fn cf_target(name: &str, distribution: &str, endpoint: &str, extra: &str) -> String {
    format!(
        "[cdn.{name}]\nkind = \"cloudfront\"\ndistribution_id = \"{distribution}\"\nendpoint_url = \"{endpoint}\"\n{extra}\n"
    )
}

/// A world under the rules of `tests/fixtures/cdn/price.yaml` (a price change purges
/// `/api/products/{product_id}` on `cf`), `cf` being `distribution` at `endpoint` with `extra`
/// (its window, …).
fn price_world(distribution: &str, endpoint: &str, extra: &str) -> World {
    let mut w = World::new().with_rules("cdn/price.yaml");
    w.extra_config = cf_target("cf", distribution, endpoint, extra);
    w
}

fn price_event(i: usize, product: &str) -> String {
    format!(
        r#"{{"type":"price.updated","id":"e-{i}","data":{{"product_id":"{product}","new_price":{i}}}}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_price_events_from_concurrent_units_are_one_invalidation_per_distribution() {
    let cf = cloudfront(&moto_url());
    let plain = create_distribution(&cf).await;
    let collapsing = create_distribution(&cf).await;
    let mut w = World::new().with_rules("cdn/price_two_targets.yaml");
    // A window long enough for 10,000 events to be planned by a debug build on a busy machine.
    w.extra_config = cf_target("cf", &plain, &moto_url(), "window = \"5s\"")
        + &cf_target(
            "cf-collapse",
            &collapsing,
            &moto_url(),
            "window = \"5s\"\ncollapse_threshold = 50",
        );
    let engine = Arc::new(w.engine().await);

    // 10 units of 1,000 events, 100 products; every unit in flight at once, as the worker (or
    // an in-flight replay) keeps them: they share the window.
    let units: Vec<Vec<String>> = (0..10)
        .map(|u| {
            (0..1000)
                .map(|i| {
                    let n = u * 1000 + i;
                    price_event(n, &format!("p{}", n % 100))
                })
                .collect()
        })
        .collect();
    let outcomes = process_concurrently(engine.clone(), units).await;
    assert_eq!(outcomes.len(), 10_000);
    assert!(outcomes.iter().all(|o| *o == Outcome::Applied));

    let sent = invalidations(&cf, &plain).await;
    assert_eq!(
        sent.len(),
        1,
        "one CreateInvalidation for the window: {sent:?}"
    );
    let paths: BTreeSet<&str> = sent[0].2.iter().map(String::as_str).collect();
    assert_eq!(sent[0].2.len(), 100);
    assert_eq!(paths.len(), 100, "no duplicate path");
    assert!(paths.contains("/api/products/p42"));

    let collapsed = invalidations(&cf, &collapsing).await;
    assert_eq!(collapsed.len(), 1, "{collapsed:?}");
    assert_eq!(collapsed[0].2, vec!["/api/products/*".to_string()]);

    let stats: HashMap<String, _> = engine.cdn.stats().into_iter().collect();
    assert_eq!(stats["cf"].requests, 1);
    assert_eq!(stats["cf"].paths_sent, 100);
    assert_eq!(
        stats["cf"].paths_requested, 1000,
        "each unit coalesced its 1,000 events into 100 paths"
    );
    assert_eq!(stats["cf-collapse"].paths_sent, 1);
    assert_eq!(stats["cf-collapse"].collapses, 1);
    assert_eq!(stats["cf-collapse"].paths_collapsed, 100);
    assert_eq!(stats["cf"].pending, 0);
    assert!((stats["cf"].estimated_cost_usd() - 0.5).abs() < 1e-9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_3000_paths_are_several_requests_none_over_3000() {
    let cf = cloudfront(&moto_url());
    let distribution = create_distribution(&cf).await;
    let w = price_world(&distribution, &moto_url(), "window = \"1s\"");
    let engine = Arc::new(w.engine().await);
    let units: Vec<Vec<String>> = (0..7)
        .map(|u| {
            (0..1000)
                .map(|i| price_event(u * 1000 + i, &format!("p{}", u * 1000 + i)))
                .collect()
        })
        .collect();
    let outcomes = process_concurrently(engine, units).await;
    assert!(outcomes.iter().all(|o| *o == Outcome::Applied));

    let sent = invalidations(&cf, &distribution).await;
    assert!(sent.len() >= 3, "{} requests", sent.len());
    assert!(sent.iter().all(|(_, _, p)| p.len() <= 3000));
    let all: BTreeSet<&str> = sent
        .iter()
        .flat_map(|(_, _, p)| p)
        .map(String::as_str)
        .collect();
    let total: usize = sent.iter().map(|(_, _, p)| p.len()).sum();
    assert_eq!(all.len(), 7000, "every path sent");
    assert_eq!(total, 7000, "and sent once");
    let refs: BTreeSet<&str> = sent.iter().map(|(_, r, _)| r.as_str()).collect();
    assert_eq!(refs.len(), sent.len(), "a reference per request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_paths_twice_are_two_invalidations_with_distinct_references() {
    // The same product repriced twice, a window apart: had both batches the same reference,
    // CloudFront would answer the second with the first invalidation and purge nothing.
    let cf = cloudfront(&moto_url());
    let distribution = create_distribution(&cf).await;
    let w = price_world(&distribution, &moto_url(), "window = \"100ms\"");
    let engine = w.engine().await;
    for i in 0..2 {
        let unit = process(&engine, &[price_event(i, "p1")]).await.unwrap();
        assert_eq!(unit.items[0].outcome, Outcome::Applied);
    }
    let sent = invalidations(&cf, &distribution).await;
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0].2, sent[1].2);
    assert_ne!(sent[0].1, sent[1].1, "distinct CallerReferences");
}

/// A stub CloudFront: mounts `responses` in order (each for one request), then success.
async fn stub(responses: Vec<ResponseTemplate>) -> MockServer {
    let s = MockServer::start().await;
    for r in responses {
        Mock::given(method("POST"))
            .and(path_regex(
                "^/2020-05-31/distribution/[A-Z0-9]+/invalidation$",
            ))
            .respond_with(r)
            .up_to_n_times(1)
            .mount(&s)
            .await;
    }
    Mock::given(method("POST"))
        .and(path_regex(
            "^/2020-05-31/distribution/[A-Z0-9]+/invalidation$",
        ))
        .respond_with(created("I1"))
        .mount(&s)
        .await;
    s
}

/// Makes `s` answer every POST that matches `m` with `r`.
async fn answer(s: &MockServer, m: impl Match + 'static, r: ResponseTemplate) {
    Mock::given(method("POST"))
        .and(m)
        .respond_with(r)
        .mount(s)
        .await;
}

/// CloudFront's answer to an accepted `CreateInvalidation`: invalidation `id` created.
fn created(id: &str) -> ResponseTemplate {
    ResponseTemplate::new(201)
        .insert_header(
            "Location",
            format!("https://cloudfront.amazonaws.com/inv/{id}"),
        )
        .set_body_raw(created_xml(id), "text/xml")
}

fn aws_error(status: u16, code: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_raw(error_xml(code, "test"), "text/xml")
}

/// Waits until the stub answered its first request, and a little more for the batcher to read
/// the answer: the retry then waits at least 200 ms (the first backoff step).
async fn first_answered(s: &MockServer) {
    while s.received_requests().await.unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(40)).await;
}

/// Price event 1 of product `a` as a unit, and, once the stub answered its first request, price
/// event 2 of product `b` as another, while the first may still wait for its retry.
async fn a_then_b_once_answered(
    engine: &Engine,
    s: &MockServer,
) -> (
    Result<UnitResult, EngineError>,
    Result<UnitResult, EngineError>,
) {
    let (a, b) = ([price_event(1, "a")], [price_event(2, "b")]);
    let first = process(engine, &a);
    let second = async {
        first_answered(s).await;
        process(engine, &b).await
    };
    futures::join!(first, second)
}

async fn requests(s: &MockServer) -> Vec<(Vec<String>, String)> {
    s.received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r: &Request| request_paths(&r.body))
        .collect()
}

#[tokio::test]
async fn throttling_and_too_many_in_progress_are_retried_as_the_same_request() {
    let s = stub(vec![
        aws_error(400, "Throttling"),
        aws_error(400, "TooManyInvalidationsInProgress"),
        aws_error(429, "TooManyRequestsException"),
    ])
    .await;
    let w = price_world("E1STUB", &s.uri(), "window = \"50ms\"");
    let engine = w.engine().await;
    let lines = [
        price_event(1, "p1"),
        price_event(2, "p2"),
        price_event(3, "p1"),
    ];
    let unit = process(&engine, &lines).await.unwrap();
    assert!(unit.items.iter().all(|i| i.outcome == Outcome::Applied));
    assert_eq!(unit.cdn.purged, 2);

    let reqs = requests(&s).await;
    assert_eq!(reqs.len(), 4, "3 refused, then accepted: {reqs:?}");
    for (paths, reference) in &reqs {
        assert_eq!(paths, &["/api/products/p1", "/api/products/p2"]);
        assert_eq!(
            reference, &reqs[0].1,
            "nothing new came: the very same request"
        );
    }
    let stats = &engine.cdn.stats()[0].1;
    assert_eq!(stats.throttles, 3);
    assert_eq!(stats.requests, 1);
    assert_eq!(stats.paths_sent, 2);
}

#[tokio::test]
async fn paths_that_arrive_while_a_batch_is_throttled_merge_into_it() {
    let s = stub(vec![
        aws_error(400, "TooManyInvalidationsInProgress"),
        aws_error(400, "TooManyInvalidationsInProgress"),
    ])
    .await;
    let engine = price_world("E1STUB", &s.uri(), "window = \"50ms\"")
        .engine()
        .await;
    // The first batch is refused at once and waits at least 200 ms for its retry.
    let (first, second) = a_then_b_once_answered(&engine, &s).await;
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(first.items[0].outcome, Outcome::Applied);
    assert_eq!(second.items[0].outcome, Outcome::Applied);

    let reqs = requests(&s).await;
    let accepted = reqs.last().unwrap();
    assert_eq!(
        accepted.0,
        vec!["/api/products/a", "/api/products/b"],
        "one request for both: {reqs:?}"
    );
    assert_ne!(accepted.1, reqs[0].1, "new content, new reference");
    assert_eq!(engine.cdn.stats()[0].1.requests, 1);
}

#[tokio::test]
async fn a_request_with_an_unknown_outcome_is_retried_unchanged() {
    // A 500 may come after CloudFront made the invalidation: the retry must be the same request
    // (same reference: CloudFront then answers with that invalidation), even if newer paths came.
    let s = stub(vec![aws_error(500, "InternalError")]).await;
    let engine = price_world("E1STUB", &s.uri(), "window = \"50ms\"")
        .engine()
        .await;
    let (first, second) = a_then_b_once_answered(&engine, &s).await;
    first.unwrap();
    let second = second.unwrap();
    assert_eq!(second.items[0].outcome, Outcome::Applied);

    let reqs = requests(&s).await;
    let with_a: Vec<&(Vec<String>, String)> = reqs
        .iter()
        .filter(|(p, _)| p.contains(&"/api/products/a".to_string()))
        .collect();
    assert_eq!(with_a.len(), 2, "{reqs:?}");
    assert_eq!(with_a[0], with_a[1], "same paths, same reference");
    assert_eq!(with_a[0].0, vec!["/api/products/a"]);
    let with_b: Vec<_> = reqs
        .iter()
        .filter(|(p, _)| p.contains(&"/api/products/b".to_string()))
        .collect();
    assert_eq!(with_b.len(), 1);
    assert_ne!(with_b[0].1, with_a[0].1);
}

#[tokio::test]
async fn a_path_cloudfront_refuses_dead_letters_its_events_and_the_others_are_purged() {
    let s = MockServer::start().await;
    let refused = body_string_contains("<Path>/api/products/p-bad</Path>");
    answer(&s, refused, aws_error(400, "InvalidArgument")).await;
    answer(&s, any(), created("I1")).await;
    // `é` is allowed in values here, so a path that must be URL-encoded reaches the target.
    let w = price_world(
        "E1STUB",
        &s.uri(),
        "window = \"50ms\"\n\n[limits]\nsafe_value = \"^[A-Za-z0-9é_-]{1,64}$\"",
    );
    let mut lines: Vec<String> = (1..=9).map(|i| price_event(i, &format!("p-{i}"))).collect();
    lines.push(price_event(10, "p-bad"));
    lines.push(price_event(11, "p-bad"));
    lines.push(price_event(12, "café"));
    let summary = w.replay_lines(&lines, false).await;
    assert_eq!(summary.applied, 9);
    assert_eq!(summary.dead_lettered, 3);
    assert!(summary.unavailable.is_none());

    let dlq = w.dlq();
    let ids: BTreeSet<&str> = dlq
        .iter()
        .map(|r| r["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, BTreeSet::from(["e-10", "e-11", "e-12"]));
    assert!(dlq.iter().all(|r| r["reason"] == "cdn_rejected"), "{dlq:?}");
    let bad = dlq.iter().find(|r| r["event_id"] == "e-10").unwrap();
    assert!(
        bad["error"].as_str().unwrap().contains("InvalidArgument"),
        "{bad}"
    );
    let cafe = dlq.iter().find(|r| r["event_id"] == "e-12").unwrap();
    assert!(
        cafe["error"].as_str().unwrap().contains("URL-encoded"),
        "{cafe}"
    );

    // Bisection: the accepted requests hold each good path exactly once, and never the bad one.
    let received = s.received_requests().await.unwrap();
    let mut accepted: Vec<String> = Vec::new();
    for r in &received {
        let (paths, _) = request_paths(&r.body);
        assert!(
            !paths.iter().any(|p| p.contains("caf")),
            "never sent: {paths:?}"
        );
        if !paths.contains(&"/api/products/p-bad".to_string()) {
            accepted.extend(paths);
        }
    }
    accepted.sort();
    let expected: Vec<String> = (1..=9).map(|i| format!("/api/products/p-{i}")).collect();
    assert_eq!(accepted, expected);
    let (_, cf) = &summary.cdn[0];
    assert_eq!(cf.paths_sent, 9);
    assert_eq!(cf.rejected, 2, "p-bad and café");
}

#[tokio::test]
async fn an_unreachable_cloudfront_is_an_outage_and_nothing_is_dead_lettered() {
    let w = price_world(
        "E1STUB",
        "http://127.0.0.1:1",
        "window = \"10ms\"\ntimeout = \"200ms\"\nretry_for = \"800ms\"",
    );
    let summary = w
        .replay_lines(&[price_event(1, "p1"), price_event(2, "p2")], false)
        .await;
    assert_eq!(summary.dead_lettered, 0);
    assert_eq!(summary.applied, 0);
    assert_eq!(summary.not_applied, 2);
    let u = summary.unavailable.as_deref().unwrap();
    assert!(u.contains("CDN target `cf` unavailable"), "{u}");
    assert_eq!(summary.exit_code(), 3);
    assert!(w.dlq().is_empty());
}

#[tokio::test]
async fn access_denied_is_an_outage_not_a_rejection() {
    let s = MockServer::start().await;
    answer(&s, any(), aws_error(403, "AccessDenied")).await;
    let w = price_world(
        "E1STUB",
        &s.uri(),
        "window = \"10ms\"\nretry_for = \"500ms\"",
    );
    let engine = w.engine().await;
    let err = process(&engine, &[price_event(1, "p1")]).await.unwrap_err();
    assert!(err.to_string().contains("AccessDenied"), "{err}");
    assert!(
        s.received_requests().await.unwrap().len() >= 2,
        "retried first"
    );
}

#[tokio::test]
async fn replay_summary_shows_the_cloudfront_figures() {
    let cf = cloudfront(&moto_url());
    let distribution = create_distribution(&cf).await;
    let w = price_world(&distribution, &moto_url(), "window = \"50ms\"");
    let lines: Vec<String> = (0..50)
        .map(|i| price_event(i, &format!("p{}", i % 5)))
        .collect();
    let run = w.bin_env(
        &["replay", &w.lines("in.jsonl", &lines).display().to_string()],
        common::aws::CHILD_ENV,
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .contains("cloudfront cf: 1 CreateInvalidation, 5 paths sent for 5 requested"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("est. cost:     $0.025"),
        "{}",
        run.stdout
    );
    assert_eq!(invalidations(&cf, &distribution).await.len(), 1);
}

/// The worker, a CloudFront target with a window longer than the shutdown deadline, and SIGTERM:
/// the waiting batch is sent at once, the offsets are committed, the exit is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_shutdown_sends_the_waiting_batch_instead_of_waiting_out_the_window() {
    use common::kafka::{Msg, Stream, Worker, free_port};
    let cf = cloudfront(&moto_url());
    let distribution = create_distribution(&cf).await;
    let s = Stream::new(
        price_world(&distribution, &moto_url(), "window = \"5m\""),
        "cf",
        1,
    );
    let msgs: Vec<Msg> = (0..20)
        .map(|i| Msg::json(0, price_event(i, &format!("p{}", i % 4))))
        .collect();
    let last = s
        .produce(0..20, &msgs)
        .iter()
        .map(|(_, o)| *o)
        .max()
        .unwrap();
    let port = free_port();
    let config = s.config(port, "");
    let mut worker = Worker::start_env(&s.w, "worker", &config, port, common::aws::CHILD_ENV);
    let pending = "invalidator_cdn_pending_paths{target=\"cf\"}";
    worker.expect_within(
        Duration::from_secs(30),
        "4 paths wait for the 5-minute window",
        || worker.metric(pending) == 4.0,
    );
    assert!(invalidations(&cf, &distribution).await.is_empty());
    assert_eq!(s.committed(), vec![-1001], "nothing committed yet");

    worker.signal(libc::SIGTERM);
    let status = worker
        .wait(Duration::from_secs(20))
        .expect("exits before the deadline");
    assert!(status.success(), "{status:?}\n{}", worker.logs());
    let sent = invalidations(&cf, &distribution).await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].2.len(), 4);
    assert!(s.committed()[0] > last, "committed past the last event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_keeps_units_in_flight_that_share_one_window() {
    let cf = cloudfront(&moto_url());
    let distribution = create_distribution(&cf).await;
    let w = price_world(
        &distribution,
        &moto_url(),
        "window = \"5s\"\n\n[replay]\nbatch_size = 1000\nmax_in_flight = 10",
    );
    let lines: Vec<String> = (0..10_000)
        .map(|i| price_event(i, &format!("p{}", i % 100)))
        .collect();
    let summary = w.replay_lines(&lines, false).await;
    assert_eq!(summary.applied, 10_000);
    let sent = invalidations(&cf, &distribution).await;
    assert_eq!(sent.len(), 1, "{} requests", sent.len());
    assert_eq!(sent[0].2.len(), 100);
    let (_, stats) = &summary.cdn[0];
    assert_eq!(stats.requests, 1);
    assert_eq!(stats.paths_sent, 100);
    assert_eq!(stats.paths_requested, 1000, "10 units × 100 paths");
}
