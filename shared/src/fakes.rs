//! In-memory fakes of the ports for fast handler unit tests. They do not
//! re-implement the admission rule (that lives in `redis/admit.lua` and is
//! tested on a real Redis): the fake gate answers what a test scripts.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::domain::{
    Admission, OrderMessage, OrderStatus, Product, ProductId, ProductStats, Purchase, RequestId,
    RequestView, from_unix_ms,
};
use crate::error::InfraError;
use crate::ports::{Fate, OrderQueue, OrderStore, Placement, PortResult, StockGate, Warm};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn view(msg: &OrderMessage, status: OrderStatus) -> RequestView {
    RequestView {
        request_id: msg.request_id.clone(),
        product_id: msg.product_id.clone(),
        user_id: msg.user_id.clone(),
        quantity: msg.quantity,
        status,
        updated_at: from_unix_ms(msg.admitted_at),
    }
}

/// Fails the next `n` calls with a transient error when `n > 0`.
#[derive(Default)]
pub struct Failures(AtomicUsize);

impl Failures {
    pub fn fail_next(&self, n: usize) {
        self.0.store(n, Ordering::SeqCst);
    }
    fn check(&self, service: &'static str) -> PortResult<()> {
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

#[derive(Default)]
pub struct FakeGate {
    pub admissions: Mutex<VecDeque<Admission>>,
    pub purchases: Mutex<Vec<Purchase>>,
    pub requests: Mutex<HashMap<RequestId, RequestView>>,
    pub settled: Mutex<Vec<(RequestId, OrderStatus)>>,
    pub restocked: Mutex<Vec<(RequestId, OrderStatus, bool)>>,
    pub warmed: Mutex<Vec<(Product, bool)>>,
    pub started: AtomicBool,
    pub stats: Mutex<Option<ProductStats>>,
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
    pub fn restocked(&self) -> Vec<(RequestId, OrderStatus, bool)> {
        lock(&self.restocked).clone()
    }
}

impl StockGate for FakeGate {
    async fn admit(&self, p: &Purchase) -> PortResult<Admission> {
        self.failures.check("redis")?;
        lock(&self.purchases).push(p.clone());
        Ok(lock(&self.admissions)
            .pop_front()
            .unwrap_or(Admission::Admitted { admitted_at_ms: 1 }))
    }
    async fn request(&self, id: &RequestId) -> PortResult<Option<RequestView>> {
        self.failures.check("redis")?;
        Ok(lock(&self.requests).get(id).cloned())
    }
    async fn settle(&self, msg: &OrderMessage, status: OrderStatus) -> PortResult<bool> {
        self.failures.check("redis")?;
        lock(&self.settled).push((msg.request_id.clone(), status));
        let mut reqs = lock(&self.requests);
        let cur = reqs.get(&msg.request_id).map(|v| v.status);
        if cur.is_some_and(OrderStatus::is_terminal) {
            return Ok(false);
        }
        reqs.insert(msg.request_id.clone(), view(msg, status));
        Ok(true)
    }
    async fn restock(
        &self,
        msg: &OrderMessage,
        status: OrderStatus,
        release_buyer: bool,
    ) -> PortResult<bool> {
        self.failures.check("redis")?;
        let mut done = lock(&self.restocked);
        if done.iter().any(|(id, _, _)| *id == msg.request_id) {
            return Ok(false);
        }
        done.push((msg.request_id.clone(), status, release_buyer));
        lock(&self.requests).insert(msg.request_id.clone(), view(msg, status));
        Ok(true)
    }
    async fn warm(&self, product: &Product, force: bool) -> PortResult<Warm> {
        self.failures.check("redis")?;
        if self.started.load(Ordering::SeqCst) && !force {
            return Ok(Warm::AlreadyStarted { stock_left: 0 });
        }
        lock(&self.warmed).push((product.clone(), force));
        Ok(Warm::Warmed {
            stock_left: i64::from(product.stock),
        })
    }
    async fn stats(&self, _: &ProductId) -> PortResult<Option<ProductStats>> {
        self.failures.check("redis")?;
        Ok(lock(&self.stats).clone())
    }
}

#[derive(Default)]
pub struct FakeQueue {
    pub sent: Mutex<Vec<(OrderMessage, String)>>,
    pub failures: Failures,
}

impl FakeQueue {
    pub fn sent(&self) -> Vec<(OrderMessage, String)> {
        lock(&self.sent).clone()
    }
}

impl OrderQueue for FakeQueue {
    async fn send(&self, msg: &OrderMessage, traceparent: &str) -> PortResult<()> {
        self.failures.check("sqs")?;
        lock(&self.sent).push((msg.clone(), traceparent.to_owned()));
        Ok(())
    }
}

/// Conditional-write semantics of the DynamoDB store, in memory.
#[derive(Default)]
pub struct FakeStore {
    pub orders: Mutex<HashMap<RequestId, RequestView>>,
    pub guards: Mutex<HashMap<(ProductId, String), RequestId>>,
    pub products: Mutex<HashMap<ProductId, Product>>,
    pub failures: Failures,
}

impl FakeStore {
    pub fn status_of(&self, id: &RequestId) -> Option<OrderStatus> {
        lock(&self.orders).get(id).map(|o| o.status)
    }
}

impl OrderStore for FakeStore {
    async fn place(&self, msg: &OrderMessage) -> PortResult<Placement> {
        self.failures.check("dynamodb")?;
        let mut orders = lock(&self.orders);
        let mut guards = lock(&self.guards);
        if let Some(o) = orders.get(&msg.request_id) {
            return Ok(Placement::Exists(o.status));
        }
        let guard = (msg.product_id.clone(), msg.user_id.to_string());
        if guards.contains_key(&guard) {
            return Ok(Placement::BuyerTaken);
        }
        guards.insert(guard, msg.request_id.clone());
        orders.insert(msg.request_id.clone(), view(msg, OrderStatus::Placed));
        Ok(Placement::Placed)
    }
    async fn record_fate(&self, msg: &OrderMessage, status: OrderStatus) -> PortResult<Fate> {
        self.failures.check("dynamodb")?;
        let mut orders = lock(&self.orders);
        if let Some(o) = orders.get(&msg.request_id) {
            return Ok(Fate::Exists(o.status));
        }
        orders.insert(msg.request_id.clone(), view(msg, status));
        Ok(Fate::Won)
    }
    async fn order(&self, id: &RequestId) -> PortResult<Option<RequestView>> {
        self.failures.check("dynamodb")?;
        Ok(lock(&self.orders).get(id).cloned())
    }
    async fn create_product(&self, p: &Product) -> PortResult<bool> {
        self.failures.check("dynamodb")?;
        let mut products = lock(&self.products);
        if products.contains_key(&p.product_id) {
            return Ok(false);
        }
        products.insert(p.product_id.clone(), p.clone());
        Ok(true)
    }
    async fn product(&self, id: &ProductId) -> PortResult<Option<Product>> {
        self.failures.check("dynamodb")?;
        Ok(lock(&self.products).get(id).cloned())
    }
    async fn orders_of(&self, id: &ProductId) -> PortResult<Vec<RequestView>> {
        self.failures.check("dynamodb")?;
        Ok(lock(&self.orders)
            .values()
            .filter(|o| o.product_id == *id)
            .cloned()
            .collect())
    }
}
