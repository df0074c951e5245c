//! `docker-compose.yml` and the `Dockerfile` agree with the code. No Docker engine runs where this
//! was written, so they are parsed and checked instead of run: pinned images, the worker's command
//! accepted by the binary, the mounted config parsing and compiling the mounted rules, topic names,
//! hosts and ports agreeing with that config, and the Dockerfile building and running the binary
//! the compose file runs.

use std::path::{Path, PathBuf};
use std::process::Command;

use invalidator::config::Config;
use invalidator::rules::{CompileOptions, RuleSet};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn compose() -> Value {
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("docker-compose.yml: {e}"))
}

fn service<'a>(c: &'a Value, name: &str) -> &'a Value {
    c["services"]
        .get(name)
        .unwrap_or_else(|| panic!("no service {name}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

/// The command of a one-shot service (`entrypoint: [sh, -c]`, `command: [script]`).
fn script(s: &Value) -> String {
    assert_eq!(strings(&s["entrypoint"]), vec!["/bin/sh", "-c"]);
    strings(&s["command"]).join(" ")
}

/// `host:container` mounts of a service, with the host side resolved in the repository.
fn mounts(s: &Value) -> Vec<(PathBuf, String)> {
    strings(&s["volumes"])
        .into_iter()
        .map(|v| {
            let mut parts = v.split(':');
            let host = parts.next().unwrap();
            let target = parts.next().unwrap().to_owned();
            assert!(host.starts_with("./"), "{v}: a path in the repository");
            let host = root().join(host);
            assert!(host.exists(), "{v}: {} does not exist", host.display());
            (host, target)
        })
        .collect()
}

/// The worker's mounted configuration file, parsed like the binary does.
fn worker_config(c: &Value) -> (Config, Vec<(PathBuf, String)>) {
    let worker = service(c, "worker");
    let command = strings(&worker["command"]);
    let at = command.iter().position(|a| a == "-c").expect("run -c FILE");
    let path = &command[at + 1];
    let m = mounts(worker);
    let (host, _) = m
        .iter()
        .find(|(_, target)| target == path)
        .unwrap_or_else(|| panic!("{path} is not mounted"));
    let text = std::fs::read_to_string(host).unwrap();
    let config = Config::from_toml(&text).unwrap_or_else(|e| panic!("{}: {e}", host.display()));
    (config, m)
}

#[test]
fn every_image_is_pinned_and_every_service_is_there() {
    let c = compose();
    let services = c["services"].as_object().unwrap();
    for name in ["kafka", "redis", "aws", "worker", "producer"] {
        assert!(services.contains_key(name), "service {name}");
    }
    for (name, s) in services {
        let image = s["image"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} has no image"));
        let tag = image.rsplit_once(':').map(|(_, t)| t);
        assert!(
            matches!(tag, Some(t) if t != "latest" && t.chars().next().unwrap().is_ascii_digit()
                || name == "worker"),
            "{name}: image {image} is not pinned to a version"
        );
    }
    assert!(
        service(&c, "kafka")["image"]
            .as_str()
            .unwrap()
            .starts_with("apache/kafka:")
    );
    assert!(
        service(&c, "aws")["image"]
            .as_str()
            .unwrap()
            .starts_with("motoserver/moto:")
    );
}

#[test]
fn kafka_runs_in_kraft_mode_where_the_worker_looks_for_it() {
    let c = compose();
    let env = &service(&c, "kafka")["environment"];
    assert!(
        env["KAFKA_PROCESS_ROLES"]
            .as_str()
            .unwrap()
            .contains("controller"),
        "KRaft: no ZooKeeper"
    );
    assert!(c["services"].get("zookeeper").is_none());
    let (config, _) = worker_config(&c);
    let advertised = env["KAFKA_ADVERTISED_LISTENERS"].as_str().unwrap();
    assert!(
        advertised.contains(&format!("PLAINTEXT://{}", config.kafka.brokers)),
        "the worker's brokers {} are advertised: {advertised}",
        config.kafka.brokers
    );
}

#[test]
fn topics_hosts_and_ports_agree_with_the_worker_config() {
    let c = compose();
    let (config, _) = worker_config(&c);
    let init = script(service(&c, "kafka-init"));
    let source = &config.kafka.topics[0];
    assert_eq!(config.kafka.topics.len(), 1);
    let dlq = config.kafka.dlq_topic_for(source);
    assert!(init.contains(&format!("--topic {source} ")), "{init}");
    assert!(init.contains(&format!("--topic {dlq} ")), "{init}");
    assert_eq!(
        service(&c, "kafka")["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"],
        "false",
        "topics come from kafka-init only, so their names are checked here"
    );
    let producer = script(service(&c, "producer"));
    assert!(
        producer.contains(&format!("--topic {source} ")),
        "{producer}"
    );
    assert!(producer.contains("< /samples/events.jsonl"));
    assert!(
        mounts(service(&c, "producer"))
            .iter()
            .any(|(h, t)| t == "/samples" && h.join("events.jsonl").exists())
    );
    assert!(
        mounts(service(&c, "cache-seed"))
            .iter()
            .any(|(h, t)| t == "/samples" && h.join("cache-seed.redis").exists())
    );
    assert!(script(service(&c, "cache-seed")).contains("redis-cli -h redis"));

    assert_eq!(config.redis.url.as_deref(), Some("redis://redis:6379/0"));
    assert!(strings(&service(&c, "redis")["ports"]).contains(&"6379:6379".to_string()));
    let port = config.http.listen.rsplit_once(':').unwrap().1;
    assert!(
        config.http.listen.starts_with("0.0.0.0:"),
        "reachable from the host"
    );
    assert!(strings(&service(&c, "worker")["ports"]).contains(&format!("{port}:{port}")));
}

#[test]
fn the_mounted_rules_compile_with_the_mounted_config() {
    let c = compose();
    let (config, m) = worker_config(&c);
    let (host, _) = m
        .iter()
        .find(|(_, t)| Path::new(t) == config.rules.dir)
        .unwrap_or_else(|| panic!("[rules] dir {} is not mounted", config.rules.dir.display()));
    let options = CompileOptions {
        limits: config.rule_limits(),
        cdn_targets: Some(config.cdn.keys().cloned().collect()),
    };
    let rules = RuleSet::load(host, &options).unwrap_or_else(|e| panic!("{e}"));
    assert!(!rules.rules.is_empty());
}

#[test]
fn the_binary_accepts_the_workers_command() {
    let c = compose();
    let worker = service(&c, "worker");
    let mut args = strings(&worker["command"]);
    args.push("--help".into());
    let out = Command::new(env!("CARGO_BIN_EXE_invalidator"))
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "invalidator {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Kafka"));
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn dockerfile() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let mut out: Vec<(String, String)> = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('#') || (l.is_empty() && pending.is_empty()) {
            continue;
        }
        if let Some(part) = l.strip_suffix('\\') {
            pending.push_str(part);
            pending.push(' ');
            continue;
        }
        pending.push_str(l);
        let (op, rest) = pending.split_once(' ').unwrap();
        out.push((op.to_uppercase(), rest.trim().to_owned()));
        pending.clear();
    }
    out
}

#[test]
fn the_dockerfile_builds_the_binary_the_compose_file_runs() {
    let c = compose();
    let build = &service(&c, "worker")["build"];
    assert_eq!(build["context"], ".");
    assert_eq!(build["dockerfile"], "Dockerfile");
    let bin = Path::new(env!("CARGO_BIN_EXE_invalidator"))
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let ins = dockerfile();

    let froms: Vec<&String> = ins
        .iter()
        .filter(|(op, _)| op == "FROM")
        .map(|(_, a)| a)
        .collect();
    assert_eq!(froms.len(), 2, "multi-stage: build, then runtime");
    let rust = froms[0]
        .strip_prefix("rust:")
        .expect("the build stage is the Rust image");
    let (major_minor, _) = rust.split_once('-').unwrap();
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let msrv = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .unwrap()
        .trim_end_matches('"');
    let version = |v: &str| -> (u32, u32) {
        let mut p = v.split('.').map(|x| x.parse::<u32>().unwrap());
        (p.next().unwrap(), p.next().unwrap())
    };
    assert!(
        version(major_minor) >= version(msrv),
        "rust:{major_minor} builds a crate that needs {msrv}"
    );
    assert!(froms[0].ends_with(" AS build"));

    let runs: Vec<&String> = ins
        .iter()
        .filter(|(op, _)| op == "RUN")
        .map(|(_, a)| a)
        .collect();
    let cargo = runs
        .iter()
        .find(|r| r.contains("cargo build"))
        .expect("a cargo build");
    assert!(cargo.contains("--release") && cargo.contains("--locked"));
    assert!(cargo.contains(&format!("--bin {bin} ")), "{cargo}");
    assert!(
        cargo.contains(&format!("cp target/release/{bin} /usr/local/bin/{bin}")),
        "{cargo}"
    );
    let copied = ins.iter().any(|(op, a)| {
        op == "COPY" && a == &format!("--from=build /usr/local/bin/{bin} /usr/local/bin/{bin}")
    });
    assert!(
        copied,
        "the runtime stage takes the binary from the build stage"
    );
    let entry = ins.iter().rev().find(|(op, _)| op == "ENTRYPOINT").unwrap();
    assert_eq!(entry.1, format!("[\"/usr/local/bin/{bin}\"]"));
    let image = &service(&c, "worker")["command"];
    assert_eq!(strings(image)[0], "run", "the compose file runs the worker");

    // Every file the build context must hold is in the repository.
    for (op, a) in &ins {
        if op == "COPY" && !a.starts_with("--from") {
            let parts: Vec<&str> = a.split_whitespace().collect();
            for src in &parts[..parts.len() - 1] {
                assert!(
                    root().join(src).exists(),
                    "COPY {src}: not in the repository"
                );
            }
        }
    }
    // What Cargo.toml needs to build: the workspace members and the declared bench targets.
    for needed in ["src", "lambda", "bench", "Cargo.lock"] {
        assert!(
            ins.iter().any(|(op, a)| op == "COPY"
                && a.split_whitespace()
                    .any(|w| w.trim_end_matches('/') == needed || w == format!("./{needed}"))),
            "the build stage copies {needed}"
        );
    }
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    assert!(
        ignore.lines().any(|l| l.trim() == "target"),
        "the build context leaves target/ out"
    );
}
