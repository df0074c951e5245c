//! What the end-to-end benchmarks share (`#[path = "common/mod.rs"] mod common;` in
//! bench/replay.rs and bench/topology.rs):
//!
//! - the events: [`generate_events`], N events of the five kinds the shipped rules handle, from a
//!   fixed-seed LCG, so every run and every benchmark sees the same input for the same N;
//! - the keyspace the shipped rules touch: [`prefill_commands`] writes it as commands, and
//!   [`Pipes`] streams them as RESP into one `redis-cli --pipe` per server, each command routed by
//!   the caller (a Cluster: to the primary that owns the slot of its first key);
//! - the measurements: [`build_release`], [`run_child`] (wall time, CPU and peak RSS of the child
//!   from `wait4`), [`redis_cpu`] (`INFO cpu` of a server) and [`field`] (a figure of the replay
//!   summary).
//!
//! Nothing here picks a server: every `redis-cli` call takes the arguments that reach it
//! (`-n 8` for the local Redis's DB 8, `-p PORT` for a benchmark's own server).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::time::Instant;

pub const CATEGORIES: u64 = 500;
pub const PAGES_PER_CATEGORY: u64 = 5;
pub const SECTIONS: &[&str] = &[
    "home", "deals", "new", "sale", "men", "women", "kids", "outlet",
];
pub const PROMOTIONS: u64 = 100;
pub const REVIEWS_PER_PRODUCT: u64 = 2;
pub const VALUE: &str = "cached-value-0123456789abcdef0123456789abcdef";

/// Knuth's MMIX LCG; the high bits are used.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn categories_of(p: u64) -> [u64; 2] {
    let a = p % CATEGORIES;
    let mut b = (p * 7 + 3) % CATEGORIES;
    if b == a {
        b = (b + 1) % CATEGORIES;
    }
    [a, b]
}

/// Writes `n` events for `products` products to `path` (JSON Lines); returns how many of each
/// kind: price, inventory, product, promotion, review.
pub fn generate_events(path: &Path, n: u64, products: u64) -> std::io::Result<[u64; 5]> {
    let mut rng = Lcg(0x5eed_2026_1122);
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let mut counts = [0u64; 5];
    for i in 0..n {
        let p = 1 + rng.below(products);
        let roll = rng.below(100);
        let minute = (i / 60) % 60;
        let second = i % 60;
        if roll < 35 {
            counts[0] += 1;
            let [a, b] = categories_of(p);
            let old = 1000 + rng.below(50_000);
            // 5% of repricings re-send the same price (the rule's `when` skips them).
            let new = if rng.chance(5) {
                old
            } else {
                old - old / (2 + rng.below(8))
            };
            writeln!(
                w,
                r#"{{"type": "price.updated", "id": "bench-{i}", "time": "2026-11-22T08:{minute:02}:{second:02}Z", "source": "pricing", "data": {{"product_id": {p}, "sku": "SKU-{p}-42", "currency": "EUR", "old_price": {}.{:02}, "new_price": {}.{:02}, "category_ids": ["c{a}", "c{b}"]}}}}"#,
                old / 100,
                old % 100,
                new / 100,
                new % 100
            )?;
        } else if roll < 65 {
            counts[1] += 1;
            let prev = rng.below(50);
            let qty = prev.saturating_sub(1 + rng.below(3));
            let stock = if rng.chance(70) {
                // 10% of the stock movements cross zero (in/out of stock).
                let was = true;
                let now = !rng.chance(10);
                format!(r#", "was_in_stock": {was}, "in_stock": {now}"#)
            } else {
                String::new()
            };
            writeln!(
                w,
                r#"{{"event_type": "inventory.changed", "event_id": "bench-{i}", "occurred_at": "2026-11-22T08:{minute:02}:{second:02}Z", "source": "warehouse", "data": {{"product_id": {p}, "warehouse": "ams-{}", "previous_quantity": {prev}, "quantity": {qty}{stock}}}}}"#,
                1 + rng.below(3)
            )?;
        } else if roll < 80 {
            counts[2] += 1;
            writeln!(
                w,
                r#"{{"type": "product.updated", "id": "bench-{i}", "time": "2026-11-22T08:{minute:02}:{second:02}Z", "source": "catalog", "data": {{"product_id": {p}, "fields": ["title", "images"]}}}}"#
            )?;
        } else if roll < 85 {
            counts[3] += 1;
            let promo = rng.below(PROMOTIONS);
            let ns = 1 + rng.below(3) as usize;
            let first = rng.below(SECTIONS.len() as u64) as usize;
            let sections: Vec<String> = (0..ns)
                .map(|k| format!("\"{}\"", SECTIONS[(first + k) % SECTIONS.len()]))
                .collect();
            let products_field = if rng.chance(50) {
                let ids: Vec<String> = (0..1 + rng.below(3))
                    .map(|_| (1 + rng.below(products)).to_string())
                    .collect();
                format!(r#", "product_ids": [{}]"#, ids.join(", "))
            } else {
                String::new()
            };
            writeln!(
                w,
                r#"{{"specversion": "1.0", "type": "promotion.changed", "id": "bench-{i}", "source": "/marketing/promotions", "time": "2026-11-22T08:{minute:02}:{second:02}Z", "datacontenttype": "application/json", "data": {{"promotion_id": "promo-{promo}", "sections": [{}]{products_field}}}}}"#,
                sections.join(", ")
            )?;
        } else {
            counts[4] += 1;
            let r = rng.below(REVIEWS_PER_PRODUCT);
            let s = rng.below(100);
            let (status, source) = if s < 70 {
                ("published", "reviews")
            } else if s < 85 {
                ("pending", "reviews")
            } else {
                ("removed", "moderation")
            };
            writeln!(
                w,
                r#"{{"type": "review.updated", "id": "bench-{i}", "time": "2026-11-22T08:{minute:02}:{second:02}Z", "source": "{source}", "data": {{"review_id": "r-{p}-{r}", "product_id": {p}, "rating": {}, "status": "{status}"}}}}"#,
                1 + rng.below(5)
            )?;
        }
    }
    w.flush()?;
    Ok(counts)
}

/// Where commands go, one at a time (`[command, args...]`).
pub type Sink<'a> = dyn FnMut(&[&str]) -> std::io::Result<()> + 'a;

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

/// Sends every key the shipped rules can touch for `products` products into `send`; returns the
/// number of commands (3,305,264 for 300,000 products).
pub fn prefill_commands(products: u64, send: &mut Sink) -> std::io::Result<u64> {
    let mut n = 0u64;
    for p in 1..=products {
        let ps = p.to_string();
        for k in ["price", "product", "inventory", "review:product"] {
            send(&["SET", &format!("{k}:{ps}"), VALUE])?;
        }
        send(&["SET", &format!("reco:product:{ps}"), VALUE, "EX", "3600"])?;
        let [a, b] = categories_of(p);
        send(&[
            "SADD",
            &format!("product:{ps}:categories"),
            &format!("c{a}"),
            &format!("c{b}"),
        ])?;
        let cart = format!("cart:preview:{ps}");
        let cmp = format!("compare:{ps}");
        send(&["SET", &cart, VALUE])?;
        send(&["SET", &cmp, VALUE])?;
        send(&["SADD", &format!("tag:product:{ps}"), &cart, &cmp])?;
        for r in 0..REVIEWS_PER_PRODUCT {
            send(&["SET", &format!("review:r-{ps}-{r}"), VALUE])?;
        }
        n += 9 + REVIEWS_PER_PRODUCT;
    }
    for c in 0..CATEGORIES {
        let tag = format!("tag:category:c{c}");
        for page in 1..=PAGES_PER_CATEGORY {
            let key = format!("category:c{c}:page:{page}");
            send(&["SET", &key, VALUE])?;
            send(&["SADD", &tag, &key])?;
            n += 2;
        }
    }
    for s in SECTIONS {
        send(&["SET", &format!("promo:{s}"), VALUE])?;
        send(&["SET", &format!("reco:section:{s}"), VALUE, "EX", "3600"])?;
        for k in 1..=3 {
            let key = format!("promo-block:{s}:{k}");
            send(&["SET", &key, VALUE])?;
            send(&["SADD", &format!("tag:promo-section:{s}"), &key])?;
            n += 2;
        }
        n += 2;
    }
    for pr in 0..PROMOTIONS {
        let key = format!("promo:promo-{pr}:banner");
        send(&["SET", &key, VALUE])?;
        send(&["SADD", &format!("tag:promo:promo-{pr}"), &key])?;
        n += 2;
    }
    Ok(n)
}

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
    /// Peak RSS, KiB.
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
    let mut status: libc::c_int = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // wait4 reaps the child and returns its own rusage (ru_maxrss in KiB on Linux).
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = t.elapsed().as_secs_f64();
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
        maxrss_kib: usage.ru_maxrss,
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        stdout,
    }
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
