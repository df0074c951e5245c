//! `deploy/kubernetes/` agrees with the code. No cluster runs where this was written, so the
//! manifests are checked instead of applied: every built-in kind against the Kubernetes schemas
//! (`kubernetes-validate --strict`), the KEDA objects field by field, the ConfigMap's config and
//! rules laid out as the kubelet mounts them and run through the real binary with the Secret's
//! variables, the grace period against `shutdown_timeout`, the probes against `[http] listen`, and
//! every Secret reference against the example Secret.

use std::path::{Path, PathBuf};
use std::process::Command;

use invalidator::config::Config;
use serde_json::Value;

/// A Kubernetes version `kubernetes-validate` 1.37 ships schemas for.
const KUBERNETES_VERSION: &str = "1.30.0";

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

/// The documents of a manifest file (`---` separated).
fn docs(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(dir().join(file)).unwrap();
    text.split("\n---\n")
        .map(|d| serde_saphyr::from_str(d).unwrap_or_else(|e| panic!("{file}: {e}")))
        .collect()
}

fn one(file: &str, kind: &str) -> Value {
    docs(file)
        .into_iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("{file}: no {kind}"))
}

fn deployment() -> Value {
    one("deployment.yaml", "Deployment")
}

fn container(d: &Value) -> &Value {
    let containers = d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(containers.len(), 1);
    &containers[0]
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

fn config_map(name: &str) -> serde_json::Map<String, Value> {
    for file in ["configmap.yaml", "rules.configmap.yaml"] {
        let cm = one(file, "ConfigMap");
        if cm["metadata"]["name"] == name {
            return cm["data"].as_object().unwrap().clone();
        }
    }
    panic!("no ConfigMap {name}")
}

fn config() -> Config {
    let text = config_map("invalidator-config")["invalidator.toml"].clone();
    Config::from_toml(str_of(&text)).unwrap_or_else(|e| panic!("invalidator.toml: {e}"))
}

fn secret() -> (String, serde_json::Map<String, Value>) {
    let s = one("secret.example.yaml", "Secret");
    let data = s["stringData"].as_object().unwrap().clone();
    (str_of(&s["metadata"]["name"]).to_owned(), data)
}

/// `(variable, secret, key)` of every environment variable of the worker taken from a Secret.
fn secret_env(d: &Value) -> Vec<(String, String, String)> {
    let env = container(d)["env"].as_array().unwrap();
    env.iter()
        .filter_map(|e| {
            let r = e.get("valueFrom")?.get("secretKeyRef")?;
            Some((
                str_of(&e["name"]).to_owned(),
                str_of(&r["name"]).to_owned(),
                str_of(&r["key"]).to_owned(),
            ))
        })
        .collect()
}

fn is_keda(file: &str) -> bool {
    docs(file)
        .iter()
        .all(|d| str_of(&d["apiVersion"]).starts_with("keda.sh/"))
}

#[test]
fn every_builtin_manifest_validates_strictly() {
    let mut files: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|f| f.ends_with(".yaml"))
        .collect();
    files.sort();
    // KEDA's CRDs have no schema in kubernetes-validate: the next test checks them by hand.
    files.retain(|f| !is_keda(f));
    assert!(files.len() >= 5, "{files:?}");
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "-k", KUBERNETES_VERSION])
        .args(&files)
        .current_dir(dir())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "kubernetes-validate cannot run ({e}): install it with \
                 `python3 -m pip install kubernetes-validate==1.37.0` (scripts/test.sh does)"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        !text.contains("Couldn't find schema"),
        "nothing skipped: {text}"
    );
    for f in &files {
        assert!(text.contains(&format!("{f} passed")), "{f}: {text}");
    }
}

#[test]
fn the_scaled_object_scales_the_deployment_on_the_workers_group() {
    let so = one("keda.yaml", "ScaledObject");
    let config = config();
    assert_eq!(so["apiVersion"], "keda.sh/v1alpha1");
    let spec = &so["spec"];
    assert_eq!(
        spec["scaleTargetRef"]["name"],
        deployment()["metadata"]["name"]
    );
    assert!(
        deployment()["spec"].get("replicas").is_none(),
        "KEDA owns the replica count"
    );
    assert_eq!(spec["minReplicaCount"], 1);
    let max = spec["maxReplicaCount"]
        .as_u64()
        .expect("maxReplicaCount set");
    assert!(max >= 1);
    let triggers = spec["triggers"].as_array().unwrap();
    let kafka = triggers
        .iter()
        .find(|t| t["type"] == "kafka")
        .expect("a kafka trigger");
    let m = &kafka["metadata"];
    assert_eq!(str_of(&m["bootstrapServers"]), config.kafka.brokers);
    assert_eq!(str_of(&m["consumerGroup"]), config.kafka.group);
    assert_eq!(config.kafka.topics.len(), 1);
    assert_eq!(str_of(&m["topic"]), config.kafka.topics[0]);
    let lag: u64 = str_of(&m["lagThreshold"]).parse().unwrap();
    assert!(lag > 0);
    assert_eq!(
        m["allowIdleConsumers"], "false",
        "never more replicas than partitions"
    );
    let auth = one("keda.yaml", "TriggerAuthentication");
    assert_eq!(kafka["authenticationRef"]["name"], auth["metadata"]["name"]);
}

#[test]
fn every_secret_reference_names_a_key_of_the_example_secret() {
    let (name, data) = secret();
    let mut refs: Vec<(String, String)> = secret_env(&deployment())
        .into_iter()
        .map(|(_, s, k)| (s, k))
        .collect();
    let auth = one("keda.yaml", "TriggerAuthentication");
    for r in auth["spec"]["secretTargetRef"].as_array().unwrap() {
        refs.push((str_of(&r["name"]).into(), str_of(&r["key"]).into()));
    }
    assert!(refs.len() >= 2);
    for (s, k) in &refs {
        assert_eq!(s, &name, "{s}/{k}: not the example Secret");
        assert!(
            data.contains_key(k),
            "{s}/{k}: no such key in secret.example.yaml"
        );
    }
    for k in data.keys() {
        assert!(refs.iter().any(|(_, r)| r == k), "{k}: used by nothing");
    }
    for k in ["redis-url", "kafka-sasl-password"] {
        assert!(
            str_of(&data[k]).contains("PLACEHOLDER"),
            "{k}: a placeholder"
        );
    }
}

/// Writes the ConfigMaps under `root` as the Deployment mounts them (`root` + mount path) and
/// returns the path of the `-c` file.
fn materialize(d: &Value, root: &Path) -> PathBuf {
    let spec = &d["spec"]["template"]["spec"];
    let volumes = spec["volumes"].as_array().unwrap();
    for m in container(d)["volumeMounts"].as_array().unwrap() {
        let v = volumes
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap_or_else(|| panic!("no volume {}", m["name"]));
        let target = root.join(str_of(&m["mountPath"]).trim_start_matches('/'));
        let Some(cm) = v.get("configMap") else {
            std::fs::create_dir_all(&target).unwrap();
            continue;
        };
        let data = config_map(str_of(&cm["name"]));
        match m.get("subPath") {
            Some(key) => {
                std::fs::create_dir_all(target.parent().unwrap()).unwrap();
                std::fs::write(&target, str_of(&data[str_of(key)])).unwrap();
            }
            None => {
                std::fs::create_dir_all(&target).unwrap();
                for (k, text) in &data {
                    std::fs::write(target.join(k), str_of(text)).unwrap();
                }
            }
        }
    }
    let args: Vec<&str> = container(d)["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(str_of)
        .collect();
    let at = args.iter().position(|a| *a == "-c").expect("run -c FILE");
    root.join(args[at + 1].trim_start_matches('/'))
}

/// `invalidator -c FILE rules check DIR` with the example Secret's values in the environment.
fn rules_check(config: &Path, rules: &Path) -> std::process::Output {
    let (_, data) = secret();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_invalidator"));
    cmd.arg("-c")
        .arg(config)
        .args(["rules", "check"])
        .arg(rules);
    for (var, _, key) in secret_env(&deployment()) {
        let value = data
            .get(&key)
            .unwrap_or_else(|| panic!("{var}: no key {key} in secret.example.yaml"));
        cmd.env(var, str_of(value));
    }
    cmd.output().unwrap()
}

/// `rules check` succeeded and said so.
fn assert_rules_ok(out: &std::process::Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("ok: "), "{stdout}");
}

#[test]
fn the_mounted_config_and_rules_pass_the_real_binary() {
    let d = deployment();
    let root = tempfile::tempdir().unwrap();
    let file = materialize(&d, root.path());
    let config = config();
    let rules = root
        .path()
        .join(config.rules.dir.to_str().unwrap().trim_start_matches('/'));
    assert_rules_ok(&rules_check(&file, &rules));

    // Every rule file of the ConfigMap is mounted, and they are the shipped rules.
    let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("rules");
    let data = config_map("invalidator-rules");
    let mounted = std::fs::read_dir(&rules).unwrap().count();
    assert_eq!(
        mounted,
        data.len(),
        "every rule file of the ConfigMap is mounted"
    );
    for (k, text) in &data {
        let want = std::fs::read_to_string(shipped.join(k)).unwrap_or_default();
        assert_eq!(
            str_of(text),
            want,
            "{k}: not rules/{k}; regenerate rules.configmap.yaml (see its header)"
        );
    }
    assert_eq!(std::fs::read_dir(&shipped).unwrap().count(), data.len());

    // The binary accepts the container's arguments.
    let mut args: Vec<String> = container(&d)["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| str_of(a).to_owned())
        .collect();
    args.push("--help".into());
    let out = Command::new(env!("CARGO_BIN_EXE_invalidator"))
        .args(&args)
        .output()
        .unwrap();
    assert!(out.status.success(), "invalidator {args:?}");
}

/// The rules ConfigMap mounted as the whole directory, in the kubelet's real layout (the files in
/// a timestamped directory, `..data` linking to it, each file a link through `..data`): each rule
/// is loaded once. (The loader used to read the hidden copies too, and refused every rule as
/// defined three times.)
#[cfg(unix)]
#[test]
fn a_rules_config_map_in_the_kubelets_layout_loads_each_rule_once() {
    let root = tempfile::tempdir().unwrap();
    let rules = root.path().join("rules");
    let stamped = rules.join("..2026_01_01_00_00_00.000000000");
    std::fs::create_dir_all(&stamped).unwrap();
    std::os::unix::fs::symlink("..2026_01_01_00_00_00.000000000", rules.join("..data")).unwrap();
    for (k, text) in &config_map("invalidator-rules") {
        std::fs::write(stamped.join(k), str_of(text)).unwrap();
        std::os::unix::fs::symlink(format!("..data/{k}"), rules.join(k)).unwrap();
    }
    let file = materialize(&deployment(), root.path());
    assert_rules_ok(&rules_check(&file, &rules));
}

fn port_of(c: &Value, port: &Value) -> u64 {
    if let Some(n) = port.as_u64() {
        return n;
    }
    let named = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == *port)
        .unwrap_or_else(|| panic!("no port named {port}"));
    named["containerPort"].as_u64().unwrap()
}

#[test]
fn grace_period_probes_and_port_agree_with_the_config() {
    let d = deployment();
    let config = config();
    let pod = &d["spec"]["template"];
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    let shutdown = config.kafka.shutdown_timeout.as_secs();
    assert!(
        grace >= shutdown + 10,
        "grace {grace}s leaves shutdown_timeout {shutdown}s a margin"
    );
    let (host, port) = config.http.listen.rsplit_once(':').unwrap();
    assert_eq!(host, "0.0.0.0", "the kubelet and Prometheus reach it");
    let port: u64 = port.parse().unwrap();
    let c = container(&d);
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(port_of(c, &get["port"]), port, "{probe}");
    }
    let notes = &pod["metadata"]["annotations"];
    assert_eq!(notes["prometheus.io/port"], port.to_string());
    assert_eq!(notes["prometheus.io/path"], "/metrics");
}

fn mebibytes(q: &Value) -> u64 {
    str_of(q)
        .strip_suffix("Mi")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{q}: in Mi"))
}

#[test]
fn the_pod_is_locked_down_sized_and_disrupted_one_at_a_time() {
    let d = deployment();
    let pod = &d["spec"]["template"]["spec"];
    let c = container(&d);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));

    let compose: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docker-compose.yml"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(c["image"], compose["services"]["worker"]["image"]);

    // docs/operations.md "Worker memory": about 3 × max_in_flight_bytes, a quarter of it for
    // librdkafka, 50 MiB for the process.
    let budget = config().kafka.max_in_flight_bytes as u64 >> 20;
    let rule = 3 * budget + budget / 4 + 50;
    let request = mebibytes(&c["resources"]["requests"]["memory"]);
    let limit = mebibytes(&c["resources"]["limits"]["memory"]);
    assert!(request >= rule, "request {request}Mi < {rule}Mi");
    assert!(limit > request);

    let pdb = one("pdb.yaml", "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        d["spec"]["template"]["metadata"]["labels"]
    );
}
