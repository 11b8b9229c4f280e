//! `flashsale top` in a scripted terminal (util-linux `script` gives it a
//! pty) against a sale on the real local stack: the frame shows the sale,
//! and q quits cleanly, leaving the alternate screen.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{TestStack, unique};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_draws_a_running_sale_and_quits_on_q() {
    let s = TestStack::start("top", 30).await;
    let product = unique("top");
    s.on_sale(&product, 5, json!({})).await;
    let mut answers = Vec::new();
    for i in 0..8 {
        let body = json!({ "product_id": product, "user_id": format!("u{i}") });
        answers.push(s.api.buy(&body, None).await.unwrap().status);
    }
    assert_eq!(
        answers.iter().filter(|s| **s == 202).count(),
        5,
        "{answers:?}"
    );

    let bin = env!("CARGO_BIN_EXE_flashsale");
    let url = format!("http://{}", s.running.addr);
    let cmd = format!(
        "stty rows 30 cols 120; exec {bin} top --product {product} --metrics {url} --refresh-ms 300"
    );
    let redis = &s.config.redis;
    let mut child = tokio::process::Command::new("script")
        .args(["-q", "-e", "-c", &cmd, "/dev/null"])
        .env("FLASHSALE_REDIS_URL", &redis.url)
        .env("FLASHSALE_REDIS_NAMESPACE", &redis.namespace)
        .env("FLASHSALE_TABLE", &s.names.table)
        .env("FLASHSALE_ORDERS_QUEUE_URL", &s.names.orders_queue_url)
        .env("FLASHSALE_ORDERS_DLQ_URL", &s.names.orders_dlq_url)
        .env(
            "FLASHSALE_COMPENSATION_DLQ_URL",
            &s.names.compensation_dlq_url,
        )
        .env("TERM", "xterm-256color")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("util-linux script (bsdutils) runs");
    let mut out = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    // The sale as a frame draws it: the product, 0 of 5 left, 5 admitted,
    // and the 3 sold_out refusals from the runner's metrics.
    let drawn =
        |text: &str| text.contains(&product) && text.contains("0/5") && text.contains("sold_out");
    let started = Instant::now();
    while !drawn(&String::from_utf8_lossy(&seen)) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no frame with the sale: {}",
            String::from_utf8_lossy(&seen)
        );
        let mut buf = [0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(30), out.read(&mut buf))
            .await
            .expect("top draws")
            .unwrap();
        assert!(n > 0, "top ended early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"q").await.unwrap();
    stdin.flush().await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), async {
        let mut rest = Vec::new();
        out.read_to_end(&mut rest).await.unwrap();
        seen.extend_from_slice(&rest);
        child.wait().await.unwrap()
    })
    .await
    .expect("q quits within 10 s");
    assert!(status.success(), "{status}");
    let text = String::from_utf8_lossy(&seen);
    assert!(
        text.contains("\u{1b}[?1049h"),
        "entered the alternate screen"
    );
    assert!(text.contains("\u{1b}[?1049l"), "left the alternate screen");
    s.running.stop().await;
}
