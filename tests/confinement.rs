//! Confinement: a value of an event that could reach other keys than its own (a glob, a path, a
//! command, an empty or huge string) or that is not a scalar is dead-lettered, and nothing of its
//! event is applied. Replayed through the binary against the real local Redis.
//!
//! Each test is a case folder `tests/fixtures/confinement/{test name}/` (see tests/common/spec.rs):
//! every hostile value is an event of `events.jsonl` whose id names it, and a dead letter that is
//! missing or has another reason is reported under that id.

mod common;

use common::spec;

#[test]
fn hostile_values_are_dead_lettered_and_remove_nothing() {
    spec::check(
        "confinement",
        "hostile_values_are_dead_lettered_and_remove_nothing",
    );
}

#[test]
fn values_of_the_wrong_kind_are_template_errors() {
    spec::check(
        "confinement",
        "values_of_the_wrong_kind_are_template_errors",
    );
}
