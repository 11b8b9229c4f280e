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

    /// Records a terminal status that returns no stock (placed, or rejected
    /// while the buyer holds another order). Idempotent; true when it changed.
    fn settle(
        &self,
        msg: &OrderMessage,
        status: OrderStatus,
    ) -> impl Future<Output = PortResult<bool>> + Send;

    /// Returns the units of a rejected or compensated request to stock, once
    /// per request id. True when this call restocked.
    fn restock(
        &self,
        msg: &OrderMessage,
        status: OrderStatus,
        release_buyer: bool,
    ) -> impl Future<Output = PortResult<bool>> + Send;

    fn warm(&self, product: &Product, force: bool)
    -> impl Future<Output = PortResult<Warm>> + Send;

    fn stats(
        &self,
        product: &ProductId,
    ) -> impl Future<Output = PortResult<Option<ProductStats>>> + Send;
}

/// The orders queue (SQS).
pub trait OrderQueue: Send + Sync {
    /// Sends one order message; `traceparent` travels as a message attribute.
    fn send(
        &self,
        msg: &OrderMessage,
        traceparent: &str,
    ) -> impl Future<Output = PortResult<()>> + Send;
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
}

/// Result of recording a fate other than placed (REJECTED, COMPENSATED).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Won,
    Exists(OrderStatus),
}

/// The order store (DynamoDB): the key `ORDER#<request_id>` decides a fate.
pub trait OrderStore: Send + Sync {
    /// Writes the order as PLACED together with the buyer guard, atomically.
    fn place(&self, msg: &OrderMessage) -> impl Future<Output = PortResult<Placement>> + Send;

    /// Writes the order with `status` if no order exists for its request id.
    fn record_fate(
        &self,
        msg: &OrderMessage,
        status: OrderStatus,
    ) -> impl Future<Output = PortResult<Fate>> + Send;

    fn order(&self, id: &RequestId)
    -> impl Future<Output = PortResult<Option<RequestView>>> + Send;

    /// Creates a product; false when it already exists (nothing changed).
    fn create_product(&self, product: &Product) -> impl Future<Output = PortResult<bool>> + Send;

    fn product(&self, id: &ProductId) -> impl Future<Output = PortResult<Option<Product>>> + Send;

    /// Every order of a product (for audits and reconcile, not the hot path).
    fn orders_of(
        &self,
        id: &ProductId,
    ) -> impl Future<Output = PortResult<Vec<RequestView>>> + Send;
}
