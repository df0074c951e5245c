//! Per-event CPU cost of the pure core: `cargo bench --bench engine`.
//!
//! - compiling the shipped rules (`RuleSet::from_sources` over rules/*.yaml, and `RuleSet::load`);
//! - `decode_event` on a price event (JSON parse + envelope);
//! - `plan_event` on a price event (CEL condition, templates, cascades), shipped and plain rules;
//! - decode + plan together, for every one of the five event kinds.

use std::collections::HashMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};

use criterion::{Criterion, criterion_group, criterion_main};
use invalidator::event::decode_event;
use invalidator::rules::{CompileOptions, Limits, NoMembers, RuleSet};

const PRICE: &str = r#"{"type": "price.updated", "id": "evt-20260302-0001", "time": "2026-03-02T08:00:00Z", "source": "pricing", "data": {"product_id": 1001, "sku": "RUN-1001-42", "currency": "EUR", "old_price": 129.9, "new_price": 99.9, "category_ids": ["shoes", "running"]}}"#;
const INVENTORY: &str = r#"{"event_type": "inventory.changed", "event_id": "evt-20260302-0006", "occurred_at": "2026-03-02T08:03:00Z", "source": "warehouse", "data": {"product_id": 1003, "warehouse": "ams-1", "previous_quantity": 1, "quantity": 0, "was_in_stock": true, "in_stock": false}}"#;
const PRODUCT: &str = r#"{"type": "product.updated", "id": "evt-20260302-0003", "time": "2026-03-02T08:00:12Z", "source": "catalog", "data": {"product_id": 1002, "fields": ["title", "images"]}}"#;
const PROMOTION: &str = r#"{"specversion": "1.0", "type": "promotion.changed", "id": "6b1f0c2e-8d3a-4b7e-9a51-0c2d3e4f5a61", "source": "/marketing/promotions", "time": "2026-03-02T08:01:00Z", "datacontenttype": "application/json", "data": {"promotion_id": "spring-sale", "sections": ["home", "deals"], "product_ids": [1001, 1002]}}"#;
const REVIEW: &str = r#"{"type": "review.updated", "id": "evt-20260302-0004", "time": "2026-03-02T08:01:30Z", "source": "reviews", "data": {"review_id": "r-50012", "product_id": 1001, "rating": 4, "status": "published"}}"#;

fn options() -> CompileOptions {
    CompileOptions {
        limits: Limits::default(),
        cdn_targets: None,
    }
}

fn sources(dir: &Path) -> Vec<(String, String)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p.display().to_string(), text)
        })
        .collect()
}

fn fallback() -> String {
    "fallback".to_string()
}

fn benches(c: &mut Criterion) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let shipped_dir = root.join("rules");
    let plain_dir = root.join("bench").join("rules-plain");
    let shipped_src = sources(&shipped_dir);
    let shipped = RuleSet::from_sources(&shipped_src, &options()).unwrap();
    let plain = RuleSet::from_sources(&sources(&plain_dir), &options()).unwrap();

    c.bench_function("compile/from_sources shipped rules", |b| {
        b.iter(|| RuleSet::from_sources(black_box(&shipped_src), &options()).unwrap())
    });
    c.bench_function("compile/load rules/", |b| {
        b.iter(|| RuleSet::load(black_box(&shipped_dir), &options()).unwrap())
    });

    c.bench_function("decode_event/price", |b| {
        b.iter(|| decode_event(black_box(PRICE.as_bytes()), 1 << 20, &fallback).unwrap())
    });

    let price = decode_event(PRICE.as_bytes(), 1 << 20, &fallback).unwrap();
    c.bench_function("plan_event/price shipped (no members)", |b| {
        b.iter(|| shipped.plan_event(black_box(&price), &NoMembers).unwrap())
    });
    c.bench_function("plan_event/price plain", |b| {
        b.iter(|| plain.plan_event(black_box(&price), &NoMembers).unwrap())
    });

    let product = decode_event(PRODUCT.as_bytes(), 1 << 20, &fallback).unwrap();
    let mut members: HashMap<String, Vec<String>> = HashMap::new();
    members.insert(
        "product:1002:categories".into(),
        vec!["shoes".into(), "trail".into()],
    );
    c.bench_function("plan_event/product shipped (with members)", |b| {
        b.iter(|| shipped.plan_event(black_box(&product), &members).unwrap())
    });

    for (name, json) in [
        ("price", PRICE),
        ("inventory", INVENTORY),
        ("product", PRODUCT),
        ("promotion", PROMOTION),
        ("review", REVIEW),
    ] {
        c.bench_function(&format!("decode+plan/{name} shipped"), |b| {
            b.iter(|| {
                let e = decode_event(black_box(json.as_bytes()), 1 << 20, &fallback).unwrap();
                shipped.plan_event(&e, &NoMembers).unwrap()
            })
        });
    }
}

criterion_group! {
    name = engine;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = benches
}
criterion_main!(engine);
