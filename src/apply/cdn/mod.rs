//! CDN purges, per configured target (`[cdn.NAME]`): CloudFront ([`cloudfront`]), HTTP `PURGE`
//! ([`http`]), or `log`.
//!
//! A path is acknowledged only when its target accepted it (every node of an HTTP target; an
//! accepted `CreateInvalidation` for CloudFront). A target that rejects a path makes that path's
//! events dead-letter with `cdn_rejected`; a target that cannot be reached is an outage
//! ([`CdnError::Unavailable`]), never a per-event error. Targets are purged concurrently.

pub mod cloudfront;
pub mod http;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::CdnConfig;
use crate::plan::{Origin, PlanMap};
use aws_config::SdkConfig;
use futures::future::try_join_all;

/// Most paths a `log` target writes on one line: a unit's purges are a few lines, each of them
/// short enough for a log pipeline.
const LOG_PATHS_PER_LINE: usize = 100;

/// A CDN failure that is not about one path.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CdnError {
    #[error("CDN target `{target}` unavailable: {message}")]
    Unavailable { target: String, message: String },
}

/// What purging a plan's paths did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PurgeReport {
    /// Paths accepted by a CDN.
    pub purged: u64,
    /// Paths of `log` targets (shown, not sent).
    pub logged: u64,
    /// Paths a CDN refused, with the events that asked for them.
    pub rejected: Vec<Rejected>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub target: String,
    pub path: String,
    pub error: String,
    pub origins: Vec<Origin>,
}

/// What one target did since start (for summaries; the same figures go to the metrics).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct CdnStats {
    pub kind: &'static str,
    /// Paths submitted by units of work (after coalescing within each unit).
    pub paths_requested: u64,
    /// Paths sent in accepted requests (CloudFront: after batching, dedupe and collapse; a
    /// wildcard counts as one).
    pub paths_sent: u64,
    /// Accepted requests (CloudFront: `CreateInvalidation` calls; HTTP: node requests).
    pub requests: u64,
    /// Attempts refused for throttling (CloudFront: also `TooManyInvalidationsInProgress`).
    pub throttles: u64,
    /// Other failed attempts (retried).
    pub failed_attempts: u64,
    /// Wildcards made by collapsing siblings, and the paths they replaced.
    pub collapses: u64,
    pub paths_collapsed: u64,
    /// Paths refused (their events dead-lettered).
    pub rejected: u64,
    /// Paths waiting (in a window or a request not yet accepted) when the figures were taken.
    pub pending: u64,
}

/// The live counters behind [`CdnStats`], shared by a target and its background work. A target
/// leaves at 0 what it does not do (HTTP: collapses, pending).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub paths_requested: AtomicU64,
    pub paths_sent: AtomicU64,
    pub requests: AtomicU64,
    pub throttles: AtomicU64,
    pub failed_attempts: AtomicU64,
    pub collapses: AtomicU64,
    pub paths_collapsed: AtomicU64,
    pub rejected: AtomicU64,
    pub pending: AtomicU64,
}

impl Counters {
    pub fn stats(&self, kind: &'static str) -> CdnStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CdnStats {
            kind,
            paths_requested: get(&self.paths_requested),
            paths_sent: get(&self.paths_sent),
            requests: get(&self.requests),
            throttles: get(&self.throttles),
            failed_attempts: get(&self.failed_attempts),
            collapses: get(&self.collapses),
            paths_collapsed: get(&self.paths_collapsed),
            rejected: get(&self.rejected),
            pending: get(&self.pending),
        }
    }
}

impl CdnStats {
    /// CloudFront's charge for the paths sent, at list price ($0.005 a path), before the
    /// account's 1,000 free paths a month (which this process cannot know about).
    pub fn estimated_cost_usd(&self) -> f64 {
        if self.kind == "cloudfront" {
            self.paths_sent as f64 * cloudfront::PRICE_PER_PATH_USD
        } else {
            0.0
        }
    }

    /// The difference since `before` (the counters only grow; `pending` is taken as is).
    pub fn since(&self, before: &CdnStats) -> CdnStats {
        CdnStats {
            kind: self.kind,
            paths_requested: self.paths_requested - before.paths_requested,
            paths_sent: self.paths_sent - before.paths_sent,
            requests: self.requests - before.requests,
            throttles: self.throttles - before.throttles,
            failed_attempts: self.failed_attempts - before.failed_attempts,
            collapses: self.collapses - before.collapses,
            paths_collapsed: self.paths_collapsed - before.paths_collapsed,
            rejected: self.rejected - before.rejected,
            pending: self.pending,
        }
    }
}

enum Target {
    CloudFront(cloudfront::CloudFront),
    Http(http::HttpPurger),
    Log,
}

/// Every configured CDN target.
#[derive(Default)]
pub struct CdnTargets {
    targets: HashMap<String, Target>,
}

impl CdnTargets {
    /// Builds the clients once and starts the CloudFront batchers (so it needs a tokio runtime
    /// when a CloudFront target is configured). `aws` is the AWS configuration (the standard
    /// chain: [`crate::apply::aws::load`]); it is needed only by CloudFront targets.
    pub fn from_config(
        config: &BTreeMap<String, CdnConfig>,
        aws: Option<&SdkConfig>,
    ) -> Result<CdnTargets, String> {
        let mut targets = HashMap::new();
        for (name, c) in config {
            let t = match c {
                CdnConfig::Http {
                    urls,
                    method,
                    headers,
                    timeout,
                    retry_for,
                    concurrency,
                } => Target::Http(http::HttpPurger::new(
                    name,
                    urls,
                    method,
                    headers,
                    *timeout,
                    *retry_for,
                    *concurrency,
                )?),
                CdnConfig::Log {} => Target::Log,
                CdnConfig::Cloudfront {
                    distribution_id,
                    window,
                    max_paths,
                    max_wildcards,
                    collapse_threshold,
                    endpoint_url,
                    timeout,
                    retry_for,
                } => {
                    let Some(aws) = aws else {
                        return Err(format!(
                            "cdn.{name}: CloudFront targets need the AWS configuration"
                        ));
                    };
                    Target::CloudFront(cloudfront::CloudFront::start(
                        cloudfront::Settings {
                            name: name.clone(),
                            distribution_id: distribution_id.clone(),
                            window: *window,
                            limits: cloudfront::batch::Limits {
                                max_paths: *max_paths,
                                max_wildcards: *max_wildcards,
                                collapse_threshold: collapse_threshold.map(|n| n.get()),
                            },
                            endpoint_url: endpoint_url.clone(),
                            timeout: *timeout,
                            retry_for: *retry_for,
                        },
                        aws,
                    ))
                }
            };
            targets.insert(name.clone(), t);
        }
        Ok(CdnTargets { targets })
    }

    /// Names of the configured targets.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.targets.keys().cloned().collect();
        v.sort();
        v
    }

    /// Purges every path of `purges` (target → path → events), every target concurrently.
    pub async fn purge(
        &self,
        purges: &PlanMap<String, PlanMap<String, Vec<Origin>>>,
    ) -> Result<PurgeReport, CdnError> {
        let parts = try_join_all(
            purges
                .iter()
                .map(|(name, paths)| self.purge_target(name, paths)),
        )
        .await?;
        let mut report = PurgeReport::default();
        for p in parts {
            report.purged += p.purged;
            report.logged += p.logged;
            report.rejected.extend(p.rejected);
        }
        Ok(report)
    }

    async fn purge_target(
        &self,
        name: &str,
        paths: &PlanMap<String, Vec<Origin>>,
    ) -> Result<PurgeReport, CdnError> {
        let mut report = PurgeReport::default();
        let outcome = match self.targets.get(name) {
            Some(Target::Http(h)) => h.purge(paths.keys().map(String::as_str)).await?,
            Some(Target::CloudFront(c)) => c.purge(paths.keys().cloned().collect()).await?,
            Some(Target::Log) => {
                // One line per batch, as a CloudFront target sends one request per batch: a line
                // per path cost more than the rest of a unit's work.
                let paths: Vec<&str> = paths.keys().map(String::as_str).collect();
                for batch in paths.chunks(LOG_PATHS_PER_LINE) {
                    tracing::info!(target_name = %name, count = batch.len(), paths = ?batch, "purge planned (log target: nothing sent)");
                }
                report.logged += paths.len() as u64;
                return Ok(report);
            }
            None => {
                // Rules are compiled against the configured targets, so this is a bug, not input.
                return Err(CdnError::Unavailable {
                    target: name.to_owned(),
                    message: "not configured".into(),
                });
            }
        };
        for (path, result) in paths.iter().zip(outcome) {
            match result {
                Ok(()) => report.purged += 1,
                Err(error) => report.rejected.push(Rejected {
                    target: name.to_owned(),
                    path: path.0.clone(),
                    error,
                    origins: path.1.clone(),
                }),
            }
        }
        Ok(report)
    }

    /// Shutdown: sends every path still waiting for its batch window now, and every path
    /// submitted later at once (windows are over for good). The units waiting on them resolve when CloudFront answers, so a window
    /// never holds a shutdown back.
    pub async fn drain(&self) {
        for t in self.targets.values() {
            if let Target::CloudFront(c) = t {
                c.drain().await;
            }
        }
    }

    /// Each target's figures since start, by name.
    pub fn stats(&self) -> Vec<(String, CdnStats)> {
        let mut v: Vec<(String, CdnStats)> = self
            .targets
            .iter()
            .map(|(name, t)| {
                let s = match t {
                    Target::CloudFront(c) => c.stats(),
                    Target::Http(h) => h.stats(),
                    Target::Log => CdnStats {
                        kind: "log",
                        ..CdnStats::default()
                    },
                };
                (name.clone(), s)
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Paths waiting on CloudFront targets (in a window or a request not accepted yet).
    pub fn pending(&self) -> u64 {
        self.stats().iter().map(|(_, s)| s.pending).sum()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// The lines a subscriber at INFO wrote, as text.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_log_target_writes_a_line_per_hundred_paths_and_counts_each_path() {
        let config = BTreeMap::from([("edge".to_owned(), CdnConfig::Log {})]);
        let targets = CdnTargets::from_config(&config, None).unwrap();
        let paths: PlanMap<String, Vec<Origin>> =
            (0..250).map(|i| (format!("/p/{i}"), vec![i])).collect();
        let purges: PlanMap<_, _> = [("edge".to_owned(), paths)].into_iter().collect();

        let lines = Lines::default();
        let sink = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        let report = tracing::subscriber::with_default(subscriber, || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(targets.purge(&purges)).unwrap()
        });

        assert_eq!(report.logged, 250);
        assert_eq!(report.purged, 0);
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let logged: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("purge planned (log target: nothing sent)"))
            .collect();
        let counts: Vec<bool> = ["count=100", "count=100", "count=50"]
            .iter()
            .zip(&logged)
            .map(|(c, l)| l.contains(c))
            .collect();
        assert_eq!((logged.len(), counts), (3, vec![true; 3]), "{text}");
        for i in 0..250 {
            let quoted = format!("\"/p/{i}\"");
            assert_eq!(
                logged.iter().filter(|l| l.contains(&quoted)).count(),
                1,
                "/p/{i} on exactly one line:\n{text}"
            );
        }
    }
}
