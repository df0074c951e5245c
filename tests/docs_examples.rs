//! The examples in the documentation are checked here, so that they stay true of the code.
//!
//! - Every ```yaml block of docs/rules.md and README.md is a rule file: it must compile with
//!   `RuleSet::load`, as `invalidator` compiles `rules/`. A block marked ```yaml error must fail
//!   to compile; a ```text error block right after it holds lines the error must contain.
//! - A ```json event block is an event for the last rule file above it. The ```text actions block
//!   right after it is what the rules do with it: the coalesced plan of `explain`, one action a
//!   line, in the format of [`plan_lines`].
//! - Every ```toml block of docs/*.md and README.md must parse and validate with
//!   `Config::from_toml`.
//! - A ```sh block holding one `invalidator ...` command, followed by a ```text output block, is
//!   run from the root of the repository (its `invalidator.toml`, its `rules/`): the output must
//!   be what the binary prints.
//!
//! A block whose fence says `ignore` (```yaml ignore) is not checked: it is a fragment on purpose.
//! Pure: no Redis, no network.

use std::path::PathBuf;
use std::process::Command;

use invalidator::config::Config;
use invalidator::engine::{Outcome, prepare};
use invalidator::event::{Position, expand_document};
use invalidator::plan::key_text;
use invalidator::rules::{CompileOptions, RuleSet};

/// The configuration the rule examples compile against: the CDN target they purge on.
const DOCS_CONFIG: &str = "[cdn.catalog-cdn]\nkind = \"log\"\n";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One fenced code block.
#[derive(Debug)]
struct Block {
    /// The language: the first word after the fence.
    lang: String,
    /// The other words after the fence (`ignore`, `error`, `event`, `actions`).
    flags: Vec<String>,
    text: String,
    /// `file:line` of the opening fence.
    at: String,
}

impl Block {
    fn is(&self, lang: &str, flag: &str) -> bool {
        self.lang == lang && self.flags.iter().any(|f| f == flag)
    }

    fn ignored(&self) -> bool {
        self.flags.iter().any(|f| f == "ignore")
    }
}

/// The fenced blocks of a Markdown file of the repository, in order.
fn blocks(relative: &str) -> Vec<Block> {
    let text = std::fs::read_to_string(root().join(relative))
        .unwrap_or_else(|e| panic!("{relative}: {e}"));
    parse_blocks(relative, &text)
}

/// The fenced blocks of Markdown `text`, in order; `name` is used in their `at`.
fn parse_blocks(name: &str, text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<(String, Vec<String>, usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        match open.take() {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    let fence = line.len() - trimmed.len();
                    let mut words = info.split_whitespace().map(str::to_owned);
                    let lang = words.next().unwrap_or_default();
                    open = Some((lang, words.collect(), fence, String::new()));
                    out.push(Block {
                        lang: String::new(),
                        flags: Vec::new(),
                        text: String::new(),
                        at: format!("{name}:{}", n + 1),
                    });
                }
            }
            Some((lang, flags, fence, mut body)) => {
                if trimmed.starts_with("```") {
                    let last = out.last_mut().expect("pushed when opened");
                    last.lang = lang;
                    last.flags = flags;
                    last.text = body;
                } else {
                    // A fence indented in a list item indents its lines too.
                    let cut = line
                        .char_indices()
                        .take_while(|(i, c)| *i < fence && *c == ' ')
                        .count();
                    body.push_str(&line[cut..]);
                    body.push('\n');
                    open = Some((lang, flags, fence, body));
                }
            }
        }
    }
    assert!(open.is_none(), "{name}: a code block is not closed");
    out
}

fn docs_config() -> Config {
    Config::from_toml(DOCS_CONFIG).unwrap()
}

fn options(config: &Config) -> CompileOptions {
    CompileOptions {
        limits: config.rule_limits(),
        cdn_targets: Some(config.cdn.keys().cloned().collect()),
    }
}

/// Writes `yaml` as `rules/example.yaml` in a new temporary directory and compiles it. An error
/// is returned as printed, with the temporary directory left out (`rules/example.yaml:4:9: ...`).
fn compile(yaml: &str) -> Result<RuleSet, String> {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("rules");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("example.yaml"), yaml).unwrap();
    RuleSet::load(&dir, &options(&docs_config())).map_err(|e| {
        e.to_string()
            .replace(&format!("{}/", tmp.path().display()), "")
    })
}

fn words(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What the rules do with one event, one action a line:
///
/// ```text
/// delete KEY                      UNLINK
/// pattern PATTERN                 SCAN MATCH + UNLINK
/// tag TAG                         tag invalidation
/// expire KEY TTL [jitter N%]      PEXPIRE .. LT
/// purge TARGET PATH               CDN path
/// after DELAY delete KEY          redelete_after
/// after DELAY tag TAG
/// read set KEY                    for_each_member_of: the set is read from Redis when applied
/// note TEXT                       a cascade that was not followed
/// skipped                         no rule applies
/// dead-lettered REASON            the event goes to the dead-letter queue
/// ```
fn plan_lines(rules: &RuleSet, event_json: &str) -> Vec<String> {
    // The same seam `explain` and every mode go through: `prepare` decodes and plans.
    let limits = docs_config().limits;
    let bytes = event_json.trim().as_bytes().to_vec();
    let inputs = expand_document(bytes, Position::default(), limits.max_event_bytes);
    let [p] = &prepare(rules, &limits, inputs)[..] else {
        panic!("one event expected in {event_json}");
    };
    if let Outcome::DeadLettered { reason, .. } = &p.outcome {
        return vec![format!("dead-lettered {reason}")];
    }
    let event_plan = p
        .plan
        .as_ref()
        .expect("a decoded event that is not dead-lettered is planned");
    let plan = p.actions();
    let mut out = Vec::new();
    if !event_plan.hits.iter().any(|h| h.condition) {
        out.push("skipped".to_owned());
    }
    out.extend(
        plan.deletes
            .iter()
            .map(|k| format!("delete {}", key_text(k))),
    );
    out.extend(plan.patterns.iter().map(|p| format!("pattern {p}")));
    out.extend(plan.tags.keys().map(|t| format!("tag {t}")));
    for (key, e) in &plan.expires {
        let mut line = format!("expire {key} {}", humantime::format_duration(e.ttl));
        if e.jitter > 0.0 {
            line.push_str(&format!(" jitter {:.0}%", e.jitter * 100.0));
        }
        out.push(line);
    }
    for (target, paths) in &plan.purges {
        out.extend(paths.keys().map(|p| format!("purge {target} {p}")));
    }
    for (after, r) in &plan.redeletes {
        let after = humantime::format_duration(after.0);
        out.extend(r.keys.keys().map(|k| format!("after {after} delete {k}")));
        out.extend(r.tags.keys().map(|t| format!("after {after} tag {t}")));
    }
    out.extend(event_plan.needs.iter().map(|s| format!("read set {s}")));
    out.extend(event_plan.notes.iter().map(|n| format!("note {n}")));
    out.iter().map(|l| words(l)).collect()
}

/// Checks the rule files, compile errors and events of one Markdown file; returns how many rule
/// files and events were checked.
fn check_rules(relative: &str) -> (usize, usize) {
    let all = blocks(relative);
    let mut rules: Option<(String, RuleSet)> = None;
    let (mut files, mut events) = (0, 0);
    for (i, b) in all.iter().enumerate() {
        if b.ignored() {
            continue;
        }
        let next = all.get(i + 1);
        if b.is("yaml", "error") {
            let err = match compile(&b.text) {
                Ok(_) => panic!(
                    "{}: this rule file is shown as an error, but it compiles",
                    b.at
                ),
                Err(e) => e,
            };
            if let Some(expected) = next.filter(|n| n.is("text", "error")) {
                for line in expected.text.lines().filter(|l| !l.trim().is_empty()) {
                    assert!(
                        words(&err).contains(&words(line)),
                        "{}: the error shown is not the error given:\n  shown: {line}\n  given: {err}",
                        expected.at
                    );
                }
            }
            files += 1;
        } else if b.lang == "yaml" {
            let set = compile(&b.text)
                .unwrap_or_else(|e| panic!("{}: the rule file does not compile:\n{e}", b.at));
            rules = Some((b.at.clone(), set));
            files += 1;
        } else if b.is("json", "event") {
            let (rules_at, set) = rules
                .as_ref()
                .unwrap_or_else(|| panic!("{}: an event without a rule file above it", b.at));
            let expected = next.filter(|n| n.is("text", "actions")).unwrap_or_else(|| {
                panic!("{}: an event must be followed by ```text actions", b.at)
            });
            let want: Vec<String> = expected
                .text
                .lines()
                .map(words)
                .filter(|l| !l.is_empty())
                .collect();
            let got = plan_lines(set, &b.text);
            assert_eq!(
                got, want,
                "{}: the actions shown are not what the rules of {rules_at} do with this event",
                expected.at
            );
            events += 1;
        }
    }
    (files, events)
}

#[test]
fn the_rule_reference_examples_compile_and_do_what_they_say() {
    let (files, events) = check_rules("docs/rules.md");
    assert!(files >= 10, "only {files} rule files in docs/rules.md");
    assert!(events >= 5, "only {events} events in docs/rules.md");
}

#[test]
fn the_readme_example_compiles_and_does_what_it_says() {
    let (files, events) = check_rules("README.md");
    assert!(
        files >= 1 && events >= 1,
        "README.md shows a rule and an event"
    );
}

/// The Markdown files whose TOML blocks are configuration.
fn markdown_files() -> Vec<String> {
    let mut out = vec!["README.md".to_owned()];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    out.extend(docs.iter().map(|p| {
        let name = p.file_name().unwrap().to_str().unwrap();
        format!("docs/{name}")
    }));
    out
}

#[test]
fn every_configuration_example_parses() {
    let mut checked = 0;
    let mut in_reference = 0;
    for file in markdown_files() {
        for b in blocks(&file) {
            if b.lang != "toml" || b.ignored() {
                continue;
            }
            if let Err(e) = Config::from_toml(&b.text) {
                panic!("{}: the configuration does not load: {e}", b.at);
            }
            checked += 1;
            if file == "docs/configuration.md" {
                in_reference += 1;
            }
        }
    }
    assert!(
        in_reference >= 5,
        "only {in_reference} TOML blocks in docs/configuration.md"
    );
    assert!(checked > in_reference);
}

/// Splits a command line into words: blanks separate them, single quotes hold blanks.
fn shell_words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let (mut quoted, mut any) = (false, false);
    for c in line.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    assert!(!quoted, "unbalanced quote in {line}");
    if any {
        out.push(word);
    }
    out
}

#[test]
fn the_command_outputs_shown_are_what_the_binary_prints() {
    let mut checked = 0;
    for file in markdown_files() {
        let all = blocks(&file);
        for (i, b) in all.iter().enumerate() {
            let Some(expected) = all.get(i + 1).filter(|n| n.is("text", "output")) else {
                continue;
            };
            assert_eq!(
                b.lang, "sh",
                "{}: output shown after a non-sh block",
                expected.at
            );
            let lines: Vec<&str> = b
                .text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .collect();
            let [line] = lines[..] else {
                panic!("{}: one command, for the output below it", b.at)
            };
            let words = shell_words(line);
            assert_eq!(
                words[0], "invalidator",
                "{}: not an invalidator command",
                b.at
            );
            let out = Command::new(env!("CARGO_BIN_EXE_invalidator"))
                .args(&words[1..])
                .current_dir(root())
                .env_clear()
                .output()
                .unwrap();
            let got: Vec<&str> = std::str::from_utf8(&out.stdout)
                .unwrap()
                .lines()
                .map(str::trim_end)
                .collect();
            let want: Vec<&str> = expected.text.lines().map(str::trim_end).collect();
            assert_eq!(
                got,
                want,
                "{}: `{line}` prints something else (stderr: {})",
                expected.at,
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 2, "only {checked} command outputs checked");
}

#[test]
fn shell_words_keep_quoted_blanks() {
    assert_eq!(
        shell_words("invalidator explain '{\"a\": 1}'  --json"),
        ["invalidator", "explain", "{\"a\": 1}", "--json"]
    );
}

#[test]
fn the_block_reader_reads_fences_and_flags() {
    let b = parse_blocks(
        "x.md",
        "text\n```yaml error\na: 1\n```\n- item\n\n  ```toml\n  [x]\n  ```\n",
    );
    assert_eq!(b.len(), 2);
    assert!(b[0].is("yaml", "error"));
    assert_eq!(b[0].text, "a: 1\n");
    assert_eq!(b[0].at, "x.md:2");
    assert_eq!(b[1].lang, "toml");
    assert_eq!(b[1].text, "[x]\n");
}
