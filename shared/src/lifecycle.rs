//! The release of a reservation (cancel, expire), over the ports: DynamoDB
//! first (status, ledger), then the Redis shelf, then DynamoDB confirms the
//! shelf step. Each step is idempotent, and until the last one the order
//! stays in the due index, so whatever runs next (the expirer) finishes a
//! release that died half-way: no unit lost, none doubled.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::domain::{OrderMessage, OrderStatus, Product, ProductId, RequestView, Reservation};
use crate::error::InfraError;
use crate::faults::{FaultPlan, FaultPoint};
use crate::ports::{Catalogue, Clock, LifecycleStore, ShelfGate, SystemClock, Transition};
use crate::retry::{self, Backoff};

/// Moves a placed order to `to` (cancelled or expired) and puts its units
/// back on sale. `Refused` carries the status that won instead.
pub async fn release<G: ShelfGate, S: LifecycleStore>(
    gate: &G,
    store: &S,
    faults: &FaultPlan,
    order: &RequestView,
    to: OrderStatus,
    now_ms: i64,
) -> Result<Transition, InfraError> {
    let transition =
        retry::transient(Backoff::DEFAULT, || store.release(order, to, now_ms)).await?;
    match transition {
        Transition::Done => {}
        // Released before: by a retry of ours whose answer was lost, or by
        // someone else; finishing is idempotent, so finish it now.
        Transition::Refused(s) if s == to => {
            finish(gate, store, order, to).await?;
            return Ok(transition);
        }
        Transition::Refused(_) => return Ok(transition),
    }
    metrics::counter!("flashsale_orders_released_total", "to" => to.as_str()).increment(1);
    if faults.hit(FaultPoint::CrashMidRelease) {
        return Err(InfraError::transient(
            "release",
            "injected crash between the DynamoDB and the Redis step; the expirer finishes it",
        ));
    }
    finish(gate, store, order, to).await?;
    Ok(Transition::Done)
}

/// The shelf step of a release DynamoDB has recorded, then its
/// confirmation; nothing when DynamoDB says it was confirmed already (the
/// due index may be stale, and a Redis that forgot the step after it was
/// confirmed has had the unit put back by the resync).
/// False when there was nothing left to do.
pub async fn finish<G: ShelfGate, S: LifecycleStore>(
    gate: &G,
    store: &S,
    order: &RequestView,
    to: OrderStatus,
) -> Result<bool, InfraError> {
    if !retry::transient(Backoff::DEFAULT, || store.shelf_due(&order.request_id)).await? {
        return Ok(false);
    }
    gate.release(order, to).await?;
    retry::transient(Backoff::DEFAULT, || store.shelved(order)).await?;
    Ok(true)
}

/// What the consumer places an order on: the product's terms (price,
/// payment window), and the clock its deadline starts from. Products are
/// cached per process for [`PRODUCT_MAX_AGE_MS`]: their terms never change,
/// but an operator's controls (pause, end) and stock changes do.
pub struct Terms {
    pub clock: Arc<dyn Clock>,
    products: Mutex<HashMap<ProductId, (Product, i64)>>,
}

/// How long a cached product is used: the product page's own cache period.
pub const PRODUCT_MAX_AGE_MS: i64 = 1_000;

impl Terms {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            products: Mutex::default(),
        }
    }

    pub fn system() -> Self {
        Self::new(Arc::new(SystemClock))
    }

    /// A product, from this process's cache or DynamoDB.
    pub async fn product<S: Catalogue>(
        &self,
        store: &S,
        id: &ProductId,
    ) -> Result<Option<Product>, InfraError> {
        let now = self.clock.now_ms();
        if let Some((p, at)) = lock(&self.products).get(id)
            && now - at < PRODUCT_MAX_AGE_MS
        {
            return Ok(Some(p.clone()));
        }
        let found = store.product(id).await?;
        if let Some(p) = &found {
            lock(&self.products).insert(p.product_id.clone(), (p.clone(), now));
        }
        Ok(found)
    }

    /// The reservation of `msg` placed now.
    pub async fn reservation<S: Catalogue>(
        &self,
        store: &S,
        msg: &OrderMessage,
    ) -> Result<Reservation, InfraError> {
        let product = self.product(store, &msg.product_id).await?.ok_or_else(|| {
            InfraError::permanent(
                "dynamodb",
                format!(
                    "product {} of order {} does not exist; create it with the admin API",
                    msg.product_id, msg.request_id
                ),
            )
        })?;
        Ok(product.reservation(msg.quantity, self.clock.now_ms()))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
