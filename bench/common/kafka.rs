//! The Kafka side of bench/worker.rs: the broker, topics, a producer that records the broker's
//! acknowledgements, and bare consumers (which do nothing with the messages: the broker's limit).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};

pub const PARTITIONS: i32 = 2;

/// `KAFKA_BROKERS`, by default 127.0.0.1:19092 (`scripts/tansu.sh` starts Tansu there).
pub fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".to_owned())
}

/// A new topic of [`PARTITIONS`] partitions.
pub fn create_topic(topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("admin client");
    let new = NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1));
    for r in futures::executor::block_on(admin.create_topics(&[new], &AdminOptions::new()))
        .expect("create_topics")
    {
        r.unwrap_or_else(|(t, e)| panic!("topic {t}: {e}"));
    }
}

/// Records when the broker acknowledged each event (by id).
#[derive(Default)]
pub struct Acks(pub Mutex<HashMap<u64, Instant>>);

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = Box<u64>;

    fn delivery(&self, result: &DeliveryResult<'_>, id: Box<u64>) {
        if result.is_ok() {
            self.0.lock().unwrap().insert(*id, Instant::now());
        }
    }
}

/// A producer; its context holds the acknowledgements.
pub type Producer = ThreadedProducer<Acks>;

/// A [`Producer`] that waits up to `linger_ms` to batch.
pub fn producer(linger_ms: &str) -> Producer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", linger_ms)
        .set("queue.buffering.max.messages", "1000000")
        .create_with_context(Acks::default())
        .expect("producer")
}

/// A consumer's settings: a new group `<prefix>-<random>` reading from the earliest offset,
/// committing nothing.
pub fn bare_consumer(prefix: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers())
        .set(
            "group.id",
            format!("{prefix}-{:08x}", rand::random::<u32>()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000");
    c
}

/// Sends event `id` (keyed by its id), waiting while the producer's queue is full.
pub fn send(p: &Producer, topic: &str, id: u64, payload: &str) {
    let key = id.to_string();
    let mut r = BaseRecord::with_opaque_to(topic, Box::new(id))
        .key(key.as_str())
        .payload(payload);
    loop {
        match p.send(r) {
            Ok(()) => return,
            Err((_, back)) => {
                p.poll(Duration::from_millis(5));
                r = back;
            }
        }
    }
}

/// The pid of the broker when it is a process of this machine started with its address in its
/// command line (Tansu's `--listener-url tcp://ADDRESS`, as `scripts/tansu.sh` starts it); `None`
/// for a remote Kafka.
pub fn local_broker_pid() -> Option<u32> {
    let address = brokers();
    let wanted = format!("tcp://{address}");
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let listens = args
                .windows(2)
                .any(|w| w[0] == b"--listener-url" && w[1] == wanted.as_bytes());
            listens.then_some(pid)
        })
}
