//! The stack on a real Redis Cluster (3 primaries + 3 replicas on loopback,
//! started and stopped by PID), and a failover that loses acknowledged
//! writes in the middle of a sale.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use common::{Options, TestStack, unique};
use shared::domain::{
    Admission, OrderMessage, OrderStatus, ProductId, Purchase, Quantity, RequestId, UserId,
};
use shared::ports::prelude::*;
use shared::ports::{Settled, Warm};
use shared::redis::{RedisGate, RedisSettings};
use tools::audit::audit;
use tools::client::Api;
use tools::cluster::RedisCluster;
use tools::demo;

fn cluster_gate(c: &RedisCluster, namespace: &str) -> RedisGate {
    RedisGate::new(RedisSettings {
        cluster: true,
        ..common::redis_settings(c.url(), namespace)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_products_keys_share_one_slot_and_the_scripts_run_on_the_cluster() {
    let c = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap()
        .expect("a Redis Cluster on loopback");
    let g = cluster_gate(&c, "fs-cluster");
    let p = ProductId::parse(unique("slot")).unwrap();
    let k = g.keys(&p);
    let id = RequestId::new(&p);
    let purchase = Purchase {
        request_id: id.clone(),
        product_id: p.clone(),
        user_id: UserId::parse("u1").unwrap(),
        quantity: Quantity::new(1).unwrap(),
        idempotency_key: None,
        client_ip: Some("192.0.2.7".parse().unwrap()),
    };
    let slots: Vec<u16> = k
        .admission(&purchase)
        .iter()
        .map(|key| c.slot_of(key).unwrap())
        .collect();
    assert!(slots.iter().all(|s| *s == slots[0]), "{slots:?}");
    // Products spread over the primaries: another product, another slot.
    let other = c.slot_of(&g.keys(&ProductId::parse("p-other").unwrap()).stock());
    assert_ne!(other.unwrap(), slots[0]);

    let product = shared::fakes::product(p.as_str());
    assert_eq!(
        g.warm(&product, false, 10, 0).await.unwrap(),
        Warm::Warmed { stock_left: 10 }
    );
    let Admission::Admitted {
        admitted_at_ms,
        sale_ends_at_ms,
    } = g.admit(&purchase).await.unwrap()
    else {
        panic!("not admitted")
    };
    let msg = OrderMessage::new(&purchase, admitted_at_ms, sale_ends_at_ms);
    let now = g.now_ms().await.unwrap();
    assert_eq!(g.pending_page(&p, now, 0, 10).await.unwrap().scanned, 1);
    assert!(g.settle(&msg, Settled::Placed).await.unwrap());
    let ledger = shared::domain::Ledger {
        remaining: 9,
        ..Default::default()
    };
    assert_eq!(g.resync(&p, &ledger, 1).await.unwrap(), Some(0));
    assert_eq!(g.products().await.unwrap(), vec![p.clone()]);
}

#[derive(Default)]
struct Answers {
    by_status: BTreeMap<u16, usize>,
    /// 202s and 200s: request ids the service promised.
    promised: Vec<RequestId>,
    slowest: Duration,
}

async fn buy(api: &Api, product: &str, buyer: usize, answers: &Mutex<Answers>) -> u16 {
    let body = json!({ "product_id": product, "quantity": 1, "user_id": format!("b{buyer}") });
    let started = Instant::now();
    let answer = api.buy(&body, None).await.expect("the runner answers");
    let mut a = answers.lock().unwrap();
    *a.by_status.entry(answer.status).or_default() += 1;
    a.slowest = a.slowest.max(started.elapsed());
    if matches!(answer.status, 200 | 202) {
        let id = answer.body["request_id"].as_str().unwrap();
        a.promised.push(RequestId::parse(id).unwrap());
    }
    answer.status
}

/// Buyers in `range`, four at a time.
async fn buyers(api: &Api, product: &str, range: std::ops::Range<usize>, a: &Mutex<Answers>) {
    let all: Vec<usize> = range.collect();
    for chunk in all.chunks(4) {
        futures::future::join_all(chunk.iter().map(|b| buy(api, product, *b, a))).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failover_that_forgets_acknowledged_writes_keeps_the_promise() {
    failover_drill(1).await;
}

/// Issue 21: a product's shelf in 4 stock buckets spread over the
/// primaries; one bucket's primary dies having acknowledged writes its
/// replica never got, and the sale still balances.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bucketed_sale_balances_after_one_buckets_primary_fails_over() {
    failover_drill(4).await;
}

/// Script calls (EVALSHA and EVAL) each node ran so far, by port.
fn script_calls(c: &RedisCluster) -> BTreeMap<u16, u64> {
    c.nodes
        .iter()
        .filter_map(|n| {
            let stats = tools::cluster::cli(n.port, &["info", "commandstats"]).ok()?;
            let calls: u64 = stats
                .lines()
                .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
                .filter_map(|l| {
                    l.split("calls=")
                        .nth(1)?
                        .split(',')
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .sum();
            Some((n.port, calls))
        })
        .collect()
}

/// A product id whose `buckets` stock buckets are served by at least two
/// primaries (a fresh id's slots are random: 4 buckets all land on one of
/// 3 primaries 1 time in 27), and the primary of each bucket.
fn spread_product(c: &RedisCluster, gate: &RedisGate, buckets: u16) -> (String, Vec<u16>) {
    loop {
        let product = unique("failover");
        let p = ProductId::parse(&product).unwrap();
        let primaries: Vec<u16> = (0..buckets)
            .map(|b| {
                let slot = c.slot_of(&gate.bucket_keys(&p, b).stock()).unwrap();
                c.primary_and_replica(slot).unwrap().0
            })
            .collect();
        let distinct: std::collections::BTreeSet<&u16> = primaries.iter().collect();
        if buckets == 1 || distinct.len() >= 2 {
            return (product, primaries);
        }
    }
}

/// The drill: a sale of `buckets` stock buckets on the cluster, a failover
/// of one bucket's primary (the last bucket whose primary is not bucket
/// 0's: buckets fail over independently) in the middle of it.
async fn failover_drill(buckets: u16) {
    let mut c = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap()
        .expect("a Redis Cluster on loopback");
    let s = TestStack::start_with(
        "failover",
        Options {
            visibility_timeout: 2,
            sweep_after_ms: 1_000,
            resend_after_ms: 12_000,
            pollers: 2,
            cluster_url: Some(c.url()),
            // DynamoDB's per-item limits, scaled to the emulator: the
            // sharded ledger's placements conflict and throttle as well.
            // Each transaction is in flight 100 ms (FLASHSALE_DRILL_HOLD_MS
            // tries others): with the holds outliving the answers, and
            // placements that spent receives on contention, a unit ended
            // compensated after the buyers were gone (issue 18).
            capacity: Some(tools::capacity::Capacity {
                wcu_per_item: 40.0,
                hold: Duration::from_millis(
                    std::env::var("FLASHSALE_DRILL_HOLD_MS").map_or(100, |v| v.parse().unwrap()),
                ),
            }),
            ..Options::default()
        },
    )
    .await;
    let (product, primaries) = spread_product(&c, &s.gate, buckets);
    let stock = 40;
    demo::create_and_warm_bucketed(&s.api, &product, stock, 1, 900, 4, buckets)
        .await
        .unwrap();
    let p = ProductId::parse(&product).unwrap();
    let failing = (0..buckets)
        .rev()
        .find(|b| primaries[usize::from(*b)] != primaries[0])
        .unwrap_or(0);
    let slot = c.slot_of(&s.gate.bucket_keys(&p, failing).stock()).unwrap();
    let (primary, replica) = c.primary_and_replica(slot).unwrap();
    let answers = Arc::new(Mutex::new(Answers::default()));

    // Before: a healthy sale, each primary serving its buckets' calls.
    let calls_before = script_calls(&c);
    buyers(&s.api, &product, 0..12, &answers).await;
    let calls: BTreeMap<u16, u64> = script_calls(&c)
        .into_iter()
        .map(|(port, n)| (port, n - calls_before.get(&port).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    let total: u64 = calls.values().sum();
    let shares: Vec<String> = calls
        .iter()
        .map(|(port, n)| format!(":{port} {:.0}%", 100.0 * *n as f64 / total as f64))
        .collect();
    // The replica falls behind; these admissions are acknowledged by the
    // primary alone, and some of them placed and settled.
    c.isolate_replica(primary, replica).unwrap();
    buyers(&s.api, &product, 12..24, &answers).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The primary dies; the stale replica is promoted. Buyers keep coming.
    let during = {
        let (api, product, answers) = (s.api.clone(), product.clone(), answers.clone());
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for b in 24..40 {
                statuses.push(buy(&api, &product, b, &answers).await);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            statuses
        })
    };
    let stats_key = s.gate.bucket_keys(&p, failing).stats();
    let (c2, drill) = tokio::task::spawn_blocking(move || {
        let d = c.fail_over(primary, replica, slot, (&stats_key, "admitted"));
        (c, d)
    })
    .await
    .unwrap();
    c = c2;
    let drill = drill.expect("the replica is promoted");
    let during = during.await.unwrap();
    c.wait_healthy(Duration::from_secs(20)).unwrap();

    // After: the rest of the crowd, in two waves a few sweeps apart: by the
    // second, the shelf has healed and every unit left is bought.
    buyers(&s.api, &product, 40..65, &answers).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    buyers(&s.api, &product, 65..110, &answers).await;

    // Quiet: every promise kept, the books balanced.
    let sqs = aws_sdk_sqs::Client::new(&s.sdk);
    demo::wait_settled(
        &s.gate,
        Some(&sqs),
        &[&s.names.orders_queue_url, &s.names.orders_dlq_url],
        &p,
        Duration::from_secs(120),
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let books = loop {
        let books = audit(&s.gate, &s.store, &p).await.unwrap();
        if books.balanced() || Instant::now() > deadline {
            break books;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let (by_status, slowest, promised) = {
        let a = answers.lock().unwrap();
        (a.by_status.clone(), a.slowest, a.promised.clone())
    };
    let stranded = i64::from(stock) - books.placed_units - books.stock_left;
    let (lost_writes, promoted_in) = (drill.lost_writes, drill.promoted_in);
    let (passed, conflicts, throttled) = s.capacity_refusals.as_ref().unwrap().snapshot();
    println!(
        "failover figures: buckets={buckets} (primaries {primaries:?}, bucket {failing} failed over) \
         script calls per primary in the first wave: {shares:?} \
         failovers=1 lost_writes={lost_writes} stranded={stranded} promoted_in={promoted_in:?} \
         answers={:?} during_failover={during:?} slowest={:?} dynamodb_writes={passed} \
         conflicts={conflicts} throttled={throttled}\n{books}",
        by_status, slowest
    );
    assert!(lost_writes > 0, "the drill must lose acknowledged writes");
    assert!(!by_status.contains_key(&500), "{by_status:?}");
    assert!(slowest < Duration::from_secs(10), "{slowest:?}");
    // While the slot has no primary a buy either waits for the promotion
    // (the cluster client retries within its timeout) or answers 503.
    assert!(
        during.iter().all(|s| matches!(s, 202 | 409 | 410 | 503)),
        "{during:?}"
    );
    assert_eq!(books.oversold, 0, "{books}");
    assert_eq!(books.duplicate_buyers, 0, "{books}");
    assert_eq!(stranded, 0, "{books}");
    assert_eq!(
        books.stock_left, 0,
        "units left unsold while buyers were refused: {books}"
    );
    assert!(books.balanced(), "{books} {:?}", books.problems());
    for id in &promised {
        let order = s.store.order(id).await.unwrap();
        assert!(
            order.is_some_and(|o| o.status != OrderStatus::Pending),
            "202 for {id} but no order decided"
        );
    }
    s.running.stop().await;
}

/// Buyers keep the gate busy while the product's primary dies: redis-rs
/// 1.8's cluster client then deadlocked (a slot refresh waiting for a lock a
/// request it stopped polling held), and every call of every slot timed out
/// for the rest of the run. The gate replaces a connection that gets no
/// answer for four response timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_busy_gate_answers_again_after_its_primary_dies() {
    let mut c = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap()
        .expect("a Redis Cluster on loopback");
    let g = RedisGate::new(RedisSettings {
        cluster: true,
        response_timeout: Duration::from_millis(500),
        ..common::redis_settings(c.url(), "fs-busy")
    });
    let p = ProductId::parse(unique("busy")).unwrap();
    let product = shared::fakes::product(p.as_str());
    g.warm(&product, false, 1_000_000, 0).await.unwrap();
    let slot = c.slot_of(&g.keys(&p).stock()).unwrap();
    let (primary, replica) = c.primary_and_replica(slot).unwrap();

    // 64 buyers in a loop; each answer is logged as (when, answered).
    let start = Instant::now();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answers = Arc::new(Mutex::new(Vec::<(Duration, bool)>::new()));
    let buyers: Vec<_> = (0..64)
        .map(|i| {
            let (g, p, stop, answers) = (g.clone(), p.clone(), stop.clone(), answers.clone());
            tokio::spawn(async move {
                for n in 0.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let purchase = Purchase {
                        request_id: RequestId::new(&p),
                        product_id: p.clone(),
                        user_id: UserId::parse(format!("u{i}-{n}")).unwrap(),
                        quantity: Quantity::new(1).unwrap(),
                        idempotency_key: None,
                        client_ip: None,
                    };
                    let ok = g.admit(&purchase).await.is_ok();
                    answers.lock().unwrap().push((start.elapsed(), ok));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.isolate_replica(primary, replica).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats_key = g.keys(&p).stats();
    let (_c, drill) = tokio::task::spawn_blocking(move || {
        let d = c.fail_over(primary, replica, slot, (&stats_key, "admitted"));
        (c, d)
    })
    .await
    .unwrap();
    drill.expect("the replica is promoted");
    let promoted = start.elapsed();
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for b in buyers {
        b.await.unwrap();
    }

    // From 4 s after the promotion (the replacement's bound, 2 s, plus
    // the calls in flight then), every call is answered.
    let answers = answers.lock().unwrap();
    let late: Vec<_> = answers
        .iter()
        .filter(|(at, _)| *at > promoted + Duration::from_secs(4))
        .collect();
    let failed = late.iter().filter(|(_, ok)| !ok).count();
    assert!(
        late.len() > 100,
        "only {} calls after the promotion",
        late.len()
    );
    assert_eq!(
        failed,
        0,
        "{failed} of {} calls failed after the promotion",
        late.len()
    );
}
