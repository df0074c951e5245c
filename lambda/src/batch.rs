//! The generic batch handler: a Lambda SNS or SQS event in, the answer Lambda expects out. It knows
//! nothing of rules or Redis: a [`Processor`] (the business function) says what became of each
//! message, a [`DeadLetterSink`] keeps the poison ones.
//!
//! Invariants:
//! - SQS: a message is left out of `batchItemFailures` (so Lambda deletes it from the queue) only
//!   when the processor reported it done, or it was poison and the dead-letter sink acknowledged
//!   it; an outage (the processor's `Err`) reports every message of the batch as failed; a poison
//!   message whose dead-letter write failed, or that has no sink to go to, is reported as failed
//!   (the queue's redrive policy is then its safety net);
//! - SQS FIFO queues: after the first failed message, every later one is reported failed too, so
//!   that a message group is never applied out of order;
//! - SNS (direct subscription, asynchronous invocation): the handler returns an error unless every
//!   message is done or acknowledged by the dead-letter sink, so Lambda retries the invocation and
//!   then hands the event to the function's on-failure destination: nothing is dropped silently.

use std::future::Future;

use aws_lambda_events::event::sqs::SqsBatchResponse;
use invalidator::dead_letter::{DeadLetter, DeadLetterSink};
use invalidator::event::Record;
use serde_json::Value;
use tokio::time::Instant;

pub use crate::message::{EventError, Message, Source, parse};

/// What became of one message.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Applied, skipped or a duplicate: nothing more to do, the message may be deleted.
    Done,
    /// A permanent error: it would fail the same way every time.
    Poison(Poison),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Poison {
    /// A short stable code (`invalid_json`, `unsafe_value`, ...).
    pub reason: &'static str,
    pub error: String,
    pub event_id: Option<String>,
    pub event_type: Option<String>,
}

/// The whole batch could not be processed (Redis or a CDN unreachable, the deadline near): nothing
/// of it may be acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Outage(pub String);

/// The business function: one verdict per message, in order, or an outage for the whole batch.
/// (The futures are not required to be `Send`: the runtime polls one invocation at a time.)
pub trait Processor {
    /// What the business function reports about a batch besides the verdicts (for logs).
    type Summary: Default + std::fmt::Debug + Clone + PartialEq;

    fn process(
        &self,
        messages: &[Message],
        deadline: Option<Instant>,
    ) -> impl Future<Output = Result<(Vec<Verdict>, Self::Summary), Outage>>;
}

/// What one invocation did.
#[derive(Debug, Clone, PartialEq)]
pub struct Report<S> {
    pub source: Source,
    pub messages: usize,
    /// Applied, skipped or duplicates.
    pub done: usize,
    /// Poison messages acknowledged by the dead-letter sink.
    pub dead_lettered: usize,
    /// Ids of the messages not done (SQS: the `batchItemFailures`), in batch order.
    pub failed: Vec<String>,
    /// Why the whole batch failed, if it did.
    pub outage: Option<String>,
    /// Why single messages failed (poison without a sink, a failed dead-letter write, FIFO order).
    pub failures: Vec<(String, String)>,
    /// The business function's own account (default after an outage).
    pub summary: S,
}

/// The invocation failed: Lambda will retry it (SNS) or the answer could not be built.
#[derive(thiserror::Error)]
pub enum HandlerError {
    #[error(transparent)]
    Event(#[from] EventError),
    #[error("{failed} of {messages} SNS messages not done, Lambda will retry: {cause}")]
    NotDone {
        failed: usize,
        messages: usize,
        cause: String,
    },
}

/// As its message: `lambda_runtime` logs a handler's error with `{:?}`.
impl std::fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl<S> Report<S> {
    /// The answer for Lambda: the partial batch response for SQS, an error for an SNS invocation
    /// with anything not done.
    pub fn response(&self) -> Result<Value, HandlerError> {
        match self.source {
            Source::Sqs { .. } => {
                let mut r = SqsBatchResponse::default();
                for id in &self.failed {
                    r.add_failure(id.clone());
                }
                Ok(serde_json::to_value(r).expect("a batch response serializes"))
            }
            Source::Sns if self.failed.is_empty() => Ok(Value::Null),
            Source::Sns => Err(HandlerError::NotDone {
                failed: self.failed.len(),
                messages: self.messages,
                cause: self
                    .outage
                    .clone()
                    .or_else(|| self.failures.first().map(|(_, e)| e.clone()))
                    .unwrap_or_default(),
            }),
        }
    }
}

/// Processes one batch: the business function, then the dead letters, then the verdict per
/// message. `now` stamps the dead letters (RFC 3339).
pub async fn handle<P: Processor, D: DeadLetterSink>(
    processor: &P,
    sink: Option<&D>,
    source: Source,
    messages: &[Message],
    deadline: Option<Instant>,
    now: &str,
) -> Report<P::Summary> {
    let mut report = Report {
        source,
        messages: messages.len(),
        done: 0,
        dead_lettered: 0,
        failed: Vec::new(),
        outage: None,
        failures: Vec::new(),
        summary: P::Summary::default(),
    };
    if messages.is_empty() {
        return report;
    }
    let verdicts = match processor.process(messages, deadline).await {
        Ok((v, summary)) => {
            report.summary = summary;
            v
        }
        Err(Outage(cause)) => {
            report.failed = messages.iter().map(|m| m.id.clone()).collect();
            report.outage = Some(cause);
            return report;
        }
    };
    assert_eq!(
        verdicts.len(),
        messages.len(),
        "the processor gives one verdict per message"
    );
    let mut acks = Acks::new(messages.len());
    report.done = acks.done(&verdicts);
    report.dead_lettered = acks.dead_letter(sink, messages, &verdicts, now).await;
    if source == (Source::Sqs { fifo: true }) {
        acks.keep_fifo_order(messages);
    }
    for (i, m) in messages.iter().enumerate() {
        if !acks.ok[i] {
            report.failed.push(m.id.clone());
            let why = acks.why[i].take().unwrap_or_default();
            report.failures.push((m.id.clone(), why));
        }
    }
    report
}

/// Which messages of a batch may be acknowledged, and why the others may not.
struct Acks {
    ok: Vec<bool>,
    why: Vec<Option<String>>,
}

impl Acks {
    fn new(n: usize) -> Self {
        Acks {
            ok: vec![false; n],
            why: vec![None; n],
        }
    }

    /// The messages done; returns how many.
    fn done(&mut self, verdicts: &[Verdict]) -> usize {
        for (i, v) in verdicts.iter().enumerate() {
            self.ok[i] = *v == Verdict::Done;
        }
        self.ok.iter().filter(|o| **o).count()
    }

    /// Writes the poison messages to the sink; those it acknowledged may be acknowledged.
    /// Returns how many.
    async fn dead_letter<D: DeadLetterSink>(
        &mut self,
        sink: Option<&D>,
        messages: &[Message],
        verdicts: &[Verdict],
        now: &str,
    ) -> usize {
        let poison: Vec<(usize, &Poison, Record)> = messages
            .iter()
            .zip(verdicts)
            .enumerate()
            .filter_map(|(i, (m, v))| match v {
                Verdict::Poison(p) => Some((i, p, m.record())),
                Verdict::Done => None,
            })
            .collect();
        for (i, p, _) in &poison {
            tracing::warn!(message_id = %messages[*i].id, event_id = p.event_id.as_deref().unwrap_or("-"),
                event_type = p.event_type.as_deref().unwrap_or("-"), reason = p.reason,
                error = %p.error, "poison message");
        }
        let Some(sink) = sink.filter(|_| !poison.is_empty()) else {
            for (i, p, _) in &poison {
                self.why[*i] = Some(format!(
                    "{}: {} (no dead-letter queue configured)",
                    p.reason, p.error
                ));
            }
            return 0;
        };
        let letters: Vec<DeadLetter<'_>> = poison
            .iter()
            .map(|(_, p, record)| {
                let mut letter = DeadLetter::new(record, p.reason, &p.error, now);
                letter.event_id = p.event_id.as_deref();
                letter.event_type = p.event_type.as_deref();
                letter
            })
            .collect();
        let failed = sink.send(&letters).await;
        for (i, _, _) in &poison {
            self.ok[*i] = true;
        }
        for (l, error) in &failed {
            let i = poison[*l].0;
            self.ok[i] = false;
            tracing::error!(message_id = %messages[i].id, %error,
                "dead-letter write failed: the message is reported as failed and will be retried");
            self.why[i] = Some(format!("dead-letter write failed: {error}"));
        }
        poison.iter().filter(|(i, _, _)| self.ok[*i]).count()
    }

    /// SQS FIFO: after the first message not acknowledged, none is, so that a message group is
    /// never applied out of order.
    fn keep_fifo_order(&mut self, messages: &[Message]) {
        let Some(first) = self.ok.iter().position(|o| !o) else {
            return;
        };
        for i in first + 1..messages.len() {
            if self.ok[i] {
                self.ok[i] = false;
                self.why[i] = Some(format!(
                    "after message {} in a FIFO batch (kept in order)",
                    messages[first].id
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Verdicts from the body: "ok", "poison", or an outage for "down".
    struct Fake;

    impl Processor for Fake {
        type Summary = ();

        async fn process(
            &self,
            messages: &[Message],
            _deadline: Option<Instant>,
        ) -> Result<(Vec<Verdict>, ()), Outage> {
            if messages.iter().any(|m| m.body.as_deref() == Some("down")) {
                return Err(Outage("Redis unavailable".into()));
            }
            let verdicts = messages
                .iter()
                .map(|m| match m.body.as_deref() {
                    Some("ok") => Verdict::Done,
                    _ => Verdict::Poison(Poison {
                        reason: "invalid_json",
                        error: "bad".into(),
                        event_id: None,
                        event_type: None,
                    }),
                })
                .collect();
            Ok((verdicts, ()))
        }
    }

    /// Keeps what it is sent; refuses the bodies listed in `refuse`.
    #[derive(Default)]
    struct Sink {
        refuse: Vec<&'static str>,
        kept: Mutex<Vec<String>>,
    }

    impl DeadLetterSink for Sink {
        async fn send(&self, letters: &[DeadLetter<'_>]) -> Vec<(usize, String)> {
            let mut failed = Vec::new();
            for (i, l) in letters.iter().enumerate() {
                let body = String::from_utf8_lossy(&l.record.payload);
                if self.refuse.contains(&&*body) {
                    failed.push((i, "refused".into()));
                } else {
                    let id = l
                        .record
                        .position
                        .message_id()
                        .unwrap_or_default()
                        .to_owned();
                    self.kept.lock().unwrap().push(id);
                }
            }
            failed
        }
    }

    fn msgs(bodies: &[&str]) -> Vec<Message> {
        bodies
            .iter()
            .enumerate()
            .map(|(i, b)| Message {
                id: format!("m{i}"),
                body: Some((*b).to_owned()),
                previous_attempts: 0,
                source_arn: None,
                group_id: None,
            })
            .collect()
    }

    const SQS: Source = Source::Sqs { fifo: false };

    #[tokio::test]
    async fn sqs_poison_goes_to_the_sink_and_is_acknowledged() {
        let sink = Sink::default();
        let m = msgs(&["ok", "{bad", "ok"]);
        let r = handle(&Fake, Some(&sink), SQS, &m, None, "t").await;
        assert_eq!((r.done, r.dead_lettered), (2, 1));
        assert!(r.failed.is_empty());
        assert_eq!(*sink.kept.lock().unwrap(), vec!["m1".to_string()]);
        assert_eq!(
            r.response().unwrap(),
            serde_json::json!({"batchItemFailures": []})
        );
    }

    #[tokio::test]
    async fn sqs_failed_dead_letter_write_is_a_batch_item_failure() {
        let sink = Sink {
            refuse: vec!["{refused"],
            ..Sink::default()
        };
        let m = msgs(&["{refused", "ok", "{bad"]);
        let r = handle(&Fake, Some(&sink), SQS, &m, None, "t").await;
        assert_eq!(r.failed, vec!["m0".to_string()]);
        assert_eq!(r.dead_lettered, 1);
        assert_eq!(
            r.response().unwrap(),
            serde_json::json!({"batchItemFailures": [{"itemIdentifier": "m0"}]})
        );
    }

    #[tokio::test]
    async fn sqs_without_sink_poison_is_left_to_the_redrive_policy() {
        let m = msgs(&["ok", "{bad"]);
        let r = handle::<_, Sink>(&Fake, None, SQS, &m, None, "t").await;
        assert_eq!(r.failed, vec!["m1".to_string()]);
        assert!(r.failures[0].1.contains("no dead-letter queue"));
    }

    #[tokio::test]
    async fn outage_fails_every_message_and_writes_no_dead_letter() {
        let sink = Sink::default();
        let m = msgs(&["ok", "{bad", "down"]);
        let r = handle(&Fake, Some(&sink), SQS, &m, None, "t").await;
        assert_eq!(r.failed, vec!["m0", "m1", "m2"]);
        assert!(sink.kept.lock().unwrap().is_empty());
        assert_eq!(r.outage.as_deref(), Some("Redis unavailable"));
    }

    #[tokio::test]
    async fn fifo_fails_everything_after_the_first_failure() {
        let sink = Sink {
            refuse: vec!["{refused"],
            ..Sink::default()
        };
        let m = msgs(&["ok", "{refused", "ok", "{bad"]);
        let r = handle(
            &Fake,
            Some(&sink),
            Source::Sqs { fifo: true },
            &m,
            None,
            "t",
        )
        .await;
        assert_eq!(r.failed, vec!["m1", "m2", "m3"]);
    }

    #[tokio::test]
    async fn sns_errors_unless_everything_is_done() {
        let sink = Sink::default();
        let r = handle(&Fake, Some(&sink), Source::Sns, &msgs(&["{bad"]), None, "t").await;
        assert_eq!(r.response().unwrap(), Value::Null);
        let r = handle::<_, Sink>(&Fake, None, Source::Sns, &msgs(&["{bad"]), None, "t").await;
        let e = r.response().unwrap_err().to_string();
        assert!(e.contains("no dead-letter queue"), "{e}");
        let r = handle(&Fake, Some(&sink), Source::Sns, &msgs(&["down"]), None, "t").await;
        assert!(r.response().is_err());
    }
}
