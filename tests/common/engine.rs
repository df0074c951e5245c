//! The tests' one door into the library's engine (`invalidator::engine`): the unit of work that
//! the replay and the worker drive, run here directly where a test needs to time two units against
//! each other or to read a target's figures. Everything else goes through the binary.

use std::path::PathBuf;
use std::sync::Arc;

use futures::future::join_all;
use invalidator::apply::redis::Redis;
use invalidator::config::Config;
pub use invalidator::engine::{Engine, EngineError, Outcome, UnitResult};
use invalidator::event::{Expanded, Position, expand_document};
use invalidator::replay::{self, ReplayOptions, Source, Summary};
use invalidator::rules::{CompileOptions, RuleSet};

use super::World;

impl World {
    /// Builds the engine through the library, as `main` does.
    pub async fn engine(&self) -> Engine {
        let config = Config::from_toml(&self.config_text()).expect("config");
        let options = CompileOptions {
            limits: config.rule_limits(),
            cdn_targets: Some(config.cdn.keys().cloned().collect()),
        };
        let rules = RuleSet::load(&self.rules_dir(), &options)
            .unwrap_or_else(|e| panic!("rules must compile:\n{e}"));
        let redis = Redis::connect(&config.redis, Some(config.redis.retry_for))
            .await
            .expect("connect");
        // AWS targets (CloudFront, SNS) point at moto with static test credentials.
        let aws = invalidator::apply::aws::emulator("us-east-1");
        Engine::build_with(config, rules, redis, Some(&aws)).expect("engine")
    }

    /// Replays `lines` through the library; the DLQ goes to `dlq.jsonl` in the temp dir.
    pub async fn replay_lines(&self, lines: &[String], dry_run: bool) -> Summary {
        let input = self.lines(&format!("in-{:x}.jsonl", rand::random::<u32>()), lines);
        self.replay_files(&[input], dry_run).await
    }

    pub async fn replay_files(&self, inputs: &[PathBuf], dry_run: bool) -> Summary {
        let engine = self.engine().await;
        let options = ReplayOptions {
            source: Source::Files(inputs.iter().map(|p| p.display().to_string()).collect()),
            dry_run,
            dlq: Some(self.path("dlq.jsonl")),
            rate: None,
            progress: false,
        };
        replay::replay(Arc::new(engine), &options)
            .await
            .expect("replay")
    }
}

/// The inputs of a unit: each line a document of file `test` at its line number.
pub fn inputs(lines: &[String]) -> Vec<Expanded> {
    lines
        .iter()
        .enumerate()
        .flat_map(|(n, l)| {
            expand_document(
                l.clone().into_bytes(),
                Position::file_line("test", n as u64 + 1),
                1 << 20,
            )
        })
        .collect()
}

/// Applies `lines` as one unit.
pub async fn process(engine: &Engine, lines: &[String]) -> Result<UnitResult, EngineError> {
    engine.process(inputs(lines), false).await
}

/// Runs `units` concurrently through one engine (as the worker keeps `max_in_flight` units);
/// returns every outcome.
pub async fn process_concurrently(engine: Arc<Engine>, units: Vec<Vec<String>>) -> Vec<Outcome> {
    let results = join_all(units.iter().map(|lines| process(&engine, lines))).await;
    let mut outcomes = Vec::new();
    for unit in results {
        let unit = unit.expect("unit applied");
        outcomes.extend(unit.items.into_iter().map(|i| i.outcome));
    }
    outcomes
}
