//! # invalidator
//!
//! Keeps caches honest. The whole flow, for every mode (replay, Kafka worker, Lambda):
//!
//! ```text
//! source (files, Kafka, SNS/SQS)      yields Records: payload bytes + position + ack handle
//!   → event::decode                   bytes → Event, or a permanent DecodeError (→ DLQ)
//!   → engine: dedupe                  ids seen within the window are not applied again
//!   → rules::RuleSet::plan_event      Event → EventPlan (conditions, templates, cascades), pure
//!   → plan::Plan                      all events of a unit coalesced into one set of actions
//!   → apply (redis, cdn)              the only I/O on targets; transient errors retry with backoff;
//!                                     CloudFront paths of every unit in flight share one batch window
//!   → apply::notify                   invalidation.completed notices (SNS, Kafka), best effort
//!   → ack                             only after the effect, or after the DLQ write
//! ```
//!
//! The pure core (`event`, `rules`, `plan`) knows nothing of tokio, Redis, Kafka or AWS; every
//! effect lives behind `apply`.

pub mod apply;
pub mod config;
pub mod dead_letter;
pub mod driver;
pub mod engine;
pub mod event;
pub mod explain;
pub mod health;
#[cfg(feature = "kafka")]
pub mod kafka_client;
pub mod plan;
pub mod replay;
pub mod rules;
pub mod source;
pub mod telemetry;
#[cfg(feature = "kafka")]
pub mod worker;
