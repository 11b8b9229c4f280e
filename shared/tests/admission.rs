//! The Redis scripts on a real Redis server (started by `make test`).

use std::collections::BTreeMap;
use std::time::Duration;

use shared::domain::{
    Admission, IdempotencyKey, OrderMessage, OrderStatus, Product, ProductId, Purchase, Quantity,
    RateLimit, RateLimits, Refusal, RequestId, UserId,
};
use shared::ports::prelude::*;
use shared::ports::{SendMark, Settled, Warm};
use shared::redis::{RedisGate, RedisSettings, Want};
use time::OffsetDateTime;

fn settings(url: String) -> RedisSettings {
    RedisSettings {
        url,
        cluster: false,
        response_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(2),
        rate_limits: Default::default(),
        namespace: "fs-test".into(),
        auth_token: None,
    }
}

fn gate() -> RedisGate {
    let url = std::env::var("FLASHSALE_REDIS_URL").expect(
        "FLASHSALE_REDIS_URL is not set: run these tests through `make test` \
         (or localstack/with-stack.sh cargo test), which starts redis-server",
    );
    RedisGate::new(settings(url))
}

fn unique(prefix: &str) -> ProductId {
    let id = uuid::Uuid::new_v4().simple().to_string();
    ProductId::parse(format!("{prefix}-{}", &id[..12])).unwrap()
}

fn product(id: &ProductId, stock: u32, limit: u32, start_in_secs: i64) -> Product {
    let now = OffsetDateTime::now_utc();
    Product {
        product_id: id.clone(),
        name: "test".into(),
        stock,
        per_buyer_limit: limit,
        starts_at: now + time::Duration::seconds(start_in_secs),
        ends_at: now + time::Duration::seconds(start_in_secs + 3600),
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

async fn warmed(stock: u32, limit: u32) -> (RedisGate, ProductId) {
    let g = gate();
    let p = unique("adm");
    let w = g
        .warm(&product(&p, stock, limit, -1), false, i64::from(stock), 0)
        .await
        .unwrap();
    assert_eq!(
        w,
        Warm::Warmed {
            stock_left: i64::from(stock)
        }
    );
    (g, p)
}

/// A purchase with the id deduct gives it (derived when keyed).
fn purchase(p: &ProductId, user: &str, qty: u32, key: Option<&str>) -> Purchase {
    let user_id = UserId::parse(user).unwrap();
    let idempotency_key = key.map(|k| IdempotencyKey::parse(k).unwrap());
    Purchase {
        request_id: match &idempotency_key {
            Some(k) => RequestId::derived(p, &user_id, k),
            None => RequestId::new(p),
        },
        product_id: p.clone(),
        user_id,
        quantity: Quantity::new(qty).unwrap(),
        idempotency_key,
        client_ip: None,
    }
}

/// A ledger read of `units` remaining, nothing released or added.
fn remaining(units: i64) -> shared::domain::Ledger {
    shared::domain::Ledger {
        remaining: units,
        ..Default::default()
    }
}

/// Admits and returns the order message deduct would send.
async fn admitted(g: &RedisGate, p: &Purchase) -> OrderMessage {
    match g.admit(p).await.unwrap() {
        Admission::Admitted {
            admitted_at_ms,
            sale_ends_at_ms,
        } => OrderMessage::new(p, admitted_at_ms, sale_ends_at_ms),
        other => panic!("{} not admitted: {other:?}", p.user_id),
    }
}

/// Every key of the product with its type and content, to prove a refused
/// request wrote nothing.
async fn snapshot(g: &RedisGate, p: &ProductId) -> BTreeMap<String, String> {
    let keys: Vec<String> = g
        .command(redis::cmd("KEYS").arg(format!("{}*", g.keys(p).meta().trim_end_matches("meta"))))
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for k in keys {
        let dump: Vec<u8> = g.command(redis::cmd("DUMP").arg(&k)).await.unwrap();
        let ttl: i64 = g.command(redis::cmd("TTL").arg(&k)).await.unwrap();
        out.insert(k, format!("{dump:?} ttl>0:{}", ttl > 0));
    }
    out
}

#[tokio::test]
async fn concurrent_buyers_never_get_past_the_stock() {
    let (g, p) = warmed(10, 1).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..60 {
        let (g, p) = (g.clone(), p.clone());
        tasks.spawn(async move { g.admit(&purchase(&p, &format!("u{i}"), 1, None)).await });
    }
    let mut admitted = 0;
    let mut sold_out = 0;
    while let Some(r) = tasks.join_next().await {
        match r.unwrap().unwrap() {
            Admission::Admitted { .. } => admitted += 1,
            Admission::Refused(Refusal::SoldOut) => sold_out += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((admitted, sold_out), (10, 50));
    let stats = g.stats(&p).await.unwrap().unwrap();
    assert_eq!(
        (stats.stock_left, stats.admitted, stats.pending),
        (0, 10, 10)
    );
}

#[tokio::test]
async fn refusals_change_nothing() {
    let (g, p) = warmed(2, 2).await;
    let first = purchase(&p, "alice", 1, Some("k1"));
    assert!(matches!(
        g.admit(&first).await.unwrap(),
        Admission::Admitted { .. }
    ));
    let before = snapshot(&g, &p).await;
    let cases = [
        (
            purchase(&p, "alice", 1, Some("k2")),
            Refusal::AlreadyPurchased,
        ),
        (purchase(&p, "bob", 3, Some("k3")), Refusal::LimitExceeded),
        // Same key, another quantity: the IETF draft's 422.
        (purchase(&p, "alice", 2, Some("k1")), Refusal::KeyReused),
    ];
    for (req, expected) in cases {
        assert_eq!(
            g.admit(&req).await.unwrap(),
            Admission::Refused(expected),
            "{:?}",
            req.user_id
        );
        assert_eq!(
            snapshot(&g, &p).await,
            before,
            "{expected:?} wrote to Redis"
        );
    }
    // Sold out: answered after every refusal that does not depend on stock
    // (a buyer who already has a unit hears that).
    admitted(&g, &purchase(&p, "carol", 1, Some("k4"))).await;
    let before = snapshot(&g, &p).await;
    for (user, refusal) in [
        ("dave", Refusal::SoldOut),
        ("alice", Refusal::AlreadyPurchased),
    ] {
        assert_eq!(
            g.admit(&purchase(&p, user, 1, Some("k5"))).await.unwrap(),
            Admission::Refused(refusal)
        );
    }
    assert_eq!(snapshot(&g, &p).await, before, "SoldOut wrote to Redis");
    let unknown = unique("nope");
    assert_eq!(
        g.admit(&purchase(&unknown, "bob", 1, None)).await.unwrap(),
        Admission::Refused(Refusal::UnknownProduct)
    );
    assert!(snapshot(&g, &unknown).await.is_empty());
}

#[tokio::test]
async fn idempotency_keys_replay_per_buyer() {
    let (g, p) = warmed(5, 1).await;
    let first = purchase(&p, "alice", 1, Some("same"));
    let msg = admitted(&g, &first).await;
    let again = purchase(&p, "alice", 1, Some("same"));
    assert_eq!(
        g.admit(&again).await.unwrap(),
        Admission::Replay {
            admitted_at_ms: msg.admitted_at,
            sale_ends_at_ms: msg.sale_ends_at,
            status: OrderStatus::Pending,
            sent: false,
        }
    );
    g.mark_sent(&first.request_id, first.user_id.as_str(), SendMark::Sent)
        .await
        .unwrap();
    assert!(matches!(
        g.admit(&again).await.unwrap(),
        Admission::Replay { sent: true, .. }
    ));
    // Another buyer's identical key is theirs alone.
    let bob = purchase(&p, "bob", 1, Some("same"));
    assert!(matches!(
        g.admit(&bob).await.unwrap(),
        Admission::Admitted { .. }
    ));
    assert_eq!(g.stats(&p).await.unwrap().unwrap().stock_left, 3);
}

#[tokio::test]
async fn sale_window_uses_server_time() {
    let g = gate();
    let early = unique("early");
    let soon = product(&early, 5, 1, 3600);
    g.warm(&soon, false, 5, 0).await.unwrap();
    // The refusal names the start, to the millisecond.
    let starts_at_ms = shared::domain::unix_ms(soon.starts_at);
    assert_eq!(
        g.admit(&purchase(&early, "u", 1, None)).await.unwrap(),
        Admission::NotStarted { starts_at_ms }
    );
    let late = unique("late");
    g.warm(&product(&late, 5, 1, -7200), false, 5, 0)
        .await
        .unwrap();
    assert_eq!(
        g.admit(&purchase(&late, "u", 1, None)).await.unwrap(),
        Admission::Refused(Refusal::SaleEnded)
    );
}

#[tokio::test]
async fn rewarm_needs_force_once_started_and_never_recreates_sold_units() {
    let (g, p) = warmed(5, 1).await;
    g.admit(&purchase(&p, "u1", 1, None)).await.unwrap();
    g.admit(&purchase(&p, "u2", 1, None)).await.unwrap();
    let def = product(&p, 5, 1, -1);
    assert_eq!(
        g.warm(&def, false, 5, 0).await.unwrap(),
        Warm::AlreadyStarted { stock_left: 3 }
    );
    // Two pending, the ledger untouched: 5 - 2.
    assert_eq!(
        g.warm(&def, true, 5, 0).await.unwrap(),
        Warm::Warmed { stock_left: 3 }
    );
    // Before the start a re-warm is free.
    let later = unique("later");
    g.warm(&product(&later, 5, 1, 3600), false, 5, 0)
        .await
        .unwrap();
    assert_eq!(
        g.warm(&product(&later, 7, 1, 3600), false, 7, 0)
            .await
            .unwrap(),
        Warm::Warmed { stock_left: 7 }
    );
}

/// Hole 10: after Redis lost its state, a forced re-warm must not put sold
/// units back on sale: the shelf comes from the ledger, not from Redis.
#[tokio::test]
async fn forced_rewarm_after_state_loss_follows_the_ledger() {
    let (g, p) = warmed(5, 1).await;
    // Three units were sold (ledger 2); then Redis lost everything.
    let k = g.keys(&p);
    g.command::<()>(redis::cmd("DEL").arg(k.stats()).arg(k.pending()))
        .await
        .unwrap();
    assert_eq!(
        g.warm(&product(&p, 5, 1, -1), true, 2, 0).await.unwrap(),
        Warm::Warmed { stock_left: 2 }
    );
}

/// Hole 4: asking for more than is left, with some left, is not "sold out".
#[tokio::test]
async fn too_few_left_is_short_not_sold_out() {
    let (g, p) = warmed(2, 3).await;
    assert_eq!(
        g.admit(&purchase(&p, "greedy", 3, None)).await.unwrap(),
        Admission::Short { stock_left: 2 }
    );
    admitted(&g, &purchase(&p, "u1", 2, None)).await;
    assert_eq!(
        g.admit(&purchase(&p, "u2", 1, None)).await.unwrap(),
        Admission::Refused(Refusal::SoldOut)
    );
}

/// Hole 6: a client that re-sends the same admission (its connection
/// dropped) gets the first answer, and only one unit is taken.
#[tokio::test]
async fn the_same_admission_twice_is_answered_not_repeated() {
    let (g, p) = warmed(5, 1).await;
    let a = purchase(&p, "alice", 1, None);
    let first = g.admit(&a).await.unwrap();
    assert!(matches!(first, Admission::Admitted { .. }));
    assert_eq!(g.admit(&a).await.unwrap(), first);
    let stats = g.stats(&p).await.unwrap().unwrap();
    assert_eq!(
        (stats.stock_left, stats.admitted, stats.pending_units),
        (4, 1, 1)
    );
}

/// Hole 3: after Redis forgot a keyed admission (failover), its replay is
/// admitted again under the same id, so DynamoDB's fate item absorbs it.
#[tokio::test]
async fn a_keyed_replay_after_a_failover_lands_on_the_same_request() {
    let (g, p) = warmed(5, 1).await;
    let a = purchase(&p, "alice", 1, Some("k"));
    admitted(&g, &a).await;
    let k = g.keys(&p);
    g.command::<()>(
        redis::cmd("DEL")
            .arg(k.req(&a.request_id))
            .arg(k.buyers())
            .arg(k.pending()),
    )
    .await
    .unwrap();
    let again = purchase(&p, "alice", 1, Some("k"));
    let msg = admitted(&g, &again).await;
    assert_eq!(msg.request_id, a.request_id);
}

#[tokio::test]
async fn settle_is_forward_only_and_restock_happens_once() {
    let (g, p) = warmed(2, 1).await;
    let a = purchase(&p, "alice", 1, None);
    let msg = admitted(&g, &a).await;
    assert!(g.restock(&msg).await.unwrap());
    assert!(!g.restock(&msg).await.unwrap());
    assert!(!g.settle(&msg, Settled::Placed).await.unwrap());
    let view = g.request(&a.request_id, "alice").await.unwrap().unwrap();
    assert_eq!(view.status, OrderStatus::Compensated);
    let stats = g.stats(&p).await.unwrap().unwrap();
    assert_eq!(
        (
            stats.stock_left,
            stats.compensated,
            stats.placed,
            stats.pending,
            stats.pending_units
        ),
        (2, 1, 0, 0, 0)
    );
    // The buyer was released and may buy again.
    assert!(matches!(
        g.admit(&purchase(&p, "alice", 1, None)).await.unwrap(),
        Admission::Admitted { .. }
    ));
}

/// Issue 18, hole C: an order the ledger rejected as out of stock holds no
/// unit and no DynamoDB guard, so its buyer may buy again (units come back
/// by cancels and expiry); a buyer rejected for holding another order stays
/// taken.
#[tokio::test]
async fn a_buyer_rejected_out_of_stock_may_buy_again_one_holding_an_order_may_not() {
    let (g, p) = warmed(4, 1).await;
    let alice = admitted(&g, &purchase(&p, "alice", 1, None)).await;
    let bob = admitted(&g, &purchase(&p, "bob", 1, None)).await;
    assert!(
        g.settle(&alice, Settled::Rejected { free_buyer: true })
            .await
            .unwrap()
    );
    assert!(
        g.settle(&bob, Settled::Rejected { free_buyer: false })
            .await
            .unwrap()
    );
    assert!(matches!(
        g.admit(&purchase(&p, "alice", 1, None)).await.unwrap(),
        Admission::Admitted { .. }
    ));
    assert_eq!(
        g.admit(&purchase(&p, "bob", 1, None)).await.unwrap(),
        Admission::Refused(Refusal::AlreadyPurchased)
    );
}

/// Hole 7: restock is idempotent by the request's own state, not by a
/// marker that expires: a request Redis does not hold as pending (forgotten
/// in a failover, its decrement with it) puts nothing back, however late.
#[tokio::test]
async fn restock_of_a_request_redis_forgot_puts_nothing_back() {
    let (g, p) = warmed(3, 1).await;
    let msg = admitted(&g, &purchase(&p, "alice", 1, None)).await;
    // The failover: the admission is gone, decrement and all.
    let k = g.keys(&p);
    g.command::<()>(
        redis::cmd("DEL")
            .arg(k.req(&msg.request_id))
            .arg(k.pending())
            .arg(k.buyers())
            .arg(k.stats()),
    )
    .await
    .unwrap();
    g.command::<()>(redis::cmd("SET").arg(k.stock()).arg(3))
        .await
        .unwrap();
    assert!(!g.restock(&msg).await.unwrap());
    assert!(!g.restock(&msg).await.unwrap());
    let stats = g.stats(&p).await.unwrap().unwrap();
    assert_eq!((stats.stock_left, stats.compensated), (3, 1));
    let view = g
        .request(&msg.request_id, msg.user_id.as_str())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(view.status, OrderStatus::Compensated);
    let ttl: i64 = g
        .command(redis::cmd("TTL").arg(k.req(&msg.request_id)))
        .await
        .unwrap();
    assert!(
        ttl > 32 * 24 * 3600,
        "state outlives every queue retention: {ttl}"
    );
}

#[tokio::test]
async fn unreachable_redis_is_a_transient_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let g = RedisGate::new(settings(format!("redis://127.0.0.1:{port}")));
    let p = unique("down");
    let err = g.admit(&purchase(&p, "u", 1, None)).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
}

/// Hole 1: the shelf heals from the ledger while requests are in flight:
/// ledger - pending units - units placed since the ledger was read.
#[tokio::test]
async fn resync_heals_a_busy_shelf() {
    let (g, p) = warmed(10, 2).await;
    let a = admitted(&g, &purchase(&p, "alice", 2, None)).await;
    admitted(&g, &purchase(&p, "bob", 1, None)).await;
    // Redis lost 4 decrements: it shows 11 - 3 = 7 + 4.
    let k = g.keys(&p);
    g.command::<()>(redis::cmd("INCRBY").arg(k.stock()).arg(4))
        .await
        .unwrap();
    // The ledger says 10 left (nothing placed yet), 3 units pending.
    assert_eq!(g.resync(&p, &remaining(10), 0).await.unwrap(), Some(-4));
    assert_eq!(g.stats(&p).await.unwrap().unwrap().stock_left, 7);
    // Alice is placed in DynamoDB (ledger 8) and settled after the sweeper
    // read the ledger (10) and placed_units (0): counted as placed since.
    g.settle(&a, Settled::Placed).await.unwrap();
    assert_eq!(g.resync(&p, &remaining(10), 0).await.unwrap(), Some(0));
    assert_eq!(g.resync(&p, &remaining(8), 2).await.unwrap(), Some(0));
    // A stale fence (Redis went back in time) changes nothing.
    assert_eq!(g.resync(&p, &remaining(8), 5).await.unwrap(), None);
    assert_eq!(g.stats(&p).await.unwrap().unwrap().stock_left, 7);
}

/// Issue 18: a sweep racing a release hid its units (the chaos demo ended a
/// unit short, the drift flipping -1, +1 as orders expired). A release
/// records its units in the ledger, then puts them on the shelf, then
/// confirms; the resync took the ledger less `releasing`, so a shelf that
/// already held them lost them until a later sweep. Now the units the
/// ledger got back are fenced against those this Redis put back.
#[tokio::test]
async fn a_resync_racing_a_release_neither_hides_nor_doubles_its_units() {
    use shared::domain::Ledger;
    let (g, p) = warmed(10, 2).await;
    let a = admitted(&g, &purchase(&p, "alice", 2, None)).await;
    g.settle(&a, Settled::Placed).await.unwrap();
    let fence = g.stats(&p).await.unwrap().unwrap().fence();
    let shelf = async || g.stats(&p).await.unwrap().unwrap().stock_left;
    // Placed: the ledger holds 8, the shelf shows 8.
    let placed = remaining(8);
    // Alice cancels: the ledger took her 2 back (releasing until confirmed).
    let recorded = Ledger {
        remaining: 10,
        releasing: 2,
        released: 2,
        ..Default::default()
    };
    // A sweep that read the ledger then, before the shelf step: 8 stays.
    assert_eq!(g.resync(&p, &recorded, fence).await.unwrap(), Some(0));
    assert_eq!(shelf().await, 8);
    // The shelf step runs (2 back on the shelf).
    let order = shared::domain::RequestView {
        request_id: a.request_id.clone(),
        product_id: a.product_id.clone(),
        user_id: a.user_id.clone(),
        quantity: a.quantity,
        status: OrderStatus::Placed,
        updated_at: OffsetDateTime::now_utc(),
        reservation: None,
    };
    assert!(g.release(&order, OrderStatus::Cancelled).await.unwrap());
    assert_eq!(shelf().await, 10);
    // Sweeps that read the ledger before the release, or after it but
    // before its confirmation, leave the 10 alone.
    assert_eq!(g.resync(&p, &placed, fence).await.unwrap(), Some(0));
    assert_eq!(g.resync(&p, &recorded, fence).await.unwrap(), Some(0));
    // Confirmed: still 10.
    let confirmed = Ledger {
        releasing: 0,
        ..recorded.clone()
    };
    assert_eq!(g.resync(&p, &confirmed, fence).await.unwrap(), Some(0));
    assert_eq!(shelf().await, 10);
    // A failover forgot the shelf step after the confirmation: offered again.
    let k = g.keys(&p);
    g.command::<()>(redis::cmd("DECRBY").arg(k.stock()).arg(2))
        .await
        .unwrap();
    g.command::<()>(
        redis::cmd("HINCRBY")
            .arg(k.stats())
            .arg("released_units")
            .arg(-2),
    )
    .await
    .unwrap();
    assert_eq!(g.resync(&p, &confirmed, fence).await.unwrap(), Some(2));
    assert_eq!(g.resync(&p, &confirmed, fence).await.unwrap(), Some(0));
    // The forgotten count (adopted) does not hide the next release in flight.
    let b = admitted(&g, &purchase(&p, "bob", 1, None)).await;
    g.settle(&b, Settled::Placed).await.unwrap();
    let fence = g.stats(&p).await.unwrap().unwrap().fence();
    let order = shared::domain::RequestView {
        request_id: b.request_id.clone(),
        user_id: b.user_id.clone(),
        quantity: b.quantity,
        ..order
    };
    assert!(g.release(&order, OrderStatus::Expired).await.unwrap());
    let in_flight = Ledger {
        remaining: 10,
        releasing: 1,
        released: 3,
        ..Default::default()
    };
    assert_eq!(g.resync(&p, &in_flight, fence).await.unwrap(), Some(0));
    assert_eq!(shelf().await, 10);
}

/// Found in review of a withdrawal fence (ledger `withdrawn` against this
/// Redis' takes, since dropped): a withdrawal made while the sale was cold
/// must not shield a later take in flight, whose units would be offered
/// again. The resync subtracts every unit being withdrawn.
#[tokio::test]
async fn a_cold_withdrawal_does_not_put_a_later_take_back_on_sale() {
    use shared::domain::{AuditEntry, Ledger, StockChange};
    use shared::ports::ShelfStep;
    // 100 units, 10 withdrawn while cold: warmed from the ledger's 90.
    let (g, p) = warmed(90, 1).await;
    let w = StockChange::new(p.clone(), IdempotencyKey::parse("w2").unwrap(), -5).unwrap();
    let entry = AuditEntry {
        product_id: Some(p.clone()),
        at: OffsetDateTime::now_utc(),
        actor: "ops".into(),
        action: "withdraw_stock 5".into(),
        reason: "damaged".into(),
    };
    g.change_shelf(&w, ShelfStep::Take, Some(&entry))
        .await
        .unwrap();
    let fence = g.stats(&p).await.unwrap().unwrap().fence();
    let cold = Ledger {
        withdrawn: 10,
        ..remaining(90)
    };
    assert_eq!(g.resync(&p, &cold, fence).await.unwrap(), Some(0));
    assert_eq!(g.resync(&p, &cold, fence).await.unwrap(), Some(0));
    assert_eq!(g.stats(&p).await.unwrap().unwrap().stock_left, 85);
}

/// A sweep racing a burst: an order placed in DynamoDB before the sweep's
/// ledger read and settled here after its fence read is in both. The shelf
/// Redis' own arithmetic made is right; the resync must not hide the units
/// (a CI run saw 99 of 100 units sold, the last answered sold out).
#[tokio::test]
async fn a_resync_racing_a_placement_leaves_a_right_shelf_alone() {
    let (g, p) = warmed(10, 2).await;
    let a = admitted(&g, &purchase(&p, "alice", 2, None)).await;
    admitted(&g, &purchase(&p, "bob", 1, None)).await;
    let fence = g.stats(&p).await.unwrap().unwrap().fence();
    // Alice is placed (the ledger read says 8) and settled here.
    g.settle(&a, Settled::Placed).await.unwrap();
    assert_eq!(g.resync(&p, &remaining(8), fence).await.unwrap(), Some(0));
    assert_eq!(g.stats(&p).await.unwrap().unwrap().stock_left, 7);
    // Units Redis forgot it sold are still taken back at once.
    g.command::<()>(redis::cmd("INCRBY").arg(g.keys(&p).stock()).arg(3))
        .await
        .unwrap();
    assert_eq!(g.resync(&p, &remaining(8), fence).await.unwrap(), Some(-5));
    assert_eq!(g.stats(&p).await.unwrap().unwrap().stock_left, 5);
}

/// Hole 5: the sweeper needs to know what was sent, and when.
#[tokio::test]
async fn sent_requests_are_marked_and_paged_with_their_send_time() {
    let (g, p) = warmed(5, 1).await;
    let a = admitted(&g, &purchase(&p, "alice", 1, None)).await;
    let b = admitted(&g, &purchase(&p, "bob", 1, None)).await;
    g.mark_sent(&a.request_id, a.user_id.as_str(), SendMark::Sent)
        .await
        .unwrap();
    let now = g.now_ms().await.unwrap();
    let page = g.pending_page(&p, now, 0, 10).await.unwrap();
    assert_eq!(page.scanned, 2);
    let by_id = |m: &OrderMessage| {
        page.requests
            .iter()
            .find(|r| r.msg.request_id == m.request_id)
            .unwrap()
            .clone()
    };
    assert!(by_id(&a).sent_at_ms.is_some());
    assert_eq!(by_id(&b).sent_at_ms, None);
    assert_eq!(by_id(&b).msg, b);
    // A settled request is no longer marked.
    g.settle(&b, Settled::Placed).await.unwrap();
    g.mark_sent(&b.request_id, b.user_id.as_str(), SendMark::Sent)
        .await
        .unwrap();
    let fields: Vec<String> = g
        .command(redis::cmd("HKEYS").arg(g.keys(&p).req(&b.request_id)))
        .await
        .unwrap();
    assert!(!fields.contains(&"sent_at".to_owned()));
}

/// Hole 8: a pending entry without state must not stall paging forever.
#[tokio::test]
async fn pending_entries_without_state_are_dropped_and_paging_goes_on() {
    let (g, p) = warmed(5, 1).await;
    let a = admitted(&g, &purchase(&p, "alice", 1, None)).await;
    let b = admitted(&g, &purchase(&p, "bob", 1, None)).await;
    g.command::<()>(redis::cmd("DEL").arg(g.keys(&p).req(&a.request_id)))
        .await
        .unwrap();
    let now = g.now_ms().await.unwrap();
    let page = g.pending_page(&p, now, 0, 1).await.unwrap();
    assert_eq!((page.scanned, page.requests.len()), (1, 0));
    let page = g.pending_page(&p, now, 0, 10).await.unwrap();
    assert_eq!(page.scanned, 1);
    assert_eq!(page.requests[0].msg.request_id, b.request_id);
}

/// Hole 12: the scripts refuse nonsense arguments instead of writing it.
#[tokio::test]
async fn scripts_refuse_bad_arguments() {
    let (g, p) = warmed(5, 1).await;
    let k = g.keys(&p);
    let eval = |script: &'static str, keys: Vec<String>, args: Vec<&'static str>| {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(script).arg(keys.len());
        for key in keys {
            cmd.arg(key);
        }
        for a in args {
            cmd.arg(a);
        }
        cmd
    };
    let admit = eval(
        shared::redis::ADMIT_SCRIPT,
        k.admission(&purchase(&p, "u1", 1, None)).to_vec(),
        vec!["x", "u1", "-3", "0", "60"],
    );
    let err = g.command::<redis::Value>(&admit).await.unwrap_err();
    assert!(err.to_string().contains("bad arguments"), "{err}");
    assert_eq!(g.stats(&p).await.unwrap().unwrap().stock_left, 5);
}

/// A redis-server of this test's own, with TLS and AUTH, stopped by PID.
struct TlsRedis {
    child: std::process::Child,
    port: u16,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tls_redis(password: &str) -> TlsRedis {
    let dir = std::env::temp_dir().join(format!("flashsale-tls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl is needed for the TLS test");
    assert!(made.success());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--tls-port", &port.to_string(), "--tls-auth-clients", "no"])
        .arg("--tls-cert-file")
        .arg(&cert)
        .arg("--tls-key-file")
        .arg(&key)
        .args(["--requirepass", password])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server is needed (make test installs it)");
    TlsRedis {
        child,
        port,
        _dir: TempDir(dir),
    }
}

#[tokio::test]
async fn tls_and_auth_token_like_elasticache() {
    let server = tls_redis("elasticache-token-123");
    let settings = |token: Option<&str>| RedisSettings {
        // `#insecure`: the throwaway certificate is self-signed.
        auth_token: token.map(str::to_owned),
        ..settings(format!("rediss://127.0.0.1:{}/#insecure", server.port))
    };
    let p = unique("tls");
    let mut last = None;
    for _ in 0..50 {
        let g = RedisGate::new(settings(Some("elasticache-token-123")));
        match g.warm(&product(&p, 3, 1, -1), false, 3, 0).await {
            Ok(w) => {
                last = Some(w);
                assert!(matches!(
                    g.admit(&purchase(&p, "u1", 1, None)).await.unwrap(),
                    Admission::Admitted { .. }
                ));
                break;
            }
            // The server may still be starting.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(last, Some(Warm::Warmed { stock_left: 3 }));
    let wrong = RedisGate::new(settings(Some("wrong")));
    assert!(
        wrong.stats(&p).await.is_err(),
        "a wrong AUTH token is refused"
    );
    let plain = RedisGate::new(settings(None));
    assert!(plain.stats(&p).await.is_err(), "no AUTH token is refused");
}

/// Found in review: after a failover forgot an admission, the order it
/// became must still block its buyer in Redis, or the buyer is admitted
/// again (a 202 that can only end REJECTED).
#[tokio::test]
async fn a_placed_order_restores_its_buyer_after_a_failover() {
    let (g, p) = warmed(5, 1).await;
    let msg = admitted(&g, &purchase(&p, "alice", 1, None)).await;
    let k = g.keys(&p);
    g.command::<()>(
        redis::cmd("DEL")
            .arg(k.req(&msg.request_id))
            .arg(k.buyers())
            .arg(k.pending()),
    )
    .await
    .unwrap();
    assert!(g.settle(&msg, Settled::Placed).await.unwrap());
    assert_eq!(
        g.admit(&purchase(&p, "alice", 1, None)).await.unwrap(),
        Admission::Refused(Refusal::AlreadyPurchased)
    );
}

/// Found in review: a forced re-warm reads the ledger, then runs; an order
/// settled in between must not be counted twice on the shelf's favour.
#[tokio::test]
async fn a_forced_rewarm_fences_orders_settled_after_its_ledger_read() {
    let (g, p) = warmed(10, 1).await;
    let seen = g.stats(&p).await.unwrap().unwrap().placed_units;
    let ledger_read = 10; // before alice's order was placed
    let a = admitted(&g, &purchase(&p, "alice", 1, None)).await;
    g.settle(&a, Settled::Placed).await.unwrap();
    assert_eq!(
        g.warm(&product(&p, 10, 1, -1), true, ledger_read, seen)
            .await
            .unwrap(),
        Warm::Warmed { stock_left: 9 }
    );
}

fn limited_gate(buyer: &str, ip: &str) -> RedisGate {
    RedisGate::new(RedisSettings {
        rate_limits: RateLimits {
            buyer: RateLimit::parse(buyer).unwrap(),
            ip: RateLimit::parse(ip).unwrap(),
        },
        ..settings(std::env::var("FLASHSALE_REDIS_URL").unwrap())
    })
}

async fn warm_with(g: &RedisGate, p: &Product) {
    let stock = i64::from(p.stock);
    assert!(matches!(
        g.warm(p, false, stock, 0).await.unwrap(),
        Warm::Warmed { .. }
    ));
}

fn from(p: &ProductId, user: &str, ip: &str) -> Purchase {
    Purchase {
        client_ip: Some(ip.parse().unwrap()),
        ..purchase(p, user, 1, None)
    }
}

fn throttled(a: Admission) -> i64 {
    match a {
        Admission::Throttled { retry_after_ms } => retry_after_ms,
        other => panic!("not throttled: {other:?}"),
    }
}

#[tokio::test]
async fn a_buyer_over_its_rate_is_throttled_and_nothing_else_changes() {
    let g = limited_gate("1/2", "off");
    let p = unique("rl-buyer");
    warm_with(&g, &product(&p, 10, 1, -1)).await;
    // A burst of two passes the limiter (the second is refused on its merits).
    assert!(matches!(
        g.admit(&purchase(&p, "u1", 1, None)).await.unwrap(),
        Admission::Admitted { .. }
    ));
    assert_eq!(
        g.admit(&purchase(&p, "u1", 1, None)).await.unwrap(),
        Admission::Refused(Refusal::AlreadyPurchased)
    );
    let before = snapshot(&g, &p).await;
    let wait = throttled(g.admit(&purchase(&p, "u1", 1, None)).await.unwrap());
    assert!((1..=1000).contains(&wait), "{wait}");
    assert_eq!(
        snapshot(&g, &p).await,
        before,
        "a throttled request wrote to Redis"
    );
    // Others are not limited by it.
    assert!(matches!(
        g.admit(&purchase(&p, "u2", 1, None)).await.unwrap(),
        Admission::Admitted { .. }
    ));
    // Once the wait is over, the buyer is heard again.
    tokio::time::sleep(Duration::from_millis(wait as u64 + 20)).await;
    assert_eq!(
        g.admit(&purchase(&p, "u1", 1, None)).await.unwrap(),
        Admission::Refused(Refusal::AlreadyPurchased)
    );
}

#[tokio::test]
async fn one_address_is_limited_across_its_buyers_and_no_other() {
    let g = limited_gate("off", "1/3");
    let p = unique("rl-ip");
    warm_with(&g, &product(&p, 100, 1, -1)).await;
    for i in 0..3 {
        let a = g
            .admit(&from(&p, &format!("a{i}"), "198.51.100.7"))
            .await
            .unwrap();
        assert!(matches!(a, Admission::Admitted { .. }), "{a:?}");
    }
    throttled(g.admit(&from(&p, "a3", "198.51.100.7")).await.unwrap());
    for (user, ip) in [("b0", "198.51.100.8"), ("c0", "2001:db8::7")] {
        let a = g.admit(&from(&p, user, ip)).await.unwrap();
        assert!(matches!(a, Admission::Admitted { .. }), "{user}: {a:?}");
    }
    // Without a known address only the buyer's own limit applies.
    let a = g.admit(&purchase(&p, "d0", 1, None)).await.unwrap();
    assert!(matches!(a, Admission::Admitted { .. }), "{a:?}");
}

/// Issue 31, item 1: one address's limit counted each IPv6 /64 alone, so
/// a free /48 held 65,536 budgets. Its /48 is limited too, at 16 times the
/// address's rate and burst: 1/3 per address, 48 at once per /48.
#[tokio::test]
async fn an_ipv6_site_is_limited_across_its_64s() {
    let g = limited_gate("off", "1/3");
    let p = unique("rl-48");
    warm_with(&g, &product(&p, 200, 1, -1)).await;
    let mut answers = Vec::new();
    for i in 0..60 {
        let ip = format!("2001:db8:7:{i:x}::1");
        answers.push(g.admit(&from(&p, &format!("v6-{i}"), &ip)).await.unwrap());
    }
    let admitted = |a: &[Admission]| {
        a.iter()
            .filter(|a| matches!(a, Admission::Admitted { .. }))
            .count()
    };
    assert_eq!(admitted(&answers[..48]), 48, "{answers:?}");
    for a in &answers[48..] {
        throttled(a.clone());
    }
    // Another site, and IPv4, keep their own budgets.
    let a = g
        .admit(&from(&p, "other-site", "2001:db8:8::1"))
        .await
        .unwrap();
    assert!(matches!(a, Admission::Admitted { .. }), "{a:?}");
    let a = g.admit(&from(&p, "v4", "198.51.100.9")).await.unwrap();
    assert!(matches!(a, Admission::Admitted { .. }), "{a:?}");
}

#[tokio::test]
async fn a_sales_own_limit_wins_over_the_default_and_replays_are_answered() {
    let g = limited_gate("100/100", "off");
    let p = unique("rl-own");
    let mut own = product(&p, 10, 1, -1);
    own.rate_limits.buyer = RateLimit::parse("1/1").unwrap();
    warm_with(&g, &own).await;
    let first = purchase(&p, "u1", 1, Some("k1"));
    assert!(matches!(
        g.admit(&first).await.unwrap(),
        Admission::Admitted { .. }
    ));
    throttled(g.admit(&purchase(&p, "u1", 1, Some("k2"))).await.unwrap());
    // A replay answers the admission it repeats, limiter or not.
    assert!(matches!(
        g.admit(&first).await.unwrap(),
        Admission::Replay { .. }
    ));
}

#[tokio::test]
async fn a_paused_sale_refuses_without_a_trace_and_an_ended_one_is_over() {
    let g = limited_gate("1/1", "off");
    let p = unique("ctl");
    let mut live = product(&p, 5, 1, -1);
    warm_with(&g, &live).await;
    live.paused = true;
    live.control_seq = 1;
    assert!(g.apply_controls(&live).await.unwrap());
    let before = snapshot(&g, &p).await;
    for _ in 0..3 {
        assert_eq!(
            g.admit(&purchase(&p, "u1", 1, None)).await.unwrap(),
            Admission::Refused(Refusal::SalePaused)
        );
    }
    // Not even the buyer's limiter moved: resumed, the buyer is admitted.
    assert_eq!(
        snapshot(&g, &p).await,
        before,
        "a paused refusal wrote to Redis"
    );
    live.paused = false;
    live.control_seq = 2;
    assert!(g.apply_controls(&live).await.unwrap());
    assert!(matches!(
        g.admit(&purchase(&p, "u1", 1, None)).await.unwrap(),
        Admission::Admitted { .. }
    ));
    live.ends_at = OffsetDateTime::now_utc();
    live.control_seq = 3;
    assert!(g.apply_controls(&live).await.unwrap());
    assert_eq!(
        g.admit(&purchase(&p, "u2", 1, None)).await.unwrap(),
        Admission::Refused(Refusal::SaleEnded)
    );
    // A product not warmed here: nothing to apply.
    assert!(
        !g.apply_controls(&product(&unique("cold"), 1, 1, -1))
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn a_stale_copy_of_the_controls_cannot_undo_a_newer_one() {
    let g = gate();
    let p = unique("ctl-seq");
    let stale = product(&p, 5, 1, -1);
    warm_with(&g, &stale).await;
    let mut newer = stale.clone();
    newer.paused = true;
    newer.control_seq = 1;
    assert!(g.apply_controls(&newer).await.unwrap());
    // A sweep (or a forced re-warm) that read the product before the pause.
    g.apply_controls(&stale).await.unwrap();
    g.warm(&stale, true, 5, 0).await.unwrap();
    assert_eq!(
        g.admit(&purchase(&p, "u1", 1, None)).await.unwrap(),
        Admission::Refused(Refusal::SalePaused)
    );
}

/// Refusals that do not depend on stock come before the shelf is looked
/// at (with stock buckets a buyer refused anyway must not send their bucket
/// borrowing): a paused sold-out sale says paused; an ended one says so.
#[tokio::test]
async fn a_sold_out_sale_says_paused_when_paused_and_ended_when_ended() {
    let g = gate();
    let p = unique("ctl-final");
    let mut sale = product(&p, 1, 1, -1);
    warm_with(&g, &sale).await;
    assert!(matches!(
        g.admit(&purchase(&p, "u1", 1, None)).await.unwrap(),
        Admission::Admitted { .. }
    ));
    sale.paused = true;
    sale.control_seq = 1;
    g.apply_controls(&sale).await.unwrap();
    assert_eq!(
        g.admit(&purchase(&p, "u2", 1, None)).await.unwrap(),
        Admission::Refused(Refusal::SalePaused)
    );
    sale.ends_at = OffsetDateTime::now_utc();
    sale.control_seq = 2;
    g.apply_controls(&sale).await.unwrap();
    assert_eq!(
        g.admit(&purchase(&p, "u2", 1, None)).await.unwrap(),
        Admission::Refused(Refusal::SaleEnded)
    );
}

#[tokio::test]
async fn the_kill_switch_is_taken_only_over_an_older_copy() {
    use shared::domain::KillSwitch;
    // Its own namespace: the switch is global, other tests must not see it.
    let url = std::env::var("FLASHSALE_REDIS_URL").expect("FLASHSALE_REDIS_URL (make test)");
    let mut s = settings(url);
    s.namespace = format!("ks-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let g = RedisGate::new(s);
    assert_eq!(g.kill_switch().await.unwrap(), KillSwitch::default());
    let thrown = KillSwitch {
        engaged: true,
        seq: 3,
    };
    g.apply_kill_switch(thrown).await.unwrap();
    assert_eq!(g.kill_switch().await.unwrap(), thrown);
    // A sweep that read DynamoDB before the switch was thrown.
    g.apply_kill_switch(KillSwitch {
        engaged: false,
        seq: 2,
    })
    .await
    .unwrap();
    assert_eq!(g.kill_switch().await.unwrap(), thrown);
    let released = KillSwitch {
        engaged: false,
        seq: 4,
    };
    g.apply_kill_switch(released).await.unwrap();
    assert_eq!(g.kill_switch().await.unwrap(), released);
}

#[tokio::test]
async fn a_denied_buyer_is_refused_without_a_trace_until_their_entry_lapses() {
    let g = limited_gate("1/1", "off");
    let p = unique("deny");
    warm_with(&g, &product(&p, 5, 1, -1)).await;
    let now = shared::domain::unix_ms(OffsetDateTime::now_utc());
    let user = |u: &str| UserId::parse(u).unwrap();
    g.set_denials(
        &p,
        &[
            (user("bot"), 0),
            (user("brief"), now + 1_500),
            (user("lapsed"), now - 1),
        ],
        &[],
    )
    .await
    .unwrap();
    let before = snapshot(&g, &p).await;
    for _ in 0..3 {
        for u in ["bot", "brief"] {
            assert_eq!(
                g.admit(&purchase(&p, u, 1, None)).await.unwrap(),
                Admission::Refused(Refusal::BuyerBlocked)
            );
        }
    }
    assert_eq!(
        snapshot(&g, &p).await,
        before,
        "a denied buyer moved something"
    );
    assert!(matches!(
        g.admit(&purchase(&p, "lapsed", 1, None)).await.unwrap(),
        Admission::Admitted { .. }
    ));
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    assert!(matches!(
        g.admit(&purchase(&p, "brief", 1, None)).await.unwrap(),
        Admission::Admitted { .. }
    ));
    g.set_denials(&p, &[], &[user("bot")]).await.unwrap();
    assert!(matches!(
        g.admit(&purchase(&p, "bot", 1, None)).await.unwrap(),
        Admission::Admitted { .. }
    ));
    let mut held = g.denials(&p).await.unwrap();
    held.sort();
    assert_eq!(
        held,
        [(user("brief"), now + 1_500), (user("lapsed"), now - 1)]
    );
}

#[tokio::test]
async fn stock_changes_move_the_shelf_once_and_the_resync_never_offers_a_withdrawn_unit() {
    use shared::domain::{AuditEntry, StockChange};
    use shared::ports::{ShelfChange, ShelfStep};
    let (g, p) = warmed(10, 1).await;
    let change = |key: &str, delta: i64| {
        StockChange::new(p.clone(), IdempotencyKey::parse(key).unwrap(), delta).unwrap()
    };
    let entry = AuditEntry {
        product_id: Some(p.clone()),
        at: OffsetDateTime::now_utc(),
        actor: "ops".into(),
        action: "withdraw_stock 4".into(),
        reason: "damaged".into(),
    };
    let left = |g: RedisGate, p: ProductId| async move { g.stats(&p).await.unwrap().unwrap() };
    let w = change("w1", -4);
    assert_eq!(
        g.change_shelf(&w, ShelfStep::Take, Some(&entry))
            .await
            .unwrap(),
        ShelfChange::Done
    );
    assert_eq!(
        g.change_shelf(&w, ShelfStep::Take, Some(&entry))
            .await
            .unwrap(),
        ShelfChange::Seen("taken:4".into())
    );
    assert_eq!(
        g.withdrawals_taken(&p).await.unwrap(),
        [(w.clone(), entry.clone())]
    );
    let s = left(g.clone(), p.clone()).await;
    assert_eq!((s.stock_left, s.withdrawing, s.stock_total), (6, 4, 6));
    // A resync from a ledger that does not know of the withdrawal yet.
    let fence = s.fence();
    g.resync(&p, &remaining(10), fence).await.unwrap();
    assert_eq!(left(g.clone(), p.clone()).await.stock_left, 6);
    // Settled between a sweep's fence read and its (older) ledger read.
    assert_eq!(
        g.change_shelf(&w, ShelfStep::Settle, None).await.unwrap(),
        ShelfChange::Done
    );
    g.resync(&p, &remaining(10), fence).await.unwrap();
    let s = left(g.clone(), p.clone()).await;
    assert_eq!((s.stock_left, s.withdrawing, s.withdrawn_units), (6, 0, 4));
    let recorded = shared::domain::Ledger {
        withdrawn: 4,
        ..remaining(6)
    };
    g.resync(&p, &recorded, s.fence()).await.unwrap();
    assert_eq!(left(g.clone(), p.clone()).await.stock_left, 6);
    assert!(g.withdrawals_taken(&p).await.unwrap().is_empty());

    // Refused by the ledger: undone, once.
    let r = change("w2", -2);
    g.change_shelf(&r, ShelfStep::Take, Some(&entry))
        .await
        .unwrap();
    assert_eq!(left(g.clone(), p.clone()).await.stock_left, 4);
    for _ in 0..2 {
        g.change_shelf(&r, ShelfStep::Undo, None).await.unwrap();
    }
    assert_eq!(left(g.clone(), p.clone()).await.stock_left, 6);
    assert_eq!(
        g.change_shelf(&change("w3", -7), ShelfStep::Take, Some(&entry))
            .await
            .unwrap(),
        ShelfChange::Short { on_shelf: 6 }
    );
    // An addition claims its key (a withdrawal's key is refused), then
    // adds once.
    assert_eq!(
        g.change_shelf(&change("w2", 3), ShelfStep::Claim, None)
            .await
            .unwrap(),
        ShelfChange::Seen("refused:2".into())
    );
    let a = change("a1", 3);
    assert_eq!(
        g.change_shelf(&a, ShelfStep::Claim, None).await.unwrap(),
        ShelfChange::Done
    );
    assert_eq!(
        left(g.clone(), p.clone()).await.stock_left,
        6,
        "a claim moves nothing"
    );
    for _ in 0..2 {
        g.change_shelf(&a, ShelfStep::Add, None).await.unwrap();
    }
    assert_eq!(
        g.change_shelf(&a, ShelfStep::Add, None).await.unwrap(),
        ShelfChange::Seen("added:3".into())
    );
    let s = left(g.clone(), p.clone()).await;
    assert_eq!((s.stock_left, s.stock_total), (9, 9));
    // A sale not warmed here: nothing to change.
    let cold = StockChange::new(unique("cold"), IdempotencyKey::parse("k").unwrap(), 5).unwrap();
    assert_eq!(
        g.change_shelf(&cold, ShelfStep::Add, None).await.unwrap(),
        ShelfChange::Cold
    );
}

/// Found in review: `rebuy_after_release` frees a released buyer's slot,
/// and by default a released buyer stays blocked (anti-hoarding).
#[tokio::test]
async fn a_release_frees_the_buyer_only_when_the_sale_says_so() {
    use shared::domain::{Currency, RequestView, Reservation};
    for rebuy in [true, false] {
        let (g, p) = warmed(5, 1).await;
        let msg = admitted(&g, &purchase(&p, "u1", 1, None)).await;
        g.settle(&msg, Settled::Placed).await.unwrap();
        let order = RequestView {
            request_id: msg.request_id.clone(),
            product_id: p.clone(),
            user_id: msg.user_id.clone(),
            quantity: msg.quantity,
            status: OrderStatus::Cancelled,
            updated_at: OffsetDateTime::now_utc(),
            reservation: Some(Reservation {
                pay_by_ms: 0,
                amount: 100,
                currency: Currency::parse("EUR").unwrap(),
                rebuy_after_release: rebuy,
                ledger_shards: 1,
            }),
        };
        assert!(g.release(&order, OrderStatus::Cancelled).await.unwrap());
        assert!(
            !g.release(&order, OrderStatus::Cancelled).await.unwrap(),
            "once"
        );
        assert_eq!(g.stats(&p).await.unwrap().unwrap().stock_left, 5);
        let again = g.admit(&purchase(&p, "u1", 1, None)).await.unwrap();
        if rebuy {
            assert!(matches!(again, Admission::Admitted { .. }), "{again:?}");
        } else {
            assert_eq!(again, Admission::Refused(Refusal::AlreadyPurchased));
        }
    }
}

#[tokio::test]
async fn prepare_connects_and_loads_the_buy_scripts_or_fails_fast() {
    let g = gate();
    g.command::<()>(redis::cmd("SCRIPT").arg("FLUSH"))
        .await
        .unwrap();
    g.prepare().await.unwrap();
    let sha = redis::Script::new(shared::redis::ADMIT_SCRIPT)
        .get_hash()
        .to_owned();
    let loaded: Vec<bool> = g
        .command(redis::cmd("SCRIPT").arg("EXISTS").arg(&sha))
        .await
        .unwrap();
    assert_eq!(loaded, [true]);
    // Nobody listens: an error within the connect timeout, not a hang.
    let dead = RedisGate::new(settings("redis://127.0.0.1:1".into()));
    let started = std::time::Instant::now();
    assert!(dead.prepare().await.is_err());
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Each bucket's shelf of `p`, buckets 0 and 1.
async fn shelves(g: &RedisGate, p: &ProductId) -> [i64; 2] {
    let mut out = [0; 2];
    for (b, shelf) in out.iter_mut().enumerate() {
        let key = g.bucket_keys(p, b as u16).stock();
        let v: Option<i64> = g.command(redis::cmd("GET").arg(key)).await.unwrap();
        *shelf = v.unwrap_or(0);
    }
    out
}

async fn shelve(g: &RedisGate, p: &ProductId, bucket: u16, units: i64) {
    let key = g.bucket_keys(p, bucket).stock();
    let _: () = g
        .command(redis::cmd("SET").arg(key).arg(units))
        .await
        .unwrap();
}

#[tokio::test]
async fn units_move_between_buckets_at_most_what_the_lender_holds() {
    let g = gate();
    let p = unique("bkt");
    shelve(&g, &p, 0, 10).await;
    assert_eq!(
        g.move_units(&p, 0, 1, "t1", Want::Units(4)).await.unwrap(),
        4
    );
    assert_eq!(shelves(&g, &p).await, [6, 4]);
    assert_eq!(
        g.move_units(&p, 0, 1, "t2", Want::Units(100))
            .await
            .unwrap(),
        6
    );
    assert_eq!(shelves(&g, &p).await, [0, 10]);
    // A dry bucket takes half its sibling's shelf when that is more.
    shelve(&g, &p, 1, 0).await;
    shelve(&g, &p, 0, 10).await;
    assert_eq!(
        g.move_units(&p, 0, 1, "h1", Want::AtLeastHalf(1))
            .await
            .unwrap(),
        5
    );
    assert_eq!(
        g.move_units(&p, 0, 1, "h2", Want::AtLeastHalf(4))
            .await
            .unwrap(),
        4
    );
    assert_eq!(
        g.move_units(&p, 0, 1, "h3", Want::AtLeastHalf(1))
            .await
            .unwrap(),
        1
    );
    assert_eq!(shelves(&g, &p).await, [0, 10]);
    // Nothing to lend: nothing moves, nothing is listed.
    assert_eq!(
        g.move_units(&p, 0, 1, "t3", Want::Units(1)).await.unwrap(),
        0
    );
    assert_eq!(shelves(&g, &p).await, [0, 10]);
    assert!(g.transfers(&p, 0).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_transfer_its_mover_left_is_listed_and_received_once() {
    let g = gate();
    let p = unique("bkt");
    shelve(&g, &p, 0, 10).await;
    // The mover lends (a lend run twice lends once), then dies.
    assert_eq!(
        g.lend(&p, 0, 1, "t1", Want::Units(3)).await.unwrap().units,
        3
    );
    assert_eq!(
        g.lend(&p, 0, 1, "t1", Want::Units(3)).await.unwrap().units,
        3
    );
    assert_eq!(shelves(&g, &p).await, [7, 0]);
    let listed = g.transfers(&p, 0).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].to, listed[0].units), (1, 3));
    // Whoever completes it (the sweeper, twice), the units arrive once.
    g.complete_transfer(&p, 0, &listed[0]).await.unwrap();
    g.complete_transfer(&p, 0, &listed[0]).await.unwrap();
    assert_eq!(shelves(&g, &p).await, [7, 3]);
    assert!(g.transfers(&p, 0).await.unwrap().is_empty());
    // A retry of the finished move (its last reply lost) moves nothing.
    assert_eq!(
        g.move_units(&p, 0, 1, "t1", Want::Units(3)).await.unwrap(),
        3
    );
    assert_eq!(shelves(&g, &p).await, [7, 3]);
    // Nor does one aimed elsewhere under the same id: it goes where it went.
    let again = g.lend(&p, 0, 2, "t1", Want::Units(5)).await.unwrap();
    assert_eq!((again.to, again.units), (1, 3));
    assert_eq!(shelves(&g, &p).await, [7, 3]);
    assert!(g.lend(&p, 1, 1, "t9", Want::Units(1)).await.is_err());
}

/// `p` warmed as a product of `k` stock buckets of `each` units.
async fn bucketed(k: u16, each: i64, limit: u32) -> (RedisGate, ProductId) {
    let g = gate();
    let p = unique("bkt");
    let mut def = product(&p, (each * i64::from(k)) as u32, limit, -1);
    def.stock_buckets = k;
    let all = i64::from(def.stock);
    assert_eq!(
        g.warm(&def, false, all, 0).await.unwrap(),
        Warm::Warmed { stock_left: all }
    );
    for b in 0..k {
        let meta: BTreeMap<String, String> = g
            .command(redis::cmd("HGETALL").arg(g.bucket_keys(&p, b).meta()))
            .await
            .unwrap();
        assert_eq!(
            meta.get("buckets").map(String::as_str),
            Some(k.to_string().as_str())
        );
        assert_eq!(meta.get("stock_total"), Some(&all.to_string()));
    }
    // A fresh process learns the count from the meta.
    assert_eq!(gate().buckets(&p).await.unwrap(), k);
    (g, p)
}

/// Every bucket's shelf of `p`, of `k`.
async fn shelves_of(g: &RedisGate, p: &ProductId, k: u16) -> Vec<i64> {
    let mut out = Vec::new();
    for b in 0..k {
        let key = g.bucket_keys(p, b).stock();
        let v: Option<i64> = g.command(redis::cmd("GET").arg(key)).await.unwrap();
        out.push(v.unwrap_or(0));
    }
    out
}

#[tokio::test]
async fn a_bucketed_warm_up_splits_the_ledger_and_keeps_an_unbucketed_meta_as_it_was() {
    let (g, p) = bucketed(3, 4, 1).await;
    assert_eq!(shelves_of(&g, &p, 3).await, [4, 4, 4]);
    // Started: refused unless forced; forced, each bucket subtracts what it
    // settled (never more than the ledger allows) and the resync sets the sum.
    let mut def = product(&p, 12, 1, -1);
    def.stock_buckets = 3;
    assert!(matches!(
        g.warm(&def, false, 11, 0).await.unwrap(),
        Warm::AlreadyStarted { .. }
    ));
    let buyer = buyer_in(1, 3, "w");
    let m = admitted(&g, &purchase(&p, &buyer, 1, None)).await;
    assert!(g.settle(&m, Settled::Placed).await.unwrap());
    assert_eq!(
        g.warm(&def, true, 11, 0).await.unwrap(),
        Warm::Warmed { stock_left: 10 }
    );
    let fence = g.stats(&p).await.unwrap().unwrap().fence();
    assert_eq!(g.resync(&p, &remaining(11), fence).await.unwrap(), Some(1));
    assert_eq!(g.stats(&p).await.unwrap().unwrap().stock_left, 11);

    let (g, p) = warmed(5, 1).await;
    let meta: BTreeMap<String, String> = g
        .command(redis::cmd("HGETALL").arg(g.keys(&p).meta()))
        .await
        .unwrap();
    assert!(!meta.contains_key("buckets"), "{meta:?}");
}

#[tokio::test]
async fn a_bucketed_sale_sells_every_unit_before_it_answers_sold_out() {
    let (g, p) = bucketed(4, 5, 1).await;
    assert_eq!(g.buckets(&p).await.unwrap(), 4);
    let mut answers = Vec::new();
    for i in 0..60 {
        answers.push(
            g.admit(&purchase(&p, &format!("u{i}"), 1, None))
                .await
                .unwrap(),
        );
    }
    // Buyers spread over the buckets, and dry ones borrow: the first 20
    // get the 20 units, whichever bucket they fell in; then sold out.
    for (i, a) in answers.iter().enumerate() {
        if i < 20 {
            assert!(matches!(a, Admission::Admitted { .. }), "buyer {i}: {a:?}");
        } else {
            assert_eq!(*a, Admission::Refused(Refusal::SoldOut), "buyer {i}");
        }
    }
    for b in 0..4 {
        let key = g.bucket_keys(&p, b).stock();
        let left: Option<i64> = g.command(redis::cmd("GET").arg(key)).await.unwrap();
        assert_eq!(left, Some(0), "bucket {b}");
        assert!(g.transfers(&p, b).await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn a_buyer_keeps_to_one_bucket_and_a_borrow_charges_their_limiter_once() {
    let (g, p) = bucketed(2, 5, 2).await;
    let buyer = "u7";
    let home = shared::buckets::bucket_of(buyer, 2);
    // The buyer's bucket holds 1 of the 2 they ask for, its sibling 5; one
    // request per 10 s for a buyer.
    shelve(&g, &p, home, 1).await;
    for b in 0..2 {
        let _: () = g
            .command(
                redis::cmd("HSET")
                    .arg(g.bucket_keys(&p, b).meta())
                    .arg("rl_buyer")
                    .arg("10000:1"),
            )
            .await
            .unwrap();
    }
    let first = g.admit(&purchase(&p, buyer, 2, None)).await.unwrap();
    assert!(matches!(first, Admission::Admitted { .. }), "{first:?}");
    // Their next request is theirs alone to answer: their own bucket.
    let again = g.admit(&purchase(&p, buyer, 1, None)).await.unwrap();
    assert!(matches!(again, Admission::Throttled { .. }), "{again:?}");
}

#[tokio::test]
async fn a_buyers_request_lives_in_their_bucket_and_settles_there() {
    let (g, p) = bucketed(4, 5, 1).await;
    let a = purchase(&p, "alice", 1, None);
    let msg = admitted(&g, &a).await;
    let home = shared::buckets::bucket_of("alice", 4);
    let shelf = |b: u16| {
        let (g, key) = (g.clone(), g.bucket_keys(&p, b).stock());
        async move { g.command::<i64>(redis::cmd("GET").arg(key)).await.unwrap() }
    };
    assert_eq!(shelf(home).await, 4);
    g.mark_sent(&a.request_id, "alice", SendMark::Sent)
        .await
        .unwrap();
    let view = g.request(&a.request_id, "alice").await.unwrap().unwrap();
    assert_eq!(view.status, OrderStatus::Pending);
    // Another buyer's bucket does not hold it.
    let other = (0..)
        .map(|i| format!("u{i}"))
        .find(|u| shared::buckets::bucket_of(u, 4) != home)
        .unwrap();
    assert_eq!(g.request(&a.request_id, &other).await.unwrap(), None);
    // Compensated: the unit goes back to the buyer's bucket.
    assert!(g.restock(&msg).await.unwrap());
    assert_eq!(shelf(home).await, 5);
    let view = g.request(&a.request_id, "alice").await.unwrap().unwrap();
    assert_eq!(view.status, OrderStatus::Compensated);
}

/// A buyer whose records live in bucket `b` of `k`.
fn buyer_in(b: u16, k: u16, tag: &str) -> String {
    (0..)
        .map(|i| format!("{tag}{i}"))
        .find(|u| shared::buckets::bucket_of(u, k) == b)
        .unwrap()
}

#[tokio::test]
async fn a_bucketed_products_figures_pause_and_deny_list_cover_every_bucket() {
    let (g, p) = bucketed(4, 5, 1).await;
    let left =
        |g: RedisGate, p: ProductId| async move { g.stats(&p).await.unwrap().unwrap().stock_left };
    assert_eq!(left(g.clone(), p.clone()).await, 20);
    for b in 0..4 {
        admitted(&g, &purchase(&p, &buyer_in(b, 4, "a"), 1, None)).await;
    }
    let stats = g.stats(&p).await.unwrap().unwrap();
    assert_eq!(
        (stats.stock_left, stats.admitted, stats.pending_units),
        (16, 4, 4)
    );
    // Units in transit between two buckets are still on sale.
    assert_eq!(
        g.lend(&p, 0, 1, "t1", Want::Units(2)).await.unwrap().units,
        2
    );
    assert_eq!(left(g.clone(), p.clone()).await, 16);

    // Denied: refused in their own bucket, listed with the product's.
    let bot = buyer_in(3, 4, "bot");
    g.set_denials(&p, &[(UserId::parse(bot.clone()).unwrap(), 0)], &[])
        .await
        .unwrap();
    assert_eq!(
        g.admit(&purchase(&p, &bot, 1, None)).await.unwrap(),
        Admission::Refused(Refusal::BuyerBlocked)
    );
    assert_eq!(g.denials(&p).await.unwrap().len(), 1);

    // Paused: every bucket's buyers are refused.
    let mut paused = product(&p, 5, 1, -1);
    paused.paused = true;
    paused.control_seq = 1;
    assert!(g.apply_controls(&paused).await.unwrap());
    for b in 0..4 {
        assert_eq!(
            g.admit(&purchase(&p, &buyer_in(b, 4, "b"), 1, None))
                .await
                .unwrap(),
            Admission::Refused(Refusal::SalePaused),
            "bucket {b}"
        );
    }
}

#[tokio::test]
async fn the_pending_index_pages_through_every_bucket() {
    let (g, p) = bucketed(3, 5, 1).await;
    let mut ids = std::collections::BTreeSet::new();
    for i in 0..9 {
        let a = purchase(&p, &format!("p{i}"), 1, None);
        admitted(&g, &a).await;
        ids.insert(a.request_id.to_string());
    }
    let now = i64::MAX / 2;
    let mut seen = std::collections::BTreeSet::new();
    let mut offset = 0;
    loop {
        let page = g.pending_page(&p, now, offset, 4).await.unwrap();
        seen.extend(page.requests.iter().map(|r| r.msg.request_id.to_string()));
        if page.scanned < 4 {
            break;
        }
        offset += page.scanned;
    }
    assert_eq!(seen, ids);
}

/// One side of the differential test below: a product, its definition and
/// its DynamoDB ledger as the history moves it (DynamoDB's writes come
/// first: an order is placed there, a release recorded there, before the
/// shelf hears of it), and its orders in the order they were admitted.
struct Side {
    g: RedisGate,
    def: Product,
    ledger: shared::domain::Ledger,
    orders: Vec<OrderMessage>,
}

/// Where an admitted order of the history stands.
#[derive(Clone, Copy, PartialEq)]
enum Fate {
    Pending,
    Placed,
    /// Released in DynamoDB, not yet on the shelf.
    Releasing,
    Over,
}

/// One step of a random history, its choices made before either side runs
/// it. `order`: an index into the orders in the fate the step needs.
#[derive(Debug, Clone, Copy)]
enum Step {
    Admit {
        buyer: u32,
        qty: u32,
    },
    Place {
        order: usize,
    },
    Restock {
        order: usize,
    },
    ReleaseRecorded {
        order: usize,
    },
    ReleaseShelved {
        order: usize,
    },
    Withdraw {
        units: i64,
    },
    Add {
        units: i64,
    },
    /// A failover's lost writes: `units` more (or fewer) on one bucket.
    Drift {
        bucket: u16,
        units: i64,
    },
    ForcedWarm,
    Resync,
}

impl Side {
    async fn new(k: u16, stock: u32) -> Self {
        let g = gate();
        let mut def = product(&unique("dif"), stock, 2, -1);
        def.stock_buckets = k;
        let warmed = g.warm(&def, false, i64::from(stock), 0).await.unwrap();
        assert!(matches!(warmed, Warm::Warmed { .. }), "{warmed:?}");
        let ledger = remaining(i64::from(stock));
        Self {
            g,
            def,
            ledger,
            orders: Vec::new(),
        }
    }

    fn p(&self) -> &ProductId {
        &self.def.product_id
    }

    async fn stats(&self) -> shared::domain::ProductStats {
        self.g.stats(self.p()).await.unwrap().unwrap()
    }

    /// Runs the step; what it answered, as both sides must answer it.
    async fn run(&mut self, step: Step, key: &str) -> String {
        use shared::domain::{AuditEntry, StockChange};
        use shared::ports::{ShelfChange, ShelfStep};
        let (g, p) = (self.g.clone(), self.p().clone());
        let change = |delta: i64| {
            StockChange::new(p.clone(), IdempotencyKey::parse(key).unwrap(), delta).unwrap()
        };
        let entry = AuditEntry {
            product_id: Some(p.clone()),
            at: OffsetDateTime::now_utc(),
            actor: "ops".into(),
            action: "stock".into(),
            reason: "differential".into(),
        };
        match step {
            Step::Admit { buyer, qty } => {
                let buy = purchase(&p, &format!("buyer{buyer}"), qty, None);
                match g.admit(&buy).await.unwrap() {
                    Admission::Admitted {
                        admitted_at_ms,
                        sale_ends_at_ms,
                    } => {
                        self.orders
                            .push(OrderMessage::new(&buy, admitted_at_ms, sale_ends_at_ms));
                        "admitted".into()
                    }
                    Admission::Refused(r) => r.code().into(),
                    other => format!("{other:?}"),
                }
            }
            // DynamoDB places it while its ledger has the units (a shelf
            // a drift raised may have admitted more), else rejects it.
            Step::Place { order } => {
                let msg = self.orders[order].clone();
                let q = i64::from(msg.quantity.get());
                let fate = if self.ledger.remaining >= q {
                    self.ledger.remaining -= q;
                    Settled::Placed
                } else {
                    Settled::Rejected { free_buyer: true }
                };
                format!("{fate:?} {}", g.settle(&msg, fate).await.unwrap())
            }
            Step::Restock { order } => {
                format!("{}", g.restock(&self.orders[order]).await.unwrap())
            }
            Step::ReleaseRecorded { order } => {
                let q = i64::from(self.orders[order].quantity.get());
                self.ledger.remaining += q;
                self.ledger.released += q;
                self.ledger.releasing += q;
                "recorded".into()
            }
            Step::ReleaseShelved { order } => {
                let msg = &self.orders[order];
                let view = g
                    .request(&msg.request_id, msg.user_id.as_str())
                    .await
                    .unwrap()
                    .expect("a placed order's request");
                let done = g.release(&view, OrderStatus::Cancelled).await.unwrap();
                self.ledger.releasing -= i64::from(msg.quantity.get());
                format!("{done}")
            }
            Step::Withdraw { units } => {
                let c = change(-units);
                match g
                    .change_shelf(&c, ShelfStep::Take, Some(&entry))
                    .await
                    .unwrap()
                {
                    ShelfChange::Done if self.ledger.remaining >= units => {
                        self.ledger.remaining -= units;
                        self.ledger.withdrawn += units;
                        let settled = g.change_shelf(&c, ShelfStep::Settle, None).await.unwrap();
                        format!("withdrawn {settled:?}")
                    }
                    ShelfChange::Done => {
                        let undone = g.change_shelf(&c, ShelfStep::Undo, None).await.unwrap();
                        format!("refused by the ledger {undone:?}")
                    }
                    other => format!("{other:?}"),
                }
            }
            Step::Add { units } => {
                let c = change(units);
                let claimed = g
                    .change_shelf(&c, ShelfStep::Claim, Some(&entry))
                    .await
                    .unwrap();
                self.ledger.remaining += units;
                self.ledger.added += units;
                self.ledger.releasing += units;
                let added = g.change_shelf(&c, ShelfStep::Add, None).await.unwrap();
                self.ledger.releasing -= units;
                format!("{claimed:?} {added:?}")
            }
            Step::Drift { bucket, units } => {
                let b = bucket % self.def.stock_buckets;
                let key = g.bucket_keys(&p, b).stock();
                let shelf: Option<i64> = g.command(redis::cmd("GET").arg(&key)).await.unwrap();
                let to = (shelf.unwrap_or(0) + units).max(0);
                let _: () = g
                    .command(redis::cmd("SET").arg(&key).arg(to))
                    .await
                    .unwrap();
                String::new()
            }
            Step::ForcedWarm => {
                let fence = self.stats().await.fence();
                let warmed = g.warm(&self.def, true, self.ledger.remaining, fence).await;
                format!("{:?}", warmed.unwrap())
            }
            Step::Resync => {
                let fence = self.stats().await.fence();
                format!("{:?}", g.resync(&p, &self.ledger, fence).await.unwrap())
            }
        }
    }
}

/// Issue 30, item 3: stock buckets change where units sit, never how many
/// the product offers. The same random history (admissions, placements,
/// rejections, compensations, releases in two steps, withdrawals,
/// additions, a failover's lost writes, forced warm-ups, resyncs) runs on
/// one bucket and on K = 2..4: every step answers alike, and the total
/// shelf and counters agree after each. A lost write lands on one bucket,
/// so the bucketed side meets it with its other shelves full; both sides
/// skip one that would take a shelf below empty. (This replaces the proof,
/// for one bucket only, that `buckets::correction` is resync.lua's
/// arithmetic.)
#[tokio::test]
async fn buckets_offer_what_one_bucket_offers_under_the_same_history() {
    const HISTORIES: u64 = 30;
    const STEPS: usize = 120;
    for h in 0..HISTORIES {
        let k = 2 + (h % 3) as u16;
        let mut rng = fastrand::Rng::with_seed(h);
        let stock = rng.u32(4..=40);
        let mut sides = [Side::new(1, stock).await, Side::new(k, stock).await];
        let mut fates: Vec<Fate> = Vec::new();
        for n in 0..STEPS {
            let among = |fates: &[Fate], rng: &mut fastrand::Rng, f: Fate| {
                let which: Vec<usize> = (0..fates.len()).filter(|i| fates[*i] == f).collect();
                (!which.is_empty()).then(|| which[rng.usize(..which.len())])
            };
            let step = match rng.u32(0..100) {
                0..40 => Step::Admit {
                    buyer: rng.u32(0..120),
                    qty: rng.u32(1..=2),
                },
                40..55 => among(&fates, &mut rng, Fate::Pending)
                    .map_or(Step::Resync, |order| Step::Place { order }),
                55..58 => among(&fates, &mut rng, Fate::Pending)
                    .map_or(Step::Resync, |order| Step::Restock { order }),
                58..66 => among(&fates, &mut rng, Fate::Placed)
                    .map_or(Step::Resync, |order| Step::ReleaseRecorded { order }),
                66..72 => among(&fates, &mut rng, Fate::Releasing)
                    .map_or(Step::Resync, |order| Step::ReleaseShelved { order }),
                72..77 => Step::Withdraw {
                    units: rng.i64(1..=6),
                },
                77..81 => Step::Add {
                    units: rng.i64(1..=6),
                },
                81..87 => Step::Drift {
                    bucket: rng.u16(..),
                    units: rng.i64(-3..=3),
                },
                87..91 => Step::ForcedWarm,
                _ => Step::Resync,
            };
            // A lost write both shelves can take, or none.
            if let Step::Drift { bucket, units } = step {
                let mut fits = true;
                for side in &sides {
                    let b = bucket % side.def.stock_buckets;
                    let key = side.g.bucket_keys(side.p(), b).stock();
                    let shelf: Option<i64> =
                        side.g.command(redis::cmd("GET").arg(key)).await.unwrap();
                    fits &= shelf.unwrap_or(0) + units >= 0;
                }
                if !fits {
                    continue;
                }
            }
            let key = format!("c{n}");
            let one = sides[0].run(step, &key).await;
            let many = sides[1].run(step, &key).await;
            let at = format!("history {h} (K = {k}, {stock} units), step {n}: {step:?}");
            assert_eq!(one, many, "{at}");
            match (step, one.as_str()) {
                (Step::Admit { .. }, "admitted") => fates.push(Fate::Pending),
                (Step::Place { order }, o) if o.starts_with("Placed") => {
                    fates[order] = Fate::Placed
                }
                (Step::Place { order } | Step::Restock { order }, _) => fates[order] = Fate::Over,
                (Step::ReleaseRecorded { order }, _) => fates[order] = Fate::Releasing,
                (Step::ReleaseShelved { order }, _) => fates[order] = Fate::Over,
                _ => {}
            }
            let (a, b) = (sides[0].stats().await, sides[1].stats().await);
            assert_eq!(
                (a.stock_left, a.pending_units, a.fence(), a.withdrawing),
                (b.stock_left, b.pending_units, b.fence(), b.withdrawing),
                "{at}: shelf, pending, fence, withdrawing"
            );
        }
    }
}

#[tokio::test]
async fn a_bucketed_shelf_follows_the_ledger_as_the_sum_of_its_buckets() {
    let (g, p) = bucketed(4, 5, 1).await;
    let sum = async || g.stats(&p).await.unwrap().unwrap().stock_left;
    // A failover gave bucket 2 back 4 units: taken from the fullest.
    shelve(&g, &p, 2, 9).await;
    assert_eq!(g.resync(&p, &remaining(20), 0).await.unwrap(), Some(-4));
    assert_eq!(shelves_of(&g, &p, 4).await, [5, 5, 5, 5]);
    // Bucket 1 lost its shelf: the units come back spread over all four.
    shelve(&g, &p, 1, 0).await;
    assert_eq!(g.resync(&p, &remaining(20), 0).await.unwrap(), Some(5));
    assert_eq!(sum().await, 20);
    assert!(shelves_of(&g, &p, 4).await.iter().all(|s| *s >= 1));
    // Units in transit are the shelf's: lent, nothing to correct.
    g.lend(&p, 0, 3, "t1", Want::Units(2)).await.unwrap();
    assert_eq!(sum().await, 20);
    assert_eq!(g.resync(&p, &remaining(20), 0).await.unwrap(), Some(0));
    // Received, its mover dead before the finish: counted once.
    let to = g.bucket_keys(&p, 3);
    let _: () = g
        .command(redis::cmd("SET").arg(to.received("t1")).arg(2))
        .await
        .unwrap();
    let _: () = g
        .command(redis::cmd("INCRBY").arg(to.stock()).arg(2))
        .await
        .unwrap();
    assert_eq!(sum().await, 20);
    assert_eq!(g.resync(&p, &remaining(20), 0).await.unwrap(), Some(0));
    // The lender forgot the lend after the receive (a failover): the units
    // are on two shelves, and the resync takes them back.
    let from = g.bucket_keys(&p, 0);
    let _: () = g
        .command(redis::cmd("HDEL").arg(from.transfers()).arg("t1"))
        .await
        .unwrap();
    let _: () = g
        .command(redis::cmd("INCRBY").arg(from.stock()).arg(2))
        .await
        .unwrap();
    assert_eq!(sum().await, 22);
    assert_eq!(g.resync(&p, &remaining(20), 0).await.unwrap(), Some(-2));
    assert_eq!(sum().await, 20);
    // A bucket not warmed (forgotten in a failover) holds the resync off.
    let _: () = g
        .command(redis::cmd("DEL").arg(g.bucket_keys(&p, 2).meta()))
        .await
        .unwrap();
    assert_eq!(g.resync(&p, &remaining(10), 0).await.unwrap(), None);
}

#[tokio::test]
async fn a_bucketed_withdrawal_borrows_what_bucket_0_lacks_once() {
    use shared::domain::{AuditEntry, StockChange};
    use shared::ports::{ShelfChange, ShelfStep};
    let (g, p) = bucketed(3, 4, 1).await;
    let w = StockChange::new(p.clone(), IdempotencyKey::parse("w1").unwrap(), -7).unwrap();
    let entry = AuditEntry {
        product_id: Some(p.clone()),
        at: OffsetDateTime::now_utc(),
        actor: "ops".into(),
        action: "withdraw_stock 7".into(),
        reason: "damaged".into(),
    };
    assert_eq!(
        g.change_shelf(&w, ShelfStep::Take, Some(&entry))
            .await
            .unwrap(),
        ShelfChange::Done
    );
    // Bucket 0 borrowed 3 from bucket 1 and took 7: 12 - 7 on the shelves.
    assert_eq!(shelves_of(&g, &p, 3).await, [0, 1, 4]);
    let stats = g.stats(&p).await.unwrap().unwrap();
    assert_eq!((stats.stock_left, stats.withdrawing), (5, 7));
    // A retry of the take is seen, and moves nothing.
    assert!(matches!(
        g.change_shelf(&w, ShelfStep::Take, Some(&entry))
            .await
            .unwrap(),
        ShelfChange::Seen(_)
    ));
    assert_eq!(shelves_of(&g, &p, 3).await, [0, 1, 4]);
    assert_eq!(g.withdrawals_taken(&p).await.unwrap().len(), 1);
    // More than every bucket holds: short, with what bucket 0 could gather.
    let big = StockChange::new(p.clone(), IdempotencyKey::parse("w2").unwrap(), -9).unwrap();
    assert_eq!(
        g.change_shelf(&big, ShelfStep::Take, Some(&entry))
            .await
            .unwrap(),
        ShelfChange::Short { on_shelf: 5 }
    );
    assert_eq!(g.stats(&p).await.unwrap().unwrap().stock_left, 5);
}

#[tokio::test]
async fn transfers_a_mover_left_are_finished_once_they_are_old_enough() {
    let (g, p) = bucketed(2, 5, 1).await;
    let t = g.lend(&p, 1, 0, "left", Want::Units(2)).await.unwrap();
    assert_eq!(t.units, 2);
    let now = g.now_ms().await.unwrap();
    // A mover may still be at work: not yet.
    assert_eq!(g.finish_transfers(&p, now - 60_000).await.unwrap(), 0);
    assert_eq!(shelves_of(&g, &p, 2).await, [5, 3]);
    assert_eq!(g.finish_transfers(&p, now + 1).await.unwrap(), 1);
    assert_eq!(shelves_of(&g, &p, 2).await, [7, 3]);
    assert!(g.transfers(&p, 1).await.unwrap().is_empty());
    assert_eq!(g.finish_transfers(&p, now + 1).await.unwrap(), 0);
    assert_eq!(g.stats(&p).await.unwrap().unwrap().stock_left, 10);
}

/// Bucket 0's meta lost (a failover), a fresh process learns the count from
/// the catalogue, or fails: a guess of one bucket would settle, restock and
/// release every buyer's records in bucket 0.
#[tokio::test]
async fn a_fresh_process_learns_the_buckets_from_the_catalogue_when_bucket_0_forgot() {
    use shared::error::InfraError;
    let (g, p) = bucketed(4, 5, 1).await;
    let buyer = buyer_in(2, 4, "c");
    let m = admitted(&g, &purchase(&p, &buyer, 1, None)).await;
    let _: () = g
        .command(redis::cmd("DEL").arg(g.bucket_keys(&p, 0).meta()))
        .await
        .unwrap();
    // Without a catalogue (tests, tools): one bucket, as before buckets.
    assert_eq!(gate().buckets(&p).await.unwrap(), 1);
    let fresh = gate();
    fresh.count_buckets_with(Box::new(|_| Box::pin(async { Ok(Some(4)) })));
    assert_eq!(fresh.buckets(&p).await.unwrap(), 4);
    assert!(fresh.settle(&m, Settled::Placed).await.unwrap());
    let placed: Option<i64> = g
        .command(
            redis::cmd("HGET")
                .arg(g.bucket_keys(&p, 2).stats())
                .arg("placed_units"),
        )
        .await
        .unwrap();
    assert_eq!(placed, Some(1));
    // The catalogue unreachable: an error, not a guess.
    let blind = gate();
    blind.count_buckets_with(Box::new(|_| {
        Box::pin(async { Err(InfraError::transient("dynamodb", "unreachable")) })
    }));
    assert!(blind.settle(&m, Settled::Placed).await.is_err());
    // Admission never asks: bucket 0 answers as an unwarmed product does.
    assert!(matches!(
        blind
            .admit(&purchase(&p, &buyer_in(1, 4, "d"), 1, None))
            .await,
        Ok(Admission::Refused(Refusal::UnknownProduct))
    ));
}

/// Review of issue 21: each bucket subtracted its own pending units,
/// floored at 0, so pending units gathered in one bucket left the others a
/// full share: a forced warm-up shelved more than the ledger allowed.
#[tokio::test]
async fn a_forced_bucketed_warm_up_never_shelves_more_than_the_ledger_less_what_is_pending() {
    let (g, p) = bucketed(2, 5, 5).await;
    // Two buyers of bucket 0 hold all 10 units (the second borrowed).
    admitted(&g, &purchase(&p, &buyer_in(0, 2, "f"), 5, None)).await;
    admitted(&g, &purchase(&p, &buyer_in(0, 2, "g"), 5, None)).await;
    assert_eq!(shelves_of(&g, &p, 2).await, [0, 0]);
    let mut def = product(&p, 10, 5, -1);
    def.stock_buckets = 2;
    // Nothing placed yet: the ledger holds 10, all of them pending.
    assert_eq!(
        g.warm(&def, true, 10, 0).await.unwrap(),
        Warm::Warmed { stock_left: 0 }
    );
    assert_eq!(shelves_of(&g, &p, 2).await, [0, 0]);
}

/// A bucket a failover forgot (its meta gone) is restored by a warm-up
/// without force, with an empty shelf the resync then fills; the others
/// keep theirs.
#[tokio::test]
async fn a_warm_up_restores_a_forgotten_bucket_empty_and_the_resync_fills_it() {
    let (g, p) = bucketed(3, 4, 1).await;
    let lost = g.bucket_keys(&p, 2);
    let _: () = g
        .command(redis::cmd("DEL").arg(lost.meta()).arg(lost.stock()))
        .await
        .unwrap();
    assert_eq!(g.resync(&p, &remaining(12), 0).await.unwrap(), None);
    let mut def = product(&p, 12, 1, -1);
    def.stock_buckets = 3;
    assert_eq!(
        g.warm(&def, false, 12, 0).await.unwrap(),
        Warm::AlreadyStarted { stock_left: 8 }
    );
    assert_eq!(shelves_of(&g, &p, 3).await, [4, 4, 0]);
    assert_eq!(g.resync(&p, &remaining(12), 0).await.unwrap(), Some(4));
    assert_eq!(g.stats(&p).await.unwrap().unwrap().stock_left, 12);
    let buyer = buyer_in(2, 3, "r");
    admitted(&g, &purchase(&p, &buyer, 1, None)).await;
}

/// `n` instances connected and knowing `p`'s buckets, so their buyers
/// reach Redis together.
async fn instances(p: &ProductId, n: usize) -> Vec<RedisGate> {
    let mut all = Vec::new();
    for _ in 0..n {
        let g = gate();
        g.prepare().await.unwrap();
        g.buckets(p).await.unwrap();
        all.push(g);
    }
    all
}

/// Buys `user` until an answer other than "units are moving" (503, which a
/// client repeats after its Retry-After), at most 20 times.
async fn buy_until_answered(g: &RedisGate, p: &ProductId, user: &str) -> Admission {
    for _ in 0..20 {
        let a = g.admit(&purchase(p, user, 1, None)).await.unwrap();
        if a != Admission::Refused(Refusal::StockMoving) {
            return a;
        }
    }
    panic!("{user} was told to come back 20 times");
}

/// Units lent and received ever, over every bucket: what moved.
async fn units_moved(g: &RedisGate, p: &ProductId, k: u16) -> i64 {
    let mut moved = 0;
    for b in 0..k {
        let n: Vec<Option<i64>> = g
            .command(
                redis::cmd("HMGET")
                    .arg(g.bucket_keys(p, b).stats())
                    .arg("lent_units")
                    .arg("received_units"),
            )
            .await
            .unwrap();
        moved += n.iter().flatten().sum::<i64>();
    }
    moved
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_on_a_dry_bucket_hears_no_410_while_units_stand() {
    // 4 buckets of 100 units, bucket 0 dry: 80 of bucket 0's buyers at once
    // (issue 30: 24 admitted and 56 told 410, shelves [276, 0, 0, 0]).
    let (g, p) = bucketed(4, 100, 1).await;
    shelve(&g, &p, 0, 0).await;
    let buys = (0..80).map(|i| {
        let (g, p) = (g.clone(), p.clone());
        let user = buyer_in(0, 4, &format!("dry{i}-"));
        tokio::spawn(async move { buy_until_answered(&g, &p, &user).await })
    });
    let answers = futures::future::join_all(buys).await;
    for a in answers {
        let a = a.unwrap();
        assert!(matches!(a, Admission::Admitted { .. }), "{a:?}");
    }
    assert_eq!(shelves_of(&g, &p, 4).await.iter().sum::<i64>(), 220);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_units_over_two_buckets_go_to_eight_of_24_buyers_every_time() {
    // Issue 30: 4 admitted, 20 told 410 and 4 units left, in 20 of 20 runs.
    for run in 0..20 {
        let (g, p) = bucketed(2, 4, 1).await;
        // Each buyer through an instance of its own, as Lambda runs them.
        // 20 buyers of bucket 0, 4 of bucket 1, each through an instance of
        // its own (as Lambda runs them): bucket 0 runs dry first and borrows
        // what bucket 1's own buyers are buying.
        let buys = instances(&p, 24)
            .await
            .into_iter()
            .enumerate()
            .map(|(i, g)| {
                let p = p.clone();
                let user = buyer_in(u16::from(i >= 20), 2, &format!("r{run}u{i}-"));
                tokio::spawn(async move { buy_until_answered(&g, &p, &user).await })
            });
        let answers: Vec<Admission> = futures::future::join_all(buys)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let admitted = answers
            .iter()
            .filter(|a| matches!(a, Admission::Admitted { .. }))
            .count();
        assert_eq!(admitted, 8, "run {run}: {answers:?}");
        assert_eq!(shelves_of(&g, &p, 2).await, [0, 0], "run {run}");
        for a in &answers {
            assert!(
                matches!(
                    a,
                    Admission::Admitted { .. } | Admission::Refused(Refusal::SoldOut)
                ),
                "run {run}: {a:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_buyer_refused_anyway_moves_no_unit() {
    let (g, p) = bucketed(2, 5, 1).await;
    let home = 0;
    shelve(&g, &p, home, 0).await;
    let mut paused = product(&p, 10, 1, -1);
    paused.stock_buckets = 2;
    paused.paused = true;
    paused.control_seq = 1;
    assert!(g.apply_controls(&paused).await.unwrap());
    assert_eq!(
        g.admit(&purchase(&p, &buyer_in(home, 2, "paused"), 1, None))
            .await
            .unwrap(),
        Admission::Refused(Refusal::SalePaused)
    );
    assert_eq!(units_moved(&g, &p, 2).await, 0);
    assert_eq!(shelves_of(&g, &p, 2).await, [0, 5]);
}

/// Issue 30, item 2: a forced warm-up holds back what sold since the
/// caller's fence read, as one bucket does, not everything ever sold (the
/// ledger already excludes that): fence read 6, ledger 4.
#[tokio::test]
async fn a_forced_warm_up_shelves_what_the_ledger_holds_for_any_number_of_buckets() {
    for k in [1u16, 2, 3] {
        let (g, p) = if k == 1 {
            warmed(10, 1).await
        } else {
            bucketed(k, 10 / i64::from(k), 1).await
        };
        let stock = if k == 3 { 9 } else { 10 };
        for i in 0..6 {
            let m = admitted(&g, &purchase(&p, &format!("w{i}"), 1, None)).await;
            assert!(g.settle(&m, Settled::Placed).await.unwrap());
        }
        let seen = g.stats(&p).await.unwrap().unwrap().fence();
        assert_eq!(seen, 6);
        let ledger = stock - 6;
        let mut def = product(&p, stock as u32, 1, -1);
        def.stock_buckets = k;
        assert_eq!(
            g.warm(&def, true, ledger, seen).await.unwrap(),
            Warm::Warmed { stock_left: ledger },
            "{k} buckets"
        );
        assert_eq!(
            shelves_of(&g, &p, k).await.iter().sum::<i64>(),
            ledger,
            "{k} buckets"
        );
        let next = g.admit(&purchase(&p, "next", 1, None)).await.unwrap();
        assert!(
            matches!(next, Admission::Admitted { .. }),
            "{k} buckets: {next:?}"
        );
        // One settled after the fence read and the ledger read: held back.
        let m = admitted(&g, &purchase(&p, "late", 1, None)).await;
        assert!(g.settle(&m, Settled::Placed).await.unwrap());
        assert_eq!(
            g.warm(&def, true, ledger, seen).await.unwrap(),
            Warm::Warmed {
                stock_left: ledger - 2
            },
            "{k} buckets"
        );
    }
}

/// Every key of bucket `b`'s slot gone, as after a failover to a replica
/// that never had its warm-up.
async fn forget_bucket(g: &RedisGate, p: &ProductId, b: u16) {
    let keys = g.bucket_keys(p, b);
    let tagged = keys.meta().replace(":meta", ":*");
    let all: Vec<String> = g.command(redis::cmd("KEYS").arg(&tagged)).await.unwrap();
    assert!(all.contains(&keys.meta()), "{tagged}: {all:?}");
    let _: () = g.command(redis::cmd("DEL").arg(&all)).await.unwrap();
}

/// Issue 30, item 3: a bucket whose warm-up a failover forgot (bucket 0 or
/// another) is restored from a sibling's meta, empty, and the resync fills
/// it, with no operator. Through a fresh process, as the sweeper runs.
#[tokio::test]
async fn a_forgotten_bucket_is_restored_and_filled_without_an_operator() {
    for lost in [0u16, 2] {
        let (g, p) = bucketed(3, 4, 1).await;
        forget_bucket(&g, &p, lost).await;
        let fresh = gate();
        fresh.count_buckets_with(Box::new(|_| Box::pin(async { Ok(Some(3)) })));
        let buyer = buyer_in(lost, 3, "lost");
        assert_eq!(
            fresh.admit(&purchase(&p, &buyer, 1, None)).await.unwrap(),
            Admission::Refused(Refusal::UnknownProduct),
            "bucket {lost}"
        );
        assert_eq!(fresh.restore_buckets(&p).await.unwrap(), [lost]);
        assert_eq!(fresh.restore_buckets(&p).await.unwrap(), Vec::<u16>::new());
        let meta = |b: u16| {
            let (g, key) = (g.clone(), g.bucket_keys(&p, b).meta());
            async move {
                let mut m: BTreeMap<String, String> =
                    g.command(redis::cmd("HGETALL").arg(key)).await.unwrap();
                m.remove("control_seq");
                m
            }
        };
        assert_eq!(meta(lost).await, meta((lost + 1) % 3).await);
        let mut shelves = vec![4, 4, 4];
        shelves[usize::from(lost)] = 0;
        assert_eq!(shelves_of(&g, &p, 3).await, shelves, "bucket {lost}");
        let fence = fresh.stats(&p).await.unwrap().unwrap().fence();
        assert_eq!(
            fresh.resync(&p, &remaining(12), fence).await.unwrap(),
            Some(4),
            "bucket {lost}"
        );
        assert_eq!(fresh.stats(&p).await.unwrap().unwrap().stock_left, 12);
        admitted(&fresh, &purchase(&p, &buyer, 1, None)).await;
    }
    // Nothing warmed at all: not the sweeper's to warm.
    let fresh = gate();
    fresh.count_buckets_with(Box::new(|_| Box::pin(async { Ok(Some(3)) })));
    assert_eq!(
        fresh.restore_buckets(&unique("cold")).await.unwrap(),
        Vec::<u16>::new()
    );
}

/// Issue 33: an admission is redeemed for the first account that buys
/// with it, product-wide, for as long as asked; each first redemption is
/// one entry.
#[tokio::test]
async fn an_admission_is_held_by_the_first_account_until_it_lapses() {
    let g = gate();
    let p = unique("room");
    let nonce = "00ff00ff00ff00ff";
    assert_eq!(g.redeem(&p, nonce, "u1", 60_000).await.unwrap(), "u1");
    assert_eq!(g.redeem(&p, nonce, "u2", 60_000).await.unwrap(), "u1");
    assert_eq!(g.redeem(&p, nonce, "u1", 60_000).await.unwrap(), "u1");
    assert_eq!(g.entries(&p).await.unwrap(), 1);
    assert_eq!(
        g.redeem(&p, "0000000000000001", "u2", 60_000)
            .await
            .unwrap(),
        "u2"
    );
    assert_eq!(g.entries(&p).await.unwrap(), 2);
    let ttl: i64 = g
        .command(redis::cmd("PTTL").arg(g.keys(&p).room_pass(nonce)))
        .await
        .unwrap();
    assert!((50_000..=60_000).contains(&ttl), "{ttl}");
    // Lapsed: the next account may hold it (its admission is long
    // expired by then, and deduct refuses it before this).
    assert_eq!(
        g.redeem(&p, "00000000000000aa", "u3", 20).await.unwrap(),
        "u3"
    );
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(
        g.redeem(&p, "00000000000000aa", "u4", 60_000)
            .await
            .unwrap(),
        "u4"
    );
}
