//! Notices to an SNS topic with `PublishBatch`: at most 10 entries and 256 KiB per call. Entries
//! SNS failed on its side are retried with backoff until the deadline; entries it refused as the
//! sender's fault are dropped at once (retrying would not help). A FIFO topic (`.fifo`) gets the
//! event type as message group and a content hash as deduplication id.

use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_sns::Client;
use aws_sdk_sns::config::Region;
use aws_sdk_sns::error::DisplayErrorContext;
use aws_sdk_sns::types::{MessageAttributeValue, PublishBatchRequestEntry};
use backon::BackoffBuilder;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::{MAX_NOTICE_BYTES, Notice, NoticeReport};
use crate::config::{HttpUrl, SnsTopicArn};

const MAX_ENTRIES: usize = 10;

pub struct SnsSink {
    client: Client,
    topic_arn: String,
    fifo: bool,
}

impl SnsSink {
    /// The region is `region`, else the one in the ARN.
    pub fn new(
        aws: &SdkConfig,
        topic_arn: &SnsTopicArn,
        region: Option<&str>,
        endpoint_url: Option<&HttpUrl>,
    ) -> SnsSink {
        let region = region.unwrap_or(topic_arn.region());
        let mut conf =
            aws_sdk_sns::config::Builder::from(aws).region(Region::new(region.to_owned()));
        if let Some(url) = endpoint_url {
            conf = conf.endpoint_url(url.as_str());
        }
        SnsSink {
            client: Client::from_conf(conf.build()),
            topic_arn: topic_arn.as_str().to_owned(),
            fifo: topic_arn.is_fifo(),
        }
    }

    /// Publishes `notices`; what is not accepted by `deadline` is dropped (and logged).
    pub async fn publish(&self, notices: &[Notice], deadline: Instant) -> NoticeReport {
        let mut report = NoticeReport::default();
        for chunk in chunks(notices) {
            let mut todo: Vec<&Notice> = chunk;
            let mut backoff =
                crate::backoff::jittered(Duration::from_millis(100), Duration::from_secs(2))
                    .build();
            loop {
                let (left, error) =
                    match tokio::time::timeout_at(deadline, self.publish_batch(&todo)).await {
                        Ok(Ok((left, dropped))) => {
                            report.dropped += dropped;
                            report.sent += (todo.len() - left.len()) as u64 - dropped;
                            (left, None)
                        }
                        Ok(Err(e)) => (todo.clone(), Some(e)),
                        Err(_) => (todo.clone(), Some("timed out".to_owned())),
                    };
                if left.is_empty() {
                    break;
                }
                let wait = backoff.next().unwrap_or(Duration::from_secs(2));
                if Instant::now() + wait >= deadline {
                    tracing::warn!(topic = %self.topic_arn, notices = left.len(),
                        error = error.as_deref().unwrap_or("entries failed"),
                        "SNS notices dropped after retrying (they are a warming hint; invalidation is done)");
                    report.dropped += left.len() as u64;
                    break;
                }
                tokio::time::sleep(wait).await;
                todo = left;
            }
        }
        report
    }

    /// One call. Ok: the entries to retry (SNS's fault) and the number dropped (sender's fault).
    async fn publish_batch<'a>(
        &self,
        notices: &[&'a Notice],
    ) -> Result<(Vec<&'a Notice>, u64), String> {
        let mut entries = Vec::with_capacity(notices.len());
        for (i, n) in notices.iter().enumerate() {
            let mut e = PublishBatchRequestEntry::builder()
                .id(i.to_string())
                .message(&n.json)
                .message_attributes(
                    "event_type",
                    MessageAttributeValue::builder()
                        .data_type("String")
                        .string_value(&n.event_type)
                        .build()
                        .map_err(|e| e.to_string())?,
                );
            if self.fifo {
                let hash = Sha256::digest(n.json.as_bytes());
                let dedup: String = hash[..16].iter().map(|b| format!("{b:02x}")).collect();
                e = e
                    .message_group_id(&n.event_type)
                    .message_deduplication_id(dedup);
            }
            entries.push(e.build().map_err(|e| e.to_string())?);
        }
        let out = self
            .client
            .publish_batch()
            .topic_arn(&self.topic_arn)
            .set_publish_batch_request_entries(Some(entries))
            .send()
            .await
            .map_err(|e| format!("PublishBatch: {}", DisplayErrorContext(&e)))?;
        let mut retry = Vec::new();
        let mut dropped = 0;
        for f in out.failed() {
            let Some(n) = f.id().parse::<usize>().ok().and_then(|i| notices.get(i)) else {
                continue;
            };
            if f.sender_fault() {
                tracing::warn!(topic = %self.topic_arn, event_id = %n.event_id, code = f.code(),
                    error = f.message().unwrap_or(""), "SNS refused a notice; dropped");
                dropped += 1;
            } else {
                retry.push(*n);
            }
        }
        Ok((retry, dropped))
    }
}

/// Batches of at most 10 notices and `MAX_NOTICE_BYTES` in all (a notice is never larger).
fn chunks(notices: &[Notice]) -> Vec<Vec<&Notice>> {
    let mut out: Vec<Vec<&Notice>> = Vec::new();
    let mut bytes = 0;
    for n in notices {
        let fits = out
            .last()
            .is_some_and(|c| c.len() < MAX_ENTRIES && bytes + n.json.len() <= MAX_NOTICE_BYTES);
        if !fits {
            out.push(Vec::with_capacity(MAX_ENTRIES));
            bytes = 0;
        }
        bytes += n.json.len();
        out.last_mut().expect("pushed").push(n);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(bytes: usize) -> Notice {
        Notice {
            event_id: "e".into(),
            event_type: "t".into(),
            json: "x".repeat(bytes),
        }
    }

    #[test]
    fn batches_of_ten_within_the_size_limit() {
        let small: Vec<Notice> = (0..25).map(|_| notice(100)).collect();
        let sizes: Vec<usize> = chunks(&small).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![10, 10, 5]);
        let big: Vec<Notice> = (0..5).map(|_| notice(100_000)).collect();
        let sizes: Vec<usize> = chunks(&big).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![2, 2, 1]);
        assert!(chunks(&[]).is_empty());
    }
}
