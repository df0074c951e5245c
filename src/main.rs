//! The `invalidator` command line: one function per subcommand.
//! Exit status: 0 all applied or skipped, 1 some dead-lettered, 2 usage/config/rules error,
//! 3 infrastructure unavailable.

use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use invalidator::apply::redis::Redis;
use invalidator::config::Config;
use invalidator::engine::Engine;
use invalidator::explain;
use invalidator::replay::{self, ReplayOptions, Source};
use invalidator::rules::{CompileOptions, RuleSet};
use invalidator::worker;

#[derive(Parser)]
#[command(
    name = "invalidator",
    version,
    about = "Keeps caches honest: catalog change events → Redis deletes, tag invalidations, cascades and CDN purges."
)]
struct Cli {
    /// Config file (default: ./invalidator.toml if it exists). Every key can be overridden by
    /// INVALIDATOR_SECTION__KEY environment variables.
    #[arg(short = 'c', long = "config", global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Rules directory (default: [rules] dir, "rules").
    #[arg(long = "rules", global = true, value_name = "DIR")]
    rules: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// The Kafka worker: consume the configured topics in a consumer group until SIGTERM/SIGINT,
    /// serving /metrics, /healthz and /readyz on [http] listen.
    Run,
    /// Replay events from files (JSON Lines, Lambda SNS/SQS event files, DLQ files) or stdin (-),
    /// or a time window of a Kafka topic (--from-kafka).
    Replay {
        /// Plan and show; write nothing (Redis is only read for dedupe and cascade sets).
        #[arg(long)]
        dry_run: bool,
        /// Where dead-lettered events go (JSON Lines; default dlq-<time>.jsonl, created only if needed).
        #[arg(long, value_name = "FILE")]
        dlq: Option<PathBuf>,
        /// At most N events per second.
        #[arg(long, value_name = "N")]
        rate: Option<f64>,
        /// Apply events whose ids [dedupe] remembers as applied (to re-invalidate after a Redis
        /// restore or a lost write).
        #[arg(long)]
        no_dedupe: bool,
        /// Read a time window of this Kafka topic (a source topic, or its DLQ topic to redrive)
        /// with [kafka] brokers and properties, instead of files. Joins no group, commits nothing.
        #[arg(long, value_name = "TOPIC", conflicts_with = "inputs")]
        from_kafka: Option<String>,
        /// With --from-kafka: records timestamped at or after TIME, an RFC 3339 time
        /// (2026-11-30T08:00:00Z) or a duration before now (15m, 2h).
        #[arg(long, value_name = "TIME", requires = "from_kafka")]
        since: Option<String>,
        /// With --from-kafka: records timestamped before TIME (as --since); the topic's end when
        /// the replay starts is the end anyway.
        #[arg(long, value_name = "TIME", requires = "from_kafka")]
        until: Option<String>,
        /// With --from-kafka: only this partition (repeat for several; default all).
        #[arg(long = "partition", value_name = "N", requires = "from_kafka")]
        partitions: Vec<i32>,
        /// Input files; `-` reads stdin.
        #[arg(required_unless_present = "from_kafka", value_name = "FILE")]
        inputs: Vec<String>,
    },
    /// Show what one event would invalidate; touches nothing.
    Explain {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// The event as JSON, a file holding it, or `-` for stdin.
        #[arg(value_name = "EVENT_JSON")]
        event: String,
    },
    /// Rule file commands.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// One pass of the TTL safety net: shorten TTLs over the `ttl_policies`.
    Sweep {
        /// Report keys over policy; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Compile the rules and report every error as file:line:column; starts nothing.
    Check {
        /// Rules directory (default: --rules, then [rules] dir).
        dir: Option<PathBuf>,
    },
}

/// See Cargo.toml: glibc's malloc cost a replay about 40% of its CPU.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `MALLOC_CONF` (which wins): one arena instead of four per
/// core. The process allocates on a few threads (tokio's workers, the replay reader, librdkafka's),
/// each with its own thread cache in front of the arena; more arenas only held more memory. A
/// replay of 1,000,000 events with the shipped rules peaked at 59.8–66.0 MiB with jemalloc's
/// default and 50.9–53.6 MiB with one arena, at the same CPU per event (measured before the
/// failover rewind, which holds 30 s of keys by default, existed). On a host with many cores,
/// `MALLOC_CONF=narenas:4` gives more back. Where jemalloc keeps its prefix (Cargo.toml), the
/// symbol and the variable are `_rjem_malloc_conf` and `_RJEM_MALLOC_CONF`.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[allow(non_upper_case_globals)]
#[cfg_attr(
    any(
        target_vendor = "apple",
        target_os = "android",
        target_os = "dragonfly"
    ),
    unsafe(export_name = "_rjem_malloc_conf")
)]
#[cfg_attr(
    not(any(
        target_vendor = "apple",
        target_os = "android",
        target_os = "dragonfly"
    )),
    unsafe(export_name = "malloc_conf")
)]
pub static malloc_conf: &[u8; 10] = b"narenas:1\0";

/// An error with its exit status.
struct Exit(u8, anyhow::Error);

fn usage(e: impl Into<anyhow::Error>) -> Exit {
    Exit(2, e.into())
}

fn unavailable(e: impl Into<anyhow::Error>) -> Exit {
    Exit(3, e.into())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = init_logging(cli.log_format);
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Exit(2, anyhow::anyhow!("cannot start the runtime: {e}")))
        .and_then(|runtime| runtime.block_on(dispatch(cli)));
    // Every log line is out before the last words.
    drop(logs);
    match result {
        Ok(code) => ExitCode::from(code),
        Err(Exit(code, e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(code)
        }
    }
}

async fn dispatch(cli: Cli) -> Result<u8, Exit> {
    match &cli.command {
        Command::Run => cmd_run(&cli).await,
        Command::Replay {
            dry_run,
            dlq,
            rate,
            no_dedupe,
            from_kafka,
            since,
            until,
            partitions,
            inputs,
        } => {
            let source = match from_kafka {
                Some(topic) => Source::Kafka(window(topic, since, until, partitions)?),
                None => Source::Files(inputs.clone()),
            };
            let options = ReplayOptions {
                source,
                dry_run: *dry_run,
                dlq: dlq.clone(),
                rate: *rate,
                progress: true,
            };
            cmd_replay(&cli, options, *no_dedupe).await
        }
        Command::Explain { json, event } => cmd_explain(&cli, event, *json),
        Command::Rules {
            command: RulesCommand::Check { dir },
        } => cmd_rules_check(&cli, dir.as_deref()),
        Command::Sweep { dry_run } => cmd_sweep(&cli, *dry_run).await,
    }
}

/// Log lines at most queued for stderr: beyond them, a thread that logs waits (nothing is dropped).
const QUEUED_LOG_LINES: usize = 4096;

/// Logs to stderr through a thread of their own, which writes what queued in one write: a write
/// per line was 8% of the CPU of a replay whose `log` CDN target logs every path. Lines are
/// written as soon as that thread is free; dropping the returned guard waits (up to a second) for
/// those queued.
fn init_logging(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "warn,invalidator=info".into());
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(QUEUED_LOG_LINES)
        .thread_name("invalidator-logs")
        .finish(io::BufWriter::new(io::stderr()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Human => builder.with_ansi(io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().init(),
    }
    guard
}

fn load_config(cli: &Cli) -> Result<Config, Exit> {
    Config::load(cli.config.as_deref()).map_err(usage)
}

fn load_rules(
    cli: &Cli,
    config: &Config,
    dir: Option<&Path>,
    check_targets: bool,
) -> Result<RuleSet, Exit> {
    let dir = dir.or(cli.rules.as_deref()).unwrap_or(&config.rules.dir);
    let options = CompileOptions {
        limits: config.rule_limits(),
        cdn_targets: check_targets.then(|| config.cdn.keys().cloned().collect()),
    };
    RuleSet::load(dir, &options).map_err(|e| {
        usage(anyhow::anyhow!("{e}"))
            .with_context(format!("rules in {} do not compile", dir.display()))
    })
}

impl Exit {
    fn with_context(self, c: String) -> Exit {
        Exit(self.0, self.1.context(c))
    }
}

async fn build_engine(cli: &Cli, config: Config) -> Result<Engine, Exit> {
    let rules = load_rules(cli, &config, None, true)?;
    let redis = Redis::connect(&config.redis, Some(config.redis.retry_for))
        .await
        .map_err(unavailable)?;
    Engine::build(config, rules, redis)
        .await
        .map_err(|e| usage(anyhow::anyhow!(e)))
}

async fn cmd_run(cli: &Cli) -> Result<u8, Exit> {
    let config = load_config(cli)?;
    let rules = load_rules(cli, &config, None, true)?;
    let report = worker::serve(config, rules)
        .await
        .map_err(|e| usage(anyhow::anyhow!(e)))?;
    Ok(if report.clean { 0 } else { 3 })
}

/// True when `a` and `b` are one file, whatever the paths that name it (`./x` and `x`, a symlink,
/// a hard link): a replay that read its own DLQ file would feed on its dead letters forever.
fn same_file(a: &Path, b: &Path) -> bool {
    if a == b {
        return true;
    }
    let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) else {
        // A file that does not exist (yet) is no other file.
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        ma.dev() == mb.dev() && ma.ino() == mb.ino()
    }
    #[cfg(not(unix))]
    {
        let _ = (ma, mb);
        matches!((std::fs::canonicalize(a), std::fs::canonicalize(b)), (Ok(x), Ok(y)) if x == y)
    }
}

/// `--rate` bounds: one event in 1,000 s at the least (a slower pace never ends), a billion per
/// second at the most (beyond any Redis).
const MIN_RATE: f64 = 0.001;
const MAX_RATE: f64 = 1e9;

/// The `--from-kafka` window, its times read against the clock of the moment.
fn window(
    topic: &str,
    since: &Option<String>,
    until: &Option<String>,
    partitions: &[i32],
) -> Result<replay::kafka::Window, Exit> {
    let now = time::OffsetDateTime::now_utc();
    let time = |flag: &str, t: &Option<String>| {
        t.as_deref()
            .map(|t| replay::kafka::parse_time(t, now))
            .transpose()
            .map_err(|e| usage(anyhow::anyhow!("{flag}: {e}")))
    };
    let (since, until) = (time("--since", since)?, time("--until", until)?);
    if let (Some(s), Some(u)) = (since, until)
        && s >= u
    {
        return Err(usage(anyhow::anyhow!("--since must be before --until")));
    }
    let mut partitions = partitions.to_vec();
    partitions.sort_unstable();
    partitions.dedup();
    Ok(replay::kafka::Window {
        topic: topic.to_owned(),
        partitions,
        since,
        until,
    })
}

async fn cmd_replay(cli: &Cli, options: ReplayOptions, no_dedupe: bool) -> Result<u8, Exit> {
    let mut config = load_config(cli)?;
    if no_dedupe {
        config.dedupe.window = None;
    }
    let engine = build_engine(cli, config).await?;
    if let (Some(dlq), Source::Files(inputs)) = (&options.dlq, &options.source)
        && inputs.iter().any(|i| same_file(Path::new(i), dlq))
    {
        return Err(usage(anyhow::anyhow!(
            "--dlq {} is also an input: write dead letters to another file",
            dlq.display()
        )));
    }
    if let Some(r) = options.rate
        && !(MIN_RATE..=MAX_RATE).contains(&r)
    {
        return Err(usage(anyhow::anyhow!(
            "--rate must be between {MIN_RATE} and {MAX_RATE:.0} events per second"
        )));
    }
    tracing::info!(redis = %engine.redis.describe(), rules = engine.rules.rules.len(), "replaying");
    let summary = replay::replay(Arc::new(engine), &options)
        .await
        .map_err(|e| match e {
            replay::ReplayError::Dlq(..) | replay::ReplayError::Unavailable(..) => {
                Exit(3, e.into())
            }
            _ => usage(e),
        })?;
    let _ = summary.print(&mut io::stdout().lock(), options.dry_run);
    Ok(summary.exit_code() as u8)
}

fn cmd_explain(cli: &Cli, arg: &str, json: bool) -> Result<u8, Exit> {
    let config = load_config(cli)?;
    // Explain also works where the CDN targets are not configured: it shows, it does not purge.
    let rules = load_rules(cli, &config, None, false)?;
    let text = if arg == "-" {
        let mut s = String::new();
        io::stdin()
            .read_to_string(&mut s)
            .context("reading the event from stdin")
            .map_err(usage)?;
        s
    } else if arg.trim_start().starts_with('{') {
        arg.to_owned()
    } else {
        std::fs::read_to_string(arg)
            .with_context(|| format!("{arg} is neither JSON nor a readable file"))
            .map_err(usage)?
    };
    let mut out = io::stdout().lock();
    explain::explain(&rules, &config, text.into_bytes(), json, &mut out)
        .context("writing to stdout")
        .map_err(usage)
}

fn cmd_rules_check(cli: &Cli, dir: Option<&Path>) -> Result<u8, Exit> {
    let config = load_config(cli)?;
    // Targets are checked when a config file says which exist.
    let has_config = cli.config.is_some() || Path::new(invalidator::config::DEFAULT_FILE).exists();
    let rules = load_rules(cli, &config, dir, has_config)?;
    for w in explain::warnings(&rules) {
        eprintln!("warning: {w}");
    }
    println!(
        "ok: {} rules and {} ttl policies in {} files",
        rules.rules.len(),
        rules.ttl_policies.len(),
        rules.files.len()
    );
    Ok(0)
}

async fn cmd_sweep(cli: &Cli, dry_run: bool) -> Result<u8, Exit> {
    let config = load_config(cli)?;
    let rules = load_rules(cli, &config, None, false)?;
    if rules.ttl_policies.is_empty() {
        println!("no ttl_policies in the rules: nothing to sweep");
        return Ok(0);
    }
    let redis = Redis::connect(&config.redis, Some(config.redis.retry_for))
        .await
        .map_err(unavailable)?;
    let mut out = io::stdout().lock();
    for policy in &rules.ttl_policies {
        let report = redis.sweep(policy, dry_run).await.map_err(unavailable)?;
        let _ = writeln!(
            out,
            "{} (max_ttl {}): scanned {}, over policy {}, {} {}",
            policy.pattern,
            humantime::format_duration(policy.max_ttl),
            report.scanned,
            report.over_policy,
            if dry_run { "would fix" } else { "fixed" },
            if dry_run {
                report.over_policy
            } else {
                report.fixed
            },
        );
    }
    Ok(0)
}
