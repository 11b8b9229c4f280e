//! In-process retries of transient failures, with jittered exponential
//! backoff. For calls where waiting for SQS to redeliver costs far more than
//! a short pause: a DynamoDB transaction conflict on a hot ledger item would
//! otherwise hide the message for a whole visibility timeout and spend one of
//! its few receives.

use std::future::Future;
use std::time::Duration;

use crate::error::InfraError;

/// Attempts and the first pause; each further pause doubles, and each is
/// drawn uniformly from [base/2, base*3/2) so retrying writers spread out.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub attempts: u32,
    pub first: Duration,
}

impl Backoff {
    /// About 10 + 20 + 40 ms of pauses: well inside a Lambda timeout.
    pub const DEFAULT: Self = Self {
        attempts: 4,
        first: Duration::from_millis(10),
    };

    fn pause(&self, retry: u32) -> Duration {
        let base = self.first.saturating_mul(1 << retry.min(16));
        base / 2 + base.mul_f64(fastrand::f64())
    }
}

/// Runs `call` until it succeeds, fails permanently, or the attempts are spent.
pub async fn transient<T, F, Fut>(backoff: Backoff, mut call: F) -> Result<T, InfraError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, InfraError>>,
{
    let mut retry = 0;
    loop {
        match call().await {
            Err(e) if e.is_transient() && retry + 1 < backoff.attempts => {
                metrics::counter!("flashsale_inprocess_retries_total", "service" => e.service)
                    .increment(1);
                tokio::time::sleep(backoff.pause(retry)).await;
                retry += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_permanent_ones_are_not() {
        let calls = AtomicU32::new(0);
        let ok = transient(Backoff::DEFAULT, || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0..=2 => Err(InfraError::transient("dynamodb", "conflict")),
                _ => Ok(7),
            }
        })
        .await;
        assert_eq!((ok.unwrap(), calls.load(Ordering::SeqCst)), (7, 4));

        calls.store(0, Ordering::SeqCst);
        let gave_up: Result<(), _> = transient(Backoff::DEFAULT, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(InfraError::transient("dynamodb", "conflict"))
        })
        .await;
        assert!(gave_up.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 4);

        calls.store(0, Ordering::SeqCst);
        let permanent: Result<(), _> = transient(Backoff::DEFAULT, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(InfraError::permanent("dynamodb", "no such table"))
        })
        .await;
        assert!(permanent.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn pauses_grow_and_are_jittered() {
        let b = Backoff::DEFAULT;
        for retry in 0..3 {
            let base = b.first * (1 << retry);
            let p = b.pause(retry);
            assert!(p >= base / 2 && p < base * 3 / 2, "{p:?}");
        }
    }
}
