//! End-to-end replay benchmark: `cargo bench --bench replay -- [--events N] [--products N]`.
//!
//! 1. generates N events (default 1,000,000; fixed-seed LCG) of the five kinds the shipped rules
//!    handle, as JSON Lines in a temp directory;
//! 2. builds `target/release/invalidator` (`cargo build --release`);
//! 3. for the plain rules (`bench/rules-plain/`) and the shipped rules (`rules/`), real and
//!    `--dry-run`: FLUSHDB on Redis DB 8, prefills the keyspace the rules touch (`redis-cli --pipe`),
//!    runs `invalidator replay` as a child and records wall time, events/s, keys removed/s and the
//!    child's peak RSS (`wait4`);
//! 4. measures the physical limit with `redis-benchmark -P 64 ... UNLINK/DEL key:__rand_int__` on
//!    DB 8 and prints our keys/s as a ratio of it.
//!
//! Only Redis DB 8 is ever written; DB 0 is never touched. `--generate-only FILE` writes the events
//! and exits (to profile a replay by hand).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

const DB: &str = "8";
const REDIS_URL: &str = "redis://127.0.0.1:6379/8";
const CATEGORIES: u64 = 500;
const PAGES_PER_CATEGORY: u64 = 5;
const SECTIONS: &[&str] = &[
    "home", "deals", "new", "sale", "men", "women", "kids", "outlet",
];
const PROMOTIONS: u64 = 100;
const REVIEWS_PER_PRODUCT: u64 = 2;
const VALUE: &str = "cached-value-0123456789abcdef0123456789abcdef";

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

fn generate_events(path: &Path, n: u64, products: u64) -> std::io::Result<[u64; 5]> {
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

fn resp(w: &mut impl Write, args: &[&str]) -> std::io::Result<()> {
    write!(w, "*{}\r\n", args.len())?;
    for a in args {
        write!(w, "${}\r\n{}\r\n", a.len(), a)?;
    }
    Ok(())
}

fn redis_cli(args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-n", DB])
        .args(args)
        .output()
        .expect("redis-cli on PATH");
    assert!(out.status.success(), "redis-cli {args:?} failed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// used_cpu_user + used_cpu_sys of the Redis server, in seconds.
fn redis_cpu() -> f64 {
    redis_cli(&["INFO", "cpu"])
        .lines()
        .filter(|l| l.starts_with("used_cpu_user:") || l.starts_with("used_cpu_sys:"))
        .filter_map(|l| l.split(':').nth(1)?.trim().parse::<f64>().ok())
        .sum()
}

fn dbsize() -> u64 {
    redis_cli(&["DBSIZE"]).parse().unwrap_or(0)
}

/// Streams RESP commands into `redis-cli -n 8 --pipe`; returns (commands, seconds).
fn pipe(fill: impl FnOnce(&mut dyn Write) -> std::io::Result<u64>) -> (u64, f64) {
    let t = Instant::now();
    let mut child = Command::new("redis-cli")
        .args(["-n", DB, "--pipe"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("redis-cli on PATH");
    let stdin = child.stdin.take().unwrap();
    let mut w = BufWriter::with_capacity(1 << 20, stdin);
    let n = fill(&mut w).expect("writing to redis-cli --pipe");
    w.flush().unwrap();
    drop(w);
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("errors: 0"),
        "redis-cli --pipe: {text}"
    );
    (n, t.elapsed().as_secs_f64())
}

/// FLUSHDB on DB 8, then every key the shipped rules can touch for `products` products.
fn prefill(products: u64) -> (u64, f64) {
    redis_cli(&["FLUSHDB"]);
    pipe(|w| {
        let mut w = BufWriter::new(w);
        let mut n = 0u64;
        for p in 1..=products {
            let ps = p.to_string();
            for k in ["price", "product", "inventory", "review:product"] {
                resp(&mut w, &["SET", &format!("{k}:{ps}"), VALUE])?;
            }
            resp(
                &mut w,
                &["SET", &format!("reco:product:{ps}"), VALUE, "EX", "3600"],
            )?;
            let [a, b] = categories_of(p);
            resp(
                &mut w,
                &[
                    "SADD",
                    &format!("product:{ps}:categories"),
                    &format!("c{a}"),
                    &format!("c{b}"),
                ],
            )?;
            let cart = format!("cart:preview:{ps}");
            let cmp = format!("compare:{ps}");
            resp(&mut w, &["SET", &cart, VALUE])?;
            resp(&mut w, &["SET", &cmp, VALUE])?;
            resp(&mut w, &["SADD", &format!("tag:product:{ps}"), &cart, &cmp])?;
            for r in 0..REVIEWS_PER_PRODUCT {
                resp(&mut w, &["SET", &format!("review:r-{ps}-{r}"), VALUE])?;
            }
            n += 8 + REVIEWS_PER_PRODUCT;
        }
        for c in 0..CATEGORIES {
            let tag = format!("tag:category:c{c}");
            for page in 1..=PAGES_PER_CATEGORY {
                let key = format!("category:c{c}:page:{page}");
                resp(&mut w, &["SET", &key, VALUE])?;
                resp(&mut w, &["SADD", &tag, &key])?;
                n += 2;
            }
        }
        for s in SECTIONS {
            resp(&mut w, &["SET", &format!("promo:{s}"), VALUE])?;
            resp(
                &mut w,
                &["SET", &format!("reco:section:{s}"), VALUE, "EX", "3600"],
            )?;
            for k in 1..=3 {
                let key = format!("promo-block:{s}:{k}");
                resp(&mut w, &["SET", &key, VALUE])?;
                resp(&mut w, &["SADD", &format!("tag:promo-section:{s}"), &key])?;
                n += 2;
            }
            n += 2;
        }
        for pr in 0..PROMOTIONS {
            let key = format!("promo:promo-{pr}:banner");
            resp(&mut w, &["SET", &key, VALUE])?;
            resp(&mut w, &["SADD", &format!("tag:promo:promo-{pr}"), &key])?;
            n += 2;
        }
        w.flush()?;
        Ok(n)
    })
}

struct Run {
    label: String,
    wall: f64,
    events: u64,
    keys_removed: Option<u64>,
    dbsize_delta: i64,
    maxrss_kib: i64,
    /// CPU seconds of the child (user + system).
    cpu: f64,
    /// CPU seconds Redis spent during the run (INFO cpu).
    redis_cpu: f64,
    exit: i32,
    summary: String,
}

fn field(summary: &str, name: &str) -> Option<u64> {
    summary.lines().find_map(|l| {
        let l = l.trim_start_matches("[dry run] ").trim();
        l.strip_prefix(name)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    })
}

fn run_replay(
    bin: &Path,
    config: &Path,
    rules: &Path,
    events: &Path,
    dry_run: bool,
    label: &str,
    tmp: &Path,
) -> Run {
    let before = dbsize();
    let redis_before = redis_cpu();
    let out_path = tmp.join(format!("{label}.stdout"));
    let err_path = tmp.join(format!("{label}.stderr"));
    let mut cmd = Command::new(bin);
    cmd.arg("replay")
        .arg("-c")
        .arg(config)
        .arg("--rules")
        .arg(rules);
    if dry_run {
        cmd.arg("--dry-run");
    }
    cmd.arg(events)
        .env_remove("RUST_LOG")
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
    let redis_cpu = redis_cpu() - redis_before;
    let after = dbsize();
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let cpu = tv(usage.ru_utime) + tv(usage.ru_stime);
    let summary = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    if exit != 0 {
        eprintln!(
            "!! {label}: exit {exit}\n{}",
            stderr.lines().take(20).collect::<Vec<_>>().join("\n")
        );
    }
    Run {
        label: label.to_string(),
        wall,
        events: field(&summary, "events:").unwrap_or(0),
        keys_removed: field(&summary, "keys removed:"),
        dbsize_delta: before as i64 - after as i64,
        maxrss_kib: usage.ru_maxrss,
        cpu,
        redis_cpu,
        exit,
        summary,
    }
}

/// `redis-benchmark -P 64 -n 2000000 -r 1000000 -q --dbnum 8 <CMD> key:__rand_int__`, after
/// prefilling key:000000000000 .. key:000000999999. Returns requests/s, and the keys it really
/// removed per second: 2,000,000 random picks among 1,000,000 keys find most keys already gone, so
/// only about 86% of the keyspace is removed, by 43% of the requests.
fn redis_benchmark(cmd: &str) -> (f64, f64) {
    redis_cli(&["FLUSHDB"]);
    pipe(|w| {
        let mut w = BufWriter::new(w);
        for i in 0..1_000_000u64 {
            resp(&mut w, &["SET", &format!("key:{i:012}"), VALUE])?;
        }
        w.flush()?;
        Ok(1_000_000)
    });
    let args = [
        "--dbnum",
        DB,
        "-P",
        "64",
        "-n",
        "2000000",
        "-r",
        "1000000",
        "-q",
        cmd,
        "key:__rand_int__",
    ];
    println!("$ redis-benchmark {}", args.join(" "));
    let out = Command::new("redis-benchmark")
        .args(args)
        .output()
        .expect("redis-benchmark on PATH");
    // With -q, progress lines end in \r; the final one reads "UNLINK key:__rand_int__: 512345.67
    // requests per second, p50=...".
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
    let line = text
        .lines()
        .rfind(|l| l.contains("requests per second"))
        .unwrap_or_else(|| panic!("no rate in redis-benchmark output: {text}"))
        .to_string();
    println!("  {}", line.trim());
    let left: f64 = redis_cli(&["DBSIZE"]).parse().unwrap_or(0.0);
    let words: Vec<&str> = line.split_whitespace().collect();
    let rate = words
        .iter()
        .position(|w| *w == "requests")
        .and_then(|i| i.checked_sub(1))
        .and_then(|i| words[i].parse().ok())
        .unwrap_or(0.0);
    redis_cli(&["FLUSHDB"]);
    let removed_per_s = (1_000_000.0 - left) / (2_000_000.0 / rate);
    println!(
        "  keys removed: {:.0} of 1,000,000, i.e. {removed_per_s:.0} removed/s",
        1_000_000.0 - left
    );
    (rate, removed_per_s)
}

fn main() {
    let mut n_events: u64 = 1_000_000;
    let mut products: u64 = 300_000;
    let mut skip_build = false;
    let mut generate_only: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--events" => {
                n_events = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--events N")
            }
            "--products" => {
                products = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--products N")
            }
            "--skip-build" => skip_build = true,
            // Only write the events (for profiling a replay by hand), then exit.
            "--generate-only" => generate_only = args.next().map(PathBuf::from),
            _ => {} // `cargo bench` passes --bench
        }
    }
    if let Some(path) = generate_only {
        let counts = generate_events(&path, n_events, products).unwrap();
        println!("wrote {n_events} events to {}: {counts:?}", path.display());
        return;
    }
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

    let tmp = tempfile::Builder::new()
        .prefix("invalidator-bench-")
        .tempdir()
        .unwrap();
    let events = tmp.path().join("events.jsonl");
    let t = Instant::now();
    let counts = generate_events(&events, n_events, products).unwrap();
    let size = std::fs::metadata(&events).unwrap().len();
    println!(
        "generated {n_events} events ({:.1} MiB) in {:.2}s: price {} / inventory {} / product {} / promotion {} / review {}; {products} products",
        size as f64 / 1048576.0,
        t.elapsed().as_secs_f64(),
        counts[0],
        counts[1],
        counts[2],
        counts[3],
        counts[4]
    );
    let config = tmp.path().join("invalidator.toml");
    std::fs::write(
        &config,
        format!(
            "[redis]\nurl = \"{REDIS_URL}\"\n\n[tags]\nmode = \"set\"\nprefix = \"tag:\"\n\n[cdn.catalog-cdn]\nkind = \"log\"\n"
        ),
    )
    .unwrap();

    let plain = root.join("bench").join("rules-plain");
    let shipped = root.join("rules");
    let mut runs = Vec::new();
    for (label, rules, dry) in [
        ("plain", &plain, false),
        ("shipped", &shipped, false),
        ("plain-dry-run", &plain, true),
        ("shipped-dry-run", &shipped, true),
    ] {
        let (cmds, secs) = prefill(products);
        let keys = dbsize();
        println!("[{label}] prefilled DB {DB}: {cmds} commands, {keys} keys in {secs:.2}s");
        println!(
            "$ {} replay -c {} --rules {}{} {}",
            bin.display(),
            config.display(),
            rules.display(),
            if dry { " --dry-run" } else { "" },
            events.display()
        );
        let run = run_replay(&bin, &config, rules, &events, dry, label, tmp.path());
        for l in run.summary.lines() {
            println!("    {l}");
        }
        println!(
            "  -> wall {:.2}s, child CPU {:.2}s, Redis CPU {:.2}s, peak RSS {:.1} MiB, DBSIZE delta {}, exit {}",
            run.wall,
            run.cpu,
            run.redis_cpu,
            run.maxrss_kib as f64 / 1024.0,
            run.dbsize_delta,
            run.exit
        );
        runs.push(run);
    }
    redis_cli(&["FLUSHDB"]);

    println!("\nphysical limit (redis-benchmark, DB {DB}, 1,000,000 keys prefilled):");
    let (unlink, unlink_removed) = redis_benchmark("UNLINK");
    let (del, _) = redis_benchmark("DEL");

    println!();
    println!(
        "{:<16} {:>8} {:>9} {:>11} {:>12} {:>11} {:>13} {:>11} {:>5}",
        "run",
        "events",
        "wall s",
        "events/s",
        "keys removed",
        "keys/s",
        "÷ UNLINK rps",
        "peak RSS",
        "exit"
    );
    let mut cpu_lines = Vec::new();
    for r in &runs {
        let eps = r.events as f64 / r.wall;
        let (kr, kps, ratio) = match r.keys_removed {
            Some(k) => (
                k.to_string(),
                format!("{:.0}", k as f64 / r.wall),
                format!("{:.3}", k as f64 / r.wall / unlink),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        println!(
            "{:<16} {:>8} {:>9.2} {:>11.0} {:>12} {:>11} {:>13} {:>7.1} MiB {:>5}",
            r.label,
            r.events,
            r.wall,
            eps,
            kr,
            kps,
            ratio,
            r.maxrss_kib as f64 / 1024.0,
            r.exit
        );
        cpu_lines.push(format!(
            "{:<16} child CPU {:>6.2}s ({:.0}% of one core, {:.1} µs/event), Redis CPU {:>6.2}s, DBSIZE delta {}",
            r.label,
            r.cpu,
            100.0 * r.cpu / r.wall,
            1e6 * r.cpu / r.events.max(1) as f64,
            r.redis_cpu,
            r.dbsize_delta
        ));
    }
    for l in &cpu_lines {
        println!("{l}");
    }
    println!(
        "redis-benchmark UNLINK: {unlink:.0} requests/s ({unlink_removed:.0} keys really removed/s); \
         DEL: {del:.0} requests/s"
    );
    println!();
    for r in runs.iter().filter(|r| r.keys_removed.is_some()) {
        let kps = r.keys_removed.unwrap() as f64 / r.wall;
        println!(
            "target [{}] keys/s >= 0.5 x UNLINK requests/s ({:.0}): {:.0} -> {}",
            r.label,
            0.5 * unlink,
            kps,
            if kps >= 0.5 * unlink { "MET" } else { "MISSED" }
        );
        println!(
            "  like for like, keys removed/s >= 0.5 x redis-benchmark's keys removed/s ({:.0}): {:.2}x -> {}",
            0.5 * unlink_removed,
            kps / unlink_removed,
            if kps >= 0.5 * unlink_removed {
                "MET"
            } else {
                "MISSED"
            }
        );
    }
    for r in &runs {
        println!(
            "target [{}] peak RSS < 64 MiB: {:.1} MiB -> {}",
            r.label,
            r.maxrss_kib as f64 / 1024.0,
            if r.maxrss_kib < 64 * 1024 {
                "MET"
            } else {
                "MISSED"
            }
        );
    }
}
