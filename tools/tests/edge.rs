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
use shared::edge::{Change, EdgeStore, EdgeValue, Written};
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
    let (kvs_addr, _) = s.running.kvs.clone().expect("the runner's local store");
    let edge = LocalEdge::start(LOOPBACK, s.running.addr, kvs_addr)
        .await
        .expect("starting the local edge");
    let through = Api::new(format!("http://{}", edge.addr), ADMIN_TOKEN);
    Edged {
        s,
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

/// Waits until the edge's own copy of the store says `state` for `product`.
async fn edge_says(edge: &Api, product: &str, state: SaleState) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let view = edge.call("GET", "/_edge/view", &[], None).await.unwrap();
        let value = view.body[product].as_str().and_then(EdgeValue::parse);
        if value.as_ref().is_some_and(|v| v.state == state) {
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
    let [soon, live, held, gone, over, dry_held] =
        ["soon", "live", "held", "gone", "over", "dryheld"].map(unique);
    s.on_sale(&soon, 5, json!({ "starts_at": later })).await;
    s.on_sale(&live, 50, json!({})).await;
    s.on_sale(&held, 5, json!({})).await;
    control(s, &held, "pause").await;
    s.on_sale(&gone, 1, json!({})).await;
    assert_eq!(buy(&s.api, &gone, "first", None).await.status, 202);
    s.on_sale(&over, 5, json!({})).await;
    control(s, &over, "end").await;
    // Sold out, then paused: the origin answers paused (ask again).
    s.on_sale(&dry_held, 1, json!({})).await;
    assert_eq!(buy(&s.api, &dry_held, "first", None).await.status, 202);
    for (product, state) in [
        (&soon, SaleState::Upcoming),
        (&live, SaleState::OnSale),
        (&held, SaleState::Paused),
        (&gone, SaleState::SoldOut),
        (&over, SaleState::Ended),
        (&dry_held, SaleState::SoldOut),
    ] {
        edge_says(&e.through, product, state).await;
    }
    control(s, &dry_held, "pause").await;
    edge_says(&e.through, &dry_held, SaleState::Paused).await;
    let cases = [
        ("not started", soon.as_str(), 403, true),
        ("on sale", live.as_str(), 202, false),
        ("paused", held.as_str(), 503, false),
        ("sold out", gone.as_str(), 410, true),
        ("ended", over.as_str(), 403, true),
        ("sold out, then paused", dry_held.as_str(), 503, false),
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
    /// When it was sent: the edge decided at or after this.
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
                let sent = Instant::now();
                let answer = buy(&through, &product, &user, None).await;
                if answer.status == 202 {
                    let id = answer.body["request_id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    admitted.lock().unwrap().push((id, user));
                }
                tries.lock().unwrap().push(Try {
                    at: sent,
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
    // than the bound: within the bound before each edge refusal was sent
    // (the edge decided after), a sample found the shelf dry. Samples come
    // every 20 ms, so a window of the bound holds dozens of them.
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
            window.len() > 10 && window.iter().any(|left| *left <= 0),
            "refused at the edge while the shelf held units for {bound:?}: {window:?}"
        );
    }
}

type Hold = (
    ProductId,
    tokio::sync::oneshot::Sender<()>,
    tokio::sync::oneshot::Receiver<()>,
);

/// The order store, whose next read of one product, once armed, waits for
/// a go-ahead after reading: two publishers forced to race between one's
/// reads of the sales and its write, wherever it reads the store's version.
#[derive(Clone)]
struct Held<S> {
    inner: S,
    gate: Arc<Mutex<Option<Hold>>>,
}

impl<S: Catalogue> Catalogue for Held<S> {
    async fn create_product(&self, product: &shared::domain::Product) -> PortResult<bool> {
        self.inner.create_product(product).await
    }
    async fn product(&self, id: &ProductId) -> PortResult<Option<shared::domain::Product>> {
        let read = self.inner.product(id).await;
        let armed = {
            let mut gate = self.gate.lock().unwrap();
            match gate.take() {
                Some((held, reached, go)) if held == *id => Some((reached, go)),
                other => {
                    *gate = other;
                    None
                }
            }
        };
        if let Some((reached, go)) = armed {
            let _ = reached.send(());
            let _ = go.await;
        }
        read
    }
    async fn ledger(&self, id: &ProductId) -> PortResult<Option<shared::domain::Ledger>> {
        self.inner.ledger(id).await
    }
    async fn live_products(&self, ends_after_ms: i64) -> PortResult<Vec<ProductId>> {
        self.inner.live_products(ends_after_ms).await
    }
}

/// A local store on a free port whose writes reach its view at once; its
/// endpoint, and what keeps it serving.
async fn local_store() -> (LocalKvs, String, watch::Sender<bool>) {
    let kvs = LocalKvs::new(Duration::ZERO);
    let (stop, shutdown) = watch::channel(false);
    let (addr, _) = kvs.clone().serve(LOOPBACK, shutdown).await.unwrap();
    (kvs, format!("http://{addr}"), stop)
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
    let (kvs, endpoint, _serving) = local_store().await;
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
    let held = Held {
        inner: s.store.clone(),
        gate: Arc::default(),
    };
    let publisher = |store| {
        Publisher::new(
            s.gate.clone(),
            store,
            KvsStore::new(&sdk, LOCAL_ARN, Some(&endpoint)),
            Arc::new(SystemClock),
        )
    };
    let a = Arc::new(publisher(held.clone()));
    let b = publisher(Held {
        inner: s.store.clone(),
        gate: Arc::default(),
    });
    let arm = |product: &str| {
        let (reached, reached_rx) = tokio::sync::oneshot::channel();
        let (go, go_rx) = tokio::sync::oneshot::channel();
        let id = ProductId::parse(product).unwrap();
        *held.gate.lock().unwrap() = Some((id, reached, go_rx));
        (reached_rx, go)
    };
    let product = unique("race");
    s.on_sale(&product, 5, json!({})).await;
    a.publish().await.unwrap();
    assert_eq!(sequences(&kvs, &product), [(SaleState::OnSale, 0)]);

    // A reads "paused" and is held before its write.
    control(&s, &product, "pause").await;
    let (reached_rx, go) = arm(&product);
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
    // And A, whose copy of the store is older than B's last write, finds
    // the version moved, reads the store again and writes nothing.
    let again = a.publish().await.unwrap();
    assert_eq!((again.written, again.stale), (0, 0), "{again:?}");
    assert_eq!(sequences(&kvs, &product).len(), 3);
    assert_eq!(
        EdgeValue::parse(&kvs.view()[&product]).map(|v| v.state),
        Some(SaleState::Ended)
    );
}

/// A pass refused as stale starts over at once: its second read of a dry
/// shelf a few milliseconds later is not the second pass a sell-out needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_pass_does_not_count_as_a_second_dry_read() {
    let s = TestStack::start("edge-dry", 30).await;
    let (kvs, endpoint, _serving) = local_store().await;
    let held = Held {
        inner: s.store.clone(),
        gate: Arc::default(),
    };
    let p = Arc::new(Publisher::new(
        s.gate.clone(),
        held.clone(),
        KvsStore::new(&s.sdk, LOCAL_ARN, Some(&endpoint)),
        Arc::new(SystemClock),
    ));
    let other = KvsStore::new(&s.sdk, LOCAL_ARN, Some(&endpoint));
    let product = unique("dry");
    s.on_sale(&product, 1, json!({})).await;
    assert_eq!(buy(&s.api, &product, "only", None).await.status, 202);

    // The first pass reads the dry shelf, is held, and another write lands.
    let (reached, reached_rx) = tokio::sync::oneshot::channel();
    let (go, go_rx) = tokio::sync::oneshot::channel();
    *held.gate.lock().unwrap() = Some((ProductId::parse(&product).unwrap(), reached, go_rx));
    let first = tokio::spawn({
        let p = p.clone();
        async move { p.publish().await }
    });
    reached_rx.await.unwrap();
    let version = other.version().await.unwrap();
    let unrelated = Change::Put {
        key: "unrelated".into(),
        value: "x".into(),
    };
    assert!(matches!(
        other.write(&[unrelated], &version).await.unwrap(),
        Written::At(_)
    ));
    let _ = go.send(());
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.stale, 1, "{first:?}");
    assert_eq!(
        sequences(&kvs, &product),
        [(SaleState::OnSale, 0)],
        "one pass read the shelf dry, yet the edge says sold out"
    );
    // A second pass does.
    p.publish().await.unwrap();
    assert_eq!(
        sequences(&kvs, &product),
        [(SaleState::OnSale, 0), (SaleState::SoldOut, 0)]
    );
}

/// The adapter on the local store: writes with If-Match move the version,
/// a stale one is refused and changes nothing, deletes remove, and the
/// listing pages through more than one page (50 keys).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adapter_writes_pages_and_is_refused_when_stale() {
    let (_, endpoint, _serving) = local_store().await;
    let sdk = shared::aws::load_sdk_config().await;
    let store = KvsStore::new(&sdk, LOCAL_ARN, Some(&endpoint));
    let put = |i: usize| Change::Put {
        key: format!("p{i:03}"),
        value: format!("v{i}"),
    };
    let first = store.version().await.unwrap();
    let mut version = first.clone();
    for chunk in (0..120).map(put).collect::<Vec<_>>().chunks(50) {
        match store.write(chunk, &version).await.unwrap() {
            Written::At(next) => version = next,
            Written::Stale => panic!("refused at the current version"),
        }
    }
    assert_eq!(store.entries().await.unwrap().len(), 120);
    assert_eq!(
        store.write(&[put(500)], &first).await.unwrap(),
        Written::Stale
    );
    let deleted = store
        .write(&[Change::Delete { key: "p000".into() }], &version)
        .await
        .unwrap();
    assert!(matches!(deleted, Written::At(_)));
    let entries = store.entries().await.unwrap();
    assert_eq!(entries.len(), 119);
    assert!(!entries.iter().any(|(k, _)| k == "p000" || k == "p500"));
}
