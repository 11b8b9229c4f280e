//! The Redis scripts on a real Redis server (started by `make test`).

use std::collections::BTreeMap;
use std::time::Duration;

use shared::domain::{
    Admission, IdempotencyKey, OrderMessage, OrderStatus, Product, ProductId, Purchase, Quantity,
    Refusal, RequestId, UserId,
};
use shared::ports::{StockGate, Warm};
use shared::redis::{RedisGate, RedisSettings};
use time::OffsetDateTime;

fn settings(url: String) -> RedisSettings {
    RedisSettings {
        url,
        cluster: false,
        response_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(2),
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
    }
}

async fn warmed(stock: u32, limit: u32) -> (RedisGate, ProductId) {
    let g = gate();
    let p = unique("adm");
    let w = g.warm(&product(&p, stock, limit, -1), false).await.unwrap();
    assert_eq!(
        w,
        Warm::Warmed {
            stock_left: i64::from(stock)
        }
    );
    (g, p)
}

fn purchase(p: &ProductId, user: &str, qty: u32, key: Option<&str>) -> Purchase {
    Purchase {
        request_id: RequestId::new(p),
        product_id: p.clone(),
        user_id: UserId::parse(user).unwrap(),
        quantity: Quantity::new(qty).unwrap(),
        idempotency_key: key.map(|k| IdempotencyKey::parse(k).unwrap()),
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
    let (g, p) = warmed(1, 2).await;
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
        (purchase(&p, "carol", 1, Some("k4")), Refusal::SoldOut),
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
    assert!(matches!(
        g.admit(&first).await.unwrap(),
        Admission::Admitted { .. }
    ));
    let again = purchase(&p, "alice", 1, Some("same"));
    assert_eq!(
        g.admit(&again).await.unwrap(),
        Admission::Replay {
            request_id: first.request_id.clone()
        }
    );
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
    g.warm(&product(&early, 5, 1, 3600), false).await.unwrap();
    assert_eq!(
        g.admit(&purchase(&early, "u", 1, None)).await.unwrap(),
        Admission::Refused(Refusal::SaleNotStarted)
    );
    let late = unique("late");
    g.warm(&product(&late, 5, 1, -7200), false).await.unwrap();
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
        g.warm(&def, false).await.unwrap(),
        Warm::AlreadyStarted { stock_left: 3 }
    );
    assert_eq!(
        g.warm(&def, true).await.unwrap(),
        Warm::Warmed { stock_left: 3 }
    );
    // Before the start a re-warm is free.
    let later = unique("later");
    g.warm(&product(&later, 5, 1, 3600), false).await.unwrap();
    assert_eq!(
        g.warm(&product(&later, 7, 1, 3600), false).await.unwrap(),
        Warm::Warmed { stock_left: 7 }
    );
}

#[tokio::test]
async fn settle_is_forward_only_and_restock_happens_once() {
    let (g, p) = warmed(2, 1).await;
    let a = purchase(&p, "alice", 1, None);
    let Admission::Admitted { admitted_at_ms } = g.admit(&a).await.unwrap() else {
        panic!("not admitted")
    };
    let msg = OrderMessage::new(&a, admitted_at_ms);
    assert!(g.restock(&msg).await.unwrap());
    assert!(!g.restock(&msg).await.unwrap());
    assert!(!g.settle(&msg, OrderStatus::Placed).await.unwrap());
    let view = g.request(&a.request_id).await.unwrap().unwrap();
    assert_eq!(view.status, OrderStatus::Compensated);
    let stats = g.stats(&p).await.unwrap().unwrap();
    assert_eq!(
        (
            stats.stock_left,
            stats.compensated,
            stats.placed,
            stats.pending
        ),
        (2, 1, 0, 0)
    );
    // The buyer was released and may buy again.
    assert!(matches!(
        g.admit(&purchase(&p, "alice", 1, None)).await.unwrap(),
        Admission::Admitted { .. }
    ));
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

#[tokio::test]
async fn resync_only_when_nothing_is_in_flight() {
    let (g, p) = warmed(10, 1).await;
    let a = purchase(&p, "alice", 1, None);
    let Admission::Admitted { admitted_at_ms } = g.admit(&a).await.unwrap() else {
        panic!("not admitted")
    };
    assert_eq!(
        g.resync(&p, 5, 0).await.unwrap(),
        None,
        "a request is pending"
    );
    g.settle(&OrderMessage::new(&a, admitted_at_ms), OrderStatus::Placed)
        .await
        .unwrap();
    assert_eq!(g.resync(&p, 5, 0).await.unwrap(), None, "placed moved on");
    assert_eq!(g.resync(&p, 5, 1).await.unwrap(), Some(-4));
    assert_eq!(g.stats(&p).await.unwrap().unwrap().stock_left, 5);
    assert_eq!(g.resync(&p, 5, 1).await.unwrap(), Some(0));
    // A forced re-warm keeps the corrected count.
    assert_eq!(
        g.warm(&product(&p, 10, 1, -1), true).await.unwrap(),
        Warm::Warmed { stock_left: 5 }
    );
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
        match g.warm(&product(&p, 3, 1, -1), false).await {
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
