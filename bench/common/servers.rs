//! The `redis-server`s a benchmark starts on free loopback ports, in a directory of its own
//! (`redis-server --port P --bind 127.0.0.1 --save "" --appendonly no --dir D`), and stops; a
//! Redis Cluster of them.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::redis::{cli, info};

const SLOTS: usize = 16384;

/// `$ program args...`, an empty argument shown as `""`.
pub fn shown(program: &str, args: &[&str]) -> String {
    let mut s = format!("$ {program}");
    for a in args {
        s.push(' ');
        s.push_str(if a.is_empty() { "\"\"" } else { a });
    }
    s
}

/// The `redis-server`s this benchmark started: killed (and reaped) when dropped, also during a
/// panic's unwinding.
pub struct Servers {
    dir: PathBuf,
    children: Vec<(u16, Child)>,
}

impl Servers {
    pub fn new(dir: &Path) -> Servers {
        Servers {
            dir: dir.to_owned(),
            children: Vec::new(),
        }
    }

    /// Starts a `redis-server` on a free port (and, for a Cluster node, a free bus port at
    /// port + 10000) in a directory of its own, and waits until it answers `PING`. A port taken
    /// meanwhile by someone else makes it try another.
    pub fn start(&mut self, name: &str, extra: &[&str]) -> u16 {
        let cluster = extra.contains(&"--cluster-enabled");
        for _ in 0..10 {
            let port = free_port(cluster);
            let dir = self.dir.join(format!("{name}-{port}"));
            std::fs::create_dir_all(&dir).unwrap();
            let port_s = port.to_string();
            let dir_s = dir.to_string_lossy().into_owned();
            let mut args = vec![
                "--port",
                &port_s,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &dir_s,
            ];
            args.extend_from_slice(extra);
            let log = File::create(dir.join("redis.log")).unwrap();
            let mut child = Command::new("redis-server")
                .args(&args)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("redis-server on PATH");
            let t = Instant::now();
            let up = loop {
                if child.try_wait().unwrap().is_some() {
                    break false;
                }
                let pong = Command::new("redis-cli")
                    .args(["-p", &port_s, "PING"])
                    .stderr(Stdio::null())
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG")
                    .unwrap_or(false);
                if pong {
                    break true;
                }
                if t.elapsed() > Duration::from_secs(20) {
                    let _ = child.kill();
                    let _ = child.wait();
                    break false;
                }
                sleep(Duration::from_millis(50));
            };
            if up {
                println!("{}   # {name}", shown("redis-server", &args));
                self.children.push((port, child));
                return port;
            }
            let log = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
            eprintln!(
                "redis-server on {port} did not start, trying another port:\n{}",
                log.lines().rev().take(5).collect::<Vec<_>>().join("\n")
            );
        }
        panic!("could not start redis-server {name}");
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A loopback port nobody listens on now; for a Cluster node, port + 10000 too (its bus).
pub fn free_port(cluster: bool) -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("binding a loopback port")
            .port();
        if !cluster {
            return port;
        }
        if let Some(bus) = port.checked_add(10000)
            && TcpListener::bind(("127.0.0.1", bus)).is_ok()
        {
            return port;
        }
    }
}

/// The primaries (ports, in order) of the Cluster `port` belongs to, and the index of the owner
/// of every slot, from `CLUSTER NODES`.
pub fn cluster_owners(port: u16) -> (Vec<u16>, Vec<usize>) {
    let text = cli(port, &["CLUSTER", "NODES"]);
    let mut primaries: Vec<(u16, Vec<(usize, usize)>)> = Vec::new();
    for line in text.lines() {
        // <id> <ip:port@cport> <flags> <master> <ping> <pong> <epoch> <link> <slot ranges>...
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 || !f[2].split(',').any(|x| x == "master") {
            continue;
        }
        let addr = f[1].split('@').next().unwrap();
        let p: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
        let ranges = f[8..]
            .iter()
            .filter(|r| !r.starts_with('[')) // slots importing or migrating
            .map(|r| {
                let (a, b) = r.split_once('-').unwrap_or((r, r));
                (a.parse().unwrap(), b.parse().unwrap())
            })
            .collect();
        primaries.push((p, ranges));
    }
    primaries.sort();
    let mut owners = vec![usize::MAX; SLOTS];
    for (i, (_, ranges)) in primaries.iter().enumerate() {
        for &(a, b) in ranges {
            owners[a..=b].iter_mut().for_each(|o| *o = i);
        }
    }
    assert!(
        owners.iter().all(|&o| o != usize::MAX),
        "some slots have no owner:\n{text}"
    );
    (primaries.into_iter().map(|(p, _)| p).collect(), owners)
}

/// A Redis Cluster of `n` primaries, no replicas, started in `servers`: `redis-cli --cluster
/// create`, then until every node reads `cluster_state:ok`. Returns the primaries and the owner of
/// every slot ([`cluster_owners`]).
pub fn start_cluster(servers: &mut Servers, n: usize) -> (Vec<u16>, Vec<usize>) {
    let nodes: Vec<u16> = (1..=n)
        .map(|i| {
            servers.start(
                &format!("cluster-{i}"),
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                ],
            )
        })
        .collect();
    let addrs: Vec<String> = nodes.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut args = vec!["--cluster", "create"];
    args.extend(addrs.iter().map(String::as_str));
    args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
    println!("{}", shown("redis-cli", &args));
    let out = Command::new("redis-cli")
        .args(&args)
        .output()
        .expect("redis-cli on PATH");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("All 16384 slots covered"),
        "redis-cli --cluster create failed:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = Instant::now();
    for &p in &nodes {
        while info(&cli(p, &["CLUSTER", "INFO"]), "cluster_state") != Some("ok") {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "cluster_state not ok on {p}"
            );
            sleep(Duration::from_millis(100));
        }
    }
    println!(
        "cluster_state:ok on every node after {:.1}s",
        t.elapsed().as_secs_f64()
    );
    cluster_owners(nodes[0])
}
