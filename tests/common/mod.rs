//! Shared harness of the integration tests, which run against real services.
//!
//! Every test gets its own random key prefix (`t{random}:`) and works in DB 9 of
//! `redis://127.0.0.1:6379/9` (overridden by `INVALIDATOR_TEST_REDIS_URL`), so tests never collide
//! when run in parallel. Here: [`World`] (one test's prefix, temp dir, rules, config and runs of
//! the binary) and the fixtures of `tests/fixtures/`. Beside it:
//!
//! - `spec`: cases as data (given, rules, events, expected) replayed through the binary;
//! - `engine` and `layer`: the only places that call the library (its engine, its Redis layer);
//! - `cluster`: the shared Redis Cluster on 7001-7003; `topology`: servers, Sentinels and
//!   clusters a test starts for itself;
//! - `kafka`: the broker, a test's stream and the worker as a child process; `aws`: moto_server;
//!   `prometheus`: a Prometheus server scraping workers, and the metric names of PromQL;
//! - `framework`: the frameworks' own cache code (Symfony Cache, the Next.js cache handler).

#![allow(dead_code)]

pub mod aws;
pub mod cluster;
pub mod engine;
pub mod framework;
pub mod kafka;
mod keyspace;
pub mod layer;
pub mod prometheus;
pub mod spec;
pub mod topology;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

#[allow(unused_imports)] // not every test binary uses every name
pub use keyspace::{Keyspace, conn, prefix, redis_url};

/// `tests/fixtures/{rel}`.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// The bytes of `tests/fixtures/{rel}`.
pub fn fixture_bytes(rel: &str) -> Vec<u8> {
    let path = fixture(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// `bytes` with every `P:` replaced by `prefix` (fixtures write keys and ids as `P:price:1`).
pub fn with_prefix(bytes: &[u8], prefix: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    while let Some(at) = rest.windows(2).position(|w| w == b"P:") {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(prefix.as_bytes());
        rest = &rest[at + 2..];
    }
    out.extend_from_slice(rest);
    out
}

/// Polls `cond` every `every` until it holds (true) or `timeout` passes (false).
pub fn poll_until(timeout: Duration, every: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// Waits for `child` to exit; `None` if it is still running after `timeout`.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let mut status = None;
    poll_until(timeout, Duration::from_millis(20), || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    status
}

/// One event as a JSON line: `{"type": kind, "id": id, "data": data}`.
pub fn event(kind: &str, id: &str, data: serde_json::Value) -> String {
    serde_json::json!({"type": kind, "id": id, "data": data}).to_string()
}

/// The lines of a JSON Lines fixture (as text).
pub fn fixture_lines(rel: &str) -> Vec<String> {
    String::from_utf8(fixture_bytes(rel))
        .expect("UTF-8")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// One test's world: its key space (prefix: `w.p`; `w.k`, `w.set`, `w.exists`, … through
/// [`Keyspace`]), a temp dir holding `rules/`, `invalidator.toml` and inputs.
pub struct World {
    pub ks: Keyspace,
    pub dir: tempfile::TempDir,
    pub extra_config: String,
    /// `[tags] mode`.
    pub tags_mode: &'static str,
}

impl World {
    pub fn new() -> World {
        World {
            ks: Keyspace::new(),
            dir: tempfile::tempdir().expect("tempdir"),
            extra_config: String::new(),
            tags_mode: "set",
        }
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

    /// Writes `rules/{name}` from the fixture `rel` (with `P:` replaced).
    pub fn rules_fixture(&self, name: &str, rel: &str) -> PathBuf {
        let text = String::from_utf8(fixture_bytes(rel)).expect("rules are UTF-8");
        self.rules(name, &text)
    }

    /// This world with the rules of the fixture `rel` (as `rules/{its file name}`).
    pub fn with_rules(self, rel: &str) -> World {
        let name = Path::new(rel).file_name().expect("a file name");
        self.rules_fixture(name.to_str().unwrap(), rel);
        self
    }

    /// This world with `extra_config` from the fixture `rel` (a TOML file).
    pub fn with_config(mut self, rel: &str) -> World {
        self.config_fixture(rel);
        self
    }

    /// Takes `extra_config` from the fixture `rel` (a TOML file).
    pub fn config_fixture(&mut self, rel: &str) {
        self.extra_config = String::from_utf8(fixture_bytes(rel)).expect("config is UTF-8");
    }

    /// The config text: Redis URL, tag and dedupe prefixes under the test prefix, a `log` CDN target
    /// named `logcdn`, plus `extra_config` (with `P:` replaced; a `[tags]` or `[dedupe]` section
    /// of its own replaces the default one).
    pub fn config_text(&self) -> String {
        self.config_text_with_redis(&format!("url = \"{}\"\nretry_for = \"5s\"\n", redis_url()))
    }

    /// [`World::config_text`] with `redis` (lines) as the body of the `[redis]` section.
    pub fn config_text_with_redis(&self, redis: &str) -> String {
        let extra = self.k(&self.extra_config);
        let mut t = format!("[redis]\n{redis}\n[cdn.logcdn]\nkind = \"log\"\n\n");
        if !extra.contains("[tags]") {
            t.push_str(&format!(
                "[tags]\nmode = \"{}\"\nprefix = \"{}tag:\"\n\n",
                self.tags_mode, self.p
            ));
        }
        if !extra.contains("[dedupe]") {
            t.push_str(&format!("[dedupe]\nprefix = \"{}seen:\"\n\n", self.p));
        }
        t.push_str(&extra);
        t
    }

    /// Writes an input file (bytes as given).
    pub fn input(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// Writes the fixture `rel` as an input file of the same name (with `P:` replaced, every other
    /// byte as it is).
    pub fn input_fixture(&self, rel: &str) -> PathBuf {
        let name = Path::new(rel).file_name().expect("a file name");
        self.input(
            name.to_str().unwrap(),
            &with_prefix(&fixture_bytes(rel), &self.p),
        )
    }

    /// Writes JSON Lines (as given).
    pub fn lines(&self, name: &str, lines: &[String]) -> PathBuf {
        let mut text = lines.join("\n");
        text.push('\n');
        self.input(name, text.as_bytes())
    }

    /// The DLQ records written so far (`dlq.jsonl`), as JSON.
    pub fn dlq(&self) -> Vec<serde_json::Value> {
        read_jsonl(&self.path("dlq.jsonl"))
    }

    /// `dlq.jsonl` in the temp dir: where [`World::replay`] dead-letters.
    pub fn dlq_path(&self) -> PathBuf {
        self.path("dlq.jsonl")
    }

    /// `invalidator replay --dlq dlq.jsonl {input}` through the binary.
    pub fn replay(&self, input: &Path) -> Run {
        self.replay_with(&[], "dlq.jsonl", &[input], &[])
    }

    /// `invalidator replay {flags} --dlq {dlq} {inputs}` with `env`, through the binary (`dlq`: a
    /// file name in the temp dir).
    pub fn replay_with(
        &self,
        flags: &[&str],
        dlq: &str,
        inputs: &[&Path],
        env: &[(&str, &str)],
    ) -> Run {
        let dlq = self.path(dlq);
        let mut args = vec!["replay"];
        args.extend(flags);
        args.extend(["--dlq", dlq.to_str().unwrap()]);
        args.extend(inputs.iter().map(|i| i.to_str().unwrap()));
        self.bin_env(&args, env)
    }

    /// Runs the binary with `-c invalidator.toml --rules rules/` in the temp dir.
    pub fn bin(&self, args: &[&str]) -> Run {
        self.bin_env(args, &[])
    }

    pub fn bin_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        self.bin_with(&self.config_text(), args, env)
    }

    /// Runs the binary with `config` (written to `invalidator.toml`) and `--rules rules/` in the
    /// temp dir.
    pub fn bin_with(&self, config: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
        let path = self.path("invalidator.toml");
        std::fs::write(&path, config).unwrap();
        let mut full: Vec<String> = vec![
            "-c".into(),
            path.display().to_string(),
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
}

impl std::ops::Deref for World {
    type Target = Keyspace;

    fn deref(&self) -> &Keyspace {
        &self.ks
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
        let status = wait_exit(&mut self.child, timeout)?;
        Some(Run {
            code: status.code().unwrap_or(-1),
            stdout: self.stdout(),
            stderr: self.stderr(),
        })
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
