//! Cascades that waited for the members of their sets, planned alone once the sets are read.

use super::{Chain, Members, PlanError, RuleSet};
use crate::event::Event;
use crate::plan::{EventPlan, Pending};
use crate::rules::template::RenderError;

impl RuleSet {
    /// Plans the cascades of `plan` (the plan of `event`) that waited for sets `members` now
    /// knows, each in its place: the plan becomes the one [`RuleSet::plan_event`] gives with these
    /// members, and nothing that did not wait is planned again. On an error the event cannot be
    /// planned (and `plan` is left part resumed). `plan` is one this rule set planned.
    pub fn resume(
        &self,
        event: &Event,
        plan: &mut EventPlan,
        members: &dyn Members,
    ) -> Result<(), PlanError> {
        // Places are those of the plan as it was: what went in before a place moves it on.
        let (mut hits, mut notes) = (0, 0);
        let mut waiting = Vec::new();
        for p in std::mem::take(&mut plan.pending) {
            let (at_hit, at_note) = (p.at_hit + hits, p.at_note + notes);
            let Some(sub) = self.walk(event, &p, members)? else {
                waiting.push(Pending {
                    at_hit,
                    at_note,
                    ..p
                });
                continue;
            };
            hits += sub.hits.len();
            notes += sub.notes.len();
            plan.hits.splice(at_hit..at_hit, sub.hits);
            plan.notes.splice(at_note..at_note, sub.notes);
            waiting.extend(sub.pending.into_iter().map(|q| Pending {
                at_hit: q.at_hit + at_hit,
                at_note: q.at_note + at_note,
                ..q
            }));
        }
        plan.pending = waiting;
        list_needs(plan);
        Ok(())
    }

    /// The plan of the events of one waiting cascade, `None` while one of its sets is unknown.
    fn walk(
        &self,
        root: &Event,
        p: &Pending,
        members: &dyn Members,
    ) -> Result<Option<EventPlan>, PlanError> {
        let rule = &self.rules[p.rule];
        let cascade = &rule.cascade[p.cascade];
        let render = |source: RenderError| PlanError::Render {
            rule: rule.name.to_string(),
            source,
        };
        let set = cascade.for_each_member_of.as_ref();
        let source = set.map_or("", |t| t.source());
        let Some(items) = self.members_of(source, &p.sets, members).map_err(render)? else {
            return Ok(None);
        };
        let mut out = EventPlan::default();
        let top = Chain {
            event: root,
            parent: None,
        };
        linked(&top, &p.chain, &mut |chain| {
            let children = self
                .cascade_events(rule, cascade, chain.event, p.cascade, &items)
                .map_err(render)?;
            self.plan_children(chain, p.depth, rule, children, members, &mut out)
        })?;
        Ok(Some(out))
    }
}

impl Chain<'_> {
    /// The cascaded events of the chain, from the planned event (excluded) down to this one.
    pub(super) fn below_root(&self) -> Vec<Event> {
        let mut events = Vec::new();
        let mut link = self;
        while let Some(parent) = link.parent {
            events.push(link.event.clone());
            link = parent;
        }
        events.reverse();
        events
    }
}

/// Calls `f` with the chain `top` → `rest[0]` → ... → the last of `rest`.
fn linked<R>(top: &Chain<'_>, rest: &[Event], f: &mut dyn FnMut(&Chain<'_>) -> R) -> R {
    match rest.split_first() {
        None => f(top),
        Some((event, rest)) => linked(
            &Chain {
                event,
                parent: Some(top),
            },
            rest,
            f,
        ),
    }
}

/// `needs`: the sets the waiting cascades walk, sorted, once each.
pub(super) fn list_needs(plan: &mut EventPlan) {
    let mut needs: Vec<String> = plan.pending.iter().flat_map(|p| p.sets.clone()).collect();
    needs.sort();
    needs.dedup();
    plan.needs = needs;
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use crate::event::{Event, decode_event};
    use crate::rules::{CompileOptions, NoMembers, RuleSet};

    /// Two levels of sets, a plain cascade between two set cascades, a rule after them, and a
    /// chain that comes back to the planned event (a cycle) or reaches the depth limit.
    const RULES: &str = r#"
rules:
  - name: product
    on: product.updated
    delete: ["product:{product_id}"]
    cascade:
      - emit: category.changed
        data: { category_id: "{item}", product_id: "{product_id}" }
        for_each_member_of: "product:{product_id}:categories"
      - emit: product.page_changed
        data: { product_id: "{product_id}" }
      - emit: brand.changed
        data: { brand: "{item}" }
        for_each_member_of: "product:{product_id}:brands"
  - name: product-after
    on: product.updated
    tags: ["product:{product_id}"]
  - name: category
    on: category.changed
    tags: ["category:{category_id}"]
    cascade:
      - emit: page.changed
        data: { page: "{item}", product_id: "{product_id}" }
        for_each_member_of: "category:{category_id}:pages"
  - name: page
    on: page.changed
    delete: ["page:{page}"]
    cascade:
      - emit: product.updated
        data: { product_id: "x{product_id}" }
      - emit: product.updated
        data: { product_id: "{product_id}" }
  - name: product-page
    on: product.page_changed
    delete: ["pp:{product_id}"]
  - name: brand
    on: brand.changed
    delete: ["brand:{brand}"]
"#;

    fn setup() -> (RuleSet, Event, HashMap<String, Vec<String>>) {
        let rules = RuleSet::from_sources(
            &[("r.yaml".into(), RULES.into())],
            &CompileOptions::default(),
        )
        .unwrap();
        let line = br#"{"type":"product.updated","id":"e","data":{"product_id":7}}"#;
        let event = decode_event(line, 1 << 20, &|| "fallback".into()).unwrap();
        let sets = [
            ("product:7:categories", vec!["a", "b"]),
            ("product:7:brands", vec!["x"]),
            ("product:x7:categories", vec!["c"]),
            ("product:x7:brands", vec![]),
            ("category:a:pages", vec!["p1", "p2"]),
            ("category:b:pages", vec![]),
            ("category:c:pages", vec!["p3"]),
        ];
        let all = sets
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
            .collect();
        (rules, event, all)
    }

    /// Resumes `event`'s plan round by round, each round learning `learn(needs)` of the sets it
    /// needs; after each round the plan is the one planned from scratch with what is known.
    fn resumed(learn: fn(&[String]) -> Vec<String>) -> crate::plan::EventPlan {
        let (rules, event, all) = setup();
        let mut plan = rules.plan_event(&event, &NoMembers).unwrap();
        let mut known = HashMap::new();
        let mut rounds = 0;
        while !plan.needs.is_empty() {
            rounds += 1;
            assert!(rounds < 20, "needs {:?}", plan.needs);
            for set in learn(&plan.needs) {
                known.insert(set.clone(), all[&set].clone());
            }
            rules.resume(&event, &mut plan, &known).unwrap();
            assert_eq!(plan, rules.plan_event(&event, &known).unwrap());
        }
        assert!(rounds >= 3, "{rounds} rounds");
        plan
    }

    #[test]
    fn a_resumed_plan_is_the_plan_with_the_members_in_the_same_order() {
        let (rules, event, all) = setup();
        let whole = rules.plan_event(&event, &all).unwrap();
        assert!(whole.needs.is_empty() && whole.pending.is_empty());
        // Not vacuous: every level is there, in depth-first order, and so are both notes.
        let rows: Vec<(&str, u32)> = whole.hits.iter().map(|h| (h.rule, h.depth)).collect();
        assert_eq!(
            rows[..4],
            [("product", 0), ("category", 1), ("page", 2), ("product", 3)]
        );
        assert_eq!(rows.last(), Some(&("product-after", 0)));
        assert!(rows.contains(&("brand", 1)) && rows.contains(&("product-page", 1)));
        assert!(
            whole.notes.iter().any(|n| n.contains("cycle")),
            "{:?}",
            whole.notes
        );
        assert!(whole.notes.iter().any(|n| n.contains("max_cascade_depth")));

        assert_eq!(
            resumed(|needs| needs.to_vec()),
            whole,
            "all needs each round"
        );
        assert_eq!(
            resumed(|needs| needs[..1].to_vec()),
            whole,
            "one set a round"
        );
        assert_eq!(resumed(|needs| needs[needs.len() - 1..].to_vec()), whole);
    }

    #[test]
    fn a_resumed_plan_fails_as_the_plan_with_the_members_does() {
        let (rules, event, mut all) = setup();
        all.insert("category:a:pages".into(), vec!["p1".into(), "*".into()]);
        let expected = rules.plan_event(&event, &all).unwrap_err();
        assert_eq!(expected.reason(), "unsafe_value");
        let mut plan = rules.plan_event(&event, &NoMembers).unwrap();
        let mut first = all.clone();
        first.retain(|set, _| set.starts_with("product:7:"));
        rules.resume(&event, &mut plan, &first).unwrap();
        assert_eq!(plan.needs, ["category:a:pages", "category:b:pages"]);
        assert_eq!(rules.resume(&event, &mut plan, &all), Err(expected));
    }
}
