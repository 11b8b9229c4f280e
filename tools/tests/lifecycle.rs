//! The order lifecycle on the real local stack (Redis, LocalStack SQS,
//! DynamoDB Local) through the runner's HTTP API: pay by signed webhook,
//! cancel, expire by the expirer's timer, and every refusal.

mod common;

use std::time::Duration;

use serde_json::{Value, json};
use time::OffsetDateTime;

use common::{TestStack, WEBHOOK_SECRET, unique};
use shared::domain::ProductId;
use tools::audit::audit;

/// Buys one unit as `user`; the request id once DynamoDB placed it.
async fn buy_placed(s: &TestStack, product: &str, user: &str) -> String {
    let answer = s
        .api
        .buy(
            &json!({ "product_id": product, "quantity": 1, "user_id": user }),
            None,
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 202, "{}", answer.body);
    let id = answer.body["request_id"].as_str().unwrap().to_owned();
    for _ in 0..200 {
        let order = s.api.order(&id, user).await.unwrap();
        if order.body["status"] == "placed" && order.body.get("pay_by").is_some() {
            return id;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{id} was not placed within 20 s");
}

fn payment(event_id: &str, request_id: &str, amount: u64) -> Value {
    json!({ "event_id": event_id, "request_id": request_id, "amount": amount,
            "currency": "EUR", "status": "succeeded" })
}

fn now_secs() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pay_cancel_expire_and_every_refusal() {
    let s = TestStack::start("lifecycle", 30).await;
    let product = unique("life");
    s.on_sale(
        &product,
        5,
        json!({ "name": "Lifecycle item", "price": 1250, "payment_window_secs": 3 }),
    )
    .await;

    let [paid, cancelled, expired, late] = [
        buy_placed(&s, &product, "u1").await,
        buy_placed(&s, &product, "u2").await,
        buy_placed(&s, &product, "u3").await,
        buy_placed(&s, &product, "u4").await,
    ];

    // The public product page.
    let page = s
        .api
        .call(
            "GET",
            &format!("/api/flash-sale/products/{product}"),
            &[],
            None,
        )
        .await
        .unwrap();
    assert_eq!(page.status, 200);
    assert_eq!(
        (
            &page.body["state"],
            &page.body["stock_left"],
            &page.body["price"]
        ),
        (&json!("on_sale"), &json!(1), &json!(1250))
    );
    let missing = s
        .api
        .call("GET", "/api/flash-sale/products/nope", &[], None)
        .await
        .unwrap();
    assert_eq!(missing.status, 404);

    // The order shows its terms.
    let order = s.api.order(&paid, "u1").await.unwrap().body;
    assert_eq!(
        (&order["amount"], &order["currency"]),
        (&json!(1250), &json!("EUR"))
    );

    // Pay: signed, once per event, refusals.
    let t = now_secs();
    let first = s
        .api
        .webhook(WEBHOOK_SECRET, t, &payment("e1", &paid, 1250))
        .await
        .unwrap();
    assert_eq!((first.status, &first.body["status"]), (200, &json!("paid")));
    let again = s
        .api
        .webhook(WEBHOOK_SECRET, t, &payment("e1", &paid, 1250))
        .await
        .unwrap();
    assert_eq!((again.status, again.body), (200, first.body));
    let forged = s
        .api
        .webhook(b"not-our-secret-at-all", t, &payment("e2", &paid, 1250))
        .await
        .unwrap();
    assert_eq!(
        (forged.status, &forged.body["error"]),
        (401, &json!("bad_signature"))
    );
    let unsigned = s
        .api
        .call(
            "POST",
            "/api/payments/webhook",
            &[],
            Some(&payment("e2", &paid, 1250)),
        )
        .await
        .unwrap();
    assert_eq!(
        (unsigned.status, &unsigned.body["error"]),
        (401, &json!("bad_signature"))
    );
    let stale = s
        .api
        .webhook(WEBHOOK_SECRET, t - 301, &payment("e3", &paid, 1250))
        .await
        .unwrap();
    assert_eq!(
        (stale.status, &stale.body["error"]),
        (401, &json!("stale_signature"))
    );
    let wrong = s
        .api
        .webhook(WEBHOOK_SECRET, t, &payment("e4", &late, 999))
        .await
        .unwrap();
    assert_eq!(
        (wrong.status, &wrong.body["error"]),
        (409, &json!("amount_mismatch"))
    );

    // An order still in the queue: nothing recorded, delivered again later.
    let queued = format!("{product}.0190f5d2-7a3c-7b1e-9c4d-2f6a8b0c1d2f");
    let not_ready = s
        .api
        .webhook(WEBHOOK_SECRET, t, &payment("e0", &queued, 1250))
        .await
        .unwrap();
    assert_eq!(
        (not_ready.status, &not_ready.body["error"]),
        (503, &json!("order_not_ready"))
    );

    // Cancel: the buyer's own, placed orders only.
    assert_eq!(
        s.api.cancel(&cancelled, "u9").await.unwrap().status,
        404,
        "as a missing one"
    );
    let anonymous = format!("/api/flash-sale/orders/{cancelled}/cancel");
    let anonymous = s.api.call("POST", &anonymous, &[], None).await.unwrap();
    assert_eq!(anonymous.status, 401);
    let unknown = format!("{product}.0190f5d2-7a3c-7b1e-9c4d-2f6a8b0c1d2e");
    assert_eq!(s.api.cancel(&unknown, "u2").await.unwrap().status, 404);
    let done = s.api.cancel(&cancelled, "u2").await.unwrap();
    assert_eq!(
        (done.status, &done.body["status"]),
        (200, &json!("cancelled"))
    );
    let not = s.api.cancel(&paid, "u1").await.unwrap();
    assert_eq!(
        (not.status, &not.body["error"], &not.body["status"]),
        (409, &json!("not_cancellable"), &json!("paid"))
    );
    // A payment for the order its buyer cancelled is owed back.
    let after_cancel = s
        .api
        .webhook(WEBHOOK_SECRET, now_secs(), &payment("e6", &cancelled, 1250))
        .await
        .unwrap();
    assert_eq!(
        (
            after_cancel.status,
            &after_cancel.body["error"],
            &after_cancel.body["status"]
        ),
        (409, &json!("order_not_payable"), &json!("cancelled"))
    );

    // Expire: past the 3 s window the expirer's timer (500 ms here) releases them.
    let mut statuses = Vec::new();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        statuses = vec![
            s.api.order(&expired, "u3").await.unwrap().body["status"].clone(),
            s.api.order(&late, "u4").await.unwrap().body["status"].clone(),
        ];
        if statuses.iter().all(|st| st == "expired") {
            break;
        }
    }
    assert_eq!(statuses, vec![json!("expired"), json!("expired")]);
    let too_late = s
        .api
        .webhook(WEBHOOK_SECRET, now_secs(), &payment("e5", &expired, 1250))
        .await
        .unwrap();
    assert_eq!(
        (
            too_late.status,
            &too_late.body["error"],
            &too_late.body["status"]
        ),
        (409, &json!("order_not_payable"), &json!("expired"))
    );

    // The books: one paid, three released back on sale, two payments owed back.
    // An order reads `expired` from the DynamoDB step of its release, before
    // the Redis step; and a sweep whose ledger read caught a release in flight
    // sets the shelf a unit short until its next run (it never guesses up).
    // So the shelf is checked once a sweep after the last release has run.
    let path = format!("/api/admin/products/{product}");
    let mut stats = json!(null);
    for _ in 0..40 {
        stats = s.api.admin("GET", &path, None).await.unwrap().body;
        if stats["releasing"] == json!(0) && stats["stock_left"] == json!(4) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for (field, want) in [
        ("paid", 1),
        ("cancelled", 1),
        ("expired", 2),
        ("released", 3),
        ("refund_due", 3),
        ("stock_left", 4),
    ] {
        assert_eq!(stats[field], json!(want), "{field}: {stats}");
    }
    // The operator's list of money to give back: the wrong amount, the
    // late payment and the payment for a cancelled order.
    let pid = ProductId::parse(product.as_str()).unwrap();
    let mut refunds: Vec<String> = s
        .store
        .refunds_due(&pid)
        .await
        .unwrap()
        .iter()
        .map(|r| r.event.event_id.as_str().to_owned())
        .collect();
    refunds.sort();
    assert_eq!(refunds, vec!["e4", "e5", "e6"]);
    let books = audit(
        &s.gate,
        &s.store,
        &ProductId::parse(product.as_str()).unwrap(),
    )
    .await
    .unwrap();
    assert!(books.balanced(), "{books}: {:?}", books.problems());
    assert_eq!(
        (books.paid_units, books.stock_left, books.stock_total),
        (1, 4, 5)
    );
    // A released buyer keeps their slot (rebuy_after_release is false).
    let rebuy = s
        .api
        .buy(
            &json!({ "product_id": product, "quantity": 1, "user_id": "u2" }),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        (rebuy.status, &rebuy.body["error"]),
        (409, &json!("already_purchased"))
    );
    s.running.stop().await;
}
