//! Property tests for the template engine (`src/rules/template.rs`).
//!
//! Properties:
//! - confinement: whatever the event holds (any unicode, control characters, `*?[]/\{}`, whitespace,
//!   `.`/`..`, 10 KB strings, non-string JSON), a rendered output only holds characters of the
//!   template's literal text or of the safe alphabet `[A-Za-z0-9_.:@~+=-]`; otherwise rendering fails
//!   with `unsafe_value` or `template_error` and leaves the output untouched;
//! - the same for the hard-forbidden characters with a permissive configured pattern (`.*`, ...);
//! - safe values render exactly (a reference expansion), in odometer order;
//! - fan-out: the output count is the product of the list lengths, and above `max_fanout` the error is
//!   `fanout_exceeded` with that product, before anything is built;
//! - `glob_escape`, read by a reference implementation of Redis's glob matcher, matches the literal
//!   input and nothing else;
//! - `Template::compile` never panics, and what it accepts obeys the literal confinement rules.

use invalidator::event::{DataFields, Event};
use invalidator::rules::template::{SafeValues, Scope, Template, TemplateKind, glob_escape};
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{Map, Value, json};

const SAFE: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:@~+=-";
const KINDS: [TemplateKind; 5] = [
    TemplateKind::Key,
    TemplateKind::KeyOrPattern,
    TemplateKind::Tag,
    TemplateKind::Path,
    TemplateKind::Data,
];

/// Default case count, and no regression files written next to the tests.
fn config() -> Config {
    Config {
        failure_persistence: None,
        ..Config::default()
    }
}

/// Characters no event value may ever bring into an output, whatever pattern is configured.
fn hard_forbidden(c: char) -> bool {
    matches!(c, '*' | '?' | '[' | ']' | '/' | '\\' | '{' | '}')
        || c.is_whitespace()
        || c.is_control()
}

/// The characters of a template's literal text (outside `{...}`).
fn literal_chars(source: &str) -> Vec<char> {
    let mut in_var = false;
    let mut out = Vec::new();
    for c in source.chars() {
        match c {
            '{' => in_var = true,
            '}' => in_var = false,
            c if !in_var => out.push(c),
            _ => {}
        }
    }
    out
}

fn placeholder_count(source: &str) -> usize {
    source.matches('{').count()
}

fn event(data: Value, id: String, kind: String, source: Option<String>) -> Event {
    Event {
        id: id.into(),
        id_given: true,
        kind: kind.into(),
        time: None,
        source: source.map(Into::into),
        data: data.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

/// Strings an attacker would put in an event.
fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => any::<String>(),
        3 => "[*?\\[\\]/\\\\{}. \t\r\n\\x00-\\x1f\u{7f}\u{85}\u{a0}\u{2028}\u{3000}\u{feff}%A-Za-z0-9_.:@~+=-]{0,12}",
        2 => "[A-Za-z0-9_.:@~+=-]{1,130}",
        1 => prop::sample::select(vec![
            "", ".", "..", "../", "./", "...", "a/../b", "*", "?", "[a-z]", "\\", "{x}", "a b",
            "a\r\nb", "\u{0}", "\u{85}", "\u{2028}", "\u{3000}", "é", "%2F", "..%2F",
        ])
        .prop_map(str::to_owned),
        // 10 KB strings: all safe (too long), or with one bad character somewhere.
        1 => (
            prop::sample::select(vec!['a', '0', '.', '-']),
            9_000usize..11_000,
            prop::option::of((any::<prop::sample::Index>(), prop::sample::select(vec!['*', '/', ' ', '\n', '[']))),
        )
            .prop_map(|(c, n, bad)| {
                let mut s: Vec<char> = std::iter::repeat_n(c, n).collect();
                if let Some((i, b)) = bad {
                    let i = i.index(n);
                    s[i] = b;
                }
                s.into_iter().collect()
            }),
    ]
}

fn hostile_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => hostile_string().prop_map(Value::String),
        2 => any::<i64>().prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        1 => prop::sample::select(vec![
            json!(1.5),
            json!(-0.0),
            json!(1e300),
            json!(true),
            json!(null),
            json!({}),
            json!({"a": "b"}),
            json!([]),
            json!(["*"]),
        ]),
    ]
}

/// Event data with every field the generated templates read.
fn hostile_data() -> impl Strategy<Value = Value> {
    (
        hostile_value(),
        hostile_value(),
        prop::collection::vec(hostile_value(), 0..4),
        prop::collection::vec(hostile_value(), 0..3),
        any::<i64>(),
        any::<bool>(),
    )
        .prop_map(|(v, b, l, skus, n, drop_v)| {
            let mut o = Map::new();
            if !drop_v {
                o.insert("v".into(), v);
            }
            o.insert("a".into(), json!({ "b": b }));
            o.insert("l".into(), Value::Array(l));
            o.insert(
                "items".into(),
                Value::Array(skus.into_iter().map(|s| json!({ "sku": s })).collect()),
            );
            o.insert("n".into(), json!(n));
            Value::Object(o)
        })
}

const VARS: &[&str] = &[
    "v",
    "a.b",
    "l[]",
    "l[0]",
    "l[1]",
    "items[].sku",
    "items[0].sku",
    "n",
    "missing",
    "event.id",
    "event.type",
    "event.source",
    "item",
];

/// A template source that compiles for its kind.
fn arb_template() -> impl Strategy<Value = (TemplateKind, String)> {
    (
        prop::sample::select(KINDS.to_vec()),
        prop::collection::vec(
            prop_oneof![
                "[a-z0-9:_.@~+=/-]{1,4}".prop_map(|s| (false, s)),
                prop::sample::select(VARS).prop_map(|v| (true, format!("{{{v}}}"))),
            ],
            1..5,
        ),
        any::<bool>(),
        "[ *?#!]{0,3}",
    )
        .prop_map(|(kind, segments, star, data_lit)| {
            let mut s = String::from(if kind == TemplateKind::Path {
                "/p/"
            } else {
                "key:"
            });
            for (_, seg) in segments {
                s.push_str(&seg);
            }
            if kind == TemplateKind::Data {
                // Data templates may hold any non-control literal.
                s.push_str(&data_lit);
            }
            if star && matches!(kind, TemplateKind::KeyOrPattern | TemplateKind::Path) {
                s.push('*');
            }
            (kind, s)
        })
}

fn safe_string() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.:@~+=-]{1,128}".prop_filter("not . or ..", |s| s != "." && s != "..")
}

/// A value the default pattern accepts, and how it renders.
fn safe_value() -> impl Strategy<Value = (Value, String)> {
    prop_oneof![
        3 => safe_string().prop_map(|s| (Value::String(s.clone()), s)),
        1 => any::<i64>().prop_map(|n| (json!(n), n.to_string())),
        1 => any::<u64>().prop_map(|n| (json!(n), n.to_string())),
    ]
}

// ---------------------------------------------------------------------------------------------
// Confinement
// ---------------------------------------------------------------------------------------------

/// Renders `t` and checks the confinement property; `allowed` says which value characters may appear.
fn check_confined(
    t: &Template,
    ev: &Event,
    item: Option<&str>,
    safe: &SafeValues,
    allowed: &dyn Fn(char) -> bool,
    max_value_chars: usize,
) -> Result<(), TestCaseError> {
    let lits = literal_chars(t.source());
    let sentinel = "sentinel".to_string();
    let mut out = vec![sentinel.clone()];
    let result = t.render(Scope { event: ev, item }, safe, 1000, &mut out);
    match result {
        Ok(()) => {
            prop_assert_eq!(&out[0], &sentinel, "render appends, never rewrites");
            let max_len = lits.len() + max_value_chars * placeholder_count(t.source());
            for o in &out[1..] {
                for c in o.chars() {
                    prop_assert!(
                        lits.contains(&c) || allowed(c),
                        "{:?} from template {:?} holds {:?}, neither literal nor allowed",
                        o,
                        t.source(),
                        c
                    );
                }
                prop_assert!(o.chars().count() <= max_len, "{} chars", o.chars().count());
            }
        }
        Err(e) => {
            prop_assert!(
                matches!(e.reason(), "unsafe_value" | "template_error"),
                "{:?}",
                e
            );
            prop_assert_eq!(out, vec![sentinel], "a failed render adds nothing");
            let _ = e.to_string();
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn default_pattern_confines_every_output(
        (kind, src) in arb_template(),
        data in hostile_data(),
        id in hostile_string(),
        kind_str in hostile_string(),
        source in prop::option::of(hostile_string()),
        item in prop::option::of(hostile_string()),
    ) {
        let t = Template::compile(&src, kind, true).unwrap_or_else(|e| panic!("{src:?}: {e:?}"));
        let ev = event(data, id, kind_str, source);
        check_confined(&t, &ev, item.as_deref(), &SafeValues::default(), &|c| SAFE.contains(c), 128)?;
    }

    /// Data as decoding keeps it (the fields the rules read, a few more, a few fewer) renders as
    /// the whole data does: the same outputs, the same values, the same errors.
    #[test]
    fn kept_fields_render_as_the_whole_data(
        (kind, src) in arb_template(),
        mut data in hostile_data(),
        extra in prop::sample::subsequence(vec!["v", "a", "l", "items", "n", "zz"], 0..6),
        null in any::<bool>(),
        item in prop::option::of(hostile_string()),
    ) {
        let t = Template::compile(&src, kind, true).unwrap_or_else(|e| panic!("{src:?}: {e:?}"));
        if null {
            // A field given as null reads as no field at all.
            data["v"] = Value::Null;
        }
        let whole = event(data.clone(), "e".into(), "t".into(), None);
        // Every field the template reads is kept; others kept or not.
        let names = VARS.iter().filter_map(|v| v.split(['.', '[']).next()).chain(extra);
        let mut kept = whole.clone();
        kept.data = DataFields::only(names.map(str::to_owned)).keep(data);
        let is_kept = matches!(kept.data, invalidator::event::Data::Kept { .. });
        prop_assert!(is_kept, "an object's fields are kept");
        let (safe, item) = (SafeValues::default(), item.as_deref());
        let render = |e: &Event| t.render_one(Scope { event: e, item }, &safe, 64);
        prop_assert_eq!(render(&kept), render(&whole));
        if t.single_var() {
            let value = |e: &Event| t.render_value(Scope { event: e, item }, &safe);
            prop_assert_eq!(value(&kept), value(&whole));
        }
    }

    /// A permissive configured pattern cannot let the hard-forbidden characters (or `.`/`..`) in.
    #[test]
    fn permissive_pattern_never_admits_forbidden_characters(
        (kind, src) in arb_template(),
        pattern in prop::sample::select(vec![".*", "^.*$", "(?s).*", "", "[\\s\\S]*", "^[^a]*$"]),
        data in hostile_data(),
        id in hostile_string(),
        kind_str in hostile_string(),
        source in prop::option::of(hostile_string()),
        item in prop::option::of(hostile_string()),
    ) {
        let safe = SafeValues::new(pattern).unwrap();
        let t = Template::compile(&src, kind, true).unwrap_or_else(|e| panic!("{src:?}: {e:?}"));
        let ev = event(data, id, kind_str, source);
        check_confined(&t, &ev, item.as_deref(), &safe, &|c| !hard_forbidden(c), 20_000)?;
    }

    /// One placeholder between known literals: the value itself is checked.
    #[test]
    fn single_value_is_safe_or_refused(
        v in hostile_value(),
        permissive in any::<bool>(),
        kind in prop::sample::select(KINDS.to_vec()),
    ) {
        let safe = if permissive { SafeValues::new(".*").unwrap() } else { SafeValues::default() };
        let src = if kind == TemplateKind::Path { "/p/{v}/q" } else { "key:{v}:q" };
        let prefix = &src[..src.find('{').unwrap()];
        let suffix = &src[src.find('}').unwrap() + 1..];
        let t = Template::compile(src, kind, false).unwrap();
        let ev = event(json!({ "v": v }), "e".into(), "t".into(), None);
        match t.render_one(Scope { event: &ev, item: None }, &safe, 1000) {
            Ok(out) => {
                prop_assert_eq!(out.len(), 1);
                let value = out[0].strip_prefix(prefix).unwrap().strip_suffix(suffix).unwrap();
                prop_assert!(!value.is_empty() && value != "." && value != "..", "{:?}", value);
                prop_assert!(!value.chars().any(hard_forbidden), "{:?}", value);
                if !permissive {
                    prop_assert!(value.len() <= 128 && value.chars().all(|c| SAFE.contains(c)), "{:?}", value);
                }
                let expected = match &v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    other => return Err(TestCaseError::fail(format!("{other} rendered as {value:?}"))),
                };
                prop_assert_eq!(value, expected.as_str());
            }
            Err(e) => {
                let reason = e.reason();
                match &v {
                    Value::String(_) => prop_assert_eq!(reason, "unsafe_value"),
                    Value::Number(n) if n.is_i64() || n.is_u64() => {
                        return Err(TestCaseError::fail(format!("integer {n} refused: {e}")));
                    }
                    _ => prop_assert_eq!(reason, "template_error"),
                }
            }
        }
    }

    /// With safe values, rendering succeeds and matches a reference expansion (odometer order).
    #[test]
    fn safe_values_render_exactly(
        v in safe_value(),
        l in prop::collection::vec(safe_value(), 0..4),
        skus in prop::collection::vec(safe_value(), 0..4),
        id in safe_string(),
        kind_str in safe_string(),
        source in safe_string(),
        item in safe_string(),
        order in prop::sample::subsequence(
            vec!["v", "l[]", "items[].sku", "event.id", "event.type", "event.source", "item"],
            1..=7,
        )
        .prop_shuffle(),
    ) {
        let data = json!({
            "v": v.0,
            "l": l.iter().map(|x| x.0.clone()).collect::<Vec<_>>(),
            "items": skus.iter().map(|x| json!({"sku": x.0})).collect::<Vec<_>>(),
        });
        let mut src = String::from("key");
        let mut parts: Vec<Vec<String>> = vec![vec!["key".into()]];
        for name in &order {
            src.push_str(&format!(":{{{name}}}"));
            parts.push(vec![":".into()]);
            parts.push(match *name {
                "v" => vec![v.1.clone()],
                "l[]" => l.iter().map(|x| x.1.clone()).collect(),
                "items[].sku" => skus.iter().map(|x| x.1.clone()).collect(),
                "event.id" => vec![id.clone()],
                "event.type" => vec![kind_str.clone()],
                "event.source" => vec![source.clone()],
                "item" => vec![item.clone()],
                _ => unreachable!(),
            });
        }
        // Reference: the cartesian product, the last part varying fastest.
        let mut expected = vec![String::new()];
        for p in &parts {
            expected = expected
                .iter()
                .flat_map(|prefix| p.iter().map(move |x| format!("{prefix}{x}")))
                .collect();
        }
        let t = Template::compile(&src, TemplateKind::Key, true).unwrap();
        let ev = event(data, id.clone(), kind_str.clone(), Some(source.clone()));
        let out = t
            .render_one(Scope { event: &ev, item: Some(&item) }, &SafeValues::default(), 1000)
            .unwrap_or_else(|e| panic!("{src}: {e}"));
        prop_assert_eq!(out, expected);
    }
}

// ---------------------------------------------------------------------------------------------
// Fan-out
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    /// Lists of small lengths whose product may be large: the count is the product, and over the
    /// limit nothing is built.
    #[test]
    fn fanout_is_the_product_of_list_lengths(
        lens in prop::collection::vec(0usize..=12, 1..=8),
        max_fanout in prop_oneof![0usize..2000, Just(1000usize)],
    ) {
        let mut data = Map::new();
        let mut src = String::from("fan");
        for (i, len) in lens.iter().enumerate() {
            data.insert(format!("l{i}"), Value::Array((0..*len).map(|x| json!(x)).collect()));
            src.push_str(&format!(":{{l{i}[]}}"));
        }
        let product: u128 = lens.iter().map(|&l| l as u128).product();
        let t = Template::compile(&src, TemplateKind::Key, false).unwrap();
        let ev = event(Value::Object(data), "e".into(), "t".into(), None);
        let mut out = Vec::new();
        let result = t.render(Scope { event: &ev, item: None }, &SafeValues::default(), max_fanout, &mut out);
        if product <= max_fanout as u128 {
            prop_assert!(result.is_ok(), "{:?}", result);
            prop_assert_eq!(out.len() as u128, product);
            let mut distinct = out.clone();
            distinct.sort();
            distinct.dedup();
            prop_assert_eq!(distinct.len(), out.len());
        } else {
            let err = result.unwrap_err();
            prop_assert_eq!(err.reason(), "fanout_exceeded");
            match err {
                invalidator::rules::template::RenderError::FanoutExceeded { count, limit, .. } => {
                    prop_assert_eq!(count, product);
                    prop_assert_eq!(limit, max_fanout);
                }
                other => return Err(TestCaseError::fail(format!("{other:?}"))),
            }
            prop_assert!(out.is_empty());
        }
    }

    /// A nested fan-out (`items[].tags[]`) counts every leaf; combined with a list, the product.
    #[test]
    fn nested_fanout_counts_leaves(
        tags in prop::collection::vec(0usize..6, 0..6),
        l in 0usize..6,
        max_fanout in 0usize..100,
    ) {
        let items: Vec<Value> = tags
            .iter()
            .map(|&n| json!({ "tags": (0..n).map(|x| format!("t{x}")).collect::<Vec<_>>() }))
            .collect();
        let data = json!({ "items": items, "l": (0..l).collect::<Vec<_>>() });
        let t = Template::compile("tag:{items[].tags[]}:{l[]}", TemplateKind::Tag, false).unwrap();
        let ev = event(data, "e".into(), "t".into(), None);
        let product = (tags.iter().sum::<usize>() * l) as u128;
        let result = t.render_one(Scope { event: &ev, item: None }, &SafeValues::default(), max_fanout);
        if product <= max_fanout as u128 {
            prop_assert_eq!(result.unwrap().len() as u128, product);
        } else {
            prop_assert_eq!(result.unwrap_err().reason(), "fanout_exceeded");
        }
    }
}

/// A product far beyond memory (10^40, over u128::MAX) is refused at once.
#[test]
fn astronomical_fanout_is_refused_without_allocating() {
    let mut data = Map::new();
    let mut src = String::from("fan");
    for i in 0..40 {
        data.insert(format!("l{i}"), json!([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]));
        src.push_str(&format!(":{{l{i}[]}}"));
    }
    let t = Template::compile(&src, TemplateKind::Key, false).unwrap();
    let ev = event(Value::Object(data), "e".into(), "t".into(), None);
    let started = std::time::Instant::now();
    let err = t
        .render_one(
            Scope {
                event: &ev,
                item: None,
            },
            &SafeValues::default(),
            usize::MAX,
        )
        .unwrap_err();
    assert_eq!(err.reason(), "fanout_exceeded");
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
}

// ---------------------------------------------------------------------------------------------
// glob_escape against a reference Redis glob matcher
// ---------------------------------------------------------------------------------------------

/// Redis's `stringmatchlen` (util.c), case-sensitive, on bytes: `*`, `?`, `[...]` with `^`, ranges
/// and `\` escapes, and `\` escaping the next pattern byte.
fn redis_match(mut p: &[u8], mut s: &[u8]) -> bool {
    while !p.is_empty() && !s.is_empty() {
        match p[0] {
            b'*' => {
                while p.len() > 1 && p[1] == b'*' {
                    p = &p[1..];
                }
                if p.len() == 1 {
                    return true;
                }
                return (0..s.len()).any(|i| redis_match(&p[1..], &s[i..]));
            }
            b'?' => {
                p = &p[1..];
                s = &s[1..];
            }
            b'[' => {
                let mut q = &p[1..];
                let not = q.first() == Some(&b'^');
                if not {
                    q = &q[1..];
                }
                let mut matched = false;
                loop {
                    if q.len() >= 2 && q[0] == b'\\' {
                        matched |= q[1] == s[0];
                        q = &q[2..];
                    } else if q.is_empty() {
                        break;
                    } else if q[0] == b']' {
                        q = &q[1..];
                        break;
                    } else if q.len() >= 3 && q[1] == b'-' {
                        let (lo, hi) = (q[0].min(q[2]), q[0].max(q[2]));
                        matched |= (lo..=hi).contains(&s[0]);
                        q = &q[3..];
                    } else {
                        matched |= q[0] == s[0];
                        q = &q[1..];
                    }
                }
                if matched == not {
                    return false;
                }
                p = q;
                s = &s[1..];
            }
            b'\\' if p.len() >= 2 => {
                if p[1] != s[0] {
                    return false;
                }
                p = &p[2..];
                s = &s[1..];
            }
            c => {
                if c != s[0] {
                    return false;
                }
                p = &p[1..];
                s = &s[1..];
            }
        }
        if s.is_empty() {
            while p.first() == Some(&b'*') {
                p = &p[1..];
            }
            break;
        }
    }
    p.is_empty() && s.is_empty()
}

fn glob_heavy() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => "[*?\\[\\]\\\\^a-c-]{0,12}",
        1 => any::<String>(),
    ]
}

/// (Redis glob, key, whether it matches): what the reference matcher below must say.
const GLOBS: &[(&str, &str, bool)] = &[
    ("a*", "abc", true),
    ("*c", "abc", true),
    ("a**c", "abbbc", true),
    ("a?c", "abc", true),
    ("a?c", "ac", false),
    ("[a-c]x", "bx", true),
    ("[c-a]x", "bx", true),
    ("[^a-c]x", "bx", false),
    ("[^a-c]x", "dx", true),
    ("a[\\]]b", "a]b", true),
    ("a[xyz]b", "ayb", true),
    ("\\*", "*", true),
    ("\\*", "a", false),
    ("a\\", "a\\", true),
    ("a[bc", "ab", true),
    ("h\\?llo", "h?llo", true),
    ("h\\?llo", "hello", false),
    ("user:*", "user:42", true),
];

/// The reference matcher really is a glob matcher (so the property below is not string equality).
#[test]
fn reference_matcher_knows_redis_globs() {
    for &(pattern, key, matches) in GLOBS {
        assert_eq!(
            redis_match(pattern.as_bytes(), key.as_bytes()),
            matches,
            "{pattern:?} against {key:?}"
        );
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn glob_escape_matches_only_the_literal(
        s in glob_heavy(),
        others in prop::collection::vec(glob_heavy(), 0..8),
        at in any::<prop::sample::Index>(),
        replacement in prop::sample::select(vec!['a', '*', '?', '[', ']', '\\', 'é', '\0']),
    ) {
        let pattern = glob_escape(&s);
        prop_assert!(redis_match(pattern.as_bytes(), s.as_bytes()), "{:?} does not match {:?}", pattern, s);

        let chars: Vec<char> = s.chars().collect();
        let mut mutants: Vec<String> = vec![format!("{s}x"), format!("x{s}"), format!("{s}{s}")];
        if !chars.is_empty() {
            let i = at.index(chars.len());
            let mut removed = chars.clone();
            removed.remove(i);
            mutants.push(removed.into_iter().collect());
            let mut replaced = chars.clone();
            replaced[i] = replacement;
            mutants.push(replaced.into_iter().collect());
            let mut inserted = chars.clone();
            inserted.insert(i, replacement);
            mutants.push(inserted.into_iter().collect());
        }
        mutants.extend(others);
        for m in mutants {
            prop_assert_eq!(
                redis_match(pattern.as_bytes(), m.as_bytes()),
                m == s,
                "pattern {:?} (from {:?}) against {:?}",
                pattern,
                s,
                m
            );
        }
    }

    /// A pattern delete built from a safe rendered prefix plus `*` only matches keys with that prefix.
    #[test]
    fn escaped_prefix_star_matches_only_the_prefix(
        prefix in glob_heavy(),
        rest in glob_heavy(),
        other in glob_heavy(),
    ) {
        let pattern = format!("{}*", glob_escape(&prefix));
        let key = format!("{prefix}{rest}");
        if !key.is_empty() {
            prop_assert!(redis_match(pattern.as_bytes(), key.as_bytes()));
        }
        prop_assert_eq!(
            redis_match(pattern.as_bytes(), other.as_bytes()),
            other.starts_with(&prefix) && !other.is_empty(),
            "{:?} against {:?}",
            pattern,
            other
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Compilation
// ---------------------------------------------------------------------------------------------

fn arb_source(unicode: bool) -> BoxedStrategy<String> {
    let (anywhere, inside) = if unicode {
        (
            "[{}\\[\\]a-z0-9._*?/: é€😀\t\\\\-]{0,24}",
            "\\{[a-z0-9._\\[\\]é€😀\u{301}-]{0,10}\\}",
        )
    } else {
        (
            "[{}\\[\\]a-z0-9._*?/: \t\\\\-]{0,24}",
            "\\{[a-z0-9._\\[\\]-]{0,10}\\}",
        )
    };
    let sources = prop_oneof![
        3 => anywhere,
        2 => prop::sample::select(VARS)
            .prop_flat_map(|v| ("[a-z:/]{0,4}", Just(v), "[a-z:*/]{0,3}"))
            .prop_map(|(a, v, b)| format!("{a}{{{v}}}{b}")),
        2 => ("[a-z:/]{0,4}", inside).prop_map(|(a, b)| format!("{a}{b}")),
    ];
    if unicode {
        prop_oneof![3 => sources, 1 => any::<String>()].boxed()
    } else {
        sources.boxed()
    }
}

/// Compiles `src` for every kind; what compiles obeys the confinement rules and renders without
/// panicking.
fn check_compile(src: &str, item_allowed: bool) -> Result<(), TestCaseError> {
    let ev = event(
        json!({"a": {"b": "x"}, "l": [1, "y"], "v": "*"}),
        "e".into(),
        "t".into(),
        None,
    );
    for kind in KINDS {
        let Ok(t) = Template::compile(src, kind, item_allowed) else {
            continue;
        };
        prop_assert_eq!(t.source(), src);
        let lits = literal_chars(src);
        if kind != TemplateKind::Data {
            prop_assert!(
                !src.chars().any(|c| c.is_whitespace() || c.is_control()),
                "{:?} as {:?}",
                src,
                kind
            );
            for (i, c) in lits.iter().enumerate() {
                if matches!(c, '?' | '[' | ']') {
                    return Err(TestCaseError::fail(format!(
                        "{src:?} compiled as {kind:?} with a literal {c:?}"
                    )));
                }
                if *c == '*' {
                    prop_assert!(
                        i == lits.len() - 1
                            && src.ends_with('*')
                            && matches!(kind, TemplateKind::KeyOrPattern | TemplateKind::Path),
                        "{:?} compiled as {:?} with a `*` that is not last",
                        src,
                        kind
                    );
                }
            }
        }
        if kind == TemplateKind::Path {
            prop_assert!(src.starts_with('/'));
        }
        if t.is_pattern() && kind == TemplateKind::KeyOrPattern {
            let prefix: String = src.chars().take_while(|&c| c != '{' && c != '*').collect();
            prop_assert!(prefix.len() >= 3, "{:?}", src);
        }
        let mut out = Vec::new();
        let _ = t.render(
            Scope {
                event: &ev,
                item: Some("m"),
            },
            &SafeValues::default(),
            1000,
            &mut out,
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn compile_never_panics_ascii_placeholders(src in arb_source(false), item_allowed in any::<bool>()) {
        check_compile(&src, item_allowed)?;
    }

    #[test]
    fn compile_never_panics(src in arb_source(true), item_allowed in any::<bool>()) {
        check_compile(&src, item_allowed)?;
    }
}

/// Regression for `compile_never_panics`: must be a SyntaxError, not a panic.
#[test]
fn compile_non_ascii_in_placeholder_is_an_error() {
    for src in ["{aé}", "price:{product_idé}", "k:{a[0]€}"] {
        let r = std::panic::catch_unwind(|| Template::compile(src, TemplateKind::Key, false));
        let r = r.unwrap_or_else(|_| panic!("Template::compile panicked on {src:?}"));
        assert!(r.is_err(), "{src:?}");
    }
}
