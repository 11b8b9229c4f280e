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

type Cbor = minicbor::Encoder<Vec<u8>>;
type Written = Result<(), minicbor::encode::Error<std::convert::Infallible>>;

/// A CloudWatch endpoint speaking the SDK's rpcv2Cbor: two functions'
/// refusals by reason and deduct's latency, as EMF puts them there.
async fn fake_cloudwatch(asked: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>) -> String {
    use http_body_util::Full;
    fn metric(e: &mut Cbor, name: &str, dims: &[(&str, &str)]) -> Written {
        e.map(3)?
            .str("Namespace")?
            .str("flashsale")?
            .str("MetricName")?
            .str(name)?;
        e.str("Dimensions")?.array(dims.len() as u64)?;
        for (k, v) in dims {
            e.map(2)?.str("Name")?.str(k)?.str("Value")?.str(v)?;
        }
        Ok(())
    }
    fn list(body: &[u8]) -> Vec<u8> {
        let has = |s: &str| body.windows(s.len()).any(|w| w == s.as_bytes());
        let mut e = minicbor::Encoder::new(Vec::new());
        let written: Written = (|| {
            if has("flashsale_rejected_total") {
                e.map(1)?.str("Metrics")?.array(3)?;
                for (f, reason) in [
                    ("fs-Deduct", "sold_out"),
                    ("fs-Deduct", "rate_limited"),
                    ("fs-Other", "sold_out"),
                ] {
                    metric(
                        &mut e,
                        "flashsale_rejected_total",
                        &[("function", f), ("reason", reason)],
                    )?;
                }
            } else {
                e.map(1)?.str("Metrics")?.array(1)?;
                metric(
                    &mut e,
                    "flashsale_handler_seconds",
                    &[("function", "fs-Deduct"), ("handler", "deduct")],
                )?;
            }
            Ok(())
        })();
        written.unwrap();
        e.into_writer()
    }
    fn data() -> Vec<u8> {
        // In query order: three refusal sums, then p50, p99, count.
        let results: [(&str, &[f64]); 6] = [
            ("q0", &[30.0, 12.0]),
            ("q1", &[6.0]),
            ("q2", &[4.0]),
            ("q3", &[0.0021]),
            ("q4", &[0.0187]),
            ("q5", &[600.0]),
        ];
        let mut e = minicbor::Encoder::new(Vec::new());
        let written: Written = (|| {
            e.map(1)?
                .str("MetricDataResults")?
                .array(results.len() as u64)?;
            for (id, values) in results {
                e.map(3)?
                    .str("Id")?
                    .str(id)?
                    .str("StatusCode")?
                    .str("Complete")?;
                e.str("Values")?.array(values.len() as u64)?;
                for v in values {
                    e.f64(*v)?;
                }
            }
            Ok(())
        })();
        written.unwrap();
        e.into_writer()
    }
    let addr = common::http_stub(move |path, body| {
        let body = body.to_vec();
        asked.lock().unwrap().push(body.clone());
        let answer = if path.ends_with("/ListMetrics") {
            list(&body)
        } else {
            data()
        };
        hyper::Response::builder()
            .header("smithy-protocol", "rpc-v2-cbor")
            .header("content-type", "application/cbor")
            .body(Full::new(bytes::Bytes::from(answer)))
            .unwrap()
    })
    .await;
    format!("http://{addr}")
}

/// On a deployed stack `top` reads refusals and latencies from CloudWatch:
/// the reasons summed across functions, the handler's p50/p99 and count
/// over the window, through the real SDK against a scripted endpoint.
#[tokio::test]
async fn top_reads_a_deployed_stacks_figures_from_cloudwatch() {
    use tools::top::{CloudWatch, Figures, Latency};
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let url = fake_cloudwatch(asked.clone()).await;
    let conf = aws_sdk_cloudwatch::Config::builder()
        .behavior_version(aws_sdk_cloudwatch::config::BehaviorVersion::latest())
        .region(aws_sdk_cloudwatch::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_cloudwatch::config::Credentials::new(
            "AKIDTEST", "secret", None, None, "test",
        ))
        .endpoint_url(url)
        .build();
    let cw = CloudWatch::new(aws_sdk_cloudwatch::Client::from_conf(conf));
    let figures = cw.figures().await.unwrap();
    let Figures::Window {
        secs,
        refusals,
        latency,
    } = figures
    else {
        panic!("CloudWatch figures are a window: {figures:?}");
    };
    assert_eq!(secs, 300.0);
    assert_eq!(refusals["sold_out"], 46.0);
    assert_eq!(refusals["rate_limited"], 6.0);
    assert_eq!(
        latency["deduct"],
        Latency {
            p50: Some(0.0021),
            p99: Some(0.0187),
            count: 600.0
        }
    );
    // Two lists and one GetMetricData asking for the percentiles; a second
    // read within 30 s comes from the cache.
    cw.figures().await.unwrap();
    let asked = asked.lock().unwrap();
    assert_eq!(asked.len(), 3);
    let has = |body: &[u8], s: &str| body.windows(s.len()).any(|w| w == s.as_bytes());
    assert!(has(&asked[2], "p99") && has(&asked[2], "SampleCount"));
}
