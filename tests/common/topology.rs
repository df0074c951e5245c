//! Real Redis topologies for the fault tests: primaries and replicas, Sentinels, a 3+3 Redis
//! Cluster and a TCP proxy standing for a managed primary endpoint, all started by the test itself.
//!
//! Guarantees:
//! - every process runs from its own temp dir on its own loopback port (ports below the ephemeral
//!   range, so an outgoing connection never takes one, and whose cluster bus port, +10000, is free
//!   too), so tests run in parallel;
//! - every process is killed (SIGKILL, then reaped) when its handle is dropped, also while a test
//!   panics, and, through `PR_SET_PDEATHSIG`, when the thread that started it dies (a test binary
//!   killed by a timeout leaves nothing behind);
//! - the helpers wait for a state they can observe (`PING`, `INFO replication` offsets,
//!   `cluster_state:ok`, what the Sentinels report) and panic with that state when it does not
//!   come, never sleep for a guessed time.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The protections of the failover tests off: the controls' `[redis]` lines. `failover_rewind` is
/// on by default, so the controls turn it off explicitly (a binary without the failover settings,
/// which refuses them as unknown keys, would run the controls with `""`).
pub const CONTROL: &str = "failover_rewind = \"0s\"\nwait_replicas = 0\n";
/// Rewind after a failover, no `WAIT`.
pub const REWIND: &str = "failover_rewind = \"30s\"\n";
/// `WAIT 1` after each unit, no rewind (so that the `WAIT` alone is proven).
pub const WAIT: &str = "failover_rewind = \"0s\"\nwait_replicas = 1\nwait_timeout = \"500ms\"\n";

/// Polls `cond` every 10 ms until it holds (true) or `timeout` passes (false).
pub fn until(timeout: Duration, cond: impl FnMut() -> bool) -> bool {
    super::poll_until(timeout, Duration::from_millis(10), cond)
}

/// Ports handed out by this test binary, so that two tests never get the same one.
static TAKEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());

fn bindable(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A free loopback port in 10000..22000 whose cluster bus port (+10000) is free as well. Below
/// the ephemeral range (32768 and up on Linux), so no outgoing connection can take it between this
/// check and the server's `bind`.
pub fn port() -> u16 {
    let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..10_000 {
        let p = 10_000 + (rand::random::<u16>() % 12_000);
        if !taken.contains(&p) && bindable(p) && bindable(p + 10_000) {
            taken.push(p);
            return p;
        }
    }
    panic!("no free port pair in 10000..22000");
}

/// Makes the child die with the thread that starts it (see the module docs).
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// Starts `cmd` without stdin and with its output discarded, dying with its parent; `what` names
/// it if it cannot start.
fn spawn_quietly(cmd: &mut Command, what: &str) -> Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    die_with_parent(cmd);
    cmd.spawn().unwrap_or_else(|e| panic!("start {what}: {e}"))
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: a plain kill(2) on a child this process started and has not reaped.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Parses `INFO` text into field → value.
pub fn parse_info(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.trim().split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The last `n` lines of a log file (for failure messages).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `SET key v` for every key, in pipelines of 1,000.
pub fn set_all(c: &mut redis::Connection, keys: &[String]) {
    for chunk in keys.chunks(1000) {
        let mut p = redis::pipe();
        for k in chunk {
            p.cmd("SET").arg(k).arg("v").ignore();
        }
        let () = p.query(c).expect("SET pipeline");
    }
}

/// How many of `keys` exist (pipelined `EXISTS`).
pub fn count_existing(c: &mut redis::Connection, keys: &[String]) -> usize {
    let mut n = 0;
    for chunk in keys.chunks(1000) {
        let mut p = redis::pipe();
        for k in chunk {
            p.cmd("EXISTS").arg(k);
        }
        let found: Vec<i64> = p.query(c).expect("EXISTS pipeline");
        n += found.iter().filter(|&&e| e == 1).count();
    }
    n
}

/// Seeds every key on `primary` and waits until each replica has them.
pub fn seed(primary: &Server, replicas: &[&Server], keys: &[String]) {
    set_all(&mut primary.conn(), keys);
    for r in replicas {
        r.wait_synced(primary);
    }
}

/// `"a", "b"`: strings as the items of a TOML array.
fn toml_items(items: &[String]) -> String {
    items
        .iter()
        .map(|i| format!("\"{i}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Freezes `replicas` (SIGSTOP), forbids them to resync ([`Server::deny_resync`]) and cuts their
/// links ([`Server::cut_replicas`]): from now on `primary` acknowledges writes that no replica has
/// or will get, even once resumed.
pub fn freeze(primary: &Server, replicas: &[&Server]) {
    for r in replicas {
        r.stop();
    }
    primary.deny_resync();
    primary.cut_replicas();
}

#[derive(Default)]
struct Proc {
    child: Option<Child>,
    stopped: bool,
}

/// One `redis-server` (a primary, a replica or a cluster node) on its own port and temp dir.
pub struct Server {
    pub port: u16,
    dir: tempfile::TempDir,
    cluster: bool,
    proc: Mutex<Proc>,
}

impl Server {
    /// A stand-alone Redis, persisting nothing.
    pub fn start() -> Server {
        Server::launch(false)
    }

    /// A node with `cluster-enabled yes` (node timeout 1 s, see [`Cluster`]).
    pub fn start_cluster_node() -> Server {
        Server::launch(true)
    }

    fn launch(cluster: bool) -> Server {
        // Another test binary (another checkout's) may take the port between `port()` and the
        // server's bind: then another one is tried.
        for _ in 0..5 {
            let s = Server {
                port: port(),
                dir: tempfile::Builder::new()
                    .prefix("redis-")
                    .tempdir()
                    .expect("tempdir"),
                cluster,
                proc: Mutex::default(),
            };
            // A config file of its own, so that a Sentinel's `CONFIG REWRITE` succeeds.
            std::fs::write(s.dir.path().join("redis.conf"), "").unwrap();
            if s.spawn() {
                return s;
            }
        }
        panic!("could not start redis-server on a free port");
    }

    /// Starts the process; true once it answers `PING` itself (its `process_id`), false if it
    /// exited (the port was taken).
    fn spawn(&self) -> bool {
        let mut cmd = Command::new("redis-server");
        cmd.arg(self.dir.path().join("redis.conf"))
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--logfile", "redis.log"])
            // A replica attached now syncs now, not 5 s later.
            .args(["--repl-diskless-sync-delay", "0"]);
        if self.cluster {
            cmd.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ])
            .args(["--cluster-node-timeout", "1000"])
            // Failovers happen when the nemesis says so (CLUSTER FAILOVER TAKEOVER), never
            // because a loaded test machine missed a heartbeat.
            .args(["--cluster-replica-no-failover", "yes"]);
        }
        let child = spawn_quietly(&mut cmd, "redis-server");
        let pid = child.id().to_string();
        *self.proc.lock().unwrap() = Proc {
            child: Some(child),
            stopped: false,
        };
        let mut exited = false;
        let answered = until(Duration::from_secs(10), || {
            exited = matches!(
                self.proc
                    .lock()
                    .unwrap()
                    .child
                    .as_mut()
                    .map(Child::try_wait),
                Some(Ok(Some(_)))
            );
            exited
                || self.try_conn().is_some_and(|mut c| {
                    redis::cmd("INFO")
                        .arg("server")
                        .query::<String>(&mut c)
                        .is_ok_and(|i| parse_info(&i).get("process_id") == Some(&pid))
                })
        });
        if exited {
            self.proc.lock().unwrap().child = None;
            return false;
        }
        assert!(
            answered,
            "redis-server on port {} did not answer PING:\n{}",
            self.port,
            self.log()
        );
        true
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's log file, for failure messages.
    pub fn log(&self) -> String {
        tail(&self.dir.path().join("redis.log"), 30)
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.lock().unwrap().child.as_ref().map(Child::id)
    }

    /// Running and not stopped (SIGSTOP).
    pub fn is_up(&self) -> bool {
        let p = self.proc.lock().unwrap();
        p.child.is_some() && !p.stopped
    }

    /// A connection that answered `PING`, or `None` (reads time out after 5 s).
    pub fn try_conn(&self) -> Option<redis::Connection> {
        let mut c = redis::Client::open(self.url())
            .ok()?
            .get_connection_with_timeout(Duration::from_secs(1))
            .ok()?;
        c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        c.set_write_timeout(Some(Duration::from_secs(5))).ok()?;
        redis::cmd("PING").query::<String>(&mut c).ok()?;
        Some(c)
    }

    /// A sync connection; panics if the server does not answer.
    pub fn conn(&self) -> redis::Connection {
        self.try_conn()
            .unwrap_or_else(|| panic!("redis-server on port {} does not answer", self.port))
    }

    /// Runs one command on a new connection.
    pub fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        cmd.query(&mut self.conn())
    }

    /// `INFO section`, parsed, or `None` when the server does not answer.
    pub fn try_info(&self, section: &str) -> Option<HashMap<String, String>> {
        let text: String = redis::cmd("INFO")
            .arg(section)
            .query(&mut self.try_conn()?)
            .ok()?;
        Some(parse_info(&text))
    }

    /// `INFO section`, parsed.
    pub fn info(&self, section: &str) -> HashMap<String, String> {
        let text: String = self.query(redis::cmd("INFO").arg(section)).expect("INFO");
        parse_info(&text)
    }

    /// How many times `cmd` ran (`cmdstat_{cmd}` calls of `INFO commandstats`; 0 if never).
    pub fn calls(&self, cmd: &str) -> u64 {
        self.stat("commandstats", &format!("cmdstat_{cmd}"), "calls")
    }

    /// How many `code` error replies were given (`errorstat_{code}` of `INFO errorstats`).
    pub fn errors(&self, code: &str) -> u64 {
        self.stat("errorstats", &format!("errorstat_{code}"), "count")
    }

    /// `field` of the `name:field=n,...` line of `INFO section`; 0 when the line is absent.
    fn stat(&self, section: &str, name: &str, field: &str) -> u64 {
        let prefix = format!("{field}=");
        self.info(section)
            .get(name)
            .and_then(|v| v.split(',').find_map(|kv| kv.strip_prefix(&prefix)))
            .map_or(0, |n| n.parse().unwrap())
    }

    /// `role:` of `INFO replication` (`master` or `slave`).
    pub fn role(&self) -> String {
        self.info("replication").remove("role").unwrap_or_default()
    }

    /// The server's `run_id`.
    pub fn run_id(&self) -> String {
        self.info("server").remove("run_id").unwrap_or_default()
    }

    pub fn dbsize(&self) -> i64 {
        self.query(&redis::cmd("DBSIZE")).expect("DBSIZE")
    }

    /// `REPLICAOF 127.0.0.1 primary`.
    pub fn replica_of(&self, primary: &Server) {
        let () = self
            .query(redis::cmd("REPLICAOF").arg("127.0.0.1").arg(primary.port))
            .expect("REPLICAOF");
    }

    /// `REPLICAOF NO ONE`: this replica becomes a primary.
    pub fn promote(&self) {
        let () = self
            .query(redis::cmd("REPLICAOF").arg("NO").arg("ONE"))
            .expect("REPLICAOF NO ONE");
    }

    /// On a primary: `CLIENT KILL TYPE replica`, closing every replication link. Whatever the
    /// primary writes afterwards stays in its own memory (its backlog), so a replica frozen before
    /// this call gets none of it, not even what the kernel would have buffered on the socket. A
    /// SIGSTOP alone leaves the link open: a frozen replica's socket buffers (about half a MB on
    /// loopback) still take the writes, and the replica applies them as soon as it resumes, even
    /// after the primary died.
    pub fn cut_replicas(&self) -> i64 {
        self.query(redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("replica"))
            .expect("CLIENT KILL TYPE replica")
    }

    /// On a primary: `ACL SETUSER default -sync -psync -replconf`, so that no replica can attach
    /// (again) while clients keep working: a replica whose link was cut stays stale when it
    /// resumes, whenever the nemesis resumes it.
    pub fn deny_resync(&self) {
        let () = self
            .query(
                redis::cmd("ACL")
                    .arg("SETUSER")
                    .arg("default")
                    .arg("-sync")
                    .arg("-psync")
                    .arg("-replconf"),
            )
            .expect("ACL SETUSER default -sync -psync -replconf");
    }

    /// Waits until this replica's link to `primary` is up and it has everything `primary` wrote
    /// (its `slave_repl_offset` reached the primary's `master_repl_offset`).
    pub fn wait_synced(&self, primary: &Server) {
        let mut last = (String::new(), String::new());
        let ok = until(Duration::from_secs(20), || {
            // A server slow to answer (a loaded host) is asked again, not a failure.
            let (Some(p), Some(r)) = (
                primary.try_info("replication"),
                self.try_info("replication"),
            ) else {
                return false;
            };
            let target: i64 = p["master_repl_offset"].parse().unwrap_or(i64::MAX);
            let done = r.get("master_link_status").map(String::as_str) == Some("up")
                && r.get("master_port") == Some(&primary.port.to_string())
                && r.get("slave_repl_offset")
                    .and_then(|o| o.parse::<i64>().ok())
                    .is_some_and(|o| o >= target);
            last = (format!("{p:?}"), format!("{r:?}"));
            done
        });
        assert!(
            ok,
            "replica {} not in sync with {}:\nprimary {}\nreplica {}\n{}",
            self.port,
            primary.port,
            last.0,
            last.1,
            self.log()
        );
    }

    /// `kill -9`, then reaped. Its port stays reserved; [`Server::restart`] brings it back.
    pub fn kill9(&self) {
        let mut p = self.proc.lock().unwrap();
        if let Some(mut child) = p.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        p.stopped = false;
    }

    /// SIGSTOP: frozen, its sockets open, answering nothing.
    pub fn stop(&self) {
        let mut p = self.proc.lock().unwrap();
        if let Some(child) = &p.child {
            signal(child.id(), libc::SIGSTOP);
            p.stopped = true;
        }
    }

    /// SIGCONT.
    pub fn cont(&self) {
        let mut p = self.proc.lock().unwrap();
        if let Some(child) = &p.child {
            signal(child.id(), libc::SIGCONT);
            p.stopped = false;
        }
    }

    /// `SHUTDOWN SAVE`: stops with its data set saved in its dir, which [`Server::restart`] loads
    /// again (a Redis down for maintenance, not lost).
    pub fn shutdown_saving(&self) {
        if let Some(mut c) = self.try_conn() {
            // The server closes the connection instead of answering.
            let _: redis::RedisResult<()> = redis::cmd("SHUTDOWN").arg("SAVE").query(&mut c);
        }
        let exited = until(Duration::from_secs(10), || {
            let mut p = self.proc.lock().unwrap();
            !matches!(p.child.as_mut().map(Child::try_wait), Some(Ok(None)))
        });
        assert!(
            exited,
            "redis-server on port {} did not shut down:\n{}",
            self.port,
            self.log()
        );
    }

    /// Starts a killed server again on the same port and dir (a cluster node reads its
    /// `nodes.conf` and rejoins; a primary whose slots were taken over comes back as a replica).
    pub fn restart(&self) {
        self.kill9();
        assert!(
            self.spawn(),
            "redis-server did not start again on port {}:\n{}",
            self.port,
            self.log()
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The path of `name` on `PATH`, if any.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// One `redis-sentinel`.
struct Sentinel {
    port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

impl Sentinel {
    fn conn(&self) -> Option<redis::Connection> {
        let c = redis::Client::open(format!("redis://127.0.0.1:{}", self.port))
            .ok()?
            .get_connection_with_timeout(Duration::from_secs(1))
            .ok()?;
        c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        Some(c)
    }

    fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Option<T> {
        cmd.query(&mut self.conn()?).ok()
    }

    fn log(&self) -> String {
        tail(&self.dir.path().join("sentinel.log"), 40)
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `n` Sentinels watching one primary under `name`, quorum 1, `down-after-milliseconds 1000`,
/// `failover-timeout 5000`.
pub struct Sentinels {
    /// The master name (`sentinel_master`).
    pub name: String,
    nodes: Vec<Sentinel>,
}

impl Sentinels {
    /// Starts `n` Sentinels monitoring `primary` and waits until each of them knows every one of
    /// `replicas` as a healthy replica (and the other Sentinels).
    pub fn start(n: usize, primary: &Server, replicas: &[&Server]) -> Sentinels {
        let name = format!("m{:08x}", rand::random::<u32>());
        let nodes = (0..n).map(|_| Sentinel::spawn(&name, primary)).collect();
        let s = Sentinels { name, nodes };
        let want: HashSet<String> = replicas.iter().map(|r| r.port.to_string()).collect();
        let mut last = String::new();
        let ok = until(Duration::from_secs(30), || {
            s.nodes.iter().all(|node| {
                let healthy: HashSet<String> = node
                    .query::<Vec<HashMap<String, String>>>(
                        redis::cmd("SENTINEL").arg("REPLICAS").arg(&s.name),
                    )
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|r| r.get("flags").map(String::as_str) == Some("slave"))
                    .filter_map(|r| r.get("port").cloned())
                    .collect();
                let peers = node
                    .query::<Vec<redis::Value>>(
                        redis::cmd("SENTINEL").arg("SENTINELS").arg(&s.name),
                    )
                    .map_or(0, |v| v.len());
                last = format!(
                    "sentinel {}: replicas {healthy:?}, peers {peers}",
                    node.port
                );
                want.is_subset(&healthy) && peers + 1 == n
            })
        });
        assert!(ok, "Sentinels not ready: {last}\n{}", s.logs());
        s
    }

    /// `redis://127.0.0.1:PORT` of every Sentinel.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// The `[redis]` lines of an invalidator that finds its primary through these Sentinels.
    pub fn config(&self) -> String {
        format!(
            "sentinels = [{}]\nsentinel_master = \"{}\"\n",
            toml_items(&self.urls()),
            self.name
        )
    }

    /// The master port each answering Sentinel reports (`SENTINEL get-master-addr-by-name`).
    pub fn master_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter_map(|n| {
                n.query::<(String, String)>(
                    redis::cmd("SENTINEL")
                        .arg("get-master-addr-by-name")
                        .arg(&self.name),
                )
            })
            .filter_map(|(_, port)| port.parse().ok())
            .collect()
    }

    /// Waits until every Sentinel reports a master other than `old` and they agree; returns its
    /// port.
    pub fn wait_new_master(&self, old: &Server, timeout: Duration) -> u16 {
        let mut seen = Vec::new();
        let ok = until(timeout, || {
            seen = self.master_ports();
            seen.len() == self.nodes.len() && seen.iter().all(|&p| p != old.port && p == seen[0])
        });
        assert!(
            ok,
            "the Sentinels did not fail over from port {} within {timeout:?} (they report {seen:?}):\n{}",
            old.port,
            self.logs()
        );
        seen[0]
    }

    /// The tail of every Sentinel's log.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- sentinel {}:\n{}", n.port, n.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Sentinel {
    /// Starts a Sentinel on a free port (another one if the port was taken meanwhile).
    fn spawn(name: &str, primary: &Server) -> Sentinel {
        (0..5)
            .find_map(|_| Sentinel::try_spawn(name, primary))
            .expect("could not start a Sentinel on a free port")
    }

    fn try_spawn(name: &str, primary: &Server) -> Option<Sentinel> {
        let port = port();
        let dir = tempfile::Builder::new()
            .prefix("sentinel-")
            .tempdir()
            .expect("tempdir");
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\nlogfile {dir}/sentinel.log\n\
                 sentinel resolve-hostnames no\n\
                 sentinel monitor {name} 127.0.0.1 {primary} 1\n\
                 sentinel down-after-milliseconds {name} 1000\n\
                 sentinel failover-timeout {name} 5000\n\
                 sentinel parallel-syncs {name} 1\n",
                dir = dir.path().display(),
                primary = primary.port,
            ),
        )
        .unwrap();
        // Debian ships `redis-sentinel` (a link to redis-server) in its own package; without it,
        // redis-server runs as a Sentinel with `--sentinel`.
        let mut cmd = match on_path("redis-sentinel") {
            Some(bin) => {
                let mut c = Command::new(bin);
                c.arg(&conf);
                c
            }
            None => {
                let mut c = Command::new("redis-server");
                c.arg(&conf).arg("--sentinel");
                c
            }
        };
        let child = spawn_quietly(&mut cmd, "redis-sentinel");
        let pid = child.id().to_string();
        let mut s = Sentinel { port, dir, child };
        let mut exited = false;
        let answered = until(Duration::from_secs(10), || {
            exited = matches!(s.child.try_wait(), Ok(Some(_)));
            exited
                || s.query::<String>(redis::cmd("INFO").arg("server"))
                    .is_some_and(|i| parse_info(&i).get("process_id") == Some(&pid))
        });
        if exited {
            return None;
        }
        assert!(
            answered,
            "sentinel on port {port} did not answer:\n{}",
            s.log()
        );
        Some(s)
    }
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone)]
pub struct NodeLine {
    pub id: String,
    pub port: u16,
    pub flags: Vec<String>,
    /// The primary's id, for a replica.
    pub master: Option<String>,
    /// Slot ranges (inclusive).
    pub slots: Vec<(u16, u16)>,
}

impl NodeLine {
    pub fn is_master(&self) -> bool {
        self.flags.iter().any(|f| f == "master")
    }

    pub fn failing(&self) -> bool {
        self.flags.iter().any(|f| f == "fail" || f == "fail?")
    }
}

/// The text of `CLUSTER {sub}` (`INFO`, `NODES`), empty if the node does not answer.
fn cluster_text(c: &mut redis::Connection, sub: &str) -> String {
    redis::cmd("CLUSTER").arg(sub).query(c).unwrap_or_default()
}

/// Parses `CLUSTER NODES`.
pub fn parse_nodes(text: &str) -> Vec<NodeLine> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let addr = f[1].split('@').next()?;
            let port = addr.rsplit(':').next()?.parse().ok()?;
            let slots = f[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|a| (a, a)),
                })
                .collect();
            Some(NodeLine {
                id: f[0].to_owned(),
                port,
                flags: f[2].split(',').map(str::to_owned).collect(),
                master: (f[3] != "-").then(|| f[3].to_owned()),
                slots,
            })
        })
        .collect()
}

/// A primary's port and its slot ranges.
type SlotOwner = (u16, Vec<(u16, u16)>);

/// A Redis Cluster of 3 primaries and 3 replicas (`redis-cli --cluster create ...
/// --cluster-replicas 1`), node timeout 1 s, automatic failover off
/// (`cluster-replica-no-failover yes`: the nemesis decides when a replica takes over).
pub struct Cluster {
    pub nodes: Vec<Server>,
}

impl Cluster {
    /// Starts 6 nodes, makes the cluster, and waits until every node reports `cluster_state:ok`,
    /// agrees on the slot owners, and every replica is in sync with its primary.
    pub fn start() -> Cluster {
        let nodes: Vec<Server> = (0..6).map(|_| Server::start_cluster_node()).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(nodes.iter().map(Server::addr))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let c = Cluster { nodes };
        c.wait_ok();
        for p in c.primaries() {
            c.replica_of(p).wait_synced(p);
        }
        c
    }

    /// The `[redis]` line of an invalidator that works with this cluster.
    pub fn config(&self) -> String {
        format!("cluster = [{}]\n", toml_items(&self.seeds()))
    }

    /// `redis://127.0.0.1:PORT` of every node, primaries first (the `cluster` seeds).
    pub fn seeds(&self) -> Vec<String> {
        let primaries: Vec<u16> = self.primaries().iter().map(|p| p.port).collect();
        let mut ports = primaries.clone();
        ports.extend(
            self.nodes
                .iter()
                .map(|n| n.port)
                .filter(|p| !primaries.contains(p)),
        );
        ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// The node on `port`.
    pub fn node(&self, port: u16) -> &Server {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node on port {port}"))
    }

    /// Some node that is up (not killed, not stopped).
    fn any_up(&self) -> &Server {
        self.nodes
            .iter()
            .find(|n| n.is_up())
            .expect("a node that is up")
    }

    /// `CLUSTER NODES` as one up node sees it.
    pub fn view(&self) -> Vec<NodeLine> {
        let text: String = self
            .any_up()
            .query(redis::cmd("CLUSTER").arg("NODES"))
            .expect("CLUSTER NODES");
        parse_nodes(&text)
    }

    /// The primaries that own slots, as an up node sees them.
    pub fn primaries(&self) -> Vec<&Server> {
        self.view()
            .iter()
            .filter(|n| n.is_master() && !n.slots.is_empty())
            .map(|n| self.node(n.port))
            .collect()
    }

    /// The replica of `primary`.
    pub fn replica_of(&self, primary: &Server) -> &Server {
        let view = self.view();
        let id = &view
            .iter()
            .find(|n| n.port == primary.port)
            .expect("primary in CLUSTER NODES")
            .id;
        let r = view
            .iter()
            .find(|n| n.master.as_ref() == Some(id))
            .unwrap_or_else(|| panic!("no replica of {} in {view:?}", primary.port));
        self.node(r.port)
    }

    /// The hash slot of every key, from the cluster itself (pipelined `CLUSTER KEYSLOT`).
    pub fn slots(&self, keys: &[String]) -> Vec<u16> {
        let mut c = self.any_up().conn();
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(1000) {
            let mut p = redis::pipe();
            for k in chunk {
                p.cmd("CLUSTER").arg("KEYSLOT").arg(k);
            }
            let slots: Vec<u16> = p.query(&mut c).expect("CLUSTER KEYSLOT");
            out.extend(slots);
        }
        out
    }

    /// The port of the primary owning each slot, as an up node sees it.
    fn slot_owners(&self) -> Vec<u16> {
        let mut owners = vec![0u16; 16384];
        for n in self.view().iter().filter(|n| n.is_master()) {
            for &(a, b) in &n.slots {
                for s in a..=b {
                    owners[s as usize] = n.port;
                }
            }
        }
        owners
    }

    /// The primary that owns `key`'s slot.
    pub fn owner_of(&self, key: &str) -> &Server {
        let slot = self.slots(&[key.to_owned()])[0];
        self.node(self.slot_owners()[slot as usize])
    }

    /// `keys` grouped by the primary owning them (by port).
    pub fn by_owner(&self, keys: &[String]) -> BTreeMap<u16, Vec<String>> {
        let owners = self.slot_owners();
        let mut out: BTreeMap<u16, Vec<String>> = BTreeMap::new();
        for (k, s) in keys.iter().zip(self.slots(keys)) {
            out.entry(owners[s as usize]).or_default().push(k.clone());
        }
        out
    }

    /// `SET key v` for every key, on its primary.
    pub fn set_all(&self, keys: &[String]) {
        for (port, keys) in self.by_owner(keys) {
            set_all(&mut self.node(port).conn(), &keys);
        }
    }

    /// How many of `keys` exist on the primaries that own them now.
    pub fn count_existing(&self, keys: &[String]) -> usize {
        self.by_owner(keys)
            .iter()
            .map(|(&port, keys)| count_existing(&mut self.node(port).conn(), keys))
            .sum()
    }

    /// Every replica in sync with its primary.
    pub fn wait_replicas_synced(&self) {
        for p in self.primaries() {
            self.replica_of(p).wait_synced(p);
        }
    }

    /// Waits until every up node reports `cluster_state:ok`, sees the same primary for every
    /// slot, and sees every up node healthy, as a primary owning slots or as a replica.
    pub fn wait_ok(&self) {
        let mut last = String::new();
        let ok = until(Duration::from_secs(30), || {
            let mut owners: Option<Vec<SlotOwner>> = None;
            for n in self.nodes.iter().filter(|n| n.is_up()) {
                let Some(mut c) = n.try_conn() else {
                    last = format!("node {} does not answer", n.port);
                    return false;
                };
                let info = cluster_text(&mut c, "INFO");
                if parse_info(&info).get("cluster_state").map(String::as_str) != Some("ok") {
                    last = format!("node {}: {info}", n.port);
                    return false;
                }
                let text = cluster_text(&mut c, "NODES");
                let view = parse_nodes(&text);
                let up = |port: u16| self.nodes.iter().any(|s| s.port == port && s.is_up());
                // Every node known; every node that is up healthy, and either a primary owning
                // slots or a replica (right after `--cluster create` the replicas are primaries
                // without slots until their role has spread).
                if view.len() != self.nodes.len()
                    || view.iter().filter(|v| up(v.port)).any(|v| {
                        let role_known = if v.is_master() {
                            !v.slots.is_empty()
                        } else {
                            v.master.is_some()
                        };
                        v.failing() || !role_known
                    })
                {
                    last = format!("node {} sees:\n{text}", n.port);
                    return false;
                }
                let mut mine: Vec<SlotOwner> = view
                    .into_iter()
                    .filter(|v| v.is_master() && !v.slots.is_empty())
                    .map(|v| (v.port, v.slots))
                    .collect();
                mine.sort();
                match &owners {
                    Some(o) if *o != mine => {
                        last = format!("node {} disagrees: {mine:?} vs {o:?}", n.port);
                        return false;
                    }
                    _ => owners = Some(mine),
                }
            }
            true
        });
        assert!(ok, "cluster not ok: {last}");
    }

    /// `CLUSTER FAILOVER TAKEOVER` on `replica` (no agreement of the other primaries needed, its
    /// primary may be dead); waits until it is a primary owning slots and the cluster is ok.
    pub fn takeover(&self, replica: &Server) {
        let () = replica
            .query(redis::cmd("CLUSTER").arg("FAILOVER").arg("TAKEOVER"))
            .expect("CLUSTER FAILOVER TAKEOVER");
        assert!(
            until(Duration::from_secs(20), || replica.role() == "master"),
            "node {} did not become a primary:\n{}",
            replica.port,
            replica.log()
        );
        self.wait_ok();
        assert!(
            self.primaries().iter().any(|p| p.port == replica.port),
            "node {} owns no slot after the takeover",
            replica.port
        );
    }
}

/// State shared by a [`Proxy`] and its threads.
struct ProxyInner {
    target: Mutex<String>,
    /// Both ends of every open connection, by connection number.
    open: Mutex<HashMap<u64, (TcpStream, TcpStream)>>,
    next: AtomicU64,
    closed: AtomicBool,
}

impl ProxyInner {
    fn drop_all(&self) {
        for (_, (a, b)) in self.open.lock().unwrap().drain() {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }
}

/// A TCP proxy on a free loopback port standing for a managed primary endpoint (ElastiCache's):
/// it forwards every connection to the current target; [`Proxy::switch`] points new connections
/// at another target and drops every open one, as the endpoint's DNS change and the old primary's
/// demotion do on a failover.
pub struct Proxy {
    pub port: u16,
    inner: Arc<ProxyInner>,
}

impl Proxy {
    pub fn start(target: &str) -> Proxy {
        let (port, listener) = (0..5)
            .find_map(|_| {
                let port = port();
                TcpListener::bind(("127.0.0.1", port))
                    .ok()
                    .map(|l| (port, l))
            })
            .expect("bind the proxy");
        let inner = Arc::new(ProxyInner {
            target: Mutex::new(target.to_owned()),
            open: Mutex::default(),
            next: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        });
        let shared = inner.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if shared.closed.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let target = shared.target.lock().unwrap().clone();
                // A dead target: the client sees its connection closed, as through a real endpoint.
                let server = target
                    .parse::<std::net::SocketAddr>()
                    .ok()
                    .and_then(|a| TcpStream::connect_timeout(&a, Duration::from_secs(1)).ok());
                let Some(server) = server else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let id = shared.next.fetch_add(1, Ordering::SeqCst);
                let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = (
                    client.try_clone(),
                    server.try_clone(),
                    client.try_clone(),
                    server.try_clone(),
                ) else {
                    continue;
                };
                shared.open.lock().unwrap().insert(id, (c3, s3));
                let up = shared.clone();
                std::thread::spawn(move || pump(client, server, id, &up));
                let down = shared.clone();
                std::thread::spawn(move || pump(s2, c2, id, &down));
            }
        });
        Proxy { port, inner }
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// New connections go to `target` (`127.0.0.1:PORT`); every open connection is dropped.
    pub fn switch(&self, target: &str) {
        *self.inner.target.lock().unwrap() = target.to_owned();
        self.inner.drop_all();
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.inner.open.lock().unwrap().len()
    }
}

/// Copies `from` → `to` until either side ends, then closes both.
fn pump(mut from: TcpStream, mut to: TcpStream, id: u64, inner: &ProxyInner) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
    inner.open.lock().unwrap().remove(&id);
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        // Wakes the accept loop up so it sees `closed`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        self.inner.drop_all();
    }
}
