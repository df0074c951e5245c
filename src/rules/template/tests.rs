//! Unit tests of templates: parsing offsets, confinement and rendering, through the public API.

use serde_json::{Value, json};

use super::*;
use crate::event::DataFields;

/// An event whose data is kept as decoding keeps it (an object's fields, here all of them).
fn event(data: Value) -> Event {
    let names = data
        .as_object()
        .map(|m| m.keys().cloned().collect::<Vec<_>>());
    Event {
        id: "ev-1".into(),
        id_given: true,
        kind: "price.updated".into(),
        time: None,
        source: Some("pricing".into()),
        data: DataFields::only(names.unwrap_or_default()).keep(data),
    }
}

fn render(src: &str, kind: TemplateKind, data: Value) -> Result<Vec<String>, RenderError> {
    let t = Template::compile(src, kind, true).unwrap();
    let e = event(data);
    t.render_one(
        Scope {
            event: &e,
            item: Some("m1"),
        },
        &SafeValues::default(),
        1000,
    )
}

#[test]
fn integers_render_as_their_decimal_text_across_their_whole_range() {
    for (v, text) in [
        (json!(0), "0"),
        (json!(-1), "-1"),
        (json!(i64::MIN), "-9223372036854775808"),
        (json!(i64::MAX), "9223372036854775807"),
        (json!(u64::MAX), "18446744073709551615"),
    ] {
        assert_eq!(
            render("p:{v}", TemplateKind::Key, json!({ "v": v })).unwrap(),
            [format!("p:{text}")]
        );
    }
}

#[test]
fn renders_fields_paths_and_envelope() {
    let d = json!({"product_id": 42, "a": {"b": "x"}, "l": ["p", "q"]});
    assert_eq!(
        render("price:{product_id}", TemplateKind::Key, d.clone()).unwrap(),
        ["price:42"]
    );
    assert_eq!(
        render("k:{a.b}:{l[1]}", TemplateKind::Key, d.clone()).unwrap(),
        ["k:x:q"]
    );
    assert_eq!(
        render(
            "{event.type}/{event.id}/{event.source}/{item}",
            TemplateKind::Data,
            d
        )
        .unwrap(),
        ["price.updated/ev-1/pricing/m1"]
    );
}

#[test]
fn fan_out_and_products() {
    let d = json!({"c": ["a", "b"], "p": [1, 2, 3], "items": [{"sku": "s1"}, {"sku": "s2"}]});
    assert_eq!(
        render(
            "category:{c[]}:page:*",
            TemplateKind::KeyOrPattern,
            d.clone()
        )
        .unwrap(),
        ["category:a:page:*", "category:b:page:*"]
    );
    assert_eq!(
        render("x:{c[]}:{p[]}", TemplateKind::Key, d.clone())
            .unwrap()
            .len(),
        6
    );
    assert_eq!(
        render("sku:{items[].sku}", TemplateKind::Key, d.clone()).unwrap(),
        ["sku:s1", "sku:s2"]
    );
    assert!(
        render("x:{none[]}", TemplateKind::Key, json!({"none": []}))
            .unwrap()
            .is_empty()
    );
    let big = json!({"l": (0..2000).collect::<Vec<_>>()});
    assert_eq!(
        render("x:{l[]}", TemplateKind::Key, big)
            .unwrap_err()
            .reason(),
        "fanout_exceeded"
    );
}

#[test]
fn hostile_values_are_refused() {
    for bad in [
        "*", "?", "[a]", "../x", "a b", "a\r\nb", ".", "..", "a/b", "{x}", "\u{0}", "é",
    ] {
        let err = render("price:{v}", TemplateKind::Key, json!({"v": bad})).unwrap_err();
        assert_eq!(err.reason(), "unsafe_value", "{bad:?}");
    }
    let long = "a".repeat(10_000);
    assert_eq!(
        render("price:{v}", TemplateKind::Key, json!({"v": long}))
            .unwrap_err()
            .reason(),
        "unsafe_value"
    );
    for bad in [json!(1.5), json!(true), json!({"a": 1}), json!([1])] {
        assert_eq!(
            render("p:{v}", TemplateKind::Key, json!({"v": bad}))
                .unwrap_err()
                .reason(),
            "template_error"
        );
    }
    assert_eq!(
        render("p:{v}", TemplateKind::Key, json!({}))
            .unwrap_err()
            .reason(),
        "template_error"
    );
    assert_eq!(
        render("p:{v}", TemplateKind::Key, json!({"v": null}))
            .unwrap_err()
            .reason(),
        "template_error"
    );
}

#[test]
fn configured_pattern_cannot_allow_globs() {
    let permissive = SafeValues::new(".*").unwrap();
    assert!(permissive.is_safe("a!b#"));
    for bad in ["*", "a?", "[x]", "a/b", "a b\n", "..", "{"] {
        assert!(!permissive.is_safe(bad), "{bad:?}");
    }
    let strict = SafeValues::new("^[0-9]+$").unwrap();
    assert!(strict.is_safe("42"));
    assert!(!strict.is_safe("a"));
}

#[test]
fn compile_errors_point_at_the_offset() {
    let e = Template::compile("price:{product_id", TemplateKind::Key, false).unwrap_err();
    assert_eq!(e.offset, 6);
    let e = Template::compile("price:{}", TemplateKind::Key, false).unwrap_err();
    assert_eq!(e.offset, 7);
    let e = Template::compile("a*b", TemplateKind::KeyOrPattern, false).unwrap_err();
    assert!(e.message.contains("last character"), "{e:?}");
    let e = Template::compile("ab{x}*", TemplateKind::KeyOrPattern, false).unwrap_err();
    assert!(e.message.contains("at least 3"), "{e:?}");
    assert!(
        Template::compile("abc{x}*", TemplateKind::KeyOrPattern, false)
            .unwrap()
            .is_pattern()
    );
    assert!(Template::compile("key:*", TemplateKind::Key, false).is_err());
    assert!(Template::compile("tag?", TemplateKind::Tag, false).is_err());
    assert!(Template::compile("products/{id}", TemplateKind::Path, false).is_err());
    assert!(
        Template::compile("/p/{id}/*", TemplateKind::Path, false)
            .unwrap()
            .is_pattern()
    );
    assert!(Template::compile("k:{item}", TemplateKind::Key, false).is_err());
    assert!(Template::compile("k:{event.time}", TemplateKind::Key, false).is_err());
    assert!(Template::compile("k:{a[x]}", TemplateKind::Key, false).is_err());
    assert!(Template::compile("k:{a b}", TemplateKind::Key, false).is_err());
}

/// A rule's own literal bytes may hold control characters in a key or a tag (Symfony's tag keys
/// hold NUL bytes); never whitespace, never in a placeholder, never in a path or cascade data.
#[test]
fn literal_control_bytes_only_in_keys_and_tags() {
    for kind in [
        TemplateKind::Key,
        TemplateKind::KeyOrPattern,
        TemplateKind::Tag,
    ] {
        let t = Template::compile("shop:\0tags\0{id}", kind, false).unwrap();
        assert_eq!(
            render("shop:\0tags\0{id}", kind, json!({"id": "7"})).unwrap(),
            ["shop:\0tags\u{0}7"]
        );
        assert!(!t.wildcard);
        for bad in ["a\nb{id}", "a b{id}", "a\tb", "a{i\0d}"] {
            assert!(Template::compile(bad, kind, false).is_err(), "{bad:?}");
        }
    }
    assert!(Template::compile("/p\0/{id}", TemplateKind::Path, false).is_err());
    assert!(Template::compile("x\0{id}", TemplateKind::Data, false).is_err());
    assert!(Template::compile("x\n{id}", TemplateKind::Data, false).is_err());
}

#[test]
fn glob_escape_escapes_every_glob_character() {
    assert_eq!(glob_escape(r"a*b?c[d]e\"), r"a\*b\?c\[d\]e\\");
}

#[test]
fn the_single_value_path_answers_as_the_general_path() {
    let data = json!({"product_id": 42, "sku": "S-1", "neg": -3, "price": 9.9, "flag": true,
        "nul": null, "a": {"b": "x", "n": [1, "two"]}, "bad": "a b", "l": ["p", "q"], "e": []});
    let templates = [
        "price:{product_id}",
        "p:{sku}:{neg}",
        "k:{a.b}:{a.n[1]}:{l[0]}",
        "{event.type}/{event.id}/{event.source}/{item}",
        "x:{price}",
        "x:{flag}",
        "x:{nul}",
        "x:{missing}",
        "x:{a.b.c}",
        "x:{l[5]}",
        "x:{sku[0]}",
        "x:{bad}",
        "x:{a}",
        "x:{l[]}",
        "x:{e[]}:{missing}",
    ];
    let safe = SafeValues::default();
    for src in templates {
        let t = Template::compile(src, TemplateKind::Key, true).unwrap();
        for (source, item) in [(Some("pricing"), Some("m1")), (None, None)] {
            let mut e = event(data.clone());
            e.source = source.map(Into::into);
            let scope = Scope { event: &e, item };
            let mut general = Vec::new();
            let general = t
                .render_all(scope, &safe, 1000, &mut general)
                .map(|()| general);
            match t.render_single(scope, &safe) {
                Ok(Some(one)) => assert_eq!(general, Ok(vec![one]), "{src}"),
                Ok(None) => assert!(src.contains("[]"), "{src}: only `[]` leaves the fast path"),
                Err(e) => assert_eq!(general, Err(e), "{src}"),
            }
        }
    }
}
