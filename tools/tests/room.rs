//! The waiting room (issue 33) on the local stack, end to end: the edge
//! function run by the local edge in front of the runner, the publisher
//! steering the room's curve in the local KeyValueStore, deduct checking
//! and redeeming admissions at the real origin. Run through
//! localstack/with-stack.sh.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{ADMIN_TOKEN, Options, TestStack, unique};
use serde_json::json;
use shared::domain::ProductId;
use shared::room::Key;
use tools::client::{Api, Page};
use tools::edge::LocalEdge;
use tools::runner::EdgeConfig;

const LOOPBACK: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

fn key() -> Key {
    Key {
        id: "t1".into(),
        secret: b"room-stack-test-secret-0123456789".to_vec(),
    }
}

async fn room_page(edge: &Api, product: &str, address: &str, place: Option<&str>) -> Page {
    let cookie = place.map(|p| format!("fs_place_{product}={p}"));
    let mut headers = vec![("X-Forwarded-For", address)];
    if let Some(c) = &cookie {
        headers.push(("Cookie", c.as_str()));
    }
    let path = format!("/room?product_id={product}&return=/sale");
    edge.page("GET", &path, &headers, None).await.unwrap()
}

async fn buy(
    api: &Api,
    product: &str,
    user: &str,
    admission: Option<&str>,
) -> (u16, serde_json::Value, bool) {
    let cookie = admission.map(|a| format!("fs_admit_{product}={a}"));
    let mut headers = vec![("X-Flashsale-Product", product)];
    if let Some(c) = &cookie {
        headers.push(("Cookie", c.as_str()));
    }
    let a = api
        .call(
            "POST",
            "/api/flash-sale/buy",
            &headers,
            Some(&json!({ "product_id": product, "user_id": user })),
        )
        .await
        .unwrap();
    (a.status, a.body, a.at_edge)
}

async fn forwarded(edge: &Api) -> u64 {
    let stats = edge.call("GET", "/_edge/stats", &[], None).await.unwrap();
    stats.body["forwarded"].as_u64().unwrap()
}

/// A visitor who came before the start waits on the room's page, keeps
/// their place across visits, is let in once the sale opens and buys at
/// the real origin; their admission buys for one account only; a buy
/// without one is refused at the edge (the origin hears nothing) and again
/// at the origin when the edge is bypassed; the books balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_waits_is_let_in_and_buys_once_per_admission_at_the_real_origin() {
    let s = TestStack::start_with(
        "room",
        Options {
            edge: Some(EdgeConfig::local()),
            room_keys: vec![key()],
            ..Options::default()
        },
    )
    .await;
    let (kvs, _) = s.running.kvs.clone().expect("the runner's local store");
    let edge = LocalEdge::start(LOOPBACK, s.running.addr, kvs)
        .await
        .expect("starting the local edge");
    let through = Api::new(format!("http://{}", edge.addr), ADMIN_TOKEN);
    let product = unique("room");
    let starts_at = time::OffsetDateTime::now_utc() + time::Duration::seconds(6);
    let rfc = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let created = s
        .on_sale(
            &product,
            10,
            json!({
                "starts_at": rfc(starts_at),
                "waiting_room": { "early_window_secs": 5, "start_rate": 20, "ceiling": 20, "admission_secs": 60 },
            }),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    // The publisher's pass and the store's propagation.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut first = room_page(&through, &product, "10.9.0.1", None).await;
    while !first.body.contains("You are in line") {
        assert!(
            Instant::now() < deadline,
            "the room never opened: {} {}",
            first.status,
            first.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        first = room_page(&through, &product, "10.9.0.1", None).await;
    }
    assert_eq!(first.status, 200);
    assert!(first.body.contains("The sale starts at"), "{}", first.body);
    let place = first
        .set_cookie(&format!("fs_place_{product}"))
        .expect("a place cookie");

    // Back with their place until the frontier passes it: the same place.
    let deadline = Instant::now() + Duration::from_secs(30);
    let admission = loop {
        let page = room_page(&through, &product, "10.9.0.1", Some(&place)).await;
        match page.status {
            303 => {
                assert_eq!(page.headers["location"], "/sale");
                break page
                    .set_cookie(&format!("fs_admit_{product}"))
                    .expect("an admission cookie");
            }
            200 => {
                assert!(
                    page.set_cookie(&format!("fs_place_{product}")).is_none(),
                    "a returning visitor was given another place"
                );
            }
            other => panic!("the room answered {other}: {}", page.body),
        }
        assert!(Instant::now() < deadline, "never let in");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        time::OffsetDateTime::now_utc() >= starts_at,
        "let in before the start"
    );

    // Once the sale is on, no admission: refused at the edge, and the
    // origin hears nothing.
    let before = forwarded(&through).await;
    let (status, body, at_edge) = buy(&through, &product, "stranger", None).await;
    assert_eq!((status, at_edge), (403, true), "{body}");
    assert_eq!(body["error"], "admission_required");
    assert_eq!(
        forwarded(&through).await,
        before,
        "the origin heard a buy without admission"
    );
    // Straight at the origin, past the edge: refused there too.
    let (status, body, _) = buy(&s.api, &product, "stranger", None).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "admission_required");
    assert_eq!(body["room"], format!("/room?product_id={product}"));

    let (status, body, _) = buy(&through, &product, "u1", Some(&admission)).await;
    assert_eq!(status, 202, "{body}");
    // The same admission for another account: redeemed already.
    let (status, body, _) = buy(&through, &product, "u2", Some(&admission)).await;
    assert_eq!(
        (status, &body["error"]),
        (403, &json!("admission_used")),
        "{body}"
    );
    // Altered: refused at the edge.
    let forged = format!(
        "{}{}",
        &admission[..admission.len() - 1],
        if admission.ends_with('0') { '1' } else { '0' }
    );
    let (status, body, at_edge) = buy(&through, &product, "u3", Some(&forged)).await;
    assert_eq!((status, at_edge), (403, true), "{body}");

    let id = ProductId::parse(&product).unwrap();
    tools::demo::wait_drained(&s.gate, &id, Duration::from_secs(30))
        .await
        .unwrap();
    let audit = tools::audit::audit(&s.gate, &s.store, &id).await.unwrap();
    assert!(audit.balanced(), "{audit}: {:?}", audit.problems());
    assert_eq!((audit.admitted, audit.oversold), (1, 0), "{audit}");
    edge.stop().await;
}
