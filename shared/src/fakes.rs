//! Test support for handler unit tests. DynamoDB is the real adapter on the
//! embedded DynamoDB ([`store`]): no second copy of its writes. SQS and the
//! Redis gate are in-memory fakes that re-implement no Redis rule: the fake
//! gate answers what a test scripts. A test whose outcome is a rule of the
//! Lua scripts (admission, stock changes, the resync) runs the real gate on
//! a simulated Redis instead ([`simulated_gate`]).

use std::collections::{HashMap, VecDeque};
use std::future::Future;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};

use crate::aws::DynamoStore;
use crate::domain::{
    Admission, AuditEntry, KillSwitch, Ledger, OrderMessage, OrderStatus, Product, ProductId,
    ProductStats, Purchase, RequestId, RequestView, Reservation, StockChange, UserId, from_unix_ms,
};
use crate::embedded::{Embedded, Faults};
use crate::error::InfraError;
use crate::ports::{
    AdmissionGate, Clock, ControlGate, OrderQueue, OrderStore, PendingPage, PendingRequest,
    PortResult, RoomGate, SaleGate, SendMark, Settled, ShelfChange, ShelfGate, ShelfStep, Warm,
};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the gate or the store shows for `msg` in `status`.
pub fn view(msg: &OrderMessage, status: OrderStatus) -> RequestView {
    RequestView {
        request_id: msg.request_id.clone(),
        product_id: msg.product_id.clone(),
        user_id: msg.user_id.clone(),
        quantity: msg.quantity,
        status,
        updated_at: from_unix_ms(msg.admitted_at),
        reservation: None,
    }
}

/// A clock the test moves.
#[derive(Default)]
pub struct ManualClock(pub AtomicI64);

impl ManualClock {
    pub fn at(ms: i64) -> Self {
        Self(AtomicI64::new(ms))
    }
    pub fn set(&self, ms: i64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Terms of a one-unit order at 100 EUR cents, due at `pay_by_ms`.
pub fn terms(pay_by_ms: i64) -> Reservation {
    Reservation {
        pay_by_ms,
        amount: 100,
        currency: crate::domain::Currency::parse("EUR").expect("valid currency"),
        rebuy_after_release: false,
        ledger_shards: 1,
    }
}

/// Fails the next `n` calls with a transient error when `n > 0`.
#[derive(Default)]
pub struct Failures(AtomicUsize);

impl Failures {
    pub fn fail_next(&self, n: usize) {
        self.0.store(n, Ordering::SeqCst);
    }
    /// Also yields, so concurrent handlers interleave at every port call
    /// the way they would on real I/O.
    async fn check(&self, service: &'static str) -> PortResult<()> {
        tokio::task::yield_now().await;
        let hit = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if hit {
            Err(InfraError::transient(service, "injected by the test"))
        } else {
            Ok(())
        }
    }
}

/// A stock change's state on the fake shelf and a taken one's audit entry.

#[derive(Default)]
pub struct FakeGate {
    /// The controls applied, in order.
    pub controlled: Mutex<Vec<Product>>,
    pub kill_switch: Mutex<KillSwitch>,
    /// Each sale's copy of the deny list.
    pub denials: Mutex<HashMap<ProductId, HashMap<UserId, i64>>>,
    /// The resyncs asked for: product, ledger read, fence seen.
    pub resyncs: Mutex<Vec<(ProductId, Ledger, i64)>>,
    pub admissions: Mutex<VecDeque<Admission>>,
    pub purchases: Mutex<Vec<Purchase>>,
    pub requests: Mutex<HashMap<RequestId, RequestView>>,
    pub settled: Mutex<Vec<(RequestId, OrderStatus)>>,
    pub restocked: Mutex<Vec<RequestId>>,
    /// Releases put back on the shelf (once per request id).
    pub released: Mutex<Vec<(RequestId, OrderStatus)>>,
    pub warmed: Mutex<Vec<(Product, bool)>>,
    pub started: AtomicBool,
    pub stats: Mutex<Option<ProductStats>>,
    /// Requests in the outbox index, as the sweeper sees them.
    pub pending: Mutex<Vec<OrderMessage>>,
    /// When each request's message last reached the queue (`mark_sent`).
    pub sent_at: Mutex<HashMap<RequestId, i64>>,
    pub retired: Mutex<Vec<ProductId>>,
    /// Waiting-room admissions redeemed: product, nonce, account. Each is
    /// answered as the caller's (the real rule is redeem.lua's, which
    /// tests run on the simulated Redis).
    pub redeemed: Mutex<Vec<(ProductId, String, String)>>,
    pub now_ms: AtomicI64,
    pub failures: Failures,
}

impl FakeGate {
    pub fn answer(&self, a: Admission) {
        lock(&self.admissions).push_back(a);
    }
    pub fn put_request(&self, v: RequestView) {
        lock(&self.requests).insert(v.request_id.clone(), v);
    }
    pub fn settled(&self) -> Vec<(RequestId, OrderStatus)> {
        lock(&self.settled).clone()
    }
    pub fn restocked(&self) -> Vec<RequestId> {
        lock(&self.restocked).clone()
    }
}

impl RoomGate for FakeGate {
    async fn redeem(
        &self,
        product: &ProductId,
        nonce: &str,
        user: &str,
        _ttl_ms: i64,
    ) -> PortResult<String> {
        self.failures.check("redis").await?;
        lock(&self.redeemed).push((product.clone(), nonce.to_owned(), user.to_owned()));
        Ok(user.to_owned())
    }
    async fn entries(&self, product: &ProductId) -> PortResult<u64> {
        self.failures.check("redis").await?;
        Ok(lock(&self.redeemed)
            .iter()
            .filter(|r| r.0 == *product)
            .count() as u64)
    }
    async fn seen(&self, _: &ProductId, _: &str, _: i64, _: i64) -> PortResult<bool> {
        self.failures.check("redis").await?;
        Ok(true)
    }
    async fn places(&self, _: &ProductId, _: i64, _: i64) -> PortResult<Vec<u64>> {
        self.failures.check("redis").await?;
        Ok(Vec::new())
    }
}

impl AdmissionGate for FakeGate {
    async fn admit(&self, p: &Purchase) -> PortResult<Admission> {
        self.failures.check("redis").await?;
        lock(&self.purchases).push(p.clone());
        Ok(lock(&self.admissions)
            .pop_front()
            .unwrap_or(Admission::Admitted {
                admitted_at_ms: 1,
                sale_ends_at_ms: 3_600_000,
            }))
    }
    async fn request(&self, id: &RequestId, _user: &str) -> PortResult<Option<RequestView>> {
        self.failures.check("redis").await?;
        Ok(lock(&self.requests).get(id).cloned())
    }
    async fn mark_sent(&self, id: &RequestId, _user: &str, mark: SendMark) -> PortResult<()> {
        self.failures.check("redis").await?;
        let now = self.now_ms.load(Ordering::SeqCst);
        match mark {
            SendMark::Sent | SendMark::Claimed => {
                lock(&self.sent_at).insert(id.clone(), now);
            }
            SendMark::Unclaimed => {
                lock(&self.sent_at).remove(id);
            }
        }
        Ok(())
    }
    async fn settle(&self, msg: &OrderMessage, status: Settled) -> PortResult<bool> {
        self.failures.check("redis").await?;
        let status = status.status();
        lock(&self.settled).push((msg.request_id.clone(), status));
        let mut reqs = lock(&self.requests);
        let cur = reqs.get(&msg.request_id).map(|v| v.status);
        if cur.is_some_and(OrderStatus::is_terminal) {
            return Ok(false);
        }
        reqs.insert(msg.request_id.clone(), view(msg, status));
        Ok(true)
    }
    async fn restock(&self, msg: &OrderMessage) -> PortResult<bool> {
        self.failures.check("redis").await?;
        let mut done = lock(&self.restocked);
        if done.contains(&msg.request_id) {
            return Ok(false);
        }
        done.push(msg.request_id.clone());
        lock(&self.requests).insert(msg.request_id.clone(), view(msg, OrderStatus::Compensated));
        Ok(true)
    }
    async fn pending_page(
        &self,
        product: &ProductId,
        cutoff_ms: i64,
        offset: usize,
        limit: usize,
    ) -> PortResult<PendingPage> {
        self.failures.check("redis").await?;
        let mut due: Vec<OrderMessage> = lock(&self.pending)
            .iter()
            .filter(|m| m.product_id == *product && m.admitted_at <= cutoff_ms)
            .cloned()
            .collect();
        due.sort_by_key(|m| m.admitted_at);
        let sent_at = lock(&self.sent_at);
        let requests: Vec<PendingRequest> = due
            .into_iter()
            .skip(offset)
            .take(limit)
            .map(|msg| PendingRequest {
                sent_at_ms: sent_at.get(&msg.request_id).copied(),
                msg,
            })
            .collect();
        Ok(PendingPage {
            scanned: requests.len(),
            requests,
        })
    }
}

impl ShelfGate for FakeGate {
    async fn release(&self, order: &RequestView, to: OrderStatus) -> PortResult<bool> {
        self.failures.check("redis").await?;
        let mut done = lock(&self.released);
        if done.iter().any(|(id, _)| *id == order.request_id) {
            return Ok(false);
        }
        done.push((order.request_id.clone(), to));
        let mut shelved = order.clone();
        shelved.status = to;
        lock(&self.requests).insert(order.request_id.clone(), shelved);
        if let Some(stats) = lock(&self.stats).as_mut() {
            stats.stock_left += i64::from(order.quantity.get());
            stats.returned_units += i64::from(order.quantity.get());
        }
        Ok(true)
    }
    /// The fake holds no shelf: a stock change finds the sale cold here.
    /// Tests whose outcome is a shelf rule (stock changes, the resync) run
    /// the real scripts on [`simulated_gate`].
    async fn change_shelf(
        &self,
        _: &StockChange,
        _: ShelfStep,
        _: Option<&AuditEntry>,
    ) -> PortResult<ShelfChange> {
        self.failures.check("redis").await?;
        Ok(ShelfChange::Cold)
    }
    async fn withdrawals_taken(&self, _: &ProductId) -> PortResult<Vec<(StockChange, AuditEntry)>> {
        self.failures.check("redis").await?;
        Ok(Vec::new())
    }
    /// Records the call; the fake corrects nothing (see [`Self::change_shelf`]).
    async fn resync(
        &self,
        product: &ProductId,
        ledger: &Ledger,
        fence_seen: i64,
    ) -> PortResult<Option<i64>> {
        self.failures.check("redis").await?;
        lock(&self.resyncs).push((product.clone(), ledger.clone(), fence_seen));
        Ok(Some(0))
    }
    /// One bucket: nothing is ever lent.
    async fn finish_transfers(&self, _: &ProductId, _: i64) -> PortResult<usize> {
        self.failures.check("redis").await?;
        Ok(0)
    }
    async fn restore_buckets(&self, _: &ProductId) -> PortResult<Vec<u16>> {
        self.failures.check("redis").await?;
        Ok(Vec::new())
    }
}

impl ControlGate for FakeGate {
    async fn apply_controls(&self, product: &Product) -> PortResult<bool> {
        self.failures.check("redis").await?;
        lock(&self.controlled).push(product.clone());
        Ok(true)
    }
    async fn apply_kill_switch(&self, switch: KillSwitch) -> PortResult<()> {
        self.failures.check("redis").await?;
        let mut held = lock(&self.kill_switch);
        if held.seq <= switch.seq {
            *held = switch;
        }
        Ok(())
    }
    async fn kill_switch(&self) -> PortResult<KillSwitch> {
        self.failures.check("redis").await?;
        Ok(*lock(&self.kill_switch))
    }
    async fn set_denials(
        &self,
        product: &ProductId,
        add: &[(UserId, i64)],
        remove: &[UserId],
    ) -> PortResult<()> {
        self.failures.check("redis").await?;
        let mut all = lock(&self.denials);
        let sale = all.entry(product.clone()).or_default();
        sale.extend(add.iter().cloned());
        for user in remove {
            sale.remove(user);
        }
        Ok(())
    }
    async fn denials(&self, product: &ProductId) -> PortResult<Vec<(UserId, i64)>> {
        self.failures.check("redis").await?;
        Ok(lock(&self.denials)
            .get(product)
            .map(|sale| sale.iter().map(|(u, t)| (u.clone(), *t)).collect())
            .unwrap_or_default())
    }
}

impl SaleGate for FakeGate {
    async fn warm(
        &self,
        product: &Product,
        force: bool,
        ledger: i64,
        _fence_seen: i64,
    ) -> PortResult<Warm> {
        self.failures.check("redis").await?;
        if self.started.load(Ordering::SeqCst) && !force {
            return Ok(Warm::AlreadyStarted { stock_left: 0 });
        }
        lock(&self.warmed).push((product.clone(), force));
        Ok(Warm::Warmed { stock_left: ledger })
    }
    async fn stats(&self, product: &ProductId) -> PortResult<Option<ProductStats>> {
        self.failures.check("redis").await?;
        let pending = lock(&self.pending)
            .iter()
            .filter(|m| m.product_id == *product)
            .count() as i64;
        Ok(lock(&self.stats)
            .clone()
            .map(|s| ProductStats { pending, ..s }))
    }
    async fn products(&self) -> PortResult<Vec<ProductId>> {
        self.failures.check("redis").await?;
        let mut ids: Vec<ProductId> = lock(&self.pending)
            .iter()
            .map(|m| m.product_id.clone())
            .chain(lock(&self.warmed).iter().map(|(p, _)| p.product_id.clone()))
            .collect();
        ids.sort();
        ids.dedup();
        let retired = lock(&self.retired);
        ids.retain(|p| !retired.contains(p));
        Ok(ids)
    }
    async fn retire(&self, product: &ProductId) -> PortResult<()> {
        self.failures.check("redis").await?;
        lock(&self.retired).push(product.clone());
        Ok(())
    }
    async fn now_ms(&self) -> PortResult<i64> {
        self.failures.check("redis").await?;
        Ok(self.now_ms.load(Ordering::SeqCst))
    }
}

#[derive(Default)]
pub struct FakeQueue {
    pub sent: Mutex<Vec<(OrderMessage, String)>>,
    /// SendMessageBatch calls that went through.
    pub batches: AtomicUsize,
    /// Entries the next batch refuses (as SQS's `Failed` list).
    pub refuse_entries: Mutex<Vec<RequestId>>,
    pub failures: Failures,
}

impl FakeQueue {
    pub fn sent(&self) -> Vec<(OrderMessage, String)> {
        lock(&self.sent).clone()
    }
}

impl OrderQueue for FakeQueue {
    async fn send(&self, msg: &OrderMessage, traceparent: &str) -> PortResult<()> {
        self.failures.check("sqs").await?;
        lock(&self.sent).push((msg.clone(), traceparent.to_owned()));
        Ok(())
    }
    async fn send_batch(
        &self,
        msgs: &[OrderMessage],
        traceparents: Option<&[String]>,
    ) -> PortResult<Vec<RequestId>> {
        self.failures.check("sqs").await?;
        assert!(msgs.len() <= 10, "SQS batches hold at most 10 messages");
        self.batches.fetch_add(1, Ordering::SeqCst);
        let refused = std::mem::take(&mut *lock(&self.refuse_entries));
        let mut sent = lock(&self.sent);
        let mut failed = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            if refused.contains(&m.request_id) {
                failed.push(m.request_id.clone());
                continue;
            }
            let tp = traceparents.and_then(|t| t.get(i)).cloned();
            sent.push((m.clone(), tp.unwrap_or_default()));
        }
        Ok(failed)
    }
}

/// The real DynamoDB adapter on a fresh embedded DynamoDB (no hand-written
/// copy of its writes), and the faults a test orders there. The SDK's own
/// retries are off, so one ordered fault fails one port call's attempt, as
/// a test expects from "the next call fails".
pub async fn store() -> (DynamoStore, Faults) {
    let embedded = Embedded::new().expect("an embedded DynamoDB");
    let sdk = embedded
        .sdk()
        .to_builder()
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .build();
    crate::aws::create_table(&sdk, "flashsale")
        .await
        .expect("the embedded table");
    (DynamoStore::new(&sdk, "flashsale"), embedded.faults.clone())
}

/// [`store`] with a product (see [`product`]) whose ledger holds `units`.
pub async fn stocked(product: &str, units: u32) -> (DynamoStore, Faults) {
    let (store, faults) = store().await;
    add_product(&store, product, units).await;
    (store, faults)
}

/// Creates a product (see [`product`]) whose ledger holds `units`.
pub async fn add_product(store: &impl OrderStore, id: &str, units: u32) {
    let mut p = product(id);
    p.stock = units;
    store
        .create_product(&p)
        .await
        .expect("the embedded store takes the product");
}

/// A string or number attribute of a stored order's item, as DynamoDB holds it (the
/// fate note's `reason`, which no port reads back).
pub async fn order_attribute(store: &DynamoStore, id: &RequestId, name: &str) -> Option<String> {
    let item = store
        .client()
        .get_item()
        .table_name(store.table())
        .key(
            crate::aws::table::PK,
            aws_sdk_dynamodb::types::AttributeValue::S(crate::aws::table::order(id.as_str())),
        )
        .consistent_read(true)
        .send()
        .await
        .expect("the embedded store answers")
        .item?;
    let v = item.get(name)?;
    v.as_s().or_else(|_| v.as_n()).ok().cloned()
}

/// What a test reads back through the store's own port.
pub trait Probe {
    /// The stored order's status.
    fn status_of(&self, id: &RequestId) -> impl Future<Output = Option<OrderStatus>>;
    /// The product's ledger, all shards summed (empty without a product).
    fn ledger_of(&self, id: &ProductId) -> impl Future<Output = Ledger>;
    /// The ledger's remaining units, None without a product.
    fn remaining(&self, id: &ProductId) -> impl Future<Output = Option<i64>>;
}

impl<S: OrderStore> Probe for S {
    async fn status_of(&self, id: &RequestId) -> Option<OrderStatus> {
        self.order(id)
            .await
            .expect("the store answers")
            .map(|o| o.status)
    }
    async fn ledger_of(&self, id: &ProductId) -> Ledger {
        self.ledger(id)
            .await
            .expect("the store answers")
            .unwrap_or_default()
    }
    async fn remaining(&self, id: &ProductId) -> Option<i64> {
        self.ledger(id)
            .await
            .expect("the store answers")
            .map(|l| l.remaining)
    }
}

/// A version-1 order message of one unit, for a fresh request id.
pub fn order_message(product: &str, user: &str, admitted_at: i64) -> OrderMessage {
    let p = ProductId::parse(product).expect("valid product id");
    OrderMessage {
        v: OrderMessage::VERSION,
        request_id: RequestId::new(&p),
        product_id: p,
        user_id: crate::domain::UserId::parse(user).expect("valid user id"),
        quantity: crate::domain::Quantity::new(1).expect("valid quantity"),
        admitted_at,
        sale_ends_at: admitted_at + 3_600_000,
    }
}

/// A product of 10 units, limit 1, on sale for the hour around now.
pub fn product(id: &str) -> Product {
    let now = time::OffsetDateTime::now_utc();
    Product {
        product_id: ProductId::parse(id).expect("valid product id"),
        name: "test".into(),
        stock: 10,
        per_buyer_limit: 1,
        starts_at: now - time::Duration::hours(1),
        ends_at: now + time::Duration::hours(1),
        price: 100,
        currency: crate::domain::Currency::parse("EUR").expect("valid currency"),
        payment_window_secs: crate::domain::DEFAULT_PAYMENT_WINDOW_SECS,
        rebuy_after_release: false,
        rate_limits: Default::default(),
        paused: false,
        control_seq: 0,
        ledger_shards: 1,
        stock_buckets: 1,
        waiting_room: None,
    }
}

/// An SQS record as Lambda delivers it, first delivery.
pub fn sqs_record(id: &str, body: &str) -> SqsMessage {
    let mut m = SqsMessage::default();
    m.message_id = Some(id.into());
    m.body = Some(body.into());
    m.attributes
        .insert("ApproximateReceiveCount".into(), "1".into());
    m
}

pub fn sqs_event(records: Vec<SqsMessage>) -> SqsEvent {
    let mut e = SqsEvent::default();
    e.records = records;
    e
}

/// The message ids a batch response reports failed, sorted.
pub fn failed_ids(r: &SqsBatchResponse) -> Vec<&str> {
    let mut ids: Vec<&str> = r
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    ids.sort();
    ids
}

/// The real gate over a simulated Redis running the production Lua, its
/// clock now: for handler tests whose outcome is a Redis rule (stock
/// changes, the resync), so that no rule is written twice in this module.
#[cfg(any(test, feature = "sim"))]
pub fn simulated_gate() -> (crate::redis::sim::SimRedis, crate::redis::RedisGate) {
    let redis =
        crate::redis::sim::SimRedis::new(time::OffsetDateTime::now_utc().unix_timestamp() * 1000);
    let gate = crate::redis::RedisGate::simulated(redis.clone(), "fs");
    (redis, gate)
}

/// Warms `product` on `gate` from a ledger read of `ledger_units` (a test
/// may pass more than DynamoDB holds: a shelf a failover left too high).
pub async fn warm(gate: &impl SaleGate, product: &Product, ledger_units: i64) {
    let warmed = gate
        .warm(product, false, ledger_units, 0)
        .await
        .expect("the gate warms the sale");
    assert!(matches!(warmed, Warm::Warmed { .. }), "{warmed:?}");
}

/// `n` buyers admitted to one unit each (requests pending, not yet placed).
pub async fn admit_buyers(
    gate: &impl AdmissionGate,
    product: &ProductId,
    n: usize,
) -> Vec<RequestId> {
    let mut admitted = Vec::with_capacity(n);
    for i in 0..n {
        let purchase = Purchase {
            request_id: RequestId::new(product),
            product_id: product.clone(),
            user_id: UserId::parse(format!("buyer{i}")).expect("valid user id"),
            quantity: crate::domain::Quantity::new(1).expect("valid quantity"),
            idempotency_key: None,
            client_ip: None,
        };
        let answer = gate.admit(&purchase).await.expect("the gate answers");
        assert!(matches!(answer, Admission::Admitted { .. }), "{answer:?}");
        admitted.push(purchase.request_id);
    }
    admitted
}
