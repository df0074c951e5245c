//! # invalidator-lambda
//!
//! The AWS Lambda adapter of invalidator: a thin layer over the shared engine.
//!
//! ```text
//! main            init once per sandbox: config (env), rules, Redis/CDN/SQS clients, logs, metrics;
//!                 an init failure goes to the runtime API's /runtime/init/error (init_error)
//!   → app         one invocation: parse the SNS or SQS event, run the batch, log, flush EMF metrics
//!   → message     the SNS or SQS event document → messages; a message as a record
//!   → batch       generic: messages → Processor → verdicts → dead letters → Lambda's answer
//!                 (SQS partial batch response; SNS error when anything is not done)
//!   → invalidate  the business function: the batch as one unit of work through the engine
//!   → dlq         poison messages to an SQS queue (SendMessageBatch): the shared dead-letter
//!                 sink of invalidator, the same fields as attributes
//! ```
//!
//! Guarantee: a message is acknowledged only after its event was applied (or skipped, or
//! a duplicate), or after it was durably written to the dead-letter queue. An outage acknowledges
//! nothing of the batch.

// The invocation future nests the SQS client's futures inside the batch handler's: computing its
// layout needs more than the default 128 query levels.
#![recursion_limit = "256"]

pub mod app;
pub mod batch;
pub mod dlq;
pub mod init_error;
pub mod invalidate;
pub mod message;
pub mod telemetry;
