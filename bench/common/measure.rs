//! What the benchmarks measure of a process (wall time, CPU, peak RSS), and how they print it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

/// `target/release/invalidator` (honours `CARGO_TARGET_DIR`), built first unless `skip_build`.
pub fn build_release(skip_build: bool) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_relative() { root.join(p) } else { p })
        .unwrap_or_else(|| root.join("target"));
    let bin = target.join("release").join("invalidator");
    if !skip_build {
        println!("$ cargo build --release --bin invalidator");
        let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "--bin", "invalidator"])
            .current_dir(&root)
            .status()
            .expect("running cargo");
        assert!(st.success(), "cargo build --release failed");
    }
    assert!(bin.exists(), "{} not found", bin.display());
    bin
}

/// The configuration the benchmarks replay with: `redis` (the lines of `[redis]`), tags in set
/// mode under `tag:`, CDN paths logged.
pub fn config_toml(redis: &str) -> String {
    format!(
        "[redis]\n{redis}\n\n[tags]\nmode = \"set\"\nprefix = \"tag:\"\n\n[cdn.catalog-cdn]\nkind = \"log\"\n"
    )
}

/// `<bin> replay -c <config> --rules <rules> [--dry-run] <events>`.
pub fn replay_command(
    bin: &Path,
    config: &Path,
    rules: &Path,
    events: &Path,
    dry_run: bool,
) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("replay")
        .arg("-c")
        .arg(config)
        .arg("--rules")
        .arg(rules);
    if dry_run {
        cmd.arg("--dry-run");
    }
    cmd.arg(events);
    cmd
}

/// What a child did, from `wait4`.
pub struct ChildRun {
    pub wall: f64,
    /// Exit status; -1 if killed by a signal.
    pub exit: i32,
    /// Peak RSS, KiB: the child's own `VmHWM` ([`own_peak_rss`]).
    pub maxrss_kib: i64,
    /// CPU seconds (user + system).
    pub cpu: f64,
    /// What it printed (the replay's summary); its stderr stays in `<tmp>/<label>.stderr`.
    pub stdout: String,
}

/// Runs `cmd` (without `RUST_LOG`, stdin closed, stdout and stderr to `<tmp>/<label>.stdout` and
/// `.stderr`) to its end; on a non-zero exit, the first lines of its stderr go to ours.
pub fn run_child(mut cmd: Command, label: &str, tmp: &Path) -> ChildRun {
    let out_path = tmp.join(format!("{label}.stdout"));
    let err_path = tmp.join(format!("{label}.stderr"));
    cmd.env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap());
    let t = Instant::now();
    let child = cmd.spawn().expect("spawning invalidator");
    let pid = child.id() as libc::pid_t;
    let peak = own_peak_rss(pid);
    let mut status: libc::c_int = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // wait4 reaps the child and returns its own rusage (its CPU).
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = t.elapsed().as_secs_f64();
    let maxrss_kib = peak.finish();
    assert_eq!(r, pid, "wait4 failed: {}", std::io::Error::last_os_error());
    std::mem::forget(child);
    let exit = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    if exit != 0 {
        eprintln!(
            "!! {label}: exit {exit}\n{}",
            stderr.lines().take(20).collect::<Vec<_>>().join("\n")
        );
    }
    ChildRun {
        wall,
        exit,
        maxrss_kib,
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        stdout,
    }
}

/// Watches a child's `VmHWM` (the high-water mark of its own memory) until [`PeakRss::finish`].
///
/// Not `wait4`'s `ru_maxrss`: Linux counts in it the memory of the parent that spawned the child
/// (the high-water mark of the address space it had before `exec`, which `posix_spawn` and `fork`
/// share with the parent), so a child of this benchmark, which holds its events and prefill in
/// memory, reported about 305 MiB for a replay that used a tenth of that. `VmHWM` belongs to the
/// address space `exec` made, and only grows: the last value read before the exit is the peak,
/// short of what the last 10 ms added.
pub fn own_peak_rss(pid: libc::pid_t) -> PeakRss {
    let (stop, peak) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicI64::new(0)),
    );
    let watcher = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(kib) = vm_hwm_kib(pid) {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    PeakRss {
        stop,
        peak,
        watcher,
    }
}

pub struct PeakRss {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicI64>,
    watcher: std::thread::JoinHandle<()>,
}

impl PeakRss {
    /// The highest `VmHWM` seen, KiB.
    pub fn finish(self) -> i64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.watcher.join();
        self.peak.load(Ordering::Relaxed)
    }
}

/// `VmHWM` of `pid`, KiB; none once it has exited.
fn vm_hwm_kib(pid: libc::pid_t) -> Option<i64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The number after `name` on a line of the replay summary (`events:`, `keys removed:`...).
pub fn field(summary: &str, name: &str) -> Option<u64> {
    summary.lines().find_map(|l| {
        let l = l.trim_start_matches("[dry run] ").trim();
        l.strip_prefix(name)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    })
}

/// CPU seconds (user + system) the running process `pid` used so far (`/proc/PID/stat`).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which may hold spaces, in parentheses).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / hz
}

/// What the machine did during a run: its cores busy and stolen on average (`/proc/stat`'s
/// first line: busy is user + nice + system + irq + softirq, steal what the hypervisor gave to
/// others), and the CPU seconds of the Redis server a `redis-cli` target reaches.
pub struct Busy {
    pub busy: f64,
    pub steal: f64,
    pub cores: usize,
    pub redis: f64,
    /// The events of the run, to read `redis` per event.
    pub events: u64,
}

/// Where a [`Busy`] starts counting.
pub struct BusyFrom {
    at: Instant,
    ticks: (f64, f64),
    redis: f64,
    target: &'static [&'static str],
}

impl Busy {
    pub fn start(redis_target: &'static [&'static str]) -> BusyFrom {
        BusyFrom {
            at: Instant::now(),
            ticks: machine_ticks(),
            redis: super::redis::redis_cpu(redis_target),
            target: redis_target,
        }
    }
}

impl BusyFrom {
    /// What the machine did since `self`, over a run of `events`.
    pub fn since(&self, events: u64) -> Busy {
        let (busy, steal) = machine_ticks();
        let wall = self.at.elapsed().as_secs_f64().max(1e-9);
        Busy {
            busy: (busy - self.ticks.0) / wall,
            steal: (steal - self.ticks.1) / wall,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            redis: super::redis::redis_cpu(self.target) - self.redis,
            events,
        }
    }
}

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "machine {:.2} of {} cores busy ({:.2} stolen), Redis {:.2} s CPU",
            self.busy, self.cores, self.steal, self.redis
        )
    }
}

/// The machine's busy and stolen CPU seconds so far.
fn machine_ticks() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .map(|t| t.parse().unwrap_or(0.0))
        .collect();
    let tick = |i: usize| ticks.get(i).copied().unwrap_or(0.0);
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (
        (tick(0) + tick(1) + tick(2) + tick(5) + tick(6)) / hz,
        tick(7) / hz,
    )
}

/// Peak RSS of the running process `pid` (`VmHWM` of /proc/PID/status), KiB; 0 if unknown.
pub fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

pub fn mib(kib: i64) -> f64 {
    kib as f64 / 1024.0
}

/// How a target reads: MET or MISSED.
pub fn verdict(met: bool) -> &'static str {
    if met { "MET" } else { "MISSED" }
}

/// Prints `rows` under the headers of `columns` (header, width): the first column left-aligned,
/// the others right-aligned, one space apart.
pub fn print_table(columns: &[(&str, usize)], rows: &[Vec<String>]) {
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let cells: Vec<String> = cells
            .zip(columns)
            .enumerate()
            .map(|(i, (c, &(_, w)))| {
                if i == 0 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        println!("{}", cells.join(" "));
    };
    line(&mut columns.iter().map(|c| c.0));
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
}
