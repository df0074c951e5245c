//! Shared helpers of the Lambda tests: the real local Redis (DB 9 of `redis://127.0.0.1:6379/9`,
//! or `INVALIDATOR_TEST_REDIS_URL`) with a random key prefix per test, and moto_server for SQS and
//! SNS (`INVALIDATOR_TEST_MOTO_URL`, default `http://127.0.0.1:5055`; `scripts/moto.sh` starts it).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use aws_sdk_sqs::types::QueueAttributeName;
use invalidator::config::Config;
use invalidator_lambda::app::App;
use invalidator_lambda::dlq::SqsDeadLetters;

// The test Redis and a test's key space in it, as the main crate's tests have them.
#[path = "../../../tests/common/keyspace.rs"]
mod keyspace;
#[allow(unused_imports)]
pub use keyspace::{Keyspace, conn, redis_url};

pub fn moto_url() -> String {
    std::env::var("INVALIDATOR_TEST_MOTO_URL").unwrap_or_else(|_| "http://127.0.0.1:5055".into())
}

/// `lambda/tests/fixtures/{name}`.
pub fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn fixture(name: &str) -> String {
    let path = fixture_path(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn fixture_json(name: &str) -> serde_json::Value {
    serde_json::from_str(&fixture(name)).expect("fixture is JSON")
}

/// The keys `sqs-batch.json` invalidates under the test rules.
pub const BATCH_KEYS: &[&str] = &[
    "P:price:2001",
    "P:product:2001",
    "P:inventory:SKU-2002",
    "P:review:2003",
    "P:price:2004",
    "P:product:2004",
    "P:product:2007",
    "P:review:2009",
];

/// The `itemIdentifier`s of a partial batch response.
pub fn failures(v: &serde_json::Value) -> Vec<String> {
    v["batchItemFailures"]
        .as_array()
        .unwrap_or_else(|| panic!("not a partial batch response: {v}"))
        .iter()
        .map(|f| f["itemIdentifier"].as_str().unwrap().to_owned())
        .collect()
}

/// One test's world: its key space (prefix `w.p`; `w.k`, `w.set`, `w.exists` through
/// [`Keyspace`]) and a temp dir holding `rules/` (the rules of `fixtures/rules/lambda.yaml` as
/// `test.yaml`).
pub struct World {
    pub ks: Keyspace,
    pub dir: tempfile::TempDir,
}

impl std::ops::Deref for World {
    type Target = Keyspace;

    fn deref(&self) -> &Keyspace {
        &self.ks
    }
}

impl World {
    pub fn new() -> World {
        let w = World {
            ks: Keyspace::new(),
            dir: tempfile::tempdir().expect("tempdir"),
        };
        std::fs::create_dir_all(w.rules_dir()).unwrap();
        w.rules_fixture("test.yaml", "rules/lambda.yaml");
        w
    }

    /// Writes `rules/{name}` from the fixture `rel` (with `P:` replaced).
    pub fn rules_fixture(&self, name: &str, rel: &str) {
        std::fs::write(self.rules_dir().join(name), self.k(&fixture(rel))).unwrap();
    }

    pub fn rules_dir(&self) -> PathBuf {
        self.dir.path().join("rules")
    }

    /// The configuration of the Lambda under test, as TOML.
    pub fn config_text(&self, redis: &str, dlq_url: Option<&str>, extra: &str) -> String {
        let mut t = format!(
            "[rules]\ndir = \"{}\"\n\n[redis]\nurl = \"{redis}\"\nretry_for = \"2s\"\n\n[tags]\nprefix = \"{p}tag:\"\n\n[cdn.logcdn]\nkind = \"log\"\n\n",
            self.rules_dir().display(),
            p = self.p
        );
        if !extra.contains("[dedupe]") {
            t.push_str(&format!("[dedupe]\nprefix = \"{}seen:\"\n\n", self.p));
        }
        t.push_str("[lambda]\n");
        if let Some(url) = dlq_url {
            t.push_str(&format!("dlq_url = \"{url}\"\n"));
        }
        t.push_str(&self.k(extra));
        t
    }

    pub fn config(&self, dlq_url: Option<&str>, extra: &str) -> Config {
        Config::from_toml(&self.config_text(&redis_url(), dlq_url, extra)).expect("config")
    }

    pub async fn app(&self, dlq_url: Option<&str>) -> App {
        self.app_with(dlq_url, "").await
    }

    pub async fn app_with(&self, dlq_url: Option<&str>, extra: &str) -> App {
        let dlq = match dlq_url {
            Some(url) => Some(SqsDeadLetters::new(sqs().await, url)),
            None => None,
        };
        App::new(self.config(dlq_url, extra), dlq)
            .await
            .unwrap_or_else(|e| panic!("init: {e}"))
    }
}

fn aws_config_for(url: &str) -> aws_sdk_sqs::config::Config {
    aws_sdk_sqs::config::Config::builder()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
        .endpoint_url(url)
        .build()
}

/// An SQS client for moto_server.
pub async fn sqs() -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::from_conf(aws_config_for(&moto_url()))
}

/// An SNS client for moto_server.
pub async fn sns() -> aws_sdk_sns::Client {
    let conf = aws_sdk_sns::config::Config::builder()
        .behavior_version(aws_sdk_sns::config::BehaviorVersion::latest())
        .region(aws_sdk_sns::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sns::config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
        .endpoint_url(moto_url())
        .build();
    aws_sdk_sns::Client::from_conf(conf)
}

/// A new queue with a random name; its URL.
pub async fn queue(sqs: &aws_sdk_sqs::Client, stem: &str) -> String {
    let name = format!("{stem}-{:08x}", rand::random::<u32>());
    sqs.create_queue()
        .queue_name(name)
        .send()
        .await
        .expect("moto_server must answer (scripts/moto.sh)")
        .queue_url()
        .expect("queue url")
        .to_owned()
}

pub async fn queue_arn(sqs: &aws_sdk_sqs::Client, url: &str) -> String {
    sqs.get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn))
        .cloned()
        .expect("queue arn")
}

/// Every message waiting in a queue (received with their attributes, then deleted).
pub async fn drain(sqs: &aws_sdk_sqs::Client, url: &str) -> Vec<aws_sdk_sqs::types::Message> {
    let mut all = Vec::new();
    loop {
        let out = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
            .wait_time_seconds(0)
            .send()
            .await
            .unwrap();
        let msgs = out.messages().to_vec();
        if msgs.is_empty() {
            return all;
        }
        delete_messages(sqs, url, &msgs).await;
        all.extend(msgs);
    }
}

/// Deletes `msgs` (received from the queue at `url`), as Lambda does with what succeeded.
pub async fn delete_messages(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    msgs: &[aws_sdk_sqs::types::Message],
) {
    for m in msgs {
        sqs.delete_message()
            .queue_url(url)
            .receipt_handle(m.receipt_handle().unwrap())
            .send()
            .await
            .unwrap();
    }
}

/// A string message attribute.
pub fn attr(m: &aws_sdk_sqs::types::Message, name: &str) -> Option<String> {
    m.message_attributes()
        .and_then(|a| a.get(name))
        .and_then(|v| v.string_value())
        .map(str::to_owned)
}
