//! The edge (issue 32) on the local stack: the edge function run by the
//! local edge (node, edge/local/server.mjs) in front of the runner, the
//! publisher writing the local KeyValueStore (tools::kvs) through its AWS
//! adapter. Run through localstack/with-stack.sh.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{ADMIN_TOKEN, Options, TestStack, unique};
use edge_publisher::Publisher;
use serde_json::json;
use shared::aws::KvsStore;
use shared::domain::{ProductId, SaleState};
use shared::edge::{EdgeStore, EdgeValue, Written};
use shared::ports::PortResult;
use shared::ports::SystemClock;
use shared::ports::prelude::*;
use time::format_description::well_known::Rfc3339;
use tokio::sync::watch;
use tools::client::{Answer, Api, address_of};
use tools::edge::LocalEdge;
use tools::kvs::{LOCAL_ARN, LocalKvs};
use tools::runner::EdgeConfig;

const LOOPBACK: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// How long after units are back on the shelf the edge may still refuse:
/// a publish period, the store's propagation and the edge's copy (50 ms),
/// with half a second for a pass's own reads.
fn back_on_sale_bound(edge: &EdgeConfig) -> Duration {
    edge.publish_every + edge.propagation + Duration::from_millis(550)
}

struct Edged {
    s: TestStack,
    kvs: LocalKvs,
    edge: LocalEdge,
    /// Buys through the edge.
    through: Api,
    config: EdgeConfig,
}

async fn start(hint: &str) -> Edged {
    let config = EdgeConfig::local();
    let s = TestStack::start_with(
        hint,
        Options {
            edge: Some(config.clone()),
            ..Options::default()
        },
    )
    .await;
    let (kvs_addr, kvs) = s.running.kvs.clone().expect("the runner's local store");
    let edge = LocalEdge::start(LOOPBACK, s.running.addr, kvs_addr)
        .await
        .expect("starting the local edge");
    let through = Api::new(format!("http://{}", edge.addr), ADMIN_TOKEN);
    Edged {
        s,
        kvs,
        edge,
        through,
        config,
    }
}

/// A buy naming its product in the header the edge reads, and in the body.
async fn buy(api: &Api, product: &str, user: &str, key: Option<&str>) -> Answer {
    let address = address_of(user);
    let mut headers = vec![
        ("X-Forwarded-For", address.as_str()),
        ("X-Flashsale-Product", product),
    ];
    headers.extend(key.map(|k| ("Idempotency-Key", k)));
    api.call(
        "POST",
        "/api/flash-sale/buy",
        &headers,
        Some(&json!({ "product_id": product, "user_id": user })),
    )
    .await
    .unwrap()
}

/// Waits until what the edge reads says `state` for `product`.
async fn edge_says(kvs: &LocalKvs, product: &str, state: SaleState) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let value = kvs.view().get(product).and_then(|v| EdgeValue::parse(v));
        if value.as_ref().is_some_and(|v| v.state == state) {
            // And the edge's own copy of the view (polled every 50 ms).
            tokio::time::sleep(Duration::from_millis(150)).await;
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the edge never said {state:?} of {product}: {value:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn control(s: &TestStack, product: &str, action: &str) {
    let path = format!("/api/admin/products/{product}/{action}");
    let done = s
        .api
        .admin("POST", &path, Some(&json!({ "reason": "test" })))
        .await
        .unwrap();
    assert_eq!(done.status, 200, "{action}: {}", done.body);
}

/// The edge's answers are the origin's: the same buys, sent to the origin
/// and through the edge, get the same status and body in every state; the
/// edge answered the ones it can (not started, sold out, ended) itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_answers_what_the_origin_answers() {
    let e = start("edge-parity").await;
    let s = &e.s;
    let later = (time::OffsetDateTime::now_utc() + time::Duration::hours(1))
        .format(&Rfc3339)
        .unwrap();
    let [soon, live, held, gone, over] = ["soon", "live", "held", "gone", "over"].map(unique);
    s.on_sale(&soon, 5, json!({ "starts_at": later })).await;
    s.on_sale(&live, 50, json!({})).await;
    s.on_sale(&held, 5, json!({})).await;
    control(s, &held, "pause").await;
    s.on_sale(&gone, 1, json!({})).await;
    assert_eq!(buy(&s.api, &gone, "first", None).await.status, 202);
    s.on_sale(&over, 5, json!({})).await;
    control(s, &over, "end").await;
    for (product, state) in [
        (&soon, SaleState::Upcoming),
        (&live, SaleState::OnSale),
        (&held, SaleState::Paused),
        (&gone, SaleState::SoldOut),
        (&over, SaleState::Ended),
    ] {
        edge_says(&e.kvs, product, state).await;
    }
    let cases = [
        ("not started", soon.as_str(), 403, true),
        ("on sale", live.as_str(), 202, false),
        ("paused", held.as_str(), 503, false),
        ("sold out", gone.as_str(), 410, true),
        ("ended", over.as_str(), 403, true),
        ("unknown product", "no-such-product", 404, false),
        ("malformed id", "not an id!", 400, false),
    ];
    for (i, (case, product, status, at_edge)) in cases.into_iter().enumerate() {
        let origin = buy(&s.api, product, &format!("o{i}"), None).await;
        let edge = buy(&e.through, product, &format!("e{i}"), None).await;
        assert_eq!(
            (origin.status, edge.status),
            (status, status),
            "{case}: {} vs {}",
            origin.body,
            edge.body
        );
        if status == 202 {
            assert_eq!(origin.body["status"], edge.body["status"], "{case}");
        } else {
            assert_eq!(origin.body, edge.body, "{case}");
        }
        assert_eq!(edge.at_edge, at_edge, "{case}: answered at the edge");
        assert!(!origin.at_edge, "{case}");
    }
    e.edge.stop().await;
}

/// One buyer's try through the edge: when it was answered, and how.
struct Try {
    at: Instant,
    status: u16,
    at_edge: bool,
}

/// A sale sells out, gets units back (a cancel, then a stock addition) and
/// sells out again, its crowd buying through the edge all along: the books
/// balance, every unit is sold, and no buyer was refused at the edge while
/// units had stood on the shelf for longer than the stated bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sale_sells_out_comes_back_and_sells_out_again_through_the_edge() {
    let e = start("edge-resell").await;
    let s = &e.s;
    let product = unique("resell");
    s.on_sale(&product, 3, json!({})).await;
    let pid = ProductId::parse(&product).unwrap();

    // The shelf, sampled every 20 ms.
    let shelf: Arc<Mutex<Vec<(Instant, i64)>>> = Arc::default();
    let (stop, stopped) = watch::channel(false);
    let sampler = {
        let (gate, pid, shelf, mut stopped) =
            (s.gate.clone(), pid.clone(), shelf.clone(), stopped.clone());
        tokio::spawn(async move {
            while !*stopped.borrow() {
                if let Ok(Some(stats)) = gate.stats(&pid).await {
                    shelf
                        .lock()
                        .unwrap()
                        .push((Instant::now(), stats.stock_left));
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    _ = stopped.changed() => {}
                }
            }
        })
    };
    // The crowd: four buyers at a time, each a new buyer every 25 ms.
    let tries: Arc<Mutex<Vec<Try>>> = Arc::default();
    let admitted: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let mut crowd = tokio::task::JoinSet::new();
    for lane in 0..4 {
        let (through, product, tries, admitted, stopped) = (
            e.through.clone(),
            product.clone(),
            tries.clone(),
            admitted.clone(),
            stopped.clone(),
        );
        crowd.spawn(async move {
            let mut n = 0;
            while !*stopped.borrow() {
                let user = format!("l{lane}b{n}");
                n += 1;
                let answer = buy(&through, &product, &user, None).await;
                if answer.status == 202 {
                    let id = answer.body["request_id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    admitted.lock().unwrap().push((id, user));
                }
                tries.lock().unwrap().push(Try {
                    at: Instant::now(),
                    status: answer.status,
                    at_edge: answer.at_edge,
                });
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        });
    }
    let refused_at_edge_after = |since: Instant| {
        let tries = tries.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if tries
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|t| t.at > since && t.at_edge && t.status == 410)
                {
                    return;
                }
                assert!(Instant::now() < deadline, "the edge never said sold out");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let admitted_count = |n: usize| {
        let admitted = admitted.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            while admitted.lock().unwrap().len() < n {
                assert!(
                    Instant::now() < deadline,
                    "only {} admitted of {n}",
                    admitted.lock().unwrap().len()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };

    // Sold out: the three units, then the edge's 410.
    admitted_count(3).await;
    refused_at_edge_after(Instant::now()).await;

    // A cancel puts one back: a buyer gets it, then the edge says sold out again.
    let (id, user) = admitted.lock().unwrap()[0].clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let cancelled = s.api.cancel(&id, &user).await.unwrap();
        if cancelled.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "cancel: {} {}",
            cancelled.status,
            cancelled.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    admitted_count(4).await;
    refused_at_edge_after(Instant::now()).await;

    // An operator adds two.
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let added = s
        .api
        .call(
            "POST",
            &format!("/api/admin/products/{product}/stock"),
            &[("Authorization", &auth), ("Idempotency-Key", "edge-add-2")],
            Some(&json!({ "delta": 2, "reason": "found two" })),
        )
        .await
        .unwrap();
    assert_eq!(added.status, 200, "{}", added.body);
    admitted_count(6).await;
    refused_at_edge_after(Instant::now()).await;
    let _ = stop.send(true);
    crowd.join_all().await;
    sampler.await.unwrap();

    // Every unit sold exactly once, the books balanced.
    let books = tools::audit::audit(&s.gate, &s.store, &pid).await.unwrap();
    assert!(books.balanced(), "{books}: {:?}", books.problems());
    assert_eq!(
        admitted.lock().unwrap().len(),
        6,
        "3 units, one back, two added"
    );

    // The promise: no edge 410 while the shelf had held units for longer
    // than the bound (a sample at or below zero within the bound before
    // each edge refusal).
    let bound = back_on_sale_bound(&e.config);
    e.edge.stop().await;
    let shelf = shelf.lock().unwrap();
    let tries = tries.lock().unwrap();
    let edge_refusals: Vec<&Try> = tries.iter().filter(|t| t.at_edge).collect();
    assert!(
        edge_refusals.len() > 10,
        "the edge refused only {}",
        edge_refusals.len()
    );
    for t in &edge_refusals {
        assert_eq!(t.status, 410);
        let window: Vec<i64> = shelf
            .iter()
            .filter(|(at, _)| *at <= t.at && t.at.duration_since(*at) <= bound)
            .map(|(_, left)| *left)
            .collect();
        assert!(
            window.is_empty() || window.iter().any(|left| *left <= 0),
            "refused at the edge while the shelf held units for {bound:?}: {window:?}"
        );
    }
}

type Hold = (
    tokio::sync::oneshot::Sender<()>,
    tokio::sync::oneshot::Receiver<()>,
);

/// An edge store whose next call for a version or a write waits for a
/// go-ahead once armed: two writers forced to race between a publisher's
/// reads of the sales and its write, wherever it reads the version.
struct Held<E> {
    inner: E,
    gate: Mutex<Option<Hold>>,
}

impl<E> Held<E> {
    async fn wait_if_armed(&self) {
        let armed = self.gate.lock().unwrap().take();
        if let Some((reached, go)) = armed {
            let _ = reached.send(());
            let _ = go.await;
        }
    }
}

impl<E: EdgeStore> EdgeStore for Held<E> {
    async fn version(&self) -> PortResult<String> {
        self.wait_if_armed().await;
        self.inner.version().await
    }
    async fn entries(&self) -> PortResult<Vec<(String, String)>> {
        self.inner.entries().await
    }
    async fn put_all(&self, puts: &[(String, String)], version: &str) -> PortResult<Written> {
        self.wait_if_armed().await;
        self.inner.put_all(puts, version).await
    }
}

/// The control sequences a key's values went through.
fn sequences(kvs: &LocalKvs, product: &str) -> Vec<(SaleState, u64)> {
    kvs.history(product)
        .iter()
        .filter_map(|v| EdgeValue::parse(v))
        .map(|v| (v.state, v.control_seq))
        .collect()
}

/// Two publishers race: one read the sale paused and waits to write while
/// the other publishes its resume. The late write finds the store moved on
/// and starts over from fresh reads: paused is never written over resumed.
/// And a write whose reply was lost is not written twice nor undone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publisher_survives_a_race_and_a_lost_reply_without_rolling_back() {
    let s = TestStack::start("edge-race", 30).await;
    let kvs = LocalKvs::new(Duration::ZERO);
    let (_stop, shutdown) = watch::channel(false);
    let (addr, _task) = kvs.clone().serve(LOOPBACK, shutdown).await.unwrap();
    // Attempts time out after 300 ms, so a reply held back 1.5 s is lost.
    let sdk = s
        .sdk
        .to_builder()
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_attempt_timeout(Duration::from_millis(300))
                .build(),
        )
        .build();
    let endpoint = format!("http://{addr}");
    let publisher =
        |edge| Publisher::new(s.gate.clone(), s.store.clone(), edge, Arc::new(SystemClock));
    let (reached, reached_rx) = tokio::sync::oneshot::channel();
    let (go, go_rx) = tokio::sync::oneshot::channel();
    let a = Arc::new(publisher(Held {
        inner: KvsStore::new(&sdk, LOCAL_ARN, Some(&endpoint)),
        gate: Mutex::new(None),
    }));
    let b = publisher(Held {
        inner: KvsStore::new(&sdk, LOCAL_ARN, Some(&endpoint)),
        gate: Mutex::new(None),
    });
    let product = unique("race");
    s.on_sale(&product, 5, json!({})).await;
    a.publish().await.unwrap();
    assert_eq!(sequences(&kvs, &product), [(SaleState::OnSale, 0)]);

    // A reads "paused" and is held before its write.
    control(&s, &product, "pause").await;
    *a.edge.gate.lock().unwrap() = Some((reached, go_rx));
    let late = tokio::spawn({
        let a = a.clone();
        async move { a.publish().await }
    });
    reached_rx.await.unwrap();
    // B publishes the resume meanwhile.
    control(&s, &product, "resume").await;
    let written = b.publish().await.unwrap();
    assert_eq!(written.written, 1);
    let _ = go.send(());
    let late = late.await.unwrap().unwrap();
    assert!(late.stale >= 1, "A's write went through: {late:?}");
    assert_eq!(late.written, 0, "{late:?}");
    assert_eq!(
        sequences(&kvs, &product),
        [(SaleState::OnSale, 0), (SaleState::OnSale, 2)],
        "paused (control 1) was written over the resume (control 2)"
    );

    // A lost reply: B's write of the end lands, its answer never arrives;
    // the retry finds the store moved on, re-reads it and writes nothing.
    control(&s, &product, "end").await;
    kvs.lose_next_reply(Duration::from_millis(1500));
    let again = b.publish().await.unwrap();
    assert!(again.stale >= 1, "{again:?}");
    assert_eq!(
        sequences(&kvs, &product),
        [
            (SaleState::OnSale, 0),
            (SaleState::OnSale, 2),
            (SaleState::Ended, 3)
        ]
    );
    // And A, whose copy of the store is old, does not undo it.
    a.publish().await.unwrap();
    assert_eq!(sequences(&kvs, &product).len(), 3);
    assert_eq!(
        EdgeValue::parse(&kvs.view()[&product]).map(|v| v.state),
        Some(SaleState::Ended)
    );
}
