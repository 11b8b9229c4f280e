//! Every sample event under `events/` goes through its handler, as
//! `cargo lambda invoke --data-file events/<file>` would send it, with
//! the real DynamoDB adapter on the embedded DynamoDB and in-memory Redis
//! and SQS; the answers are checked.

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use aws_lambda_events::event::sqs::SqsEvent;
use serde_json::Value;

use shared::aws::DynamoStore;
use shared::domain::{
    OrderMessage, OrderStatus, Product, RequestId, RequestView, UserId, from_unix_ms,
};
use shared::fakes::{FakeGate, FakeQueue, Probe, failed_ids, stocked};
use shared::faults::FaultPlan;

fn event(name: &str) -> String {
    let path = format!("{}/../events/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn http(name: &str) -> lambda_http::Request {
    lambda_http::request::from_str(&event(name))
        .unwrap_or_else(|e| panic!("{name} is not an API Gateway event: {e}"))
}

fn body(resp: &lambda_http::Response<lambda_http::Body>) -> Value {
    serde_json::from_slice(resp.body().as_ref()).unwrap()
}

const RID: &str = "p42.0190f5d2-7a3c-7b1e-9c4d-2f6a8b0c1d2e";

#[tokio::test]
async fn deduct_buy_takes_the_buyer_from_the_jwt() {
    let (live, refusals) = deduct::guards(
        std::sync::Arc::new(shared::ports::SystemClock),
        std::time::Duration::from_secs(1),
    );
    let d = deduct::Deduct {
        gate: FakeGate::default(),
        queue: FakeQueue::default(),
        store: shared::fakes::stocked("p42", 10).await.0,
        insecure_user_from_body: false,
        sold_out: deduct::SoldOutCache::new(std::time::Duration::from_secs(1)),
        kill_switch: deduct::KillSwitchCache::new(std::time::Duration::from_secs(1)),
        ids: shared::domain::RequestIds::Random,
        live,
        refusals,
        room: deduct::RoomCheck::new(Vec::new(), std::sync::Arc::new(shared::ports::SystemClock)),
    };
    let resp = d.handle(http("deduct-buy.json")).await;
    assert_eq!(resp.status().as_u16(), 202, "{}", body(&resp));
    let purchase = d.gate.purchases.lock().unwrap()[0].clone();
    assert_eq!(purchase.user_id.as_str(), "user-123");
    assert_eq!(purchase.idempotency_key.unwrap().as_str(), "checkout-7f3a");
    let sent = d.queue.sent();
    assert_eq!(sent.len(), 1);
    assert!(
        sent[0]
            .1
            .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "trace continued"
    );
}

#[tokio::test]
async fn order_status_reads_the_callers_request() {
    let api = order_status::OrderStatusApi {
        gate: FakeGate::default(),
        store: shared::fakes::store().await.0,
        insecure_user_from_body: false,
        terms: shared::lifecycle::Terms::system(),
        faults: FaultPlan::none(),
        pages: order_status::ProductPages::new(
            std::sync::Arc::new(shared::ports::SystemClock),
            std::time::Duration::from_secs(1),
        ),
    };
    let id = RequestId::parse(RID).unwrap();
    api.gate.put_request(RequestView {
        product_id: id.product(),
        request_id: id,
        user_id: UserId::parse("user-123").unwrap(),
        quantity: shared::domain::Quantity::new(1).unwrap(),
        status: OrderStatus::Placed,
        updated_at: from_unix_ms(1_795_338_000_000),
        reservation: None,
    });
    let resp = api.handle(http("order-status.json")).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(body(&resp)["status"], "placed");
}

#[tokio::test]
async fn admin_events_create_warm_and_report() {
    let admin = admin::Admin {
        gate: FakeGate::default(),
        store: shared::fakes::store().await.0,
        token: Some("change-me-admin-token".into()),
        clock: std::sync::Arc::new(shared::ports::SystemClock),
        room_defaults: shared::config::room_defaults().unwrap(),
    };
    let resp = admin.handle(http("admin-create-product.json")).await;
    assert_eq!(resp.status().as_u16(), 201, "{}", body(&resp));
    let resp = admin.handle(http("admin-warm.json")).await;
    assert_eq!(resp.status().as_u16(), 200, "{}", body(&resp));
    let warmed: Vec<Product> = admin
        .gate
        .warmed
        .lock()
        .unwrap()
        .iter()
        .map(|(p, _)| p.clone())
        .collect();
    assert_eq!(warmed[0].stock, 100);
    // The walkthrough buys right after: on whatever day it runs, the sample
    // sale is open (it names no start, and ends in 2099).
    let now = shared::domain::unix_ms(time::OffsetDateTime::now_utc());
    assert_eq!(
        warmed[0].sale_state(now, Some(100)),
        shared::domain::SaleState::OnSale
    );
    let resp = admin.handle(http("admin-stats.json")).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(body(&resp)["stock_total"], 100);
    // Sale-day controls.
    let resp = admin.handle(http("admin-stock-change.json")).await;
    assert_eq!(resp.status().as_u16(), 200, "{}", body(&resp));
    assert_eq!(body(&resp)["stock_total"], 90);
    let resp = admin.handle(http("admin-kill-switch.json")).await;
    assert_eq!(body(&resp)["engaged"], true, "{}", body(&resp));
    let resp = admin.handle(http("admin-deny-buyer.json")).await;
    assert_eq!(body(&resp)["denied"], true, "{}", body(&resp));
    assert_eq!(body(&resp)["until"], "2099-12-31T00:00:00Z");
}

#[tokio::test]
async fn consumer_batch_fails_only_the_garbage_record() {
    let consumer = order_consumer::Consumer {
        gate: FakeGate::default(),
        store: stocked("p42", 100).await.0,
        concurrency: 10,
        faults: FaultPlan::none(),
        terms: shared::lifecycle::Terms::system(),
    };
    let batch: SqsEvent = serde_json::from_str(&event("order-consumer-batch.json")).unwrap();
    let resp = consumer.handle(batch).await;
    assert_eq!(
        failed_ids(&resp),
        vec!["4a3646f6-1918-47bc-a3a6-1eb4884d08fc"]
    );
    let id = RequestId::parse(RID).unwrap();
    assert_eq!(
        consumer.store.status_of(&id).await,
        Some(OrderStatus::Placed)
    );
    // The answer is what Lambda expects back.
    let json = serde_json::to_value(&resp).unwrap();
    assert_eq!(
        json["batchItemFailures"][0]["itemIdentifier"],
        "4a3646f6-1918-47bc-a3a6-1eb4884d08fc"
    );
}

#[tokio::test]
async fn compensation_batch_compensates() {
    let compensation = compensation::Compensation {
        gate: FakeGate::default(),
        store: shared::fakes::store().await.0,
        concurrency: 10,
    };
    let batch: SqsEvent = serde_json::from_str(&event("compensation-dlq-batch.json")).unwrap();
    let resp = compensation.handle(batch).await;
    assert!(failed_ids(&resp).is_empty());
    assert_eq!(compensation.gate.restocked().len(), 1);
}

#[tokio::test]
async fn sweeper_accepts_the_scheduled_event() {
    let _: EventBridgeEvent = serde_json::from_str(&event("outbox-sweeper-schedule.json")).unwrap();
    let sweeper = outbox_sweeper::Sweeper {
        gate: FakeGate::default(),
        queue: FakeQueue::default(),
        store: shared::fakes::store().await.0,
        older_than_ms: 60_000,
        resend_after_ms: 1_200_000,
        max_per_product: 10_000,
    };
    let report = sweeper.sweep().await.unwrap();
    assert_eq!(report.republished, 0);
}

/// The sample order (RID) of user-123, placed for 129.00 EUR, payable until
/// `pay_by` (its product p42 is in the store).
async fn placed_sample(store: &DynamoStore, pay_by: i64) {
    use shared::ports::prelude::*;
    let id = RequestId::parse(RID).unwrap();
    let msg = OrderMessage {
        v: OrderMessage::VERSION,
        product_id: id.product(),
        request_id: id,
        user_id: UserId::parse("user-123").unwrap(),
        quantity: shared::domain::Quantity::new(1).unwrap(),
        admitted_at: SAMPLE_TIME_MS - 60_000,
        sale_ends_at: SAMPLE_TIME_MS + 3_600_000,
    };
    let terms = shared::domain::Reservation {
        pay_by_ms: pay_by,
        amount: 12_900,
        currency: shared::domain::Currency::parse("EUR").unwrap(),
        rebuy_after_release: false,
        ledger_shards: 1,
    };
    store.place(&msg, &terms).await.unwrap();
}

/// The sample's signature was made with this secret at 1795338000.
const SAMPLE_WEBHOOK_SECRET: &[u8] = b"whsec_sample_0123456789abcdef";
const SAMPLE_TIME_MS: i64 = 1_795_338_000_000;

fn clock() -> std::sync::Arc<shared::fakes::ManualClock> {
    std::sync::Arc::new(shared::fakes::ManualClock::at(SAMPLE_TIME_MS))
}

/// The buyer's side over fakes, with the clock at the samples' time.
async fn orders_api() -> order_status::OrderStatusApi<FakeGate, DynamoStore> {
    order_status::OrderStatusApi {
        gate: FakeGate::default(),
        store: stocked("p42", 10).await.0,
        insecure_user_from_body: false,
        terms: shared::lifecycle::Terms::new(clock()),
        faults: FaultPlan::none(),
        pages: order_status::ProductPages::new(clock(), std::time::Duration::from_secs(1)),
    }
}

#[tokio::test]
async fn order_cancel_releases_the_callers_reservation() {
    let api = orders_api().await;
    placed_sample(&api.store, SAMPLE_TIME_MS + 900_000).await;
    let resp = api.handle(http("order-cancel.json")).await;
    assert_eq!(resp.status().as_u16(), 200, "{}", body(&resp));
    assert_eq!(body(&resp)["status"], "cancelled");
    assert_eq!(api.gate.released.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn product_page_is_public_and_cacheable() {
    let api = orders_api().await;
    let resp = api.handle(http("product-page.json")).await;
    assert_eq!(resp.status().as_u16(), 200, "{}", body(&resp));
    assert_eq!(resp.headers()["cache-control"], "public, max-age=1");
    assert_eq!(body(&resp)["product_id"], "p42");
}

#[tokio::test]
async fn payment_webhook_sample_pays_the_order() {
    let hook = payment_webhook::Webhook {
        store: stocked("p42", 10).await.0,
        clock: clock(),
        secret: SAMPLE_WEBHOOK_SECRET.to_vec(),
    };
    placed_sample(&hook.store, SAMPLE_TIME_MS + 900_000).await;
    let resp = hook.handle(http("payment-webhook.json")).await;
    assert_eq!(resp.status().as_u16(), 200, "{}", body(&resp));
    assert_eq!(body(&resp)["status"], "paid");
}

#[tokio::test]
async fn expirer_accepts_the_scheduled_event_and_expires_what_is_due() {
    let _: EventBridgeEvent = serde_json::from_str(&event("order-expirer-schedule.json")).unwrap();
    let expirer = order_expirer::Expirer {
        gate: FakeGate::default(),
        store: stocked("p42", 10).await.0,
        clock: clock(),
        faults: FaultPlan::none(),
        batch: 100,
        concurrency: 8,
        budget: std::time::Duration::from_secs(5),
    };
    placed_sample(&expirer.store, SAMPLE_TIME_MS - 1).await;
    let run = expirer.run().await.unwrap();
    assert_eq!(run.expired, 1);
}
