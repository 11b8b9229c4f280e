//! The runner's `--invoke` mode as an event source mapping and a schedule:
//! real queues on the emulator, a scripted Lambda Invoke endpoint. A
//! function error redelivers the whole batch, a reported failure only its
//! record, everything else is deleted once; schedules send Scheduled Events.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{Options, TestStack};
use http_body_util::Full;
use serde_json::{Value, json};
use tools::invoke::{InvokeConfig, Names};

#[derive(Default)]
struct Seen {
    /// Deliveries per message body.
    deliveries: HashMap<String, u32>,
    /// Invocations per function name.
    calls: HashMap<String, Vec<Value>>,
}

/// The consumer's script: a batch with a message on its first delivery
/// fails as a whole; "b" on its second delivery is reported failed alone.
fn answer(seen: &mut Seen, function: &str, event: &Value) -> (Option<&'static str>, Value) {
    seen.calls
        .entry(function.to_owned())
        .or_default()
        .push(event.clone());
    if function != "OrderConsumerFunction" {
        return (None, Value::Null);
    }
    let records = event["Records"].as_array().cloned().unwrap_or_default();
    let mut first = false;
    let mut failures = Vec::new();
    for r in &records {
        let body = r["body"].as_str().unwrap_or_default().to_owned();
        let n = seen.deliveries.entry(body.clone()).or_default();
        *n += 1;
        first |= *n == 1;
        if body == "b" && *n == 2 {
            failures.push(json!({ "itemIdentifier": r["messageId"] }));
        }
    }
    if first {
        let error = json!({ "errorType": "Boom", "errorMessage": "first delivery" });
        return (Some("Unhandled"), error);
    }
    (None, json!({ "batchItemFailures": failures }))
}

/// The Lambda Invoke API (`POST /2015-03-31/functions/{name}/invocations`).
async fn fake_lambda(seen: Arc<Mutex<Seen>>) -> String {
    let addr = common::http_stub(move |path, body| {
        let name = path
            .trim_start_matches("/2015-03-31/functions/")
            .trim_end_matches("/invocations")
            .to_owned();
        let event: Value = serde_json::from_slice(&body).unwrap();
        let (error, payload) = answer(&mut seen.lock().unwrap(), &name, &event);
        let mut resp = hyper::Response::builder().status(200);
        if let Some(kind) = error {
            resp = resp.header("X-Amz-Function-Error", kind);
        }
        let bytes = Bytes::from(serde_json::to_vec(&payload).unwrap());
        resp.body(Full::new(bytes)).unwrap()
    })
    .await;
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_and_schedules_go_to_the_functions_as_lambda_sends_them() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let endpoint = fake_lambda(seen.clone()).await;
    let s = TestStack::start_with(
        "invoke",
        Options {
            visibility_timeout: 2,
            pollers: 1,
            batching_window: Duration::from_secs(1),
            invoke: Some(InvokeConfig {
                endpoint,
                names: Names::Template,
            }),
            ..Options::default()
        },
    )
    .await;
    let sqs = aws_sdk_sqs::Client::new(&s.sdk);
    for body in ["a", "b", "c"] {
        sqs.send_message()
            .queue_url(&s.names.orders_queue_url)
            .message_body(body)
            .send()
            .await
            .unwrap();
    }
    s.wait_queue_empty(&s.names.orders_queue_url, Duration::from_secs(30))
        .await;
    // Past two more visibility timeouts: nothing deleted comes back.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    s.running.stop().await;

    let seen = seen.lock().unwrap();
    let deliveries: Vec<(&str, u32)> = ["a", "b", "c"]
        .iter()
        .map(|b| (*b, seen.deliveries[*b]))
        .collect();
    assert_eq!(deliveries, [("a", 2), ("b", 3), ("c", 2)]);

    let batches = &seen.calls["OrderConsumerFunction"];
    let last = &batches.last().unwrap()["Records"][0];
    assert_eq!(
        (&last["body"], &last["eventSource"], &last["awsRegion"]),
        (&json!("b"), &json!("aws:sqs"), &json!("us-east-1"))
    );
    assert_eq!(last["attributes"]["ApproximateReceiveCount"], json!("3"));
    assert!(last["receiptHandle"].is_string() && last["messageId"].is_string());

    for f in ["OutboxSweeperFunction", "OrderExpirerFunction"] {
        let runs = seen.calls.get(f).map_or(&[][..], Vec::as_slice);
        assert!(runs.len() >= 2, "{f} ran {} times", runs.len());
        assert!(
            runs.iter()
                .all(|e| e["detail-type"] == "Scheduled Event" && e["source"] == "aws.scheduler"),
            "{f}: {runs:?}"
        );
    }
}
