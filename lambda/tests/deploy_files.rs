//! The SAM template (`lambda/template.yaml`) and the packaged configuration (`lambda/invalidator.toml`)
//! agree with the code: parsed with serde-saphyr and checked, since no AWS account is reachable
//! here. Every `Ref`/`Fn::GetAtt`/condition names something declared; the handler, runtime,
//! architecture and code path are what `cargo lambda build` produces; every environment variable
//! is a configuration key the binary accepts, with a value it parses.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use invalidator::config::Config;
use invalidator::rules::{CompileOptions, RuleSet};
use serde_json::Value;

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn template() -> Value {
    let text = std::fs::read_to_string(crate_dir().join("template.yaml")).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("template.yaml: {e}"))
}

fn resource<'a>(t: &'a Value, name: &str) -> &'a Value {
    t["Resources"]
        .get(name)
        .unwrap_or_else(|| panic!("no resource {name}"))
}

fn props<'a>(t: &'a Value, name: &str) -> &'a Value {
    &resource(t, name)["Properties"]
}

fn r#ref(name: &str) -> Value {
    serde_json::json!({ "Ref": name })
}

fn get_att(resource: &str, attr: &str) -> Value {
    serde_json::json!({ "Fn::GetAtt": [resource, attr] })
}

/// Every `Ref`, `Fn::GetAtt` and condition name used in `v`.
fn walk(
    v: &Value,
    refs: &mut BTreeSet<String>,
    atts: &mut BTreeSet<String>,
    conds: &mut BTreeSet<String>,
) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("Ref", Value::String(s)) => {
                        refs.insert(s.clone());
                    }
                    ("Fn::GetAtt", Value::Array(a)) => {
                        atts.insert(a[0].as_str().unwrap().to_owned());
                    }
                    ("Fn::If", Value::Array(a)) => {
                        conds.insert(a[0].as_str().unwrap().to_owned());
                    }
                    ("Condition", Value::String(s)) => {
                        conds.insert(s.clone());
                    }
                    _ => {}
                }
                walk(x, refs, atts, conds);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| walk(x, refs, atts, conds)),
        _ => {}
    }
}

#[test]
fn every_reference_names_something_declared() {
    let t = template();
    let params: BTreeSet<String> = t["Parameters"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let resources: BTreeSet<String> = t["Resources"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let conditions: BTreeSet<String> = t["Conditions"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let (mut refs, mut atts, mut conds) = Default::default();
    walk(&t, &mut refs, &mut atts, &mut conds);
    for r in &refs {
        assert!(
            params.contains(r) || resources.contains(r) || r.starts_with("AWS::"),
            "Ref {r} names neither a parameter nor a resource"
        );
    }
    for a in &atts {
        assert!(resources.contains(a), "Fn::GetAtt of unknown resource {a}");
    }
    for c in &conds {
        assert!(conditions.contains(c), "unknown condition {c}");
    }
    // And nothing is declared for nothing.
    for p in &params {
        assert!(
            refs.contains(p) || t["Conditions"].to_string().contains(&format!("\"{p}\"")),
            "parameter {p} is never used"
        );
    }
    assert!(
        t["Transform"].as_str() == Some("AWS::Serverless-2016-10-31"),
        "a SAM template"
    );
}

#[test]
fn the_function_is_what_cargo_lambda_builds() {
    let t = template();
    let f = resource(&t, "Function");
    assert_eq!(f["Type"], "AWS::Serverless::Function");
    let p = &f["Properties"];
    assert_eq!(p["Runtime"], "provided.al2023");
    assert_eq!(p["Architectures"], serde_json::json!(["arm64"]));
    assert_eq!(
        p["Handler"], "bootstrap",
        "cargo lambda names the binary bootstrap"
    );
    let bin = Path::new(env!("CARGO_BIN_EXE_invalidator-lambda"))
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(bin, "invalidator-lambda");
    // `cargo lambda build` writes target/lambda/<bin>/bootstrap in the workspace target dir.
    assert_eq!(
        p["CodeUri"].as_str().unwrap(),
        format!("../target/lambda/{bin}/")
    );
    let readme = std::fs::read_to_string(crate_dir().join("../README.md")).unwrap();
    assert!(readme.contains("cargo lambda build --release --arm64"));
    assert!(
        readme.contains(&format!("target/lambda/{bin}/")),
        "the README copies rules/ and invalidator.toml where the template takes the code"
    );
    assert_eq!(p["VpcConfig"]["SubnetIds"], r#ref("SubnetIds"));
    assert_eq!(
        p["VpcConfig"]["SecurityGroupIds"],
        r#ref("SecurityGroupIds")
    );
    assert_eq!(
        t["Parameters"]["SubnetIds"]["Type"],
        "List<AWS::EC2::Subnet::Id>"
    );
    assert_eq!(
        t["Parameters"]["SecurityGroupIds"]["Type"],
        "List<AWS::EC2::SecurityGroup::Id>"
    );
    // Direct SNS invocations end in the dead-letter queue after Lambda's retries.
    assert_eq!(
        p["EventInvokeConfig"]["DestinationConfig"]["OnFailure"]["Destination"],
        get_att("DeadLetterQueue", "Arn")
    );
}

#[test]
fn sqs_trigger_reports_batch_item_failures_and_redrives_to_the_dlq() {
    let t = template();
    let m = resource(&t, "EventQueueMapping");
    assert_eq!(m["Type"], "AWS::Lambda::EventSourceMapping");
    assert_eq!(m["Condition"], "UseSqs");
    let p = &m["Properties"];
    assert_eq!(
        p["FunctionResponseTypes"],
        serde_json::json!(["ReportBatchItemFailures"])
    );
    assert_eq!(p["EventSourceArn"], get_att("EventQueue", "Arn"));
    assert_eq!(p["FunctionName"], r#ref("Function"));

    let q = props(&t, "EventQueue");
    assert_eq!(
        q["RedrivePolicy"]["deadLetterTargetArn"],
        get_att("DeadLetterQueue", "Arn")
    );
    assert_eq!(
        q["RedrivePolicy"]["maxReceiveCount"],
        r#ref("MaxReceiveCount")
    );
    let visibility = q["VisibilityTimeout"].as_u64().unwrap();
    let timeout = &t["Parameters"]["Timeout"];
    assert!(
        visibility >= timeout["MaxValue"].as_u64().unwrap()
            && visibility >= timeout["Default"].as_u64().unwrap(),
        "Lambda refuses a queue whose visibility timeout is under the function timeout"
    );

    let s = props(&t, "EventQueueSubscription");
    assert_eq!(s["Protocol"], "sqs");
    assert_eq!(s["Endpoint"], get_att("EventQueue", "Arn"));
    assert_eq!(s["RawMessageDelivery"], r#ref("RawMessageDelivery"));
    assert_eq!(
        t["Parameters"]["RawMessageDelivery"]["AllowedValues"],
        serde_json::json!(["true", "false"])
    );
    let s = props(&t, "TopicSubscription");
    assert_eq!(s["Protocol"], "lambda");
    assert_eq!(resource(&t, "TopicSubscription")["Condition"], "UseSns");
}

#[test]
fn every_queue_outlives_the_stack() {
    // cfn-lint I3011: without both policies, deleting (or replacing) the stack deletes the queue
    // and every poison message or pending event in it.
    let t = template();
    let queues: Vec<(&String, &Value)> = t["Resources"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, r)| r["Type"] == "AWS::SQS::Queue")
        .collect();
    let names: Vec<&str> = queues.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&"DeadLetterQueue"), "{names:?}");
    for (name, r) in queues {
        assert_eq!(r["DeletionPolicy"], "Retain", "{name}: DeletionPolicy");
        assert_eq!(
            r["UpdateReplacePolicy"], "Retain",
            "{name}: UpdateReplacePolicy"
        );
    }
}

/// A sample value for an environment variable set from a template reference.
fn sample(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        v if *v == r#ref("RedisUrl") => {
            "rediss://app:secret@primary.abc123.cache.amazonaws.com:6379/0".into()
        }
        v if *v == r#ref("DeadLetterQueue") => {
            "https://sqs.us-east-1.amazonaws.com/123456789012/stack-dlq".into()
        }
        v if *v == r#ref("LogFilter") => "sample".into(),
        v => panic!("no sample for {v}"),
    }
}

#[test]
fn every_environment_variable_is_a_config_key_the_binary_accepts() {
    let t = template();
    let env = props(&t, "Function")["Environment"]["Variables"]
        .as_object()
        .unwrap();
    let mut sections: std::collections::BTreeMap<String, String> = Default::default();
    let mut names = Vec::new();
    for (name, value) in env {
        let value = sample(value);
        if name == "RUST_LOG" {
            let filter = t["Parameters"]["LogFilter"]["Default"].as_str().unwrap();
            tracing_subscriber::EnvFilter::try_new(filter).expect("the default log filter parses");
            continue;
        }
        let key = name
            .strip_prefix(invalidator::config::ENV_PREFIX)
            .unwrap_or_else(|| panic!("{name}: not an INVALIDATOR_* variable"));
        let (section, field) = key.split_once("__").unwrap();
        assert!(!field.contains("__"), "{name}");
        sections
            .entry(section.to_lowercase())
            .or_default()
            .push_str(&format!(
                "{} = {}\n",
                field.to_lowercase(),
                serde_json::to_string(&value).unwrap()
            ));
        names.push(name.clone());
    }
    let toml: String = sections
        .iter()
        .map(|(section, keys)| format!("[{section}]\n{keys}"))
        .collect();
    let config = Config::from_toml(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    assert_eq!(
        config.lambda.dlq_url.as_ref().map(|u| u.as_str()),
        Some("https://sqs.us-east-1.amazonaws.com/123456789012/stack-dlq")
    );
    assert_eq!(config.rules.dir, Path::new("/var/task/rules"));
    assert!(names.contains(&"INVALIDATOR_REDIS__URL".to_string()));
    assert!(names.contains(&"INVALIDATOR_LAMBDA__DLQ_URL".to_string()));
}

#[test]
fn the_packaged_config_compiles_the_shipped_rules() {
    let text = std::fs::read_to_string(crate_dir().join("invalidator.toml")).unwrap();
    let config = Config::from_toml(&text).expect("lambda/invalidator.toml");
    assert_eq!(config.rules.dir, Path::new("rules"));
    let options = CompileOptions {
        limits: config.rule_limits(),
        cdn_targets: Some(config.cdn.keys().cloned().collect()),
    };
    let rules = RuleSet::load(&crate_dir().join("../rules"), &options)
        .unwrap_or_else(|e| panic!("the shipped rules with lambda/invalidator.toml:\n{e}"));
    assert!(!rules.rules.is_empty());
}
