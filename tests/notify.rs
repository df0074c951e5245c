//! Completion notices (`[notify]`): through SNS on moto_server to an SQS queue subscribed to the
//! topic, through a Kafka topic on the local broker (Tansu), and the failure policy (a failing sink
//! drops its notices after `retry_for` and never fails nor dead-letters the events).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::World;
use common::aws::{moto_url, sdk};
use serde_json::Value;

const RULES: &str = "rules:\n  - name: price\n    on: price.updated\n    when: data.new_price != data.old_price\n    delete:\n      - P:price:{product_id}\n    tags:\n      - P:product:{product_id}\n    purge:\n      - target: logcdn\n        paths:\n          - /api/products/{product_id}\n    cascade:\n      - emit: product.page_changed\n        data: { product_id: \"{product_id}\" }\n  - name: page\n    on: product.page_changed\n    delete:\n      - P:page:{product_id}\n";

fn event(i: usize, product: usize, changed: bool) -> String {
    let new = if changed { i + 1 } else { i };
    format!(
        r#"{{"type":"price.updated","id":"e-{i}","source":"pricing","data":{{"product_id":"{product}","old_price":{i},"new_price":{new}}}}}"#
    )
}

/// 25 events: 22 applied, 2 skipped (unchanged price), 1 dead-lettered (no type).
fn lines() -> Vec<String> {
    let mut v: Vec<String> = (0..24).map(|i| event(i, i % 7, i % 12 != 5)).collect();
    v.push(r#"{"id":"no-type"}"#.into());
    v
}

/// Receives messages from `queue` until `n` arrived or `wait` passed.
async fn receive(sqs: &aws_sdk_sqs::Client, queue: &str, n: usize, wait: Duration) -> Vec<String> {
    let until = tokio::time::Instant::now() + wait;
    let mut out = Vec::new();
    while out.len() < n && tokio::time::Instant::now() < until {
        let r = sqs
            .receive_message()
            .queue_url(queue)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .expect("ReceiveMessage");
        for m in r.messages() {
            out.push(m.body().unwrap_or_default().to_owned());
        }
    }
    out
}

#[tokio::test]
async fn sns_notices_reach_an_sqs_queue_subscribed_to_the_topic() {
    let sns = aws_sdk_sns::Client::from_conf(
        aws_sdk_sns::config::Builder::from(&sdk())
            .endpoint_url(moto_url())
            .build(),
    );
    let sqs = aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::config::Builder::from(&sdk())
            .endpoint_url(moto_url())
            .build(),
    );
    let name = format!("inv-{:08x}", rand::random::<u32>());
    let topic = sns
        .create_topic()
        .name(&name)
        .send()
        .await
        .expect("moto_server must run (scripts/moto.sh)")
        .topic_arn()
        .unwrap()
        .to_owned();
    let queue = sqs
        .create_queue()
        .queue_name(&name)
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned();
    let queue_arn = sqs
        .get_queue_attributes()
        .queue_url(&queue)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
        .clone();
    sns.subscribe()
        .topic_arn(&topic)
        .protocol("sqs")
        .endpoint(&queue_arn)
        .attributes("RawMessageDelivery", "true")
        .send()
        .await
        .unwrap();

    let mut w = World::new();
    w.rules("price.yaml", RULES);
    w.extra_config = format!(
        "[notify]\nsns_topic_arn = \"{topic}\"\nendpoint_url = \"{}\"\n",
        moto_url()
    );
    let summary = w.replay_lines(&lines(), false).await;
    assert_eq!(summary.applied, 22);
    assert_eq!(summary.skipped, 2);
    assert_eq!(summary.dead_lettered, 1);
    assert_eq!(summary.notices_sent, 22);
    assert_eq!(summary.notices_dropped, 0);

    let bodies = receive(&sqs, &queue, 22, Duration::from_secs(15)).await;
    assert_eq!(bodies.len(), 22, "one notice per applied event");
    let notices: BTreeMap<String, Value> = bodies
        .iter()
        .map(|b| {
            let v: Value = serde_json::from_str(b).expect("a notice is JSON");
            (v["event"]["id"].as_str().unwrap().to_owned(), v)
        })
        .collect();
    assert_eq!(notices.len(), 22, "no duplicate");
    assert!(!notices.contains_key("e-5"), "skipped: no notice");
    let n = &notices["e-3"];
    assert_eq!(n["type"], "invalidation.completed");
    assert_eq!(n["event"]["type"], "price.updated");
    assert_eq!(n["event"]["source"], "pricing");
    assert_eq!(
        n["keys"],
        serde_json::json!([w.k("P:price:3"), w.k("P:page:3")]),
        "cascaded actions are folded into the root event"
    );
    assert_eq!(n["tags"], serde_json::json!([w.k("P:product:3")]));
    assert_eq!(
        n["paths"],
        serde_json::json!([{"target": "logcdn", "path": "/api/products/3"}])
    );
}

#[tokio::test]
async fn kafka_notices_reach_the_notice_topic() {
    let topic = common::kafka::name("notices");
    common::kafka::create_topic(&topic, 1);
    let mut w = World::new();
    w.rules("price.yaml", RULES);
    w.extra_config = format!(
        "[kafka]\nbrokers = \"{}\"\n\n[notify]\nkafka_topic = \"{topic}\"\n",
        common::kafka::brokers()
    );
    let summary = w.replay_lines(&lines(), false).await;
    assert_eq!(summary.notices_sent, 22);
    let msgs = common::kafka::read(&topic, 1, 22, Duration::from_secs(15));
    assert_eq!(msgs.len(), 22);
    use rdkafka::Message;
    for m in &msgs {
        let v: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        assert_eq!(v["type"], "invalidation.completed");
        assert_eq!(
            m.key().unwrap(),
            v["event"]["id"].as_str().unwrap().as_bytes(),
            "keyed by event id"
        );
    }
}

#[tokio::test]
async fn a_failing_sink_drops_its_notices_and_never_fails_the_events() {
    let mut w = World::new();
    w.rules("price.yaml", RULES);
    // Nothing listens on port 1: every PublishBatch fails to connect.
    w.extra_config = "[notify]\nsns_topic_arn = \"arn:aws:sns:us-east-1:123456789012:gone\"\nendpoint_url = \"http://127.0.0.1:1\"\nretry_for = \"300ms\"\n".into();
    let summary = w.replay_lines(&lines(), false).await;
    assert_eq!(summary.applied, 22);
    assert_eq!(summary.dead_lettered, 1, "only the event without a type");
    assert_eq!(summary.notices_sent, 0);
    assert_eq!(summary.notices_dropped, 22);
    assert!(summary.unavailable.is_none(), "not an outage");
    assert_eq!(summary.exit_code(), 1);
}
