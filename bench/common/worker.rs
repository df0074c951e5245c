//! `invalidator run` as a child process of bench/worker.rs: started on a topic with a one-rule
//! rules directory, read through its `/metrics` and `/readyz`, stopped with SIGTERM.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::kafka::brokers;
use super::measure::peak_rss_kib;
use super::servers::free_port;

pub struct Worker {
    pub child: Child,
    port: u16,
}

impl Worker {
    /// Starts `bin run` on `topic` in a group of its own, deleting `{prefix}price:{product_id}` in
    /// Redis DB `db`, with `properties` (TOML lines) added to `[kafka.properties]`.
    pub fn start(
        bin: &Path,
        tmp: &Path,
        topic: &str,
        db: &str,
        prefix: &str,
        properties: &str,
    ) -> Worker {
        let port = free_port(false);
        let rules = tmp.join(format!("rules-{topic}"));
        std::fs::create_dir_all(&rules).unwrap();
        std::fs::write(
            rules.join("plain.yaml"),
            format!(
                "rules:\n  - name: plain-price\n    on: price.updated\n    delete:\n      - {prefix}price:{{product_id}}\n"
            ),
        )
        .unwrap();
        let config = tmp.join(format!("{topic}.toml"));
        std::fs::write(
            &config,
            format!(
                "[redis]\nurl = \"redis://127.0.0.1:6379/{db}\"\n\n[kafka]\nbrokers = \"{}\"\ngroup = \"w-{topic}-{:08x}\"\ntopics = [\"{topic}\"]\n\n\
                 [kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n{properties}\n[http]\nlisten = \"127.0.0.1:{port}\"\n",
                brokers(),
                rand::random::<u32>()
            ),
        )
        .unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(&config)
            .arg("--rules")
            .arg(&rules)
            .arg("run")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(tmp.join(format!("{topic}.log"))).unwrap())
            .spawn()
            .expect("start invalidator run");
        Worker { child, port }
    }

    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, text.split_once("\r\n\r\n")?.1.to_owned()))
    }

    /// Upper bounds of the buckets of `invalidator_unit_seconds` (intake of a unit to done)
    /// holding the 50th and 99th percentiles, and the number of units.
    pub fn unit_seconds(&self) -> Option<(f64, f64, f64)> {
        let (_, body) = self.get("/metrics")?;
        let buckets: Vec<(f64, f64)> = body
            .lines()
            .filter_map(|l| l.strip_prefix("invalidator_unit_seconds_bucket{le=\""))
            .filter_map(|l| {
                let (le, n) = l.split_once("\"} ")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, n.trim().parse().ok()?))
            })
            .collect();
        let total = buckets.last()?.1;
        let at = |q: f64| buckets.iter().find(|(_, n)| *n >= q * total).map(|b| b.0);
        Some((at(0.5)?, at(0.99)?, total))
    }

    pub fn events_done(&self) -> f64 {
        self.get("/metrics")
            .map(|(_, body)| {
                body.lines()
                    .filter(|l| l.starts_with("invalidator_events_total{"))
                    .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
                    .sum()
            })
            .unwrap_or(0.0)
    }

    pub fn wait_ready(&self) {
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            if matches!(self.get("/readyz"), Some((200, _))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the worker did not become ready");
    }

    pub fn peak_rss_kib(&self) -> u64 {
        peak_rss_kib(self.child.id())
    }

    pub fn stop(mut self) {
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}
