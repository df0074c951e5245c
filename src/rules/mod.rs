//! Rules: YAML files → a compiled [`RuleSet`] → for each event, an [`EventPlan`](crate::plan::EventPlan).
//!
//! Invariants:
//! - compilation happens once; every error names `file:line:column` and all errors of all files are
//!   reported together;
//! - planning is pure: it reads the event, the compiled rules and the set members it is given, never
//!   Redis; members it does not have are returned as `needs` for the caller to fetch, and the
//!   cascades that wait for them are planned alone once they are read ([`RuleSet::resume`]);
//! - an event value never widens a key, pattern, tag or path (see [`template`]).
//!
//! This module holds the compiled types and the [`RuleSet`] index; reading the rule files
//! ([`RuleSet::load`]) is the only I/O under `rules/`. Nothing here uses tokio or Redis.

mod compile;
pub mod condition;
mod fields;
mod planner;
pub mod raw;
pub mod template;

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use compile::{CompileOptions, compile_files};
pub use planner::{Members, NoMembers, PlanError};
pub use template::{SafeValues, Template};

use condition::Condition;

use crate::event::DataFields;

/// Limits applied while planning.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_fanout: usize,
    pub max_cascade_depth: u32,
    pub safe: SafeValues,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_fanout: 1000,
            max_cascade_depth: 4,
            safe: SafeValues::default(),
        }
    }
}

/// One compile error, printed as `file:line:column: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    pub file: String,
    pub line: u64,
    pub column: u64,
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// All compile errors of a rule set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleErrors(pub Vec<RuleError>);

impl fmt::Display for RuleErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for RuleErrors {}

/// Which event types a rule listens to.
#[derive(Debug, Clone)]
pub enum Matcher {
    Exact(String),
    Prefix(String),
    Any,
}

impl Matcher {
    fn matches(&self, kind: &str) -> bool {
        match self {
            Matcher::Exact(t) => t == kind,
            Matcher::Prefix(p) => kind.starts_with(p.as_str()),
            Matcher::Any => true,
        }
    }
}

/// An expire: a key and the longest TTL it may keep.
#[derive(Debug, Clone)]
pub struct ExpireSpec {
    pub key: Template,
    pub ttl: Duration,
    pub jitter: f64,
}

#[derive(Debug, Clone)]
pub struct PurgeSpec {
    pub target: String,
    pub paths: Vec<Template>,
}

/// Cascade data: the YAML tree with template strings compiled.
#[derive(Debug, Clone)]
pub enum DataTemplate {
    Template(Template),
    Literal(serde_json::Value),
    List(Vec<DataTemplate>),
    Map(Vec<(String, DataTemplate)>),
}

#[derive(Debug, Clone)]
pub struct CascadeSpec {
    /// Shared with every event the cascade emits.
    pub emit: Arc<str>,
    pub data: DataTemplate,
    pub for_each_member_of: Option<Template>,
}

/// A compiled rule.
///
/// Its name and place are `'static`: a rule set is compiled once per process (rules are not
/// reloaded) and lives as long as it, so they are leaked at compile time, a few bytes a rule, and
/// every rule hit names its rule with a pointer. As shared strings they cost two reference counts
/// a hit, written by both cores for every event (the cache line bouncing between them): about 3%
/// of a plain replay's CPU.
#[derive(Debug)]
pub struct Rule {
    pub name: &'static str,
    /// `file:line:column` of the rule.
    pub at: &'static str,
    pub on: Vec<Matcher>,
    pub when: Option<Condition>,
    pub delete: Vec<Template>,
    pub tags: Vec<Template>,
    pub expire: Vec<ExpireSpec>,
    pub cascade: Vec<CascadeSpec>,
    pub purge: Vec<PurgeSpec>,
    pub redelete_after: Option<Duration>,
}

/// A TTL policy enforced by the sweeper.
#[derive(Debug, Clone, PartialEq)]
pub struct TtlPolicy {
    /// A Redis `MATCH` glob, written by the operator.
    pub pattern: String,
    pub max_ttl: Duration,
    pub jitter: f64,
    pub at: String,
}

/// The compiled rules of a deployment.
#[derive(Debug)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    pub ttl_policies: Vec<TtlPolicy>,
    pub limits: Limits,
    /// The files the rules came from.
    pub files: Vec<PathBuf>,
    /// Rules by the exact event type they name. Only the rule files insert here; events only look
    /// up, so a fast hash serves (no producer can flood it with colliding keys): SipHash was 1% of
    /// a replay's CPU.
    exact: foldhash::HashMap<String, Vec<usize>>,
    other: Vec<usize>,
    data_fields: DataFields,
}

impl RuleSet {
    fn new(
        rules: Vec<Rule>,
        ttl_policies: Vec<TtlPolicy>,
        limits: Limits,
        files: Vec<PathBuf>,
    ) -> Self {
        let mut exact = foldhash::HashMap::<String, Vec<usize>>::default();
        let mut other = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            let mut is_other = false;
            for m in &rule.on {
                match m {
                    Matcher::Exact(t) => {
                        let v = exact.entry(t.clone()).or_default();
                        if v.last() != Some(&i) {
                            v.push(i);
                        }
                    }
                    _ => is_other = true,
                }
            }
            if is_other {
                other.push(i);
            }
        }
        RuleSet {
            data_fields: fields::data_fields(&rules),
            rules,
            ttl_policies,
            limits,
            files,
            exact,
            other,
        }
    }

    /// Loads and compiles every `*.yaml`/`*.yml` under `dir` (recursively, in path order).
    pub fn load(dir: &Path, options: &CompileOptions) -> Result<RuleSet, RuleErrors> {
        let files = rule_files(dir).map_err(|message| {
            RuleErrors(vec![RuleError {
                file: dir.display().to_string(),
                line: 1,
                column: 1,
                message,
            }])
        })?;
        let mut sources = Vec::with_capacity(files.len());
        let mut errors = Vec::new();
        for f in &files {
            match std::fs::read_to_string(f) {
                Ok(text) => sources.push((f.display().to_string(), text)),
                Err(e) => errors.push(RuleError {
                    file: f.display().to_string(),
                    line: 1,
                    column: 1,
                    message: format!("cannot read: {e}"),
                }),
            }
        }
        if !errors.is_empty() {
            return Err(RuleErrors(errors));
        }
        let (rules, policies) = compile_files(&sources, options)?;
        Ok(RuleSet::new(rules, policies, options.limits.clone(), files))
    }

    /// Compiles rules from in-memory sources `(name, yaml)` (tests, embedded defaults).
    pub fn from_sources(
        sources: &[(String, String)],
        options: &CompileOptions,
    ) -> Result<RuleSet, RuleErrors> {
        let (rules, policies) = compile_files(sources, options)?;
        Ok(RuleSet::new(
            rules,
            policies,
            options.limits.clone(),
            Vec::new(),
        ))
    }

    /// What an event must keep of its `data` for these rules to plan it exactly as with all of it.
    pub fn data_fields(&self) -> &DataFields {
        &self.data_fields
    }

    /// The rules listening to `kind`, in file order.
    pub fn rules_for(&self, kind: &str) -> impl Iterator<Item = &Rule> {
        self.rule_indices(kind).map(move |i| &self.rules[i])
    }

    /// The indices in [`RuleSet::rules`] of the rules listening to `kind`, in file order.
    fn rule_indices(&self, kind: &str) -> impl Iterator<Item = usize> {
        let exact = self.exact.get(kind).map(Vec::as_slice).unwrap_or(&[]);
        // Without prefix globs (the usual case) the exact list is the answer, with no allocation.
        let merged = (!self.other.is_empty()).then(|| {
            let mut idx = exact.to_vec();
            for &i in &self.other {
                if self.rules[i].on.iter().any(|m| m.matches(kind)) && !idx.contains(&i) {
                    idx.push(i);
                }
            }
            idx.sort_unstable();
            idx
        });
        let exact = merged.is_none().then_some(exact.iter().copied());
        exact
            .into_iter()
            .flatten()
            .chain(merged.into_iter().flatten())
    }

    /// The metric label of events of type `kind`: the type itself when a rule names it exactly,
    /// the `on` pattern that matches it (`promotion.*`, `*`) otherwise, `other` when no rule
    /// listens. Labels come from the rule files only: no producer can grow the set of series.
    pub fn metric_label<'a>(&self, kind: &'a str) -> Cow<'a, str> {
        if self.exact.contains_key(kind) {
            return Cow::Borrowed(kind);
        }
        for &i in &self.other {
            for m in &self.rules[i].on {
                match m {
                    Matcher::Prefix(p) if kind.starts_with(p.as_str()) => {
                        return Cow::Owned(format!("{p}*"));
                    }
                    Matcher::Any => return Cow::Borrowed("*"),
                    _ => {}
                }
            }
        }
        Cow::Borrowed("other")
    }

    /// True when at least one rule listens to `kind`.
    pub fn listens_to(&self, kind: &str) -> bool {
        self.exact.contains_key(kind)
            || self
                .other
                .iter()
                .any(|&i| self.rules[i].on.iter().any(|m| m.matches(kind)))
    }

    /// Every CDN target the rules name.
    pub fn purge_targets(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .rules
            .iter()
            .flat_map(|r| r.purge.iter().map(|p| p.target.as_str()))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// The rule files of `dir`, sorted.
fn rule_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries =
            std::fs::read_dir(&d).map_err(|e| format!("cannot read rules directory: {e}"))?;
        for entry in entries {
            let entry = entry.map_err(|e| e.to_string())?;
            // Hidden entries are not rules: a Kubernetes ConfigMap mounted as the directory keeps
            // a second copy of every file under `..data`, editors leave `.x.yaml.swp`, and so on.
            if entry.file_name().as_encoded_bytes().starts_with(b".") {
                continue;
            }
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                out.push(path);
            }
        }
    }
    out.sort();
    if out.is_empty() {
        return Err("no *.yaml or *.yml rule files found".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_files_and_directories_are_not_rule_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        for d in ["..data", "sub", ".git"] {
            std::fs::create_dir(p.join(d)).unwrap();
        }
        for f in [
            "a.yaml",
            "..data/a.yaml",
            "sub/b.yml",
            ".git/c.yaml",
            ".a.yaml.swp.yaml",
        ] {
            std::fs::write(p.join(f), "rules: []\n").unwrap();
        }
        let found: Vec<PathBuf> = rule_files(p).unwrap();
        assert_eq!(found, [p.join("a.yaml"), p.join("sub/b.yml")]);
    }

    #[test]
    fn metric_labels_come_from_the_rule_files_only() {
        let yaml = "rules:\n  - name: price\n    on: price.updated\n    delete: [\"p:{id}\"]\n  \
                    - name: promos\n    on: promotion.*\n    delete: [\"promo:{id}\"]\n";
        let options = CompileOptions {
            limits: Limits::default(),
            cdn_targets: None,
        };
        let rules = RuleSet::from_sources(&[("r.yaml".into(), yaml.into())], &options).unwrap();
        assert_eq!(rules.metric_label("price.updated"), "price.updated");
        // Any number of distinct types under a glob make one series, named by the rule's `on`.
        for kind in ["promotion.started", "promotion.x-1", "promotion.🎉"] {
            assert_eq!(rules.metric_label(kind), "promotion.*", "{kind}");
        }
        assert_eq!(rules.metric_label("review.posted"), "other");
        let any = "rules:\n  - name: all\n    on: \"*\"\n    delete: [\"k:{id}\"]\n";
        let rules = RuleSet::from_sources(&[("a.yaml".into(), any.into())], &options).unwrap();
        assert_eq!(rules.metric_label("anything.at.all"), "*");
    }
}
