//! CDN purges, per configured target (`[cdn.NAME]`).
//!
//! A path is acknowledged only when every node of its target accepted it. A target that rejects a
//! path (a 4xx other than 404/429) makes that path's events dead-letter with `cdn_rejected`; a target
//! that cannot be reached is an outage ([`CdnError::Unavailable`]), never a per-event error.

pub mod http;

use std::collections::{BTreeMap, HashMap};

use indexmap::IndexMap;

use crate::config::CdnConfig;
use crate::plan::Origin;

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

enum Target {
    Http(http::HttpPurger),
    Log,
}

/// Every configured CDN target.
#[derive(Default)]
pub struct CdnTargets {
    targets: HashMap<String, Target>,
}

impl CdnTargets {
    /// Builds the clients once. Config validation has already refused unsupported kinds.
    pub fn from_config(config: &BTreeMap<String, CdnConfig>) -> Result<CdnTargets, String> {
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
                CdnConfig::Cloudfront { .. } => {
                    return Err(format!(
                        "cdn.{name}: cloudfront targets are not available in this build"
                    ));
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

    /// Purges every path of `purges` (target → path → events).
    pub async fn purge(
        &self,
        purges: &IndexMap<String, IndexMap<String, Vec<Origin>>>,
    ) -> Result<PurgeReport, CdnError> {
        let mut report = PurgeReport::default();
        for (name, paths) in purges {
            match self.targets.get(name) {
                Some(Target::Http(h)) => {
                    let outcome = h.purge(paths.keys().map(String::as_str)).await?;
                    for (path, result) in paths.iter().zip(outcome) {
                        match result {
                            Ok(()) => report.purged += 1,
                            Err(error) => report.rejected.push(Rejected {
                                target: name.clone(),
                                path: path.0.clone(),
                                error,
                                origins: path.1.clone(),
                            }),
                        }
                    }
                }
                Some(Target::Log) => {
                    for path in paths.keys() {
                        tracing::debug!(target_name = %name, %path, "purge planned (log target: nothing sent)");
                    }
                    report.logged += paths.len() as u64;
                }
                None => {
                    // Rules are compiled against the configured targets, so this is a bug, not input.
                    return Err(CdnError::Unavailable {
                        target: name.clone(),
                        message: "not configured".into(),
                    });
                }
            }
        }
        Ok(report)
    }
}
