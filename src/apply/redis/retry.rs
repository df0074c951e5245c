//! Attempts, retried with backoff until a budget measured from the first failure.
//!
//! The budget (`retry_for`) bounds the whole outage, attempts included: once it has passed since
//! the first failure, no new attempt starts, and an attempt still running is cut off when it
//! runs out. The first attempt is bounded only by the connection's own timeouts, so a healthy but
//! long operation (a large tag, a pattern delete) is never cut short.

use std::future::Future;
use std::time::Duration;

use backon::BackoffBuilder;
use tokio::time::Instant;

use super::RedisError;
use super::reply::Failure;

/// Runs `attempt` until it succeeds, fails for good, or `budget` (`None`: no end) has passed
/// since its first transient failure.
pub async fn retrying<T, Fut>(
    budget: Option<Duration>,
    what: &'static str,
    mut attempt: impl FnMut() -> Fut,
) -> Result<T, RedisError>
where
    Fut: Future<Output = Result<T, Failure>>,
{
    let mut delays =
        crate::backoff::jittered(Duration::from_millis(50), Duration::from_secs(2)).build();
    let mut deadline: Option<Instant> = None;
    let mut attempts = 0u32;
    // The cause of the outage: a last attempt cut off by the budget reports it, not itself.
    let mut last = String::new();
    loop {
        attempts += 1;
        let result = match deadline {
            None => attempt().await,
            Some(d) => match tokio::time::timeout_at(d, attempt()).await {
                Ok(r) => r,
                Err(_) => {
                    return Err(RedisError::Unavailable(format!(
                        "{last} (still failing after the retry budget; the last attempt of {what} did not finish)"
                    )));
                }
            },
        };
        let error = match result {
            Ok(v) => {
                if attempts > 1 {
                    tracing::info!(what, attempts, "Redis available again");
                }
                return Ok(v);
            }
            Err(Failure::Fatal(e)) => return Err(RedisError::Unavailable(e)),
            Err(Failure::Transient(e)) => e,
        };
        last.clone_from(&error);
        let now = Instant::now();
        let end = *deadline.get_or_insert_with(|| match budget {
            Some(b) => now + b,
            // About 30 years: no end.
            None => now + Duration::from_secs(1 << 30),
        });
        if now >= end {
            return Err(RedisError::Unavailable(error));
        }
        let wait = delays
            .next()
            .unwrap_or(Duration::from_secs(2))
            .min(end - now);
        tracing::warn!(what, error = %error, attempts, retry_in = ?wait, "Redis unavailable, retrying");
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn the_budget_counts_the_attempts_too() {
        // Every attempt hangs for 10 s and then fails: a budget of 3 s ends the outage after
        // the first failure plus 3 s, not after 3 s of sleeps between 10 s attempts.
        let started = Instant::now();
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = retrying(Some(Duration::from_secs(3)), "test", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(10)).await;
            Err(Failure::Transient("down".into()))
        })
        .await;
        let e = r.unwrap_err().to_string();
        assert!(e.contains("down"), "the cause, not the cut: {e}");
        let took = started.elapsed();
        assert!(
            took <= Duration::from_secs(13) + Duration::from_millis(10),
            "{took:?}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn fatal_failures_are_not_retried() {
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = retrying(Some(Duration::from_secs(3)), "test", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Failure::Fatal("WRONGPASS".into()))
        })
        .await;
        assert_eq!(r.unwrap_err().to_string(), "Redis unavailable: WRONGPASS");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_transient_failure_is_retried_until_it_passes() {
        let calls = AtomicU32::new(0);
        let r = retrying(Some(Duration::from_secs(30)), "test", || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0..3 => Err(Failure::Transient("down".into())),
                n => Ok(n),
            }
        })
        .await;
        assert_eq!(r.unwrap(), 3);
    }
}
