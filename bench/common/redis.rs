//! `redis-cli`: commands, `INFO` figures, and `--pipe` fed RESP.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::process::{ChildStdin, Command, Stdio};

/// One command in RESP.
pub fn resp(w: &mut impl Write, args: &[&str]) -> std::io::Result<()> {
    write!(w, "*{}\r\n", args.len())?;
    for a in args {
        write!(w, "${}\r\n{}\r\n", a.len(), a)?;
    }
    Ok(())
}

/// `redis-cli <target> <args>` (target: `-n 8`, `-p 7001`...); its trimmed output.
pub fn redis_cli(target: &[&str], args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(target)
        .args(args)
        .output()
        .expect("redis-cli on PATH");
    assert!(out.status.success(), "redis-cli {args:?} failed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `redis-cli -p <port> <args>`: a benchmark's own server.
pub fn cli(port: u16, args: &[&str]) -> String {
    redis_cli(&["-p", &port.to_string()], args)
}

/// used_cpu_user + used_cpu_sys of the Redis server `redis-cli <target>` reaches, in seconds.
pub fn redis_cpu(target: &[&str]) -> f64 {
    redis_cli(target, &["INFO", "cpu"])
        .lines()
        .filter(|l| l.starts_with("used_cpu_user:") || l.starts_with("used_cpu_sys:"))
        .filter_map(|l| l.split(':').nth(1)?.trim().parse::<f64>().ok())
        .sum()
}

/// One `redis-cli <target> --pipe` per server, fed RESP commands; [`Pipes::send`] routes each
/// command to one of them.
pub struct Pipes<R> {
    pipes: Vec<(std::process::Child, BufWriter<ChildStdin>)>,
    /// Commands sent to each server.
    pub sent: Vec<u64>,
    route: R,
}

impl<R: FnMut(&[&str]) -> usize> Pipes<R> {
    /// Starts `redis-cli <target> --pipe` for every target; `route` gives, for a command, the
    /// index of the target it goes to.
    pub fn start(targets: &[Vec<String>], route: R) -> Pipes<R> {
        let pipes = targets
            .iter()
            .map(|target| {
                let mut child = Command::new("redis-cli")
                    .args(target)
                    .arg("--pipe")
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .expect("redis-cli on PATH");
                let stdin = child.stdin.take().unwrap();
                (child, BufWriter::with_capacity(1 << 20, stdin))
            })
            .collect();
        Pipes {
            pipes,
            sent: vec![0; targets.len()],
            route,
        }
    }

    pub fn send(&mut self, args: &[&str]) -> std::io::Result<()> {
        let i = (self.route)(args);
        self.sent[i] += 1;
        resp(&mut self.pipes[i].1, args)
    }

    /// Closes every pipe and waits for its `redis-cli`, which must report no error; returns the
    /// commands sent to each server.
    pub fn finish(self) -> Vec<u64> {
        for (mut child, mut w) in self.pipes {
            w.flush().expect("writing to redis-cli --pipe");
            drop(w);
            child.stdin.take();
            let out = child.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && text.contains("errors: 0"),
                "redis-cli --pipe: {text}"
            );
        }
        self.sent
    }
}

/// `name:value` of an `INFO` text.
pub fn info<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// Keys, and keys without a TTL, summed over `ports` (`INFO keyspace`: `db0:keys=N,expires=M,...`).
pub fn keyspace(ports: &[u16]) -> (u64, u64) {
    let (mut keys, mut expires) = (0, 0);
    for &p in ports {
        let text = cli(p, &["INFO", "keyspace"]);
        let Some(db0) = info(&text, "db0") else {
            continue;
        };
        for kv in db0.split(',') {
            match kv.split_once('=') {
                Some(("keys", v)) => keys += v.parse::<u64>().unwrap_or(0),
                Some(("expires", v)) => expires += v.parse::<u64>().unwrap_or(0),
                _ => {}
            }
        }
    }
    (keys, keys - expires)
}

/// Calls of each command (`INFO commandstats`), summed over `ports`.
pub fn calls(ports: &[u16]) -> BTreeMap<String, u64> {
    let mut calls = BTreeMap::new();
    for &p in ports {
        // cmdstat_unlink:calls=123,usec=...
        for line in cli(p, &["INFO", "commandstats"]).lines() {
            let Some((name, rest)) = line
                .strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            let n = rest
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            *calls.entry(name.to_owned()).or_default() += n;
        }
    }
    calls
}
