//! The Kafka consumer as a source of the [`Driver`](crate::driver::Driver), and the offsets as its
//! acknowledgement.
//!
//! - Messages fill a batch of `batch_size`; a backlog fills whole units, a trickle goes out once
//!   `batch_wait` (default 0) passed since the first message of the batch.
//! - While Redis, a CDN or the DLQ topic is out, or too many redeletes wait, the assigned partitions
//!   are paused; the consumer keeps polling (to stay in the group and see rebalances), and what
//!   librdkafka had already fetched is kept in the batch.
//! - A unit done marks its offsets done; an offset is stored (librdkafka commits what was stored)
//!   when every message before it on its partition is done ([`Watermarks`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::FutureExt;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaResult;
use rdkafka::{Offset, TopicPartitionList};

use crate::apply::redis::ApplyReport;
use crate::config::KafkaConfig;
use crate::driver::{Adapter, Done, Records, Redeleted, Room, sleep_until};
use crate::engine::EngineError;
use crate::event::Expanded;
use crate::health::Health;
use crate::source::kafka::{Input, KafkaConsumer, Shared, Watermarks};

/// A unit of the worker: its messages, kept whole so that a retry decodes them again.
pub(super) struct Messages(pub Vec<Input>);

impl Records for Messages {
    fn records(&mut self, attempts: u32) -> Vec<Expanded> {
        self.0.iter().map(|i| i.expanded(attempts)).collect()
    }
}

/// The offsets of a unit's messages.
pub(super) type Offsets = Vec<(String, i32, i64)>;

pub(super) struct Intake {
    pub consumer: KafkaConsumer,
    pub shared: Arc<Shared>,
    pub health: Arc<Health>,
    pub config: KafkaConfig,
    pub max_event_bytes: usize,
    pub batch: Vec<Input>,
    pub batch_started: Option<Instant>,
    pub paused: bool,
    pub units: u64,
    pub events: u64,
}

impl Intake {
    /// Takes the batch (at most `batch_size` of it) as a unit.
    fn unit(&mut self) -> (Messages, Offsets) {
        let n = self.batch.len().min(self.config.batch_size.get());
        let unit: Vec<Input> = self.batch.drain(..n).collect();
        self.batch_started = (!self.batch.is_empty()).then(Instant::now);
        self.units += 1;
        self.events += unit.len() as u64;
        let offsets = unit
            .iter()
            .map(|i| (i.topic().to_owned(), i.partition(), i.offset()))
            .collect();
        (Messages(unit), offsets)
    }

    /// Pauses or resumes fetching, following the outage state and the redeletes waiting.
    fn follow_pressure(&mut self, room: Room) {
        if self.shared.joined.load(Ordering::Relaxed) {
            self.health.set_joined(true);
        }
        let rebalanced = self.shared.rebalanced.swap(false, Ordering::SeqCst);
        let want_pause = self.health.in_outage() || !room.redeletes;
        if want_pause != self.paused || (rebalanced && want_pause) {
            set_paused(&self.consumer, want_pause);
            self.paused = want_pause;
        }
    }

    /// Takes in the message, then what librdkafka already holds, without waiting.
    fn take_in(&mut self, first: KafkaResult<Input>) {
        let mut next = Some(first);
        while let Some(m) = next {
            match m {
                Ok(input) => {
                    let mut w = self.shared.watermarks.lock().expect("watermarks lock");
                    w.begin(input.topic(), input.partition(), input.offset());
                    drop(w);
                    if self.batch.is_empty() {
                        self.batch_started = Some(Instant::now());
                    }
                    self.batch.push(input);
                }
                Err(e) => tracing::warn!(error = %e, "Kafka consumer error"),
            }
            next = if self.batch.len() < self.config.batch_size.get() {
                let max = self.max_event_bytes;
                let ready = self.consumer.recv().now_or_never();
                ready.map(|m| m.map(|m| Input::from_message(&m, max)))
            } else {
                None
            };
        }
    }
}

impl Adapter for Intake {
    type Unit = Messages;
    type Token = Offsets;
    type Error = std::convert::Infallible;

    async fn next(&mut self, room: Room) -> Option<(Messages, Offsets)> {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.follow_pressure(room);
            let full = self.batch.len() >= self.config.batch_size.get();
            let due_at = self.batch_started.map(|t| t + self.config.batch_wait);
            let due = due_at.is_some_and(|t| t <= Instant::now());
            if room.units && !self.batch.is_empty() && (full || due) {
                return Some(self.unit());
            }
            // Paused, we keep polling, to stay in the group and see rebalances.
            let recv_allowed = self.paused || !full;
            tokio::select! {
                m = self.consumer.recv(), if recv_allowed => {
                    let first = m.map(|m| Input::from_message(&m, self.max_event_bytes));
                    self.take_in(first);
                }
                () = sleep_until(due_at), if room.units && due_at.is_some() => {}
                _ = tick.tick() => {}
            }
        }
    }

    fn drain(&mut self) -> Vec<(Messages, Offsets)> {
        let mut units = Vec::new();
        while !self.batch.is_empty() {
            units.push(self.unit());
        }
        units
    }

    fn ack(&mut self, offsets: Offsets, _done: Done) -> Result<(), Self::Error> {
        store(&self.consumer, &self.shared.watermarks, &offsets);
        Ok(())
    }

    fn redeleted(&mut self, _keys: usize, result: Result<ApplyReport, EngineError>) -> Redeleted {
        match result {
            Ok(_) => Redeleted::Done,
            Err(_) => Redeleted::Retry,
        }
    }
}

/// Marks a unit's messages done and stores the offsets that moved.
fn store(consumer: &KafkaConsumer, watermarks: &std::sync::Mutex<Watermarks>, offsets: &Offsets) {
    let mut w = watermarks.lock().expect("watermarks lock");
    let mut moved: HashMap<(&str, i32), i64> = HashMap::new();
    for (topic, partition, offset) in offsets {
        if let Some(next) = w.finish(topic, *partition, *offset) {
            moved.insert((topic, *partition), next);
        }
    }
    drop(w);
    for ((topic, partition), next) in moved {
        // `rd_kafka_offsets_store` stores the offset as given: the next message to read.
        let mut tpl = TopicPartitionList::new();
        let stored = tpl
            .add_partition_offset(topic, partition, Offset::Offset(next))
            .and_then(|()| consumer.store_offsets(&tpl));
        if let Err(e) = stored {
            // The partition was revoked meanwhile: its new owner reads it again.
            tracing::debug!(topic, partition, next, error = %e, "offset not stored");
        }
    }
}

fn set_paused(consumer: &KafkaConsumer, pause: bool) {
    let assignment = match consumer.assignment() {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the assignment to pause or resume it");
            return;
        }
    };
    let result = if pause {
        consumer.pause(&assignment)
    } else {
        consumer.resume(&assignment)
    };
    let what = if pause {
        "fetching paused"
    } else {
        "fetching resumed"
    };
    match result {
        Ok(()) => tracing::info!(partitions = assignment.count(), "{what}"),
        Err(e) => tracing::warn!(error = %e, pause, "pause/resume failed"),
    }
}
