//! The ports: what handlers need from the outside world. Adapters implement
//! them for Redis, SQS and DynamoDB; `fakes` implements them in memory.

use std::future::Future;

use crate::domain::{
    Admission, OrderMessage, OrderStatus, Product, ProductId, ProductStats, Purchase, RequestId,
    RequestView,
};
use crate::error::InfraError;

pub type PortResult<T> = Result<T, InfraError>;

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

/// The stock gate (Redis): admission, request state, restock.
pub trait StockGate: Send + Sync {
    /// Runs the admission rule atomically.
    fn admit(&self, purchase: &Purchase) -> impl Future<Output = PortResult<Admission>> + Send;

    fn request(
        &self,
        id: &RequestId,
    ) -> impl Future<Output = PortResult<Option<RequestView>>> + Send;

    /// Records a terminal status that returns no stock: placed, or rejected.
    /// A rejected unit is never put back: DynamoDB refuses an order only when
    /// Redis forgot an earlier admission (failover), and the rejected
    /// request's decrement stands in for the one Redis lost.
    /// Idempotent; true when it changed.
    fn settle(
        &self,
        msg: &OrderMessage,
        status: OrderStatus,
    ) -> impl Future<Output = PortResult<bool>> + Send;

    /// Compensation: returns a COMPENSATED request's units to stock and
    /// releases its buyer, once per request id. True when this call restocked.
    fn restock(&self, msg: &OrderMessage) -> impl Future<Output = PortResult<bool>> + Send;

    fn warm(&self, product: &Product, force: bool)
    -> impl Future<Output = PortResult<Warm>> + Send;

    fn stats(
        &self,
        product: &ProductId,
    ) -> impl Future<Output = PortResult<Option<ProductStats>>> + Send;

    /// Every product ever warmed in this Redis (for the outbox sweeper).
    fn products(&self) -> impl Future<Output = PortResult<Vec<ProductId>>> + Send;

    /// A page of a product's requests pending since before `cutoff_ms`
    /// (Redis server time), oldest first, rebuilt as order messages.
    fn pending_before(
        &self,
        product: &ProductId,
        cutoff_ms: i64,
        offset: usize,
        limit: usize,
    ) -> impl Future<Output = PortResult<Vec<OrderMessage>>> + Send;

    /// Redis server time in ms: the clock admission times are written in.
    fn now_ms(&self) -> impl Future<Output = PortResult<i64>> + Send;

    /// Sets the shelf to the DynamoDB ledger's `remaining` if nothing is in
    /// flight (no request pending, `placed` still `placed_seen`). Returns the
    /// correction applied, or None when it was busy and changed nothing.
    fn resync(
        &self,
        product: &ProductId,
        remaining: i64,
        placed_seen: i64,
    ) -> impl Future<Output = PortResult<Option<i64>>> + Send;
}

/// The orders queue (SQS).
pub trait OrderQueue: Send + Sync {
    /// Sends one order message; `traceparent` travels as a message attribute.
    fn send(
        &self,
        msg: &OrderMessage,
        traceparent: &str,
    ) -> impl Future<Output = PortResult<()>> + Send;

    /// Sends up to ten messages in one call; returns the request ids the
    /// queue did not accept.
    fn send_batch(
        &self,
        msgs: &[OrderMessage],
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

/// The order store (DynamoDB): the key `ORDER#<request_id>` decides a fate.
pub trait OrderStore: Send + Sync {
    /// Writes the order as PLACED together with the buyer guard and the
    /// product's stock ledger decrement, atomically.
    fn place(&self, msg: &OrderMessage) -> impl Future<Output = PortResult<Placement>> + Send;

    /// Writes the order with `status` if no order exists for its request id.
    fn record_fate(
        &self,
        msg: &OrderMessage,
        status: OrderStatus,
        note: &FateNote,
    ) -> impl Future<Output = PortResult<Fate>> + Send;

    fn order(&self, id: &RequestId)
    -> impl Future<Output = PortResult<Option<RequestView>>> + Send;

    /// Creates a product and its stock ledger; false when it already exists.
    fn create_product(&self, product: &Product) -> impl Future<Output = PortResult<bool>> + Send;

    fn product(&self, id: &ProductId) -> impl Future<Output = PortResult<Option<Product>>> + Send;

    /// Every order of a product (for audits and reconcile, not the hot path).
    fn orders_of(
        &self,
        id: &ProductId,
    ) -> impl Future<Output = PortResult<Vec<RequestView>>> + Send;

    /// The stock ledger's units remaining, read consistently; None without a product.
    fn stock_ledger(&self, id: &ProductId) -> impl Future<Output = PortResult<Option<i64>>> + Send;
}

// Shared ports: one adapter (or fake) behind several handlers.
impl<T: StockGate> StockGate for std::sync::Arc<T> {
    fn admit(&self, p: &Purchase) -> impl Future<Output = PortResult<Admission>> + Send {
        (**self).admit(p)
    }
    fn request(
        &self,
        id: &RequestId,
    ) -> impl Future<Output = PortResult<Option<RequestView>>> + Send {
        (**self).request(id)
    }
    fn settle(
        &self,
        msg: &OrderMessage,
        status: OrderStatus,
    ) -> impl Future<Output = PortResult<bool>> + Send {
        (**self).settle(msg, status)
    }
    fn restock(&self, msg: &OrderMessage) -> impl Future<Output = PortResult<bool>> + Send {
        (**self).restock(msg)
    }
    fn warm(
        &self,
        product: &Product,
        force: bool,
    ) -> impl Future<Output = PortResult<Warm>> + Send {
        (**self).warm(product, force)
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
    fn pending_before(
        &self,
        product: &ProductId,
        cutoff_ms: i64,
        offset: usize,
        limit: usize,
    ) -> impl Future<Output = PortResult<Vec<OrderMessage>>> + Send {
        (**self).pending_before(product, cutoff_ms, offset, limit)
    }
    fn now_ms(&self) -> impl Future<Output = PortResult<i64>> + Send {
        (**self).now_ms()
    }
    fn resync(
        &self,
        product: &ProductId,
        remaining: i64,
        placed_seen: i64,
    ) -> impl Future<Output = PortResult<Option<i64>>> + Send {
        (**self).resync(product, remaining, placed_seen)
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
    ) -> impl Future<Output = PortResult<Vec<RequestId>>> + Send {
        (**self).send_batch(msgs)
    }
}

impl<T: OrderStore> OrderStore for std::sync::Arc<T> {
    fn place(&self, msg: &OrderMessage) -> impl Future<Output = PortResult<Placement>> + Send {
        (**self).place(msg)
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
    fn create_product(&self, product: &Product) -> impl Future<Output = PortResult<bool>> + Send {
        (**self).create_product(product)
    }
    fn product(&self, id: &ProductId) -> impl Future<Output = PortResult<Option<Product>>> + Send {
        (**self).product(id)
    }
    fn orders_of(
        &self,
        id: &ProductId,
    ) -> impl Future<Output = PortResult<Vec<RequestView>>> + Send {
        (**self).orders_of(id)
    }
    fn stock_ledger(&self, id: &ProductId) -> impl Future<Output = PortResult<Option<i64>>> + Send {
        (**self).stock_ledger(id)
    }
}
