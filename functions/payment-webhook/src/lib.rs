//! `POST /api/payments/webhook`: the payment provider reports a captured
//! payment, a refund or a dispute. The signature (`Flashsale-Signature`) is
//! the authentication; the event id makes it idempotent. Every payment ends
//! recorded: it pays a placed order before its deadline, or it is recorded
//! `refund_due` (deadline passed, order cancelled or expired, already paid,
//! wrong amount), so no money goes unaccounted. A refund ends a paid (or
//! disputed) order `refunded`, a dispute a paid one `disputed`; either of an
//! order not paid is recorded and moves nothing. The unit stays sold.

use std::sync::Arc;

use lambda_http::Request;
use lambda_http::http::Method;
use serde_json::json;

use shared::http::{self as api, ApiError, HttpResponse};
use shared::payment::{self, EventKind, PaymentEvent, PaymentOutcome, PaymentRecord};
use shared::ports::{Clock, LifecycleStore, OrderBook, PaymentWrite};
use shared::retry::{self, Backoff};

pub const SIGNATURE_HEADER: &str = "flashsale-signature";

pub struct Webhook<S> {
    pub store: S,
    pub clock: Arc<dyn Clock>,
    /// `FLASHSALE_PAYMENT_WEBHOOK_SECRET`.
    pub secret: Vec<u8>,
}

/// How a recorded event is answered, the first time and every time after.
fn answer(record: &PaymentRecord) -> Result<HttpResponse, ApiError> {
    match record.outcome {
        PaymentOutcome::Paid => Ok(api::json_response(
            200,
            &json!({ "request_id": record.event.request_id, "status": "paid" }),
        )),
        PaymentOutcome::AmountMismatch => Err(ApiError::new(409, "amount_mismatch")
            .with_message("amount or currency differ from the order's; recorded as refund_due")),
        PaymentOutcome::OrderNotPayable => Err(ApiError::new(409, "order_not_payable")
            .with_order_status(record.order_status)
            .with_message("the order can no longer be paid; recorded as refund_due")),
        PaymentOutcome::Refunded | PaymentOutcome::Disputed => Ok(api::json_response(
            200,
            &json!({ "request_id": record.event.request_id, "status": record.outcome.as_str() }),
        )),
        PaymentOutcome::NotPaid | PaymentOutcome::RefundSettled => Ok(api::json_response(
            200,
            &json!({
                "request_id": record.event.request_id,
                "status": "recorded",
                "order_status": record.order_status.as_str(),
            }),
        )),
    }
}

impl<S: OrderBook + LifecycleStore> Webhook<S> {
    pub async fn handle(&self, req: Request) -> HttpResponse {
        let started = std::time::Instant::now();
        let result = self.receive(&req).await;
        shared::telemetry::record_latency("payment_webhook", started);
        result.unwrap_or_else(ApiError::into_response)
    }

    async fn receive(&self, req: &Request) -> Result<HttpResponse, ApiError> {
        if req.method() != Method::POST {
            return Err(ApiError::new(405, "method_not_allowed"));
        }
        let body = api::body_bytes(req)?;
        let now_ms = self.clock.now_ms();
        payment::verify(
            &self.secret,
            api::header(req, SIGNATURE_HEADER),
            body,
            now_ms.div_euclid(1000),
        )
        .map_err(|e| {
            metrics::counter!("flashsale_webhook_refused_total", "reason" => e.code()).increment(1);
            ApiError::new(401, e.code())
        })?;
        let event: PaymentEvent = serde_json::from_slice(body).map_err(|e| {
            ApiError::invalid(format!(
                "body must be {{\"event_id\",\"request_id\",\"amount\",\"currency\",\"status\"}}: {e}"
            ))
        })?;
        let kind = event.kind();
        if kind == EventKind::Other {
            return Ok(api::json_response(200, &json!({ "status": "ignored" })));
        }
        if let Some(recorded) = self.store.payment(&event.event_id).await? {
            metrics::counter!("flashsale_webhook_replays_total").increment(1);
            return answer(&recorded);
        }
        let Some(order) = self.store.order(&event.request_id).await? else {
            // Still in the queue (or never admitted): nothing to pay yet and
            // nothing recorded; the provider delivers again.
            return Ok(ApiError::new(503, "order_not_ready")
                .with_message("the order is not placed yet; deliver the event again later")
                .retry_after(5));
        };
        if kind != EventKind::Captured {
            return self.reversal(order, event, kind, now_ms).await;
        }
        let mut record = PaymentRecord {
            outcome: payment::decide(&order, &event, now_ms),
            order_status: order.status,
            event,
        };
        if record.outcome == PaymentOutcome::Paid {
            let pay = || self.store.pay(&order, &record.event, now_ms);
            // A conflict on the product's item must not turn a timely
            // payment into a late one at the provider's next delivery.
            match retry::transient(Backoff::DEFAULT, pay).await? {
                PaymentWrite::Written => {
                    metrics::counter!("flashsale_orders_paid_total").increment(1);
                    tracing::info!(request_id = %order.request_id, "order paid");
                    return answer(&record);
                }
                PaymentWrite::EventExists => return self.replay(&record).await,
                // The deadline or another transition won the race.
                PaymentWrite::Refused(status) => {
                    record.outcome = PaymentOutcome::OrderNotPayable;
                    record.order_status = status;
                }
            }
        }
        if !retry::transient(Backoff::DEFAULT, || self.store.record_event(&record)).await? {
            return self.replay(&record).await;
        }
        metrics::counter!("flashsale_refunds_due_total", "reason" => record.outcome.as_str())
            .increment(1);
        tracing::warn!(
            request_id = %record.event.request_id,
            event_id = record.event.event_id.as_str(),
            outcome = record.outcome.as_str(),
            order_status = record.order_status.as_str(),
            "payment recorded as refund_due"
        );
        answer(&record)
    }

    /// A refund or a dispute: the paid order moves (refunded, disputed),
    /// once per event id; an order it cannot move is left as it is and the
    /// event recorded all the same, so none is lost. The unit stays sold.
    async fn reversal(
        &self,
        mut order: shared::domain::RequestView,
        event: PaymentEvent,
        kind: EventKind,
        now_ms: i64,
    ) -> Result<HttpResponse, ApiError> {
        // Tied to the payment it reverses: a refund of a duplicate payment
        // (recorded refund_due) must not mark the paid order refunded.
        let Some(reversed) = event.payment_event_id.clone() else {
            return Err(ApiError::invalid(
                "a refunded or disputed event must name the payment it reverses in payment_event_id",
            ));
        };
        let Some(paid) = self.store.payment(&reversed).await? else {
            // Its capture is still being delivered: a reversal recorded
            // now would be lost to the order once the capture lands.
            return Ok(ApiError::new(503, "payment_not_recorded")
                .with_message(
                    "the payment this event reverses is not recorded yet; deliver the event again later",
                )
                .retry_after(5));
        };
        if paid.event.request_id != event.request_id {
            return Err(ApiError::invalid(format!(
                "payment_event_id {} paid request {}, not {}",
                reversed.as_str(),
                paid.event.request_id,
                event.request_id
            )));
        }
        let outcome = match paid.outcome {
            PaymentOutcome::Paid => payment::decide_reversal(&order, kind),
            due if due.refund_due() && kind == EventKind::Refunded => PaymentOutcome::RefundSettled,
            _ => PaymentOutcome::NotPaid,
        };
        let mut record = PaymentRecord {
            outcome,
            order_status: order.status,
            event,
        };
        // paid -> disputed -> refunded: each refusal found the order one
        // step on, so two re-reads are enough for any race.
        for _ in 0..3 {
            let Some(to) = record.outcome.moves_to() else {
                break;
            };
            let reverse = || self.store.reverse(&order, &record, now_ms);
            match retry::transient(Backoff::DEFAULT, reverse).await? {
                PaymentWrite::Written => {
                    metrics::counter!("flashsale_payments_reversed_total", "to" => to.as_str())
                        .increment(1);
                    tracing::warn!(request_id = %order.request_id, event_id = record.event.event_id.as_str(), to = to.as_str(), "paid order reversed by the provider");
                    return answer(&record);
                }
                PaymentWrite::EventExists => return self.replay(&record).await,
                PaymentWrite::Refused(_) => {
                    order = self
                        .store
                        .order(&order.request_id)
                        .await?
                        .ok_or_else(|| ApiError::new(503, "unavailable"))?;
                    record.outcome = payment::decide_reversal(&order, kind);
                    record.order_status = order.status;
                }
            }
        }
        if record.outcome.moves_to().is_some() {
            // Still racing after three tries: the provider delivers again.
            return Err(ApiError::new(503, "unavailable")
                .with_message("the order kept changing; deliver the event again"));
        }
        if !retry::transient(Backoff::DEFAULT, || self.store.record_event(&record)).await? {
            return self.replay(&record).await;
        }
        tracing::warn!(request_id = %record.event.request_id, event_id = record.event.event_id.as_str(), order_status = record.order_status.as_str(), status = record.event.status, "refund or dispute of an order that was not paid: recorded, order unchanged");
        answer(&record)
    }

    /// A concurrent delivery of the same event recorded it first.
    async fn replay(&self, record: &PaymentRecord) -> Result<HttpResponse, ApiError> {
        let recorded = self
            .store
            .payment(&record.event.event_id)
            .await?
            .ok_or_else(|| ApiError::new(503, "unavailable"))?;
        answer(&recorded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lambda_http::{Body, http};
    use shared::aws::DynamoStore;
    use shared::domain::{OrderMessage, OrderStatus};
    use shared::fakes::{ManualClock, Probe, order_message, stocked, terms};
    use shared::payment::EventId;
    use shared::ports::Transition;

    const NOW: i64 = 1_800_000_000_000;
    const PAY_BY: i64 = NOW + 60_000;
    const SECRET: &[u8] = b"whsec_0123456789abcdef";

    struct Setup {
        hook: Webhook<Arc<DynamoStore>>,
        clock: Arc<ManualClock>,
        store: Arc<DynamoStore>,
        msg: OrderMessage,
    }

    async fn setup() -> Setup {
        let store = Arc::new(stocked("p1", 10).await.0);
        let clock = Arc::new(ManualClock::at(NOW));
        let msg = order_message("p1", "u1", NOW - 1_000);
        store.place(&msg, &terms(PAY_BY)).await.unwrap();
        Setup {
            hook: Webhook {
                store: store.clone(),
                clock: clock.clone(),
                secret: SECRET.to_vec(),
            },
            clock,
            store,
            msg,
        }
    }

    /// Whether the store recorded this payment event.
    async fn recorded(s: &Setup, event: &str) -> bool {
        let id = EventId::parse(event).unwrap();
        s.store.payment(&id).await.unwrap().is_some()
    }

    fn body(msg: &OrderMessage, event: &str, amount: u64) -> String {
        event_body(msg, event, amount, "succeeded")
    }

    fn event_body(msg: &OrderMessage, event: &str, amount: u64, status: &str) -> String {
        json!({
            "event_id": event, "request_id": msg.request_id, "amount": amount,
            "currency": "EUR", "status": status
        })
        .to_string()
    }

    /// A refund or dispute of the payment event `reverses`.
    fn reversal(msg: &OrderMessage, event: &str, status: &str, reverses: &str) -> String {
        json!({
            "event_id": event, "request_id": msg.request_id, "amount": 100,
            "currency": "EUR", "status": status, "payment_event_id": reverses
        })
        .to_string()
    }

    async fn deliver(s: &Setup, body: &str) -> (u16, serde_json::Value) {
        let t = s.clock.now_ms() / 1000;
        let req = http::Request::builder()
            .method("POST")
            .uri("/api/payments/webhook")
            .header(SIGNATURE_HEADER, payment::sign(SECRET, t, body.as_bytes()))
            .body(Body::Text(body.to_owned()))
            .unwrap();
        let resp = s.hook.handle(req).await;
        let json = serde_json::from_slice(resp.body().as_ref()).unwrap();
        (resp.status().as_u16(), json)
    }

    #[tokio::test]
    async fn a_signed_payment_pays_a_placed_order_once() {
        let s = setup().await;
        let b = body(&s.msg, "e1", 100);
        let (status, answer) = deliver(&s, &b).await;
        assert_eq!((status, &answer["status"]), (200, &"paid".into()));
        assert_eq!(
            s.store.status_of(&s.msg.request_id).await,
            Some(OrderStatus::Paid)
        );
        // Delivered again: the same answer, nothing new written.
        assert_eq!(deliver(&s, &b).await, (status, answer));
        let ledger = s.store.ledger_of(&s.msg.product_id).await;
        assert_eq!(
            (ledger.paid, ledger.paid_units, ledger.refund_due),
            (1, 1, 0)
        );
    }

    /// Issue 31, item 5: the provider's refunds and disputes were answered
    /// `ignored`, so a refunded order stayed `paid`. Now each moves the paid
    /// order once per event id, is recorded even when it moves nothing,
    /// and the unit stays sold (the ledger's remaining units do not move).
    #[tokio::test]
    async fn refunds_and_disputes_move_a_paid_order_once_and_the_unit_stays_sold() {
        let s = setup().await;
        let p = &s.msg.product_id;
        assert_eq!(deliver(&s, &body(&s.msg, "pay", 100)).await.0, 200);
        let remaining = s.store.ledger_of(p).await.remaining;
        let status = || s.store.status_of(&s.msg.request_id);
        let dispute = reversal(&s.msg, "dispute", "disputed", "pay");
        let (code, answer) = deliver(&s, &dispute).await;
        assert_eq!((code, &answer["status"]), (200, &"disputed".into()));
        assert_eq!(status().await, Some(OrderStatus::Disputed));
        assert_eq!(deliver(&s, &dispute).await, (code, answer), "a repeat");
        let refund = reversal(&s.msg, "refund", "refunded", "pay");
        let (code, answer) = deliver(&s, &refund).await;
        assert_eq!((code, &answer["status"]), (200, &"refunded".into()));
        assert_eq!(status().await, Some(OrderStatus::Refunded));
        assert_eq!(deliver(&s, &refund).await, (code, answer), "a repeat");
        // A second refund finds nothing paid: recorded, nothing moved.
        let again = reversal(&s.msg, "refund-2", "refunded", "pay");
        let (code, answer) = deliver(&s, &again).await;
        assert_eq!(
            (code, &answer["status"], &answer["order_status"]),
            (200, &"recorded".into(), &"refunded".into())
        );
        assert!(recorded(&s, "refund-2").await);
        let ledger = s.store.ledger_of(p).await;
        assert_eq!(
            (
                ledger.paid,
                ledger.disputed,
                ledger.refunded,
                ledger.refund_due
            ),
            (1, 1, 1, 0)
        );
        assert_eq!(ledger.remaining, remaining, "the unit stays sold");
        // A refund before its payment is recorded waits (it would be lost
        // to the order once the capture lands); one without the payment it
        // reverses is refused.
        let unpaid = order_message("p1", "u2", NOW - 1_000);
        s.store.place(&unpaid, &terms(PAY_BY)).await.unwrap();
        let early = reversal(&unpaid, "refund-3", "refunded", "pay-2");
        let (code, answer) = deliver(&s, &early).await;
        assert_eq!(
            (code, &answer["error"]),
            (503, &"payment_not_recorded".into())
        );
        assert!(!recorded(&s, "refund-3").await);
        let (code, _) = deliver(&s, &event_body(&unpaid, "refund-4", 100, "refunded")).await;
        assert_eq!(code, 400);
        assert_eq!(
            s.store.status_of(&unpaid.request_id).await,
            Some(OrderStatus::Placed)
        );
        // Other notifications are still acknowledged and ignored.
        let pending = event_body(&s.msg, "p-1", 100, "pending");
        assert_eq!(deliver(&s, &pending).await.1["status"], "ignored");
    }

    /// Found in review: a buyer paid twice; the second payment is owed
    /// back (refund_due), and its refund must settle it, not mark the
    /// order (paid by the first) refunded.
    #[tokio::test]
    async fn the_refund_of_a_duplicate_payment_settles_it_and_leaves_the_order_paid() {
        let s = setup().await;
        assert_eq!(deliver(&s, &body(&s.msg, "pay", 100)).await.0, 200);
        assert_eq!(deliver(&s, &body(&s.msg, "pay-again", 100)).await.0, 409);
        let p = &s.msg.product_id;
        assert_eq!(s.store.refunds_due(p).await.unwrap().len(), 1);
        let refund = reversal(&s.msg, "refund", "refunded", "pay-again");
        let (code, answer) = deliver(&s, &refund).await;
        assert_eq!((code, &answer["status"]), (200, &"recorded".into()));
        assert_eq!(
            s.store.status_of(&s.msg.request_id).await,
            Some(OrderStatus::Paid)
        );
        assert!(s.store.refunds_due(p).await.unwrap().is_empty(), "settled");
        assert_eq!(s.store.ledger_of(p).await.refunded, 0);
        // A dispute of it moves nothing either.
        let dispute = reversal(&s.msg, "dispute", "disputed", "pay-again");
        assert_eq!(deliver(&s, &dispute).await.1["status"], "recorded");
        assert_eq!(
            s.store.status_of(&s.msg.request_id).await,
            Some(OrderStatus::Paid)
        );
    }

    /// A refund written against a stale read (the order was disputed
    /// since) is refused whole by the conditional write; the webhook
    /// decides again on the status it finds: refunded once, counted once.
    #[tokio::test]
    async fn a_refund_racing_a_dispute_moves_the_order_once() {
        let s = setup().await;
        let id = &s.msg.request_id;
        assert_eq!(deliver(&s, &body(&s.msg, "pay", 100)).await.0, 200);
        let paid = s.store.order(id).await.unwrap().unwrap();
        let dispute = reversal(&s.msg, "dispute", "disputed", "pay");
        assert_eq!(deliver(&s, &dispute).await.0, 200);
        let refund = reversal(&s.msg, "refund", "refunded", "pay");
        let record = PaymentRecord {
            event: serde_json::from_str(&refund).unwrap(),
            outcome: PaymentOutcome::Refunded,
            order_status: OrderStatus::Paid,
        };
        assert_eq!(
            s.store.reverse(&paid, &record, NOW).await.unwrap(),
            PaymentWrite::Refused(OrderStatus::Disputed)
        );
        assert!(!recorded(&s, "refund").await, "nothing of it written");
        let (code, answer) = deliver(&s, &refund).await;
        assert_eq!((code, &answer["status"]), (200, &"refunded".into()));
        let ledger = s.store.ledger_of(&s.msg.product_id).await;
        assert_eq!((ledger.disputed, ledger.refunded), (1, 1));
    }

    #[tokio::test]
    async fn bad_and_stale_signatures_are_refused() {
        let s = setup().await;
        let b = body(&s.msg, "e1", 100);
        let send = |header: Option<String>| {
            let mut req = http::Request::builder()
                .method("POST")
                .uri("/api/payments/webhook");
            if let Some(h) = header {
                req = req.header(SIGNATURE_HEADER, h);
            }
            s.hook.handle(req.body(Body::Text(b.clone())).unwrap())
        };
        let code = |resp: HttpResponse| {
            let v: serde_json::Value = serde_json::from_slice(resp.body().as_ref()).unwrap();
            (
                resp.status().as_u16(),
                v["error"].as_str().unwrap().to_owned(),
            )
        };
        let t = NOW / 1000;
        assert_eq!(code(send(None).await), (401, "bad_signature".into()));
        let forged = payment::sign(b"not-the-secret", t, b.as_bytes());
        assert_eq!(
            code(send(Some(forged)).await),
            (401, "bad_signature".into())
        );
        let stale = payment::sign(SECRET, t - 301, b.as_bytes());
        assert_eq!(
            code(send(Some(stale)).await),
            (401, "stale_signature".into())
        );
        assert_eq!(
            s.store.status_of(&s.msg.request_id).await,
            Some(OrderStatus::Placed)
        );
        assert!(!recorded(&s, "e1").await);
    }

    #[tokio::test]
    async fn a_wrong_amount_is_refused_and_owed_back() {
        let s = setup().await;
        let (status, answer) = deliver(&s, &body(&s.msg, "e1", 99)).await;
        assert_eq!((status, &answer["error"]), (409, &"amount_mismatch".into()));
        assert_eq!(
            s.store.status_of(&s.msg.request_id).await,
            Some(OrderStatus::Placed)
        );
        assert_eq!(s.store.ledger_of(&s.msg.product_id).await.refund_due, 1);
        // The right amount still pays.
        assert_eq!(deliver(&s, &body(&s.msg, "e2", 100)).await.0, 200);
    }

    #[tokio::test]
    async fn payments_for_orders_no_longer_payable_are_owed_back() {
        // Past the deadline (the expirer has not run yet), after a cancel,
        // and a second payment of a paid order: each recorded refund_due.
        let s = setup().await;
        s.clock.set(PAY_BY + 1);
        let (status, answer) = deliver(&s, &body(&s.msg, "late", 100)).await;
        assert_eq!(
            (status, &answer["error"]),
            (409, &"order_not_payable".into())
        );
        assert_eq!(answer["status"], "placed");

        let s = setup().await;
        let order = s.store.order(&s.msg.request_id).await.unwrap().unwrap();
        s.store
            .release(&order, OrderStatus::Cancelled, NOW)
            .await
            .unwrap();
        let (status, answer) = deliver(&s, &body(&s.msg, "e1", 100)).await;
        assert_eq!((status, &answer["status"]), (409, &"cancelled".into()));

        let s = setup().await;
        assert_eq!(deliver(&s, &body(&s.msg, "e1", 100)).await.0, 200);
        let (status, answer) = deliver(&s, &body(&s.msg, "e2", 100)).await;
        assert_eq!((status, &answer["status"]), (409, &"paid".into()));
        let ledger = s.store.ledger_of(&s.msg.product_id).await;
        assert_eq!((ledger.paid, ledger.refund_due), (1, 1));
    }

    #[tokio::test]
    async fn an_order_still_in_the_queue_is_asked_again_later() {
        let s = setup().await;
        let queued = order_message("p1", "u2", NOW);
        let (status, answer) = deliver(&s, &body(&queued, "e1", 100)).await;
        assert_eq!((status, &answer["error"]), (503, &"order_not_ready".into()));
        assert!(!recorded(&s, "e1").await);
        let ignored = body(&s.msg, "e9", 100).replace("succeeded", "failed");
        assert_eq!(deliver(&s, &ignored).await.1["status"], "ignored");
        assert_eq!(
            s.store.status_of(&s.msg.request_id).await,
            Some(OrderStatus::Placed)
        );
    }

    /// A payment within milliseconds of its deadline racing the expirer,
    /// and duplicate deliveries racing each other, interleaved at every port
    /// call: exactly one of paid or expired, and the money is either paid or
    /// owed back, once.
    #[tokio::test]
    async fn payment_racing_the_deadline_and_itself_ends_once() {
        let mut seen = std::collections::HashSet::new();
        for round in 0..48 {
            let s = setup().await;
            // The payment is on time by the webhook's clock (at, or 1 ms
            // before, the deadline); the expirer's clock is already past it.
            s.clock.set(PAY_BY - (round % 2));
            let b = body(&s.msg, "e1", 100);
            let order = s.store.order(&s.msg.request_id).await.unwrap().unwrap();
            let late = |n: i64| async move {
                for _ in 0..n {
                    tokio::task::yield_now().await;
                }
            };
            let (first, second, expired) = tokio::join!(
                deliver(&s, &b),
                async {
                    late(round / 2 % 4).await;
                    deliver(&s, &b).await
                },
                async {
                    late(round / 8 % 3).await;
                    s.store
                        .release(&order, OrderStatus::Expired, PAY_BY + 1)
                        .await
                        .unwrap()
                }
            );
            assert_eq!(first, second, "a duplicate answered differently");
            let end = s.store.status_of(&s.msg.request_id).await.unwrap();
            let ledger = s.store.ledger_of(&s.msg.product_id).await;
            assert_eq!(
                ledger.paid + ledger.refund_due,
                1,
                "the payment is counted once"
            );
            match end {
                OrderStatus::Paid => {
                    assert_eq!(first.0, 200);
                    assert_eq!(expired, Transition::Refused(OrderStatus::Paid));
                    assert_eq!((ledger.expired, ledger.remaining), (0, 9));
                }
                OrderStatus::Expired => {
                    assert_eq!(first.0, 409);
                    assert_eq!(ledger.refund_due, 1);
                    assert_eq!((ledger.expired, ledger.remaining), (1, 10));
                }
                other => panic!("ended {other:?}"),
            }
            seen.insert(end);
        }
        assert_eq!(seen.len(), 2, "both winners were exercised");
    }
}
