//! The failure path on the real stack: faults injected into every port, the
//! outbox sweeper, DLQ compensation, the parking lot and its redrive, and
//! audits that prove the books balance.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use time::OffsetDateTime;

use common::{Options, TestStack, message_of, unique};
use shared::domain::{
    Admission, OrderMessage, OrderStatus, Product, ProductId, Purchase, Quantity, RequestId, UserId,
};
use shared::faults::FaultPlan;
use shared::ports::prelude::*;
use tools::audit::{Audit, audit};
use tools::demo;
use tools::loadtest::LoadSpec;

fn product(id: &str, stock: u32) -> Product {
    let now = OffsetDateTime::now_utc();
    Product {
        product_id: ProductId::parse(id).unwrap(),
        name: "Chaos item".into(),
        stock,
        per_buyer_limit: 1,
        starts_at: now - time::Duration::seconds(1),
        ends_at: now + time::Duration::hours(1),
        price: 100,
        currency: shared::domain::Currency::parse("EUR").unwrap(),
        payment_window_secs: shared::domain::DEFAULT_PAYMENT_WINDOW_SECS,
        rebuy_after_release: false,
        rate_limits: Default::default(),
        paused: false,
        control_seq: 0,
        ledger_shards: 1,
        stock_buckets: 1,
        waiting_room: None,
    }
}

/// Creates and warms through the plain adapters, around any injected faults.
async fn create_and_warm(s: &TestStack, id: &str, stock: u32) -> ProductId {
    let p = product(id, stock);
    assert!(s.store.create_product(&p).await.unwrap());
    s.gate.warm(&p, false, i64::from(stock), 0).await.unwrap();
    p.product_id
}

/// Admits a request in Redis without enqueueing it: an order whose message
/// went nowhere (or that the consumer could not place).
async fn admit_silently(s: &TestStack, product: &ProductId, user: &str) -> OrderMessage {
    let purchase = Purchase {
        request_id: RequestId::new(product),
        product_id: product.clone(),
        user_id: UserId::parse(user).unwrap(),
        quantity: Quantity::new(1).unwrap(),
        idempotency_key: None,
        client_ip: None,
    };
    let Admission::Admitted {
        admitted_at_ms,
        sale_ends_at_ms,
    } = s.gate.admit(&purchase).await.unwrap()
    else {
        panic!("{user} not admitted")
    };
    OrderMessage::new(&purchase, admitted_at_ms, sale_ends_at_ms)
}

async fn send_raw(s: &TestStack, queue_url: &str, msg: &OrderMessage) {
    aws_sdk_sqs::Client::new(&s.sdk)
        .send_message()
        .queue_url(queue_url)
        .message_body(serde_json::to_string(msg).unwrap())
        .send()
        .await
        .unwrap();
}

/// Waits for pending requests and queues to drain, then for the sweeper's
/// resync to make the books balance (or gives up and returns them).
async fn settle_books(s: &TestStack, p: &ProductId, timeout: Duration) -> Audit {
    let sqs = aws_sdk_sqs::Client::new(&s.sdk);
    let queues = [
        s.names.orders_queue_url.as_str(),
        s.names.orders_dlq_url.as_str(),
    ];
    demo::wait_settled(&s.gate, Some(&sqs), &queues, p, timeout)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let books = audit(&s.gate, &s.store, p).await.unwrap();
        if books.balanced() || Instant::now() > deadline {
            return books;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chaos_sale_balances_the_books() {
    let faults = Arc::new(
        FaultPlan::parse("store.put:0.05,queue.send:0.02,consumer.crash_after_write:0.01").unwrap(),
    );
    let s = TestStack::start_with(
        "chaos",
        Options {
            visibility_timeout: 2,
            sweep_after_ms: 3_000,
            // Beyond 2 s visibility x 5 receives.
            resend_after_ms: 15_000,
            faults: faults.clone(),
            pollers: 4,
            ..Options::default()
        },
    )
    .await;
    let id = unique("chaos");
    let p = create_and_warm(&s, &id, 500).await;

    // Ten orders that could not be placed go straight to the orders DLQ.
    let mut lost = Vec::new();
    for i in 0..10 {
        let msg = admit_silently(&s, &p, &format!("lost-{i}")).await;
        send_raw(&s, &s.names.orders_dlq_url, &msg).await;
        lost.push(msg.request_id);
    }

    // The rush: 3,000 buyers, each twice; between the waves Redis loses 20
    // acknowledged decrements (a failover to a lagging replica).
    let spec = LoadSpec {
        product: id.clone(),
        buyers: 3000,
        requests_per_buyer: 2,
        repeat_share: 0.5,
        concurrency: 64,
        ramp: Duration::ZERO,
        progress: false,
    };
    let (_, report) = demo::sale(&s.api, &spec, Some(&s.gate), 20).await.unwrap();
    assert_eq!(report.replays_mismatched, 0);

    // Duplicate deliveries of placed orders, to the consumer and to
    // compensation (which must not restock a sold unit).
    demo::wait_drained(&s.gate, &p, Duration::from_secs(180))
        .await
        .unwrap();
    let placed: Vec<OrderMessage> = s
        .store
        .orders_of(&p)
        .await
        .unwrap()
        .iter()
        .filter(|o| o.status == OrderStatus::Placed)
        .map(message_of)
        .collect();
    for msg in placed.iter().take(50) {
        send_raw(&s, &s.names.orders_queue_url, msg).await;
    }
    for msg in placed.iter().skip(50).take(10) {
        send_raw(&s, &s.names.orders_dlq_url, msg).await;
    }

    let books = settle_books(&s, &p, Duration::from_secs(180)).await;
    let conflicts = s.running.app.consumer.store.inner.transaction_conflicts();
    println!(
        "chaos figures: {books} faults_injected={} admitted_202={} transaction_conflicts={conflicts}\n{}",
        faults.injected(),
        report.admitted.len(),
        report.table()
    );
    assert!(books.placed <= 500);
    assert_eq!(books.placed_units + books.stock_left, 500, "{books}");
    assert_eq!(books.oversold, 0);
    assert_eq!(books.duplicate_buyers, 0);
    assert_eq!(books.pending, 0);
    assert_eq!(
        books.restocked, books.compensated,
        "each compensation restocked once"
    );
    assert!(books.balanced(), "{:?}", books.problems());
    assert!(faults.injected() > 0);

    // Every admitted request id has exactly one decided order.
    let decided: HashSet<RequestId> = s
        .store
        .orders_of(&p)
        .await
        .unwrap()
        .into_iter()
        .map(|o| {
            assert_ne!(o.status, OrderStatus::Pending);
            o.request_id
        })
        .collect();
    assert_eq!(decided.len() as i64, books.admitted);
    for (_, id) in &report.admitted {
        assert!(
            decided.contains(&RequestId::parse(id).unwrap()),
            "{id} lost"
        );
    }
    for id in &lost {
        assert!(decided.contains(id), "{id} lost");
    }
    // The Redis loss was caught: by the DynamoDB stock ledger (rejections)
    // or, before anyone bought a phantom unit, by the resync.
    let drift: Option<i64> = s
        .gate
        .command(
            redis::cmd("HGET")
                .arg(s.gate.keys(&p).stats())
                .arg("resync_drift"),
        )
        .await
        .unwrap();
    assert!(
        books.rejected >= 1 || drift.unwrap_or(0) < 0,
        "{books} drift={drift:?}"
    );
    s.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_republishes_what_was_never_sent() {
    let s = TestStack::start_with(
        "sweep",
        Options {
            sweep_after_ms: 1_000,
            ..Options::default()
        },
    )
    .await;
    let id = unique("sweep");
    let p = create_and_warm(&s, &id, 5).await;
    // A deduct that died between admission and send: only Redis knows...
    let msg = admit_silently(&s, &p, "u1").await;
    assert_eq!(s.queue_depth(&s.names.orders_queue_url).await, 0);
    // ...and the sweeper publishes it once it is overdue; the order lands.
    demo::wait_drained(&s.gate, &p, Duration::from_secs(30))
        .await
        .unwrap();
    let order = s.store.order(&msg.request_id).await.unwrap().unwrap();
    assert_eq!(order.status, OrderStatus::Placed);
    let books = settle_books(&s, &p, Duration::from_secs(30)).await;
    assert!(books.balanced(), "{books} {:?}", books.problems());
    s.running.stop().await;
}

/// Hole 2: a deduct whose SQS send fails answers 503 and puts the unit
/// back, with the fate decided in DynamoDB; it never answers 202.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_send_is_a_503_with_the_unit_back() {
    let s = TestStack::start("unsent", 30).await;
    let id = unique("unsent");
    let p = create_and_warm(&s, &id, 5).await;
    let broken = s.app_with(|c| {
        c.faults = Arc::new(FaultPlan::parse("queue.send:1").unwrap());
    });
    let body = json!({ "product_id": id, "quantity": 1, "user_id": "u1" }).to_string();
    let req = common::request("POST", "/api/flash-sale/buy", Some(body));
    let resp = broken.route(req).await;
    assert_eq!(resp.status().as_u16(), 503);
    let stats = s.gate.stats(&p).await.unwrap().unwrap();
    assert_eq!(
        (stats.stock_left, stats.pending, stats.compensated),
        (5, 0, 1)
    );
    let orders = s.store.orders_of(&p).await.unwrap();
    assert_eq!(orders.len(), 1);
    assert_eq!(orders[0].status, OrderStatus::Compensated);
    let books = audit(&s.gate, &s.store, &p).await.unwrap();
    assert!(books.balanced(), "{books} {:?}", books.problems());
    s.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_compensations_are_listed_and_redriven() {
    let s = TestStack::start("park", 30).await;
    let id = unique("park");
    let p = create_and_warm(&s, &id, 5).await;
    // Three orders whose compensation failed too often sit in the parking
    // lot, next to a message nobody can read.
    let mut msgs = Vec::new();
    for i in 0..3 {
        let msg = admit_silently(&s, &p, &format!("u{i}")).await;
        send_raw(&s, &s.names.compensation_dlq_url, &msg).await;
        msgs.push(msg);
    }
    aws_sdk_sqs::Client::new(&s.sdk)
        .send_message()
        .queue_url(&s.names.compensation_dlq_url)
        .message_body("garbage")
        .send()
        .await
        .unwrap();
    let sqs = aws_sdk_sqs::Client::new(&s.sdk);
    let parked = tools::queues::parked(&sqs, &s.names.compensation_dlq_url, &s.store, 100)
        .await
        .unwrap();
    assert_eq!(parked.len(), 4);
    assert_eq!(
        parked
            .iter()
            .filter(|p| p.reason.starts_with("poison"))
            .count(),
        1
    );
    assert_eq!(
        parked
            .iter()
            .filter(|p| p.reason.starts_with("no order decided"))
            .count(),
        3
    );
    // Listing consumed nothing.
    assert_eq!(s.queue_depth(&s.names.compensation_dlq_url).await, 4);

    let moved = tools::queues::redrive(
        &s.sdk,
        &s.names.compensation_dlq_url,
        &s.names.orders_dlq_url,
        false,
    )
    .await
    .unwrap();
    assert_eq!(moved, 4);
    // Compensation decides the three, then puts their units back in Redis
    // (its second step: the order reads COMPENSATED a moment before the
    // restock lands, so wait for the books, not the orders); the garbage
    // parks again.
    let deadline = Instant::now() + Duration::from_secs(60);
    let books = loop {
        let books = audit(&s.gate, &s.store, &p).await.unwrap();
        if books.compensated == 3 && books.restocked == 3 {
            break books;
        }
        assert!(
            Instant::now() < deadline,
            "redriven compensations not processed: {books}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(
        (books.compensated, books.restocked, books.stock_left),
        (3, 3, 5)
    );
    assert!(books.balanced(), "{:?}", books.problems());
    s.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_exits_non_zero_when_the_books_do_not_balance() {
    if common::embedded_dynamodb() {
        eprintln!("skipped: the reconcile process cannot reach a DynamoDB embedded in this one");
        return;
    }
    let s = TestStack::start("recon", 30).await;
    let id = unique("recon");
    demo::create_and_warm(&s.api, &id, 3, 1, 900, 1)
        .await
        .unwrap();
    let a = s
        .api
        .buy(&json!({ "product_id": id, "user_id": "u1" }), None)
        .await
        .unwrap();
    assert_eq!(a.status, 202);
    let p = ProductId::parse(id.as_str()).unwrap();
    demo::wait_drained(&s.gate, &p, Duration::from_secs(30))
        .await
        .unwrap();
    let reconcile = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_flashsale"))
            .args(["reconcile", "--product", &id])
            .env("FLASHSALE_TABLE", &s.names.table)
            .env("FLASHSALE_REDIS_NAMESPACE", &s.config.redis.namespace)
            .output()
            .unwrap()
    };
    let ok = reconcile();
    let out = String::from_utf8_lossy(&ok.stdout).to_string();
    assert!(ok.status.success(), "{out}");
    assert!(
        out.contains("placed=1 stock_left=2") && out.contains("balanced=yes"),
        "{out}"
    );
    // Redis loses a decrement while the runner's sweeper is stopped.
    s.running.stop().await;
    demo::lose_decrements(&s.gate, &id, 1).await.unwrap();
    let bad = reconcile();
    let out = String::from_utf8_lossy(&bad.stdout).to_string();
    assert_eq!(bad.status.code(), Some(1), "{out}");
    assert!(
        out.contains("balanced=no") && out.contains("unbalanced:"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_resyncs_a_shelf_that_lost_decrements() {
    let s = TestStack::start("resync", 30).await;
    let id = unique("resync");
    demo::create_and_warm(&s.api, &id, 5, 1, 900, 1)
        .await
        .unwrap();
    for user in ["u1", "u2"] {
        let a = s
            .api
            .buy(&json!({ "product_id": id, "user_id": user }), None)
            .await
            .unwrap();
        assert_eq!(a.status, 202);
    }
    let p = ProductId::parse(id.as_str()).unwrap();
    demo::wait_drained(&s.gate, &p, Duration::from_secs(30))
        .await
        .unwrap();
    // After the rush Redis forgets three decrements; nobody buys them.
    demo::lose_decrements(&s.gate, &id, 3).await.unwrap();
    assert_eq!(s.gate.stats(&p).await.unwrap().unwrap().stock_left, 6);
    let books = settle_books(&s, &p, Duration::from_secs(30)).await;
    assert_eq!(
        (books.placed, books.stock_left, books.ledger_remaining),
        (2, 3, 3)
    );
    assert!(books.balanced(), "{:?}", books.problems());
    s.running.stop().await;
}

/// Hole 11: with the runner's own 5 s long poll on an idle queue, an SDK
/// attempt timeout shorter than the poll abandoned receives that LocalStack
/// still answered: the message went invisible for the visibility timeout and
/// spent a receive. Spaced purchases must each be placed at once, on their
/// first receive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spaced_purchases_on_an_idle_queue_are_placed_on_their_first_receive() {
    let s = TestStack::start_with(
        "idle",
        Options {
            wait_time_secs: 5,
            pollers: 1,
            ..Options::default()
        },
    )
    .await;
    let id = unique("idle");
    let p = create_and_warm(&s, &id, 5).await;
    for i in 0..3 {
        // Idle long enough for a poll to outlive an old 3 s attempt timeout.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let body = json!({ "product_id": id, "quantity": 1, "user_id": format!("u{i}") });
        let answer = s.api.buy(&body, None).await.unwrap();
        assert_eq!(answer.status, 202, "{}", answer.body);
        let request_id = RequestId::parse(answer.body["request_id"].as_str().unwrap()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let placed = s
                .store
                .order(&request_id)
                .await
                .unwrap()
                .is_some_and(|o| o.status == OrderStatus::Placed);
            if placed {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "purchase {i} not placed within 10 s: its message went to an abandoned poll"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let books = settle_books(&s, &p, Duration::from_secs(30)).await;
    assert_eq!((books.placed, books.compensated), (3, 0), "{books}");
    s.running.stop().await;
}

/// The sweeper's product list from DynamoDB: sales not long over, by their end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_lists_the_sales_not_long_over() {
    let s = TestStack::start("live", 30).await;
    let live = product(&unique("live"), 5);
    let mut over = product(&unique("over"), 5);
    over.starts_at = OffsetDateTime::now_utc() - time::Duration::days(3);
    over.ends_at = OffsetDateTime::now_utc() - time::Duration::days(2);
    assert!(s.store.create_product(&live).await.unwrap());
    assert!(s.store.create_product(&over).await.unwrap());
    let hour_ago = shared::domain::unix_ms(OffsetDateTime::now_utc()) - 3_600_000;
    let listed = s.store.live_products(hour_ago).await.unwrap();
    assert!(listed.contains(&live.product_id), "{listed:?}");
    assert!(!listed.contains(&over.product_id), "{listed:?}");
    s.running.stop().await;
}
