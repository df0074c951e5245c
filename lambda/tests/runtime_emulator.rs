//! The real binary behind the real Lambda runtime API emulator: `cargo lambda watch` serves the
//! runtime API (`--only-lambda-apis`), the `invalidator-lambda` binary that `cargo test` built
//! polls it like on AWS, and `cargo lambda invoke -F` sends the SNS and SQS fixtures. Keys are
//! checked in Redis, the partial batch response in the answer, the poison messages in moto's SQS.
//!
//! Needs `cargo lambda` (`pip install --no-deps cargo-lambda`; `scripts/test.sh` and `.ci/run`
//! install it) besides Redis and moto_server.

mod common;

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{BATCH_KEYS, World, attr, conn, drain, failures, fixture_path, queue, sqs};
use serde_json::Value;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn cargo_lambda() -> Command {
    let mut c = Command::new("cargo");
    c.arg("lambda");
    c
}

/// `cargo lambda watch --only-lambda-apis` on `port`.
fn emulator(port: u16) -> Proc {
    let version = cargo_lambda().arg("--version").output();
    assert!(
        matches!(&version, Ok(o) if o.status.success()),
        "`cargo lambda` is needed: pip install --no-deps cargo-lambda (scripts/test.sh does it)"
    );
    let child = cargo_lambda()
        .args(["watch", "--only-lambda-apis", "--ignore-changes"])
        .args(["-A", "127.0.0.1", "-P", &port.to_string()])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cargo lambda watch");
    let p = Proc(child);
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "cargo lambda watch did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    p
}

/// The function, polling the emulator on `port` with the given `INVALIDATOR_*` settings; its
/// stdout (JSON logs and EMF) goes to `log`.
fn function(port: u16, dir: &Path, env: &[(&str, String)], log: &Path) -> Proc {
    let mut c = Command::new(env!("CARGO_BIN_EXE_invalidator-lambda"));
    c.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "AWS_LAMBDA_RUNTIME_API",
            format!("http://127.0.0.1:{port}/.rt"),
        )
        .env("AWS_LAMBDA_FUNCTION_NAME", "_")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_ENDPOINT_URL_SQS", common::moto_url())
        .stdout(std::fs::File::create(log).unwrap())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        c.env(k, v);
    }
    Proc(c.spawn().expect("the invalidator-lambda binary"))
}

fn invoke(port: u16, event: &Path) -> Output {
    cargo_lambda()
        .args(["invoke", "-A", "127.0.0.1", "-P", &port.to_string()])
        .arg("-F")
        .arg(event)
        .stdin(Stdio::null())
        .output()
        .expect("cargo lambda invoke")
}

fn response(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "invoke failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let text = text.trim();
    if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sns_and_sqs_events_through_the_runtime_api_emulator() {
    let w = World::new();
    let mut c = conn();
    let sqs = sqs().await;
    let dlq = queue(&sqs, "inv-emu-dlq").await;
    let env = |dlq: &str| {
        vec![
            (
                "INVALIDATOR_RULES__DIR",
                w.rules_dir().display().to_string(),
            ),
            ("INVALIDATOR_REDIS__URL", common::redis_url()),
            ("INVALIDATOR_TAGS__PREFIX", format!("{}tag:", w.p)),
            ("INVALIDATOR_DEDUPE__PREFIX", format!("{}seen:", w.p)),
            ("INVALIDATOR_CDN__LOGCDN__KIND", "log".to_string()),
            ("INVALIDATOR_LAMBDA__DLQ_URL", dlq.to_string()),
        ]
    };
    let port = free_port();
    let _emulator = emulator(port);
    let log = w.dir.path().join("function.log");

    w.set(
        &mut c,
        &["P:price:2101", "P:product:2101", "P:product:2006"],
    );
    w.set(&mut c, BATCH_KEYS);
    {
        let _f = function(port, w.dir.path(), &env(&dlq), &log);
        // Direct SNS subscription: success is an empty (null) answer.
        let out = invoke(port, &fixture_path("sns-price.json"));
        assert_eq!(response(&out), Value::Null);
        assert!(!w.exists(&mut c, "P:price:2101"));
        assert!(!w.exists(&mut c, "P:product:2101"));

        // SQS: 8 applied or skipped, 2 poison dead-lettered and acknowledged.
        let out = invoke(port, &fixture_path("sqs-batch.json"));
        assert_eq!(failures(&response(&out)), Vec::<String>::new());
        for k in BATCH_KEYS {
            assert!(!w.exists(&mut c, k), "{k}");
        }
        assert!(w.exists(&mut c, "P:product:2006"));

        // SNS poison: dead-lettered, the invocation succeeds.
        let out = invoke(port, &fixture_path("sns-poison.json"));
        assert_eq!(response(&out), Value::Null);
    }
    let dead = drain(&sqs, &dlq).await;
    let mut reasons: Vec<(String, String)> = dead
        .iter()
        .map(|m| {
            (
                attr(m, "invalidator.source.message_id").unwrap(),
                attr(m, "invalidator.reason").unwrap(),
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        vec![
            (
                "0b8f7a6e-1c2d-5e3f-8a9b-0c1d2e3f4a5b".to_string(),
                "unsafe_value".to_string()
            ),
            (
                "3f3f6a52-0f4e-4a7e-9b2b-4c1f0d8e0a05".to_string(),
                "invalid_json".to_string()
            ),
            (
                "3f3f6a52-0f4e-4a7e-9b2b-4c1f0d8e0a06".to_string(),
                "unsafe_value".to_string()
            ),
        ]
    );

    // The function's stdout: JSON log lines and EMF documents.
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: not JSON: {l}")))
        .collect();
    let done: Vec<&Value> = lines
        .iter()
        .filter(|l| l["message"] == "batch done")
        .collect();
    assert_eq!(done.len(), 3, "{text}");
    assert_eq!(done[1]["source"], "sqs");
    assert_eq!(done[1]["applied"], 7);
    assert_eq!(done[1]["dead_lettered"], 2);
    assert!(
        lines.iter().any(
            |l| l["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "invalidator"
                && l["invalidator_events_total"].is_number()
        ),
        "EMF metrics on stdout:\n{text}"
    );
    let init = lines.iter().find(|l| l["message"] == "init done").unwrap();
    assert!(init["init_ms"].as_f64().unwrap() > 0.0);

    // A dead-letter queue that refuses: exactly the poison messages are reported failed.
    let missing = format!(
        "{}/123456789012/no-such-queue-{:08x}",
        common::moto_url(),
        rand::random::<u32>()
    );
    let _f = function(port, w.dir.path(), &env(&missing), &log);
    let out = invoke(port, &fixture_path("sqs-batch.json"));
    assert_eq!(
        failures(&response(&out)),
        vec![
            "3f3f6a52-0f4e-4a7e-9b2b-4c1f0d8e0a05".to_string(),
            "3f3f6a52-0f4e-4a7e-9b2b-4c1f0d8e0a06".to_string()
        ]
    );
    // And a direct SNS poison message fails its invocation (Lambda retries it).
    let out = invoke(port, &fixture_path("sns-poison.json"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Invalidator.NotDone"), "{err}");
}

/// Invokes `event` while `start` brings the function up, started again whenever it has exited
/// (an init error reported before the invoke is pending answers nothing, so the first start may
/// miss it). The invoke's output, or `None` if it did not come back within 30 s.
fn invoke_starting(port: u16, event: &Path, start: impl Fn() -> Proc) -> Option<Output> {
    let mut invoke = cargo_lambda()
        .args(["invoke", "-A", "127.0.0.1", "-P", &port.to_string()])
        .arg("-F")
        .arg(event)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cargo lambda invoke");
    let began = Instant::now();
    let mut function: Option<(Proc, Instant)> = None;
    while began.elapsed() < Duration::from_secs(30) {
        if invoke.try_wait().unwrap().is_some() {
            return Some(invoke.wait_with_output().unwrap());
        }
        let stopped = match &mut function {
            None => true,
            Some((f, at)) => {
                f.0.try_wait().unwrap().is_some() && at.elapsed() > Duration::from_secs(1)
            }
        };
        if stopped {
            function = Some((start(), Instant::now()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = invoke.kill();
    let _ = invoke.wait();
    None
}

/// What `cargo lambda invoke` printed, both streams.
fn printed(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_init_error_answers_the_pending_invoke_with_its_cause() {
    let w = World::new();
    let port = free_port();
    let _emulator = emulator(port);
    let log = w.dir.path().join("function.log");
    let env = |rules: &Path, redis: &str| {
        vec![
            ("INVALIDATOR_RULES__DIR", rules.display().to_string()),
            ("INVALIDATOR_REDIS__URL", redis.to_string()),
            ("INVALIDATOR_REDIS__RETRY_FOR", "1s".to_string()),
            ("INVALIDATOR_TAGS__PREFIX", format!("{}tag:", w.p)),
            ("INVALIDATOR_DEDUPE__PREFIX", format!("{}seen:", w.p)),
            ("INVALIDATOR_CDN__LOGCDN__KIND", "log".to_string()),
        ]
    };
    let sns = fixture_path("sns-price.json");
    let run = |rules: &Path, redis: &str| {
        let env = env(rules, redis);
        let began = Instant::now();
        let out = invoke_starting(port, &sns, || function(port, w.dir.path(), &env, &log));
        (out, began.elapsed())
    };

    // Control: with a good configuration, the same invoke gets the handler's answer.
    let (out, _) = run(&w.rules_dir(), &common::redis_url());
    let out = out.expect("the function answers");
    assert_eq!(response(&out), Value::Null, "{}", printed(&out));

    // A rules directory that does not exist.
    let missing = w.dir.path().join("no-such-rules");
    let (out, took) = run(&missing, &common::redis_url());
    let out = out.expect("an init error must answer the pending invoke, not leave it hanging");
    let text = printed(&out);
    assert!(text.contains("Invalidator.Rules"), "{text}");
    assert!(
        text.contains("no-such-rules"),
        "the error names the directory: {text}"
    );
    assert!(took < Duration::from_secs(15), "{took:?}");

    // A rule that does not compile: its file is named.
    let bad = w.dir.path().join("bad-rules");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(
        bad.join("broken.yaml"),
        "rules:\n  - name: broken\n    on: price.updated\n    dleete: [\"x\"]\n",
    )
    .unwrap();
    let (out, _) = run(&bad, &common::redis_url());
    let text = printed(&out.expect("answered"));
    assert!(text.contains("Invalidator.Rules"), "{text}");
    assert!(text.contains("broken.yaml"), "{text}");

    // Redis unreachable (init waits retry_for, 1 s here): the error names Redis, not its password.
    let (out, _) = run(&w.rules_dir(), "redis://:s3cret-pw@127.0.0.1:1/0");
    let text = printed(&out.expect("answered"));
    assert!(text.contains("Invalidator.Redis"), "{text}");
    assert!(text.contains("redis.url redis://"), "the key: {text}");
    assert!(text.contains("127.0.0.1:1/0"), "the endpoint: {text}");
    assert!(
        !text.contains("s3cret-pw"),
        "no password in the error: {text}"
    );
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(
        logs.contains("init failed") && !logs.contains("s3cret-pw"),
        "{logs}"
    );
}
