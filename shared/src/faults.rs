//! Fault injection for chaos runs: a decorator around each port that makes
//! a chosen fraction of calls fail with a transient error. Switched on only
//! by `FLASHSALE_FAULTS` (e.g. `store.put:0.05,queue.send:0.02,
//! consumer.crash_after_write:0.01`); nothing in a request can enable it.
//! `place.fail_product:<product id>` fails every placement of that
//! product's orders: a deterministic outage of one product, which sends its
//! orders down the DLQ to compensation (the LocalStack demo's drill).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::domain::{
    Admission, AuditEntry, Control, Controlled, Denial, KillSwitch, Ledger, OrderMessage,
    OrderStatus, Product, ProductId, ProductStats, Purchase, RequestId, RequestView, Reservation,
    StockChange, StockChangeRecord, UserId,
};
use crate::error::{ConfigError, InfraError};
use crate::payment::{EventId, PaymentEvent, PaymentRecord};
use crate::ports::{
    AdmissionGate, Catalogue, ControlGate, ControlStore, Fate, FateNote, LifecycleStore, OrderBook,
    OrderQueue, PaymentWrite, PendingPage, Placement, PortResult, RoomGate, SaleGate, SendMark,
    Settled, ShelfChange, ShelfGate, ShelfStep, StockLedger, Transition, Warm,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// Every Redis call of the stock gate.
    RedisCall,
    /// SQS sends (deduct, sweeper).
    QueueSend,
    /// DynamoDB writes (place, record a fate, create a product).
    StorePut,
    /// DynamoDB reads.
    StoreGet,
    /// The consumer dies after its DynamoDB write, before acknowledging.
    CrashAfterWrite,
    /// The lifecycle's writes (pay, refund, release, shelved) succeed but
    /// their answer is lost: the caller sees an error after the write.
    LifecycleReplyLost,
    /// A release dies between its DynamoDB and its Redis step.
    CrashMidRelease,
}

const POINTS: [(FaultPoint, &str); 7] = [
    (FaultPoint::RedisCall, "redis.call"),
    (FaultPoint::QueueSend, "queue.send"),
    (FaultPoint::StorePut, "store.put"),
    (FaultPoint::StoreGet, "store.get"),
    (FaultPoint::CrashAfterWrite, "consumer.crash_after_write"),
    (FaultPoint::LifecycleReplyLost, "store.lifecycle_reply_lost"),
    (FaultPoint::CrashMidRelease, "release.crash_mid"),
];

/// `place.fail_product:<product id>`.
const FAIL_PRODUCT: &str = "place.fail_product";

#[derive(Debug, Default)]
pub struct FaultPlan {
    rates: [f64; POINTS.len()],
    /// Products whose every placement fails.
    failing_products: Vec<String>,
    injected: AtomicU64,
}

fn index(p: FaultPoint) -> usize {
    POINTS.iter().position(|(q, _)| *q == p).unwrap_or(0)
}

impl FaultPlan {
    pub fn none() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn parse(spec: &str) -> Result<Self, ConfigError> {
        let mut plan = Self::default();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let bad = || {
                ConfigError(format!(
                    "FLASHSALE_FAULTS entry {part:?} must be <point>:<rate in 0..1> with point one of {}, or {FAIL_PRODUCT}:<product id>",
                    POINTS.map(|(_, n)| n).join(", ")
                ))
            };
            let (name, rate) = part.split_once(':').ok_or_else(bad)?;
            if name == FAIL_PRODUCT {
                if rate.is_empty() {
                    return Err(bad());
                }
                plan.failing_products.push(rate.to_owned());
                continue;
            }
            let i = POINTS
                .iter()
                .position(|(_, n)| *n == name)
                .ok_or_else(bad)?;
            let rate: f64 = rate.parse().map_err(|_| bad())?;
            if !(0.0..=1.0).contains(&rate) {
                return Err(bad());
            }
            plan.rates[i] = rate;
        }
        Ok(plan)
    }

    /// The plan of `FLASHSALE_FAULTS`, or none.
    pub fn from_env() -> Result<Arc<Self>, ConfigError> {
        match std::env::var("FLASHSALE_FAULTS") {
            Ok(spec) if !spec.trim().is_empty() => {
                let plan = Self::parse(&spec)?;
                tracing::warn!(faults = spec, "FAULT INJECTION IS ON");
                Ok(Arc::new(plan))
            }
            _ => Ok(Self::none()),
        }
    }

    /// Rolls the dice for one call at `point`.
    pub fn hit(&self, point: FaultPoint) -> bool {
        let rate = self.rates[index(point)];
        let hit = rate > 0.0 && fastrand::f64() < rate;
        if hit {
            self.injected.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    fn check(&self, point: FaultPoint, service: &'static str) -> PortResult<()> {
        if self.hit(point) {
            Err(InfraError::transient(
                service,
                format!("fault injected at {}", POINTS[index(point)].1),
            ))
        } else {
            Ok(())
        }
    }

    /// Whether `place.fail_product` names this order's product.
    fn check_placement(&self, msg: &OrderMessage) -> PortResult<()> {
        if self
            .failing_products
            .iter()
            .any(|p| p == msg.product_id.as_str())
        {
            self.injected.fetch_add(1, Ordering::Relaxed);
            return Err(InfraError::transient(
                "dynamodb",
                format!(
                    "fault injected at {FAIL_PRODUCT} for {}",
                    msg.product_id.as_str()
                ),
            ));
        }
        Ok(())
    }

    /// Faults injected so far by this process.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }
}

/// A port with faults injected in front of it.
#[derive(Clone)]
pub struct Faulty<T> {
    pub inner: T,
    plan: Arc<FaultPlan>,
}

impl<T> Faulty<T> {
    pub fn new(inner: T, plan: Arc<FaultPlan>) -> Self {
        Self { inner, plan }
    }
}

impl<T: AdmissionGate> AdmissionGate for Faulty<T> {
    async fn admit(&self, p: &Purchase) -> PortResult<Admission> {
        self.plan.check(FaultPoint::RedisCall, "redis")?;
        self.inner.admit(p).await
    }
    async fn request(&self, id: &RequestId, user: &str) -> PortResult<Option<RequestView>> {
        self.plan.check(FaultPoint::RedisCall, "redis")?;
        self.inner.request(id, user).await
    }
    async fn mark_sent(&self, id: &RequestId, user: &str, mark: SendMark) -> PortResult<()> {
        self.plan.check(FaultPoint::RedisCall, "redis")?;
        self.inner.mark_sent(id, user, mark).await
    }
    async fn settle(&self, msg: &OrderMessage, status: Settled) -> PortResult<bool> {
        self.plan.check(FaultPoint::RedisCall, "redis")?;
        self.inner.settle(msg, status).await
    }
    async fn restock(&self, msg: &OrderMessage) -> PortResult<bool> {
        self.plan.check(FaultPoint::RedisCall, "redis")?;
        self.inner.restock(msg).await
    }
    async fn pending_page(
        &self,
        product: &ProductId,
        cutoff_ms: i64,
        offset: usize,
        limit: usize,
    ) -> PortResult<PendingPage> {
        self.plan.check(FaultPoint::RedisCall, "redis")?;
        self.inner
            .pending_page(product, cutoff_ms, offset, limit)
            .await
    }
}

impl<T: RoomGate> RoomGate for Faulty<T> {
    async fn redeem(
        &self,
        product: &ProductId,
        nonce: &str,
        user: &str,
        ttl_ms: i64,
    ) -> PortResult<String> {
        self.plan.check(FaultPoint::RedisCall, "redis")?;
        self.inner.redeem(product, nonce, user, ttl_ms).await
    }
    async fn entries(&self, product: &ProductId) -> PortResult<u64> {
        self.plan.check(FaultPoint::RedisCall, "redis")?;
        self.inner.entries(product).await
    }
    async fn seen(
        &self,
        product: &ProductId,
        nonce: &str,
        place_ms: i64,
        ttl_ms: i64,
    ) -> PortResult<bool> {
        self.plan.check(FaultPoint::RedisCall, "redis")?;
        self.inner.seen(product, nonce, place_ms, ttl_ms).await
    }
    async fn places(&self, product: &ProductId, from_ms: i64, to_ms: i64) -> PortResult<Vec<u64>> {
        self.plan.check(FaultPoint::RedisCall, "redis")?;
        self.inner.places(product, from_ms, to_ms).await
    }
}

impl<T: ShelfGate> ShelfGate for Faulty<T> {
    async fn release(&self, order: &RequestView, to: OrderStatus) -> PortResult<bool> {
        self.plan.check(FaultPoint::RedisCall, "redis")?;
        self.inner.release(order, to).await
    }
    async fn change_shelf(
        &self,
        change: &StockChange,
        step: ShelfStep,
        entry: Option<&AuditEntry>,
    ) -> PortResult<ShelfChange> {
        self.plan.check(FaultPoint::RedisCall, "redis")?;
        self.inner.change_shelf(change, step, entry).await
    }
    async fn withdrawals_taken(
        &self,
        product: &ProductId,
    ) -> PortResult<Vec<(StockChange, AuditEntry)>> {
        self.plan.check(FaultPoint::RedisCall, "redis")?;
        self.inner.withdrawals_taken(product).await
    }
    async fn resync(
        &self,
        product: &ProductId,
        ledger: &Ledger,
        fence_seen: i64,
    ) -> PortResult<Option<i64>> {
        self.plan.check(FaultPoint::RedisCall, "redis")?;
        self.inner.resync(product, ledger, fence_seen).await
    }
    async fn finish_transfers(&self, product: &ProductId, lent_by_ms: i64) -> PortResult<usize> {
        self.plan.check(FaultPoint::RedisCall, "redis")?;
        self.inner.finish_transfers(product, lent_by_ms).await
    }
    async fn restore_buckets(&self, product: &ProductId) -> PortResult<Vec<u16>> {
        self.plan.check(FaultPoint::RedisCall, "redis")?;
        self.inner.restore_buckets(product).await
    }
}

impl<T: ControlGate> ControlGate for Faulty<T> {
    async fn apply_controls(&self, product: &Product) -> PortResult<bool> {
        self.plan.check(FaultPoint::RedisCall, "redis")?;
        self.inner.apply_controls(product).await
    }
    async fn apply_kill_switch(&self, switch: KillSwitch) -> PortResult<()> {
        self.plan.check(FaultPoint::RedisCall, "redis")?;
        self.inner.apply_kill_switch(switch).await
    }
    async fn kill_switch(&self) -> PortResult<KillSwitch> {
        self.plan.check(FaultPoint::RedisCall, "redis")?;
        ControlGate::kill_switch(&self.inner).await
    }
    async fn set_denials(
        &self,
        product: &ProductId,
        add: &[(UserId, i64)],
        remove: &[UserId],
    ) -> PortResult<()> {
        self.plan.check(FaultPoint::RedisCall, "redis")?;
        self.inner.set_denials(product, add, remove).await
    }
    async fn denials(&self, product: &ProductId) -> PortResult<Vec<(UserId, i64)>> {
        self.plan.check(FaultPoint::RedisCall, "redis")?;
        ControlGate::denials(&self.inner, product).await
    }
}

impl<T: SaleGate> SaleGate for Faulty<T> {
    async fn warm(
        &self,
        product: &Product,
        force: bool,
        ledger: i64,
        fence_seen: i64,
    ) -> PortResult<Warm> {
        self.plan.check(FaultPoint::RedisCall, "redis")?;
        self.inner.warm(product, force, ledger, fence_seen).await
    }
    async fn stats(&self, product: &ProductId) -> PortResult<Option<ProductStats>> {
        self.plan.check(FaultPoint::RedisCall, "redis")?;
        self.inner.stats(product).await
    }
    async fn products(&self) -> PortResult<Vec<ProductId>> {
        self.plan.check(FaultPoint::RedisCall, "redis")?;
        self.inner.products().await
    }
    async fn retire(&self, product: &ProductId) -> PortResult<()> {
        self.plan.check(FaultPoint::RedisCall, "redis")?;
        self.inner.retire(product).await
    }
    async fn now_ms(&self) -> PortResult<i64> {
        self.plan.check(FaultPoint::RedisCall, "redis")?;
        self.inner.now_ms().await
    }
}

impl<T: OrderQueue> OrderQueue for Faulty<T> {
    async fn send(&self, msg: &OrderMessage, traceparent: &str) -> PortResult<()> {
        self.plan.check(FaultPoint::QueueSend, "sqs")?;
        self.inner.send(msg, traceparent).await
    }
    async fn send_batch(
        &self,
        msgs: &[OrderMessage],
        traceparents: Option<&[String]>,
    ) -> PortResult<Vec<RequestId>> {
        self.plan.check(FaultPoint::QueueSend, "sqs")?;
        self.inner.send_batch(msgs, traceparents).await
    }
}

impl<T: OrderBook> OrderBook for Faulty<T> {
    async fn place(&self, msg: &OrderMessage, terms: &Reservation) -> PortResult<Placement> {
        self.plan.check_placement(msg)?;
        self.plan.check(FaultPoint::StorePut, "dynamodb")?;
        self.inner.place(msg, terms).await
    }
    async fn record_fate(
        &self,
        msg: &OrderMessage,
        status: OrderStatus,
        note: &FateNote,
    ) -> PortResult<Fate> {
        self.plan.check(FaultPoint::StorePut, "dynamodb")?;
        self.inner.record_fate(msg, status, note).await
    }
    async fn order(&self, id: &RequestId) -> PortResult<Option<RequestView>> {
        self.plan.check(FaultPoint::StoreGet, "dynamodb")?;
        self.inner.order(id).await
    }
    async fn orders_of(&self, id: &ProductId) -> PortResult<Vec<RequestView>> {
        self.plan.check(FaultPoint::StoreGet, "dynamodb")?;
        self.inner.orders_of(id).await
    }
}

impl<T: LifecycleStore> LifecycleStore for Faulty<T> {
    async fn pay(
        &self,
        order: &RequestView,
        event: &PaymentEvent,
        now_ms: i64,
    ) -> PortResult<PaymentWrite> {
        self.plan.check(FaultPoint::StorePut, "dynamodb")?;
        let written = self.inner.pay(order, event, now_ms).await?;
        self.plan
            .check(FaultPoint::LifecycleReplyLost, "dynamodb")?;
        Ok(written)
    }
    async fn reverse(
        &self,
        order: &RequestView,
        record: &PaymentRecord,
        now_ms: i64,
    ) -> PortResult<PaymentWrite> {
        self.plan.check(FaultPoint::StorePut, "dynamodb")?;
        let written = self.inner.reverse(order, record, now_ms).await?;
        self.plan
            .check(FaultPoint::LifecycleReplyLost, "dynamodb")?;
        Ok(written)
    }
    async fn record_event(&self, record: &PaymentRecord) -> PortResult<bool> {
        self.plan.check(FaultPoint::StorePut, "dynamodb")?;
        let written = self.inner.record_event(record).await?;
        self.plan
            .check(FaultPoint::LifecycleReplyLost, "dynamodb")?;
        Ok(written)
    }
    async fn payment(&self, id: &EventId) -> PortResult<Option<PaymentRecord>> {
        self.plan.check(FaultPoint::StoreGet, "dynamodb")?;
        self.inner.payment(id).await
    }
    async fn release(
        &self,
        order: &RequestView,
        to: OrderStatus,
        now_ms: i64,
    ) -> PortResult<Transition> {
        self.plan.check(FaultPoint::StorePut, "dynamodb")?;
        let written = self.inner.release(order, to, now_ms).await?;
        self.plan
            .check(FaultPoint::LifecycleReplyLost, "dynamodb")?;
        Ok(written)
    }
    async fn shelved(&self, order: &RequestView) -> PortResult<bool> {
        self.plan.check(FaultPoint::StorePut, "dynamodb")?;
        let written = self.inner.shelved(order).await?;
        self.plan
            .check(FaultPoint::LifecycleReplyLost, "dynamodb")?;
        Ok(written)
    }
    async fn shelf_due(&self, id: &RequestId) -> PortResult<bool> {
        self.plan.check(FaultPoint::StoreGet, "dynamodb")?;
        self.inner.shelf_due(id).await
    }
    async fn due(&self, now_ms: i64, limit: usize) -> PortResult<Vec<RequestView>> {
        self.plan.check(FaultPoint::StoreGet, "dynamodb")?;
        self.inner.due(now_ms, limit).await
    }
}

impl<T: Catalogue> Catalogue for Faulty<T> {
    async fn create_product(&self, product: &Product) -> PortResult<bool> {
        self.plan.check(FaultPoint::StorePut, "dynamodb")?;
        self.inner.create_product(product).await
    }
    async fn product(&self, id: &ProductId) -> PortResult<Option<Product>> {
        self.plan.check(FaultPoint::StoreGet, "dynamodb")?;
        self.inner.product(id).await
    }
    async fn ledger(&self, id: &ProductId) -> PortResult<Option<Ledger>> {
        self.plan.check(FaultPoint::StoreGet, "dynamodb")?;
        self.inner.ledger(id).await
    }
    async fn live_products(&self, ends_after_ms: i64) -> PortResult<Vec<ProductId>> {
        self.plan.check(FaultPoint::StoreGet, "dynamodb")?;
        self.inner.live_products(ends_after_ms).await
    }
}

impl<T: ControlStore> ControlStore for Faulty<T> {
    async fn control(
        &self,
        product: &ProductId,
        control: Control,
        entry: &AuditEntry,
    ) -> PortResult<Option<Controlled>> {
        self.plan.check(FaultPoint::StorePut, "dynamodb")?;
        self.inner.control(product, control, entry).await
    }
    async fn change_room(
        &self,
        product: &ProductId,
        from: &crate::room::WaitingRoom,
        to: &crate::room::WaitingRoom,
        entry: &AuditEntry,
    ) -> PortResult<bool> {
        self.plan.check(FaultPoint::StorePut, "dynamodb")?;
        self.inner.change_room(product, from, to, entry).await
    }
    async fn audit(&self, product: Option<&ProductId>) -> PortResult<Vec<AuditEntry>> {
        self.plan.check(FaultPoint::StoreGet, "dynamodb")?;
        self.inner.audit(product).await
    }
    async fn switch_admissions(
        &self,
        engaged: bool,
        entry: &AuditEntry,
    ) -> PortResult<(KillSwitch, bool)> {
        self.plan.check(FaultPoint::StorePut, "dynamodb")?;
        self.inner.switch_admissions(engaged, entry).await
    }
    async fn kill_switch(&self) -> PortResult<KillSwitch> {
        self.plan.check(FaultPoint::StoreGet, "dynamodb")?;
        ControlStore::kill_switch(&self.inner).await
    }
    async fn set_denial(
        &self,
        user: &UserId,
        denial: Option<&Denial>,
        entry: &AuditEntry,
    ) -> PortResult<bool> {
        self.plan.check(FaultPoint::StorePut, "dynamodb")?;
        self.inner.set_denial(user, denial, entry).await
    }
    async fn denials(&self) -> PortResult<Vec<Denial>> {
        self.plan.check(FaultPoint::StoreGet, "dynamodb")?;
        ControlStore::denials(&self.inner).await
    }
    async fn denial(&self, user: &UserId) -> PortResult<Option<Denial>> {
        self.plan.check(FaultPoint::StoreGet, "dynamodb")?;
        self.inner.denial(user).await
    }
}

impl<T: StockLedger> StockLedger for Faulty<T> {
    async fn change_stock(
        &self,
        change: &StockChange,
        entry: &AuditEntry,
    ) -> PortResult<Option<(StockChangeRecord, bool)>> {
        self.plan.check(FaultPoint::StorePut, "dynamodb")?;
        self.inner.change_stock(change, entry).await
    }
    async fn stock_change(&self, change: &StockChange) -> PortResult<Option<StockChangeRecord>> {
        self.plan.check(FaultPoint::StoreGet, "dynamodb")?;
        self.inner.stock_change(change).await
    }
    async fn stock_change_shelved(&self, change: &StockChange) -> PortResult<bool> {
        self.plan.check(FaultPoint::StorePut, "dynamodb")?;
        self.inner.stock_change_shelved(change).await
    }
    async fn stock_changes_due(&self, product: &ProductId) -> PortResult<Vec<StockChange>> {
        self.plan.check(FaultPoint::StoreGet, "dynamodb")?;
        self.inner.stock_changes_due(product).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_spec_and_refuses_typos() {
        let plan =
            FaultPlan::parse("store.put:0.05,queue.send:0.02,consumer.crash_after_write:0.01")
                .unwrap();
        assert_eq!(plan.rates[index(FaultPoint::StorePut)], 0.05);
        assert_eq!(plan.rates[index(FaultPoint::RedisCall)], 0.0);
        for bad in [
            "store.pt:0.1",
            "store.put",
            "store.put:2",
            "queue.send:x",
            "place.fail_product:",
        ] {
            assert!(FaultPlan::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rates_are_roughly_honoured_and_counted() {
        let plan = FaultPlan::parse("store.put:0.25").unwrap();
        let hits = (0..10_000)
            .filter(|_| plan.hit(FaultPoint::StorePut))
            .count();
        assert!((2_000..3_000).contains(&hits), "{hits}");
        assert_eq!(plan.injected(), hits as u64);
        assert!(!(0..1000).any(|_| plan.hit(FaultPoint::QueueSend)));
        assert!(!(0..1000).any(|_| FaultPlan::default().hit(FaultPoint::StorePut)));
    }
}
