//! The Kafka consumer as a source of the [`Driver`](crate::driver::Driver), and the offsets as its
//! acknowledgement.
//!
//! - Messages fill a batch of `batch_size`; a backlog fills whole units, a trickle goes out once
//!   `batch_wait` (default 0) passed since the first message of the batch.
//! - Bytes: the payload bytes of the units in flight and of the batch stay within
//!   `max_in_flight_bytes`. A message is taken in only while an event of `max_event_bytes` would
//!   still fit (so one always does when nothing is held: nothing stalls), and a unit is closed
//!   at [`KafkaConfig::unit_bytes`]. At the budget, nothing is taken in until a unit finishes;
//!   librdkafka's queue fills to `queued.max.messages.kbytes` and fetching stops there.
//! - While Redis, a CDN or the DLQ topic is out, or too many redeletes wait, the assigned partitions
//!   are paused; the consumer keeps polling (to stay in the group and see rebalances), and what
//!   librdkafka had already fetched is kept in the batch.
//! - A unit done marks its offsets done; an offset is stored (librdkafka commits what was stored)
//!   when every message before it on its partition is done ([`Watermarks`]). The intake owns the
//!   watermarks: the batch's messages are begun by runs of one partition when a unit is cut from
//!   it, or earlier when a rebalance revokes or assigns partitions: those are forgotten after the
//!   messages polled before it were begun (the rebalance callbacks run inside our own poll;
//!   [`Shared::forgotten`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use rdkafka::consumer::{Consumer, MessageStream};
use rdkafka::error::KafkaResult;
use rdkafka::message::BorrowedMessage;
use rdkafka::{Offset, TopicPartitionList};

use crate::apply::redis::ApplyReport;
use crate::config::KafkaConfig;
use crate::driver::{Adapter, Done, Records, Redeleted, Room, sleep_until};
use crate::engine::EngineError;
use crate::event::Expanded;
use crate::health::Health;
use crate::source::kafka::{Input, KafkaConsumer, Shared, TopicNames, Watermarks, WorkerContext};
use crate::telemetry;

/// A unit of the worker: its messages, kept whole so that a retry decodes them again, and their
/// bytes ([`held`]).
pub(super) struct Messages {
    inputs: Vec<Input>,
    bytes: usize,
}

impl Records for Messages {
    fn records(&mut self, attempts: u32) -> Vec<Expanded> {
        self.inputs.iter().map(|i| i.expanded(attempts)).collect()
    }

    fn bytes(&self) -> usize {
        self.bytes
    }
}

/// The bytes a message holds: its payload, key and headers.
fn held(input: &Input) -> usize {
    let carried = input.record.carried.as_deref().map_or(0, |c| {
        let headers: usize = c
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
            .sum();
        c.key.as_ref().map_or(0, |k| k.len()) + headers
    });
    input.record.payload.len() + carried
}

type Stream<'a> = MessageStream<'a, WorkerContext>;
type Polled<'a> = KafkaResult<BorrowedMessage<'a>>;

/// The offsets of a unit's messages, by partition (a unit holds runs of a few partitions).
pub(super) type Offsets = Vec<PartitionOffsets>;

pub(super) struct PartitionOffsets {
    topic: Arc<str>,
    partition: i32,
    offsets: Vec<i64>,
}

/// `inputs`' offsets by partition, in the order they came.
fn offsets_of(inputs: &[Input]) -> Offsets {
    let mut groups: Offsets = Vec::new();
    for i in inputs {
        let (topic, partition) = (i.topic(), i.partition());
        match groups
            .iter_mut()
            .find(|g| g.partition == partition && same_name(&g.topic, topic))
        {
            Some(g) => g.offsets.push(i.offset()),
            None => groups.push(PartitionOffsets {
                topic: i.record.position.topic().cloned().unwrap_or_default(),
                partition,
                offsets: vec![i.offset()],
            }),
        }
    }
    groups
}

/// Two topic names: usually the same shared name ([`TopicNames`]), told by its address.
fn same_name(a: &str, b: &str) -> bool {
    std::ptr::eq(a, b) || a == b
}

impl Input {
    fn same_partition(&self, other: &Input) -> bool {
        self.partition() == other.partition() && same_name(self.topic(), other.topic())
    }
}

pub(super) struct Intake {
    pub consumer: Arc<KafkaConsumer>,
    pub topics: TopicNames,
    pub shared: Arc<Shared>,
    pub health: Arc<Health>,
    pub config: KafkaConfig,
    pub max_event_bytes: usize,
    pub watermarks: Watermarks,
    pub batch: Vec<Input>,
    /// The messages of the batch begun in the watermarks: `batch[..begun]`.
    pub begun: usize,
    /// The bytes the batch holds ([`held`]).
    pub batch_bytes: usize,
    pub batch_started: Option<Instant>,
    pub paused: bool,
    pub units: u64,
    pub events: u64,
}

impl Intake {
    /// Takes the batch as a unit: at most `batch_size` messages, closed once it holds
    /// `unit_bytes`.
    fn unit(&mut self) -> (Messages, Offsets) {
        self.begin_taken();
        let (mut n, mut bytes) = (0, 0);
        let (most, close_at) = (self.config.batch_size.get(), self.config.unit_bytes());
        while n < self.batch.len() && n < most && bytes < close_at {
            bytes += held(&self.batch[n]);
            n += 1;
        }
        let inputs: Vec<Input> = self.batch.drain(..n).collect();
        self.begun -= n;
        self.batch_bytes -= bytes;
        self.batch_started = (!self.batch.is_empty()).then(Instant::now);
        self.units += 1;
        self.events += inputs.len() as u64;
        let offsets = offsets_of(&inputs);
        (Messages { inputs, bytes }, offsets)
    }

    /// Whether another message may be taken in: the batch is not a whole unit yet, and an event
    /// of `max_event_bytes` still fits in the budget beside what the units in flight hold.
    fn wants_more(&self, room: Room) -> bool {
        let holding = room.in_flight_bytes + self.batch_bytes;
        self.batch.len() < self.config.batch_size.get()
            && self.batch_bytes < self.config.unit_bytes()
            && holding + self.max_event_bytes <= self.config.max_in_flight_bytes
    }

    /// Pauses or resumes fetching, following the outage state and the redeletes waiting.
    fn follow_pressure(&mut self, room: Room) {
        self.forget_rebalanced();
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

    /// Takes in the message, then what librdkafka already holds, without waiting, while
    /// [`Intake::wants_more`].
    fn take_in(&mut self, first: Polled<'_>, messages: &mut Stream<'_>, room: Room) {
        let mut next = Some(first);
        while let Some(m) = next {
            match m {
                Ok(m) => {
                    // A rebalance during the poll that brought `m` came after the messages
                    // before it: they are begun, then its partitions forgotten, then `m` taken.
                    self.forget_rebalanced();
                    let input = Input::from_message(&m, &mut self.topics, self.max_event_bytes);
                    if self.batch.is_empty() {
                        self.batch_started = Some(Instant::now());
                    }
                    self.batch_bytes += held(&input);
                    self.batch.push(input);
                }
                Err(e) => tracing::warn!(error = %e, "Kafka consumer error"),
            }
            next = if self.wants_more(room) {
                messages.next().now_or_never().flatten()
            } else {
                None
            };
        }
    }

    /// Begins the messages taken in and not begun yet, by runs of one partition.
    fn begin_taken(&mut self) {
        let mut rest = &self.batch[self.begun..];
        while let Some(first) = rest.first() {
            let run = rest.iter().take_while(|i| i.same_partition(first)).count();
            let offsets = rest[..run].iter().map(Input::offset);
            self.watermarks
                .begin_all(first.topic(), first.partition(), offsets);
            rest = &rest[run..];
        }
        self.begun = self.batch.len();
    }

    /// Forgets the partitions that rebalances revoked or assigned anew, once the messages taken
    /// in before them are begun.
    fn forget_rebalanced(&mut self) {
        let forgotten = self.shared.forgotten();
        if forgotten.is_empty() {
            return;
        }
        self.begin_taken();
        for (topic, partition) in forgotten {
            self.watermarks.forget(&topic, partition);
        }
    }
}

impl Adapter for Intake {
    type Unit = Messages;
    type Token = Offsets;
    type Error = std::convert::Infallible;

    async fn next(&mut self, room: Room) -> Option<(Messages, Offsets)> {
        // One stream for the whole unit: a stream registers a waker with rdkafka (under a lock)
        // when made and removes it when dropped, which per message cost more than the poll.
        let consumer = self.consumer.clone();
        let mut messages = consumer.stream();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.follow_pressure(room);
            telemetry::in_flight_bytes(room.in_flight_bytes + self.batch_bytes);
            let full = !self.wants_more(room);
            let due_at = self.batch_started.map(|t| t + self.config.batch_wait);
            let due = due_at.is_some_and(|t| t <= Instant::now());
            if room.units && !self.batch.is_empty() && (full || due) {
                return Some(self.unit());
            }
            // Paused, we keep polling, to stay in the group and see rebalances.
            let recv_allowed = self.paused || !full;
            tokio::select! {
                Some(m) = messages.next(), if recv_allowed => self.take_in(m, &mut messages, room),
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
        self.forget_rebalanced();
        store(&self.consumer, &mut self.watermarks, &offsets);
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
fn store(consumer: &KafkaConsumer, watermarks: &mut Watermarks, offsets: &Offsets) {
    let moved = offsets.iter().filter_map(|g| {
        let next = watermarks.finish_all(&g.topic, g.partition, &g.offsets)?;
        Some((&*g.topic, g.partition, next))
    });
    for (topic, partition, next) in moved {
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
