//! The Grafana dashboard of `deploy/grafana/invalidator.json` works against the real service: a
//! worker processes a continuous stream of events (deletes with `redelete_after`, purges on a
//! CloudFront target on moto and on an HTTP target that throttles and fails at first, malformed
//! events dead-lettered), a real Prometheus server (Debian's `prometheus`) scrapes it and
//! evaluates `deploy/prometheus/`'s rules, and every panel query (variables substituted as Grafana
//! does) and every recording rule returns data through Prometheus's HTTP API. Every metric a panel
//! reads must have a series of its own, so that neither `... or vector(0)` nor a misspelled name
//! inside a query that still returns something can pass; a control shows the check catches both.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use common::World;
use common::aws::{CHILD_ENV, cloudfront, create_distribution, moto_url};
use common::kafka::{Msg, Stream, Worker, create_topic, free_port, price_event, produce};
use common::prometheus::{Prometheus, metric_names, rule_files, selectors};
use serde_json::Value;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

/// `$__rate_interval`: Grafana puts max(4 × the scrape interval, the step + the scrape interval)
/// there, a minute with the default 15 s scrape interval; here a minute holds many 1 s samples.
const RATE_INTERVAL: &str = "1m";
/// The Prometheus job, which the dashboard's `job` variable lists.
const JOB: &str = "invalidator";
/// How long a query may take to return data (the first scrapes, the consumer lag's 5 s
/// statistics, a CloudFront batch window).
const WAIT: Duration = Duration::from_secs(60);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn dashboard() -> Value {
    let path = root().join("deploy/grafana/invalidator.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every panel, rows' nested panels included.
fn panels(d: &Value) -> Vec<Value> {
    let mut all = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        all.push(p.clone());
        all.extend(p["panels"].as_array().into_iter().flatten().cloned());
    }
    all
}

/// (panel title, query) of every target of every panel.
fn queries(d: &Value) -> Vec<(String, String)> {
    let mut all = Vec::new();
    for p in panels(d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("expr");
            all.push((
                p["title"].as_str().unwrap_or("").to_owned(),
                expr.to_owned(),
            ));
        }
    }
    all
}

/// The names the `record:` rules of `files` record.
fn recorded(files: &[PathBuf]) -> Vec<String> {
    let mut names = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).unwrap();
        let doc: Value =
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for group in doc["groups"].as_array().expect("groups") {
            let rules = group["rules"].as_array().expect("rules");
            names.extend(
                rules
                    .iter()
                    .filter_map(|r| r["record"].as_str().map(str::to_owned)),
            );
        }
    }
    names
}

/// `expr` as Grafana sends it: `$__rate_interval` is an interval, `$job` (every value of the
/// variable: the one job here) the job name. A variable left over is a typo.
fn as_grafana_sends(expr: &str) -> String {
    let out = expr
        .replace("$__rate_interval", RATE_INTERVAL)
        .replace("${job}", JOB)
        .replace("$job", JOB);
    assert!(!out.contains('$'), "an unknown variable in `{expr}`");
    out
}

#[test]
fn every_panel_has_a_title_and_queries_the_datasource_variable() {
    let d = dashboard();
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let ds = vars
        .iter()
        .find(|v| v["name"] == "datasource")
        .expect("a `datasource` variable");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    let mut targets = 0;
    for p in panels(&d) {
        let title = p["title"].as_str().unwrap_or("");
        assert!(!title.trim().is_empty(), "a panel without a title: {p}");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "panel {title}");
        let ts = p["targets"].as_array().filter(|t| !t.is_empty());
        let ts = ts.unwrap_or_else(|| panic!("panel {title}: no targets"));
        for t in ts {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}: {t}");
            let expr = t["expr"].as_str().unwrap_or("");
            assert!(!expr.trim().is_empty(), "{title}: a target without expr");
            as_grafana_sends(expr);
            targets += 1;
        }
    }
    assert!(targets >= 20, "only {targets} queries");
}

#[test]
fn the_counters_of_rare_events_are_exported_at_zero_from_the_start() {
    let handle = invalidator::telemetry::install_prometheus().expect("recorder");
    let text = handle.render();
    for line in [
        "invalidator_dlq_write_failures_total 0",
        "invalidator_redis_failovers_total 0",
        "invalidator_redis_wait_shortfall_total 0",
        "invalidator_unit_retries_total{cause=\"redis\"} 0",
        "invalidator_unit_retries_total{cause=\"cdn\"} 0",
    ] {
        assert!(text.contains(line), "no `{line}` in /metrics:\n{text}");
    }
}

/// `expr` succeeds with data, and so does `count(m)` for every metric `m` it reads and every
/// selector `m{...}` it has (a misspelled label or value matches nothing); returns how many
/// series `expr` returned.
fn check(p: &Prometheus, expr: &str, wait: Duration) -> Result<usize, String> {
    let series = p.query_with_data(expr, wait)?.len();
    let names = metric_names(expr);
    if names.is_empty() {
        return Err(format!("`{expr}` reads no metric"));
    }
    for read in names.into_iter().chain(selectors(expr)) {
        p.query_with_data(&format!("count({read})"), wait)
            .map_err(|e| format!("{read} (in `{expr}`) has no series: {e}"))?;
    }
    Ok(series)
}

/// The `job` variable lists [`JOB`]: its `label_values(metric, label)` is Grafana's
/// `group by (label) (metric)`.
fn check_job_variable(d: &Value, p: &Prometheus) -> Result<(), String> {
    let job_var = d["templating"]["list"]
        .as_array()
        .and_then(|l| l.iter().find(|v| v["name"] == "job"))
        .ok_or("no `job` variable")?;
    let def = job_var["definition"].as_str().unwrap_or("");
    let (metric, label) = def
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
        .and_then(|r| r.split_once(", "))
        .ok_or_else(|| format!("the job variable's query is not label_values(m, l): {def}"))?;
    let values = p.query_with_data(&format!("group by ({label}) ({metric})"), WAIT)?;
    if !values.iter().any(|v| v["metric"][label] == JOB) {
        return Err(format!("the job variable does not list {JOB}: {values:?}"));
    }
    Ok(())
}

/// Fails with `e`, the worker's log and Prometheus's.
fn fail(worker: &Worker, prometheus: &Prometheus, e: String) -> ! {
    panic!(
        "{e}\n--- worker log ---\n{}\n--- prometheus log ---\n{}",
        worker.logs(),
        prometheus.log()
    )
}

/// Produces price events (and a malformed one in every batch) until dropped.
struct Producer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Producer {
    fn start(topic: String, partitions: i32, from: usize) -> Producer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut i = from;
            while !flag.load(Ordering::Relaxed) {
                let mut msgs: Vec<Msg> = (i..i + 10)
                    .map(|n| Msg::json(n as i32 % partitions, price_event(n)))
                    .collect();
                msgs.push(Msg::json(0, r#"{"type": "price.updated", oops"#.into()));
                produce(&topic, &msgs);
                i += 10;
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        Producer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Rules: a price change deletes the price (and again a second later) and purges the product on
/// the CloudFront target `cf` and on the HTTP target `edge`.
const RULES: &str = "rules:
  - name: price
    on: price.updated
    delete:
      - P:price:{sku}
    redelete_after: 1s
    purge:
      - target: cf
        paths:
          - /api/products/{sku}
      - target: edge
        paths:
          - /products/{sku}
";

/// A world under [`RULES`]: `cf` is a new distribution on moto, `edge` a node that throttles
/// its first requests, fails the next ones, then accepts.
fn world(rt: &tokio::runtime::Runtime, edge: &MockServer) -> World {
    let distribution = rt.block_on(create_distribution(&cloudfront(&moto_url())));
    let mut w = World::new();
    w.rules("price.yaml", RULES);
    w.extra_config = format!(
        "[cdn.cf]\nkind = \"cloudfront\"\ndistribution_id = \"{distribution}\"\n\
         endpoint_url = \"{}\"\n\n\
         [cdn.edge]\nkind = \"http\"\nurls = [\"{}\"]\nmethod = \"PURGE\"\ntimeout = \"2s\"\n",
        moto_url(),
        edge.uri()
    );
    w
}

async fn throttling_then_failing_then_accepting_node() -> MockServer {
    let s = MockServer::start().await;
    for (status, times) in [(429, Some(3)), (500, Some(3)), (200, None)] {
        let mock = Mock::given(method("PURGE")).respond_with(ResponseTemplate::new(status));
        match times {
            Some(n) => mock.up_to_n_times(n).mount(&s).await,
            None => mock.mount(&s).await,
        }
    }
    s
}

#[test]
fn every_panel_query_and_recording_rule_returns_data_from_a_real_prometheus() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let edge = rt.block_on(throttling_then_failing_then_accepting_node());
    let s = Stream::new(world(&rt, &edge), "dash", 2);
    create_topic(&format!("{}.dlq", s.topic), 1);
    let mut c = common::conn();
    s.seed_and_produce(&mut c, 0..50);
    let port = free_port();
    let worker = Worker::start_env(&s.w, "w", &s.config(port, ""), port, CHILD_ENV);
    let _producer = Producer::start(s.topic.clone(), s.partitions, 50);
    // Bound before Prometheus picks a free port of its own, which could otherwise be this one.
    worker.expect_within(
        Duration::from_secs(30),
        "the worker serves /metrics",
        || worker.get("/metrics").is_some(),
    );
    let rules = rule_files(&root().join("deploy/prometheus"));
    let prometheus = Prometheus::start(JOB, &[port], &rules);

    let d = dashboard();
    check_job_variable(&d, &prometheus).unwrap_or_else(|e| fail(&worker, &prometheus, e));

    let mut checked = 0;
    for (title, expr) in queries(&d) {
        let n = check(&prometheus, &as_grafana_sends(&expr), WAIT)
            .unwrap_or_else(|e| fail(&worker, &prometheus, format!("panel {title}: {e}")));
        eprintln!("{title}: {n} series from `{expr}`");
        checked += 1;
    }
    for name in recorded(&rules) {
        let n = check(&prometheus, &name, WAIT)
            .unwrap_or_else(|e| fail(&worker, &prometheus, format!("recording rule: {e}")));
        eprintln!("recording rule {name}: {n} series");
        checked += 1;
    }
    assert!(checked >= 25, "only {checked} queries checked");

    // Control: a misspelled metric or label value behind `or vector(0)` returns data, and a
    // query that does not parse returns an error; the check refuses all three.
    let (_, first) = &queries(&d)[0];
    let misspelled = format!(
        "({}) or vector(0)",
        as_grafana_sends(first).replace("invalidator_events_total", "invalidator_event_total")
    );
    assert!(prometheus.query_with_data(&misspelled, WAIT).is_ok());
    let short = Duration::from_secs(3);
    let e = check(&prometheus, &misspelled, short).expect_err("a misspelled metric is caught");
    assert!(e.starts_with("invalidator_event_total (in"), "{e}");
    let e = check(&prometheus, "sum(rate(invalidator_events_total[1m])", short)
        .expect_err("a query that does not parse is caught");
    assert!(e.contains("bad_data"), "{e}");
    let typo = r#"sum(rate(invalidator_events_total{outcome="aplied"}[1m])) or vector(0)"#;
    let e = check(&prometheus, typo, short).expect_err("a misspelled label value is caught");
    assert!(
        e.starts_with(r#"invalidator_events_total{outcome="aplied"} (in"#),
        "{e}"
    );
}
