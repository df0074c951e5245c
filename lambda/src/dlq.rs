//! The SQS dead-letter queue of poison messages (`[lambda] dlq_url`), through `SendMessageBatch`:
//! the shared [`DeadLetterSink`] of invalidator.
//!
//! Invariants:
//! - the body is the original payload, byte for byte (the SQS body or the SNS `Message`), so the
//!   queue's own "redrive to source" sends an SQS message back as it came;
//! - the metadata travels as message attributes named and filled as every other sink's
//!   ([`DeadLetter::fields`]: `invalidator.reason`, `invalidator.error`, `invalidator.attempts`,
//!   `invalidator.time`, `invalidator.event_id`, `invalidator.event_type`,
//!   `invalidator.source.message_id`, `invalidator.source.arn`, ...), at most SQS's 10;
//! - a letter counts as written only when SQS accepted it (listed as successful); everything else
//!   is returned as failed, with the error.

use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};

use invalidator::dead_letter::{DeadLetter, DeadLetterSink, cut};

/// Most entries of one `SendMessageBatch`.
const MAX_ENTRIES: usize = 10;
/// Most bytes of one `SendMessageBatch` (bodies and attributes), the historical SQS limit.
const MAX_BATCH_BYTES: usize = 256 * 1024;
/// Most message attributes SQS takes on one message.
const MAX_ATTRIBUTES: usize = 10;

pub struct SqsDeadLetters {
    client: Client,
    queue_url: String,
    fifo: bool,
}

impl SqsDeadLetters {
    /// A client from the standard AWS chain (region, credentials, and `AWS_ENDPOINT_URL_SQS` or
    /// `AWS_ENDPOINT_URL` for an emulator).
    pub async fn from_env(queue_url: &str) -> Self {
        let conf = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        Self::new(Client::new(&conf), queue_url)
    }

    pub fn new(client: Client, queue_url: &str) -> Self {
        SqsDeadLetters {
            client,
            queue_url: queue_url.to_owned(),
            fifo: queue_url.ends_with(".fifo"),
        }
    }

    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    fn entry(&self, id: usize, l: &DeadLetter<'_>) -> (SendMessageBatchRequestEntry, usize) {
        let body = String::from_utf8_lossy(&l.record.payload).into_owned();
        let mut size = body.len();
        let mut e = SendMessageBatchRequestEntry::builder()
            .id(id.to_string())
            .message_body(body);
        for (name, value) in l.fields().into_iter().take(MAX_ATTRIBUTES) {
            let kind = if name == "invalidator.attempts" {
                "Number"
            } else {
                "String"
            };
            size += name.len() + value.len() + kind.len();
            e = e.message_attributes(
                name,
                MessageAttributeValue::builder()
                    .data_type(kind)
                    .string_value(value)
                    .build()
                    .expect("data type is set"),
            );
        }
        if self.fifo {
            let carried = l.record.carried.as_deref();
            let group = carried.and_then(|c| c.group_id.clone());
            let id = l.record.position.message_id().unwrap_or_default();
            e = e
                .message_group_id(group.unwrap_or_else(|| "invalidator-dlq".into()))
                .message_deduplication_id(cut(id, 128));
        }
        (e.build().expect("id and body are set"), size)
    }
}

impl DeadLetterSink for SqsDeadLetters {
    async fn send(&self, letters: &[DeadLetter<'_>]) -> Vec<(usize, String)> {
        let mut failed = Vec::new();
        let mut chunk: Vec<(usize, SendMessageBatchRequestEntry)> = Vec::new();
        let mut chunk_bytes = 0;
        for (i, l) in letters.iter().enumerate() {
            let (entry, size) = self.entry(i, l);
            if !chunk.is_empty()
                && (chunk.len() == MAX_ENTRIES || chunk_bytes + size > MAX_BATCH_BYTES)
            {
                failed.extend(self.send_chunk(std::mem::take(&mut chunk)).await);
                chunk_bytes = 0;
            }
            chunk_bytes += size;
            chunk.push((i, entry));
        }
        if !chunk.is_empty() {
            failed.extend(self.send_chunk(chunk).await);
        }
        failed.sort_by_key(|(i, _)| *i);
        failed
    }
}

impl SqsDeadLetters {
    async fn send_chunk(
        &self,
        chunk: Vec<(usize, SendMessageBatchRequestEntry)>,
    ) -> Vec<(usize, String)> {
        let ids: Vec<usize> = chunk.iter().map(|(i, _)| *i).collect();
        let result = self
            .client
            .send_message_batch()
            .queue_url(&self.queue_url)
            .set_entries(Some(chunk.into_iter().map(|(_, e)| e).collect()))
            .send()
            .await;
        match result {
            Ok(out) => {
                let ok: std::collections::HashSet<usize> = out
                    .successful()
                    .iter()
                    .filter_map(|s| s.id().parse().ok())
                    .collect();
                let mut failed: Vec<(usize, String)> = out
                    .failed()
                    .iter()
                    .filter_map(|f| {
                        let i = f.id().parse().ok()?;
                        Some((
                            i,
                            format!(
                                "SQS refused the dead letter: {} {}",
                                f.code(),
                                f.message().unwrap_or_default()
                            ),
                        ))
                    })
                    .collect();
                // Anything neither listed as successful nor as failed is not known to be written.
                for i in ids {
                    if !ok.contains(&i) && !failed.iter().any(|(f, _)| *f == i) {
                        failed.push((i, "SQS did not confirm the dead letter".into()));
                    }
                }
                failed
            }
            Err(e) => {
                let msg = format!("SendMessageBatch failed: {}", DisplayErrorContext(&e));
                ids.into_iter().map(|i| (i, msg.clone())).collect()
            }
        }
    }
}
