//! The summary `replay` prints at the end, and its exit status.

use std::io::{self, Write};
use std::path::PathBuf;

use crate::apply::cdn::CdnStats;
use crate::apply::cdn::cloudfront::FREE_PATHS_PER_MONTH;
use crate::apply::redis::RedisStats;
use crate::driver::UnitReport;

/// The summary printed at the end.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Summary {
    pub events: u64,
    pub applied: u64,
    pub skipped: u64,
    pub duplicate: u64,
    pub dead_lettered: u64,
    /// Events read but not applied because a dependency was unavailable.
    pub not_applied: u64,
    pub keys_removed: u64,
    pub expires_set: u64,
    pub tags_invalidated: u64,
    pub paths_purged: u64,
    pub paths_logged: u64,
    pub redeletes: u64,
    /// What each CDN target did during the replay (CloudFront: requests, paths sent, cost).
    pub cdn: Vec<(String, CdnStats)>,
    /// Completion notices sent and dropped (`[notify]`).
    pub notices_sent: u64,
    pub notices_dropped: u64,
    /// Actions planned (for `--dry-run`).
    pub actions_planned: u64,
    /// Failovers of the Redis primary met during the replay, what their rewinds applied again, and
    /// `WAIT` shortfalls (each retried).
    pub redis: RedisStats,
    pub seconds: f64,
    pub dlq: Option<PathBuf>,
    /// The outage that stopped the replay, if any.
    pub unavailable: Option<String>,
    /// Records of a Kafka window's offsets whose timestamps fall outside it (not events).
    pub outside_window: u64,
}

impl Summary {
    /// Counts one unit's outcomes and effects.
    pub fn add(&mut self, unit: &UnitReport) {
        self.applied += unit.applied;
        self.skipped += unit.skipped;
        self.duplicate += unit.duplicate;
        self.dead_lettered += unit.dead_lettered;
        self.keys_removed += unit.redis.keys_removed;
        self.expires_set += unit.redis.expires_set;
        self.tags_invalidated += unit.redis.tags_invalidated;
        self.paths_purged += unit.cdn.purged;
        self.paths_logged += unit.cdn.logged;
        self.notices_sent += unit.notices.sent;
        self.notices_dropped += unit.notices.dropped;
        self.actions_planned += unit.actions;
    }

    pub fn print(&self, out: &mut dyn Write, dry_run: bool) -> io::Result<()> {
        let rate = if self.seconds > 0.0 {
            self.events as f64 / self.seconds
        } else {
            0.0
        };
        writeln!(
            out,
            "{}events:         {}",
            if dry_run { "[dry run] " } else { "" },
            self.events
        )?;
        writeln!(out, "  applied:       {}", self.applied)?;
        writeln!(out, "  skipped:       {}", self.skipped)?;
        writeln!(out, "  duplicate:     {}", self.duplicate)?;
        writeln!(out, "  dead-lettered: {}", self.dead_lettered)?;
        if self.outside_window > 0 {
            writeln!(
                out,
                "outside window:  {} (records between the window's offsets, timestamped outside it; not events)",
                self.outside_window
            )?;
        }
        if self.not_applied > 0 {
            writeln!(
                out,
                "  NOT applied:   {} (dependency unavailable; replay again)",
                self.not_applied
            )?;
        }
        if dry_run {
            writeln!(
                out,
                "actions planned: {} (nothing written)",
                self.actions_planned
            )?;
        } else {
            writeln!(out, "keys removed:    {}", self.keys_removed)?;
            writeln!(out, "TTLs shortened:  {}", self.expires_set)?;
            writeln!(out, "tags:            {}", self.tags_invalidated)?;
            writeln!(out, "paths purged:    {}", self.paths_purged)?;
            if self.paths_logged > 0 {
                writeln!(
                    out,
                    "paths logged:    {} (log targets, not sent)",
                    self.paths_logged
                )?;
            }
            if self.redeletes > 0 {
                writeln!(out, "redeletes:       {}", self.redeletes)?;
            }
            self.print_cdn(out)?;
            self.print_redis(out)?;
            if self.notices_sent > 0 || self.notices_dropped > 0 {
                writeln!(
                    out,
                    "notices:         {} sent, {} dropped",
                    self.notices_sent, self.notices_dropped
                )?;
            }
        }
        writeln!(
            out,
            "seconds:         {:.3} ({rate:.0} events/s)",
            self.seconds
        )?;
        if let Some(p) = &self.dlq {
            writeln!(out, "dead letters in: {}", p.display())?;
        }
        if let Some(u) = &self.unavailable {
            writeln!(out, "stopped: {u}")?;
        }
        Ok(())
    }

    /// What each CDN target did.
    fn print_cdn(&self, out: &mut dyn Write) -> io::Result<()> {
        for (name, c) in &self.cdn {
            match c.kind {
                "cloudfront" => {
                    writeln!(
                        out,
                        "cloudfront {name}: {} CreateInvalidation, {} paths sent for {} requested",
                        c.requests, c.paths_sent, c.paths_requested
                    )?;
                    if c.collapses > 0 {
                        writeln!(
                            out,
                            "  collapsed:     {} paths into {} wildcards",
                            c.paths_collapsed, c.collapses
                        )?;
                    }
                    if c.throttles > 0 || c.failed_attempts > 0 {
                        writeln!(
                            out,
                            "  retried:       {} throttled, {} failed attempts",
                            c.throttles, c.failed_attempts
                        )?;
                    }
                    writeln!(
                        out,
                        "  est. cost:     ${:.3} at $0.005/path (${:.3} if the month's {} free paths are unused)",
                        c.estimated_cost_usd(),
                        c.paths_sent.saturating_sub(FREE_PATHS_PER_MONTH) as f64 * 0.005,
                        FREE_PATHS_PER_MONTH
                    )?;
                }
                "http" if c.paths_requested > 0 => writeln!(
                    out,
                    "http {name}: {} paths purged with {} requests",
                    c.paths_sent, c.requests
                )?,
                _ => {}
            }
        }
        Ok(())
    }

    /// Failovers met and `WAIT` shortfalls, when there were any.
    fn print_redis(&self, out: &mut dyn Write) -> io::Result<()> {
        if self.redis.failovers > 0 {
            writeln!(
                out,
                "failovers:       {} (Redis primary changed; keys removed counts removals on the primary of the moment)",
                self.redis.failovers
            )?;
            writeln!(
                out,
                "rewound actions: {} (applied again on the new primary)",
                self.redis.rewound_actions
            )?;
        }
        if self.redis.wait_shortfalls > 0 {
            writeln!(
                out,
                "wait shortfalls: {} (fewer replicas than wait_replicas confirmed a unit; it was applied again)",
                self.redis.wait_shortfalls
            )?;
        }
        Ok(())
    }

    /// Exit status: 0 all applied or skipped, 1 some dead-lettered, 3 outage.
    pub fn exit_code(&self) -> i32 {
        if self.unavailable.is_some() {
            3
        } else if self.dead_lettered > 0 {
            1
        } else {
            0
        }
    }
}
