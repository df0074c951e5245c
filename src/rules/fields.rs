//! The fields of `data` a rule set can read ([`DataFields`]): what the decode keeps of each
//! event (`event::DataFields`), so that the fields no rule reads are checked but never built.
//!
//! Exact by construction: a template or condition that reads `data` other than by a top-level
//! field name (`{[0]}`, `size(data)`) asks for all of it, and so does a cascade graph with a cycle,
//! whose cycle check compares a cascaded event's whole `data` with its root's.

use std::collections::{BTreeSet, HashMap};

use super::{DataTemplate, Matcher, Rule};
use crate::event::DataFields;

/// The top-level fields of `data` that some rule reads (templates, conditions, cascade data and
/// sets); [`DataFields::All`] when that is not a list of names or cascades can cycle.
pub(super) fn data_fields(rules: &[Rule]) -> DataFields {
    let mut fields = BTreeSet::new();
    if rules.iter().all(|r| rule_fields(r, &mut fields)) && !cascades_cycle(rules) {
        DataFields::only(fields)
    } else {
        DataFields::All
    }
}

/// Adds what `rule` reads to `out`; false when it reads `data` as a whole.
fn rule_fields(rule: &Rule, out: &mut BTreeSet<String>) -> bool {
    let condition = rule.when.as_ref().is_none_or(|c| match c.data_fields() {
        Some(f) => {
            out.extend(f.iter().cloned());
            true
        }
        None => false,
    });
    let templates = rule
        .delete
        .iter()
        .chain(&rule.tags)
        .chain(rule.expire.iter().map(|e| &e.key))
        .chain(rule.purge.iter().flat_map(|p| &p.paths))
        .chain(
            rule.cascade
                .iter()
                .filter_map(|c| c.for_each_member_of.as_ref()),
        )
        .all(|t| t.data_fields(out));
    let data = rule
        .cascade
        .iter()
        .all(|c| data_template_fields(&c.data, out));
    condition && templates && data
}

fn data_template_fields(t: &DataTemplate, out: &mut BTreeSet<String>) -> bool {
    match t {
        DataTemplate::Template(t) => t.data_fields(out),
        DataTemplate::Literal(_) => true,
        DataTemplate::List(items) => items.iter().all(|i| data_template_fields(i, out)),
        DataTemplate::Map(fields) => fields.iter().all(|(_, v)| data_template_fields(v, out)),
    }
}

/// True when a cascaded event can have the type of one of its ancestors: some emitted type leads,
/// through the rules that listen to it, back to itself.
fn cascades_cycle(rules: &[Rule]) -> bool {
    let emitted: BTreeSet<&str> = rules
        .iter()
        .flat_map(|r| r.cascade.iter().map(|c| &*c.emit))
        .collect();
    let next: HashMap<&str, Vec<&str>> = emitted
        .iter()
        .map(|&kind| {
            let to = rules
                .iter()
                .filter(|r| r.on.iter().any(|m: &Matcher| m.matches(kind)))
                .flat_map(|r| r.cascade.iter().map(|c| &*c.emit))
                .collect();
            (kind, to)
        })
        .collect();
    // Depth-first search for a back edge; 1 = on the current path, 2 = done.
    let mut state: HashMap<&str, u8> = HashMap::new();
    fn visit<'a>(
        k: &'a str,
        next: &HashMap<&'a str, Vec<&'a str>>,
        state: &mut HashMap<&'a str, u8>,
    ) -> bool {
        match state.get(k) {
            Some(1) => return true,
            Some(_) => return false,
            None => {}
        }
        state.insert(k, 1);
        let cycle = next[k].iter().any(|&n| visit(n, next, state));
        state.insert(k, 2);
        cycle
    }
    emitted.iter().any(|&k| visit(k, &next, &mut state))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::event::{decode_event, decode_event_keeping};
    use crate::rules::{CompileOptions, NoMembers, RuleSet};

    fn compile(yaml: &str) -> RuleSet {
        RuleSet::from_sources(
            &[("r.yaml".into(), yaml.into())],
            &CompileOptions::default(),
        )
        .unwrap()
    }

    #[test]
    fn the_shipped_rules_read_a_few_fields_and_plan_every_sample_as_with_all_of_them() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let rules = RuleSet::load(&root.join("rules"), &CompileOptions::default()).unwrap();
        let DataFields::Only(kept) = rules.data_fields() else {
            panic!("the shipped rules read fields by name and do not cascade in a cycle");
        };
        for f in [
            "product_id",
            "new_price",
            "old_price",
            "category_ids",
            "review_id",
        ] {
            assert!(kept.iter().any(|k| k == f), "{f} in {kept:?}");
        }
        assert!(
            !kept.iter().any(|k| k == "sku" || k == "currency"),
            "{kept:?}"
        );
        let mut planned = 0;
        for file in ["samples/events.jsonl", "samples/bad-events.jsonl"] {
            let text = std::fs::read_to_string(root.join(file)).unwrap();
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let fallback = || "f".to_owned();
                let whole = decode_event(line.as_bytes(), 1 << 20, &fallback);
                let kept =
                    decode_event_keeping(line.as_bytes(), 1 << 20, rules.data_fields(), &fallback);
                assert_eq!(whole.is_ok(), kept.is_ok(), "{line}");
                let (Ok(whole), Ok(kept)) = (whole, kept) else {
                    continue;
                };
                assert_eq!(
                    rules.plan_event(&whole, &NoMembers),
                    rules.plan_event(&kept, &NoMembers),
                    "{line}"
                );
                planned += 1;
            }
        }
        assert!(planned >= 40, "{planned} samples planned");
    }

    #[test]
    fn data_read_otherwise_than_by_field_name_is_kept_whole() {
        let by_name = compile(
            "rules:\n  - name: a\n    on: a\n    when: data.x > 1\n    delete: [\"k:{y.z}\"]\n",
        );
        assert_eq!(
            *by_name.data_fields(),
            DataFields::only(["x".to_owned(), "y".to_owned()])
        );
        for yaml in [
            "rules:\n  - name: a\n    on: a\n    when: size(data) > 1\n    delete: [\"k\"]\n",
            "rules:\n  - name: a\n    on: a\n    when: data['x'] > 1\n    delete: [\"k\"]\n",
        ] {
            assert_eq!(*compile(yaml).data_fields(), DataFields::All, "{yaml}");
        }
    }

    #[test]
    fn cascades_that_can_cycle_keep_data_whole() {
        // a → b.x → a: the cycle check compares a cascaded `a` with its root's whole data.
        let cycle = "rules:\n  - name: a\n    on: a\n    delete: [\"k:{x}\"]\n    cascade:\n      \
                     - emit: b.x\n        data: { x: \"{x}\" }\n  - name: b\n    on: b.*\n    \
                     delete: [\"k:{x}\"]\n    cascade:\n      - emit: a\n        data: { x: \"{x}\" }\n";
        assert_eq!(*compile(cycle).data_fields(), DataFields::All);
        let chain = cycle.replace("emit: a\n", "emit: c\n");
        assert_eq!(
            *compile(&chain).data_fields(),
            DataFields::only(["x".to_owned()])
        );
    }
}
