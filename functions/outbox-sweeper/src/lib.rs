//! The outbox sweeper, run on a schedule: Redis is the outbox, and any
//! request still pending after a threshold (its SQS send failed, or its
//! message is stuck) is re-published with `SendMessageBatch`. Duplicates
//! are harmless: the consumer's conditional write absorbs them. Paging is by
//! offset over a live index, so a request settled meanwhile may shift the
//! page and be skipped; the next run picks it up.

use serde::Serialize;

use shared::error::InfraError;
use shared::ports::{OrderQueue, StockGate};

/// Requests read from Redis per call.
const PAGE: usize = 100;
/// SQS's batch limit.
const BATCH: usize = 10;

pub struct Sweeper<G, Q> {
    pub gate: G,
    pub queue: Q,
    /// Re-publish requests pending for longer than this.
    pub older_than_ms: i64,
    /// Upper bound per product per run, so one run fits a Lambda timeout.
    pub max_per_product: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    pub products: usize,
    pub republished: usize,
    pub failed: usize,
}

impl<G: StockGate, Q: OrderQueue> Sweeper<G, Q> {
    pub async fn sweep(&self) -> Result<SweepReport, InfraError> {
        let cutoff = self.gate.now_ms().await? - self.older_than_ms;
        let mut report = SweepReport::default();
        for product in self.gate.products().await? {
            report.products += 1;
            let mut offset = 0;
            while offset < self.max_per_product {
                let page = self
                    .gate
                    .pending_before(&product, cutoff, offset, PAGE)
                    .await?;
                for chunk in page.chunks(BATCH) {
                    match self.queue.send_batch(chunk).await {
                        Ok(failed) => {
                            report.republished += chunk.len() - failed.len();
                            report.failed += failed.len();
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, product_id = %product, "re-publish failed; next run retries");
                            report.failed += chunk.len();
                        }
                    }
                }
                if page.len() < PAGE {
                    break;
                }
                offset += page.len();
            }
        }
        metrics::counter!("flashsale_outbox_republished_total")
            .increment(report.republished as u64);
        if report.republished + report.failed > 0 {
            tracing::info!(?report, "outbox sweep");
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::domain::{OrderMessage, ProductId, Quantity, RequestId, UserId};
    use shared::fakes::{FakeGate, FakeQueue};
    use std::sync::atomic::Ordering;

    fn pending(product: &str, user: usize, admitted_at: i64) -> OrderMessage {
        let p = ProductId::parse(product).unwrap();
        OrderMessage {
            v: 1,
            request_id: RequestId::new(&p),
            product_id: p,
            user_id: UserId::parse(format!("u{user}")).unwrap(),
            quantity: Quantity::new(1).unwrap(),
            admitted_at,
        }
    }

    fn sweeper() -> Sweeper<FakeGate, FakeQueue> {
        Sweeper {
            gate: FakeGate::default(),
            queue: FakeQueue::default(),
            older_than_ms: 60_000,
            max_per_product: 10_000,
        }
    }

    #[tokio::test]
    async fn republishes_only_requests_older_than_the_threshold() {
        let s = sweeper();
        s.gate.now_ms.store(1_000_000, Ordering::SeqCst);
        let mut all = Vec::new();
        for i in 0..250 {
            all.push(pending("p1", i, 900_000)); // 100 s old
        }
        for i in 0..7 {
            all.push(pending("p2", i, 930_000)); // 70 s old
        }
        for i in 0..5 {
            all.push(pending("p2", 100 + i, 990_000)); // 10 s old: in flight
        }
        *s.gate.pending.lock().unwrap() = all.clone();
        let report = s.sweep().await.unwrap();
        assert_eq!(
            report,
            SweepReport {
                products: 2,
                republished: 257,
                failed: 0
            }
        );
        let sent = s.queue.sent();
        let fresh: Vec<_> = all[257..].iter().map(|m| &m.request_id).collect();
        assert!(sent.iter().all(|(m, _)| !fresh.contains(&&m.request_id)));
        assert_eq!(sent[0].0, all[0]);
    }

    #[tokio::test]
    async fn a_failed_batch_is_counted_and_left_for_the_next_run() {
        let s = sweeper();
        s.gate.now_ms.store(1_000_000, Ordering::SeqCst);
        *s.gate.pending.lock().unwrap() = (0..15).map(|i| pending("p1", i, 0)).collect();
        s.queue.failures.fail_next(1);
        let report = s.sweep().await.unwrap();
        assert_eq!((report.republished, report.failed), (5, 10));
        let report = s.sweep().await.unwrap();
        assert_eq!((report.republished, report.failed), (15, 0));
    }

    #[tokio::test]
    async fn nothing_pending_sends_nothing() {
        let s = sweeper();
        assert_eq!(s.sweep().await.unwrap(), SweepReport::default());
        assert!(s.queue.sent().is_empty());
    }
}
