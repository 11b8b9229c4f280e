//! The buyer's side after the buy:
//! - `GET /api/flash-sale/orders/{request_id}`: a buyer reads their request:
//!   DynamoDB once it decided it (only it knows payment, deadline and
//!   amount), Redis while it is pending. A buyer may read only their own.
//! - `POST /api/flash-sale/orders/{request_id}/cancel`: a buyer gives up a
//!   reservation; its units go back on sale.
//! - `GET /api/flash-sale/products/{product_id}`: the public product page the
//!   storefront's countdown polls, cacheable for a second.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use lambda_http::Request;
use lambda_http::http::Method;
use serde::Serialize;

use shared::domain::{OrderStatus, ProductId, RequestId, RequestView, SaleState};
use shared::faults::FaultPlan;
use shared::http::{self as api, ApiError, HttpResponse};
use shared::lifecycle::{self, Terms};
use shared::live::{Known, LiveProducts};
use shared::ports::{
    AdmissionGate, Catalogue, Clock, LifecycleStore, OrderBook, SaleGate, ShelfGate, Transition,
};

/// What a lookup is for: showing an order may fall back to Redis' copy;
/// deciding a write may not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    Show,
    Decide,
}

pub struct OrderStatusApi<G, S> {
    pub gate: G,
    pub store: S,
    /// Local runner and tests: the buyer is `?user_id=` instead of the JWT `sub`.
    pub insecure_user_from_body: bool,
    /// Products (cached) and the clock deadlines are judged by.
    pub terms: Terms,
    /// Chaos runs only: may "crash" a cancel between its two steps.
    pub faults: Arc<FaultPlan>,
    /// What the public product page reuses within its own max-age.
    pub pages: ProductPages,
}

/// Per instance, for the public product page under a flood: the live
/// products (an id not among them is answered 404 with no read) and each
/// page's shelf figure, read from Redis at most once per
/// [`shared::lifecycle::PRODUCT_MAX_AGE_MS`] (the page's own max-age, which
/// the edge and browsers may reuse anyway).
pub struct ProductPages {
    live: LiveProducts,
    shelves: Mutex<HashMap<ProductId, (i64, i64)>>,
}

impl ProductPages {
    pub fn new(clock: Arc<dyn Clock>, live_period: std::time::Duration) -> Self {
        Self {
            live: LiveProducts::new(clock, live_period),
            shelves: Mutex::default(),
        }
    }

    /// Reads the list of live products now (the init warm-up).
    pub async fn load<S: Catalogue>(&self, store: &S) -> shared::ports::PortResult<()> {
        self.live.load(store).await
    }

    fn shelf(&self, id: &ProductId, now: i64) -> Option<i64> {
        let shelves = self.shelves.lock().unwrap_or_else(|e| e.into_inner());
        let (at, left) = shelves.get(id)?;
        (now - at < shared::lifecycle::PRODUCT_MAX_AGE_MS).then_some(*left)
    }

    fn remember(&self, id: &ProductId, now: i64, left: i64) {
        self.shelves
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), (now, left));
    }
}

/// How long a CDN or browser may reuse the product page.
pub const PRODUCT_CACHE_CONTROL: &str = "public, max-age=1";

#[derive(Serialize)]
struct ProductPage<'a> {
    product_id: &'a ProductId,
    name: &'a str,
    price: u64,
    currency: &'a str,
    #[serde(with = "time::serde::rfc3339")]
    starts_at: time::OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    ends_at: time::OffsetDateTime,
    per_buyer_limit: u32,
    stock_left: i64,
    state: SaleState,
}

impl<G: AdmissionGate + ShelfGate + SaleGate, S: OrderBook + LifecycleStore + Catalogue>
    OrderStatusApi<G, S>
{
    pub async fn handle(&self, req: Request) -> HttpResponse {
        let started = std::time::Instant::now();
        let answer = self.route(&req).await;
        shared::telemetry::record_latency("order_status", started);
        answer.unwrap_or_else(ApiError::into_response)
    }

    async fn route(&self, req: &Request) -> Result<HttpResponse, ApiError> {
        if let Some(segments) = api::segments_after(req, "/api/flash-sale/products") {
            return match (req.method(), segments.as_slice()) {
                (&Method::GET, [id]) => self.product(&ProductId::parse(*id)?).await,
                (_, [_]) => Err(ApiError::new(405, "method_not_allowed")),
                _ => Err(ApiError::new(404, "not_found")),
            };
        }
        let segments = api::segments_after(req, "/api/flash-sale/orders")
            .ok_or_else(|| ApiError::new(404, "not_found"))?;
        match (req.method(), segments.as_slice()) {
            (&Method::GET, [id]) => self.read(req, &RequestId::parse(id)?).await,
            (&Method::POST, [id, "cancel"]) => self.cancel(req, &RequestId::parse(id)?).await,
            (_, [_] | [_, "cancel"]) => Err(ApiError::new(405, "method_not_allowed")),
            _ => Err(ApiError::new(404, "not_found")),
        }
    }

    fn caller(&self, req: &Request) -> Result<String, ApiError> {
        match api::jwt_subject(req) {
            Some(sub) => Some(sub),
            None if self.insecure_user_from_body => api::query_param(req, "user_id"),
            None => None,
        }
        .ok_or_else(|| ApiError::new(401, "unauthenticated"))
    }

    /// The caller's own request, or the refusal to show it. `Read::Decide`
    /// for a write: only DynamoDB's view, 503 when it cannot be read.
    async fn own(
        &self,
        req: &Request,
        id: &RequestId,
        read: Read,
    ) -> Result<RequestView, ApiError> {
        let caller = self.caller(req)?;
        // Someone else's order answers exactly as a missing one: a 403
        // would tell whether an id (a keyed one is a UUIDv5 of a guessable
        // key) belongs to a purchase.
        self.lookup(id, &caller, read)
            .await?
            .filter(|view| view.user_id.as_str() == caller)
            .ok_or_else(|| ApiError::new(404, "unknown_request"))
    }

    async fn read(&self, req: &Request, id: &RequestId) -> Result<HttpResponse, ApiError> {
        Ok(api::json_response(
            200,
            &self.own(req, id, Read::Show).await?,
        ))
    }

    async fn cancel(&self, req: &Request, id: &RequestId) -> Result<HttpResponse, ApiError> {
        let order = self.own(req, id, Read::Decide).await?;
        let cancelled = || {
            api::json_response(
                200,
                &serde_json::json!({ "request_id": id, "status": "cancelled" }),
            )
        };
        let refused = |status| ApiError::new(409, "not_cancellable").with_order_status(status);
        match order.status {
            // A repeated cancel (the first answer was lost) answers the same.
            OrderStatus::Cancelled => return Ok(cancelled()),
            // Only DynamoDB's view carries the terms: one from Redis is an
            // order not placed yet, whatever Redis says.
            OrderStatus::Placed if order.reservation.is_some() => {}
            OrderStatus::Placed => return Err(refused(OrderStatus::Pending)),
            other => return Err(refused(other)),
        }
        let now = self.terms.clock.now_ms();
        let outcome = lifecycle::release(
            &self.gate,
            &self.store,
            &self.faults,
            &order,
            OrderStatus::Cancelled,
            now,
        )
        .await?;
        match outcome {
            Transition::Done | Transition::Refused(OrderStatus::Cancelled) => {
                tracing::info!(request_id = %id, "order cancelled by its buyer");
                Ok(cancelled())
            }
            Transition::Refused(status) => Err(refused(status)),
        }
    }

    /// DynamoDB decides, so it answers whenever it knows the order (Redis
    /// may still say pending after a crash before the consumer's settle, or
    /// a failover that forgot it, while the payment deadline runs). Only
    /// requests DynamoDB has not seen yet are read from Redis. With
    /// DynamoDB down, Redis' view is better than none to show; a write
    /// (`Read::Decide`) gets the error instead (503), never Redis' view.
    /// `caller`'s request: Redis keeps it in their stock bucket (someone
    /// else's pending request is not found there, and answers 404).
    async fn lookup(
        &self,
        id: &RequestId,
        caller: &str,
        read: Read,
    ) -> Result<Option<RequestView>, ApiError> {
        let store_failed = match self.store.order(id).await {
            Ok(Some(order)) => return Ok(Some(order)),
            Ok(None) => None,
            Err(e) if read == Read::Decide => return Err(e.into()),
            Err(e) => Some(e),
        };
        match self.gate.request(id, caller).await {
            Ok(Some(view)) => Ok(Some(view)),
            Ok(None) => store_failed.map_or(Ok(None), |e| Err(e.into())),
            Err(e) => Err(store_failed.unwrap_or(e).into()),
        }
    }

    async fn product(&self, id: &ProductId) -> Result<HttpResponse, ApiError> {
        let unknown = || ApiError::new(404, "unknown_product");
        if self.pages.live.check(&self.store, id).await == Known::Unknown {
            return Err(unknown());
        }
        let product = self
            .terms
            .product(&self.store, id)
            .await?
            .ok_or_else(unknown)?;
        let now = self.terms.clock.now_ms();
        let stock_left = match self.pages.shelf(id, now) {
            Some(left) => left,
            None => {
                // The shelf; when Redis is down or not warmed yet, the
                // ledger's view.
                let shelf = match self.gate.stats(id).await {
                    Ok(Some(s)) => Some(s.stock_left),
                    Ok(None) => None,
                    Err(e) => {
                        tracing::warn!(error = %e, "redis unavailable; stock from DynamoDB");
                        None
                    }
                };
                let left = match shelf {
                    Some(left) => left,
                    None => self.store.ledger(id).await?.map_or(0, |l| l.shelf_units()),
                }
                .max(0);
                self.pages.remember(id, now, left);
                left
            }
        };
        let page = ProductPage {
            product_id: &product.product_id,
            name: &product.name,
            price: product.price,
            currency: product.currency.as_str(),
            starts_at: product.starts_at,
            ends_at: product.ends_at,
            per_buyer_limit: product.per_buyer_limit,
            stock_left,
            state: product.sale_state(now, Some(stock_left)),
        };
        let mut resp = api::json_response(200, &page);
        resp.headers_mut().insert(
            lambda_http::http::header::CACHE_CONTROL,
            lambda_http::http::HeaderValue::from_static(PRODUCT_CACHE_CONTROL),
        );
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lambda_http::{Body, http};
    use shared::aws::DynamoStore;
    use shared::domain::{
        Control, OrderMessage, ProductStats, Quantity, UserId, from_unix_ms, unix_ms,
    };
    use shared::embedded::Faults;
    use shared::fakes::{FakeGate, ManualClock, Probe, order_message, stocked, terms};
    use shared::payment::{EventId, PaymentEvent};
    use shared::ports::PaymentWrite;
    use shared::ports::prelude::*;

    const NOW: i64 = 1_800_000_000_000;

    type TestApi = OrderStatusApi<FakeGate, DynamoStore>;

    async fn api() -> (TestApi, Faults) {
        with_clock(Arc::new(ManualClock::at(NOW))).await
    }

    /// The API over 10 units of p1 on this clock, and DynamoDB's faults.
    async fn with_clock(clock: Arc<ManualClock>) -> (TestApi, Faults) {
        let (store, faults) = stocked("p1", 10).await;
        let a = OrderStatusApi {
            gate: FakeGate::default(),
            store,
            insecure_user_from_body: true,
            terms: Terms::new(clock.clone()),
            faults: FaultPlan::none(),
            pages: ProductPages::new(clock, std::time::Duration::from_secs(1)),
        };
        (a, faults)
    }

    /// An order of u1 placed in the store, due a minute from NOW.
    async fn placed(a: &TestApi) -> OrderMessage {
        let msg = order_message("p1", "u1", NOW - 1_000);
        a.store.place(&msg, &terms(NOW + 60_000)).await.unwrap();
        msg
    }

    async fn call(a: &TestApi, method: &str, path: &str) -> (u16, serde_json::Value) {
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .body(Body::Empty)
            .unwrap();
        let resp = a.handle(req).await;
        let body = serde_json::from_slice(resp.body().as_ref()).unwrap();
        (resp.status().as_u16(), body)
    }

    fn cancel_path(msg: &OrderMessage, user: &str) -> String {
        format!(
            "/api/flash-sale/orders/{}/cancel?user_id={user}",
            msg.request_id
        )
    }

    #[tokio::test]
    async fn decided_orders_are_read_from_dynamodb_with_their_terms() {
        let (a, _) = api().await;
        let msg = placed(&a).await;
        // Redis knows it as placed; only DynamoDB knows it was paid.
        a.gate
            .settle(&msg, shared::ports::Settled::Placed)
            .await
            .unwrap();
        let order = a.store.order(&msg.request_id).await.unwrap().unwrap();
        let event = payment_event(&msg, "e1");
        assert_eq!(
            a.store.pay(&order, &event, NOW).await.unwrap(),
            PaymentWrite::Written
        );
        let path = format!("/api/flash-sale/orders/{}?user_id=u1", msg.request_id);
        let (status, body) = call(&a, "GET", &path).await;
        assert_eq!(status, 200);
        assert_eq!(body["status"], "paid");
        assert_eq!(body["amount"], 100);
        assert_eq!(body["currency"], "EUR");
        assert_eq!(
            body["pay_by"],
            from_unix_ms(NOW + 60_000)
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap()
        );
    }

    fn payment_event(msg: &OrderMessage, id: &str) -> PaymentEvent {
        PaymentEvent {
            event_id: EventId::parse(id).unwrap(),
            request_id: msg.request_id.clone(),
            amount: 100,
            currency: shared::domain::Currency::parse("EUR").unwrap(),
            status: "succeeded".into(),
            payment_event_id: None,
        }
    }

    #[tokio::test]
    async fn a_cancel_releases_the_reservation_once() {
        let (a, _) = api().await;
        let msg = placed(&a).await;
        assert_eq!(a.store.remaining(&msg.product_id).await, Some(9));
        let (status, body) = call(&a, "POST", &cancel_path(&msg, "u1")).await;
        assert_eq!((status, &body["status"]), (200, &"cancelled".into()));
        assert_eq!(body["request_id"], msg.request_id.as_str());
        let ledger = a.store.ledger_of(&msg.product_id).await;
        assert_eq!((ledger.remaining, ledger.releasing), (10, 0));
        assert_eq!((ledger.cancelled, ledger.released), (1, 1));
        assert_eq!(a.gate.released.lock().unwrap().len(), 1);
        // Repeated (its answer was lost): the same answer, nothing new.
        let (status, _) = call(&a, "POST", &cancel_path(&msg, "u1")).await;
        assert_eq!(status, 200);
        assert_eq!(a.store.ledger_of(&msg.product_id).await.released, 1);
        assert_eq!(a.gate.released.lock().unwrap().len(), 1);
    }

    /// Review finding: Redis still says pending (the consumer died before
    /// its settle, or a failover forgot it) while DynamoDB placed the order
    /// and its deadline runs: the buyer sees the reservation and can cancel.
    #[tokio::test]
    async fn a_placed_order_redis_thinks_pending_is_shown_and_cancellable() {
        let (a, _) = api().await;
        let msg = placed(&a).await;
        a.gate
            .put_request(shared::fakes::view(&msg, OrderStatus::Pending));
        let path = format!("/api/flash-sale/orders/{}?user_id=u1", msg.request_id);
        let (status, body) = call(&a, "GET", &path).await;
        assert_eq!((status, &body["status"]), (200, &"placed".into()));
        assert!(body.get("pay_by").is_some(), "{body}");
        assert_eq!(call(&a, "POST", &cancel_path(&msg, "u1")).await.0, 200);
    }

    #[tokio::test]
    async fn cancel_refusals() {
        let (a, faults) = api().await;
        let msg = placed(&a).await;
        // Issue 31, item 4: someone else's order answers as a missing one.
        let (status, body) = call(&a, "POST", &cancel_path(&msg, "u2")).await;
        let missing = call(
            &a,
            "POST",
            &cancel_path(&order_message("p1", "u1", NOW), "u2"),
        )
        .await;
        assert_eq!((status, body), missing);
        assert_eq!(missing.0, 404);
        let unauthenticated = format!("/api/flash-sale/orders/{}/cancel", msg.request_id);
        assert_eq!(call(&a, "POST", &unauthenticated).await.0, 401);
        let unknown = order_message("p1", "u1", NOW);
        assert_eq!(call(&a, "POST", &cancel_path(&unknown, "u1")).await.0, 404);
        // Still pending (Redis only): not a reservation yet.
        a.gate
            .put_request(shared::fakes::view(&unknown, OrderStatus::Pending));
        let (status, body) = call(&a, "POST", &cancel_path(&unknown, "u1")).await;
        assert_eq!((status, &body["error"]), (409, &"not_cancellable".into()));
        assert_eq!(body["status"], "pending");
        // Paid: final.
        let order = a.store.order(&msg.request_id).await.unwrap().unwrap();
        let event = payment_event(&msg, "e1");
        a.store.pay(&order, &event, NOW).await.unwrap();
        let (status, body) = call(&a, "POST", &cancel_path(&msg, "u1")).await;
        assert_eq!((status, &body["status"]), (409, &"paid".into()));
        assert_eq!(call(&a, "GET", &cancel_path(&msg, "u1")).await.0, 405);
        faults.fail_next(1);
        assert_eq!(call(&a, "POST", &cancel_path(&msg, "u1")).await.0, 503);
    }

    /// Issue 18, hole A: with DynamoDB unreadable a cancel answered from
    /// Redis' view and released its quantity, which a failover and a replay
    /// with another quantity had made 2 for an order of 1 (the ledger got
    /// back more than the order held). A write never decides from Redis: 503,
    /// nothing moved; a Redis view saying placed is not a reservation.
    #[tokio::test]
    async fn a_cancel_with_dynamodb_unreadable_answers_503_and_moves_nothing() {
        let (a, faults) = api().await;
        let msg = placed(&a).await;
        let mut redis_view = shared::fakes::view(&msg, OrderStatus::Placed);
        redis_view.quantity = Quantity::new(2).unwrap();
        a.gate.put_request(redis_view);
        faults.fail_next(1);
        assert_eq!(call(&a, "POST", &cancel_path(&msg, "u1")).await.0, 503);
        assert_eq!(a.store.remaining(&msg.product_id).await, Some(9));
        assert!(a.gate.released.lock().unwrap().is_empty());
        // Showing it may still fall back to Redis' copy.
        faults.fail_next(1);
        let path = format!("/api/flash-sale/orders/{}?user_id=u1", msg.request_id);
        assert_eq!(call(&a, "GET", &path).await.0, 200);
        // Redis says placed, DynamoDB has nothing: not placed yet.
        let unplaced = order_message("p1", "u1", NOW);
        a.gate
            .put_request(shared::fakes::view(&unplaced, OrderStatus::Placed));
        let (status, body) = call(&a, "POST", &cancel_path(&unplaced, "u1")).await;
        assert_eq!((status, &body["status"]), (409, &"pending".into()));
        // DynamoDB back: the cancel releases the stored single unit.
        assert_eq!(call(&a, "POST", &cancel_path(&msg, "u1")).await.0, 200);
        assert_eq!(a.store.remaining(&msg.product_id).await, Some(10));
    }

    /// A cancel racing a payment, interleaved at every port call: the order
    /// ends exactly one of paid or cancelled, and units move only for a cancel.
    #[tokio::test]
    async fn cancel_racing_a_payment_ends_once() {
        let mut seen = std::collections::HashSet::new();
        for round in 0..40 {
            let (a, _) = api().await;
            let msg = placed(&a).await;
            let order = a.store.order(&msg.request_id).await.unwrap().unwrap();
            let event = payment_event(&msg, "e1");
            let late = |n: usize| async move {
                for _ in 0..n {
                    tokio::task::yield_now().await;
                }
            };
            let path = cancel_path(&msg, "u1");
            let ((status, _), paid) = tokio::join!(
                async {
                    late(round % 4).await;
                    call(&a, "POST", &path).await
                },
                async {
                    late(round / 4 % 4).await;
                    a.store.pay(&order, &event, NOW).await.unwrap()
                }
            );
            let end = a.store.status_of(&msg.request_id).await.unwrap();
            let ledger = a.store.ledger_of(&msg.product_id).await;
            match end {
                OrderStatus::Paid => {
                    assert_eq!(paid, PaymentWrite::Written);
                    assert_eq!(status, 409);
                    assert_eq!((ledger.remaining, ledger.released), (9, 0));
                }
                OrderStatus::Cancelled => {
                    assert_eq!(paid, PaymentWrite::Refused(OrderStatus::Cancelled));
                    assert_eq!(status, 200);
                    assert_eq!((ledger.remaining, ledger.paid), (10, 0));
                }
                other => panic!("ended {other:?}"),
            }
            seen.insert(end);
        }
        assert_eq!(seen.len(), 2, "both winners were exercised");
    }

    #[tokio::test]
    async fn the_product_page_follows_the_sale() {
        let clock = Arc::new(ManualClock::at(NOW));
        let (a, faults) = with_clock(clock.clone()).await;
        let p = a
            .store
            .product(&ProductId::parse("p1").unwrap())
            .await
            .unwrap()
            .unwrap();
        let (start, end) = (unix_ms(p.starts_at), unix_ms(p.ends_at));
        let page = || {
            let req = http::Request::builder()
                .uri("/api/flash-sale/products/p1")
                .body(Body::Empty)
                .unwrap();
            a.handle(req)
        };
        *a.gate.stats.lock().unwrap() = Some(ProductStats {
            stock_left: 3,
            ..ProductStats::default()
        });
        let state = |resp: &HttpResponse| {
            let body: serde_json::Value = serde_json::from_slice(resp.body().as_ref()).unwrap();
            (
                body["state"].as_str().unwrap().to_owned(),
                body["stock_left"].as_i64().unwrap(),
            )
        };
        clock.set(start - 1);
        let resp = page().await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["cache-control"], PRODUCT_CACHE_CONTROL);
        assert_eq!(state(&resp), ("upcoming".into(), 3));
        let body: serde_json::Value = serde_json::from_slice(resp.body().as_ref()).unwrap();
        for field in [
            "name",
            "price",
            "currency",
            "starts_at",
            "ends_at",
            "per_buyer_limit",
        ] {
            assert!(body.get(field).is_some(), "{field} missing: {body}");
        }
        clock.set(start);
        assert_eq!(state(&page().await), ("on_sale".into(), 3));
        // Found in review: an operator's pause shows within the page's own
        // cache period, and so does the resume.
        let id = ProductId::parse("p1").unwrap();
        let entry = shared::domain::AuditEntry {
            product_id: Some(id.clone()),
            at: from_unix_ms(start),
            actor: "ops".into(),
            action: "pause".into(),
            reason: "bots".into(),
        };
        a.store.control(&id, Control::Pause, &entry).await.unwrap();
        clock.set(start + 1_000);
        assert_eq!(state(&page().await), ("paused".into(), 3));
        a.store.control(&id, Control::Resume, &entry).await.unwrap();
        clock.set(start + 2_000);
        assert_eq!(state(&page().await), ("on_sale".into(), 3));
        // Issue 31, item 2: within the page's own max-age the shelf figure
        // is this instance's, with no Redis read: a flood of the page costs
        // one read a second.
        a.gate.stats.lock().unwrap().as_mut().unwrap().stock_left = 0;
        a.gate.failures.fail_next(1);
        assert_eq!(state(&page().await), ("on_sale".into(), 3));
        clock.set(start + 3_000);
        // The armed Redis fault was not reached: the ledger's view.
        assert_eq!(state(&page().await), ("on_sale".into(), 10));
        clock.set(start + 4_000);
        assert_eq!(state(&page().await), ("sold_out".into(), 0));
        clock.set(end);
        assert_eq!(state(&page().await), ("ended".into(), 0));
        let (status, _) = call(&a, "GET", "/api/flash-sale/products/nope").await;
        assert_eq!(status, 404);
        // Made-up ids: 404 from the list of live products, which the
        // instance reads once (the armed DynamoDB fault is not reached by
        // the ids after it).
        a.pages.live.load(&a.store).await.unwrap();
        faults.fail_next(1);
        for n in 0..50 {
            let (status, body) = call(&a, "GET", &format!("/api/flash-sale/products/x{n}")).await;
            assert_eq!((status, &body["error"]), (404, &"unknown_product".into()));
        }
        assert!(
            a.store
                .create_product(&shared::fakes::product("p9"))
                .await
                .is_err(),
            "no read made"
        );
        assert_eq!(call(&a, "POST", "/api/flash-sale/products/p1").await.0, 405);
    }

    fn view(status: OrderStatus) -> RequestView {
        let p = ProductId::parse("p1").unwrap();
        RequestView {
            request_id: RequestId::new(&p),
            product_id: p,
            user_id: UserId::parse("u1").unwrap(),
            quantity: Quantity::new(1).unwrap(),
            status,
            updated_at: from_unix_ms(1_700_000_000_000),
            reservation: None,
        }
    }

    async fn get(a: &TestApi, path: &str) -> (u16, serde_json::Value) {
        call(a, "GET", path).await
    }

    #[tokio::test]
    async fn redis_first() {
        let (a, _) = api().await;
        let v = view(OrderStatus::Pending);
        a.gate.put_request(v.clone());
        let (status, body) = get(
            &a,
            &format!("/api/flash-sale/orders/{}?user_id=u1", v.request_id),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(body["status"], "pending");
        assert_eq!(body["user_id"], "u1");
        assert_eq!(body["product_id"], "p1");
        assert_eq!(body["quantity"], 1);
        assert_eq!(body["updated_at"], "2023-11-14T22:13:20Z");
    }

    #[tokio::test]
    async fn dynamodb_when_redis_has_nothing_or_is_down() {
        let (a, _) = api().await;
        let v = placed(&a).await;
        let path = format!("/api/flash-sale/orders/{}?user_id=u1", v.request_id);
        assert_eq!(get(&a, &path).await.1["status"], "placed");
        a.gate.failures.fail_next(1);
        assert_eq!(get(&a, &path).await.1["status"], "placed");
    }

    #[tokio::test]
    async fn errors() {
        let (a, faults) = api().await;
        let v = view(OrderStatus::Placed);
        a.gate.put_request(v.clone());
        let base = format!("/api/flash-sale/orders/{}", v.request_id);
        let other = get(&a, &format!("{base}?user_id=u2")).await;
        assert_eq!(other.0, 404);
        let missing = "/api/flash-sale/orders/p1.0190a5b2-0000-7000-8000-000000000000?user_id=u2";
        assert_eq!(other, get(&a, missing).await);
        assert_eq!(get(&a, &base).await.0, 401);
        assert_eq!(
            get(&a, "/api/flash-sale/orders/garbage?user_id=u1").await.0,
            400
        );
        let unknown = RequestId::new(&v.product_id);
        assert_eq!(
            get(&a, &format!("/api/flash-sale/orders/{unknown}?user_id=u1"))
                .await
                .0,
            404
        );
        faults.fail_next(1);
        assert_eq!(
            get(&a, &format!("/api/flash-sale/orders/{unknown}?user_id=u1"))
                .await
                .0,
            503
        );
    }
}
