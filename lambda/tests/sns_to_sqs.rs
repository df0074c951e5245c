//! SNS → SQS on moto_server, as deployed: a topic, two queues subscribed to it (one with raw
//! message delivery, one receiving the SNS envelope), real notifications published, the messages
//! received from each queue turned into the `SqsEvent` Lambda would send, fed to the handler, and
//! the acknowledged ones deleted as Lambda's event source mapping does.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::MessageSystemAttributeName;
use common::{World, attr, conn, drain, queue, queue_arn, sns, sqs};
use serde_json::{Value, json};

/// Receives `n` messages from `url` (bounded wait), leaving them in flight.
async fn receive(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    n: usize,
) -> Vec<aws_sdk_sqs::types::Message> {
    let mut got = Vec::new();
    let started = Instant::now();
    while got.len() < n {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "only {} of {n} messages arrived",
            got.len()
        );
        let out = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .visibility_timeout(60)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        got.extend(out.messages().iter().cloned());
    }
    got
}

/// The `SqsEvent` Lambda's event source mapping builds from received messages.
fn sqs_event(messages: &[aws_sdk_sqs::types::Message], arn: &str) -> Value {
    let records: Vec<Value> = messages
        .iter()
        .map(|m| {
            let attributes: HashMap<String, String> = m
                .attributes()
                .map(|a| {
                    a.iter()
                        .map(|(k, v)| (k.as_str().to_owned(), v.clone()))
                        .collect()
                })
                .unwrap_or_default();
            json!({
                "messageId": m.message_id(),
                "receiptHandle": m.receipt_handle(),
                "body": m.body(),
                "attributes": attributes,
                "messageAttributes": {},
                "md5OfBody": m.md5_of_body(),
                "eventSource": "aws:sqs",
                "eventSourceARN": arn,
                "awsRegion": "us-east-1",
            })
        })
        .collect();
    json!({ "Records": records })
}

#[tokio::test(flavor = "multi_thread")]
async fn notifications_published_to_sns_are_invalidated_from_both_queue_kinds() {
    let w = World::new();
    let mut c = conn();
    let sqs = sqs().await;
    let sns = sns().await;
    let topic = sns
        .create_topic()
        .name(format!("catalog-events-{:08x}", rand::random::<u32>()))
        .send()
        .await
        .expect("moto_server must answer (scripts/moto.sh)")
        .topic_arn()
        .unwrap()
        .to_owned();
    let raw_q = queue(&sqs, "inv-raw").await;
    let env_q = queue(&sqs, "inv-enveloped").await;
    let dlq = queue(&sqs, "inv-dlq").await;
    for (url, raw) in [(&raw_q, true), (&env_q, false)] {
        let arn = queue_arn(&sqs, url).await;
        let mut s = sns
            .subscribe()
            .topic_arn(&topic)
            .protocol("sqs")
            .endpoint(arn);
        if raw {
            s = s.attributes("RawMessageDelivery", "true");
        }
        s.send().await.unwrap();
    }

    let events = [
        json!({"type": "price.updated", "id": "moto-price-3001", "time": "2026-11-22T10:00:00Z",
               "data": {"product_id": "3001", "old_price": 10, "new_price": 9}}),
        json!({"type": "inventory.changed", "id": "moto-inv-3002",
               "data": {"sku": "SKU-3002", "product_id": "3002", "quantity": 0}}),
        json!({"type": "review.updated", "id": "moto-review-3003",
               "data": {"product_id": "3003", "review_id": "r-1"}}),
    ];
    let poison = r#"{"type":"review.updated","data":{"product_id":"x/../y"}}"#;
    for e in &events {
        sns.publish()
            .topic_arn(&topic)
            .message(e.to_string())
            .send()
            .await
            .unwrap();
    }
    sns.publish()
        .topic_arn(&topic)
        .message(poison)
        .send()
        .await
        .unwrap();

    let app = w.app(Some(&dlq)).await;
    let keys = [
        "P:price:3001",
        "P:product:3001",
        "P:inventory:SKU-3002",
        "P:review:3003",
    ];
    for (url, raw) in [(&raw_q, true), (&env_q, false)] {
        w.set(&mut c, &keys);
        let messages = receive(&sqs, url, 4).await;
        let body = messages[0].body().unwrap();
        assert_eq!(
            body.contains("\"Type\""),
            !raw,
            "raw delivery carries the event, the other queue the SNS envelope: {body}"
        );
        let arn = queue_arn(&sqs, url).await;
        let (report, response) = app.run(sqs_event(&messages, &arn), None).await.unwrap();
        let response = response.unwrap();
        assert_eq!(response, json!({"batchItemFailures": []}), "raw={raw}");
        assert_eq!(
            (report.summary.applied, report.dead_lettered),
            (3, 1),
            "raw={raw}"
        );
        for k in keys {
            assert!(!w.exists(&mut c, k), "{k} (raw={raw})");
        }

        // Lambda deletes what was not reported failed; then nothing is left in the queue.
        common::delete_messages(&sqs, url, &messages).await;
        let left = sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .unwrap();
        assert_eq!(
            left.attributes().unwrap()
                [&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages],
            "0"
        );

        // The poison message is in the dead-letter queue, as it came from this queue.
        let dead = drain(&sqs, &dlq).await;
        assert_eq!(dead.len(), 1);
        let poisoned = messages
            .iter()
            .find(|m| m.message_id() == attr(&dead[0], "invalidator.source.message_id").as_deref())
            .expect("the dead letter names its source message");
        assert_eq!(dead[0].body(), poisoned.body(), "byte-exact (raw={raw})");
        assert_eq!(
            attr(&dead[0], "invalidator.reason").as_deref(),
            Some("unsafe_value")
        );
    }
}
