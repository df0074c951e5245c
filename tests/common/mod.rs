//! Shared helpers of the integration tests that run against a real Redis.
//!
//! Every test gets its own random key prefix (`t{random}:`) and works in DB 9 of
//! `redis://127.0.0.1:6379/9` (overridden by `INVALIDATOR_TEST_REDIS_URL`), so tests never collide
//! when run in parallel.

#![allow(dead_code)]

pub mod aws;
pub mod kafka;
pub mod topology;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use invalidator::apply::redis::Redis;
use invalidator::config::Config;
use invalidator::engine::Engine;
use invalidator::replay::{self, ReplayOptions, Summary};
use invalidator::rules::{CompileOptions, RuleSet};

pub const DEFAULT_URL: &str = "redis://127.0.0.1:6379/9";

pub fn redis_url() -> String {
    std::env::var("INVALIDATOR_TEST_REDIS_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// A random prefix such as `t5f3a9c1e2b7d4a60:`.
pub fn prefix() -> String {
    format!("t{:016x}:", rand::random::<u64>())
}

pub fn conn() -> redis::Connection {
    redis::Client::open(redis_url())
        .expect("redis url")
        .get_connection()
        .expect("Redis must run on the test URL (see tests/common/mod.rs)")
}

/// One test's world: its prefix, a temp dir holding `rules/`, `invalidator.toml` and inputs.
pub struct World {
    pub p: String,
    pub dir: tempfile::TempDir,
    pub extra_config: String,
    /// `[tags] mode`.
    pub tags_mode: &'static str,
}

impl World {
    pub fn new() -> World {
        World {
            p: prefix(),
            dir: tempfile::tempdir().expect("tempdir"),
            extra_config: String::new(),
            tags_mode: "set",
        }
    }

    /// Replaces `P:` with the test prefix (so rules and keys can be written as `P:price:1`).
    pub fn k(&self, text: &str) -> String {
        text.replace("P:", &self.p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn rules_dir(&self) -> PathBuf {
        self.path("rules")
    }

    /// Writes `rules/{name}` (with `P:` replaced by the prefix).
    pub fn rules(&self, name: &str, yaml: &str) -> PathBuf {
        std::fs::create_dir_all(self.rules_dir()).unwrap();
        let path = self.rules_dir().join(name);
        std::fs::write(&path, self.k(yaml)).unwrap();
        path
    }

    /// The config text: Redis URL, tag and dedupe prefixes under the test prefix, a `log` CDN target
    /// named `logcdn`, plus `extra_config` (with `P:` replaced).
    pub fn config_text(&self) -> String {
        self.config_text_with_redis(&format!("url = \"{}\"\nretry_for = \"5s\"\n", redis_url()))
    }

    /// [`World::config_text`] with `redis` (lines) as the body of the `[redis]` section.
    pub fn config_text_with_redis(&self, redis: &str) -> String {
        let mut t = format!(
            "[redis]\n{redis}\n[tags]\nmode = \"{}\"\nprefix = \"{}tag:\"\n\n[cdn.logcdn]\nkind = \"log\"\n\n",
            self.tags_mode, self.p
        );
        let extra = self.k(&self.extra_config);
        if !extra.contains("[dedupe]") {
            t.push_str(&format!("[dedupe]\nprefix = \"{}seen:\"\n\n", self.p));
        }
        t.push_str(&extra);
        t
    }

    pub fn write_config(&self) -> PathBuf {
        let path = self.path("invalidator.toml");
        std::fs::write(&path, self.config_text()).unwrap();
        path
    }

    /// Writes an input file (bytes as given).
    pub fn input(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// Writes JSON Lines (with `P:` replaced).
    pub fn lines(&self, name: &str, lines: &[String]) -> PathBuf {
        let mut text = lines.join("\n");
        text.push('\n');
        self.input(name, text.as_bytes())
    }

    /// Builds the engine through the library, as `main` does.
    pub async fn engine(&self) -> Engine {
        let config = Config::from_toml(&self.config_text()).expect("config");
        let options = CompileOptions {
            limits: config.rule_limits(),
            cdn_targets: Some(config.cdn.keys().cloned().collect()),
        };
        let rules = RuleSet::load(&self.rules_dir(), &options)
            .unwrap_or_else(|e| panic!("rules must compile:\n{e}"));
        let redis = Redis::connect(&config.redis, Some(config.redis.retry_for))
            .await
            .expect("connect");
        // AWS targets (CloudFront, SNS) point at moto with static test credentials.
        let aws = invalidator::apply::aws::emulator("us-east-1");
        Engine::build_with(config, rules, redis, Some(&aws)).expect("engine")
    }

    /// Replays `lines` through the library; the DLQ goes to `dlq.jsonl` in the temp dir.
    pub async fn replay_lines(&self, lines: &[String], dry_run: bool) -> Summary {
        let input = self.lines(&format!("in-{:x}.jsonl", rand::random::<u32>()), lines);
        self.replay_files(&[input], dry_run).await
    }

    pub async fn replay_files(&self, inputs: &[PathBuf], dry_run: bool) -> Summary {
        let engine = self.engine().await;
        let options = ReplayOptions {
            inputs: inputs.iter().map(|p| p.display().to_string()).collect(),
            dry_run,
            dlq: Some(self.path("dlq.jsonl")),
            rate: None,
            progress: false,
        };
        replay::replay(Arc::new(engine), &options)
            .await
            .expect("replay")
    }

    /// The DLQ records written so far (`dlq.jsonl`), as JSON.
    pub fn dlq(&self) -> Vec<serde_json::Value> {
        read_jsonl(&self.path("dlq.jsonl"))
    }

    /// Runs the binary with `-c invalidator.toml --rules rules/` in the temp dir.
    pub fn bin(&self, args: &[&str]) -> Run {
        self.bin_env(args, &[])
    }

    pub fn bin_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let config = self.write_config();
        let mut full: Vec<String> = vec![
            "-c".into(),
            config.display().to_string(),
            "--rules".into(),
            self.rules_dir().display().to_string(),
        ];
        full.extend(args.iter().map(|s| s.to_string()));
        run_bin(self.dir.path(), &full, env)
    }

    /// Starts the binary in the background with `config` (written to `{name}.toml`) and
    /// `--rules rules/`; its stdout and stderr go to `{name}.out` and `{name}.err`. Its `RUST_LOG`
    /// is `warn`, or `TEST_BIN_RUST_LOG` (e.g. `warn,redis=debug` to see the Redis client's
    /// reconnects).
    pub fn spawn_bin(&self, name: &str, config: &str, args: &[&str]) -> Spawned {
        let config_path = self.path(&format!("{name}.toml"));
        std::fs::write(&config_path, config).unwrap();
        let out = self.path(&format!("{name}.out"));
        let err = self.path(&format!("{name}.err"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_invalidator"));
        topology::die_with_parent(&mut cmd);
        let child = cmd
            .current_dir(self.dir.path())
            .arg("-c")
            .arg(&config_path)
            .arg("--rules")
            .arg(self.rules_dir())
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .env(
                "RUST_LOG",
                std::env::var("TEST_BIN_RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env_remove("INVALIDATOR_TEST_REDIS_URL")
            .spawn()
            .expect("start the binary");
        Spawned { child, out, err }
    }

    /// Keys under the prefix matching `P:`-pattern (sorted).
    pub fn keys(&self, c: &mut redis::Connection, pattern: &str) -> Vec<String> {
        let mut keys: Vec<String> = redis::cmd("KEYS").arg(self.k(pattern)).query(c).unwrap();
        keys.sort();
        keys
    }

    /// Sets every key (with `P:` replaced) to "v".
    pub fn set(&self, c: &mut redis::Connection, keys: &[&str]) {
        for k in keys {
            let _: () = redis::cmd("SET").arg(self.k(k)).arg("v").query(c).unwrap();
        }
    }

    pub fn exists(&self, c: &mut redis::Connection, key: &str) -> bool {
        redis::cmd("EXISTS")
            .arg(self.k(key))
            .query::<i64>(c)
            .unwrap()
            == 1
    }

    pub fn pttl(&self, c: &mut redis::Connection, key: &str) -> i64 {
        redis::cmd("PTTL").arg(self.k(key)).query(c).unwrap()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // Best effort clean-up of the test's keys.
        if let Ok(client) = redis::Client::open(redis_url())
            && let Ok(mut c) = client.get_connection()
        {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}*", self.p))
                .query(&mut c)
                .unwrap_or_default();
            for chunk in keys.chunks(500) {
                let _: redis::RedisResult<i64> = redis::cmd("UNLINK").arg(chunk).query(&mut c);
            }
        }
    }
}

pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("DLQ line is JSON"))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The result of one run of the binary.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// A count of the summary (`  applied:       37` → 37).
    pub fn count(&self, label: &str) -> u64 {
        summary_count(&self.stdout, label).unwrap_or_else(|| {
            panic!(
                "no `{label}` in the summary:\n{}\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

pub fn summary_count(stdout: &str, label: &str) -> Option<u64> {
    stdout.lines().find_map(|l| {
        let l = l.trim_start().trim_start_matches("[dry run] ");
        let rest = l.strip_prefix(label)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Runs the binary in `cwd` with `args`; returns (exit code, stdout, stderr).
pub fn run_bin(cwd: &Path, args: &[String], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_invalidator"));
    cmd.current_dir(cwd)
        .args(args)
        .stdin(Stdio::null())
        .env("RUST_LOG", "warn")
        // Not a config key: the binary would refuse it as an unknown `INVALIDATOR_` variable.
        .env_remove("INVALIDATOR_TEST_REDIS_URL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run the binary");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The binary running in the background ([`World::spawn_bin`]); killed when dropped.
pub struct Spawned {
    pub child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Spawned {
    /// Still running?
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the exit; `None` if it is still running after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Option<Run> {
        let until = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(Run {
                    code: status.code().unwrap_or(-1),
                    stdout: self.stdout(),
                    stderr: self.stderr(),
                });
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
