//! The business function: a batch of messages through the shared engine (decode, dedupe, plan,
//! coalesce, Redis, CDN), one [`Verdict`] per message.
//!
//! Invariants:
//! - the whole batch is one unit of work: identical actions of its events are applied once;
//! - an engine outage, or the invocation deadline reached before the unit is applied, is an
//!   [`Outage`]: nothing of the batch is reported done;
//! - `redelete_after`s run before the invocation returns (Lambda freezes the sandbox after it):
//!   at their time when it is within `[lambda] max_redelete_wait`, at that limit otherwise (early
//!   rather than never), and never past the deadline. A failed redelete is logged, not retried:
//!   the events it follows were applied.

use std::sync::Arc;
use std::time::Duration;

use invalidator::engine::{Engine, EngineError, Outcome};
use invalidator::event::{DecodeError, Expanded};
use invalidator::plan::Plan;
use tokio::time::Instant;

use crate::batch::{Message, Outage, Poison, Processor, Verdict};

/// The engine behind the Lambda.
pub struct Invalidate {
    pub engine: Arc<Engine>,
}

/// What the last unit did, for the invocation's log line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub applied: usize,
    pub skipped: usize,
    pub duplicate: usize,
    pub dead_lettered: usize,
    pub keys_removed: u64,
    pub paths: u64,
    pub redeletes: usize,
}

impl Invalidate {
    pub fn new(engine: Arc<Engine>) -> Self {
        Invalidate { engine }
    }

    fn input(m: &Message) -> Expanded {
        match &m.body {
            Some(_) => Expanded::Raw(m.record()),
            None => Expanded::failed(
                m.record(),
                DecodeError::InvalidEnvelope(format!("message {} has no body", m.id)),
            ),
        }
    }

    /// Processes the batch and says what the unit did.
    async fn process_counted(
        &self,
        messages: &[Message],
        deadline: Option<Instant>,
    ) -> Result<(Vec<Verdict>, Counts), Outage> {
        let late = || Outage("the invocation deadline came before the batch was applied".into());
        // A deadline already passed starts nothing. (`timeout_at` alone would let a unit that
        // finishes within the timer's 1 ms resolution through.)
        if deadline.is_some_and(|d| d <= Instant::now()) {
            return Err(late());
        }
        let inputs = messages.iter().map(Self::input).collect();
        let work = self.engine.process(inputs, false);
        let unit = match deadline {
            Some(d) => tokio::time::timeout_at(d, work).await.map_err(|_| late())?,
            None => work.await,
        }
        .map_err(|e| match e {
            EngineError::Redis(e) => Outage(e.to_string()),
            EngineError::Cdn(e) => Outage(e.to_string()),
        })?;
        let mut counts = Counts {
            keys_removed: unit.redis.keys_removed,
            paths: unit.cdn.purged + unit.cdn.logged,
            ..Counts::default()
        };
        let verdicts = unit
            .items
            .iter()
            .map(|item| match &item.outcome {
                Outcome::Applied => {
                    counts.applied += 1;
                    Verdict::Done
                }
                Outcome::Skipped => {
                    counts.skipped += 1;
                    Verdict::Done
                }
                Outcome::Duplicate => {
                    counts.duplicate += 1;
                    Verdict::Done
                }
                Outcome::DeadLettered { reason, error } => {
                    counts.dead_lettered += 1;
                    let (event_id, event_type) = match &item.event {
                        Some((id, kind)) => (Some(id.to_string()), Some(kind.to_string())),
                        None => (None, None),
                    };
                    Verdict::Poison(Poison {
                        reason,
                        error: error.clone(),
                        event_id,
                        event_type,
                    })
                }
            })
            .collect();
        counts.redeletes = self.redeletes(&unit.plan, deadline).await;
        Ok((verdicts, counts))
    }

    /// Runs the unit's redeletes (see the module invariants); returns how many keys and tags were
    /// deleted again.
    async fn redeletes(&self, plan: &Plan, deadline: Option<Instant>) -> usize {
        let applied = Instant::now();
        let cap = self.engine.config.lambda.max_redelete_wait;
        let mut done = 0;
        for (after, r) in &plan.redeletes {
            let mut at = applied + after.0.min(cap);
            if let Some(d) = deadline {
                at = at.min(d);
            }
            if after.0 > cap {
                tracing::info!(after = ?after.0, max_redelete_wait = ?cap,
                    "redelete_after is longer than an invocation waits: run early");
            }
            tokio::time::sleep_until(at).await;
            let left = deadline.map_or(Duration::from_secs(30), |d| {
                d.saturating_duration_since(Instant::now())
            });
            match tokio::time::timeout(left, self.engine.redelete(r)).await {
                Ok(Ok(_)) => done += r.len(),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, keys = r.len(), "redelete failed (the events were applied)")
                }
                Err(_) => {
                    tracing::warn!(
                        keys = r.len(),
                        "redelete not run: the invocation deadline came"
                    )
                }
            }
        }
        done
    }
}

impl Processor for Invalidate {
    type Summary = Counts;

    async fn process(
        &self,
        messages: &[Message],
        deadline: Option<Instant>,
    ) -> Result<(Vec<Verdict>, Counts), Outage> {
        self.process_counted(messages, deadline).await
    }
}
