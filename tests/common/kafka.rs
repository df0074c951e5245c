//! Helpers of the Kafka tests: a real Kafka-protocol broker (`KAFKA_BROKERS`, default the Tansu
//! broker that scripts/tansu.sh starts on 127.0.0.1:19092), random topic and group names, a test's
//! [`Stream`] (its topic, group and what it produced) and the `invalidator run` binary as a child
//! process ([`Worker`]).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::ops::Range;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

use super::World;

pub fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".to_owned())
}

/// A random name such as `it-5f3a9c1e`.
pub fn name(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

pub fn create_topic(topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("admin client");
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let r = futures::executor::block_on(admin.create_topics(&[new], &AdminOptions::new()))
        .expect("create_topics");
    for t in r {
        t.unwrap_or_else(|(name, e)| panic!("topic {name}: {e}"));
    }
}

/// One message to produce.
#[derive(Clone, Debug, Default)]
pub struct Msg {
    pub partition: Option<i32>,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
    /// The record's timestamp (CreateTime, ms since the epoch); default the producer's clock.
    pub timestamp: Option<i64>,
}

impl Msg {
    pub fn json(partition: i32, payload: String) -> Msg {
        Msg {
            partition: Some(partition),
            payload: payload.into_bytes(),
            ..Msg::default()
        }
    }
}

pub fn producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", "5")
        .create()
        .expect("producer")
}

/// Produces every message and waits until the broker acknowledged all of them. Returns each
/// message's (partition, offset), from the delivery reports: brokers need not number offsets
/// contiguously, so tests never compute them.
pub fn produce(topic: &str, msgs: &[Msg]) -> Vec<(i32, i64)> {
    produce_with(&producer(), topic, msgs)
}

/// [`produce`] with one record per batch: the Tansu broker reports a partition's end as the first
/// offset of its last batch + 1, which is the true end only so.
pub fn produce_one_per_batch(topic: &str, msgs: &[Msg]) -> Vec<(i32, i64)> {
    let p = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("batch.num.messages", "1")
        .create()
        .expect("producer");
    produce_with(&p, topic, msgs)
}

fn produce_with(p: &FutureProducer, topic: &str, msgs: &[Msg]) -> Vec<(i32, i64)> {
    let mut pending = Vec::with_capacity(msgs.len());
    for m in msgs {
        let mut headers = OwnedHeaders::new();
        for (k, v) in &m.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        let mut r: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
            .payload(m.payload.as_slice())
            .headers(headers);
        if let Some(k) = &m.key {
            r = r.key(k.as_slice());
        }
        if let Some(part) = m.partition {
            r = r.partition(part);
        }
        if let Some(t) = m.timestamp {
            r = r.timestamp(t);
        }
        loop {
            match p.send_result(r) {
                Ok(f) => {
                    pending.push(f);
                    break;
                }
                Err((e, back)) => {
                    assert!(
                        matches!(
                            e,
                            rdkafka::error::KafkaError::MessageProduction(
                                rdkafka::types::RDKafkaErrorCode::QueueFull
                            )
                        ),
                        "produce: {e}"
                    );
                    std::thread::sleep(Duration::from_millis(10));
                    r = back;
                }
            }
        }
    }
    pending
        .into_iter()
        .map(|f| {
            let d = futures::executor::block_on(f)
                .expect("delivery report")
                .unwrap_or_else(|(e, _)| panic!("not delivered: {e}"));
            (d.partition, d.offset)
        })
        .collect()
}

fn plain_consumer(group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer")
}

/// The committed offsets of `group` on partitions `0..partitions` (-1001 = none).
pub fn committed(group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let c = plain_consumer(group);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    (0..partitions)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => -1001,
        })
        .collect()
}

/// The end (high watermark) of each partition.
pub fn end_offsets(topic: &str, partitions: i32) -> Vec<i64> {
    let c = plain_consumer(&name("ends"));
    (0..partitions)
        .map(|p| {
            c.fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks")
                .1
        })
        .collect()
}

/// Reads `n` messages of `topic` from the beginning (all partitions), or what came within `wait`.
pub fn read(topic: &str, partitions: i32, n: usize, wait: Duration) -> Vec<OwnedMessage> {
    let c = plain_consumer(&name("reader"));
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("offset");
    }
    c.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let until = Instant::now() + wait;
    while out.len() < n && Instant::now() < until {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            out.push(m.detach());
        }
    }
    out
}

pub fn header<'a>(m: &'a OwnedMessage, key: &str) -> Option<&'a str> {
    use rdkafka::message::Headers;
    m.headers()?
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| std::str::from_utf8(h.value?).ok())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, cond: impl FnMut() -> bool) -> bool {
    super::poll_until(timeout, Duration::from_millis(50), cond)
}

/// The `[kafka]` and `[http]` sections of a worker of `group` over `topic`.
pub fn worker_config(group: &str, topic: &str, port: u16, extra_kafka: &str) -> String {
    format!(
        "[kafka]\nbrokers = \"{}\"\ngroup = \"{group}\"\ntopics = [\"{topic}\"]\nbatch_wait = \"5ms\"\nshutdown_timeout = \"10s\"\n{extra_kafka}\n\
         [kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n\
         \"topic.metadata.refresh.interval.ms\" = \"1000\"\n\n[http]\nlisten = \"127.0.0.1:{port}\"\n",
        brokers()
    )
}

/// `price.updated` event `i` (id `e-{i}`, `sku` i, `time` now), which the rules of
/// `tests/fixtures/rules/delete_price.yaml` turn into a delete of `P:price:{i}`.
pub fn price_event(i: usize) -> String {
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    format!(r#"{{"type":"price.updated","id":"e-{i}","time":"{now}","data":{{"sku":"{i}"}}}}"#)
}

/// One test's stream: its world, its own topic and consumer group, and where every event it
/// produced landed.
pub struct Stream {
    pub w: World,
    pub topic: String,
    pub group: String,
    pub partitions: i32,
    /// (partition, offset) → event number, from the delivery reports.
    sent: RefCell<BTreeMap<(i32, i64), usize>>,
}

impl Stream {
    /// A new topic `{topic}-…` of `partitions` and a new group, for the world `w`.
    pub fn new(w: World, topic: &str, partitions: i32) -> Stream {
        let topic = name(topic);
        create_topic(&topic, partitions);
        Stream {
            w,
            topic,
            group: name("g"),
            partitions,
            sent: RefCell::default(),
        }
    }

    /// A stream of price events (see [`price_event`]) under the rules of
    /// `tests/fixtures/rules/delete_price.yaml`.
    pub fn prices(partitions: i32) -> Stream {
        let w = World::new();
        w.rules_fixture("price.yaml", "rules/delete_price.yaml");
        Stream::new(w, "it", partitions)
    }

    /// The world's config and a worker's `[kafka]` (plus `extra_kafka`) and `[http]` on `port`.
    pub fn config(&self, port: u16, extra_kafka: &str) -> String {
        self.config_with(&self.w.config_text(), port, extra_kafka)
    }

    /// [`Stream::config`] with `base` for the world's config.
    pub fn config_with(&self, base: &str, port: u16, extra_kafka: &str) -> String {
        format!(
            "{base}\n{}",
            worker_config(&self.group, &self.topic, port, extra_kafka)
        )
    }

    /// Starts worker `name` with [`Stream::config`] on a free port.
    pub fn start(&self, name: &str, extra_kafka: &str) -> Worker {
        let port = free_port();
        Worker::start(&self.w, name, &self.config(port, extra_kafka), port)
    }

    /// Produces `msgs`, event `range.start + n` as the n-th, and records where they landed.
    pub fn produce(&self, range: Range<usize>, msgs: &[Msg]) -> Vec<(i32, i64)> {
        let at = produce(&self.topic, msgs);
        self.produced(range, &at);
        at
    }

    /// Records where events `range` landed.
    pub fn produced(&self, range: Range<usize>, at: &[(i32, i64)]) {
        let mut sent = self.sent.borrow_mut();
        for (i, &pos) in range.zip(at) {
            sent.insert(pos, i);
        }
    }

    /// Seeds `P:price:{i}` for every i of `range` and produces price event i to partition
    /// i % partitions.
    pub fn seed_and_produce(&self, c: &mut redis::Connection, range: Range<usize>) {
        let keys: Vec<String> = range.clone().map(|i| format!("P:price:{i}")).collect();
        self.w.set(c, &keys);
        let msgs: Vec<Msg> = range
            .clone()
            .map(|i| Msg::json((i % self.partitions as usize) as i32, price_event(i)))
            .collect();
        self.produce(range, &msgs);
    }

    /// How many `P:price:*` keys are left.
    pub fn remaining(&self, c: &mut redis::Connection) -> usize {
        self.w.keys(c, "P:price:*").len()
    }

    /// The offset after the last event produced, per partition.
    pub fn ends(&self) -> Vec<i64> {
        let mut ends = vec![0; self.partitions as usize];
        for &(p, o) in self.sent.borrow().keys() {
            ends[p as usize] = ends[p as usize].max(o + 1);
        }
        ends
    }

    /// The events below the committed offsets `upto` and the others.
    pub fn split(&self, upto: &[i64]) -> (Vec<usize>, Vec<usize>) {
        let mut below = Vec::new();
        let mut above = Vec::new();
        for (&(p, o), &i) in self.sent.borrow().iter() {
            if o < upto[p as usize] {
                below.push(i);
            } else {
                above.push(i);
            }
        }
        (below, above)
    }

    /// The group's committed offsets (-1001 = none).
    pub fn committed(&self) -> Vec<i64> {
        committed(&self.group, &self.topic, self.partitions)
    }

    /// Asserts that `worker` applies every event produced (no `P:price:*` key left) within
    /// `within`, then commits up to the end of every partition within 20 s more; `what` names the
    /// first in a failure.
    pub fn expect_drained_by(
        &self,
        worker: &Worker,
        c: &mut redis::Connection,
        within: Duration,
        what: &str,
    ) {
        worker.expect_within(within, what, || self.remaining(c) == 0);
        worker.expect_within(
            Duration::from_secs(20),
            &format!("{what}, then committed up to the end of every partition"),
            || self.all_committed(),
        );
    }

    /// Committed up to the end of every partition.
    pub fn all_committed(&self) -> bool {
        let (c, e) = (self.committed(), self.ends());
        if c != e {
            eprintln!("committed {c:?}, end {e:?}");
        }
        c == e
    }
}

/// `invalidator run` as a child process.
pub struct Worker {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Worker {
    /// Starts `invalidator run -c CONFIG --rules RULES` in the world's directory, with `config`
    /// written to `{name}.toml`.
    pub fn start(world: &World, name: &str, config_text: &str, port: u16) -> Worker {
        Worker::start_env(world, name, config_text, port, &[])
    }

    /// [`Worker::start`] with environment variables for the child.
    pub fn start_env(
        world: &World,
        name: &str,
        config_text: &str,
        port: u16,
        env: &[(&str, &str)],
    ) -> Worker {
        let config = world.path(&format!("{name}.toml"));
        std::fs::write(&config, config_text).unwrap();
        let log = world.path(&format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_invalidator"))
            .current_dir(world.dir.path())
            .arg("-c")
            .arg(&config)
            .arg("--rules")
            .arg(world.rules_dir())
            .arg("run")
            .env("RUST_LOG", "warn,invalidator=info")
            .env_remove("INVALIDATOR_TEST_REDIS_URL")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start the worker");
        Worker { child, port, log }
    }

    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
        Some((status, body))
    }

    pub fn ready(&self) -> bool {
        matches!(self.get("/readyz"), Some((200, _)))
    }

    pub fn metrics(&self) -> String {
        self.get("/metrics").map(|(_, b)| b).unwrap_or_default()
    }

    /// The value of the first sample whose line starts with `prefix` (`name{labels}`), 0 if none.
    pub fn metric(&self, prefix: &str) -> f64 {
        metric_value(&self.metrics(), prefix)
    }

    pub fn signal(&self, sig: libc::c_int) {
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, sig);
        }
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        super::wait_exit(&mut self.child, timeout)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Asserts `ok`; the failure says `what` and shows the worker's log.
    pub fn expect(&self, ok: bool, what: &str) {
        assert!(ok, "{what}\n--- worker log ---\n{}", self.logs());
    }

    /// Asserts that `cond` comes true within `timeout` (polled every 50 ms), as [`Worker::expect`].
    pub fn expect_within(&self, timeout: Duration, what: &str, cond: impl FnMut() -> bool) {
        self.expect(wait_until(timeout, cond), what);
    }

    /// SIGTERM, then asserts an exit 0 within `timeout`.
    pub fn terminate(&mut self, timeout: Duration, what: &str) {
        self.signal(libc::SIGTERM);
        let status = self.wait(timeout);
        self.expect(status.is_some_and(|s| s.success()), what);
    }

    /// SIGKILL, then waits for the exit (5 s at most).
    pub fn kill(&mut self) -> Option<ExitStatus> {
        self.signal(libc::SIGKILL);
        self.wait(Duration::from_secs(5))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sums the samples of `text` whose line starts with `prefix`.
pub fn metric_value(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Produces `payload` to `topic`/`partition` with one header whose name is `name`, any bytes
/// but NUL: rdkafka's safe API takes header names as `&str`, so this goes through librdkafka's C
/// API (`rd_kafka_produceva`), as a producer in another language could.
pub fn produce_with_raw_header(topic: &str, partition: i32, payload: &[u8], name: &[u8]) {
    use rdkafka::bindings as rd;
    use rdkafka::producer::{BaseProducer, Producer};
    use std::ffi::{CString, c_void};
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("producer");
    let topic = CString::new(topic).expect("topic");
    let name = CString::new(name).expect("a header name without NUL");
    let value = b"v";
    let vu = |vtype, u| rd::rd_kafka_vu_t { vtype, u };
    use rd::rd_kafka_vtype_t as T;
    use rd::rd_kafka_vu_s__bindgen_ty_1 as U;
    let vus = [
        vu(
            T::RD_KAFKA_VTYPE_TOPIC,
            U {
                cstr: topic.as_ptr(),
            },
        ),
        vu(T::RD_KAFKA_VTYPE_PARTITION, U { i32_: partition }),
        vu(
            T::RD_KAFKA_VTYPE_VALUE,
            U {
                mem: rd::rd_kafka_vu_s__bindgen_ty_1__bindgen_ty_1 {
                    ptr: payload.as_ptr() as *mut c_void,
                    size: payload.len(),
                },
            },
        ),
        vu(
            T::RD_KAFKA_VTYPE_HEADER,
            U {
                header: rd::rd_kafka_vu_s__bindgen_ty_1__bindgen_ty_2 {
                    name: name.as_ptr(),
                    val: value.as_ptr().cast(),
                    size: value.len() as isize,
                },
            },
        ),
        vu(
            T::RD_KAFKA_VTYPE_MSGFLAGS,
            U {
                i: rd::RD_KAFKA_MSG_F_COPY,
            },
        ),
    ];
    // SAFETY: every pointer points into a value alive until the call returns, and MSGFLAGS COPY
    // makes librdkafka copy the payload; the producer's handle is alive.
    let err = unsafe { rd::rd_kafka_produceva(p.client().native_ptr(), vus.as_ptr(), vus.len()) };
    assert!(err.is_null(), "rd_kafka_produceva refused the message");
    p.flush(Duration::from_secs(10)).expect("delivered");
}
