//! The outbox sweeper, run on a schedule. Per product:
//! - Redis is the outbox: a request pending longer than the threshold is
//!   first looked up in DynamoDB. Decided there (a failover forgot its
//!   settlement, or deduct compensated it and died before restocking), Redis
//!   follows at once, so the shelf does not hide its units. Undecided, it is
//!   re-published with `SendMessageBatch` if its message never reached the
//!   queue (the function died before its send) or was sent longer ago than
//!   SQS may still be delivering it. A message still in flight is left
//!   alone: copies of it would only spend receives. Duplicates are harmless
//!   anyway: the consumer's conditional write absorbs them.
//! - The Redis shelf is healed from the DynamoDB stock ledger, while the sale
//!   runs: shelf = ledger - units pending here (`resync.lua`). A
//!   failover that forgot admissions, decrements or settlements is corrected
//!   within one schedule period.
//! - A product whose sale ended over an hour ago with nothing pending is
//!   retired from the sweep.
//!
//! One product's failure is counted and logged; the others are still swept.

use serde::Serialize;

use shared::deny::DenyList;
use shared::domain::{ProductId, ProductStats, republish_due, unix_ms};
use shared::error::InfraError;
use shared::ports::{
    AdmissionGate, Catalogue, ControlGate, ControlStore, OrderBook, OrderQueue, SaleGate, SendMark,
    ShelfGate, StockLedger,
};
use shared::stock;

/// Index entries read from Redis per call.
const PAGE: usize = 100;
/// SQS's batch limit.
const BATCH: usize = 10;
/// Resyncs per product per run, at most.
const RESYNC_ATTEMPTS: usize = 3;
/// A product is retired this long after its sale ended.
const RETIRE_AFTER_MS: i64 = 3_600_000;
/// A transfer between stock buckets still listed after this long lost its
/// mover (`shared::buckets`).
const TRANSFERS_STALE_MS: i64 = 2_000;

pub struct Sweeper<G, Q, S> {
    pub gate: G,
    pub queue: Q,
    pub store: S,
    /// Re-publish a never-sent request pending for longer than this.
    pub older_than_ms: i64,
    /// Re-publish a sent request this long after its last send.
    pub resend_after_ms: i64,
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
    /// Pending requests DynamoDB had decided: Redis followed.
    pub followed: usize,
    /// Products whose sweep failed (retried next run).
    pub errors: usize,
    pub retired: usize,
    /// Deny-list entries a sale's copy gained or lost.
    pub deny_list_fixes: usize,
    /// Requests in the products' outbox indexes after the run.
    pub pending: i64,
    /// Stock buckets whose warm-up a failover forgot, restored.
    pub buckets_restored: usize,
}

impl<
    G: AdmissionGate + ShelfGate + ControlGate + SaleGate,
    Q: OrderQueue,
    S: OrderBook + Catalogue + ControlStore + StockLedger,
> Sweeper<G, Q, S>
{
    pub async fn sweep(&self) -> Result<SweepReport, InfraError> {
        let started = std::time::Instant::now();
        let now = self.gate.now_ms().await?;
        let mut report = SweepReport::default();
        // The kill switch as DynamoDB records it: a failover that forgot it
        // must not reopen every sale for longer than one run.
        let switch = async {
            let switch = ControlStore::kill_switch(&self.store).await?;
            self.gate.apply_kill_switch(switch).await
        };
        if let Err(e) = switch.await {
            tracing::warn!(error = %e, "kill switch not re-asserted; next run retries");
        }
        // The deny list as DynamoDB records it, into every sale's copy.
        let deny = DenyList::read(&self.store, now)
            .await
            .inspect_err(|e| tracing::warn!(error = %e, "deny list unreadable; next run retries"))
            .ok();
        for product in self.products(now).await? {
            report.products += 1;
            if let Some(deny) = &deny {
                match deny.sync(&self.gate, &self.store, &product).await {
                    Ok((added, removed)) => report.deny_list_fixes += added + removed,
                    Err(e) => {
                        tracing::warn!(error = %e, product_id = %product, "deny list not copied; next run retries")
                    }
                }
            }
            if let Err(e) = self.sweep_product(&product, now, &mut report).await {
                report.errors += 1;
                tracing::warn!(error = %e, product_id = %product, "product not swept; next run retries");
            }
        }
        metrics::counter!("flashsale_outbox_republished_total")
            .increment(report.republished as u64);
        metrics::gauge!("flashsale_outbox_pending").set(report.pending as f64);
        metrics::counter!("flashsale_stock_buckets_restored_total")
            .increment(report.buckets_restored as u64);
        if report.republished
            + report.failed
            + report.errors
            + report.retired
            + report.buckets_restored
            > 0
            || report.resync_drift != 0
        {
            tracing::info!(?report, "outbox sweep");
        }
        shared::telemetry::record_latency("outbox_sweeper", started);
        Ok(report)
    }

    /// The products Redis lists, and those DynamoDB lists as not long over:
    /// Redis' set lives in another cluster slot and can forget one in that
    /// shard's failover.
    async fn products(&self, now: i64) -> Result<Vec<ProductId>, InfraError> {
        let mut products = self.gate.products().await?;
        match self.store.live_products(now - RETIRE_AFTER_MS).await {
            Ok(more) => products.extend(more),
            Err(e) => {
                tracing::warn!(error = %e, "DynamoDB's product list unavailable; sweeping Redis' own")
            }
        }
        products.sort();
        products.dedup();
        Ok(products)
    }

    async fn sweep_product(
        &self,
        product: &ProductId,
        now: i64,
        report: &mut SweepReport,
    ) -> Result<(), InfraError> {
        // Stock buckets a failover forgot the warm-up of (bucket 0's too):
        // their buyers are refused as from an unwarmed sale and their units
        // are on no shelf until restored; the resync below fills them.
        // Before the controls: a pause or end a restore's copy predates is
        // applied to the restored bucket right after.
        match self.gate.restore_buckets(product).await {
            Ok(b) if b.is_empty() => {}
            Ok(b) => {
                tracing::warn!(product_id = %product, buckets = ?b, "stock buckets a failover forgot were restored from a sibling's meta, empty; the resync fills them");
                report.buckets_restored += b.len();
            }
            Err(e) => {
                tracing::warn!(error = %e, product_id = %product, "forgotten stock buckets not restored; next run retries")
            }
        }
        // The operator's controls as DynamoDB records them: a failover must
        // not resume a paused sale or prolong an ended one.
        // Never at the cost of the outbox below: a failure waits a run.
        let controls = async {
            if let Some(p) = self.store.product(product).await? {
                self.gate.apply_controls(&p).await?;
            }
            Ok::<_, InfraError>(())
        };
        if let Err(e) = controls.await {
            tracing::warn!(error = %e, product_id = %product, "controls not re-applied; next run retries");
        }
        // Stock changes a crash interrupted: additions whose shelf step is
        // due, and withdrawals taken off the shelf but never settled: one
        // DynamoDB recorded is finished now (its call died after the record,
        // or a failover forgot the settle); one it did not is left to the
        // call that took it for the re-publish threshold.
        let changes = async {
            for change in self.store.stock_changes_due(product).await? {
                stock::shelve_addition(&self.gate, &self.store, &change).await?;
            }
            for (change, entry) in self.gate.withdrawals_taken(product).await? {
                if now - unix_ms(entry.at) >= self.older_than_ms {
                    stock::record(&self.gate, &self.store, &change, &entry).await?;
                } else {
                    stock::finish_recorded(&self.gate, &self.store, &change).await?;
                }
            }
            Ok::<_, InfraError>(())
        };
        if let Err(e) = changes.await {
            tracing::warn!(error = %e, product_id = %product, "stock changes not finished; next run retries");
        }
        // Units lent between stock buckets by a mover that died: on no
        // shelf until received (a live mover finishes in milliseconds; one
        // racing this moves nothing twice).
        match self
            .gate
            .finish_transfers(product, now - TRANSFERS_STALE_MS)
            .await
        {
            Ok(0) => {}
            Ok(n) => {
                tracing::warn!(product_id = %product, transfers = n, "transfers between stock buckets a mover left were finished")
            }
            Err(e) => {
                tracing::warn!(error = %e, product_id = %product, "transfers between stock buckets not finished; next run retries")
            }
        }
        // Healed first, so a long backlog below cannot keep the shelf wrong;
        // healed again if following DynamoDB settled requests meanwhile.
        let mut stats = self.heal(product, report).await?;
        let followed = report.followed;
        self.republish(product, now, report).await?;
        if report.followed > followed {
            stats = self.heal(product, report).await?;
        }
        if let Some(s) = &stats {
            report.pending += s.pending;
            // The dashboard's live shelf, per sale, once a run.
            metrics::gauge!("flashsale_stock_left", "product" => product.to_string())
                .set(s.stock_left as f64);
        }
        let ended_long_ago = |s: &ProductStats| {
            s.pending == 0 && s.ends_at_ms > 0 && now - s.ends_at_ms > RETIRE_AFTER_MS
        };
        if stats.as_ref().is_some_and(ended_long_ago) {
            self.gate.retire(product).await?;
            report.retired += 1;
        }
        Ok(())
    }

    /// Sets the shelf from the ledger. An order settled while the ledger was
    /// read may be counted twice (undersold, never oversold); when that
    /// happened, it tries again so a quiet product ends exact.
    async fn heal(
        &self,
        product: &ProductId,
        report: &mut SweepReport,
    ) -> Result<Option<ProductStats>, InfraError> {
        let Some(mut stats) = self.gate.stats(product).await? else {
            return Ok(None);
        };
        for _ in 0..RESYNC_ATTEMPTS {
            report.resync_drift +=
                stock::resync_from_ledger(&self.gate, &self.store, product, stats.fence()).await?;
            let seen = stats.fence();
            stats = match self.gate.stats(product).await? {
                Some(s) => s,
                None => return Ok(None),
            };
            if stats.fence() == seen {
                break;
            }
        }
        Ok(Some(stats))
    }

    async fn republish(
        &self,
        product: &ProductId,
        now: i64,
        report: &mut SweepReport,
    ) -> Result<(), InfraError> {
        let cutoff = now - self.older_than_ms.min(self.resend_after_ms);
        let mut offset = 0;
        while offset < self.max_per_product {
            let page = self
                .gate
                .pending_page(product, cutoff, offset, PAGE)
                .await?;
            let mut due = Vec::new();
            for r in page.requests {
                if let Some(order) = self.store.order(&r.msg.request_id).await? {
                    self.gate.follow(&r.msg, order.status).await?;
                    report.followed += 1;
                } else if republish_due(
                    r.msg.admitted_at,
                    r.sent_at_ms,
                    now,
                    self.older_than_ms,
                    self.resend_after_ms,
                ) {
                    due.push(r.msg);
                }
            }
            for chunk in due.chunks(BATCH) {
                // Claimed before the send: if the claim cannot be written,
                // nothing is sent, so a later run never copies a message
                // this one put in flight. Only a send that happened marks
                // it sent (what a replay relies on).
                for msg in chunk {
                    self.gate
                        .mark_sent(&msg.request_id, msg.user_id.as_str(), SendMark::Claimed)
                        .await?;
                }
                let unsent = match self.queue.send_batch(chunk, None).await {
                    Ok(failed) => failed,
                    Err(e) => {
                        tracing::warn!(error = %e, product_id = %product, "re-publish failed; next run retries");
                        chunk.iter().map(|m| m.request_id.clone()).collect()
                    }
                };
                report.republished += chunk.len() - unsent.len();
                report.failed += unsent.len();
                for msg in chunk {
                    let mark = if unsent.contains(&msg.request_id) {
                        SendMark::Unclaimed
                    } else {
                        SendMark::Sent
                    };
                    self.gate
                        .mark_sent(&msg.request_id, msg.user_id.as_str(), mark)
                        .await?;
                }
            }
            // Paging counts index entries, not the filtered page.
            if page.scanned < PAGE {
                break;
            }
            offset += page.scanned;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::aws::DynamoStore;
    use shared::domain::{OrderMessage, OrderStatus};
    use shared::embedded::Faults;
    use shared::fakes::{FakeGate, FakeQueue, Probe, add_product, order_message};
    use std::sync::atomic::Ordering;

    const NOW: i64 = 10_000_000;

    fn pending(product: &str, user: usize, admitted_at: i64) -> OrderMessage {
        order_message(product, &format!("u{user}"), admitted_at)
    }

    type TestSweeper = Sweeper<FakeGate, FakeQueue, DynamoStore>;

    /// A sweeper over an empty store, and DynamoDB's faults.
    async fn sweeper() -> (TestSweeper, Faults) {
        let (store, faults) = shared::fakes::store().await;
        let s = Sweeper {
            gate: FakeGate::default(),
            queue: FakeQueue::default(),
            store,
            older_than_ms: 60_000,
            resend_after_ms: 1_200_000,
            max_per_product: 10_000,
        };
        s.gate.now_ms.store(NOW, Ordering::SeqCst);
        (s, faults)
    }

    /// [`sweeper`] over these products and their units.
    async fn sweeper_of(products: &[(&str, u32)]) -> (TestSweeper, Faults) {
        let (s, faults) = sweeper().await;
        for (id, units) in products {
            add_product(&s.store, id, *units).await;
        }
        (s, faults)
    }

    /// A sweeper over the real gate on a simulated Redis (the shelf's rules
    /// are its scripts'), clocked now, and a store holding these products.
    async fn simulated_sweeper(
        products: &[(&str, u32)],
    ) -> Sweeper<shared::redis::RedisGate, FakeQueue, DynamoStore> {
        let (fake, _) = sweeper_of(products).await;
        Sweeper {
            gate: shared::fakes::simulated_gate().1,
            queue: fake.queue,
            store: fake.store,
            older_than_ms: fake.older_than_ms,
            resend_after_ms: fake.resend_after_ms,
            max_per_product: fake.max_per_product,
        }
    }

    /// Warms `id` on the simulated gate from a ledger read of `units`.
    async fn warm(
        s: &Sweeper<shared::redis::RedisGate, FakeQueue, DynamoStore>,
        id: &str,
        units: i64,
    ) -> ProductId {
        let p = ProductId::parse(id).unwrap();
        let product = s.store.product(&p).await.unwrap().unwrap();
        shared::fakes::warm(&s.gate, &product, units).await;
        p
    }

    fn sent_ids(s: &TestSweeper) -> Vec<String> {
        s.queue
            .sent()
            .iter()
            .map(|(m, _)| m.request_id.to_string())
            .collect()
    }

    #[tokio::test]
    async fn republishes_never_sent_requests_older_than_the_threshold() {
        let (s, _) = sweeper().await;
        let mut all = Vec::new();
        for i in 0..250 {
            all.push(pending("p1", i, NOW - 100_000));
        }
        for i in 0..7 {
            all.push(pending("p2", i, NOW - 70_000));
        }
        for i in 0..5 {
            all.push(pending("p2", 100 + i, NOW - 10_000)); // in flight
        }
        *s.gate.pending.lock().unwrap() = all.clone();
        let report = s.sweep().await.unwrap();
        assert_eq!((report.products, report.republished), (2, 257));
        let fresh: Vec<String> = all[257..]
            .iter()
            .map(|m| m.request_id.to_string())
            .collect();
        assert!(sent_ids(&s).iter().all(|id| !fresh.contains(id)));
        assert_eq!(s.queue.sent()[0].0, all[0]);
        // Marked sent: the next run leaves them to SQS.
        assert_eq!(s.sweep().await.unwrap().republished, 0);
    }

    /// A failover that forgot the thrown kill switch reopens the sales for
    /// at most one run.
    #[tokio::test]
    async fn the_kill_switch_is_re_asserted_from_dynamodb_every_run() {
        use shared::domain::KillSwitch;
        let (s, faults) = sweeper().await;
        let entry = shared::domain::AuditEntry {
            product_id: None,
            at: shared::domain::from_unix_ms(NOW),
            actor: "ops".into(),
            action: "kill_switch".into(),
            reason: "r".into(),
        };
        let (thrown, _) = s.store.switch_admissions(true, &entry).await.unwrap();
        faults.fail_next(1);
        s.sweep().await.unwrap();
        assert_eq!(*s.gate.kill_switch.lock().unwrap(), KillSwitch::default());
        s.sweep().await.unwrap();
        assert_eq!(*s.gate.kill_switch.lock().unwrap(), thrown);
    }

    /// Stock changes whose call died midway: an addition recorded but not
    /// on the shelf, a withdrawal taken off the shelf but not recorded (once
    /// its call had the re-publish threshold to finish it itself).
    /// On the real scripts (a simulated Redis).
    #[tokio::test]
    async fn stock_changes_a_crash_interrupted_are_finished() {
        use shared::domain::{AuditEntry, IdempotencyKey, StockChange, from_unix_ms};
        use shared::ports::ShelfStep;
        let s = simulated_sweeper(&[("p1", 50)]).await;
        let p = warm(&s, "p1", 50).await;
        let now = s.gate.now_ms().await.unwrap();
        let change = |key: &str, delta: i64| {
            StockChange::new(p.clone(), IdempotencyKey::parse(key).unwrap(), delta).unwrap()
        };
        let entry = |at: i64| AuditEntry {
            product_id: Some(p.clone()),
            at: from_unix_ms(at),
            actor: "ops".into(),
            action: "stock".into(),
            reason: "r".into(),
        };
        let (add, old, fresh) = (change("a", 5), change("w-old", -3), change("w-new", -2));
        s.store.change_stock(&add, &entry(now)).await.unwrap();
        s.gate
            .change_shelf(&old, ShelfStep::Take, Some(&entry(now - 60_000)))
            .await
            .unwrap();
        s.gate
            .change_shelf(&fresh, ShelfStep::Take, Some(&entry(now - 1_000)))
            .await
            .unwrap();
        // Issue 18, hole D: a fresh withdrawal DynamoDB already recorded,
        // whose settle a failover forgot, is finished at once, not after
        // the minute left to an unrecorded one's call.
        let lost = change("w-lost", -4);
        s.gate
            .change_shelf(&lost, ShelfStep::Take, Some(&entry(now - 1_000)))
            .await
            .unwrap();
        s.store
            .change_stock(&lost, &entry(now - 1_000))
            .await
            .unwrap();
        s.sweep().await.unwrap();
        let ledger = s.store.ledger_of(&p).await;
        // 50 + 5 - 3 - 4; the fresh unrecorded withdrawal is still its call's.
        assert_eq!((ledger.remaining, ledger.releasing), (48, 0));
        let left = s.gate.withdrawals_taken(&p).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].0, fresh);
        let stats = s.gate.stats(&p).await.unwrap().unwrap();
        assert_eq!((stats.withdrawing, stats.withdrawn_units), (2, 7));
    }

    /// Hole 5: a message SQS may still deliver is not copied every run; only
    /// once its redeliveries are surely over is it sent again.
    #[tokio::test]
    async fn a_sent_message_is_left_to_sqs_until_its_redeliveries_are_over() {
        let (s, _) = sweeper().await;
        let m = pending("p1", 1, NOW - 600_000);
        s.gate.pending.lock().unwrap().push(m.clone());
        s.gate
            .sent_at
            .lock()
            .unwrap()
            .insert(m.request_id.clone(), NOW - 590_000);
        for _ in 0..3 {
            assert_eq!(s.sweep().await.unwrap().republished, 0);
        }
        s.gate.now_ms.store(NOW + 700_000, Ordering::SeqCst);
        assert_eq!(s.sweep().await.unwrap().republished, 1);
        assert_eq!(s.sweep().await.unwrap().republished, 0);
    }

    /// Found by the failover drill: a failover that forgets settlements
    /// leaves decided requests pending in Redis, hiding their units from the
    /// shelf until their resend; the sweeper asks DynamoDB first.
    #[tokio::test]
    async fn a_request_decided_in_dynamodb_is_followed_not_resent() {
        let (s, _) = sweeper_of(&[("p1", 5)]).await;
        let (placed, compensated) = (
            pending("p1", 1, NOW - 100_000),
            pending("p1", 2, NOW - 100_000),
        );
        s.store
            .place(&placed, &shared::fakes::terms(0))
            .await
            .unwrap();
        s.store
            .record_fate(&compensated, OrderStatus::Compensated, &Default::default())
            .await
            .unwrap();
        *s.gate.pending.lock().unwrap() = vec![placed.clone(), compensated.clone()];
        let report = s.sweep().await.unwrap();
        assert_eq!((report.followed, report.republished), (2, 0));
        assert_eq!(
            s.gate.settled(),
            vec![(placed.request_id.clone(), OrderStatus::Placed)]
        );
        assert_eq!(s.gate.restocked(), vec![compensated.request_id.clone()]);
    }

    #[tokio::test]
    async fn a_failed_batch_is_counted_and_left_for_the_next_run() {
        let (s, _) = sweeper().await;
        *s.gate.pending.lock().unwrap() = (0..15).map(|i| pending("p1", i, 0)).collect();
        s.queue.failures.fail_next(1);
        let report = s.sweep().await.unwrap();
        assert_eq!((report.republished, report.failed), (5, 10));
        let report = s.sweep().await.unwrap();
        assert_eq!((report.republished, report.failed), (10, 0));
    }

    #[tokio::test]
    async fn nothing_pending_sends_nothing() {
        let (s, _) = sweeper().await;
        assert_eq!(s.sweep().await.unwrap(), SweepReport::default());
        assert!(s.queue.sent().is_empty());
    }

    /// Hole 8: one product's failure does not abort the sweep.
    #[tokio::test]
    async fn a_failing_product_does_not_stop_the_others() {
        let (s, faults) = sweeper_of(&[("p1", 5), ("p2", 5)]).await;
        *s.gate.stats.lock().unwrap() = Some(ProductStats::default());
        *s.gate.pending.lock().unwrap() = vec![pending("p1", 1, 0), pending("p2", 1, 0)];
        // The kill switch, the deny list, DynamoDB's product list, p1's
        // controls and stock changes (all tolerated), then p1's order read.
        faults.fail_next(6);
        let report = s.sweep().await.unwrap();
        assert_eq!((report.errors, report.republished), (1, 1));
        assert_eq!(s.queue.sent()[0].0.product_id.as_str(), "p2");
    }

    /// Found in review: Redis' product set lives in another cluster slot and
    /// may forget a product; DynamoDB's list of sales not long over keeps it
    /// swept.
    #[tokio::test]
    async fn a_product_redis_forgot_is_still_swept() {
        let (s, _) = sweeper().await;
        s.store
            .create_product(&shared::fakes::product("p9"))
            .await
            .unwrap();
        s.gate
            .pending
            .lock()
            .unwrap()
            .push(pending("p9", 1, NOW - 100_000));
        s.gate
            .retired
            .lock()
            .unwrap()
            .push(ProductId::parse("p9").unwrap());
        assert!(s.gate.products().await.unwrap().is_empty());
        let report = s.sweep().await.unwrap();
        assert_eq!((report.products, report.republished), (1, 1));
    }

    /// Hole 8: a sale that ended long ago, with nothing pending, is retired.
    #[tokio::test]
    async fn ended_quiet_products_are_retired() {
        let (s, _) = sweeper().await;
        s.gate
            .pending
            .lock()
            .unwrap()
            .push(pending("p1", 1, NOW - 100));
        *s.gate.stats.lock().unwrap() = Some(ProductStats {
            ends_at_ms: NOW - RETIRE_AFTER_MS - 1,
            ..ProductStats::default()
        });
        assert_eq!(s.sweep().await.unwrap().retired, 0, "still pending");
        s.gate.pending.lock().unwrap().clear();
        s.gate
            .warmed
            .lock()
            .unwrap()
            .push((shared::fakes::product("p1"), false));
        assert_eq!(s.sweep().await.unwrap().retired, 1);
        assert_eq!(s.sweep().await.unwrap().products, 0);
    }

    /// Hole 1: the shelf heals from the ledger while requests are in flight:
    /// ledger minus the units still pending. On the real scripts.
    #[tokio::test]
    async fn a_busy_shelf_follows_the_ledger_minus_what_is_pending() {
        let s = simulated_sweeper(&[("p1", 3)]).await;
        // Redis shows 7 units (it lost decrements); DynamoDB has 3 left, one
        // request (1 unit) is still on its way to DynamoDB.
        let p = warm(&s, "p1", 8).await;
        shared::fakes::admit_buyers(&s.gate, &p, 1).await;
        let shelf = || async { s.gate.stats(&p).await.unwrap().unwrap().stock_left };
        assert_eq!(shelf().await, 7);
        assert_eq!(s.sweep().await.unwrap().resync_drift, -5);
        assert_eq!(shelf().await, 2);
        assert_eq!(s.sweep().await.unwrap().resync_drift, 0);
    }
}
