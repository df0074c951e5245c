//! The Prometheus rules of `deploy/prometheus/` hold: `promtool check rules` accepts them,
//! `promtool test rules` passes their unit tests, every alert has a unit test that fires it and one
//! that leaves it silent, every metric their expressions read is one `src/telemetry.rs` exports
//! (a renamed metric breaks this test), and every histogram bucket they select is one the real
//! exporter renders.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use regex::Regex;
use serde_json::Value;

use common::prometheus::metric_names;

/// Series Prometheus itself makes, not the service.
const PROMETHEUS_SERIES: &[&str] = &["up"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `*.yml` files of `dir`, at least one.
fn yml_files(dir: &Path) -> Vec<PathBuf> {
    let files = common::prometheus::rule_files(dir);
    assert!(!files.is_empty(), "no .yml file in {}", dir.display());
    files
}

fn rule_files() -> Vec<PathBuf> {
    yml_files(&root().join("deploy/prometheus"))
}

fn test_files() -> Vec<PathBuf> {
    yml_files(&root().join("deploy/prometheus/tests"))
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every rule (recording and alerting) of every rule file.
fn rules() -> Vec<Value> {
    let mut all = Vec::new();
    for file in rule_files() {
        for group in yaml(&file)["groups"].as_array().expect("groups") {
            all.extend(group["rules"].as_array().expect("rules").iter().cloned());
        }
    }
    all
}

fn promtool(args: &[&str], files: &[PathBuf]) {
    let out = Command::new("promtool")
        .args(args)
        .args(files)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): install it with Debian's `prometheus` package \
                 (`apt-get update && apt-get install -y prometheus`); scripts/test.sh does this"
            )
        });
    assert!(
        out.status.success(),
        "promtool {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_check_rules_accepts_the_rule_files() {
    promtool(&["check", "rules"], &rule_files());
}

#[test]
fn promtool_unit_tests_pass() {
    promtool(&["test", "rules"], &test_files());
}

#[test]
fn every_alert_has_a_firing_and_a_silent_unit_test() {
    let alerts: BTreeSet<String> = rules()
        .iter()
        .filter_map(|r| r["alert"].as_str().map(str::to_owned))
        .collect();
    assert!(alerts.len() >= 10, "alerts: {alerts:?}");
    let (mut firing, mut silent) = (BTreeSet::new(), BTreeSet::new());
    for file in test_files() {
        for test in yaml(&file)["tests"].as_array().expect("tests") {
            for case in test["alert_rule_test"].as_array().into_iter().flatten() {
                let name = case["alertname"].as_str().expect("alertname").to_owned();
                match case["exp_alerts"].as_array() {
                    Some(exp) if !exp.is_empty() => firing.insert(name),
                    _ => silent.insert(name),
                };
            }
        }
    }
    let no_firing: Vec<_> = alerts.difference(&firing).collect();
    let no_silent: Vec<_> = alerts.difference(&silent).collect();
    assert!(no_firing.is_empty(), "no unit test fires {no_firing:?}");
    assert!(
        no_silent.is_empty(),
        "no unit test keeps {no_silent:?} silent"
    );
    let unknown: Vec<_> = firing
        .union(&silent)
        .filter(|a| !alerts.contains(*a))
        .collect();
    assert!(
        unknown.is_empty(),
        "tests of alerts that do not exist: {unknown:?}"
    );
    for rule in rules().iter().filter(|r| r["alert"].is_string()) {
        let name = &rule["alert"];
        assert!(rule["for"].is_string(), "{name}: no `for`");
        assert!(
            rule["labels"]["severity"].is_string(),
            "{name}: no severity"
        );
        for key in ["summary", "description", "runbook"] {
            assert!(rule["annotations"][key].is_string(), "{name}: no {key}");
        }
    }
}

#[test]
fn the_metric_name_scan_sees_every_kind_of_name() {
    let got = metric_names(
        r#"sum by (job, le) (rate(a_bucket{le="5"}[5m])) / on (job) b:c offset 5m and up == 0"#,
    );
    let want: BTreeSet<String> = ["a_bucket", "b:c", "up"].map(String::from).into();
    assert_eq!(got, want);
}

#[test]
fn every_metric_the_rules_read_is_exported() {
    let telemetry = std::fs::read_to_string(root().join("src/telemetry.rs")).unwrap();
    let exported = |name: &str| telemetry.contains(&format!("\"{name}\""));
    let histogram = |name: &str| {
        ["_bucket", "_count", "_sum"]
            .iter()
            .any(|s| name.strip_suffix(s).is_some_and(exported))
    };
    let all = rules();
    let recorded: BTreeSet<&str> = all.iter().filter_map(|r| r["record"].as_str()).collect();
    let mut read = BTreeSet::new();
    for rule in &all {
        let expr = rule["expr"].as_str().expect("expr");
        for name in metric_names(expr) {
            let known = exported(&name)
                || histogram(&name)
                || recorded.contains(name.as_str())
                || PROMETHEUS_SERIES.contains(&name.as_str());
            assert!(
                known,
                "{name} (in `{expr}`) is not a metric of src/telemetry.rs"
            );
            read.insert(name);
        }
    }
    // The scan found the metrics the brief names, so it is not vacuous.
    for name in [
        "invalidator_event_age_seconds_bucket",
        "invalidator_consumer_lag",
        "invalidator_dlq_total",
        "invalidator_dlq_write_failures_total",
        "invalidator_ready",
        "invalidator_redis_failovers_total",
        "invalidator_redis_wait_shortfall_total",
        "invalidator_cdn_requests_total",
    ] {
        assert!(read.contains(name), "no rule reads {name}: {read:?}");
    }
}

#[test]
fn every_bucket_the_rules_select_is_one_the_exporter_renders() {
    let handle = invalidator::telemetry::install_prometheus().expect("recorder");
    invalidator::telemetry::event_ages().record(Duration::from_millis(1).as_secs_f64());
    let text = handle.render();
    let selector = Regex::new(r#"(invalidator_[a-z_]+_bucket)\{[^}]*le="([^"]+)""#).unwrap();
    let mut seen = 0;
    for rule in rules() {
        let expr = rule["expr"].as_str().expect("expr");
        for c in selector.captures_iter(expr) {
            let line = format!("{}{{le=\"{}\"}}", &c[1], &c[2]);
            assert!(
                text.contains(&line),
                "`{expr}` selects {line}, which /metrics does not render:\n{text}"
            );
            seen += 1;
        }
    }
    assert!(seen >= 4, "only {seen} bucket selectors found");
}

/// GitHub's anchor of a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn every_runbook_names_a_section_of_the_docs() {
    let mut runbooks = 0;
    for rule in rules().iter().filter(|r| r["alert"].is_string()) {
        let runbook = rule["annotations"]["runbook"].as_str().expect("runbook");
        let (file, section) = runbook
            .split_once('#')
            .unwrap_or_else(|| panic!("{runbook}: no #section"));
        let text = std::fs::read_to_string(root().join(file))
            .unwrap_or_else(|e| panic!("runbook {runbook}: {e}"));
        let found = text
            .lines()
            .filter_map(|l| l.strip_prefix('#'))
            .map(|l| anchor(l.trim_start_matches('#')))
            .any(|a| a == section);
        assert!(found, "runbook {runbook}: no such section in {file}");
        assert!(
            text.contains(&format!("`{}`", rule["alert"].as_str().unwrap())),
            "{file} does not name {}",
            rule["alert"]
        );
        runbooks += 1;
    }
    assert!(runbooks >= 10);
}
