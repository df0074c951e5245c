//! Cold start and per-invocation time of `invalidator-lambda` next to the Python handler a team
//! would typically write (`bench/lambda/handler.py`: redis-py, one DELETE per key), measured the
//! same way: both run as real Lambda functions behind the same runtime API emulator
//! (`cargo lambda watch --only-lambda-apis`), both are sent the same 10-record SQS batch
//! (SNS-enveloped bodies) over the same HTTP invoke API, both delete the same keys in the local
//! Redis (DB 9, a random prefix).
//!
//! For each of `--rounds` rounds, Rust and Python take turns:
//! - init: from spawning the process to its "init done" line (rules compiled or mapping built,
//!   Redis connected, ready to poll), on the wall clock both share;
//! - cold: from spawning to the answer of the first invocation;
//! - warm: `--warm` more invocations, each timed from request to answer (the keys are set again
//!   before each one, outside the timing), and the answer checked (no failure, keys gone);
//! - peak RSS of the process (VmHWM).
//!
//! Run: `cargo bench -p invalidator-lambda --bench cold_warm -- --rounds 10 --warm 50`, or with
//! the binary as `cargo lambda build --release` makes it: `-- --rust-bin PATH/bootstrap`.
//! Needs: Redis on 127.0.0.1:6379, `cargo lambda` (pip install --no-deps cargo-lambda), and for
//! Python `pip install redis==8.1.0` (the runtime loop is `bench/lambda/bootstrap.py`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

struct Args {
    rounds: usize,
    warm: usize,
    python: String,
    /// The function binary (default: the one cargo built for this bench).
    rust_bin: PathBuf,
}

fn args() -> Args {
    let mut a = Args {
        rounds: 10,
        warm: 50,
        python: "python3".into(),
        rust_bin: PathBuf::from(env!("CARGO_BIN_EXE_invalidator-lambda")),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--rounds" => a.rounds = it.next().unwrap().parse().unwrap(),
            "--warm" => a.warm = it.next().unwrap().parse().unwrap(),
            "--python" => a.python = it.next().unwrap(),
            "--rust-bin" => a.rust_bin = std::fs::canonicalize(it.next().unwrap()).unwrap(),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// The interpreter itself, not a wrapper in front of it (a pyenv shim is a shell script that adds
/// some 150 ms to every start).
fn real_python(python: &str) -> String {
    let out = Command::new(python)
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python");
    assert!(out.status.success(), "{python} does not run");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

const REDIS_URL: &str = "redis://127.0.0.1:6379/9";

/// The events of the batch: (type, data) and the keys each one invalidates.
fn events() -> Vec<(Value, Vec<String>)> {
    let mut v = Vec::new();
    for i in 0..10u32 {
        let id = 5000 + i;
        let (kind, data, keys) = match i % 5 {
            0 | 1 => (
                "price.updated",
                json!({"product_id": id.to_string(), "old_price": 20, "new_price": 18}),
                vec![format!("price:{id}"), format!("product:{id}")],
            ),
            2 => (
                "inventory.changed",
                json!({"sku": format!("SKU-{id}"), "product_id": id.to_string(), "quantity": 0}),
                vec![format!("inventory:SKU-{id}")],
            ),
            3 => (
                "review.updated",
                json!({"product_id": id.to_string(), "review_id": "r-1"}),
                vec![format!("review:{id}")],
            ),
            _ => (
                "product.updated",
                json!({"product_id": id.to_string(), "fields": ["title"]}),
                vec![format!("product:{id}")],
            ),
        };
        v.push((
            json!({"type": kind, "id": format!("bench-{i}"), "time": "2026-11-22T10:00:00Z", "data": data}),
            keys,
        ));
    }
    v
}

/// A 10-record SQS event whose bodies are SNS notification envelopes (SNS → SQS, no raw delivery).
fn batch() -> Value {
    let records: Vec<Value> = events()
        .iter()
        .enumerate()
        .map(|(i, (e, _))| {
            let envelope = json!({
                "Type": "Notification",
                "MessageId": format!("bench-sns-{i}"),
                "TopicArn": "arn:aws:sns:us-east-1:123456789012:catalog-events",
                "Message": e.to_string(),
                "Timestamp": "2026-11-22T10:00:00.000Z",
                "SignatureVersion": "1",
                "Signature": "EXAMPLE",
                "SigningCertURL": "https://sns.us-east-1.amazonaws.com/cert.pem",
                "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe"
            });
            json!({
                "messageId": format!("bench-msg-{i}"),
                "receiptHandle": "AQEB...",
                "body": serde_json::to_string_pretty(&envelope).unwrap(),
                "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1795341600000"},
                "messageAttributes": {},
                "md5OfBody": "00000000000000000000000000000000",
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:catalog-invalidations",
                "awsRegion": "us-east-1"
            })
        })
        .collect();
    json!({ "Records": records })
}

fn all_keys(prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = events()
        .into_iter()
        .flat_map(|(_, k)| k)
        .map(|k| format!("{prefix}{k}"))
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Rust,
    Python,
    /// `bench/lambda/noop.py`: the emulator, the HTTP invoke and the runtime loop alone.
    Floor,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Rust => "Rust (invalidator-lambda)",
            Kind::Python => "Python (redis-py, bench/lambda/handler.py)",
            Kind::Floor => {
                "Floor (bench/lambda/noop.py: emulator + invoke + runtime loop, no work)"
            }
        }
    }
}

struct Sample {
    init: Duration,
    cold: Duration,
    warm: Vec<Duration>,
    rss_kib: u64,
}

fn spawn(kind: Kind, port: u16, prefix: &str, rules: &Path, log: &Path, a: &Args) -> (Proc, u128) {
    let mut c = match kind {
        Kind::Rust => {
            let mut c = Command::new(&a.rust_bin);
            c.env("INVALIDATOR_RULES__DIR", rules)
                .env("INVALIDATOR_REDIS__URL", REDIS_URL)
                .env(
                    "AWS_LAMBDA_RUNTIME_API",
                    format!("http://127.0.0.1:{port}/.rt"),
                );
            c
        }
        Kind::Python | Kind::Floor => {
            let handler = if kind == Kind::Floor {
                "noop.handler"
            } else {
                "handler.handler"
            };
            let mut c = Command::new(&a.python);
            c.args(["bootstrap.py", handler])
                .current_dir(repo().join("bench/lambda"))
                .env("REDIS_URL", REDIS_URL)
                .env("KEY_PREFIX", prefix)
                .env("AWS_LAMBDA_RUNTIME_API", format!("127.0.0.1:{port}/.rt"));
            c
        }
    };
    if kind == Kind::Rust {
        c.current_dir(rules.parent().unwrap());
    }
    c.env("AWS_LAMBDA_FUNCTION_NAME", "_")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .stdout(std::fs::File::create(log).unwrap())
        .stderr(std::fs::File::create(log.with_extension("err")).unwrap());
    let spawned = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    (Proc(c.spawn().expect("spawn the function")), spawned)
}

/// The wall-clock time (ns since the epoch) at which the function said it was ready.
fn ready_at(log: &Path) -> u128 {
    let text = std::fs::read_to_string(log).unwrap();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if v["message"] != "init done" {
            continue;
        }
        if let Some(ns) = v["ready_unix_ns"].as_u64() {
            return ns as u128;
        }
        let t = time::OffsetDateTime::parse(
            v["timestamp"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        return t.unix_timestamp_nanos() as u128;
    }
    panic!("no `init done` line in {}:\n{text}", log.display());
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|n| n.parse().unwrap()))
        })
        .unwrap_or(0)
}

async fn invoke(client: &reqwest::Client, port: u16, body: &str) -> (Duration, Value) {
    let started = Instant::now();
    let r = client
        .post(format!(
            "http://127.0.0.1:{port}/2015-03-31/functions/_/invocations"
        ))
        .body(body.to_owned())
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("invoke (see the function's log in the temp dir)");
    let status = r.status();
    let text = r.text().await.unwrap();
    let took = started.elapsed();
    assert!(status.is_success(), "invoke: {status} {text}");
    (took, serde_json::from_str(&text).unwrap())
}

fn seed(c: &mut redis::Connection, keys: &[String]) {
    let mut p = redis::pipe();
    for k in keys {
        p.cmd("SET").arg(k).arg("cached").ignore();
    }
    let _: () = p.query(c).unwrap();
}

fn check(c: &mut redis::Connection, keys: &[String], answer: &Value, kind: Kind) {
    assert_eq!(
        answer["batchItemFailures"],
        json!([]),
        "{}: {answer}",
        kind.name()
    );
    if kind == Kind::Floor {
        return;
    }
    let n: i64 = redis::cmd("EXISTS").arg(keys).query(c).unwrap();
    assert_eq!(n, 0, "{}: keys left after the invocation", kind.name());
}

async fn round(kind: Kind, port: u16, prefix: &str, rules: &Path, dir: &Path, a: &Args) -> Sample {
    let mut c = redis::Client::open(REDIS_URL)
        .unwrap()
        .get_connection()
        .unwrap();
    let keys = all_keys(prefix);
    let body = batch().to_string();
    let client = reqwest::Client::new();
    let log = dir.join("function.log");
    seed(&mut c, &keys);
    let started = Instant::now();
    let (p, spawned) = spawn(kind, port, prefix, rules, &log, a);
    let (_, answer) = invoke(&client, port, &body).await;
    let cold = started.elapsed();
    check(&mut c, &keys, &answer, kind);
    let mut warm = Vec::with_capacity(a.warm);
    for _ in 0..a.warm {
        seed(&mut c, &keys);
        let (took, answer) = invoke(&client, port, &body).await;
        check(&mut c, &keys, &answer, kind);
        warm.push(took);
    }
    let rss = rss_kib(p.0.id());
    drop(p);
    let ready = ready_at(&log);
    Sample {
        init: Duration::from_nanos((ready - spawned) as u64),
        cold,
        warm,
        rss_kib: rss,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn report(kind: Kind, s: &[Sample]) {
    let mut init: Vec<Duration> = s.iter().map(|x| x.init).collect();
    let mut cold: Vec<Duration> = s.iter().map(|x| x.cold).collect();
    let mut warm: Vec<Duration> = s.iter().flat_map(|x| x.warm.iter().copied()).collect();
    let mut medians: Vec<Duration> = s
        .iter()
        .map(|x| {
            let mut w = x.warm.clone();
            w.sort();
            pct(&w, 0.5)
        })
        .collect();
    init.sort();
    cold.sort();
    warm.sort();
    medians.sort();
    let rss: Vec<u64> = s.iter().map(|x| x.rss_kib).collect();
    println!("{}", kind.name());
    println!(
        "  init (spawn → ready)          median {:7.1} ms   min {:7.1}   max {:7.1}   ({} runs)",
        ms(pct(&init, 0.5)),
        ms(init[0]),
        ms(init[init.len() - 1]),
        init.len()
    );
    println!(
        "  cold (spawn → 1st answer)     median {:7.1} ms   min {:7.1}   max {:7.1}",
        ms(pct(&cold, 0.5)),
        ms(cold[0]),
        ms(cold[cold.len() - 1])
    );
    println!(
        "  warm invocation, 10 records   p50 {:6.2} ms   p90 {:6.2}   p99 {:6.2}   min {:6.2}   ({} invocations)",
        ms(pct(&warm, 0.5)),
        ms(pct(&warm, 0.9)),
        ms(pct(&warm, 0.99)),
        ms(warm[0]),
        warm.len()
    );
    println!(
        "  warm p50 per round            min {:6.2} ms   max {:6.2}",
        ms(medians[0]),
        ms(medians[medians.len() - 1])
    );
    println!(
        "  peak RSS                      {:.1} MiB (max over rounds)",
        *rss.iter().max().unwrap() as f64 / 1024.0
    );
}

#[tokio::main]
async fn main() {
    let mut a = args();
    a.python = real_python(&a.python);
    let prefix = format!("bench{:08x}:", rand::random::<u32>());
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    let text = std::fs::read_to_string(repo().join("bench/lambda/rules/bench.yaml")).unwrap();
    std::fs::write(rules.join("bench.yaml"), text.replace("P:", &prefix)).unwrap();

    let port = free_port();
    let emulator = Proc(
        Command::new("cargo")
            .args(["lambda", "watch", "--only-lambda-apis", "--ignore-changes"])
            .args(["-A", "127.0.0.1", "-P", &port.to_string()])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cargo lambda (pip install --no-deps cargo-lambda)"),
    );
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "emulator did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    println!(
        "Lambda cold start and 10-record SQS batch, through cargo-lambda's runtime API emulator; {} rounds, {} warm invocations each",
        a.rounds, a.warm
    );
    println!("Rust binary: {}", a.rust_bin.display());
    println!("Python: {}", a.python);
    let mut rust = Vec::new();
    let mut python = Vec::new();
    let mut floor = Vec::new();
    for r in 0..a.rounds {
        // Alternate which goes first, so that drifts of the shared machine hit both.
        let order = if r % 2 == 0 {
            [Kind::Rust, Kind::Python, Kind::Floor]
        } else {
            [Kind::Floor, Kind::Python, Kind::Rust]
        };
        for kind in order {
            let s = round(kind, port, &prefix, &rules, dir.path(), &a).await;
            match kind {
                Kind::Rust => rust.push(s),
                Kind::Python => python.push(s),
                Kind::Floor => floor.push(s),
            }
        }
    }
    report(Kind::Rust, &rust);
    report(Kind::Python, &python);
    report(Kind::Floor, &floor);
    drop(emulator);
}
