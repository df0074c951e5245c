//! `invalidator_consumer_lag` after a rebalance: a worker that loses a partition to another member
//! shows 0 for it, so that a topic's sum (what `InvalidatorConsumerLagGrowing` alerts on) counts
//! each partition's lag once, from its owner. Before, the last value stayed: the lag of a backlog
//! another worker had long drained went on firing the alert.
//!
//! Worker A's Redis is frozen (SIGSTOP), an outage: A pauses fetching and keeps polling (so it
//! stays in the group), and a backlog builds on both partitions. Worker B then joins the group
//! with a Redis that answers, takes a partition over and drains it. Needs the Kafka-protocol
//! broker of the other worker tests (`bash scripts/tansu.sh`).
//!
//! A's group never committed (its first unit is stuck), so its lag is the whole partition; before,
//! librdkafka's -1 for "no committed offset" left the gauge absent, and this test failed at its
//! first wait. Without the reset on revocation it fails at its last.

mod common;

use std::time::Duration;

use common::kafka::{Msg, Stream, Worker, free_port, metric_value, price_event};
use common::topology::Server;

fn lag(metrics: &str, s: &Stream, partition: i32) -> Option<f64> {
    let series = format!(
        "invalidator_consumer_lag{{topic=\"{}\",partition=\"{partition}\"}}",
        s.topic
    );
    metrics
        .contains(&series)
        .then(|| metric_value(metrics, &series))
}

#[test]
fn a_worker_shows_no_lag_for_a_partition_it_lost_in_a_rebalance() {
    let s = Stream::prices(2);
    let frozen = Server::start();
    let redis = format!(
        "url = \"{}\"\nresponse_timeout = \"500ms\"\nconnect_timeout = \"500ms\"\nretry_for = \"1s\"\n",
        frozen.url()
    );
    let port_a = free_port();
    let config_a = s.config_with(&s.w.config_text_with_redis(&redis), port_a, "");
    let a = Worker::start(&s.w, "a", &config_a, port_a);
    a.expect_within(Duration::from_secs(60), "A ready", || a.ready());
    frozen.stop();
    let msgs: Vec<Msg> = (0..40)
        .map(|i| Msg::json((i % 2) as i32, price_event(i)))
        .collect();
    s.produce(0..40, &msgs);
    a.expect_within(
        Duration::from_secs(60),
        "A's lag on both partitions",
        || {
            let m = a.metrics();
            (0..2).all(|p| lag(&m, &s, p).is_some_and(|l| l > 0.0))
        },
    );

    let b = s.start("b", "");
    b.expect_within(
        Duration::from_secs(60),
        "B owns a partition and drains it",
        || {
            let m = b.metrics();
            (0..2).any(|p| lag(&m, &s, p) == Some(0.0))
        },
    );
    let m = b.metrics();
    let taken = (0..2).find(|p| lag(&m, &s, *p) == Some(0.0)).unwrap();
    let kept = 1 - taken;
    a.expect_within(
        Duration::from_secs(30),
        "A shows 0 for the partition B took, its backlog for the one it kept",
        || {
            let m = a.metrics();
            lag(&m, &s, taken) == Some(0.0) && lag(&m, &s, kept).is_some_and(|l| l > 0.0)
        },
    );
    frozen.cont();
}
