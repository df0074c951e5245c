//! A real Prometheus server (Debian's `prometheus` package) as a child process that scrapes
//! workers and evaluates rule files, queried through its HTTP API; and [`metric_names`], the
//! metric names a PromQL expression reads.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use regex::Regex;
use serde_json::Value;

use super::kafka::free_port;
use super::topology::die_with_parent;

/// `prometheus` as a child process; killed when dropped.
pub struct Prometheus {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
}

impl Prometheus {
    /// Starts Prometheus scraping `/metrics` on each of `targets` (ports on 127.0.0.1) as the job
    /// `job` every second, and evaluating `rule_files` every second; waits until it is ready.
    pub fn start(job: &str, targets: &[u16], rule_files: &[PathBuf]) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let targets: Vec<String> = targets.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let rules: Vec<String> = rule_files.iter().map(|f| f.display().to_string()).collect();
        // JSON is YAML: the lists need no quoting of their own.
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files: {}\n\
             scrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: {}\n",
            serde_json::to_string(&rules).unwrap(),
            serde_json::to_string(&targets).unwrap(),
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let mut cmd = Command::new("prometheus");
        die_with_parent(&mut cmd);
        let child = cmd
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start prometheus ({e}): install Debian's `prometheus` package \
                     (`apt-get install -y prometheus`); scripts/test.sh does this"
                )
            });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("HTTP client");
        let mut p = Prometheus {
            child,
            port,
            dir,
            rt,
            http,
        };
        let ready = super::poll_until(Duration::from_secs(30), Duration::from_millis(100), || {
            p.get("/-/ready").is_ok_and(|(status, _)| status == 200)
        });
        let exited = p.child.try_wait().ok().flatten();
        assert!(
            ready,
            "prometheus not ready within 30 s (exit: {exited:?})\n--- its log ---\n{}",
            p.log()
        );
        p
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    fn get(&self, path: &str) -> Result<(u16, String), String> {
        let url = reqwest::Url::parse(&format!("http://127.0.0.1:{}{path}", self.port))
            .map_err(|e| e.to_string())?;
        self.get_url(url)
    }

    fn get_url(&self, url: reqwest::Url) -> Result<(u16, String), String> {
        self.rt.block_on(async {
            let r = self.http.get(url).send().await.map_err(|e| e.to_string())?;
            let status = r.status().as_u16();
            Ok((status, r.text().await.map_err(|e| e.to_string())?))
        })
    }

    /// `/api/v1/query?query={expr}` at the current time: the `result` array when the status is
    /// `success`, the whole answer otherwise.
    pub fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let base = format!("http://127.0.0.1:{}/api/v1/query", self.port);
        let url = reqwest::Url::parse_with_params(&base, &[("query", expr)])
            .map_err(|e| e.to_string())?;
        let (status, body) = self.get_url(url)?;
        let answer: Value =
            serde_json::from_str(&body).map_err(|e| format!("HTTP {status}: {e}: {body}"))?;
        match (
            answer["status"].as_str(),
            answer["data"]["result"].as_array(),
        ) {
            (Some("success"), Some(result)) => Ok(result.clone()),
            _ => Err(format!("HTTP {status}: {body}")),
        }
    }

    /// Polls [`Prometheus::query`] until it succeeds with a non-empty result, for `wait` at most;
    /// the error names the query and its last answer.
    pub fn query_with_data(&self, expr: &str, wait: Duration) -> Result<Vec<Value>, String> {
        let deadline = Instant::now() + wait;
        loop {
            let last = match self.query(expr) {
                Ok(result) if !result.is_empty() => return Ok(result),
                Ok(_) => "success, but an empty result".to_owned(),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(format!(
                    "`{expr}`: no data within {wait:?}; last answer: {last}"
                ));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The rule files (`*.yml`) of `dir`, sorted.
pub fn rule_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml"))
        .collect();
    files.sort();
    files
}

/// The metric names a PromQL expression reads: identifiers outside quotes, label matchers and
/// `by (...)` lists that are not functions, keywords or durations.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let strings = Regex::new(r#""(?:[^"\\]|\\.)*""#).unwrap();
    let matchers = Regex::new(r"\{[^}]*\}").unwrap();
    let groupings = Regex::new(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)").unwrap();
    let ident = Regex::new(r"[A-Za-z_:][A-Za-z0-9_:]*").unwrap();
    let bare = strings.replace_all(expr, "\"\"");
    let bare = matchers.replace_all(&bare, " ");
    let bare = groupings.replace_all(&bare, " ");
    let keywords = [
        "and",
        "or",
        "unless",
        "offset",
        "bool",
        "group_left",
        "group_right",
    ];
    ident
        .find_iter(&bare)
        .filter(|m| !bare[m.end()..].trim_start().starts_with('('))
        .filter(|m| !bare[..m.start()].ends_with(|c: char| c.is_ascii_digit()))
        .map(|m| m.as_str().to_owned())
        .filter(|w| !keywords.contains(&w.as_str()))
        .collect()
}

/// The series selectors with label matchers of a PromQL expression (`name{matchers}`).
pub fn selectors(expr: &str) -> BTreeSet<String> {
    let selector = Regex::new(r"[A-Za-z_:][A-Za-z0-9_:]*\{[^}]*\}").unwrap();
    selector
        .find_iter(expr)
        .map(|m| m.as_str().to_owned())
        .collect()
}
