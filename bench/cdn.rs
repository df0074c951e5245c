//! CloudFront batching figures: `cargo bench --bench cdn -- [--events N] [--products N]
//! [--seconds S] [--in-flight N] [--batch N] [--window 1s]`.
//!
//! A flash sale: N price events (default 100,000) over P hot products (default 1,000, uniform,
//! fixed-seed LCG) arriving evenly over S seconds (default 10) in units of `--batch` events (default
//! 500, the worker's `[kafka] batch_size`), at most `--in-flight` units at once (default 32; the
//! worker's `[kafka] max_in_flight`). Every unit goes through the real engine (`Engine::process`,
//! local Redis for the connection only: the rule only purges) to a CloudFront target whose endpoint
//! is a counting stub on 127.0.0.1 that answers like CloudFront. Runs:
//!
//! 1. batched: the CloudFront target as configured by default (window 1 s, no collapse);
//! 2. batched + collapse: `collapse_threshold = 50`;
//! 3. naive: one `CreateInvalidation` per event (one path, a fresh `CallerReference`), as a
//!    per-event handler does, sent with the same SDK to the same stub, 64 at a time.
//!
//! Requests and paths are counted at the stub (what CloudFront would receive and bill), next to
//! our own counters. Cost: paths × $0.005 (CloudFront's price after the first 1,000 paths a month).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use futures::stream::{FuturesUnordered, StreamExt};
use invalidator::apply::redis::Redis;
use invalidator::config::Config;
use invalidator::engine::{Engine, Outcome};
use invalidator::event::{Expanded, Position, expand_document};
use invalidator::rules::{CompileOptions, RuleSet};

const PRICE: f64 = 0.005;

#[derive(Default)]
struct Stub {
    requests: AtomicU64,
    paths: AtomicU64,
    references: Mutex<HashSet<String>>,
    largest: AtomicU64,
}

impl Stub {
    fn take(&self) -> (u64, u64, usize, u64) {
        let refs = std::mem::take(&mut *self.references.lock().unwrap()).len();
        (
            self.requests.swap(0, Ordering::SeqCst),
            self.paths.swap(0, Ordering::SeqCst),
            refs,
            self.largest.swap(0, Ordering::SeqCst),
        )
    }
}

async fn create_invalidation(
    State(stub): State<Arc<Stub>>,
    body: Bytes,
) -> (StatusCode, HeaderMap, String) {
    let text = String::from_utf8_lossy(&body);
    let paths = text.matches("<Path>").count() as u64;
    stub.requests.fetch_add(1, Ordering::SeqCst);
    stub.paths.fetch_add(paths, Ordering::SeqCst);
    stub.largest.fetch_max(paths, Ordering::SeqCst);
    if let Some(r) = text
        .split("<CallerReference>")
        .nth(1)
        .and_then(|r| r.split("</CallerReference>").next())
    {
        stub.references.lock().unwrap().insert(r.to_owned());
    }
    let n = stub.requests.load(Ordering::SeqCst);
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "text/xml".parse().unwrap());
    headers.insert(
        "location",
        format!("https://cloudfront.example/I{n}").parse().unwrap(),
    );
    (
        StatusCode::CREATED,
        headers,
        format!(
            r#"<?xml version="1.0"?><Invalidation xmlns="http://cloudfront.amazonaws.com/doc/2020-05-31/"><Id>I{n}</Id><Status>InProgress</Status><CreateTime>2026-11-23T00:00:00Z</CreateTime><InvalidationBatch><Paths><Quantity>0</Quantity></Paths><CallerReference>x</CallerReference></InvalidationBatch></Invalidation>"#
        ),
    )
}

struct Args {
    events: usize,
    products: u64,
    seconds: f64,
    in_flight: usize,
    batch: usize,
    window: String,
}

fn args() -> Args {
    let mut a = Args {
        events: 100_000,
        products: 1000,
        seconds: 10.0,
        in_flight: 32,
        batch: 500,
        window: "1s".into(),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let v = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--events" => a.events = v.parse().expect("--events N"),
            "--products" => a.products = v.parse().expect("--products N"),
            "--seconds" => a.seconds = v.parse().expect("--seconds S"),
            "--in-flight" => a.in_flight = v.parse().expect("--in-flight N"),
            "--batch" => a.batch = v.parse().expect("--batch N"),
            "--window" => a.window = v,
            // `cargo bench` passes --bench.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

/// Knuth's MMIX LCG; the high bits are used.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn events(a: &Args) -> Vec<(u64, String)> {
    let mut rng = Lcg(42);
    (0..a.events)
        .map(|i| {
            let p = rng.below(a.products);
            (
                p,
                format!(
                    r#"{{"type":"price.updated","id":"e-{i}","data":{{"product_id":"p{p}","new_price":{}}}}}"#,
                    1000 + i % 97
                ),
            )
        })
        .collect()
}

async fn engine(endpoint: &str, window: &str, collapse: Option<usize>) -> Engine {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("price.yaml"),
        "rules:\n  - name: price\n    on: price.updated\n    purge:\n      - target: cf\n        paths:\n          - /api/products/{product_id}\n",
    )
    .unwrap();
    let collapse = collapse
        .map(|t| format!("collapse_threshold = {t}\n"))
        .unwrap_or_default();
    let config = Config::from_toml(&format!(
        "[redis]\nurl = \"redis://127.0.0.1:6379/8\"\n\n[cdn.cf]\nkind = \"cloudfront\"\ndistribution_id = \"EBENCH\"\nendpoint_url = \"{endpoint}\"\nwindow = \"{window}\"\n{collapse}"
    ))
    .expect("config");
    let rules = RuleSet::load(
        dir.path(),
        &CompileOptions {
            limits: config.rule_limits(),
            cdn_targets: Some(vec!["cf".into()]),
        },
    )
    .expect("rules");
    let redis = Redis::connect(&config.redis, Some(Duration::from_secs(5)))
        .await
        .expect("Redis on 127.0.0.1:6379");
    let aws = invalidator::apply::aws::emulator("us-east-1");
    Engine::build_with(config, rules, redis, Some(&aws)).expect("engine")
}

/// Feeds the units at the arrival rate, at most `in_flight` at once. Returns (applied, seconds).
async fn batched(engine: &Engine, a: &Args, events: &[(u64, String)]) -> (usize, f64) {
    let units: Vec<Vec<Expanded>> = events
        .chunks(a.batch)
        .map(|c| {
            c.iter()
                .flat_map(|(_, line)| {
                    expand_document(line.clone().into_bytes(), Position::default(), 1 << 20)
                })
                .collect()
        })
        .collect();
    let n = units.len();
    let every = Duration::from_secs_f64(a.seconds / n as f64);
    let started = Instant::now();
    let mut due = started;
    let mut in_flight = FuturesUnordered::new();
    let mut units = units.into_iter();
    let mut next = units.next();
    let mut applied = 0;
    loop {
        if next.is_none() && in_flight.is_empty() {
            break;
        }
        let can_start = next.is_some() && in_flight.len() < a.in_flight;
        if can_start && Instant::now() >= due {
            let unit = next.take().unwrap();
            in_flight.push(engine.process(unit, false));
            next = units.next();
            due += every;
            continue;
        }
        tokio::select! {
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                let done = done.expect("unit applied");
                applied += done.items.iter().filter(|i| i.outcome == Outcome::Applied).count();
            }
            () = tokio::time::sleep_until(due.into()), if can_start => {}
        }
    }
    (applied, started.elapsed().as_secs_f64())
}

/// One `CreateInvalidation` per event, 64 at a time.
async fn naive(endpoint: &str, events: &[(u64, String)]) -> f64 {
    use aws_sdk_cloudfront::types::{InvalidationBatch, Paths};
    let conf =
        aws_sdk_cloudfront::config::Builder::from(&invalidator::apply::aws::emulator("us-east-1"))
            .endpoint_url(endpoint)
            .build();
    let client = aws_sdk_cloudfront::Client::from_conf(conf);
    let started = Instant::now();
    futures::stream::iter(events.iter().enumerate())
        .map(|(i, (p, _))| {
            let client = client.clone();
            async move {
                let batch = InvalidationBatch::builder()
                    .caller_reference(format!("naive-{i}"))
                    .paths(
                        Paths::builder()
                            .quantity(1)
                            .items(format!("/api/products/p{p}"))
                            .build()
                            .unwrap(),
                    )
                    .build()
                    .unwrap();
                client
                    .create_invalidation()
                    .distribution_id("EBENCH")
                    .invalidation_batch(batch)
                    .send()
                    .await
                    .expect("stub answers");
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<()>>()
        .await;
    started.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    let stub = Arc::new(Stub::default());
    let app = Router::new()
        .route(
            "/2020-05-31/distribution/{id}/invalidation",
            post(create_invalidation),
        )
        .with_state(stub.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let events = events(&a);
    let distinct: HashSet<u64> = events.iter().map(|(p, _)| *p).collect();
    println!(
        "{} price events over {} products ({} touched) in {} s: units of {} events, at most {} in flight, window {}",
        a.events,
        a.products,
        distinct.len(),
        a.seconds,
        a.batch,
        a.in_flight,
        a.window
    );
    println!(
        "{:<26} {:>9} {:>11} {:>12} {:>13} {:>10} {:>9}",
        "run", "requests", "paths sent", "largest req", "cost @$0.005", "applied", "seconds"
    );
    for (label, collapse) in [("batched", None), ("batched + collapse 50", Some(50))] {
        let e = engine(&endpoint, &a.window, collapse).await;
        let (applied, secs) = batched(&e, &a, &events).await;
        let (requests, paths, refs, largest) = stub.take();
        let ours = &e.cdn.stats()[0].1;
        assert_eq!(ours.requests, requests, "our count matches the endpoint's");
        assert_eq!(ours.paths_sent, paths);
        assert_eq!(refs as u64, requests, "a CallerReference per request");
        println!(
            "{label:<26} {requests:>9} {paths:>11} {largest:>12} {:>13} {applied:>10} {secs:>9.2}",
            format!("${:.2}", paths as f64 * PRICE)
        );
        if collapse.is_some() {
            println!(
                "{:<26} (collapses: {}, paths collapsed: {}; paths requested by units: {})",
                "", ours.collapses, ours.paths_collapsed, ours.paths_requested
            );
        } else {
            println!(
                "{:<26} (paths requested by units after per-unit coalescing: {})",
                "", ours.paths_requested
            );
        }
    }
    let secs = naive(&endpoint, &events).await;
    let (requests, paths, refs, largest) = stub.take();
    assert_eq!(refs as u64, requests);
    println!(
        "{:<26} {requests:>9} {paths:>11} {largest:>12} {:>13} {:>10} {secs:>9.2}",
        "naive (one per event)",
        format!("${:.2}", paths as f64 * PRICE),
        "-"
    );
}
