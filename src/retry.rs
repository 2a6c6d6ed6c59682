//! The retry policy, one for every store and request: transient failures (5xx, throttling,
//! dropped connections, timeouts, truncated bodies) are tried again with jittered exponential
//! backoff, up to [`MAX_ATTEMPTS`] times; anything else fails at once.

use crate::store::StoreError;
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Attempts per request before a transient failure counts as permanent.
pub const MAX_ATTEMPTS: u32 = 6;

/// An error that says whether trying again may help.
pub trait Transient {
    fn is_transient(&self) -> bool;
}

impl Transient for StoreError {
    fn is_transient(&self) -> bool {
        StoreError::is_transient(self)
    }
}

/// Delay before retry number `attempt` (0-based): exponential from 100 ms, capped at 5 s, with
/// jitter so that many parts failing together do not retry in lockstep.
pub fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(100 << attempt.min(6)).min(Duration::from_secs(5));
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    base / 2 + base.mul_f64(f64::from(nanos % 1000) / 2000.0)
}

/// Runs `op` until it succeeds, fails permanently, or has failed transiently [`MAX_ATTEMPTS`] times.
pub async fn retry<T, E, F, Fut>(what: &str, mut op: F) -> Result<T, E>
where
    E: Transient + std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempt = 0;
    loop {
        match op().await {
            Err(e) if e.is_transient() && attempt + 1 < MAX_ATTEMPTS => {
                tracing::debug!(what, attempt, error = %e, "retrying");
                if let Some(m) = crate::metrics::get() {
                    m.retries.inc();
                }
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(0) <= Duration::from_millis(100));
        assert!(backoff(3) >= Duration::from_millis(400));
        assert!(backoff(30) <= Duration::from_secs(5));
    }
}
