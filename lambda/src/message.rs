//! The messages of a Lambda invocation: an SQS or SNS event document read into [`Message`]s, and
//! a message as the [`Record`] the engine and the dead-letter queue take.

use aws_lambda_events::event::sns::SnsEvent;
use aws_lambda_events::event::sqs::SqsEvent;
use invalidator::event::{Carried, Position, Record};
use serde_json::Value;

/// One message of a batch, as the business function sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// SQS `messageId` or SNS `MessageId`: what `batchItemFailures` names.
    pub id: String,
    /// The SQS body or the SNS `Message`; `None` when the record carries none.
    pub body: Option<String>,
    /// Deliveries before this one (SQS `ApproximateReceiveCount` - 1; 0 for SNS).
    pub previous_attempts: u32,
    /// The queue or topic ARN.
    pub source_arn: Option<String>,
    /// The SQS FIFO message group, kept for a FIFO dead-letter queue.
    pub group_id: Option<String>,
}

impl Message {
    /// The message as a record: its body byte for byte, where it came from, and its ARN and FIFO
    /// group (for the dead-letter queue).
    pub fn record(&self) -> Record {
        let position = Position::message(&self.id);
        let body = self.body.clone().unwrap_or_default();
        let mut record = Record::new(body.into_bytes(), position);
        record.attempts = self.previous_attempts;
        if self.source_arn.is_some() || self.group_id.is_some() {
            record.carried = Some(std::sync::Arc::new(Carried {
                source_arn: self.source_arn.clone(),
                group_id: self.group_id.clone(),
                ..Carried::default()
            }));
        }
        record
    }
}

/// Where a batch came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Sqs { fifo: bool },
    Sns,
}

impl Source {
    pub fn label(self) -> &'static str {
        match self {
            Source::Sqs { .. } => "sqs",
            Source::Sns => "sns",
        }
    }
}

/// An invocation payload that is neither a Lambda SQS nor SNS event.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("not a Lambda SQS or SNS event: {0}")]
    Unsupported(String),
    #[error("malformed Lambda {kind} event: {error}")]
    Malformed {
        kind: &'static str,
        error: serde_json::Error,
    },
}

/// Reads the messages of a Lambda SQS or SNS event.
pub fn parse(event: Value) -> Result<(Source, Vec<Message>), EventError> {
    let first = event
        .get("Records")
        .and_then(Value::as_array)
        .ok_or_else(|| EventError::Unsupported("no `Records` list".into()))?
        .first();
    let Some(first) = first else {
        return Ok((Source::Sqs { fifo: false }, Vec::new()));
    };
    let source = first
        .get("eventSource")
        .or_else(|| first.get("EventSource"))
        .and_then(Value::as_str);
    match source {
        Some("aws:sqs") => {
            let event: SqsEvent = serde_json::from_value(event)
                .map_err(|error| EventError::Malformed { kind: "SQS", error })?;
            let fifo = event
                .records
                .first()
                .and_then(|r| r.event_source_arn.as_deref())
                .is_some_and(|arn| arn.ends_with(".fifo"));
            let messages = event
                .records
                .into_iter()
                .map(|r| {
                    let receives: u32 = r
                        .attributes
                        .get("ApproximateReceiveCount")
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(1);
                    Message {
                        id: r.message_id.unwrap_or_default(),
                        body: r.body,
                        previous_attempts: receives.saturating_sub(1),
                        source_arn: r.event_source_arn,
                        group_id: r.attributes.get("MessageGroupId").cloned(),
                    }
                })
                .collect();
            Ok((Source::Sqs { fifo }, messages))
        }
        Some("aws:sns") => {
            let event: SnsEvent = serde_json::from_value(event)
                .map_err(|error| EventError::Malformed { kind: "SNS", error })?;
            let messages = event
                .records
                .into_iter()
                .map(|r| Message {
                    id: r.sns.message_id,
                    body: Some(r.sns.message),
                    previous_attempts: 0,
                    source_arn: Some(r.sns.topic_arn),
                    group_id: None,
                })
                .collect();
            Ok((Source::Sns, messages))
        }
        other => Err(EventError::Unsupported(format!(
            "the first record's event source is {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SQS: Source = Source::Sqs { fifo: false };

    #[test]
    fn parses_sqs_and_sns_documents() {
        let sqs: Value = serde_json::from_str(include_str!("../tests/fixtures/sqs-batch.json"))
            .expect("fixture");
        let (source, m) = parse(sqs).unwrap();
        assert_eq!(source, SQS);
        assert_eq!(m.len(), 10);
        assert_eq!(m[0].id, "3f3f6a52-0f4e-4a7e-9b2b-4c1f0d8e0a01");
        assert_eq!(m[0].previous_attempts, 0);
        let sns: Value = serde_json::from_str(include_str!("../tests/fixtures/sns-price.json"))
            .expect("fixture");
        let (source, m) = parse(sns).unwrap();
        assert_eq!(source, Source::Sns);
        assert_eq!(m.len(), 1);
        assert!(m[0].body.as_deref().unwrap().contains("price.updated"));
        assert!(matches!(
            parse(serde_json::json!({"Records": [{"eventSource": "aws:s3"}]})),
            Err(EventError::Unsupported(_))
        ));
        assert!(matches!(
            parse(serde_json::json!({"hello": 1})),
            Err(EventError::Unsupported(_))
        ));
    }
}
