//! The ports: what handlers need from the outside world. Adapters implement
//! them for Redis, SQS and DynamoDB; `fakes` scripts Redis and SQS in
//! memory for the handler tests, which run DynamoDB's adapter on `embedded`.

use std::future::Future;

use crate::domain::{
    Admission, AuditEntry, Control, Controlled, Denial, KillSwitch, Ledger, OrderMessage,
    OrderStatus, Product, ProductId, ProductStats, Purchase, RequestId, RequestView, Reservation,
    StockChange, StockChangeRecord, UserId,
};
use crate::error::InfraError;
use crate::payment::{EventId, PaymentEvent, PaymentRecord};

pub type PortResult<T> = Result<T, InfraError>;

/// A terminal status that returns no stock, as [`AdmissionGate::settle`]
/// records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Placed,
    /// DynamoDB refused the order. `free_buyer` when it holds no order of
    /// the buyer (the ledger was out of stock): they may buy again once
    /// units come back. A buyer holding another order stays taken.
    Rejected {
        free_buyer: bool,
    },
}

impl Settled {
    pub fn status(self) -> OrderStatus {
        match self {
            Self::Placed => OrderStatus::Placed,
            Self::Rejected { .. } => OrderStatus::Rejected,
        }
    }
}

/// Outcome of loading a product into the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Warm {
    Warmed {
        stock_left: i64,
    },
    /// The sale already started and `force` was not given: nothing changed.
    AlreadyStarted {
        stock_left: i64,
    },
}

/// Where a pending request's message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendMark {
    /// It reached the queue: its fate will be decided in DynamoDB.
    Sent,
    /// The sweeper is about to re-send it.
    Claimed,
    /// That re-send failed.
    Unclaimed,
}

impl SendMark {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Claimed => "claimed",
            Self::Unclaimed => "unclaimed",
        }
    }
}

/// A Redis step of a stock change (`stock_change.lua`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShelfStep {
    /// A withdrawal's first step: the units off the shelf, held aside.
    Take,
    /// DynamoDB recorded the withdrawal: the units are gone.
    Settle,
    /// DynamoDB refused it: the units back on the shelf.
    Undo,
    /// An addition's key, before DynamoDB records it: nothing moves, but a
    /// key a withdrawal holds is refused.
    Claim,
    /// An addition DynamoDB recorded: the units on the shelf.
    Add,
}

impl ShelfStep {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Take => "take",
            Self::Settle => "settle",
            Self::Undo => "undo",
            Self::Claim => "claim",
            Self::Add => "add",
        }
    }
}

/// What a shelf step found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShelfChange {
    /// The sale is not warmed here: nothing to change (its warm-up reads
    /// the ledger).
    Cold,
    /// Take: fewer units on the shelf than asked; nothing changed.
    Short { on_shelf: i64 },
    /// This call moved the units.
    Done,
    /// Done before (or, for settle and undo, nothing taken): the change's
    /// state, e.g. `withdrawn:10`.
    Seen(String),
}

/// A request still in a product's outbox index, as the sweeper sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRequest {
    pub msg: OrderMessage,
    /// When its message was last sent or claimed for a re-send (ms, Redis
    /// time); None when neither happened (the function died before its send).
    pub sent_at_ms: Option<i64>,
}

/// One page of the outbox index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PendingPage {
    /// Index entries read, the unit of paging (entries without a usable
    /// state are counted, then dropped from the index).
    pub scanned: usize,
    pub requests: Vec<PendingRequest>,
}

// The ports are cut by capability: a handler names the ones it uses, and a
// feature adds a method to one of them. `StockGate` (Redis) and
// `OrderStore` (DynamoDB) are the whole of each, for the wiring that builds
// one adapter for every capability.

/// The stock gate (Redis), for the purchase path: admission, request
/// state, the outbox's marks, settle and restock.
pub trait AdmissionGate: Send + Sync {
    /// Runs the admission rule atomically.
    fn admit(&self, purchase: &Purchase) -> impl Future<Output = PortResult<Admission>> + Send;

    /// The request `id` of the buyer `user` (whose stock bucket holds it).
    fn request(
        &self,
        id: &RequestId,
        user: &str,
    ) -> impl Future<Output = PortResult<Option<RequestView>>> + Send;

    /// Records where `user`'s request's message stands (`mark_sent.lua`).
    fn mark_sent(
        &self,
        id: &RequestId,
        user: &str,
        mark: SendMark,
    ) -> impl Future<Output = PortResult<()>> + Send;

    /// Records a terminal status that returns no stock: placed, or rejected.
    /// A rejected unit is not put back here; the resync sets the shelf from
    /// the ledger. Idempotent; true when it changed.
    fn settle(
        &self,
        msg: &OrderMessage,
        status: Settled,
    ) -> impl Future<Output = PortResult<bool>> + Send;

    /// Brings Redis in line with a fate DynamoDB already decided: a
    /// compensated request is restocked, a placed or rejected one settled.
    /// Idempotent, like both.
    fn follow(
        &self,
        msg: &OrderMessage,
        fate: OrderStatus,
    ) -> impl Future<Output = PortResult<()>> + Send {
        async move {
            match fate {
                OrderStatus::Compensated => self.restock(msg).await.map(drop),
                // Why it was rejected is not known here: the buyer stays
                // taken (a lost settle of an out-of-stock rejection keeps
                // them out, never lets a holder in twice).
                OrderStatus::Rejected => self
                    .settle(msg, Settled::Rejected { free_buyer: false })
                    .await
                    .map(drop),
                // A released order's shelf step belongs to the release
                // (the expirer finishes it); here it only stops being pending.
                OrderStatus::Placed
                | OrderStatus::Pending
                | OrderStatus::Paid
                | OrderStatus::Refunded
                | OrderStatus::Disputed
                | OrderStatus::Cancelled
                | OrderStatus::Expired => self.settle(msg, Settled::Placed).await.map(drop),
            }
        }
    }

    /// Compensation: returns a COMPENSATED request's units to stock and
    /// releases its buyer, only if Redis still holds it pending (so once per
    /// request id). True when this call restocked.
    fn restock(&self, msg: &OrderMessage) -> impl Future<Output = PortResult<bool>> + Send;

    /// A page of a product's requests pending since before `cutoff_ms`
    /// (Redis server time), oldest first.
    fn pending_page(
        &self,
        product: &ProductId,
        cutoff_ms: i64,
        offset: usize,
        limit: usize,
    ) -> impl Future<Output = PortResult<PendingPage>> + Send;
}

/// The stock gate's shelf: units back from releases, operators' stock
/// changes, and the resync from the ledger.
/// The waiting room's half in Redis (issue 33): admissions redeemed for one
/// buyer account each, and their count.
pub trait RoomGate: Send + Sync {
    /// Redeems the admission `nonce` of `product` for `user`, held `ttl_ms`:
    /// the account holding it (`user` unless another account redeemed it
    /// first).
    fn redeem(
        &self,
        product: &ProductId,
        nonce: &str,
        user: &str,
        ttl_ms: i64,
    ) -> impl Future<Output = PortResult<String>> + Send;

    /// Admissions redeemed for `product` so far.
    fn entries(&self, product: &ProductId) -> impl Future<Output = PortResult<u64>> + Send;

    /// Counts a sampled place (`place_ms`) of `product`'s room once per
    /// `nonce`, remembered `ttl_ms`; true when it was new.
    fn seen(
        &self,
        product: &ProductId,
        nonce: &str,
        place_ms: i64,
        ttl_ms: i64,
    ) -> impl Future<Output = PortResult<bool>> + Send;

    /// Sampled places of `product`'s room in each whole second of arrival
    /// time from `from_ms`'s (in) to `to_ms`'s (out).
    fn places(
        &self,
        product: &ProductId,
        from_ms: i64,
        to_ms: i64,
    ) -> impl Future<Output = PortResult<Vec<u64>>> + Send;
}

pub trait ShelfGate: Send + Sync {
    /// The Redis step of a release (`release.lua`): puts a cancelled or
    /// expired order's units back on the shelf and records its status, once
    /// per request id; frees the buyer when its terms say so. True when this
    /// call put the units back.
    fn release(
        &self,
        order: &RequestView,
        to: OrderStatus,
    ) -> impl Future<Output = PortResult<bool>> + Send;

    /// One step of a stock change on the shelf, once per change key; `Take`
    /// keeps the audit entry, for whoever finishes the change.
    fn change_shelf(
        &self,
        change: &StockChange,
        step: ShelfStep,
        entry: Option<&AuditEntry>,
    ) -> impl Future<Output = PortResult<ShelfChange>> + Send;

    /// Withdrawals taken off a sale's shelf and not yet settled or undone,
    /// with their audit entries.
    fn withdrawals_taken(
        &self,
        product: &ProductId,
    ) -> impl Future<Output = PortResult<Vec<(StockChange, AuditEntry)>>> + Send;

    /// Heals the shelf from what the DynamoDB `ledger` (read after
    /// `fence_seen`) allows it ([`Ledger::shelf_for`]), less the units
    /// pending and being withdrawn here (`resync.lua`). Returns the
    /// correction applied, or None when Redis went back in time meanwhile.
    fn resync(
        &self,
        product: &ProductId,
        ledger: &Ledger,
        fence_seen: i64,
    ) -> impl Future<Output = PortResult<Option<i64>>> + Send;

    /// Units lent between the product's stock buckets by `lent_by_ms`
    /// (Redis' clock) whose mover died before the borrower had them:
    /// received and finished now, once each. How many transfers.
    fn finish_transfers(
        &self,
        product: &ProductId,
        lent_by_ms: i64,
    ) -> impl Future<Output = PortResult<usize>> + Send;

    /// Stock buckets of a product whose meta a failover forgot while a
    /// sibling kept its own: their meta restored from the sibling's, with
    /// an empty shelf for the resync to fill. Which buckets (none with one
    /// bucket, or when no bucket of the product is warmed).
    fn restore_buckets(
        &self,
        product: &ProductId,
    ) -> impl Future<Output = PortResult<Vec<u16>>> + Send;
}

/// The stock gate's copies of the operator's controls: pause and end, the
/// kill switch, the deny list.
pub trait ControlGate: Send + Sync {
    /// Applies the operator's controls the product records (pause, end) to
    /// a warmed sale; false when it is not warmed (its warm-up copies them).
    fn apply_controls(&self, product: &Product) -> impl Future<Output = PortResult<bool>> + Send;

    /// Holds the kill switch where every deduct instance reads it, only
    /// over an older copy (`seq`): a slow sweep cannot undo a newer change.
    fn apply_kill_switch(&self, switch: KillSwitch) -> impl Future<Output = PortResult<()>> + Send;

    /// The kill switch as Redis holds it (disengaged when never set).
    fn kill_switch(&self) -> impl Future<Output = PortResult<KillSwitch>> + Send;

    /// Changes a sale's copy of the deny list: `add` (user, blocked until
    /// ms, 0 = until removed), then `remove`.
    fn set_denials(
        &self,
        product: &ProductId,
        add: &[(UserId, i64)],
        remove: &[UserId],
    ) -> impl Future<Output = PortResult<()>> + Send;

    /// A sale's copy of the deny list: (user, blocked until ms or 0).
    fn denials(
        &self,
        product: &ProductId,
    ) -> impl Future<Output = PortResult<Vec<(UserId, i64)>>> + Send;
}

/// The stock gate's sales: warm-up, counters, the set of live sales, and
/// Redis' clock.
pub trait SaleGate: Send + Sync {
    /// Loads a product; the shelf is the ledger's `ledger_remaining`, read
    /// after `fence_seen` (0 before any sale), less the units pending,
    /// being withdrawn and settled since that read (`warm.lua`).
    fn warm(
        &self,
        product: &Product,
        force: bool,
        ledger_remaining: i64,
        fence_seen: i64,
    ) -> impl Future<Output = PortResult<Warm>> + Send;

    fn stats(
        &self,
        product: &ProductId,
    ) -> impl Future<Output = PortResult<Option<ProductStats>>> + Send;

    /// Every product the sweeper still looks after.
    fn products(&self) -> impl Future<Output = PortResult<Vec<ProductId>>> + Send;

    /// Stops sweeping a product whose sale is long over.
    fn retire(&self, product: &ProductId) -> impl Future<Output = PortResult<()>> + Send;

    /// Redis server time in ms: the clock admission times are written in.
    fn now_ms(&self) -> impl Future<Output = PortResult<i64>> + Send;
}

/// The orders queue (SQS).
pub trait OrderQueue: Send + Sync {
    /// Sends one order message; `traceparent` travels as a message attribute.
    fn send(
        &self,
        msg: &OrderMessage,
        traceparent: &str,
    ) -> impl Future<Output = PortResult<()>> + Send;

    /// Sends up to ten messages in one call, each with its `traceparents`
    /// entry (None: each starts a trace); returns the request ids the queue
    /// did not accept.
    fn send_batch(
        &self,
        msgs: &[OrderMessage],
        traceparents: Option<&[String]>,
    ) -> impl Future<Output = PortResult<Vec<RequestId>>> + Send;
}

/// Result of trying to place an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    Placed,
    /// `ORDER#<request_id>` already exists: a duplicate delivery, or another
    /// writer (compensation) decided first. Carries the existing status.
    Exists(OrderStatus),
    /// The buyer guard is held by a different request.
    BuyerTaken,
    /// The DynamoDB stock ledger has fewer units left than the order needs:
    /// Redis admitted a unit that does not exist (it lost decrements).
    OutOfStock,
}

/// Why a fate other than PLACED was recorded, kept on the order item.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FateNote {
    pub reason: String,
    /// Deliveries of the message before this decision.
    pub receive_count: u32,
    /// First delivery and this decision, ms since the epoch.
    pub first_failure_ms: Option<i64>,
    pub last_failure_ms: Option<i64>,
}

/// Result of recording a fate other than placed (REJECTED, COMPENSATED).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Won,
    Exists(OrderStatus),
}

/// A forward-only transition's conditional write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Done,
    /// The condition failed: the order's status now (another transition
    /// won, or the deadline decided against this one).
    Refused(OrderStatus),
}

/// Result of writing a payment onto its order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentWrite {
    /// The event moved its order (paid, refunded, disputed) and is recorded.
    Written,
    /// The event was recorded before (a concurrent duplicate delivery).
    EventExists,
    /// The order was not payable at the write: its status then.
    Refused(OrderStatus),
}

/// The servers' clock that payment deadlines are judged by (Lambda hosts
/// keep it NTP-synchronised); a port so tests and the simulation move it.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> i64;

    fn now(&self) -> time::OffsetDateTime {
        crate::domain::from_unix_ms(self.now_ms())
    }
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        crate::domain::unix_ms(time::OffsetDateTime::now_utc())
    }
}

impl<T: Clock> Clock for std::sync::Arc<T> {
    fn now_ms(&self) -> i64 {
        (**self).now_ms()
    }
}

/// The whole stock gate.
pub trait StockGate: AdmissionGate + ShelfGate + ControlGate + SaleGate {}

impl<T: AdmissionGate + ShelfGate + ControlGate + SaleGate> StockGate for T {}

/// The order store (DynamoDB): placing orders, whose key
/// `ORDER#<request_id>` decides a fate, and reading them.
pub trait OrderBook: Send + Sync {
    /// Writes the order as PLACED on `terms` together with the buyer guard
    /// and the product's stock ledger decrement, atomically.
    fn place(
        &self,
        msg: &OrderMessage,
        terms: &Reservation,
    ) -> impl Future<Output = PortResult<Placement>> + Send;

    /// Writes the order with `status` if no order exists for its request id.
    fn record_fate(
        &self,
        msg: &OrderMessage,
        status: OrderStatus,
        note: &FateNote,
    ) -> impl Future<Output = PortResult<Fate>> + Send;

    fn order(&self, id: &RequestId)
    -> impl Future<Output = PortResult<Option<RequestView>>> + Send;

    /// Every order of a product (for audits and reconcile, not the hot path).
    fn orders_of(
        &self,
        id: &ProductId,
    ) -> impl Future<Output = PortResult<Vec<RequestView>>> + Send;
}

/// The order store's lifecycle after placement: payments and refunds,
/// releases (cancel, expiry) and their shelf steps, the due index.
pub trait LifecycleStore: Send + Sync {
    /// placed -> paid, if the order is placed and `now_ms` is not past its
    /// `pay_by`, recording the event (once per event id) and counting it.
    fn pay(
        &self,
        order: &RequestView,
        event: &PaymentEvent,
        now_ms: i64,
    ) -> impl Future<Output = PortResult<PaymentWrite>> + Send;

    /// paid (or disputed) -> refunded, paid -> disputed: the provider's
    /// refund or dispute of the payment `record` decided, recorded once
    /// per event id and counted; the order must be DynamoDB's own view and
    /// is moved only from the status it was read in.
    fn reverse(
        &self,
        order: &RequestView,
        record: &PaymentRecord,
        now_ms: i64,
    ) -> impl Future<Output = PortResult<PaymentWrite>> + Send;

    /// Records an event that moves no order: a payment that bought nothing
    /// (counted due for refund), or a refund or dispute of an order that
    /// was not paid. False when the event was recorded before.
    fn record_event(&self, record: &PaymentRecord)
    -> impl Future<Output = PortResult<bool>> + Send;

    fn payment(
        &self,
        id: &EventId,
    ) -> impl Future<Output = PortResult<Option<PaymentRecord>>> + Send;

    /// placed -> cancelled (any time) or -> expired (only past `pay_by`),
    /// returning the units to the ledger in the same transaction. The order
    /// stays in the due index until [`LifecycleStore::shelved`].
    fn release(
        &self,
        order: &RequestView,
        to: OrderStatus,
        now_ms: i64,
    ) -> impl Future<Output = PortResult<Transition>> + Send;

    /// Confirms a release's Redis step: the units leave `releasing`. Once
    /// per order; false when it was confirmed before.
    fn shelved(&self, order: &RequestView) -> impl Future<Output = PortResult<bool>> + Send;

    /// Whether a release's Redis step is still to be confirmed (a
    /// consistent read, not the due index's eventually consistent one).
    fn shelf_due(&self, id: &RequestId) -> impl Future<Output = PortResult<bool>> + Send;

    /// Up to `limit` orders that owe work at `now_ms`, from the sparse due
    /// index: placed past `pay_by`, or released with the shelf step due.
    fn due(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> impl Future<Output = PortResult<Vec<RequestView>>> + Send;
}

/// The order store's products: creation, the product and its ledger, the
/// sales still live.
pub trait Catalogue: Send + Sync {
    /// Creates a product and its stock ledger; false when it already exists.
    fn create_product(&self, product: &Product) -> impl Future<Output = PortResult<bool>> + Send;

    fn product(&self, id: &ProductId) -> impl Future<Output = PortResult<Option<Product>>> + Send;

    /// The product's ledger, read consistently; None without a product.
    fn ledger(&self, id: &ProductId) -> impl Future<Output = PortResult<Option<Ledger>>> + Send;

    /// Products whose sale ends after `ends_after_ms`: the sweeper's list,
    /// kept where a Redis failover cannot make it forget one.
    fn live_products(
        &self,
        ends_after_ms: i64,
    ) -> impl Future<Output = PortResult<Vec<ProductId>>> + Send;
}

/// The order store's record of the operator's controls, the kill switch,
/// the deny list and the audit trail.
pub trait ControlStore: Send + Sync {
    /// Records an operator's control on the product (paused, or its end
    /// now) together with its audit entry, atomically, when it changes the
    /// product; the product as it now is, None when unknown.
    fn control(
        &self,
        product: &ProductId,
        control: Control,
        entry: &AuditEntry,
    ) -> impl Future<Output = PortResult<Option<Controlled>>> + Send;

    /// Replaces a product's waiting room `from` (as the caller read it)
    /// with `to`, with its audit entry, atomically; false when the product
    /// has no room or another change got there first (read it again).
    fn change_room(
        &self,
        product: &ProductId,
        from: &crate::room::WaitingRoom,
        to: &crate::room::WaitingRoom,
        entry: &AuditEntry,
    ) -> impl Future<Output = PortResult<bool>> + Send;

    /// A product's audit entries (None: those about every sale), oldest
    /// first.
    fn audit(
        &self,
        product: Option<&ProductId>,
    ) -> impl Future<Output = PortResult<Vec<AuditEntry>>> + Send;

    /// Engages or releases the kill switch with its audit entry, atomically,
    /// when that changes it; the switch as it now is, and whether it changed.
    fn switch_admissions(
        &self,
        engaged: bool,
        entry: &AuditEntry,
    ) -> impl Future<Output = PortResult<(KillSwitch, bool)>> + Send;

    /// The kill switch as recorded (disengaged when never set).
    fn kill_switch(&self) -> impl Future<Output = PortResult<KillSwitch>> + Send;

    /// Puts a buyer on the deny list (Some, replacing an entry) or takes
    /// them off (None) with the audit entry, atomically; false when taking
    /// off a buyer not listed.
    fn set_denial(
        &self,
        user: &UserId,
        denial: Option<&Denial>,
        entry: &AuditEntry,
    ) -> impl Future<Output = PortResult<bool>> + Send;

    /// The deny list (from an index: may lag a change by a moment).
    fn denials(&self) -> impl Future<Output = PortResult<Vec<Denial>>> + Send;

    /// One buyer's entry, read consistently.
    fn denial(&self, user: &UserId) -> impl Future<Output = PortResult<Option<Denial>>> + Send;
}

/// The order store's stock changes by operators, in the ledger.
pub trait StockLedger: Send + Sync {
    /// Records a stock change once per key, with its audit entry,
    /// atomically: the product's stock and ledger, and the change's own
    /// item. A withdrawal needs the ledger to hold its units, else it is
    /// recorded as not applied; an addition's units stay `releasing` (and
    /// the change due) until its shelf step is confirmed. The record, and
    /// whether this call made it; None for an unknown product.
    fn change_stock(
        &self,
        change: &StockChange,
        entry: &AuditEntry,
    ) -> impl Future<Output = PortResult<Option<(StockChangeRecord, bool)>>> + Send;

    /// A change's record, read consistently.
    fn stock_change(
        &self,
        change: &StockChange,
    ) -> impl Future<Output = PortResult<Option<StockChangeRecord>>> + Send;

    /// Confirms an addition's units are on the shelf (`releasing` back
    /// down), only if it is still due; true when this call did.
    fn stock_change_shelved(
        &self,
        change: &StockChange,
    ) -> impl Future<Output = PortResult<bool>> + Send;

    /// A sale's additions whose shelf step is not confirmed.
    fn stock_changes_due(
        &self,
        product: &ProductId,
    ) -> impl Future<Output = PortResult<Vec<StockChange>>> + Send;
}

/// The whole order store.
pub trait OrderStore: OrderBook + LifecycleStore + Catalogue + ControlStore + StockLedger {}

impl<T: OrderBook + LifecycleStore + Catalogue + ControlStore + StockLedger> OrderStore for T {}

/// Every capability trait, for code that holds a concrete adapter (tests,
/// tools) and calls across capabilities.
pub mod prelude {
    pub use super::{
        AdmissionGate, Catalogue, ControlGate, ControlStore, LifecycleStore, OrderBook, OrderQueue,
        OrderStore, RoomGate, SaleGate, ShelfGate, StockGate, StockLedger,
    };
}

// Shared ports: one adapter (or fake) behind several handlers.
impl<T: AdmissionGate> AdmissionGate for std::sync::Arc<T> {
    fn admit(&self, p: &Purchase) -> impl Future<Output = PortResult<Admission>> + Send {
        (**self).admit(p)
    }
    fn request(
        &self,
        id: &RequestId,
        user: &str,
    ) -> impl Future<Output = PortResult<Option<RequestView>>> + Send {
        (**self).request(id, user)
    }
    fn mark_sent(
        &self,
        id: &RequestId,
        user: &str,
        mark: SendMark,
    ) -> impl Future<Output = PortResult<()>> + Send {
        (**self).mark_sent(id, user, mark)
    }
    fn settle(
        &self,
        msg: &OrderMessage,
        status: Settled,
    ) -> impl Future<Output = PortResult<bool>> + Send {
        (**self).settle(msg, status)
    }
    fn restock(&self, msg: &OrderMessage) -> impl Future<Output = PortResult<bool>> + Send {
        (**self).restock(msg)
    }
    fn pending_page(
        &self,
        product: &ProductId,
        cutoff_ms: i64,
        offset: usize,
        limit: usize,
    ) -> impl Future<Output = PortResult<PendingPage>> + Send {
        (**self).pending_page(product, cutoff_ms, offset, limit)
    }
}

impl<T: RoomGate> RoomGate for std::sync::Arc<T> {
    fn redeem(
        &self,
        product: &ProductId,
        nonce: &str,
        user: &str,
        ttl_ms: i64,
    ) -> impl Future<Output = PortResult<String>> + Send {
        (**self).redeem(product, nonce, user, ttl_ms)
    }
    fn entries(&self, product: &ProductId) -> impl Future<Output = PortResult<u64>> + Send {
        (**self).entries(product)
    }
    fn seen(
        &self,
        product: &ProductId,
        nonce: &str,
        place_ms: i64,
        ttl_ms: i64,
    ) -> impl Future<Output = PortResult<bool>> + Send {
        (**self).seen(product, nonce, place_ms, ttl_ms)
    }
    fn places(
        &self,
        product: &ProductId,
        from_ms: i64,
        to_ms: i64,
    ) -> impl Future<Output = PortResult<Vec<u64>>> + Send {
        (**self).places(product, from_ms, to_ms)
    }
}

impl<T: ShelfGate> ShelfGate for std::sync::Arc<T> {
    fn release(
        &self,
        order: &RequestView,
        to: OrderStatus,
    ) -> impl Future<Output = PortResult<bool>> + Send {
        (**self).release(order, to)
    }
    fn change_shelf(
        &self,
        change: &StockChange,
        step: ShelfStep,
        entry: Option<&AuditEntry>,
    ) -> impl Future<Output = PortResult<ShelfChange>> + Send {
        (**self).change_shelf(change, step, entry)
    }
    fn withdrawals_taken(
        &self,
        product: &ProductId,
    ) -> impl Future<Output = PortResult<Vec<(StockChange, AuditEntry)>>> + Send {
        (**self).withdrawals_taken(product)
    }
    fn resync(
        &self,
        product: &ProductId,
        ledger: &Ledger,
        fence_seen: i64,
    ) -> impl Future<Output = PortResult<Option<i64>>> + Send {
        (**self).resync(product, ledger, fence_seen)
    }
    fn finish_transfers(
        &self,
        product: &ProductId,
        lent_by_ms: i64,
    ) -> impl Future<Output = PortResult<usize>> + Send {
        (**self).finish_transfers(product, lent_by_ms)
    }
    fn restore_buckets(
        &self,
        product: &ProductId,
    ) -> impl Future<Output = PortResult<Vec<u16>>> + Send {
        (**self).restore_buckets(product)
    }
}

impl<T: ControlGate> ControlGate for std::sync::Arc<T> {
    fn apply_controls(&self, product: &Product) -> impl Future<Output = PortResult<bool>> + Send {
        (**self).apply_controls(product)
    }
    fn apply_kill_switch(&self, switch: KillSwitch) -> impl Future<Output = PortResult<()>> + Send {
        (**self).apply_kill_switch(switch)
    }
    fn kill_switch(&self) -> impl Future<Output = PortResult<KillSwitch>> + Send {
        ControlGate::kill_switch(&**self)
    }
    fn set_denials(
        &self,
        product: &ProductId,
        add: &[(UserId, i64)],
        remove: &[UserId],
    ) -> impl Future<Output = PortResult<()>> + Send {
        (**self).set_denials(product, add, remove)
    }
    fn denials(
        &self,
        product: &ProductId,
    ) -> impl Future<Output = PortResult<Vec<(UserId, i64)>>> + Send {
        ControlGate::denials(&**self, product)
    }
}

impl<T: SaleGate> SaleGate for std::sync::Arc<T> {
    fn warm(
        &self,
        product: &Product,
        force: bool,
        ledger_remaining: i64,
        fence_seen: i64,
    ) -> impl Future<Output = PortResult<Warm>> + Send {
        (**self).warm(product, force, ledger_remaining, fence_seen)
    }
    fn stats(
        &self,
        product: &ProductId,
    ) -> impl Future<Output = PortResult<Option<ProductStats>>> + Send {
        (**self).stats(product)
    }
    fn products(&self) -> impl Future<Output = PortResult<Vec<ProductId>>> + Send {
        (**self).products()
    }
    fn retire(&self, product: &ProductId) -> impl Future<Output = PortResult<()>> + Send {
        (**self).retire(product)
    }
    fn now_ms(&self) -> impl Future<Output = PortResult<i64>> + Send {
        (**self).now_ms()
    }
}

impl<T: OrderQueue> OrderQueue for std::sync::Arc<T> {
    fn send(
        &self,
        msg: &OrderMessage,
        traceparent: &str,
    ) -> impl Future<Output = PortResult<()>> + Send {
        (**self).send(msg, traceparent)
    }
    fn send_batch(
        &self,
        msgs: &[OrderMessage],
        traceparents: Option<&[String]>,
    ) -> impl Future<Output = PortResult<Vec<RequestId>>> + Send {
        (**self).send_batch(msgs, traceparents)
    }
}

impl<T: OrderBook> OrderBook for std::sync::Arc<T> {
    fn place(
        &self,
        msg: &OrderMessage,
        terms: &Reservation,
    ) -> impl Future<Output = PortResult<Placement>> + Send {
        (**self).place(msg, terms)
    }
    fn record_fate(
        &self,
        msg: &OrderMessage,
        status: OrderStatus,
        note: &FateNote,
    ) -> impl Future<Output = PortResult<Fate>> + Send {
        (**self).record_fate(msg, status, note)
    }
    fn order(
        &self,
        id: &RequestId,
    ) -> impl Future<Output = PortResult<Option<RequestView>>> + Send {
        (**self).order(id)
    }
    fn orders_of(
        &self,
        id: &ProductId,
    ) -> impl Future<Output = PortResult<Vec<RequestView>>> + Send {
        (**self).orders_of(id)
    }
}

impl<T: LifecycleStore> LifecycleStore for std::sync::Arc<T> {
    fn pay(
        &self,
        order: &RequestView,
        event: &PaymentEvent,
        now_ms: i64,
    ) -> impl Future<Output = PortResult<PaymentWrite>> + Send {
        (**self).pay(order, event, now_ms)
    }
    fn reverse(
        &self,
        order: &RequestView,
        record: &PaymentRecord,
        now_ms: i64,
    ) -> impl Future<Output = PortResult<PaymentWrite>> + Send {
        (**self).reverse(order, record, now_ms)
    }
    fn record_event(
        &self,
        record: &PaymentRecord,
    ) -> impl Future<Output = PortResult<bool>> + Send {
        (**self).record_event(record)
    }
    fn payment(
        &self,
        id: &EventId,
    ) -> impl Future<Output = PortResult<Option<PaymentRecord>>> + Send {
        (**self).payment(id)
    }
    fn release(
        &self,
        order: &RequestView,
        to: OrderStatus,
        now_ms: i64,
    ) -> impl Future<Output = PortResult<Transition>> + Send {
        (**self).release(order, to, now_ms)
    }
    fn shelved(&self, order: &RequestView) -> impl Future<Output = PortResult<bool>> + Send {
        (**self).shelved(order)
    }
    fn shelf_due(&self, id: &RequestId) -> impl Future<Output = PortResult<bool>> + Send {
        (**self).shelf_due(id)
    }
    fn due(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> impl Future<Output = PortResult<Vec<RequestView>>> + Send {
        (**self).due(now_ms, limit)
    }
}

impl<T: Catalogue> Catalogue for std::sync::Arc<T> {
    fn create_product(&self, product: &Product) -> impl Future<Output = PortResult<bool>> + Send {
        (**self).create_product(product)
    }
    fn product(&self, id: &ProductId) -> impl Future<Output = PortResult<Option<Product>>> + Send {
        (**self).product(id)
    }
    fn ledger(&self, id: &ProductId) -> impl Future<Output = PortResult<Option<Ledger>>> + Send {
        (**self).ledger(id)
    }
    fn live_products(
        &self,
        ends_after_ms: i64,
    ) -> impl Future<Output = PortResult<Vec<ProductId>>> + Send {
        (**self).live_products(ends_after_ms)
    }
}

impl<T: ControlStore> ControlStore for std::sync::Arc<T> {
    fn control(
        &self,
        product: &ProductId,
        control: Control,
        entry: &AuditEntry,
    ) -> impl Future<Output = PortResult<Option<Controlled>>> + Send {
        (**self).control(product, control, entry)
    }
    fn change_room(
        &self,
        product: &ProductId,
        from: &crate::room::WaitingRoom,
        to: &crate::room::WaitingRoom,
        entry: &AuditEntry,
    ) -> impl Future<Output = PortResult<bool>> + Send {
        (**self).change_room(product, from, to, entry)
    }
    fn audit(
        &self,
        product: Option<&ProductId>,
    ) -> impl Future<Output = PortResult<Vec<AuditEntry>>> + Send {
        (**self).audit(product)
    }
    fn switch_admissions(
        &self,
        engaged: bool,
        entry: &AuditEntry,
    ) -> impl Future<Output = PortResult<(KillSwitch, bool)>> + Send {
        (**self).switch_admissions(engaged, entry)
    }
    fn kill_switch(&self) -> impl Future<Output = PortResult<KillSwitch>> + Send {
        ControlStore::kill_switch(&**self)
    }
    fn set_denial(
        &self,
        user: &UserId,
        denial: Option<&Denial>,
        entry: &AuditEntry,
    ) -> impl Future<Output = PortResult<bool>> + Send {
        (**self).set_denial(user, denial, entry)
    }
    fn denials(&self) -> impl Future<Output = PortResult<Vec<Denial>>> + Send {
        ControlStore::denials(&**self)
    }
    fn denial(&self, user: &UserId) -> impl Future<Output = PortResult<Option<Denial>>> + Send {
        (**self).denial(user)
    }
}

impl<T: StockLedger> StockLedger for std::sync::Arc<T> {
    fn change_stock(
        &self,
        change: &StockChange,
        entry: &AuditEntry,
    ) -> impl Future<Output = PortResult<Option<(StockChangeRecord, bool)>>> + Send {
        (**self).change_stock(change, entry)
    }
    fn stock_change(
        &self,
        change: &StockChange,
    ) -> impl Future<Output = PortResult<Option<StockChangeRecord>>> + Send {
        (**self).stock_change(change)
    }
    fn stock_change_shelved(
        &self,
        change: &StockChange,
    ) -> impl Future<Output = PortResult<bool>> + Send {
        (**self).stock_change_shelved(change)
    }
    fn stock_changes_due(
        &self,
        product: &ProductId,
    ) -> impl Future<Output = PortResult<Vec<StockChange>>> + Send {
        (**self).stock_changes_due(product)
    }
}
