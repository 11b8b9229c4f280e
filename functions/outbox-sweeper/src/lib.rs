//! The outbox sweeper, run on a schedule. Two jobs per product:
//! - Redis is the outbox: any request still pending after a threshold (its
//!   SQS send failed, or its message is stuck) is re-published with
//!   `SendMessageBatch`. Duplicates are harmless: the consumer's conditional
//!   write absorbs them. Paging is by offset over a live index, so a request
//!   settled meanwhile may shift the page; the next run picks it up.
//! - When nothing is in flight, the Redis shelf is set to the DynamoDB stock
//!   ledger. After Redis lost state (failover to a lagging replica), the
//!   ledger's rejections and this resync put back exactly what exists.

use serde::Serialize;

use shared::domain::ProductId;
use shared::error::InfraError;
use shared::ports::{OrderQueue, OrderStore, StockGate};

/// Requests read from Redis per call.
const PAGE: usize = 100;
/// SQS's batch limit.
const BATCH: usize = 10;

pub struct Sweeper<G, Q, S> {
    pub gate: G,
    pub queue: Q,
    pub store: S,
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
    /// Units the resync added to (or, negative, took from) Redis shelves.
    pub resync_drift: i64,
}

impl<G: StockGate, Q: OrderQueue, S: OrderStore> Sweeper<G, Q, S> {
    pub async fn sweep(&self) -> Result<SweepReport, InfraError> {
        let started = std::time::Instant::now();
        let cutoff = self.gate.now_ms().await? - self.older_than_ms;
        let mut report = SweepReport::default();
        for product in self.gate.products().await? {
            report.products += 1;
            report.resync_drift += self.resync(&product).await?;
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
        if report.republished + report.failed > 0 || report.resync_drift != 0 {
            tracing::info!(?report, "outbox sweep");
        }
        shared::telemetry::record_latency("outbox_sweeper", started);
        Ok(report)
    }

    /// The shelf follows the ledger when the product is quiet; returns the drift.
    async fn resync(&self, product: &ProductId) -> Result<i64, InfraError> {
        let Some(stats) = self.gate.stats(product).await? else {
            return Ok(0);
        };
        if stats.pending > 0 {
            return Ok(0);
        }
        // Read `placed` before the ledger: the script refuses if an order
        // was placed in between, so a stale ledger read is never applied.
        let Some(remaining) = self.store.stock_ledger(product).await? else {
            return Ok(0);
        };
        let drift = self
            .gate
            .resync(product, remaining, stats.placed)
            .await?
            .unwrap_or(0);
        if drift != 0 {
            metrics::counter!("flashsale_stock_resyncs_total").increment(1);
            tracing::warn!(product_id = %product, drift, "Redis shelf differed from the DynamoDB ledger; corrected");
        }
        Ok(drift)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::domain::{OrderMessage, ProductStats};
    use shared::fakes::{FakeGate, FakeQueue, FakeStore, order_message};
    use std::sync::atomic::Ordering;

    fn pending(product: &str, user: usize, admitted_at: i64) -> OrderMessage {
        order_message(product, &format!("u{user}"), admitted_at)
    }

    fn sweeper() -> Sweeper<FakeGate, FakeQueue, FakeStore> {
        Sweeper {
            gate: FakeGate::default(),
            queue: FakeQueue::default(),
            store: FakeStore::default(),
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
                failed: 0,
                resync_drift: 0,
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

    #[tokio::test]
    async fn a_quiet_shelf_follows_the_ledger_and_a_busy_one_is_left_alone() {
        let s = Sweeper {
            store: FakeStore::default().with_stock("p1", 3),
            ..sweeper()
        };
        // Redis shows 7 units (it lost decrements); DynamoDB has 3 left.
        *s.gate.stats.lock().unwrap() = Some(ProductStats {
            stock_left: 7,
            placed: 5,
            ..ProductStats::default()
        });
        let shelf = || s.gate.stats.lock().unwrap().as_ref().unwrap().stock_left;
        // Busy (a request in flight, not yet due): nothing changes.
        s.gate
            .pending
            .lock()
            .unwrap()
            .push(pending("p1", 1, 1_000_000));
        assert_eq!(s.sweep().await.unwrap().resync_drift, 0);
        assert_eq!(shelf(), 7);
        // Quiet: the shelf drops to the ledger, once.
        s.gate.pending.lock().unwrap().clear();
        let p = ProductId::parse("p1").unwrap();
        assert_eq!(s.resync(&p).await.unwrap(), -4);
        assert_eq!(shelf(), 3);
        assert_eq!(s.resync(&p).await.unwrap(), 0);
    }
}
