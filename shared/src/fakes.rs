//! In-memory fakes of the ports for fast handler unit tests. They do not
//! re-implement the admission rule (that lives in `redis/admit.lua` and is
//! tested on a real Redis): the fake gate answers what a test scripts.

use std::collections::{HashMap, VecDeque};

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};

use crate::domain::{
    Admission, AuditEntry, Control, Controlled, Denial, KillSwitch, Ledger, OrderMessage,
    OrderStatus, Product, ProductId, ProductStats, Purchase, RequestId, RequestView, Reservation,
    StockChange, StockChangeRecord, UserId, from_unix_ms,
};
use crate::error::InfraError;
use crate::ledger;
use crate::payment::{EventId, PaymentEvent, PaymentOutcome, PaymentRecord};
use crate::ports::{
    Clock, Fate, FateNote, OrderQueue, OrderStore, PaymentWrite, PendingPage, PendingRequest,
    Placement, PortResult, SendMark, Settled, ShelfChange, ShelfStep, StockGate, Transition, Warm,
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
type ShelfRecord = (String, Option<AuditEntry>);

#[derive(Default)]
pub struct FakeGate {
    /// The controls applied, in order.
    pub controlled: Mutex<Vec<Product>>,
    pub kill_switch: Mutex<KillSwitch>,
    /// Each sale's copy of the deny list.
    pub denials: Mutex<HashMap<ProductId, HashMap<UserId, i64>>>,
    /// Stock changes' states (`taken:<n>`, ...) and a taken one's audit entry,
    /// by (product, key); the shelf is `stats` (absent = not warmed).
    pub stock_changes: Mutex<HashMap<(ProductId, String), ShelfRecord>>,
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

impl StockGate for FakeGate {
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
    async fn request(&self, id: &RequestId) -> PortResult<Option<RequestView>> {
        self.failures.check("redis").await?;
        Ok(lock(&self.requests).get(id).cloned())
    }
    async fn mark_sent(&self, id: &RequestId, mark: SendMark) -> PortResult<()> {
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
    async fn change_shelf(
        &self,
        change: &StockChange,
        step: ShelfStep,
        entry: Option<&AuditEntry>,
    ) -> PortResult<ShelfChange> {
        self.failures.check("redis").await?;
        let mut stats = lock(&self.stats);
        let Some(stats) = stats.as_mut() else {
            return Ok(ShelfChange::Cold);
        };
        let mut changes = lock(&self.stock_changes);
        let id = (change.product_id.clone(), change.key.as_str().to_owned());
        let n = change.units();
        let state = changes.get(&id).map(|(s, _)| s.clone());
        let taken = format!("taken:{n}");
        let to = match step {
            ShelfStep::Take | ShelfStep::Claim if state.is_some() => {
                return Ok(ShelfChange::Seen(state.unwrap_or_default()));
            }
            ShelfStep::Add if state.is_some() && state != Some(format!("adding:{n}")) => {
                return Ok(ShelfChange::Seen(state.unwrap_or_default()));
            }
            ShelfStep::Claim => "adding",
            ShelfStep::Settle | ShelfStep::Undo if state.as_deref() != Some(taken.as_str()) => {
                return Ok(ShelfChange::Seen(state.unwrap_or_default()));
            }
            ShelfStep::Take if stats.stock_left < n => {
                return Ok(ShelfChange::Short {
                    on_shelf: stats.stock_left,
                });
            }
            ShelfStep::Take => {
                stats.stock_left -= n;
                stats.stock_total -= n;
                stats.withdrawing += n;
                "taken"
            }
            ShelfStep::Settle => {
                stats.withdrawing -= n;
                stats.withdrawn_units += n;
                "withdrawn"
            }
            ShelfStep::Undo => {
                stats.withdrawing -= n;
                stats.stock_left += n;
                stats.stock_total += n;
                "refused"
            }
            ShelfStep::Add => {
                stats.stock_left += n;
                stats.stock_total += n;
                stats.returned_units += n;
                "added"
            }
        };
        let keep = if to == "taken" { entry.cloned() } else { None };
        changes.insert(id, (format!("{to}:{n}"), keep));
        Ok(ShelfChange::Done)
    }
    async fn withdrawals_taken(
        &self,
        product: &ProductId,
    ) -> PortResult<Vec<(StockChange, AuditEntry)>> {
        self.failures.check("redis").await?;
        Ok(lock(&self.stock_changes)
            .iter()
            .filter(|((p, _), (state, _))| p == product && state.starts_with("taken:"))
            .filter_map(|((p, key), (state, entry))| {
                let n: i64 = state.strip_prefix("taken:")?.parse().ok()?;
                let key = crate::domain::IdempotencyKey::parse(key).ok()?;
                Some((StockChange::new(p.clone(), key, -n).ok()?, entry.clone()?))
            })
            .collect())
    }
    async fn denials(&self, product: &ProductId) -> PortResult<Vec<(UserId, i64)>> {
        self.failures.check("redis").await?;
        Ok(lock(&self.denials)
            .get(product)
            .map(|sale| sale.iter().map(|(u, t)| (u.clone(), *t)).collect())
            .unwrap_or_default())
    }
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
    async fn now_ms(&self) -> PortResult<i64> {
        self.failures.check("redis").await?;
        Ok(self.now_ms.load(Ordering::SeqCst))
    }
    async fn resync(
        &self,
        product: &ProductId,
        ledger: &Ledger,
        fence_seen: i64,
    ) -> PortResult<Option<i64>> {
        self.failures.check("redis").await?;
        let pending_units: i64 = lock(&self.pending)
            .iter()
            .filter(|m| m.product_id == *product)
            .map(|m| i64::from(m.quantity.get()))
            .sum();
        let mut stats = lock(&self.stats);
        let stats = stats.get_or_insert_with(ProductStats::default);
        if stats.fence() < fence_seen {
            return Ok(None);
        }
        let target = crate::domain::shelf_target(
            ledger.shelf_for(stats.returned_units),
            pending_units + stats.withdrawing,
            stats.fence() - fence_seen,
        );
        let drift = target - stats.stock_left;
        stats.stock_left = target;
        stats.returned_units += ledger.adoptable(stats.returned_units);
        Ok(Some(drift))
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

fn shard_ledgers(units: i64, shards: u16) -> Vec<Ledger> {
    ledger::split(units, shards)
        .into_iter()
        .map(|remaining| Ledger {
            remaining,
            ..Ledger::default()
        })
        .collect()
}

/// The shard an order's payment and release count on, as the DynamoDB
/// store picks it.
fn home_shard<'a>(
    ledgers: &'a mut HashMap<ProductId, Vec<Ledger>>,
    o: &RequestView,
) -> &'a mut Ledger {
    let shards = ledgers.entry(o.product_id.clone()).or_default();
    let i = usize::from(ledger::home_of(o));
    if shards.len() <= i {
        shards.resize(i + 1, Ledger::default());
    }
    &mut shards[i]
}

/// Conditional-write semantics of the DynamoDB store, in memory.
#[derive(Default)]
pub struct FakeStore {
    pub audits: Mutex<Vec<AuditEntry>>,
    pub kill_switch: Mutex<KillSwitch>,
    pub denials: Mutex<HashMap<UserId, Denial>>,
    pub stock_changes: Mutex<HashMap<(ProductId, String), StockChangeRecord>>,
    pub orders: Mutex<HashMap<RequestId, RequestView>>,
    pub guards: Mutex<HashMap<(ProductId, String), RequestId>>,
    pub products: Mutex<HashMap<ProductId, Product>>,
    /// The stock ledgers, each as its shards' counters (absent = no
    /// product).
    pub ledgers: Mutex<HashMap<ProductId, Vec<Ledger>>>,
    pub notes: Mutex<HashMap<RequestId, FateNote>>,
    pub payments: Mutex<HashMap<EventId, PaymentRecord>>,
    /// Released orders whose shelf step is not confirmed, with the time
    /// they were released (due from then on).
    pub shelf_due: Mutex<Vec<(RequestId, i64)>>,
    pub failures: Failures,
}

impl FakeStore {
    pub fn status_of(&self, id: &RequestId) -> Option<OrderStatus> {
        lock(&self.orders).get(id).map(|o| o.status)
    }
    /// A product (see [`product`]) whose ledger holds `units`.
    pub fn with_stock(self, product: &str, units: i64) -> Self {
        self.with_shards(product, units, 1)
    }
    /// The same, its units split over `shards` ledger shards.
    pub fn with_shards(self, product: &str, units: i64, shards: u16) -> Self {
        let id = ProductId::parse(product).expect("valid product id");
        let mut p = self::product(product);
        p.ledger_shards = shards;
        lock(&self.products).insert(id.clone(), p);
        lock(&self.ledgers).insert(id, shard_ledgers(units, shards));
        self
    }
    pub fn remaining(&self, product: &ProductId) -> Option<i64> {
        lock(&self.ledgers)
            .get(product)
            .map(|l| ledger::total(l).remaining)
    }
    pub fn ledger_of(&self, product: &ProductId) -> Ledger {
        lock(&self.ledgers)
            .get(product)
            .map(ledger::total)
            .unwrap_or_default()
    }
    /// Each shard's units.
    pub fn shard_units(&self, product: &ProductId) -> Vec<i64> {
        lock(&self.ledgers)
            .get(product)
            .map(|l| ledger::units(l))
            .unwrap_or_default()
    }
    /// Puts an order straight into the store (tests of what follows).
    pub fn put_order(&self, order: RequestView) {
        lock(&self.orders).insert(order.request_id.clone(), order);
    }
}

impl OrderStore for FakeStore {
    async fn place(&self, msg: &OrderMessage, terms: &Reservation) -> PortResult<Placement> {
        self.failures.check("dynamodb").await?;
        let mut orders = lock(&self.orders);
        let mut guards = lock(&self.guards);
        if let Some(o) = orders.get(&msg.request_id) {
            return Ok(Placement::Exists(o.status));
        }
        // The buyer's other order first, as the adapter decides it.
        let guard = (msg.product_id.clone(), msg.user_id.to_string());
        if guards.contains_key(&guard) {
            return Ok(Placement::BuyerTaken);
        }
        let mut ledgers = lock(&self.ledgers);
        let quantity = i64::from(msg.quantity.get());
        let home = ledger::home(msg.request_id.as_str(), terms.ledger_shards);
        let Some((shards, takes)) = ledgers.get_mut(&msg.product_id).and_then(|shards| {
            let takes = ledger::plan_take(&ledger::units(shards), home, quantity)?;
            Some((shards, takes))
        }) else {
            return Ok(Placement::OutOfStock);
        };
        for (i, take) in takes {
            shards[usize::from(i)].remaining -= take;
        }
        guards.insert(guard, msg.request_id.clone());
        let mut order = view(msg, OrderStatus::Placed);
        order.reservation = Some(terms.clone());
        orders.insert(msg.request_id.clone(), order);
        Ok(Placement::Placed)
    }
    async fn record_fate(
        &self,
        msg: &OrderMessage,
        status: OrderStatus,
        note: &FateNote,
    ) -> PortResult<Fate> {
        self.failures.check("dynamodb").await?;
        let mut orders = lock(&self.orders);
        if let Some(o) = orders.get(&msg.request_id) {
            return Ok(Fate::Exists(o.status));
        }
        orders.insert(msg.request_id.clone(), view(msg, status));
        lock(&self.notes).insert(msg.request_id.clone(), note.clone());
        Ok(Fate::Won)
    }
    async fn order(&self, id: &RequestId) -> PortResult<Option<RequestView>> {
        self.failures.check("dynamodb").await?;
        Ok(lock(&self.orders).get(id).cloned())
    }
    async fn create_product(&self, p: &Product) -> PortResult<bool> {
        self.failures.check("dynamodb").await?;
        let mut products = lock(&self.products);
        if products.contains_key(&p.product_id) {
            return Ok(false);
        }
        products.insert(p.product_id.clone(), p.clone());
        lock(&self.ledgers).insert(
            p.product_id.clone(),
            shard_ledgers(i64::from(p.stock), p.ledger_shards),
        );
        Ok(true)
    }
    async fn product(&self, id: &ProductId) -> PortResult<Option<Product>> {
        self.failures.check("dynamodb").await?;
        Ok(lock(&self.products).get(id).cloned())
    }
    async fn control(
        &self,
        id: &ProductId,
        control: Control,
        entry: &AuditEntry,
    ) -> PortResult<Option<Controlled>> {
        self.failures.check("dynamodb").await?;
        let mut products = lock(&self.products);
        let Some(p) = products.get_mut(id) else {
            return Ok(None);
        };
        let after = p.clone().controlled(control, entry.at);
        let changed = (after.paused, after.ends_at) != (p.paused, p.ends_at);
        if changed {
            *p = after;
            lock(&self.audits).push(entry.clone());
        }
        Ok(Some(Controlled {
            product: p.clone(),
            changed,
        }))
    }
    async fn audit(&self, id: Option<&ProductId>) -> PortResult<Vec<AuditEntry>> {
        self.failures.check("dynamodb").await?;
        Ok(lock(&self.audits)
            .iter()
            .filter(|e| e.product_id.as_ref() == id)
            .cloned()
            .collect())
    }
    async fn switch_admissions(
        &self,
        engaged: bool,
        entry: &AuditEntry,
    ) -> PortResult<(KillSwitch, bool)> {
        self.failures.check("dynamodb").await?;
        let mut switch = lock(&self.kill_switch);
        let changed = switch.engaged != engaged;
        if changed {
            *switch = KillSwitch {
                engaged,
                seq: switch.seq + 1,
            };
            lock(&self.audits).push(entry.clone());
        }
        Ok((*switch, changed))
    }
    async fn kill_switch(&self) -> PortResult<KillSwitch> {
        self.failures.check("dynamodb").await?;
        Ok(*lock(&self.kill_switch))
    }
    async fn set_denial(
        &self,
        user: &UserId,
        denial: Option<&Denial>,
        entry: &AuditEntry,
    ) -> PortResult<bool> {
        self.failures.check("dynamodb").await?;
        let mut all = lock(&self.denials);
        let changed = match denial {
            Some(d) => {
                all.insert(user.clone(), d.clone());
                true
            }
            None => all.remove(user).is_some(),
        };
        if changed {
            lock(&self.audits).push(entry.clone());
        }
        Ok(changed)
    }
    async fn denials(&self) -> PortResult<Vec<Denial>> {
        self.failures.check("dynamodb").await?;
        let mut all: Vec<Denial> = lock(&self.denials).values().cloned().collect();
        all.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        Ok(all)
    }
    async fn denial(&self, user: &UserId) -> PortResult<Option<Denial>> {
        self.failures.check("dynamodb").await?;
        Ok(lock(&self.denials).get(user).cloned())
    }
    async fn change_stock(
        &self,
        change: &StockChange,
        entry: &AuditEntry,
    ) -> PortResult<Option<(StockChangeRecord, bool)>> {
        self.failures.check("dynamodb").await?;
        let id = (change.product_id.clone(), change.key.as_str().to_owned());
        if let Some(rec) = lock(&self.stock_changes).get(&id) {
            return Ok(Some((*rec, false)));
        }
        let mut products = lock(&self.products);
        let mut ledgers = lock(&self.ledgers);
        let (Some(product), Some(shards)) = (
            products.get_mut(&change.product_id),
            ledgers.get_mut(&change.product_id),
        ) else {
            return Ok(None);
        };
        let n = change.units();
        let adding = change.delta > 0;
        let takes = if adding {
            Some(Vec::new())
        } else {
            ledger::plan_take(&ledger::units(shards), 0, n)
        };
        let applied = takes.is_some();
        if let Some(takes) = takes {
            product.stock = u32::try_from(i64::from(product.stock) + change.delta)
                .map_err(|_| InfraError::permanent("dynamodb", "stock out of range"))?;
            for (i, take) in takes {
                shards[usize::from(i)].remaining -= take;
            }
            let ledger = &mut shards[0];
            if adding {
                ledger.remaining += n;
                ledger.releasing += n;
                ledger.added += n;
            } else {
                ledger.withdrawn += n;
            }
            lock(&self.audits).push(entry.clone());
        }
        let rec = StockChangeRecord {
            delta: change.delta,
            applied,
            shelf_due: applied && adding,
        };
        lock(&self.stock_changes).insert(id, rec);
        Ok(Some((rec, true)))
    }
    async fn stock_change(&self, change: &StockChange) -> PortResult<Option<StockChangeRecord>> {
        self.failures.check("dynamodb").await?;
        Ok(lock(&self.stock_changes)
            .get(&(change.product_id.clone(), change.key.as_str().to_owned()))
            .copied())
    }
    async fn stock_change_shelved(&self, change: &StockChange) -> PortResult<bool> {
        self.failures.check("dynamodb").await?;
        let mut changes = lock(&self.stock_changes);
        let Some(rec) = changes
            .get_mut(&(change.product_id.clone(), change.key.as_str().to_owned()))
            .filter(|r| r.shelf_due)
        else {
            return Ok(false);
        };
        rec.shelf_due = false;
        if let Some(shards) = lock(&self.ledgers).get_mut(&change.product_id) {
            shards[0].releasing -= change.units();
        }
        Ok(true)
    }
    async fn stock_changes_due(&self, product: &ProductId) -> PortResult<Vec<StockChange>> {
        self.failures.check("dynamodb").await?;
        Ok(lock(&self.stock_changes)
            .iter()
            .filter(|((p, _), r)| p == product && r.shelf_due)
            .filter_map(|((p, key), r)| {
                let key = crate::domain::IdempotencyKey::parse(key).ok()?;
                StockChange::new(p.clone(), key, r.delta).ok()
            })
            .collect())
    }
    async fn orders_of(&self, id: &ProductId) -> PortResult<Vec<RequestView>> {
        self.failures.check("dynamodb").await?;
        Ok(lock(&self.orders)
            .values()
            .filter(|o| o.product_id == *id)
            .cloned()
            .collect())
    }
    async fn ledger(&self, id: &ProductId) -> PortResult<Option<Ledger>> {
        self.failures.check("dynamodb").await?;
        Ok(lock(&self.ledgers).get(id).map(ledger::total))
    }
    async fn pay(
        &self,
        order: &RequestView,
        event: &PaymentEvent,
        now_ms: i64,
    ) -> PortResult<PaymentWrite> {
        self.failures.check("dynamodb").await?;
        let mut orders = lock(&self.orders);
        let mut payments = lock(&self.payments);
        let Some(o) = orders.get_mut(&order.request_id) else {
            return Err(InfraError::transient("dynamodb", "no such order"));
        };
        let payable = o.status == OrderStatus::Placed
            && o.reservation
                .as_ref()
                .is_some_and(|r| now_ms <= r.pay_by_ms);
        if payments.contains_key(&event.event_id) {
            return Ok(PaymentWrite::EventExists);
        }
        if !payable {
            return Ok(PaymentWrite::Refused(o.status));
        }
        o.status = OrderStatus::Paid;
        o.updated_at = from_unix_ms(now_ms);
        payments.insert(
            event.event_id.clone(),
            PaymentRecord {
                event: event.clone(),
                outcome: PaymentOutcome::Paid,
                order_status: OrderStatus::Placed,
            },
        );
        let mut ledgers = lock(&self.ledgers);
        let l = home_shard(&mut ledgers, o);
        l.paid += 1;
        l.paid_units += i64::from(o.quantity.get());
        Ok(PaymentWrite::Paid)
    }
    async fn record_refund(&self, record: &PaymentRecord) -> PortResult<bool> {
        self.failures.check("dynamodb").await?;
        let mut payments = lock(&self.payments);
        if payments.contains_key(&record.event.event_id) {
            return Ok(false);
        }
        payments.insert(record.event.event_id.clone(), record.clone());
        let mut ledgers = lock(&self.ledgers);
        let shards = ledgers
            .entry(record.event.request_id.product())
            .or_default();
        if shards.is_empty() {
            shards.push(Ledger::default());
        }
        shards[0].refund_due += 1;
        Ok(true)
    }
    async fn payment(&self, id: &EventId) -> PortResult<Option<PaymentRecord>> {
        self.failures.check("dynamodb").await?;
        Ok(lock(&self.payments).get(id).cloned())
    }
    async fn release(
        &self,
        order: &RequestView,
        to: OrderStatus,
        now_ms: i64,
    ) -> PortResult<Transition> {
        self.failures.check("dynamodb").await?;
        assert!(to.is_release(), "release to {to:?}");
        let mut orders = lock(&self.orders);
        let Some(o) = orders.get_mut(&order.request_id) else {
            return Err(InfraError::transient("dynamodb", "no such order"));
        };
        let due = o.reservation.as_ref().is_some_and(|r| now_ms > r.pay_by_ms);
        if o.status != OrderStatus::Placed || (to == OrderStatus::Expired && !due) {
            return Ok(Transition::Refused(o.status));
        }
        o.status = to;
        o.updated_at = from_unix_ms(now_ms);
        let q = i64::from(o.quantity.get());
        let mut ledgers = lock(&self.ledgers);
        let l = home_shard(&mut ledgers, o);
        l.remaining += q;
        l.releasing += q;
        l.released += q;
        if to == OrderStatus::Cancelled {
            l.cancelled += 1;
        } else {
            l.expired += 1;
        }
        if o.reservation
            .as_ref()
            .is_some_and(|r| r.rebuy_after_release)
        {
            lock(&self.guards).remove(&(o.product_id.clone(), o.user_id.to_string()));
        }
        lock(&self.shelf_due).push((o.request_id.clone(), now_ms));
        Ok(Transition::Done)
    }
    async fn shelved(&self, order: &RequestView) -> PortResult<bool> {
        self.failures.check("dynamodb").await?;
        let mut due = lock(&self.shelf_due);
        let Some(i) = due.iter().position(|(id, _)| *id == order.request_id) else {
            return Ok(false);
        };
        due.remove(i);
        home_shard(&mut lock(&self.ledgers), order).releasing -= i64::from(order.quantity.get());
        Ok(true)
    }
    async fn shelf_due(&self, id: &RequestId) -> PortResult<bool> {
        self.failures.check("dynamodb").await?;
        Ok(lock(&self.shelf_due).iter().any(|(d, _)| d == id))
    }
    async fn due(&self, now_ms: i64, limit: usize) -> PortResult<Vec<RequestView>> {
        self.failures.check("dynamodb").await?;
        let orders = lock(&self.orders);
        let shelf_due = lock(&self.shelf_due);
        // As the index sorts: placed orders by pay_by, released ones by
        // their release time, both due strictly before now.
        let mut due: Vec<RequestView> = orders
            .values()
            .filter(|o| {
                shelf_due
                    .iter()
                    .any(|(id, at)| *id == o.request_id && *at < now_ms)
                    || (o.status == OrderStatus::Placed
                        && o.reservation.as_ref().is_some_and(|r| r.pay_by_ms < now_ms))
            })
            .cloned()
            .collect();
        due.sort_by_key(|o| o.reservation.as_ref().map_or(0, |r| r.pay_by_ms));
        due.truncate(limit);
        Ok(due)
    }
    async fn live_products(&self, ends_after_ms: i64) -> PortResult<Vec<ProductId>> {
        self.failures.check("dynamodb").await?;
        let mut ids: Vec<ProductId> = lock(&self.products)
            .values()
            .filter(|p| crate::domain::unix_ms(p.ends_at) > ends_after_ms)
            .map(|p| p.product_id.clone())
            .collect();
        ids.sort();
        Ok(ids)
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
