//! The purchase path on the real stack: Redis, LocalStack SQS and DynamoDB
//! Local, through the local runner's HTTP API and queue pollers.

mod common;

use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use futures::StreamExt;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use common::{TestStack, unique};
use shared::domain::{OrderStatus, ProductId, RequestId};
use shared::ports::OrderQueue;
use shared::ports::prelude::*;
use tools::audit::audit;
use tools::demo;
use tools::loadtest::LoadSpec;

fn buy_body(product: &str, user: &str, qty: u32) -> Value {
    json!({ "product_id": product, "quantity": qty, "user_id": user })
}

async fn create(s: &TestStack, product: &str, stock: u32, start_in: i64, length: i64) -> u16 {
    let now = OffsetDateTime::now_utc();
    let body = json!({
        "product_id": product,
        "name": "Test item",
        "stock": stock,
        "per_buyer_limit": 1,
        "price": 1250,
        "currency": "EUR",
        "starts_at": (now + time::Duration::seconds(start_in)).format(&Rfc3339).unwrap(),
        "ends_at": (now + time::Duration::seconds(start_in + length)).format(&Rfc3339).unwrap(),
    });
    s.api
        .admin("POST", "/api/admin/products", Some(&body))
        .await
        .unwrap()
        .status
}

async fn warm(s: &TestStack, product: &str, force: bool) -> (u16, Value) {
    let q = if force { "?force=true" } else { "" };
    let a = s
        .api
        .admin(
            "POST",
            &format!("/api/admin/products/{product}/warm{q}"),
            None,
        )
        .await
        .unwrap();
    (a.status, a.body)
}

async fn status_of(s: &TestStack, id: &str, user: &str) -> (u16, Value) {
    let a = s
        .api
        .call(
            "GET",
            &format!("/api/flash-sale/orders/{id}?user_id={user}"),
            &[],
            None,
        )
        .await
        .unwrap();
    (a.status, a.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sale_admits_exactly_the_stock_and_places_every_admitted_order() {
    let s = TestStack::start("sale", 30).await;
    let product = unique("sale");
    let spec = LoadSpec {
        product: product.clone(),
        buyers: 1000,
        requests_per_buyer: 2,
        repeat_share: 0.5,
        concurrency: 64,
        ramp: Duration::from_millis(200),
        progress: false,
    };
    // Its ledger in 4 shards: the books below are their sums.
    demo::create_and_warm(&s.api, &product, 100, 1, 900, 4)
        .await
        .unwrap();
    let (_, report) = demo::sale(&s.api, &spec, None, 0).await.unwrap();
    let pid = ProductId::parse(product.as_str()).unwrap();
    demo::wait_drained(&s.gate, &pid, Duration::from_secs(120))
        .await
        .unwrap();
    let books = audit(&s.gate, &s.store, &pid).await.unwrap();
    println!("sale figures: {books}\n{}", report.table());

    assert_eq!(
        report.admitted.len(),
        100,
        "answers: {:?}",
        report.by_status
    );
    assert_eq!(
        (books.admitted, books.placed, books.placed_units),
        (100, 100, 100)
    );
    assert_eq!(
        (books.stock_left, books.oversold, books.duplicate_buyers),
        (0, 0, 0)
    );
    assert_eq!(books.pending, 0);
    assert!(books.balanced());
    // Every repeating buyer that got a 202 got the same id back for its key.
    let repeaters_admitted = report
        .admitted
        .iter()
        .filter(|(u, _)| spec.repeats(u.trim_start_matches("buyer-").parse().unwrap()))
        .count();
    assert_eq!((report.replays_mismatched, report.replays_refused), (0, 0));
    assert_eq!(report.replays_matched, repeaters_admitted);
    assert_eq!(report.count(200), repeaters_admitted as u64);
    let buyers: i64 = s
        .gate
        .command(
            redis::cmd("HLEN").arg(
                s.gate
                    .keys(&ProductId::parse(product.as_str()).unwrap())
                    .buyers(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(buyers, 100);

    // The status endpoint agrees with DynamoDB for every admitted request.
    let checks: Vec<()> = futures::stream::iter(report.admitted.clone())
        .map(|(user, id)| {
            let (s, product) = (&s, &product);
            async move {
                let (code, body) = status_of(s, &id, &user).await;
                assert_eq!(code, 200, "{body}");
                let stored = s
                    .store
                    .order(&RequestId::parse(&id).unwrap())
                    .await
                    .unwrap()
                    .expect("order in DynamoDB");
                assert_eq!(body["status"], "placed");
                assert_eq!(body["status"], stored.status.as_str());
                assert_eq!(body["user_id"], stored.user_id.as_str());
                assert_eq!(body["quantity"], stored.quantity.get());
                assert_eq!(body["product_id"], product.as_str());
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert_eq!(checks.len(), 100);
    s.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_of_the_api() {
    let s = TestStack::start("codes", 30).await;
    let p = unique("codes");
    assert_eq!(create(&s, &p, 2, -1, 3600).await, 201);
    assert_eq!(create(&s, &p, 2, -1, 3600).await, 409, "product_exists");
    assert_eq!(warm(&s, &p, false).await.0, 200);
    let (code, body) = warm(&s, &p, false).await;
    assert_eq!((code, body["error"].as_str()), (409, Some("sale_started")));
    assert_eq!(warm(&s, &p, true).await.0, 200);

    let buy = |body: Value, key: Option<&'static str>| {
        let api = s.api.clone();
        async move {
            let a = api.buy(&body, key).await.unwrap();
            (a.status, a.body)
        }
    };
    let err = |v: &Value| v["error"].as_str().unwrap_or_default().to_owned();

    // 400 for malformed input, before anything is touched.
    for body in [
        json!([1]),
        json!({"product_id": "p{x}", "user_id": "u"}),
        json!({"product_id": p, "user_id": "u", "quantity": 0}),
        json!({"product_id": p, "user_id": "u", "quantity": "1"}),
        json!({"product_id": p, "user_id": "u", "pad": "x".repeat(5000)}),
    ] {
        let (code, resp) = buy(body, None).await;
        assert_eq!((code, err(&resp)), (400, "invalid_request".into()));
    }
    let (code, _) = buy(buy_body(&p, "alice", 1), Some("bad key!")).await;
    assert_eq!(code, 400);

    let (code, resp) = buy(buy_body(&p, "alice", 2), None).await;
    assert_eq!((code, err(&resp)), (409, "limit_exceeded".into()));
    let (code, first) = buy(buy_body(&p, "alice", 1), Some("alice-1")).await;
    assert_eq!(code, 202);
    let (code, replay) = buy(buy_body(&p, "alice", 1), Some("alice-1")).await;
    assert_eq!(code, 200);
    assert_eq!(replay["request_id"], first["request_id"]);
    let (code, resp) = buy(buy_body(&p, "alice", 1), Some("alice-2")).await;
    assert_eq!((code, err(&resp)), (409, "already_purchased".into()));
    assert_eq!(buy(buy_body(&p, "bob", 1), None).await.0, 202);
    // Sold out is the answer for everyone then, even a buyer who has a unit.
    for user in ["carol", "alice"] {
        let (code, resp) = buy(buy_body(&p, user, 1), None).await;
        assert_eq!((code, err(&resp)), (410, "sold_out".into()), "{user}");
    }
    let (code, resp) = buy(buy_body(&unique("ghost"), "bob", 1), None).await;
    assert_eq!((code, err(&resp)), (404, "unknown_product".into()));

    let early = unique("early");
    assert_eq!(create(&s, &early, 5, 3600, 3600).await, 201);
    assert_eq!(warm(&s, &early, false).await.0, 200);
    let (code, resp) = buy(buy_body(&early, "bob", 1), None).await;
    assert_eq!((code, err(&resp)), (403, "sale_not_started".into()));
    let over = unique("over");
    assert_eq!(create(&s, &over, 5, -7200, 5400).await, 201);
    assert_eq!(warm(&s, &over, true).await.0, 200);
    let (code, resp) = buy(buy_body(&over, "bob", 1), None).await;
    assert_eq!((code, err(&resp)), (403, "sale_ended".into()));
    // Over for more than an hour: no longer among the live products, so
    // refused in process (docs/operations.md, "Limits and rights").
    let long_over = unique("long-over");
    assert_eq!(create(&s, &long_over, 5, -10800, 3600).await, 201);
    let (code, resp) = buy(buy_body(&long_over, "bob", 1), None).await;
    assert_eq!((code, err(&resp)), (404, "unknown_product".into()));

    // Status: own request 200, someone else's 404 as an unknown one, bad id 400.
    let id = first["request_id"].as_str().unwrap().to_owned();
    let pid = ProductId::parse(p.as_str()).unwrap();
    demo::wait_drained(&s.gate, &pid, Duration::from_secs(60))
        .await
        .unwrap();
    let (code, body) = status_of(&s, &id, "alice").await;
    assert_eq!((code, body["status"].as_str()), (200, Some("placed")));
    let unknown = RequestId::new(&pid);
    assert_eq!(
        status_of(&s, &id, "bob").await,
        status_of(&s, unknown.as_str(), "bob").await
    );
    assert_eq!(status_of(&s, &id, "bob").await.0, 404);
    assert_eq!(status_of(&s, "not-an-id", "bob").await.0, 400);

    // Admin stats, and the admin token is required.
    let stats = s
        .api
        .admin("GET", &format!("/api/admin/products/{p}"), None)
        .await
        .unwrap();
    assert_eq!(stats.status, 200);
    assert_eq!(
        (
            stats.body["stock_total"].as_i64(),
            stats.body["stock_left"].as_i64()
        ),
        (Some(2), Some(0))
    );
    assert_eq!(
        (
            stats.body["admitted"].as_i64(),
            stats.body["placed"].as_i64(),
            stats.body["pending"].as_i64()
        ),
        (Some(2), Some(2), Some(0))
    );
    let anon = s
        .api
        .call("GET", &format!("/api/admin/products/{p}"), &[], None)
        .await
        .unwrap();
    assert_eq!(anon.status, 401);

    // 401 without a verified identity when insecure mode is off.
    let secure = s.app_with(|c| c.insecure_user_from_body = false);
    let req = common::request(
        "POST",
        "/api/flash-sale/buy",
        Some(buy_body(&p, "mallory", 1).to_string()),
    );
    let resp = secure.route(req).await;
    assert_eq!(resp.status().as_u16(), 401);

    // 503 when Redis is unreachable: fail closed.
    let down = s.app_without_redis();
    let req = common::request(
        "POST",
        "/api/flash-sale/buy",
        Some(buy_body(&p, "carol", 1).to_string()),
    );
    let resp = down.route(req).await;
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(s.gate.stats(&pid).await.unwrap().unwrap().admitted, 2);
    s.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_deliveries_of_a_placed_order_are_absorbed() {
    let s = TestStack::start("dup", 30).await;
    let p = unique("dup");
    demo::create_and_warm(&s.api, &p, 3, 1, 900, 1)
        .await
        .unwrap();
    let mut ids = Vec::new();
    for user in ["u1", "u2", "u3"] {
        let a = s.api.buy(&buy_body(&p, user, 1), None).await.unwrap();
        assert_eq!(a.status, 202);
        ids.push(a.body["request_id"].as_str().unwrap().to_owned());
    }
    let pid = ProductId::parse(p.as_str()).unwrap();
    demo::wait_drained(&s.gate, &pid, Duration::from_secs(60))
        .await
        .unwrap();
    let before = audit(&s.gate, &s.store, &pid).await.unwrap();
    assert_eq!(before.placed, 3);

    // Re-send every placed order twice through SQS, as an at-least-once
    // delivery (or the outbox sweeper) would.
    let orders = s.store.orders_of(&pid).await.unwrap();
    for o in &orders {
        let msg = common::message_of(o);
        for _ in 0..2 {
            s.queue
                .send(
                    &msg,
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                )
                .await
                .unwrap();
        }
    }
    s.wait_queue_empty(&s.names.orders_queue_url, Duration::from_secs(60))
        .await;
    let after = audit(&s.gate, &s.store, &pid).await.unwrap();
    assert_eq!(after, before, "duplicates changed the books");
    assert_eq!(s.queue_depth(&s.names.orders_dlq_url).await, 0);
    for o in s.store.orders_of(&pid).await.unwrap() {
        assert_eq!(o.status, OrderStatus::Placed);
    }
    s.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_record_fails_alone_and_parks_untouched() {
    // Short visibility timeout: redeliveries come fast enough to watch.
    let s = TestStack::start("poison", 1).await;
    let p = unique("poison");
    demo::create_and_warm(&s.api, &p, 5, 1, 900, 1)
        .await
        .unwrap();

    // A batch straight into the consumer handler, on the real Redis and DynamoDB.
    let pid = ProductId::parse(p.as_str()).unwrap();
    let good = {
        let a = s.api.buy(&buy_body(&p, "u1", 1), None).await.unwrap();
        assert_eq!(a.status, 202);
        RequestId::parse(a.body["request_id"].as_str().unwrap()).unwrap()
    };
    demo::wait_drained(&s.gate, &pid, Duration::from_secs(60))
        .await
        .unwrap();
    let order = s.store.order(&good).await.unwrap().unwrap();
    let body = serde_json::to_string(&common::message_of(&order)).unwrap();
    let record = |id: &str, body: &str| {
        let mut m = SqsMessage::default();
        m.message_id = Some(id.into());
        m.body = Some(body.into());
        m
    };
    let mut event = SqsEvent::default();
    event.records = vec![
        record("good", &body),
        record("garbage", "{\"v\":1,\"oops\""),
    ];
    let app = s.app_with(|_| {});
    let resp = app.consumer.handle(event).await;
    let failed: Vec<&str> = resp
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(failed, vec!["garbage"]);

    // Through the queue: the runner leaves it undeleted until the redrive
    // policy (maxReceiveCount 5) moves it to the orders DLQ; compensation
    // cannot read it either, so it parks in the compensation DLQ, untouched.
    let sqs = aws_sdk_sqs::Client::new(&s.sdk);
    sqs.send_message()
        .queue_url(&s.names.orders_queue_url)
        .message_body("definitely not an order")
        .send()
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let parked = loop {
        let out = sqs
            .receive_message()
            .queue_url(&s.names.compensation_dlq_url)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        if let Some(m) = out.messages.unwrap_or_default().into_iter().next() {
            break m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "garbage never reached the parking lot"
        );
    };
    assert_eq!(parked.body.as_deref(), Some("definitely not an order"));
    assert_eq!(audit(&s.gate, &s.store, &pid).await.unwrap().placed, 1);
    s.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_every_dependency_and_metrics_are_exposed() {
    let s = TestStack::start("obs", 30).await;
    let health = s.api.call("GET", "/health", &[], None).await.unwrap();
    assert_eq!(health.status, 200, "{}", health.body);
    for dep in ["redis", "sqs", "dynamodb"] {
        assert_eq!(health.body[dep], "ok", "{}", health.body);
    }
    let p = unique("obs");
    demo::create_and_warm(&s.api, &p, 1, 1, 900, 1)
        .await
        .unwrap();
    assert_eq!(
        s.api
            .buy(&buy_body(&p, "u1", 1), None)
            .await
            .unwrap()
            .status,
        202
    );
    assert_eq!(
        s.api
            .buy(&buy_body(&p, "u2", 1), None)
            .await
            .unwrap()
            .status,
        410
    );
    let pid = ProductId::parse(p.as_str()).unwrap();
    demo::wait_drained(&s.gate, &pid, Duration::from_secs(30))
        .await
        .unwrap();
    // Drained means settled in Redis, which the consumer does after it
    // counts the placement (a settle by the sweeper may come first: then
    // the consumer's count follows).
    let mut text = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !text.contains("flashsale_orders_placed_total") && std::time::Instant::now() < deadline {
        let req = common::request("GET", "/metrics", None);
        let resp = s.running.app.route(req).await;
        text = String::from_utf8_lossy(resp.body().as_ref()).to_string();
        if !text.contains("flashsale_orders_placed_total") {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for needle in [
        "flashsale_admitted_total",
        "flashsale_rejected_total{reason=\"sold_out\"}",
        "flashsale_orders_placed_total",
        "flashsale_handler_seconds_bucket{handler=\"deduct\"",
        "flashsale_handler_seconds_bucket{handler=\"order_consumer\"",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    // Redis down: the runner says which dependency failed.
    let down = s.app_without_redis();
    let req = common::request("GET", "/health", None);
    let resp = down.route(req).await;
    assert_eq!(resp.status().as_u16(), 503);
    let body: Value = serde_json::from_slice(resp.body().as_ref()).unwrap();
    assert_ne!(body["redis"], "ok");
    assert_eq!(body["dynamodb"], "ok");
    s.running.stop().await;
}

/// Hole 11: a client that opens a connection and never finishes its
/// request must not hold it forever (1,500 such connections stayed open).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestStack::start("halfopen", 30).await;
    let mut stuck_headers = tokio::net::TcpStream::connect(s.running.addr)
        .await
        .unwrap();
    stuck_headers
        .write_all(b"POST /api/flash-sale/buy HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut stuck_body = tokio::net::TcpStream::connect(s.running.addr)
        .await
        .unwrap();
    stuck_body
        .write_all(b"POST /api/flash-sale/buy HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{")
        .await
        .unwrap();
    for (what, conn) in [("headers", &mut stuck_headers), ("body", &mut stuck_body)] {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(20), conn.read_to_end(&mut buf)).await;
        assert!(
            read.is_ok(),
            "a connection stuck in its {what} stayed open 20 s"
        );
    }
    s.running.stop().await;
}
