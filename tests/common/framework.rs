//! The frameworks' own cache code, driven as an application would drive it: Symfony Cache (PHP,
//! `tests/frameworks/symfony.php`) and the Next.js cache handler `@fortedigital/nextjs-cache-handler`
//! (Node, `tests/frameworks/nextjs.mjs`). `scripts/test.sh` installs both; see
//! `tests/frameworks/README.md` for the scripts' contract.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

use super::cluster;
use super::keyspace::redis_url;

/// Where an application keeps its cache: the test Redis, or the test Redis Cluster.
#[derive(Clone, Copy, Debug)]
pub enum Store {
    Single,
    Cluster,
}

impl Store {
    /// The URL of each node: the test Redis, or every seed of the Cluster.
    pub fn nodes(self) -> Vec<String> {
        match self {
            Store::Single => vec![redis_url()],
            Store::Cluster => cluster::seeds(),
        }
    }

    /// The `[redis]` section body of an invalidator config pointing at this store.
    pub fn redis_config(self) -> String {
        match self {
            Store::Single => format!("url = \"{}\"\nretry_for = \"5s\"\n", redis_url()),
            Store::Cluster => format!("cluster = {:?}\nretry_for = \"5s\"\n", cluster::seeds()),
        }
    }
}

/// One application's cache, through its framework.
pub struct App {
    program: &'static str,
    script: PathBuf,
    config: Value,
    store: Store,
    /// Every key of this application holds it (removed when the `App` is dropped).
    mark: String,
}

/// An entry to write: key, tags, value.
pub type Entry<'a> = (&'a str, &'a [&'a str], &'a str);

impl App {
    /// Symfony Cache with `layout` (`symfony` or `symfony-versions`) under `namespace`;
    /// `extra` adds keys to the script's config (`tags_namespace`, `client_prefix`).
    pub fn symfony(store: Store, layout: &str, namespace: &str, extra: Value) -> App {
        let mut config = json!({ "layout": layout, "namespace": namespace });
        match store {
            Store::Single => {
                let (addr, db) = host_and_db(&redis_url());
                config["redis"] = json!(addr);
                config["db"] = json!(db);
            }
            Store::Cluster => {
                let nodes: Vec<String> = cluster::seeds()
                    .iter()
                    .map(|s| s.trim_start_matches("redis://").to_owned())
                    .collect();
                config["cluster"] = json!(nodes);
            }
        }
        merge(&mut config, extra);
        App::new("php", "symfony.php", config, store, namespace)
    }

    /// The Next.js handler's `redis-strings` with `keyPrefix` `key_prefix`.
    pub fn nextjs(store: Store, key_prefix: &str) -> App {
        let config = match store {
            Store::Single => json!({ "url": redis_url(), "key_prefix": key_prefix }),
            Store::Cluster => json!({ "cluster": cluster::seeds(), "key_prefix": key_prefix }),
        };
        App::new("node", "nextjs.mjs", config, store, key_prefix)
    }

    fn new(program: &'static str, script: &str, config: Value, store: Store, mark: &str) -> App {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/frameworks");
        let ready = match program {
            "node" => dir
                .join("node_modules/@fortedigital/nextjs-cache-handler")
                .exists(),
            _ => Path::new("/usr/share/php/Symfony/Component/Cache").exists(),
        };
        assert!(
            ready,
            "the {program} framework harness is not installed: run `bash scripts/test.sh` once \
             (it installs php-symfony-cache and runs `npm ci` in tests/frameworks)"
        );
        App {
            program,
            script: dir.join(script),
            config,
            store,
            mark: mark.to_owned(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.program);
        cmd.arg(&self.script)
            .arg(self.config.to_string())
            .args(args);
        cmd
    }

    /// Runs `args` with `input` lines on stdin; its output lines as JSON.
    fn run(&self, args: &[&str], input: &[Value]) -> Vec<Value> {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.program));
        let mut stdin = child.stdin.take().expect("stdin");
        for line in input {
            writeln!(stdin, "{line}").expect("write to the harness");
        }
        drop(stdin);
        let out = child.wait_with_output().expect("the harness runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{} {args:?} failed ({}):\n{}\n{stdout}",
            self.program,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect()
    }

    /// Saves `entries` through the framework.
    pub fn write(&self, entries: &[Entry]) {
        let lines: Vec<Value> = entries
            .iter()
            .map(|(key, tags, value)| json!({ "key": key, "tags": tags, "value": value }))
            .collect();
        let out = self.run(&["write"], &lines);
        assert_eq!(out, [json!({ "written": entries.len() })]);
    }

    /// Reads `keys` through the framework: key → the value on a hit, `None` on a miss.
    pub fn read(&self, keys: &[&str]) -> BTreeMap<String, Option<String>> {
        self.read_lines(keys.iter().map(|k| json!({ "key": k })).collect())
    }

    /// Reads with lines of the script's `read` (Next.js: `implicit_tags` too).
    pub fn read_lines(&self, lines: Vec<Value>) -> BTreeMap<String, Option<String>> {
        self.run(&["read"], &lines)
            .into_iter()
            .map(|v| {
                let key = v["key"].as_str().expect("key").to_owned();
                let value = v["hit"]
                    .as_bool()
                    .expect("hit")
                    .then(|| v["value"].as_str().expect("value").to_owned());
                (key, value)
            })
            .collect()
    }

    /// Keys of `keys` the framework serves (hits).
    pub fn hits(&self, keys: &[&str]) -> Vec<String> {
        self.read(keys)
            .into_iter()
            .filter_map(|(k, v)| v.map(|_| k))
            .collect()
    }

    /// The framework's own invalidation of `tags` (Symfony `invalidateTags`, Next.js
    /// `revalidateTag`).
    pub fn invalidate(&self, tags: &[&str]) {
        let mut args = vec!["invalidate"];
        args.extend(tags);
        self.run(&args, &[]);
    }

    /// A writer racing whatever runs meanwhile: `race-0..race-{keys}` written tagged `tag`, over
    /// and over, until `stop` exists; each write's completion goes to `log` as a JSON line.
    pub fn race(&self, tag: &str, keys: usize, stop: &Path, log: &Path) -> Child {
        let n = keys.to_string();
        self.command(&["race", tag, &n, stop.to_str().expect("UTF-8 path")])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(log).expect("race log"))
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the racing writer")
    }
}

/// `host:port` and database of a `redis://host:port/db` URL.
fn host_and_db(url: &str) -> (String, u32) {
    let rest = url.trim_start_matches("redis://");
    let (addr, db) = rest.split_once('/').unwrap_or((rest, "0"));
    let db = db.split('?').next().unwrap_or("0");
    (addr.to_owned(), db.parse().unwrap_or(0))
}

fn merge(config: &mut Value, extra: Value) {
    if let (Some(c), Value::Object(extra)) = (config.as_object_mut(), extra) {
        c.extend(extra);
    }
}

impl Drop for App {
    fn drop(&mut self) {
        // Best effort clean-up of the application's keys, on every node.
        for url in self.store.nodes() {
            let Ok(mut c) = redis::Client::open(url).and_then(|c| c.get_connection()) else {
                continue;
            };
            let keys: Vec<Vec<u8>> = redis::cmd("KEYS")
                .arg(format!("*{}*", self.mark))
                .query(&mut c)
                .unwrap_or_default();
            for k in keys {
                let _: redis::RedisResult<i64> = redis::cmd("UNLINK").arg(k).query(&mut c);
            }
        }
    }
}
