//! Completion notices (`[notify]`): after a unit of work is applied, one `invalidation.completed`
//! notice per applied event goes to an SNS topic ([`sns`], `PublishBatch`, 10 per call) and/or a
//! Kafka topic ([`kafka`]), so that cache warmers can refill hot keys right after a change instead
//! of letting the first visitors stampede the database.
//!
//! The notice (JSON, one per applied event, cascades folded into their root event):
//!
//! ```json
//! {"type": "invalidation.completed", "version": 1,
//!  "event": {"id": "e-1", "type": "price.updated", "source": "pricing", "time": "2026-11-23T10:00:00Z"},
//!  "completed_at": "2026-11-23T10:00:01.2Z",
//!  "keys": ["price:1001", "product:1001"], "patterns": [], "tags": ["product:1001"],
//!  "expires": ["reco:product:1001"],
//!  "paths": [{"target": "catalog-cdn", "path": "/api/products/1001"}]}
//! ```
//!
//! `keys` were deleted, `patterns` pattern-deleted, `tags` invalidated, `expires` had their TTL
//! shortened, `paths` accepted by their CDN (CloudFront: the invalidation was created; edges drop
//! the copies within seconds to minutes). A notice larger than SNS allows (256 KiB) has its lists
//! cut and `"truncated": true`. On SNS, the `event_type` message attribute carries the event type
//! for subscription filter policies; on Kafka, the message key is the event id.
//!
//! Failure policy: notices are a warming hint, not part of the invalidation. A notice is sent only
//! after its event's invalidations were applied (so a warmer never refills before the delete), and
//! before the unit of work is acknowledged. A failing sink is retried with backoff for at most
//! `[notify] retry_for` (default 5 s); then the notices are dropped, logged (WARN) and counted
//! (`invalidator_notices_total{outcome="dropped"}`). They never dead-letter an event and never hold
//! acknowledgement longer than `retry_for`: an SNS outage must not stop cache invalidation, while a
//! missed hint costs one cold read (the cache refills on demand, as without a warmer). A unit
//! retried after an outage may send its notices again: warmers must be idempotent (refilling a key
//! twice is harmless).

#[cfg(feature = "kafka")]
pub mod kafka;
/// Builds without the `kafka` cargo feature (the Lambda) have no Kafka client: a Kafka notice
/// topic is refused at start.
#[cfg(not(feature = "kafka"))]
pub mod kafka {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::{Notice, NoticeReport};
    use crate::config::KafkaConfig;

    pub enum KafkaSink {}

    impl KafkaSink {
        pub fn new(_: &KafkaConfig, _: &str, _: Duration) -> Result<KafkaSink, String> {
            Err(
                "config key `notify.kafka_topic`: this build has no Kafka client \
                 (cargo feature `kafka`); use sns_topic_arn"
                    .into(),
            )
        }

        pub async fn publish(&self, _: &[Notice], _: Instant) -> NoticeReport {
            match *self {}
        }
    }
}
pub mod sns;

use std::time::Duration;

use aws_config::SdkConfig;
use indexmap::IndexSet;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::Config;
use crate::event::Event;
use crate::plan::{Action, EventPlan};
use crate::telemetry;

/// The notice type.
pub const NOTICE_TYPE: &str = "invalidation.completed";
/// Largest notice, in bytes (SNS: 256 KiB for a message, and for a whole `PublishBatch`).
pub const MAX_NOTICE_BYTES: usize = 256 * 1024 - 4096;

/// One notice, serialized.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub event_id: String,
    pub event_type: String,
    pub json: String,
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    version: u32,
    event: EventRef<'a>,
    completed_at: &'a str,
    keys: Vec<&'a str>,
    patterns: Vec<&'a str>,
    tags: Vec<&'a str>,
    expires: Vec<&'a str>,
    paths: Vec<PathRef<'a>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    truncated: bool,
}

impl Body<'_> {
    /// The notice as JSON, its longest list cut by a quarter until it fits in
    /// [`MAX_NOTICE_BYTES`].
    fn fit(&mut self) -> String {
        let mut json = serde_json::to_string(self).expect("a notice serializes");
        while json.len() > MAX_NOTICE_BYTES {
            // Cut the longest list by a quarter until it fits.
            self.truncated = true;
            let lens = [
                self.keys.len(),
                self.patterns.len(),
                self.tags.len(),
                self.expires.len(),
                self.paths.len(),
            ];
            let (i, &n) = lens
                .iter()
                .enumerate()
                .max_by_key(|(_, n)| **n)
                .expect("five lists");
            if n == 0 {
                // Every list is empty: what is left is the event itself. Its fields are bounded
                // when decoded; an event built otherwise goes without its source, and stops here
                // whatever its size (the sink then refuses it and counts it dropped).
                self.event.source = None;
                json = serde_json::to_string(self).expect("a notice serializes");
                break;
            }
            let keep = n - n.div_ceil(4);
            match i {
                0 => self.keys.truncate(keep),
                1 => self.patterns.truncate(keep),
                2 => self.tags.truncate(keep),
                3 => self.expires.truncate(keep),
                _ => self.paths.truncate(keep),
            }
            json = serde_json::to_string(self).expect("a notice serializes");
        }
        json
    }
}

#[derive(Serialize)]
struct EventRef<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    time: Option<String>,
}

#[derive(Serialize, PartialEq, Eq, Hash)]
struct PathRef<'a> {
    target: &'a str,
    path: &'a str,
}

impl Notice {
    /// The notice of one applied event: every action of its rules (cascades included).
    pub fn new(event: &Event, plan: &EventPlan, completed_at: &str) -> Notice {
        let mut keys = IndexSet::new();
        let mut patterns = IndexSet::new();
        let mut tags = IndexSet::new();
        let mut expires = IndexSet::new();
        let mut paths = IndexSet::new();
        for hit in plan.hits.iter().filter(|h| h.condition) {
            for a in &hit.actions {
                match a {
                    Action::Delete { key } => {
                        keys.insert(key.as_str());
                    }
                    Action::DeletePattern { pattern } => {
                        patterns.insert(pattern.as_str());
                    }
                    Action::Tag { tag } => {
                        tags.insert(tag.as_str());
                    }
                    Action::Expire { key, .. } => {
                        expires.insert(key.as_str());
                    }
                    Action::Purge { target, path } => {
                        paths.insert(PathRef { target, path });
                    }
                }
            }
        }
        let mut body = Body {
            kind: NOTICE_TYPE,
            version: 1,
            event: EventRef {
                id: &event.id,
                kind: &event.kind,
                source: event.source.as_deref(),
                time: event.time.and_then(|t| t.format(&Rfc3339).ok()),
            },
            completed_at,
            keys: keys.into_iter().collect(),
            patterns: patterns.into_iter().collect(),
            tags: tags.into_iter().collect(),
            expires: expires.into_iter().collect(),
            paths: paths.into_iter().collect(),
            truncated: false,
        };
        let json = body.fit();
        Notice {
            event_id: event.id.to_string(),
            event_type: event.kind.to_string(),
            json,
        }
    }
}

/// The current time as notices write it.
pub fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// What publishing one unit's notices did (each sink counts its own).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct NoticeReport {
    pub sent: u64,
    pub dropped: u64,
}

/// The configured sinks.
#[derive(Default)]
pub struct Notifier {
    sns: Option<sns::SnsSink>,
    kafka: Option<kafka::KafkaSink>,
    retry_for: Duration,
}

impl Notifier {
    /// No sink: nothing is built or sent.
    pub fn disabled() -> Notifier {
        Notifier::default()
    }

    /// Builds the clients of `[notify]` once. `aws` is needed for an SNS topic.
    pub fn from_config(config: &Config, aws: Option<&SdkConfig>) -> Result<Notifier, String> {
        let n = &config.notify;
        let sns = match &n.sns_topic_arn {
            Some(arn) => {
                let aws = aws.ok_or("notify.sns_topic_arn: SNS needs the AWS configuration")?;
                Some(sns::SnsSink::new(
                    aws,
                    arn,
                    n.region.as_deref(),
                    n.endpoint_url.as_ref(),
                ))
            }
            None => None,
        };
        let kafka = match &n.kafka_topic {
            Some(topic) => Some(kafka::KafkaSink::new(&config.kafka, topic, n.retry_for)?),
            None => None,
        };
        Ok(Notifier {
            sns,
            kafka,
            retry_for: n.retry_for,
        })
    }

    pub fn enabled(&self) -> bool {
        self.sns.is_some() || self.kafka.is_some()
    }

    /// Publishes `notices` to every sink, retrying for at most `retry_for`; never fails.
    pub async fn publish(&self, notices: &[Notice]) -> NoticeReport {
        if notices.is_empty() {
            return NoticeReport::default();
        }
        let deadline = tokio::time::Instant::now() + self.retry_for;
        let sns = async {
            match &self.sns {
                Some(s) => Some(s.publish(notices, deadline).await),
                None => None,
            }
        };
        let kafka = async {
            match &self.kafka {
                Some(k) => Some(k.publish(notices, deadline).await),
                None => None,
            }
        };
        let (sns, kafka) = futures::join!(sns, kafka);
        let mut report = NoticeReport::default();
        for (sink, r) in [("sns", sns), ("kafka", kafka)] {
            let Some(r) = r else { continue };
            telemetry::notices(sink, "sent", r.sent);
            telemetry::notices(sink, "dropped", r.dropped);
            report.sent += r.sent;
            report.dropped += r.dropped;
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::RuleHit;

    fn event() -> Event {
        Event {
            id: "e-1".into(),
            id_given: true,
            kind: "price.updated".into(),
            time: Some(time::macros::datetime!(2026-11-23 10:00 UTC)),
            source: Some("pricing".into()),
            data: serde_json::json!({}).into(),
        }
    }

    fn hit(condition: bool, actions: Vec<Action>) -> RuleHit {
        RuleHit {
            rule: "r",
            at: "f:1:1",
            event_id: "e-1".into(),
            event_type: "price.updated".into(),
            depth: 0,
            condition,
            actions,
            redelete_after: None,
        }
    }

    #[test]
    fn notice_shape() {
        let plan = EventPlan {
            hits: vec![
                hit(
                    true,
                    vec![
                        Action::Delete {
                            key: "price:1".into(),
                        },
                        Action::Delete {
                            key: "price:1".into(),
                        },
                        Action::Tag {
                            tag: "product:1".into(),
                        },
                        Action::Expire {
                            key: "reco:1".into(),
                            ttl: Duration::from_secs(30),
                            jitter: 0.0,
                        },
                        Action::Purge {
                            target: "cdn".into(),
                            path: "/api/products/1".into(),
                        },
                    ],
                ),
                hit(
                    false,
                    vec![Action::Delete {
                        key: "never".into(),
                    }],
                ),
            ],
            ..EventPlan::default()
        };
        let n = Notice::new(&event(), &plan, "2026-11-23T10:00:01Z");
        let v: serde_json::Value = serde_json::from_str(&n.json).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "type": "invalidation.completed", "version": 1,
                "event": {"id": "e-1", "type": "price.updated", "source": "pricing",
                          "time": "2026-11-23T10:00:00Z"},
                "completed_at": "2026-11-23T10:00:01Z",
                "keys": ["price:1"], "patterns": [], "tags": ["product:1"], "expires": ["reco:1"],
                "paths": [{"target": "cdn", "path": "/api/products/1"}]
            })
        );
        assert_eq!(n.event_id, "e-1");
        assert_eq!(n.event_type, "price.updated");
    }

    #[test]
    fn an_event_too_large_for_any_notice_ends_without_its_source() {
        // Decoding bounds `source`; an event built otherwise must still not loop forever.
        let mut e = event();
        e.source = Some("s".repeat(300 * 1024).into());
        let plan = EventPlan {
            hits: vec![hit(true, vec![Action::Delete { key: "k".into() }])],
            ..EventPlan::default()
        };
        let n = Notice::new(&e, &plan, "t");
        let v: serde_json::Value = serde_json::from_str(&n.json).unwrap();
        assert_eq!(v["truncated"], true);
        assert!(v["event"].get("source").is_none(), "{}", &n.json[..200]);
        assert!(n.json.len() <= MAX_NOTICE_BYTES, "{}", n.json.len());
    }

    #[test]
    fn a_huge_notice_is_cut_to_fit() {
        let actions = (0..20_000)
            .map(|i| Action::Delete {
                key: format!("category:c{i}:page:0123456789"),
            })
            .collect();
        let plan = EventPlan {
            hits: vec![hit(true, actions)],
            ..EventPlan::default()
        };
        let n = Notice::new(&event(), &plan, "t");
        assert!(n.json.len() <= MAX_NOTICE_BYTES, "{}", n.json.len());
        let v: serde_json::Value = serde_json::from_str(&n.json).unwrap();
        assert_eq!(v["truncated"], true);
        let kept = v["keys"].as_array().unwrap().len();
        assert!(kept > 1000 && kept < 20_000, "{kept}");
    }
}
