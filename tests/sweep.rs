//! `invalidator sweep`: keys over a `ttl_policies` entry get their TTL shortened to it; keys
//! within it and keys outside its pattern are left as they are; `--dry-run` only counts. The binary
//! against the real local Redis.

mod common;

use common::{World, conn};

#[test]
fn sweep_shortens_ttls_over_policy_only() {
    let w = World::new();
    // `P:price:*` lives at most 30 s.
    w.rules_fixture("ttl.yaml", "sweep/price_30s.yaml");
    let mut c = conn();
    w.set(&mut c, &["P:price:none", "P:other:none"]);
    for (k, ms) in [
        ("P:price:hour", 3_600_000),
        ("P:price:ten", 10_000),
        ("P:other:hour", 3_600_000),
    ] {
        let _: () = redis::cmd("SET")
            .arg(w.k(k))
            .arg("v")
            .arg("PX")
            .arg(ms)
            .query(&mut c)
            .unwrap();
    }
    let ten_before = w.pttl(&mut c, "P:price:ten");

    let r = w.bin(&["sweep", "--dry-run"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("over policy 2"), "{}", r.stdout);
    assert_eq!(w.pttl(&mut c, "P:price:none"), -1);
    assert!(w.pttl(&mut c, "P:price:hour") > 3_500_000);

    let r = w.bin(&["sweep"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("fixed 2"), "{}", r.stdout);
    for k in ["P:price:none", "P:price:hour"] {
        let t = w.pttl(&mut c, k);
        assert!(t > 0 && t <= 30_000, "{k}: {t}");
    }
    let ten = w.pttl(&mut c, "P:price:ten");
    assert!(
        ten <= ten_before && ten > ten_before - 5_000,
        "within policy: untouched ({ten_before} → {ten})"
    );
    assert_eq!(w.pttl(&mut c, "P:other:none"), -1);
    assert!(w.pttl(&mut c, "P:other:hour") > 3_500_000);
}
