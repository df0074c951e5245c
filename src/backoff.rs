//! Retry delays: exponential, jittered, never over their cap.
//!
//! backon's jitter adds up to 100% of each delay, so a builder capped at `cap` waits up to twice
//! `cap`. Here the delays before jitter stop at half the cap: each wait is at most `cap`, and once
//! the backoff is at its top the waits are spread over [`cap / 2`, `cap`], so many processes that
//! lost the same server do not come back in step.

use std::time::Duration;

use backon::ExponentialBuilder;

/// Delays from `min` (to twice `min` with jitter), doubling, each at most `cap`; without end.
pub fn jittered(min: Duration, cap: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(min.min(cap / 2))
        .with_max_delay(cap / 2)
        .with_jitter()
        .without_max_times()
}

#[cfg(test)]
mod tests {
    use backon::BackoffBuilder;

    use super::*;

    #[test]
    fn no_delay_exceeds_its_cap_and_the_top_is_spread() {
        let cap = Duration::from_secs(5);
        let delays: Vec<Duration> = (0..200)
            .flat_map(|_| jittered(Duration::from_millis(100), cap).build().take(40))
            .collect();
        assert!(
            delays.iter().all(|d| *d <= cap),
            "{:?}",
            delays.iter().max()
        );
        assert!(delays.iter().all(|d| *d >= Duration::from_millis(100)));
        let top: Vec<&Duration> = delays.iter().filter(|d| **d >= cap / 2).collect();
        let below_cap = top.iter().filter(|d| ***d < cap * 9 / 10).count();
        assert!(
            below_cap > top.len() / 4,
            "the waits at the top are spread, not all at the cap"
        );
    }
}
