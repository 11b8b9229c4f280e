//! Races between the buyers of a product in stock buckets, interleaved
//! exactly: the simulated Redis runs the real scripts and lets other tasks
//! run before every command, so on one thread the order below is the only
//! one there is.

use shared::domain::{
    Admission, Currency, Product, ProductId, Purchase, Quantity, Refusal, RequestId, UserId,
};
use shared::ports::Warm;
use shared::ports::prelude::*;
use shared::redis::RedisGate;
use shared::redis::sim::SimRedis;
use time::OffsetDateTime;

fn product(id: &ProductId, stock: u32, buckets: u16) -> Product {
    let now = OffsetDateTime::now_utc();
    Product {
        product_id: id.clone(),
        name: "race".into(),
        stock,
        per_buyer_limit: 1,
        starts_at: now - time::Duration::seconds(1),
        ends_at: now + time::Duration::seconds(3600),
        price: 100,
        currency: Currency::parse("EUR").expect("a currency"),
        payment_window_secs: shared::domain::DEFAULT_PAYMENT_WINDOW_SECS,
        rebuy_after_release: false,
        rate_limits: Default::default(),
        paused: false,
        control_seq: 0,
        ledger_shards: 1,
        stock_buckets: buckets,
        waiting_room: None,
    }
}

fn purchase(p: &ProductId, user: &str) -> Purchase {
    Purchase {
        request_id: RequestId::new(p),
        product_id: p.clone(),
        user_id: UserId::parse(user).expect("a user id"),
        quantity: Quantity::new(1).expect("one unit"),
        idempotency_key: None,
        client_ip: None,
    }
}

/// A buyer id that lands in bucket `b` of `k`.
fn buyer_in(b: u16, k: u16, tag: &str) -> String {
    (0..)
        .map(|i| format!("{tag}{i}"))
        .find(|u| shared::buckets::bucket_of(u, k) == b)
        .expect("some id lands in every bucket")
}

/// A gate over a fresh simulated Redis on today's clock, and `p` warmed
/// in `k` buckets of `stock` units in all.
async fn sale(k: u16, stock: u32) -> (SimRedis, RedisGate, ProductId) {
    let redis = SimRedis::new(OffsetDateTime::now_utc().unix_timestamp() * 1000);
    let gate = RedisGate::simulated(redis.clone(), "fs");
    let p = ProductId::parse("race").expect("a product id");
    let warmed = gate
        .warm(&product(&p, stock, k), false, i64::from(stock), 0)
        .await
        .expect("warm");
    assert!(matches!(warmed, Warm::Warmed { .. }), "{warmed:?}");
    (redis, gate, p)
}

fn set(redis: &SimRedis, key: &str, units: i64) {
    redis
        .command(&[b"SET", key.as_bytes(), units.to_string().as_bytes()])
        .expect("SET");
}

fn get(redis: &SimRedis, key: &str) -> i64 {
    match redis.command(&[b"GET", key.as_bytes()]).expect("GET") {
        redis::Value::BulkString(b) => String::from_utf8_lossy(&b).parse().unwrap_or(0),
        _ => 0,
    }
}

/// Issue 30, item 1: shelves [0, 2]; buyer A of bucket 0 borrows 1 of
/// bucket 1's 2, and buyer C of bucket 0 takes it before A admits again.
/// A must ask bucket 1 again (it still holds 1), not answer 410.
#[tokio::test]
async fn a_borrowed_unit_taken_by_another_buyer_sends_the_borrower_asking_again() {
    let (redis, gate, p) = sale(2, 20).await;
    let (dry, full) = (
        gate.bucket_keys(&p, 0).stock(),
        gate.bucket_keys(&p, 1).stock(),
    );
    set(&redis, &dry, 0);
    set(&redis, &full, 2);
    let a = purchase(&p, &buyer_in(0, 2, "a"));
    let c = purchase(&p, &buyer_in(0, 2, "c"));
    let taker = async {
        // C asks the moment A's borrowed unit lands on bucket 0's shelf.
        while get(&redis, &dry) < 1 {
            tokio::task::yield_now().await;
        }
        gate.admit(&c).await.expect("C's admission")
    };
    let (for_a, for_c) = tokio::join!(gate.admit(&a), taker);
    assert!(matches!(for_c, Admission::Admitted { .. }), "C: {for_c:?}");
    let for_a = for_a.expect("A's admission");
    assert!(
        matches!(for_a, Admission::Admitted { .. }),
        "A: {for_a:?} with shelves [{}, {}]",
        get(&redis, &dry),
        get(&redis, &full)
    );
    assert_eq!((get(&redis, &dry), get(&redis, &full)), (0, 0));
    // Now every shelf is empty: the next buyer hears 410, from a census.
    let late = gate.admit(&purchase(&p, &buyer_in(1, 2, "late"))).await;
    assert_eq!(
        late.expect("admission"),
        Admission::Refused(Refusal::SoldOut)
    );
}

fn adopted(redis: &SimRedis, gate: &RedisGate, p: &ProductId, k: u16) -> i64 {
    (0..k)
        .map(|b| {
            let stats = gate.bucket_keys(p, b).stats();
            match redis
                .command(&[b"HGET", stats.as_bytes(), b"adopted_units"])
                .expect("HGET")
            {
                redis::Value::BulkString(v) => String::from_utf8_lossy(&v).parse().unwrap_or(0),
                _ => 0,
            }
        })
        .sum()
}

/// Two resyncs of a bucketed product at once (the admin's warm-up and the
/// sweeper), both reading before either corrects, with 2 confirmed returns
/// the shelves lack (a failover forgot them): they are offered and adopted
/// once. The second resync's plan no longer holds once the first ran.
#[tokio::test]
async fn two_resyncs_at_once_offer_a_forgotten_return_once() {
    let (redis, gate, p) = sale(2, 10).await;
    let ledger = shared::domain::Ledger {
        remaining: 12,
        released: 2,
        ..Default::default()
    };
    let (first, second) = tokio::join!(gate.resync(&p, &ledger, 0), gate.resync(&p, &ledger, 0));
    let total: i64 = (0..2)
        .map(|b| get(&redis, &gate.bucket_keys(&p, b).stock()))
        .sum();
    assert_eq!(
        (total, adopted(&redis, &gate, &p, 2)),
        (12, 2),
        "answers {first:?} and {second:?}"
    );
}
