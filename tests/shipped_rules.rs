//! The shipped rules (`rules/`), the sample events (`samples/`) and the compile errors a rule writer
//! meets, checked end to end through the public API. Pure: no Redis, no network.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use invalidator::event::{Event, decode_event};
use invalidator::plan::{Action, DurationKey, EventPlan, Plan, RuleHit};
use invalidator::rules::raw::FLOW_TEMPLATE_HINT;
use invalidator::rules::{CompileOptions, Limits, NoMembers, RuleError, RuleSet};
use serde_json::json;

const MAX_EVENT_BYTES: usize = 1 << 20;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn options() -> CompileOptions {
    CompileOptions {
        cdn_targets: Some(vec!["catalog-cdn".into()]),
        ..CompileOptions::default()
    }
}

fn shipped() -> RuleSet {
    RuleSet::load(&root().join("rules"), &options())
        .unwrap_or_else(|e| panic!("the shipped rules must compile:\n{e}"))
}

fn decode(line: &str) -> Event {
    decode_event(line.as_bytes(), MAX_EVENT_BYTES, &|| "fallback".to_string())
        .unwrap_or_else(|e| panic!("{e}: {line}"))
}

fn lines(file: &str) -> Vec<String> {
    std::fs::read_to_string(root().join("samples").join(file))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The sample event with this id (the first one when it is repeated).
fn sample(id: &str) -> Event {
    lines("events.jsonl")
        .iter()
        .map(|l| decode(l))
        .find(|e| &*e.id == id)
        .unwrap_or_else(|| panic!("no sample event {id}"))
}

fn event(kind: &str, data: serde_json::Value) -> Event {
    decode(&json!({"type": kind, "id": "test-1", "source": "tests", "data": data}).to_string())
}

fn delete(key: &str) -> Action {
    Action::Delete { key: key.into() }
}

fn tag(tag: &str) -> Action {
    Action::Tag { tag: tag.into() }
}

fn purge(path: &str) -> Action {
    Action::Purge {
        target: "catalog-cdn".into(),
        path: path.into(),
    }
}

fn expire(key: &str, ttl: Duration, jitter: f64) -> Action {
    Action::Expire {
        key: key.into(),
        ttl,
        jitter,
    }
}

/// The plan of `ev` under `rules`, the members of every set unknown.
fn plan_of(rules: &RuleSet, ev: &Event) -> EventPlan {
    rules
        .plan_event(ev, &NoMembers)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The plan of the sample event `id` under `rules`, the members of every set unknown.
fn plan_sample(rules: &RuleSet, id: &str) -> EventPlan {
    plan_of(rules, &sample(id))
}

/// `(rule, event type, depth, condition)` of every hit, in plan order.
fn summary(plan: &EventPlan) -> Vec<(String, String, u32, bool)> {
    plan.hits
        .iter()
        .map(|h| {
            (
                h.rule.to_string(),
                h.event_type.to_string(),
                h.depth,
                h.condition,
            )
        })
        .collect()
}

fn hit<'a>(plan: &'a EventPlan, rule: &str) -> &'a RuleHit {
    plan.hits
        .iter()
        .find(|h| h.rule == rule)
        .unwrap_or_else(|| panic!("no hit of `{rule}` in {:#?}", plan.hits))
}

fn coalesced(plan: &EventPlan) -> Plan {
    let mut p = Plan::default();
    plan.add_to(&mut p, 0);
    p
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn row(rule: &str, kind: &str, depth: u32, condition: bool) -> (String, String, u32, bool) {
    (rule.into(), kind.into(), depth, condition)
}

// ---------------------------------------------------------------------------------------------
// The shipped rules

#[test]
fn shipped_rules_compile_with_the_catalog_cdn() {
    let rules = shipped();
    let mut files: Vec<String> = rules
        .files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "inventory.yaml",
            "price.yaml",
            "product.yaml",
            "promotion.yaml",
            "review.yaml",
            "ttl.yaml"
        ]
    );
    let names: Vec<&str> = rules.rules.iter().map(|r| r.name).collect();
    assert_eq!(
        names,
        [
            "inventory-changed",
            "inventory-availability",
            "price-changed",
            "product-changed",
            "product-page",
            "category-pages",
            "promotion-sections",
            "promotion-products",
            "review-changed",
            "review-removed-by-moderation",
        ]
    );
    assert_eq!(rules.purge_targets(), ["catalog-cdn"]);
    let price = rules
        .rules
        .iter()
        .find(|r| r.name == "price-changed")
        .unwrap();
    assert!(
        price.at.ends_with("price.yaml:36:5"),
        "rule location: {}",
        price.at
    );
    assert_eq!(price.redelete_after, Some(Duration::from_millis(500)));

    let policies: Vec<(&str, Duration)> = rules
        .ttl_policies
        .iter()
        .map(|p| (p.pattern.as_str(), p.max_ttl))
        .collect();
    assert_eq!(
        policies,
        [
            ("price:*", Duration::from_secs(30)),
            ("inventory:*", Duration::from_secs(30)),
            ("product:*", Duration::from_secs(3600)),
            ("category:*", Duration::from_secs(15 * 60)),
            ("promo:*", Duration::from_secs(10 * 60)),
            ("review:*", Duration::from_secs(6 * 3600)),
            ("reco:*", Duration::from_secs(10 * 60)),
        ]
    );
    let reco = rules.ttl_policies.last().unwrap();
    assert!((reco.jitter - 0.2).abs() < 1e-9);
}

#[test]
fn shipped_rules_refuse_an_unconfigured_cdn_target_at_each_purge() {
    let opts = CompileOptions {
        cdn_targets: Some(vec!["edge".into()]),
        ..CompileOptions::default()
    };
    let errors = RuleSet::load(&root().join("rules"), &opts).unwrap_err().0;
    // One per `purge:` block: price 1, inventory 1, product 3, promotion 1.
    assert_eq!(errors.len(), 6, "{errors:#?}");
    for e in &errors {
        assert!(e.file.ends_with(".yaml"), "{e}");
        assert!(e.line > 1 && e.column > 1, "{e}");
        assert!(
            e.message
                .contains("purge target `catalog-cdn` is not configured as [cdn.catalog-cdn]"),
            "{e}"
        );
    }
    // Without a config (`rules check DIR`), targets are not checked.
    RuleSet::load(&root().join("rules"), &CompileOptions::default()).unwrap();
}

#[test]
fn the_commented_alternatives_in_the_shipped_rules_are_valid() {
    // price.yaml and product.yaml show a pattern delete in comments and recommend tags instead;
    // price.yaml shows a quoted flow list. Both must be accepted as written there.
    let yaml = r#"
rules:
  - name: listing-pages-by-pattern
    on: price.updated
    delete: ["price:{product_id}", "product:{product_id}"]
  - name: listing-pages-by-pattern-2
    on: price.updated
    delete:
      - category:{category_ids[]}:page:*
"#;
    let rules = RuleSet::from_sources(&[("alt.yaml".into(), yaml.into())], &options()).unwrap();
    let plan = rules
        .plan_event(
            &event(
                "price.updated",
                json!({"product_id": 1001, "category_ids": ["shoes", "running"]}),
            ),
            &NoMembers,
        )
        .unwrap();
    assert_eq!(
        plan.hits[0].actions,
        [delete("price:1001"), delete("product:1001")]
    );
    assert_eq!(
        plan.hits[1].actions,
        [
            Action::DeletePattern {
                pattern: "category:shoes:page:*".into()
            },
            Action::DeletePattern {
                pattern: "category:running:page:*".into()
            },
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// The samples

#[test]
fn every_sample_decodes_and_plans_without_error() {
    let rules = shipped();
    let lines = lines("events.jsonl");
    assert!((35..=50).contains(&lines.len()), "{} samples", lines.len());
    let mut ids = HashMap::<String, usize>::new();
    let mut kinds = HashSet::new();
    let (mut cloudevents, mut aliases, mut unmatched, mut condition_false) = (0, 0, 0, 0);
    // Every product's categories, as the engine would read them from Redis.
    let mut members: HashMap<String, Vec<String>> = HashMap::new();
    for line in &lines {
        let ev = decode(line);
        if let Some(cats) = ev.data.get("category_ids").and_then(|c| c.as_array()) {
            let set = format!("product:{}:categories", ev.data["product_id"]).replace('"', "");
            members.insert(
                set,
                cats.iter()
                    .map(|c| c.as_str().unwrap().to_owned())
                    .collect(),
            );
        }
    }
    for (n, line) in lines.iter().enumerate() {
        let raw: serde_json::Value = serde_json::from_str(line).unwrap();
        cloudevents += usize::from(raw.get("specversion").is_some());
        aliases += usize::from(raw.get("event_type").is_some());
        let ev = decode(line);
        assert!(ev.id_given, "line {}: every sample carries an id", n + 1);
        let year = ev.time.map(|t| t.year());
        assert_eq!(year, Some(2026), "line {}: a fixed 2026 time", n + 1);
        *ids.entry(ev.id.to_string()).or_default() += 1;
        kinds.insert(ev.kind.to_string());
        // The newcomer demo must exit 0: nothing in the samples may be dead-lettered, with or
        // without the set members.
        let plan = rules
            .plan_event(&ev, &NoMembers)
            .unwrap_or_else(|e| panic!("line {}: {e} ({})", n + 1, e.reason()));
        rules
            .plan_event(&ev, &members)
            .unwrap_or_else(|e| panic!("line {}: {e} ({})", n + 1, e.reason()));
        unmatched += usize::from(plan.hits.is_empty());
        condition_false += usize::from(!plan.hits.is_empty() && !plan.matched());
    }
    for kind in [
        "price.updated",
        "inventory.changed",
        "product.updated",
        "promotion.changed",
        "review.updated",
    ] {
        assert!(kinds.contains(kind), "no sample of {kind}");
    }
    assert!(cloudevents >= 5, "{cloudevents} CloudEvents samples");
    assert!(aliases >= 3, "{aliases} samples with aliases");
    let duplicates = ids.values().filter(|&&n| n > 1).count();
    assert!(duplicates >= 2, "{duplicates} repeated ids");
    assert!(unmatched >= 1, "an unknown type is in the samples");
    assert!(
        condition_false >= 1,
        "a skipped condition is in the samples"
    );
}

#[test]
fn price_event_deletes_tags_purges_redeletes_and_cascades() {
    let rules = shipped();
    let ev = sample("evt-20260302-0001");
    assert_eq!(ev.data["category_ids"], json!(["shoes", "running"]));
    let plan = plan_of(&rules, &ev);
    assert_eq!(
        summary(&plan),
        [
            row("price-changed", "price.updated", 0, true),
            row("product-page", "product.page_changed", 1, true),
            row("category-pages", "category.changed", 1, true),
            row("category-pages", "category.changed", 1, true),
        ]
    );
    let price = &plan.hits[0];
    assert_eq!(
        price.actions,
        [
            delete("price:1001"),
            delete("product:1001"),
            tag("product:1001"),
            expire("reco:product:1001", Duration::from_secs(30), 0.2),
            purge("/api/products/1001"),
        ]
    );
    assert_eq!(price.redelete_after, Some(Duration::from_millis(500)));
    assert_eq!(
        plan.hits[1].actions,
        [delete("product:1001"), purge("/products/1001/*")]
    );
    assert_eq!(
        plan.hits[2].actions,
        [
            tag("category:shoes"),
            purge("/categories/shoes/*"),
            purge("/api/categories/shoes/*"),
        ]
    );
    assert_eq!(
        plan.hits[3].actions,
        [
            tag("category:running"),
            purge("/categories/running/*"),
            purge("/api/categories/running/*"),
        ]
    );
    assert!(plan.needs.is_empty() && plan.notes.is_empty());

    // Coalesced: product:1001 is deleted once; the redelete repeats the price rule's keys and tag.
    let p = coalesced(&plan);
    assert_eq!(
        p.deletes.iter().collect::<Vec<_>>(),
        [b"price:1001".as_slice(), b"product:1001"]
    );
    assert_eq!(
        p.tags.keys().collect::<Vec<_>>(),
        ["product:1001", "category:shoes", "category:running"]
    );
    assert_eq!(
        p.purges["catalog-cdn"].keys().collect::<Vec<_>>(),
        [
            "/api/products/1001",
            "/products/1001/*",
            "/categories/shoes/*",
            "/api/categories/shoes/*",
            "/categories/running/*",
            "/api/categories/running/*",
        ]
    );
    let redelete = &p.redeletes[&DurationKey(Duration::from_millis(500))];
    assert_eq!(
        redelete.keys.keys().collect::<Vec<_>>(),
        ["price:1001", "product:1001"]
    );
    assert_eq!(redelete.tags.keys().collect::<Vec<_>>(), ["product:1001"]);
    assert!(
        p.patterns.is_empty(),
        "the shipped rules use tags, not SCAN"
    );
}

#[test]
fn an_unchanged_price_is_skipped_by_the_condition() {
    let ev = sample("evt-20260302-0005");
    assert_eq!(ev.data["old_price"], ev.data["new_price"]);
    let plan = plan_of(&shipped(), &ev);
    assert_eq!(
        summary(&plan),
        [row("price-changed", "price.updated", 0, false)]
    );
    assert!(plan.hits[0].actions.is_empty());
    assert_eq!(plan.hits[0].redelete_after, None);
    assert!(!plan.matched());
    assert!(coalesced(&plan).is_empty());
}

#[test]
fn unknown_types_match_no_rule() {
    let rules = shipped();
    for id in ["evt-20260302-0007", "evt-20260302-0020"] {
        let ev = sample(id);
        assert!(
            ["catalog.reindexed", "cart.abandoned"].contains(&&*ev.kind),
            "{}",
            ev.kind
        );
        let plan = plan_of(&rules, &ev);
        assert!(plan.hits.is_empty(), "{:#?}", plan.hits);
        assert!(!plan.matched());
    }
}

#[test]
fn a_stock_out_purges_and_cascades_a_stock_movement_only_deletes() {
    let rules = shipped();
    // 1 → 0 in stock: availability flipped.
    let plan = plan_sample(&rules, "evt-20260302-0006");
    assert_eq!(
        summary(&plan),
        [
            row("inventory-changed", "inventory.changed", 0, true),
            row("inventory-availability", "inventory.changed", 0, true),
            row("product-page", "product.page_changed", 1, true),
        ]
    );
    assert_eq!(plan.hits[0].actions, [delete("inventory:1003")]);
    assert_eq!(
        plan.hits[1].actions,
        [
            expire("reco:product:1003", Duration::from_secs(10), 0.25),
            purge("/api/products/1003"),
        ]
    );
    assert_eq!(
        plan.hits[2].actions,
        [delete("product:1003"), purge("/products/1003/*")]
    );
    // A warehouse that sends only quantities: has() makes the condition false, not an error.
    let ev = sample("evt-20260302-0009");
    assert!(ev.data.get("in_stock").is_none());
    let plan = plan_of(&rules, &ev);
    assert_eq!(
        summary(&plan),
        [
            row("inventory-changed", "inventory.changed", 0, true),
            row("inventory-availability", "inventory.changed", 0, false),
        ]
    );
    assert_eq!(plan.hits[0].actions, [delete("inventory:1002")]);
}

#[test]
fn a_promotion_fans_out_over_sections_and_products() {
    let rules = shipped();
    let ev = sample("6b1f0c2e-8d3a-4b7e-9a51-0c2d3e4f5a61"); // CloudEvents
    assert_eq!(ev.source.as_deref(), Some("/marketing/promotions"));
    let plan = plan_of(&rules, &ev);
    assert_eq!(
        summary(&plan),
        [
            row("promotion-sections", "promotion.changed", 0, true),
            row("promotion-products", "promotion.changed", 0, true),
            row("product-page", "product.page_changed", 1, true),
            row("product-page", "product.page_changed", 1, true),
        ]
    );
    assert_eq!(
        plan.hits[0].actions,
        [
            delete("promo:home"),
            delete("promo:deals"),
            tag("promo:spring-sale"),
            tag("promo-section:home"),
            tag("promo-section:deals"),
            expire("reco:section:home", Duration::from_secs(60), 0.2),
            expire("reco:section:deals", Duration::from_secs(60), 0.2),
            purge("/api/promotions/spring-sale"),
            purge("/promotions/spring-sale/*"),
        ]
    );
    assert_eq!(plan.hits[1].actions, []);
    assert_eq!(plan.hits[2].actions[0], delete("product:1001"));
    assert_eq!(plan.hits[3].actions[0], delete("product:1002"));

    // promotion.ended (the prefix glob), no sections and no products: only the promotion itself.
    let plan = plan_sample(&rules, "3a7d9c1e-2f4b-4e6a-8c0d-1e2f3a4b5c6d");
    assert_eq!(
        summary(&plan),
        [
            row("promotion-sections", "promotion.ended", 0, true),
            row("promotion-products", "promotion.ended", 0, false),
        ]
    );
    assert_eq!(
        plan.hits[0].actions,
        [
            tag("promo:winter-clearance"),
            purge("/api/promotions/winter-clearance"),
            purge("/promotions/winter-clearance/*"),
        ]
    );
}

#[test]
fn reviews_pending_published_flat_and_moderated() {
    let rules = shipped();
    // Pending: nothing cached shows it.
    let plan = plan_sample(&rules, "evt-20260302-0010");
    assert_eq!(
        summary(&plan),
        [row("review-changed", "review.created", 0, false)]
    );
    // A flat native event (no `data`): the whole object is the payload; no status → shown.
    let plan = plan_sample(&rules, "evt-20260302-0012");
    assert_eq!(
        plan.hits[0].actions,
        [delete("review:r-49990"), delete("review:product:1003")]
    );
    assert_eq!(
        summary(&plan),
        [
            row("review-changed", "review.updated", 0, true),
            row("product-page", "product.page_changed", 1, true),
            row("review-removed-by-moderation", "review.updated", 0, false),
        ]
    );
    // Removed by moderation: `event.source` in the condition.
    let plan = plan_sample(&rules, "evt-20260302-0013");
    let moderation = hit(&plan, "review-removed-by-moderation");
    assert!(moderation.condition);
    assert_eq!(
        moderation.actions,
        [expire("reco:product:2001", Duration::from_secs(5), 0.1)]
    );
}

#[test]
fn for_each_member_of_emits_one_event_per_member_or_reports_needs() {
    let rules = shipped();
    let ev = sample("evt-20260302-0003"); // product.updated 1002
    assert_eq!(&*ev.kind, "product.updated");

    // Members not known yet: the set is reported in `needs`, the cascade emits nothing.
    let plan = plan_of(&rules, &ev);
    assert_eq!(plan.needs, ["product:1002:categories"]);
    assert_eq!(
        summary(&plan),
        [
            row("product-changed", "product.updated", 0, true),
            row("product-page", "product.page_changed", 1, true),
        ]
    );
    assert_eq!(
        plan.hits[0].actions,
        [
            delete("product:1002"),
            tag("product:1002"),
            purge("/api/products/1002"),
        ]
    );

    // Members given: one category.changed per member, `{item}` being the member.
    let members = HashMap::from([(
        "product:1002:categories".to_string(),
        s(&["shoes", "trail"]),
    )]);
    let plan = rules.plan_event(&ev, &members).unwrap();
    assert!(plan.needs.is_empty());
    assert_eq!(
        summary(&plan),
        [
            row("product-changed", "product.updated", 0, true),
            row("product-page", "product.page_changed", 1, true),
            row("category-pages", "category.changed", 1, true),
            row("category-pages", "category.changed", 1, true),
        ]
    );
    assert_eq!(plan.hits[2].actions[0], tag("category:shoes"));
    assert_eq!(plan.hits[3].actions[0], tag("category:trail"));
    assert_ne!(plan.hits[2].event_id, plan.hits[3].event_id);

    // An empty set emits nothing and needs nothing.
    let empty = HashMap::from([("product:1002:categories".to_string(), Vec::new())]);
    let plan = rules.plan_event(&ev, &empty).unwrap();
    assert!(plan.needs.is_empty());
    assert_eq!(plan.hits.len(), 2);

    // A member is a value like any other: an unsafe one dead-letters the event.
    let hostile = HashMap::from([("product:1002:categories".to_string(), s(&["shoes", "*"]))]);
    let err = rules.plan_event(&ev, &hostile).unwrap_err();
    assert_eq!(err.reason(), "unsafe_value", "{err}");

    // More members than max_fanout: fanout_exceeded.
    let many = HashMap::from([(
        "product:1002:categories".to_string(),
        (0..1001).map(|i| format!("c{i}")).collect(),
    )]);
    let err = rules.plan_event(&ev, &many).unwrap_err();
    assert_eq!(err.reason(), "fanout_exceeded", "{err}");
}

#[test]
fn bad_samples_fail_with_their_dead_letter_reasons() {
    let rules = shipped();
    let outcomes: Vec<String> = lines("bad-events.jsonl")
        .iter()
        .map(
            |line| match decode_event(line.as_bytes(), MAX_EVENT_BYTES, &|| "fallback".into()) {
                Err(e) => e.reason().to_owned(),
                Ok(ev) => match rules.plan_event(&ev, &NoMembers) {
                    Ok(_) => "ok".to_owned(),
                    Err(e) => e.reason().to_owned(),
                },
            },
        )
        .collect();
    assert_eq!(
        outcomes,
        [
            "ok",
            "invalid_json",
            "missing_type",
            "unsafe_value",    // "product_id": "*"
            "unsafe_value",    // "product_id": "../x"
            "fanout_exceeded", // 2000 categories
            "template_error",  // a review without product_id
            "ok",
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Cascade limits

#[test]
fn a_cascade_cycle_ends_with_a_note() {
    let yaml = r#"
rules:
  - name: a-to-b
    on: a.x
    delete: ["a:{id}"]
    cascade:
      - emit: b.x
        data: { id: "{id}" }
  - name: b-to-a
    on: b.x
    delete: ["b:{id}"]
    cascade:
      - emit: a.x
        data: { id: "{id}" }
"#;
    let rules = RuleSet::from_sources(&[("cycle.yaml".into(), yaml.into())], &options()).unwrap();
    let plan = plan_of(&rules, &event("a.x", json!({"id": 7})));
    assert_eq!(
        summary(&plan),
        [row("a-to-b", "a.x", 0, true), row("b-to-a", "b.x", 1, true)]
    );
    assert_eq!(plan.notes.len(), 1, "{:?}", plan.notes);
    assert!(
        plan.notes[0].contains("rule `b-to-a`") && plan.notes[0].contains("cycle"),
        "{}",
        plan.notes[0]
    );
    let p = coalesced(&plan);
    assert_eq!(p.deletes.iter().collect::<Vec<_>>(), [b"a:7", b"b:7"]);

    // Extra fields in the original make the first return differ; the loop still ends one step later.
    let plan = plan_of(&rules, &event("a.x", json!({"id": 7, "extra": true})));
    assert_eq!(plan.hits.len(), 3);
    assert_eq!(plan.notes.len(), 1);
}

#[test]
fn max_cascade_depth_truncates_with_a_note() {
    let yaml = r#"
rules:
  - name: step-0
    on: chain.0
    delete: ["k:0:{id}"]
    cascade: [{ emit: chain.1, data: { id: "{id}" } }]
  - name: step-1
    on: chain.1
    delete: ["k:1:{id}"]
    cascade: [{ emit: chain.2, data: { id: "{id}" } }]
  - name: step-2
    on: chain.2
    delete: ["k:2:{id}"]
    cascade: [{ emit: chain.3, data: { id: "{id}" } }]
  - name: step-3
    on: chain.3
    delete: ["k:3:{id}"]
"#;
    let limits = Limits {
        max_cascade_depth: 2,
        ..Limits::default()
    };
    let opts = CompileOptions {
        limits,
        ..options()
    };
    let rules = RuleSet::from_sources(&[("chain.yaml".into(), yaml.into())], &opts).unwrap();
    let plan = plan_of(&rules, &event("chain.0", json!({"id": "x"})));
    assert_eq!(
        summary(&plan),
        [
            row("step-0", "chain.0", 0, true),
            row("step-1", "chain.1", 1, true),
            row("step-2", "chain.2", 2, true),
        ]
    );
    assert_eq!(plan.notes.len(), 1, "{:?}", plan.notes);
    assert!(
        plan.notes[0].contains("`chain.3`") && plan.notes[0].contains("max_cascade_depth 2"),
        "{}",
        plan.notes[0]
    );
    // The default depth (4) follows the whole chain.
    let rules = RuleSet::from_sources(&[("chain.yaml".into(), yaml.into())], &options()).unwrap();
    let plan = plan_of(&rules, &event("chain.0", json!({"id": "x"})));
    assert_eq!(plan.hits.len(), 4);
    assert!(plan.notes.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Compile errors: `file:line:column: message`

/// Every compile error of one in-memory file `t.yaml`.
fn errors(yaml: &str) -> Vec<RuleError> {
    match RuleSet::from_sources(&[("t.yaml".into(), yaml.into())], &options()) {
        Ok(_) => panic!("expected a compile error in:\n{yaml}"),
        Err(e) => e.0,
    }
}

/// The only compile error of `yaml`.
fn error(yaml: &str) -> RuleError {
    let mut e = errors(yaml);
    assert_eq!(e.len(), 1, "{e:#?}");
    let e = e.remove(0);
    assert_eq!(e.file, "t.yaml");
    e
}

/// 1-based line and column (in characters) of the first `needle` in `yaml`, plus `shift` columns.
fn pos(yaml: &str, needle: &str, shift: u64) -> (u64, u64) {
    let at = yaml
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in yaml"));
    let before = &yaml[..at];
    let line = before.matches('\n').count() as u64 + 1;
    let col = before[before.rfind('\n').map_or(0, |i| i + 1)..]
        .chars()
        .count() as u64
        + 1;
    (line, col + shift)
}

fn at(e: &RuleError) -> (u64, u64) {
    (e.line, e.column)
}

#[test]
fn unknown_key_in_a_rule() {
    let yaml =
        "rules:\n  - name: r1\n    on: price.updated\n    delet:\n      - price:{product_id}\n";
    let e = error(yaml);
    assert_eq!(at(&e), (4, 5));
    assert_eq!(at(&e), pos(yaml, "delet:", 0));
    assert!(e.message.contains("unknown field `delet`"), "{e}");
    assert!(e.message.contains("delete"), "lists the known keys: {e}");
    assert!(
        e.to_string().starts_with("t.yaml:4:5: unknown field"),
        "{e}"
    );
}

#[test]
fn a_template_starting_with_a_brace_in_a_block_list() {
    let yaml = "rules:\n  - name: r1\n    on: price.updated\n    tags:\n      - {product_id}\n";
    let e = error(yaml);
    assert_eq!(at(&e), (5, 9));
    assert_eq!(e.message, FLOW_TEMPLATE_HINT);
    // The same inside a flow list, and as a flow-mapping value in cascade data.
    let yaml = "rules:\n  - name: r1\n    on: price.updated\n    tags: [\"product:{product_id}\", {sku}]\n";
    let e = error(yaml);
    assert_eq!(at(&e), pos(yaml, "{sku}", 0));
    assert_eq!(e.message, FLOW_TEMPLATE_HINT);
    let yaml = "rules:\n  - name: r1\n    on: price.updated\n    cascade:\n      - emit: a.b\n        data: { product_id: {product_id} }\n";
    let e = error(yaml);
    assert_eq!(at(&e), pos(yaml, "{product_id} }", 0));
    assert_eq!(e.message, FLOW_TEMPLATE_HINT);
}

#[test]
fn an_unquoted_template_in_a_flow_list_gives_the_quoting_hint() {
    let yaml = "rules:\n  - name: r1\n    on: price.updated\n    delete: [price:{product_id}]\n";
    let e = error(yaml);
    assert_eq!(e.line, 4, "{e}");
    assert!(e.message.contains(FLOW_TEMPLATE_HINT), "{e}");
}

#[test]
fn an_unquoted_template_in_a_flow_list_is_at_least_an_error_on_its_line() {
    let yaml = "rules:\n  - name: r1\n    on: price.updated\n    delete: [price:{product_id}]\n";
    let e = error(yaml);
    assert_eq!(e.line, 4, "{e}");
}

#[test]
fn a_condition_that_does_not_compile() {
    let yaml = "rules:\n  - name: r1\n    on: price.updated\n    when: data.new_price !=\n    delete:\n      - price:{product_id}\n";
    let e = error(yaml);
    assert_eq!(at(&e), (4, 11));
    assert!(
        e.message.starts_with("condition `data.new_price !=`:"),
        "{e}"
    );
}

#[test]
fn a_condition_with_an_unknown_variable() {
    let yaml = "rules:\n  - name: r1\n    on: price.updated\n    when: request.x == 1\n    delete:\n      - price:{product_id}\n";
    let e = error(yaml);
    assert_eq!(at(&e), pos(yaml, "request", 0));
    assert!(e.message.contains("unknown variable `request`"), "{e}");
}

#[test]
fn an_unquoted_condition_starting_with_a_bang_is_refused() {
    let yaml = "rules:\n  - name: r1\n    on: price.updated\n    when: !has(data.x)\n    delete:\n      - price:{product_id}\n";
    let e = error(yaml);
    assert_eq!(e.line, 4, "{e}");
    assert!(e.message.contains("must be quoted"), "{e}");
}

#[test]
fn a_quoted_condition_starting_with_a_bang_works() {
    let yaml = "rules:\n  - name: r1\n    on: price.updated\n    when: \"!has(data.x)\"\n    delete:\n      - price:{product_id}\n";
    let rules = RuleSet::from_sources(&[("t.yaml".into(), yaml.into())], &options()).unwrap();
    let plan = rules
        .plan_event(
            &event("price.updated", json!({"product_id": 1, "x": 1})),
            &NoMembers,
        )
        .unwrap();
    assert!(!plan.matched());
}

#[test]
fn a_pattern_delete_needs_a_three_character_prefix() {
    let yaml = "rules:\n  - name: r1\n    on: price.updated\n    delete:\n      - ab{x}*\n";
    let e = error(yaml);
    assert_eq!(at(&e), pos(yaml, "ab{x}*", 0));
    assert!(
        e.message
            .contains("literal prefix of at least 3 characters"),
        "{e}"
    );
    assert!(e.message.contains("consider tags"), "{e}");
    // Three characters are enough.
    RuleSet::from_sources(
        &[(
            "t.yaml".into(),
            "rules:\n  - name: r1\n    on: a\n    delete:\n      - abc{x}*\n".into(),
        )],
        &options(),
    )
    .unwrap();
}

#[test]
fn a_star_in_the_middle_of_a_key_points_at_the_star() {
    let yaml =
        "rules:\n  - name: r1\n    on: price.updated\n    delete:\n      - price:*:{product_id}\n";
    let e = error(yaml);
    assert_eq!(at(&e), (5, 15));
    assert_eq!(at(&e), pos(yaml, "*:{", 0));
    assert!(
        e.message.contains("a `*` may only be the last character"),
        "{e}"
    );
    // Quoted: the column still lands on the `*`.
    let yaml = "rules:\n  - name: r1\n    on: price.updated\n    delete:\n      - \"price:*:{product_id}\"\n";
    assert_eq!(at(&error(yaml)), (5, 16));
    // A glob in a tag or an expire key is refused too.
    let yaml = "rules:\n  - name: r1\n    on: price.updated\n    tags:\n      - product:*\n";
    let e = error(yaml);
    assert_eq!(at(&e), pos(yaml, "*\n", 0));
}

#[test]
fn the_column_of_a_template_error_counts_characters() {
    let yaml = "rules:\n  - name: r1\n    on: price.updated\n    delete:\n      - \"é:*:{x}\"\n";
    assert_eq!(at(&error(yaml)), pos(yaml, "*:{", 0));
}

#[test]
fn a_purge_path_must_start_with_a_slash() {
    let yaml = "rules:\n  - name: r1\n    on: price.updated\n    purge:\n      - target: catalog-cdn\n        paths:\n          - products/{product_id}\n";
    let e = error(yaml);
    assert_eq!(at(&e), (7, 13));
    assert!(e.message.contains("a CDN path must start with `/`"), "{e}");
    let yaml = "rules:\n  - name: r1\n    on: price.updated\n    purge:\n      - target: catalog-cdn\n        paths:\n          - /p/*/{product_id}\n";
    let e = error(yaml);
    assert_eq!(at(&e), pos(yaml, "*/{", 0));
}

#[test]
fn an_unknown_purge_target() {
    let yaml = "rules:\n  - name: r1\n    on: price.updated\n    purge:\n      - target: edge\n        paths:\n          - /p/{product_id}\n";
    let e = error(yaml);
    assert_eq!(at(&e), pos(yaml, "edge", 0));
    assert_eq!(
        e.message,
        "purge target `edge` is not configured as [cdn.edge] (configured: catalog-cdn)"
    );
}

#[test]
fn bad_durations_and_jitter() {
    let yaml = "rules:\n  - name: r1\n    on: price.updated\n    delete:\n      - price:{product_id}\n    redelete_after: soon\n";
    let e = error(yaml);
    assert_eq!(at(&e), (6, 21));
    assert!(
        e.message
            .starts_with("redelete_after `soon` is not a duration"),
        "{e}"
    );
    let yaml = "rules:\n  - name: r1\n    on: price.updated\n    expire:\n      - key: reco:{id}\n        ttl: 0s\n        jitter: 150%\n";
    let e = errors(yaml);
    assert_eq!(e.len(), 2, "{e:#?}");
    assert_eq!(at(&e[0]), pos(yaml, "0s", 0));
    assert!(
        e[0].message.contains("ttl must be more than zero"),
        "{}",
        e[0]
    );
    assert_eq!(at(&e[1]), pos(yaml, "150%", 0));
    assert!(e[1].message.contains("jitter `150%`"), "{}", e[1]);
    let yaml = "ttl_policies:\n  - match: price:*\n    max_ttl: forever\n";
    let e = error(yaml);
    assert_eq!(at(&e), pos(yaml, "forever", 0));
}

#[test]
fn duplicate_rule_names_across_files() {
    let a = "rules:\n  - name: price-changed\n    on: price.updated\n    delete: [\"price:{product_id}\"]\n";
    let b = "rules:\n  - on: price.updated\n    name: price-changed\n    tags: [\"product:{product_id}\"]\n";
    let e = RuleSet::from_sources(
        &[("a.yaml".into(), a.into()), ("b.yaml".into(), b.into())],
        &options(),
    )
    .unwrap_err()
    .0;
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!(e[0].file, "b.yaml");
    assert_eq!(at(&e[0]), (3, 11));
    assert_eq!(
        e[0].message,
        "rule `price-changed` is already defined at a.yaml:2:5"
    );
    // Against the shipped rules too.
    let mut sources: Vec<(String, String)> = std::fs::read_dir(root().join("rules"))
        .unwrap()
        .map(|f| f.unwrap().path())
        .map(|p: PathBuf| {
            (
                p.display().to_string(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    sources.sort();
    sources.push((
        "extra.yaml".into(),
        b.replace("price-changed", "product-page"),
    ));
    let e = RuleSet::from_sources(&sources, &options()).unwrap_err().0;
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(e[0].message.contains("product.yaml:"), "{}", e[0]);
}

#[test]
fn item_outside_for_each_member_of() {
    let yaml = "rules:\n  - name: r1\n    on: price.updated\n    delete:\n      - k:{item}\n";
    let e = error(yaml);
    assert_eq!(at(&e), pos(yaml, "item}", 0));
    assert!(
        e.message
            .contains("`{item}` is only defined in a cascade with `for_each_member_of`"),
        "{e}"
    );
    // In cascade data the error names the line of `data:` (the column is that of the mapping).
    let yaml = "rules:\n  - name: r1\n    on: price.updated\n    cascade:\n      - emit: category.changed\n        data: { category_id: \"{item}\" }\n";
    let e = error(yaml);
    assert_eq!(e.line, 6, "{e}");
    assert!(e.message.contains("`{item}` is only defined"), "{e}");
    // With for_each_member_of, it compiles.
    let ok = format!("{yaml}        for_each_member_of: product:{{product_id}}:categories\n");
    RuleSet::from_sources(&[("t.yaml".into(), ok)], &options()).unwrap();
}

#[test]
fn every_error_of_every_file_is_reported_at_once() {
    let a = "rules:\n  - name: r1\n    on: a.b\n    delete:\n      - x*y\n";
    let b = "rules:\n  - name: r2\n    on: a.b\n    when: nope(\n    purge:\n      - target: nowhere\n        paths: [\"/x\"]\n";
    let e = RuleSet::from_sources(
        &[("a.yaml".into(), a.into()), ("b.yaml".into(), b.into())],
        &options(),
    )
    .unwrap_err();
    let text = e.to_string();
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(['a', 'b'])).collect();
    assert!(lines[0].starts_with("a.yaml:5:"), "{text}");
    assert!(text.contains("b.yaml:4:11: condition"), "{text}");
    assert!(
        text.contains("b.yaml:6:17: purge target `nowhere`"),
        "{text}"
    );
    assert_eq!(e.0.len(), 3, "{text}");
}

#[test]
fn sample_events_decode_from_every_envelope_shape() {
    // Aliases, CloudEvents and a flat native event give the same Event shape.
    let alias = sample("evt-20260302-0002");
    assert_eq!(&*alias.kind, "inventory.changed");
    assert!(alias.time.is_some());
    let ts = sample("evt-20260302-0009");
    assert!(ts.time.is_some(), "`timestamp` alias");
    let ce = sample("0c9e6a5d-1b2f-4c3d-8e9f-a0b1c2d3e4f5");
    assert_eq!(&*ce.kind, "price.updated");
    assert_eq!(ce.data["product_id"], 1003);
    let flat = sample("evt-20260302-0012");
    assert_eq!(flat.data["review_id"], "r-49990");
    assert!(root().join("samples/bad-events.jsonl").exists());
}
