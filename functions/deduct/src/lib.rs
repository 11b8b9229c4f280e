//! `POST /api/flash-sale/buy`: admit a purchase through the stock gate, then
//! enqueue the order. Redis is the outbox: once admitted, the request stays in
//! the pending index until the consumer settles it, so a failed send is
//! logged and left to the sweeper, never undone here.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lambda_http::Request;
use serde::Deserialize;
use serde_json::json;
use tracing::Instrument;

use shared::domain::{
    Admission, IdempotencyKey, MAX_QUANTITY, OrderMessage, OrderStatus, ProductId, Purchase,
    Quantity, Refusal, RequestId, UserId,
};
use shared::error::ValidationError;
use shared::http::{self as api, ApiError, HttpResponse};
use shared::ports::{OrderQueue, StockGate};
use shared::telemetry;

pub struct Deduct<G, Q> {
    pub gate: G,
    pub queue: Q,
    /// Local runner and tests: take the buyer from the body's `user_id`.
    pub insecure_user_from_body: bool,
    pub sold_out: SoldOutCache,
}

/// Per instance: after Redis said a product is sold out, answer 410 from
/// memory for a short while without a Redis round trip. Only requests
/// without an Idempotency-Key are answered so: a keyed request may be the
/// replay of an admitted one, and only Redis knows.
pub struct SoldOutCache {
    ttl: Duration,
    until: Mutex<HashMap<ProductId, Instant>>,
}

impl SoldOutCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            until: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ProductId, Instant>> {
        self.until.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_sold_out(&self, product: &ProductId) -> bool {
        !self.ttl.is_zero()
            && self
                .lock()
                .get(product)
                .is_some_and(|t| *t > Instant::now())
    }

    pub fn remember(&self, product: &ProductId) {
        if !self.ttl.is_zero() {
            self.lock()
                .insert(product.clone(), Instant::now() + self.ttl);
        }
    }
}

#[derive(Deserialize)]
struct BuyBody {
    product_id: String,
    #[serde(default = "one")]
    quantity: u64,
    user_id: Option<String>,
}

fn one() -> u64 {
    1
}

/// A validated buy request, or the 4xx refusal explaining what is wrong.
fn parse(req: &Request, insecure: bool) -> Result<Purchase, ApiError> {
    let body: BuyBody = serde_json::from_slice(api::body_bytes(req)?).map_err(|e| {
        ApiError::invalid(format!(
            "body must be a JSON object like {{\"product_id\":\"p42\",\"quantity\":1}}: {e}"
        ))
    })?;
    let product_id = ProductId::parse(body.product_id)?;
    let quantity = u32::try_from(body.quantity)
        .map_err(|_| ValidationError::BadQuantity { max: MAX_QUANTITY })
        .and_then(Quantity::new)?;
    let user = match api::jwt_subject(req) {
        Some(sub) => Some(sub),
        None if insecure => body.user_id,
        None => None,
    };
    let user_id = UserId::parse(user.ok_or_else(|| ApiError::new(401, "unauthenticated"))?)?;
    let idempotency_key = api::header(req, "idempotency-key")
        .map(IdempotencyKey::parse)
        .transpose()?;
    Ok(Purchase {
        request_id: RequestId::new(&product_id),
        product_id,
        user_id,
        quantity,
        idempotency_key,
    })
}

impl<G: StockGate, Q: OrderQueue> Deduct<G, Q> {
    pub async fn handle(&self, req: Request) -> HttpResponse {
        let started = std::time::Instant::now();
        let answer = self.answer(req).await;
        telemetry::record_latency("deduct", started);
        answer
    }

    async fn answer(&self, req: Request) -> HttpResponse {
        let purchase = match parse(&req, self.insecure_user_from_body) {
            Ok(p) => p,
            Err(refusal) => {
                metrics::counter!("flashsale_rejected_total", "reason" => refusal.code)
                    .increment(1);
                return refusal.into_response();
            }
        };
        let traceparent = telemetry::traceparent(api::header(&req, "traceparent"));
        let span = tracing::info_span!(
            "buy",
            request_id = %purchase.request_id,
            product_id = %purchase.product_id,
            trace_id = telemetry::trace_id(&traceparent),
        );
        self.buy(purchase, traceparent)
            .instrument(span)
            .await
            .unwrap_or_else(ApiError::into_response)
    }

    async fn buy(&self, purchase: Purchase, traceparent: String) -> Result<HttpResponse, ApiError> {
        if purchase.idempotency_key.is_none() && self.sold_out.is_sold_out(&purchase.product_id) {
            metrics::counter!("flashsale_rejected_total", "reason" => "sold_out").increment(1);
            return Err(ApiError::new(410, "sold_out"));
        }
        match self.gate.admit(&purchase).await? {
            Admission::Admitted { admitted_at_ms } => {
                metrics::counter!("flashsale_admitted_total").increment(1);
                let msg = OrderMessage::new(&purchase, admitted_at_ms);
                if let Err(e) = self.queue.send(&msg, &traceparent).await {
                    // Still admitted: the sweeper re-publishes from the pending index.
                    metrics::counter!("flashsale_queue_send_failures_total").increment(1);
                    tracing::error!(error = %e, "order not enqueued; left to the outbox sweeper");
                }
                tracing::info!("admitted");
                Ok(api::json_response(
                    202,
                    &json!({ "request_id": purchase.request_id, "status": "pending" }),
                ))
            }
            Admission::Replay { request_id } => {
                metrics::counter!("flashsale_idempotent_replays_total").increment(1);
                let status = self
                    .gate
                    .request(&request_id)
                    .await?
                    .map_or(OrderStatus::Pending, |v| v.status);
                tracing::info!(earlier = %request_id, "idempotent replay");
                Ok(api::json_response(
                    200,
                    &json!({ "request_id": request_id, "status": status }),
                ))
            }
            Admission::Refused(reason) => {
                if reason == Refusal::SoldOut {
                    self.sold_out.remember(&purchase.product_id);
                }
                metrics::counter!("flashsale_rejected_total", "reason" => reason.code())
                    .increment(1);
                tracing::info!(reason = reason.code(), "refused");
                Err(ApiError::new(reason.http_status(), reason.code()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lambda_http::{Body, http};
    use shared::fakes::{FakeGate, FakeQueue};

    fn deduct(insecure: bool) -> Deduct<FakeGate, FakeQueue> {
        Deduct {
            gate: FakeGate::default(),
            queue: FakeQueue::default(),
            insecure_user_from_body: insecure,
            sold_out: SoldOutCache::new(Duration::from_secs(60)),
        }
    }

    fn buy(body: &str) -> Request {
        http::Request::builder()
            .method("POST")
            .uri("/api/flash-sale/buy")
            .body(Body::from(body))
            .unwrap()
    }

    async fn call(d: &Deduct<FakeGate, FakeQueue>, req: Request) -> (u16, serde_json::Value) {
        let resp = d.handle(req).await;
        let body: serde_json::Value = serde_json::from_slice(resp.body().as_ref()).unwrap();
        (resp.status().as_u16(), body)
    }

    #[tokio::test]
    async fn admitted_purchase_is_enqueued_with_trace_context() {
        let d = deduct(true);
        let (status, body) = call(
            &d,
            buy(r#"{"product_id":"p1","quantity":2,"user_id":"u1"}"#),
        )
        .await;
        assert_eq!(status, 202);
        assert_eq!(body["status"], "pending");
        let sent = d.queue.sent();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0.request_id.as_str(), body["request_id"]);
        assert_eq!(sent[0].0.quantity.get(), 2);
        assert_eq!(sent[0].0.v, 1);
        assert!(sent[0].1.starts_with("00-"));
    }

    #[tokio::test]
    async fn failed_send_still_answers_202_and_keeps_the_request() {
        let d = deduct(true);
        d.queue.failures.fail_next(1);
        let (status, _) = call(&d, buy(r#"{"product_id":"p1","user_id":"u1"}"#)).await;
        assert_eq!(status, 202);
        assert!(d.queue.sent().is_empty());
    }

    #[tokio::test]
    async fn refusals_map_to_their_status_codes() {
        let d = deduct(true);
        for (refusal, code) in [
            (Refusal::AlreadyPurchased, 409),
            (Refusal::LimitExceeded, 409),
            (Refusal::SaleNotStarted, 403),
            (Refusal::SaleEnded, 403),
            (Refusal::UnknownProduct, 404),
            // Last: afterwards this instance answers 410 from memory.
            (Refusal::SoldOut, 410),
        ] {
            d.gate.answer(Admission::Refused(refusal));
            let (status, body) = call(&d, buy(r#"{"product_id":"p1","user_id":"u1"}"#)).await;
            assert_eq!(
                (status, body["error"].as_str().unwrap()),
                (code, refusal.code())
            );
        }
        assert!(d.queue.sent().is_empty());
    }

    #[tokio::test]
    async fn replay_returns_the_earlier_request_and_its_status() {
        let d = deduct(true);
        let p = ProductId::parse("p1").unwrap();
        let earlier = RequestId::new(&p);
        d.gate.answer(Admission::Replay {
            request_id: earlier.clone(),
        });
        let mut req = buy(r#"{"product_id":"p1","user_id":"u1"}"#);
        req.headers_mut()
            .insert("Idempotency-Key", "k-1".parse().unwrap());
        let (status, body) = call(&d, req).await;
        assert_eq!(status, 200);
        assert_eq!(body["request_id"], earlier.as_str());
        assert_eq!(body["status"], "pending");
        let purchases = d.gate.purchases.lock().unwrap();
        assert_eq!(
            purchases[0].idempotency_key.as_ref().unwrap().as_str(),
            "k-1"
        );
        assert!(d.queue.sent().is_empty());
    }

    #[tokio::test]
    async fn redis_down_fails_closed_with_503() {
        let d = deduct(true);
        d.gate.failures.fail_next(1);
        let (status, body) = call(&d, buy(r#"{"product_id":"p1","user_id":"u1"}"#)).await;
        assert_eq!(
            (status, body["error"].as_str().unwrap()),
            (503, "unavailable")
        );
    }

    #[tokio::test]
    async fn bad_input_is_a_400_and_reaches_nothing() {
        let d = deduct(true);
        let big = format!(
            r#"{{"product_id":"p1","user_id":"u1","pad":"{}"}}"#,
            "x".repeat(5000)
        );
        for body in [
            "",
            "not json",
            "[1,2]",
            r#"{"product_id":42}"#,
            r#"{"product_id":"p{1}","user_id":"u1"}"#,
            r#"{"product_id":"p1","user_id":"u:1"}"#,
            r#"{"product_id":"p1","quantity":0,"user_id":"u1"}"#,
            r#"{"product_id":"p1","quantity":-1,"user_id":"u1"}"#,
            r#"{"product_id":"p1","quantity":1.5,"user_id":"u1"}"#,
            r#"{"product_id":"p1","quantity":99999999999,"user_id":"u1"}"#,
            &big,
        ] {
            let (status, resp) = call(&d, buy(body)).await;
            assert_eq!(status, 400, "{body:.60}");
            assert_eq!(resp["error"], "invalid_request");
            assert!(resp["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
        let mut req = buy(r#"{"product_id":"p1","user_id":"u1"}"#);
        req.headers_mut()
            .insert("Idempotency-Key", "bad key".parse().unwrap());
        assert_eq!(call(&d, req).await.0, 400);
        assert!(d.gate.purchases.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn without_insecure_mode_a_body_user_id_is_not_an_identity() {
        let d = deduct(false);
        let (status, body) = call(&d, buy(r#"{"product_id":"p1","user_id":"u1"}"#)).await;
        assert_eq!(
            (status, body["error"].as_str().unwrap()),
            (401, "unauthenticated")
        );
        assert!(d.gate.purchases.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn sold_out_is_answered_from_memory_but_never_for_a_possible_replay() {
        let d = deduct(true);
        d.gate.answer(Admission::Refused(Refusal::SoldOut));
        let body = r#"{"product_id":"p1","user_id":"u1"}"#;
        assert_eq!(call(&d, buy(body)).await.0, 410);
        // No key: Redis is not asked again.
        assert_eq!(call(&d, buy(body)).await.0, 410);
        assert_eq!(d.gate.purchases.lock().unwrap().len(), 1);
        // A keyed request may be a replay: it goes to Redis.
        let earlier = RequestId::new(&ProductId::parse("p1").unwrap());
        d.gate.answer(Admission::Replay {
            request_id: earlier.clone(),
        });
        let mut req = buy(body);
        req.headers_mut()
            .insert("Idempotency-Key", "k-1".parse().unwrap());
        let (status, resp) = call(&d, req).await;
        assert_eq!(
            (status, resp["request_id"].as_str()),
            (200, Some(earlier.as_str()))
        );
        // Other products are not affected; a zero TTL turns it off.
        assert_eq!(
            call(&d, buy(r#"{"product_id":"p2","user_id":"u1"}"#))
                .await
                .0,
            202
        );
        let off = SoldOutCache::new(Duration::ZERO);
        off.remember(&ProductId::parse("p1").unwrap());
        assert!(!off.is_sold_out(&ProductId::parse("p1").unwrap()));
    }
}
