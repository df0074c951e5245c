//! # invalidator
//!
//! Keeps caches honest: change events in, cache invalidations out. Follow one event from the wire
//! to its acknowledgement, one file per step:
//!
//! ```text
//! 1 source        bytes + where they came from → Record
//!                 source/files.rs (replay), source/kafka/mod.rs (worker), lambda/src/message.rs
//! 2 driver        units of records: scheduled, in flight, handed back in order
//!                 driver/mod.rs (the loop), driver/unit.rs (one unit: engine, then dead letters)
//! 3 prepare       Record → Event → EventPlan, pure; the only decode (explain shows exactly this)
//!                 engine/prepare.rs → event/decode.rs → rules/planner.rs
//! 4 apply         dedupe, cascade sets, coalesce, Redis, CDN, notices: the only I/O on targets
//!                 engine/apply.rs → plan.rs, apply/redis/mod.rs, apply/cdn/mod.rs, apply/notify/
//! 5 dead letters  one shape, one trait; a file, a Kafka topic, an SQS queue
//!                 dead_letter/mod.rs → dead_letter/file.rs, dead_letter/kafka.rs, lambda/src/dlq.rs
//! 6 ack           only after the effect, or after the dead letter was written
//!                 replay/mod.rs (the summary), worker/intake.rs (offsets), lambda/src/batch.rs
//! ```
//!
//! What each room must not touch:
//! - `config` parses the TOML file and the environment once, into values that cannot be invalid;
//!   nothing downstream parses or validates them again.
//! - `event`, `rules`, `plan` and `engine::prepare` are pure: no tokio, no Redis, no Kafka, no
//!   AWS, no clock.
//! - `apply` is the only code that talks to Redis and the CDNs; it knows nothing of sources.
//! - `driver` owns concurrency, retries through outages, acknowledgement order, redeletes and
//!   shutdown; the modes (`replay`, `worker`, the Lambda crate) only adapt a source and an
//!   acknowledgement to it.
//! - `main.rs` parses the command line and calls the modes.

pub mod apply;
pub mod backoff;
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
