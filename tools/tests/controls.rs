//! Sale-day controls on the real local stack through the runner's HTTP API.

mod common;

use std::time::Duration;

use serde_json::json;

use common::{TestStack, unique};
use shared::domain::ProductId;
use tools::audit::audit;

/// The product's books once every admitted request is decided and they
/// balance (or, after 30 s, as they are, for the test to report).
async fn settled_books(s: &TestStack, product: &str) -> tools::audit::Audit {
    let pid = ProductId::parse(product).unwrap();
    let mut books = audit(&s.gate, &s.store, &pid).await.unwrap();
    for _ in 0..150 {
        if books.pending == 0
            && books.placed + books.rejected + books.compensated >= books.admitted
            && books.balanced()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        books = audit(&s.gate, &s.store, &pid).await.unwrap();
    }
    books
}

/// Limits a test can hit: a buyer 1/s (burst 3), an address 2/s (burst 5).
fn tight_limits() -> serde_json::Value {
    json!({ "rate_limits": {
        "buyer": { "per_second": 1, "burst": 3 },
        "ip": { "per_second": 2, "burst": 5 },
    }})
}

/// A buy by `user`: from one shared address when `ip` is given (many buyer
/// ids behind it), else from the buyer's own.
async fn buy_as(
    api: tools::client::Api,
    product: String,
    user: String,
    ip: Option<&'static str>,
) -> tools::client::Answer {
    let body = json!({ "product_id": product, "user_id": user });
    match ip {
        Some(ip) => api
            .call(
                "POST",
                "/api/flash-sale/buy",
                &[("X-Forwarded-For", ip)],
                Some(&body),
            )
            .await
            .unwrap(),
        None => api.buy(&body, None).await.unwrap(),
    }
}

/// A buyer hammering with fresh requests and one address hammering with many
/// buyer ids get 429s with Retry-After; the others, buying once each at the
/// same time, are all served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abusers_are_limited_and_everyone_else_is_served() {
    let s = TestStack::start("controls", 30).await;
    let product = unique("limits");
    let created = s.on_sale(&product, 1000, tight_limits()).await;
    assert_eq!(created.body["rate_limits"]["ip"]["burst"], 5);
    let buy = |user: String, ip| buy_as(s.api.clone(), product.clone(), user, ip);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..30 {
        tasks.spawn(buy("hammer".into(), None).await_with("buyer"));
        tasks.spawn(buy(format!("bot{i}"), Some("192.0.2.66")).await_with("ip"));
    }
    for i in 0..40 {
        tasks.spawn(buy(format!("fair{i}"), None).await_with("fair"));
    }
    let mut answers: std::collections::BTreeMap<(&str, u16), usize> = Default::default();
    while let Some(done) = tasks.join_next().await {
        let (who, answer) = done.unwrap();
        if answer.status == 429 {
            assert_eq!(answer.body["error"], "rate_limited", "{who}");
        }
        *answers.entry((who, answer.status)).or_default() += 1;
    }
    // Each abuser gets its burst through (the hammering buyer one admission,
    // then already_purchased), then 429s; every fair buyer is admitted.
    assert_eq!(answers.get(&("fair", 202)), Some(&40), "{answers:?}");
    // At 1/s and 2/s, a slow machine refills a few tokens while the burst
    // is in flight: most of each abuser's 30 requests are refused.
    assert!(
        answers.get(&("buyer", 429)).copied().unwrap_or(0) >= 15,
        "{answers:?}"
    );
    assert!(
        answers.get(&("ip", 429)).copied().unwrap_or(0) >= 10,
        "{answers:?}"
    );
    assert_eq!(answers.get(&("buyer", 202)), Some(&1), "{answers:?}");

    // A limited request changed nothing: the books hold what was admitted.
    let admitted = answers
        .iter()
        .filter(|((_, status), _)| *status == 202)
        .map(|(_, n)| *n as i64)
        .sum::<i64>();
    let books = settled_books(&s, &product).await;
    assert_eq!(
        (books.admitted, books.placed),
        (admitted, admitted),
        "{books}"
    );
    assert!(books.balanced(), "{books}: {:?}", books.problems());
    s.running.stop().await;
}

/// Tags an answer with who asked.
trait Tagged: std::future::Future + Sized {
    fn await_with(
        self,
        who: &'static str,
    ) -> impl std::future::Future<Output = (&'static str, Self::Output)> {
        async move { (who, self.await) }
    }
}
impl<F: std::future::Future> Tagged for F {}

/// An operator pauses, resumes and ends a sale through the admin API: buyers
/// see 503 sale_paused (Retry-After), then 202, then 403 sale_ended; every
/// control is in the audit with who and why; nothing was lost on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_pauses_resumes_and_ends_a_sale_and_the_audit_says_so() {
    let s = TestStack::start("operator", 30).await;
    let product = unique("live");
    s.on_sale(&product, 10, json!({})).await;
    let base = format!("/api/admin/products/{product}");
    let control = |action: &'static str, reason: &'static str| {
        let (api, path) = (s.api.clone(), format!("{base}/{action}"));
        async move {
            let auth = format!("Bearer {}", common::ADMIN_TOKEN);
            let headers = [
                ("Authorization", auth.as_str()),
                ("X-Flashsale-Operator", "ops-alice"),
            ];
            api.call("POST", &path, &headers, Some(&json!({ "reason": reason })))
                .await
                .unwrap()
        }
    };
    let buy = |user: &'static str| {
        let (api, product) = (s.api.clone(), product.clone());
        async move {
            api.buy(&json!({ "product_id": product, "user_id": user }), None)
                .await
                .unwrap()
        }
    };

    assert_eq!(buy("u1").await.status, 202);
    let paused = control("pause", "bot wave").await;
    assert_eq!(
        (paused.status, &paused.body["paused"]),
        (200, &json!(true)),
        "{}",
        paused.body
    );
    let refused = buy("u2").await;
    assert_eq!(
        (refused.status, &refused.body["error"]),
        (503, &json!("sale_paused"))
    );
    // The storefront says so too.
    let page = format!("/api/flash-sale/products/{product}");
    let shown = s.api.call("GET", &page, &[], None).await.unwrap();
    assert_eq!(shown.body["state"], "paused", "{}", shown.body);
    assert_eq!(control("resume", "waf rule live").await.status, 200);
    assert_eq!(buy("u2").await.status, 202);
    let ended = control("end", "sold offline").await;
    assert_eq!(ended.status, 200, "{}", ended.body);
    let late = buy("u3").await;
    assert_eq!(
        (late.status, &late.body["error"]),
        (403, &json!("sale_ended"))
    );
    // Ending it again changes nothing and is not audited again.
    let again = control("end", "again").await;
    assert_eq!((again.status, &again.body["changed"]), (200, &json!(false)));

    let audit_log = s
        .api
        .admin("GET", &format!("{base}/audit"), None)
        .await
        .unwrap();
    let entries: Vec<(String, String, String)> = audit_log.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let f = |k: &str| e[k].as_str().unwrap().to_owned();
            (f("action"), f("actor"), f("reason"))
        })
        .collect();
    let want = [
        ("pause", "bot wave"),
        ("resume", "waf rule live"),
        ("end", "sold offline"),
    ]
    .map(|(a, r)| {
        (
            a.to_owned(),
            "admin-token (ops-alice)".to_owned(),
            r.to_owned(),
        )
    });
    assert_eq!(entries, want);

    let books = settled_books(&s, &product).await;
    assert_eq!((books.admitted, books.placed), (2, 2), "{books}");
    assert!(books.balanced(), "{books}: {:?}", books.problems());
    s.running.stop().await;
}

/// The kill switch stops every sale within a second and starts them again;
/// a denied buyer is refused by every sale until taken off; both audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kill_switch_and_the_deny_list_reach_every_sale() {
    let s = TestStack::start("switch", 30).await;
    let (a, b) = (unique("switch-a"), unique("switch-b"));
    s.on_sale(&a, 100, json!({})).await;
    s.on_sale(&b, 100, json!({})).await;
    let buy = |product: &str, user: &str| {
        let (api, body) = (
            s.api.clone(),
            json!({ "product_id": product, "user_id": user }),
        );
        async move { api.buy(&body, None).await.unwrap() }
    };
    let admin = |method: &'static str, path: &'static str, body: serde_json::Value| {
        let api = s.api.clone();
        async move { api.admin(method, path, Some(&body)).await.unwrap() }
    };
    assert_eq!(buy(&a, "u1").await.status, 202);

    let thrown = admin(
        "POST",
        "/api/admin/kill-switch",
        json!({ "engaged": true, "reason": "incident 42" }),
    )
    .await;
    assert_eq!(thrown.body["engaged"], true, "{}", thrown.body);
    // The runner's deduct reads the switch at most every 500 ms.
    tokio::time::sleep(Duration::from_millis(600)).await;
    for (product, user) in [(&a, "u2"), (&b, "u3")] {
        let refused = buy(product, user).await;
        assert_eq!(
            (refused.status, &refused.body["error"]),
            (503, &json!("admissions_stopped")),
            "{}",
            refused.body
        );
    }
    admin(
        "POST",
        "/api/admin/kill-switch",
        json!({ "engaged": false, "reason": "resolved" }),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(buy(&a, "u2").await.status, 202);

    let denied = admin(
        "PUT",
        "/api/admin/deny-list/bot9",
        json!({ "reason": "scripted checkout" }),
    )
    .await;
    assert_eq!(
        (denied.status, &denied.body["sales"]),
        (200, &json!(2)),
        "{}",
        denied.body
    );
    for product in [&a, &b] {
        let refused = buy(product, "bot9").await;
        assert_eq!(
            (refused.status, &refused.body["error"]),
            (403, &json!("buyer_blocked"))
        );
    }
    admin(
        "DELETE",
        "/api/admin/deny-list/bot9",
        json!({ "reason": "appeal granted" }),
    )
    .await;
    assert_eq!(buy(&b, "bot9").await.status, 202);

    let log = s.api.admin("GET", "/api/admin/audit", None).await.unwrap();
    let actions: Vec<&str> = log.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "stop_admissions",
            "resume_admissions",
            "deny bot9",
            "allow bot9"
        ]
    );
    s.running.stop().await;
}

/// Issue 11's whole day: a buyer and an address hammer the sale while fair
/// buyers buy; mid-flight an operator pauses, withdraws 10 units, resumes
/// and ends it. The abusers get 429s, every fair buyer is served, and the
/// books balance with the withdrawal accounted for, as the audit says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sale_day_with_abusers_and_an_operator_ends_with_balanced_books() {
    let s = TestStack::start("saleday", 30).await;
    let product = unique("saleday");
    s.on_sale(&product, 100, tight_limits()).await;
    let buy = |user: String, ip| buy_as(s.api.clone(), product.clone(), user, ip);
    let fair = |range: std::ops::Range<usize>| {
        let mut set = tokio::task::JoinSet::new();
        for i in range {
            let (api, product) = (s.api.clone(), product.clone());
            set.spawn(async move {
                api.buy(
                    &json!({ "product_id": product, "user_id": format!("fair{i}") }),
                    None,
                )
                .await
                .unwrap()
            });
        }
        set
    };
    let operator =
        |method: &'static str, path: String, key: Option<&'static str>, body: serde_json::Value| {
            let api = s.api.clone();
            async move {
                let auth = format!("Bearer {}", common::ADMIN_TOKEN);
                let mut headers = vec![
                    ("Authorization", auth.as_str()),
                    ("X-Flashsale-Operator", "ops-bob"),
                ];
                if let Some(key) = key {
                    headers.push(("Idempotency-Key", key));
                }
                api.call(method, &path, &headers, Some(&body))
                    .await
                    .unwrap()
            }
        };
    let base = format!("/api/admin/products/{product}");

    // The first wave, with the abusers.
    let mut abusers = tokio::task::JoinSet::new();
    for i in 0..30 {
        abusers.spawn(buy("hammer".into(), None));
        abusers.spawn(buy(format!("bot{i}"), Some("192.0.2.66")));
    }
    let mut wave = fair(0..30);
    let limited = abusers
        .join_all()
        .await
        .iter()
        .filter(|a| a.status == 429)
        .count();
    assert!(limited >= 40, "the abusers got only {limited} 429s of 60");
    let first: Vec<u16> = std::mem::take(&mut wave)
        .join_all()
        .await
        .iter()
        .map(|a| a.status)
        .collect();
    assert!(first.iter().all(|s| *s == 202), "fair buyers: {first:?}");

    // The operator steps in.
    let paused = operator(
        "POST",
        format!("{base}/pause"),
        None,
        json!({ "reason": "bot wave" }),
    )
    .await;
    assert_eq!(paused.status, 200, "{}", paused.body);
    let waiting: Vec<u16> = fair(30..35)
        .join_all()
        .await
        .iter()
        .map(|a| a.status)
        .collect();
    assert_eq!(waiting, [503; 5]);
    let withdraw = json!({ "delta": -10, "reason": "damaged in transit" });
    let withdrawn = operator(
        "POST",
        format!("{base}/stock"),
        Some("saleday-w1"),
        withdraw.clone(),
    )
    .await;
    assert_eq!(
        (withdrawn.status, &withdrawn.body["stock_total"]),
        (200, &json!(90)),
        "{}",
        withdrawn.body
    );
    // The operator's retry of the same call withdraws nothing more.
    let again = operator(
        "POST",
        format!("{base}/stock"),
        Some("saleday-w1"),
        withdraw,
    )
    .await;
    assert_eq!((again.status, &again.body["changed"]), (200, &json!(false)));
    let resumed = operator(
        "POST",
        format!("{base}/resume"),
        None,
        json!({ "reason": "WAF rule live" }),
    )
    .await;
    assert_eq!(resumed.status, 200);
    let second: Vec<u16> = fair(30..60)
        .join_all()
        .await
        .iter()
        .map(|a| a.status)
        .collect();
    assert!(
        second.iter().all(|s| *s == 202),
        "fair buyers after the resume: {second:?}"
    );
    let ended = operator(
        "POST",
        format!("{base}/end"),
        None,
        json!({ "reason": "sold offline" }),
    )
    .await;
    assert_eq!(ended.status, 200);
    assert_eq!(buy("late".into(), None).await.status, 403);

    // The books, as `flashsale reconcile` reads them, and the audit agree.
    let books = settled_books(&s, &product).await;
    assert!(books.balanced(), "{books}: {:?}", books.problems());
    let admitted_fair = 60;
    assert!(books.placed >= admitted_fair, "{books}");
    assert_eq!((books.withdrawn, books.stock_total), (10, 90), "{books}");
    assert_eq!(books.placed_units + books.stock_left, 90, "{books}");
    let log = s
        .api
        .admin("GET", &format!("{base}/audit"), None)
        .await
        .unwrap();
    let actions: Vec<&str> = log.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["pause", "withdraw_stock 10", "resume", "end"]);
    let withdrawn_by_audit: i64 = actions
        .iter()
        .filter_map(|a| a.strip_prefix("withdraw_stock "))
        .map(|n| n.parse::<i64>().unwrap())
        .sum();
    assert_eq!(withdrawn_by_audit, books.withdrawn);
    s.running.stop().await;
}
