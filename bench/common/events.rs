//! The input of the end-to-end benchmarks: the events and the keyspace the shipped rules touch.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
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
        let e = Event {
            i,
            time: Time(i),
            p,
        };
        let kind = match roll {
            0..35 => price(&mut w, &mut rng, &e)?,
            35..65 => inventory(&mut w, &mut rng, &e)?,
            65..80 => product(&mut w, &e)?,
            80..85 => promotion(&mut w, &mut rng, &e, products)?,
            _ => review(&mut w, &mut rng, &e)?,
        };
        counts[kind] += 1;
    }
    w.flush()?;
    Ok(counts)
}

/// What every event has: its number, its time and its product.
struct Event {
    i: u64,
    time: Time,
    p: u64,
}

/// The time of event `i`: 2026-11-22T08:MM:SSZ, a second apart, minutes wrapping each hour.
struct Time(u64);

impl std::fmt::Display for Time {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = self.0;
        write!(f, "2026-11-22T08:{:02}:{:02}Z", (i / 60) % 60, i % 60)
    }
}

/// A `price.updated` (kind 0).
fn price(w: &mut impl Write, rng: &mut Lcg, e: &Event) -> std::io::Result<usize> {
    let Event { i, time, p } = e;
    let [a, b] = categories_of(*p);
    let old = 1000 + rng.below(50_000);
    // 5% of repricings re-send the same price (the rule's `when` skips them).
    let new = if rng.chance(5) {
        old
    } else {
        old - old / (2 + rng.below(8))
    };
    writeln!(
        w,
        r#"{{"type": "price.updated", "id": "bench-{i}", "time": "{time}", "source": "pricing", "data": {{"product_id": {p}, "sku": "SKU-{p}-42", "currency": "EUR", "old_price": {}.{:02}, "new_price": {}.{:02}, "category_ids": ["c{a}", "c{b}"]}}}}"#,
        old / 100,
        old % 100,
        new / 100,
        new % 100
    )?;
    Ok(0)
}

/// An `inventory.changed` (kind 1).
fn inventory(w: &mut impl Write, rng: &mut Lcg, e: &Event) -> std::io::Result<usize> {
    let Event { i, time, p } = e;
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
        r#"{{"event_type": "inventory.changed", "event_id": "bench-{i}", "occurred_at": "{time}", "source": "warehouse", "data": {{"product_id": {p}, "warehouse": "ams-{}", "previous_quantity": {prev}, "quantity": {qty}{stock}}}}}"#,
        1 + rng.below(3)
    )?;
    Ok(1)
}

/// A `product.updated` (kind 2).
fn product(w: &mut impl Write, e: &Event) -> std::io::Result<usize> {
    let Event { i, time, p } = e;
    writeln!(
        w,
        r#"{{"type": "product.updated", "id": "bench-{i}", "time": "{time}", "source": "catalog", "data": {{"product_id": {p}, "fields": ["title", "images"]}}}}"#
    )?;
    Ok(2)
}

/// A `promotion.changed` (kind 3), a CloudEvent; half of them name products.
fn promotion(
    w: &mut impl Write,
    rng: &mut Lcg,
    e: &Event,
    products: u64,
) -> std::io::Result<usize> {
    let Event { i, time, .. } = e;
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
        r#"{{"specversion": "1.0", "type": "promotion.changed", "id": "bench-{i}", "source": "/marketing/promotions", "time": "{time}", "datacontenttype": "application/json", "data": {{"promotion_id": "promo-{promo}", "sections": [{}]{products_field}}}}}"#,
        sections.join(", ")
    )?;
    Ok(3)
}

/// A `review.updated` (kind 4): published, pending or removed.
fn review(w: &mut impl Write, rng: &mut Lcg, e: &Event) -> std::io::Result<usize> {
    let Event { i, time, p } = e;
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
        r#"{{"type": "review.updated", "id": "bench-{i}", "time": "{time}", "source": "{source}", "data": {{"review_id": "r-{p}-{r}", "product_id": {p}, "rating": {}, "status": "{status}"}}}}"#,
        1 + rng.below(5)
    )?;
    Ok(4)
}

/// [`generate_events`] into `path`, and the line that says what it wrote.
pub fn generate(path: &Path, n: u64, products: u64) {
    let t = Instant::now();
    let counts = generate_events(path, n, products).unwrap();
    let size = std::fs::metadata(path).unwrap().len();
    println!(
        "generated {n} events ({:.1} MiB) in {:.2}s: price {} / inventory {} / product {} / promotion {} / review {}; {products} products",
        size as f64 / 1048576.0,
        t.elapsed().as_secs_f64(),
        counts[0],
        counts[1],
        counts[2],
        counts[3],
        counts[4]
    );
}

/// A new temp directory `<prefix>…` holding `events.jsonl`: [`generate`] of `w`'s events.
pub fn generate_in_tempdir(
    prefix: &str,
    w: &super::args::Workload,
) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    let events = tmp.path().join("events.jsonl");
    generate(&events, w.events, w.products);
    (tmp, events)
}

/// Where commands go, one at a time (`[command, args...]`).
pub type Sink<'a> = dyn FnMut(&[&str]) -> std::io::Result<()> + 'a;

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
