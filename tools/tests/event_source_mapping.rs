//! The runner's event source mapping against LocalStack's, on the same
//! messages. Two queue pairs (orders + DLQ, five receives) on LocalStack's
//! SQS: LocalStack's own mappings drain one into probe functions, the
//! runner (`--invoke`, as under sam local) drains the other into probes of
//! the runner's function names. Every probe (the `esm-probe` bootstrap)
//! hands its event to this test, which records each delivery and answers as
//! the message's `probe` attribute says. Per message the test compares how
//! often each side delivered it and whether it reached the DLQ's function,
//! and what a record carries. Where the two differ, AWS's documented
//! behaviour is expected of the runner, and LocalStack's where AWS says
//! nothing; LocalStack's own divergences are asserted as such (a LocalStack
//! upgrade that changes them fails here).
//!
//! Needs LocalStack with Lambda: `make localstack-esm` runs it on its own
//! stack (`LOCALSTACK_LAMBDA=1`); it is ignored elsewhere. The probe is this
//! machine's build, which LocalStack's Debian stand-in image (offline) runs.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_lambda::types::{Environment, FunctionCode, FunctionResponseType, Runtime, State};
use aws_sdk_sqs::primitives::Blob;
use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use bytes::Bytes;
use common::{Options, TestStack};
use http_body_util::Full;
use serde_json::{Value, json};
use tools::invoke::{Function, InvokeConfig, Names};
use tools::provision::{self, MAX_RECEIVE_COUNT};

/// The queues' visibility timeout: twice the probes' timeout (AWS refuses
/// a mapping whose queue hides messages for less than the function may
/// run), so that a slow invocation on a busy machine is not redelivered.
const VISIBILITY_SECS: u32 = 6;
const PROBE_TIMEOUT_SECS: i32 = 3;
/// Both sides' batching window: a case's messages, sent in one batch, reach
/// the runner's function together (the partial-failure case needs that).
const WINDOW: Duration = Duration::from_secs(1);

/// What happened to one message on one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Outcome {
    /// Invocations of the queue's function that carried it.
    deliveries: usize,
    /// Whether the DLQ's function received it.
    dead_lettered: bool,
}

const fn once() -> Outcome {
    Outcome {
        deliveries: 1,
        dead_lettered: false,
    }
}

const fn twice() -> Outcome {
    Outcome {
        deliveries: 2,
        dead_lettered: false,
    }
}

/// One message of a case: its directive (see [`answer`]), what is expected
/// of the runner (AWS's documented behaviour, else LocalStack's), and
/// LocalStack's outcome where that differs.
struct Message {
    directive: &'static str,
    expected: Outcome,
    localstack: Option<Outcome>,
}

const fn msg(directive: &'static str, expected: Outcome) -> Message {
    Message {
        directive,
        expected,
        localstack: None,
    }
}

/// A case's messages are sent together and settle before the next case:
/// answers that fail a whole batch must not share it with another case.
fn cases() -> Vec<(&'static str, Vec<Message>)> {
    vec![
        (
            "partial failures",
            vec![
                msg("ok", once()),
                msg(
                    "fail<3",
                    Outcome {
                        deliveries: 3,
                        dead_lettered: false,
                    },
                ),
                msg(
                    "fail",
                    Outcome {
                        deliveries: MAX_RECEIVE_COUNT as usize,
                        dead_lettered: true,
                    },
                ),
            ],
        ),
        // AWS: an empty or null response, an empty or null list: success.
        ("empty response", vec![msg("shape:empty", once())]),
        ("null response", vec![msg("shape:null", once())]),
        ("{} response", vec![msg("shape:{}", once())]),
        ("null list", vec![msg("shape:null-list", once())]),
        ("empty list", vec![msg("shape:[]", once())]),
        // AWS: invalid JSON, an empty, null or unknown itemIdentifier or a
        // bad key name fail the whole batch; so does a function error.
        ("function error", vec![msg("error<2", twice())]),
        (
            "response not JSON",
            vec![Message {
                directive: "text<2",
                expected: twice(),
                // LocalStack reads an unparsable payload as no payload, a
                // success, and deletes the batch.
                localstack: Some(once()),
            }],
        ),
        // AWS does not say; LocalStack fails the batch, and so does the
        // runner: a string is no response.
        ("response a JSON string", vec![msg("string<2", twice())]),
        ("unknown itemIdentifier", vec![msg("stranger<2", twice())]),
        ("empty itemIdentifier", vec![msg("blank<2", twice())]),
        ("null itemIdentifier", vec![msg("nullid<2", twice())]),
        ("bad key name", vec![msg("badkey<2", twice())]),
    ]
}

/// One record as a probe received it.
#[derive(Debug, Clone)]
struct Delivery {
    /// Which invocation carried it (a counter over both sides).
    invocation: u64,
    function: String,
    key: String,
    record: Value,
}

#[derive(Default)]
struct Journal {
    deliveries: Mutex<Vec<Delivery>>,
    invocations: AtomicU64,
}

fn attribute<'a>(record: &'a Value, name: &str) -> &'a str {
    record["messageAttributes"][name]["stringValue"]
        .as_str()
        .unwrap_or_default()
}

fn receive_count(record: &Value) -> u32 {
    record["attributes"]["ApproximateReceiveCount"]
        .as_str()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// `<directive>` active on this delivery: plain, or `<name><N` while the
/// receive count is below N.
fn active(directive: &str, name: &str, receive: u32) -> bool {
    match directive.strip_prefix(name) {
        Some("") => true,
        Some(rest) => rest
            .strip_prefix('<')
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| receive < n),
        None => false,
    }
}

/// The probe's answer to one invocation of `function`: queue functions
/// answer as their records' directives say, DLQ functions succeed.
fn answer(journal: &Journal, function: &str, event: &[u8]) -> hyper::Response<Full<Bytes>> {
    let ok = |body: &str| hyper::Response::new(Full::new(Bytes::from(body.to_owned())));
    let event: Value = serde_json::from_slice(event).unwrap_or(Value::Null);
    let records = event["Records"].as_array().cloned().unwrap_or_default();
    let invocation = journal.invocations.fetch_add(1, Ordering::Relaxed);
    let mut failed = Vec::new();
    let mut verdict: Option<hyper::Response<Full<Bytes>>> = None;
    for record in &records {
        let probe = attribute(record, "probe");
        let (key, directive) = probe.rsplit_once(" ").unwrap_or((probe, ""));
        journal.deliveries.lock().unwrap().push(Delivery {
            invocation,
            function: function.to_owned(),
            key: key.to_owned(),
            record: record.clone(),
        });
        if function.ends_with("compensation") {
            continue;
        }
        let n = receive_count(record);
        let id = record["messageId"].as_str().unwrap_or_default();
        let whole = |name| active(directive, name, n);
        if whole("fail") {
            failed.push(json!({ "itemIdentifier": id }));
        } else if whole("error") {
            verdict = Some(
                hyper::Response::builder()
                    .status(500)
                    .body(Full::new(Bytes::from_static(
                        br#"{"errorMessage":"probe","errorType":"Probe"}"#,
                    )))
                    .unwrap(),
            );
        } else if whole("text") {
            verdict = Some(ok("not json"));
        } else if whole("string") {
            verdict = Some(ok(r#""a string""#));
        } else if whole("stranger") {
            verdict = Some(ok(
                r#"{"batchItemFailures":[{"itemIdentifier":"not-in-this-batch"}]}"#,
            ));
        } else if whole("blank") {
            verdict = Some(ok(r#"{"batchItemFailures":[{"itemIdentifier":""}]}"#));
        } else if whole("nullid") {
            verdict = Some(ok(r#"{"batchItemFailures":[{"itemIdentifier":null}]}"#));
        } else if whole("badkey") {
            verdict = Some(ok(&format!(r#"{{"batchItemFailures":[{{"id":"{id}"}}]}}"#)));
        } else if let Some(shape) = directive.strip_prefix("shape:") {
            verdict = Some(ok(match shape {
                "empty" => "",
                "null" => "null",
                "{}" => "{}",
                "null-list" => r#"{"batchItemFailures":null}"#,
                _ => r#"{"batchItemFailures":[]}"#,
            }));
        }
    }
    verdict.unwrap_or_else(|| ok(&json!({ "batchItemFailures": failed }).to_string()))
}

/// The probe bootstrap zipped as a function's code.
fn probe_zip() -> Vec<u8> {
    let dir = tempdir();
    let zip = dir.join("probe.zip");
    let status = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, zipfile\nwith zipfile.ZipFile(sys.argv[1], 'w') as z: z.write(sys.argv[2], 'bootstrap')",
        ])
        .arg(&zip)
        .arg(env!("CARGO_BIN_EXE_esm-probe"))
        .status()
        .expect("running python3 to zip the probe");
    assert!(status.success(), "zipping the probe failed");
    let bytes = std::fs::read(&zip).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    bytes
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(common::unique("esm-probe"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// (Re)creates `name` running the probe, and waits until it is Active.
async fn deploy_probe(lambda: &aws_sdk_lambda::Client, name: &str, zip: &[u8], probe_url: &str) {
    let _ = lambda.delete_function().function_name(name).send().await;
    lambda
        .create_function()
        .function_name(name)
        .runtime(Runtime::Providedal2023)
        .handler("bootstrap")
        .role("arn:aws:iam::000000000000:role/flashsale-esm-probe")
        .timeout(PROBE_TIMEOUT_SECS)
        .code(
            FunctionCode::builder()
                .zip_file(aws_sdk_lambda::primitives::Blob::new(zip.to_vec()))
                .build(),
        )
        .environment(
            Environment::builder()
                .variables("FLASHSALE_PROBE_URL", probe_url)
                .build(),
        )
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "creating {name}: {}",
                aws_sdk_lambda::error::DisplayErrorContext(&e)
            )
        });
    for _ in 0..120 {
        let state = lambda
            .get_function_configuration()
            .function_name(name)
            .send()
            .await
            .unwrap()
            .state;
        if state == Some(State::Active) {
            // Warm it: a cold start inside a case could outlast the
            // visibility timeout and deliver a message twice.
            let out = lambda
                .invoke()
                .function_name(name)
                .payload(aws_sdk_lambda::primitives::Blob::new(r#"{"Records":[]}"#))
                .send()
                .await
                .unwrap();
            assert!(
                out.function_error.is_none(),
                "warming {name} failed (can its container reach the test at {probe_url}?): {}",
                out.payload
                    .map(|p| String::from_utf8_lossy(p.as_ref()).into_owned())
                    .unwrap_or_default()
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("{name} did not become Active");
}

/// A LocalStack event source mapping as template.yaml declares the orders
/// queue's (batch of 10, ReportBatchItemFailures) with [`WINDOW`], enabled;
/// its id.
async fn map(
    lambda: &aws_sdk_lambda::Client,
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    function: &str,
) -> String {
    let arn = provision::queue_arn(sqs, queue_url).await.unwrap();
    let uuid = lambda
        .create_event_source_mapping()
        .function_name(function)
        .event_source_arn(arn)
        .batch_size(10)
        .maximum_batching_window_in_seconds(WINDOW.as_secs() as i32)
        .function_response_types(FunctionResponseType::ReportBatchItemFailures)
        .send()
        .await
        .unwrap()
        .uuid
        .unwrap();
    for _ in 0..120 {
        let state = lambda
            .get_event_source_mapping()
            .uuid(&uuid)
            .send()
            .await
            .unwrap()
            .state;
        if state.as_deref() == Some("Enabled") {
            return uuid;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("the mapping of {function} was not enabled");
}

/// One side: its queues and its functions' names.
struct Side {
    name: &'static str,
    orders: String,
    dlq: String,
    consumer: String,
    compensation: String,
}

impl Side {
    fn outcome(&self, journal: &[Delivery], key: &str) -> Outcome {
        let count = |f: &str| {
            journal
                .iter()
                .filter(|d| d.key == key && d.function == f)
                .count()
        };
        Outcome {
            deliveries: count(&self.consumer),
            dead_lettered: count(&self.compensation) > 0,
        }
    }

    /// The invocation that first carried `key`.
    fn first_invocation(&self, journal: &[Delivery], key: &str) -> u64 {
        journal
            .iter()
            .find(|d| d.key == key && d.function == self.consumer)
            .unwrap_or_else(|| panic!("{}: {key} was never delivered", self.name))
            .invocation
    }

    fn delivered_in(&self, journal: &[Delivery], key: &str, invocation: u64) -> bool {
        journal
            .iter()
            .any(|d| d.key == key && d.function == self.consumer && d.invocation == invocation)
    }

    fn first_record<'a>(&self, journal: &'a [Delivery], key: &str) -> &'a Value {
        &journal
            .iter()
            .find(|d| d.key == key && d.function == self.consumer)
            .unwrap_or_else(|| panic!("{}: {key} was never delivered", self.name))
            .record
    }
}

fn attr(value: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .unwrap()
}

/// An environment variable the stack with Lambda sets.
fn lambda_stack_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: this test needs LocalStack with Lambda; run `make localstack-esm` \
             (LOCALSTACK_LAMBDA=1 localstack/with-stack.sh ...)"
        )
    })
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs LocalStack with Lambda: make localstack-esm runs it"]
async fn the_runner_delivers_as_lambda_does() {
    let gateway: std::net::IpAddr = lambda_stack_env("FLASHSALE_BRIDGE_GATEWAY")
        .parse()
        .unwrap();
    let endpoint = lambda_stack_env("AWS_ENDPOINT_URL");
    let runner = TestStack::start_with(
        "esm-runner",
        Options {
            visibility_timeout: VISIBILITY_SECS,
            invoke: Some(InvokeConfig {
                endpoint,
                names: Names::Binary,
            }),
            // LocalStack's mapping runs one batch at a time; so does this
            // runner, so that neither side's batches depend on timing.
            pollers: 1,
            batching_window: WINDOW,
            // Only the queues are compared: no sweeper or expirer to invoke.
            schedules: false,
            ..Options::default()
        },
    )
    .await;
    let sdk = runner.sdk.clone();
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let lambda = aws_sdk_lambda::Client::new(&sdk);
    let localstack_prefix = common::unique("esm-localstack");
    let localstack_queues = provision::provision(
        &sdk,
        &provision::Names::with_prefix(&localstack_prefix),
        VISIBILITY_SECS,
    )
    .await
    .unwrap();

    let journal = Arc::new(Journal::default());
    let probe = {
        let journal = journal.clone();
        common::http_stub_on(gateway, move |path, body| {
            answer(&journal, path.trim_start_matches('/'), &body)
        })
        .await
    };
    let probe_url = format!("http://{probe}");
    let sides = [
        Side {
            name: "LocalStack",
            orders: localstack_queues.orders_queue_url.clone(),
            dlq: localstack_queues.orders_dlq_url.clone(),
            consumer: format!("{localstack_prefix}-consumer"),
            compensation: format!("{localstack_prefix}-compensation"),
        },
        // The runner invokes these names (`--invoke` with binary names).
        Side {
            name: "runner",
            orders: runner.names.orders_queue_url.clone(),
            dlq: runner.names.orders_dlq_url.clone(),
            consumer: Function::OrderConsumer.binary().into(),
            compensation: Function::Compensation.binary().into(),
        },
    ];
    let zip = probe_zip();
    for side in &sides {
        deploy_probe(&lambda, &side.consumer, &zip, &probe_url).await;
        deploy_probe(&lambda, &side.compensation, &zip, &probe_url).await;
    }
    let ls = &sides[0];
    let mappings = [
        map(&lambda, &sqs, &ls.orders, &ls.consumer).await,
        map(&lambda, &sqs, &ls.dlq, &ls.compensation).await,
    ];

    let mut mismatches = Vec::new();
    let mut table = String::from("case | message | expected | LocalStack | runner\n");
    for (case, messages) in cases() {
        for side in &sides {
            let entries = messages
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(format!("{case} #{i}"))
                        .message_attributes("probe", attr(&format!("{case}#{i} {}", m.directive)))
                        .build()
                        .unwrap()
                })
                .collect();
            let out = sqs
                .send_message_batch()
                .queue_url(&side.orders)
                .set_entries(Some(entries))
                .send()
                .await
                .unwrap();
            assert!(out.failed.is_empty(), "sending {case}: {:?}", out.failed);
        }
        settle(&runner, &sides, case, &probe_url).await;
        let journal = journal.deliveries.lock().unwrap().clone();
        for (i, m) in messages.iter().enumerate() {
            let key = format!("{case}#{i}");
            let got: Vec<Outcome> = sides.iter().map(|s| s.outcome(&journal, &key)).collect();
            let want = [m.localstack.unwrap_or(m.expected), m.expected];
            table.push_str(&format!(
                "{case} | {} | {:?} | {:?} | {:?}\n",
                m.directive, m.expected, got[0], got[1]
            ));
            for (side, (got, want)) in sides.iter().zip(got.iter().zip(want)) {
                if *got != want {
                    mismatches.push(format!(
                        "{}: {key} ({}): got {got:?}, want {want:?}",
                        side.name, m.directive
                    ));
                }
            }
        }
        // The runner's window opens at its first message, so a case's
        // messages (one send) reach its function in one batch: what a
        // partial failure does to the rest of its batch is what the outcomes
        // above show. LocalStack's window opens when its poll starts (and
        // its SQS counts the wait down twice over), so a send landing at the
        // end of a poll is split: its batches depend on timing, which the
        // per-message outcomes do not.
        let runner = &sides[1];
        let first = runner.first_invocation(&journal, &format!("{case}#0"));
        let together = (0..messages.len())
            .all(|i| runner.delivered_in(&journal, &format!("{case}#{i}"), first));
        assert!(
            together,
            "runner: the messages of {case:?} did not share their first batch"
        );
    }
    eprintln!("{table}");
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));

    compare_records(&runner, &sqs, &sides, &journal, &probe_url).await;

    for uuid in mappings {
        let _ = lambda.delete_event_source_mapping().uuid(uuid).send().await;
    }
    for side in &sides {
        for name in [&side.consumer, &side.compensation] {
            let _ = lambda.delete_function().function_name(name).send().await;
        }
    }
}

/// Waits until both sides' queues and DLQs are empty: every message was
/// deleted by a function's success (a message in flight counts).
async fn settle(runner: &TestStack, sides: &[Side], case: &str, probe_url: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let mut depth = 0;
        for side in sides {
            depth += runner.queue_depth(&side.orders).await + runner.queue_depth(&side.dlq).await;
        }
        if depth == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "case {case:?}: {depth} messages still queued after 120 s: do the probes reach the test \
             at {probe_url} (LocalStack's log says what each invocation answered)?"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What one record carries: a message with a JSON body and String, Number
/// and Binary attributes, as each side delivered it, against what SQS
/// accepted and against each other.
async fn compare_records(
    runner: &TestStack,
    sqs: &aws_sdk_sqs::Client,
    sides: &[Side],
    journal: &Journal,
    probe_url: &str,
) {
    let body = r#"{ "spaced":  "é" }"#;
    let mut sent = Vec::new();
    for side in sides {
        let out = sqs
            .send_message()
            .queue_url(&side.orders)
            .message_body(body)
            .message_attributes("probe", attr("fields ok"))
            .message_attributes(
                "count",
                MessageAttributeValue::builder()
                    .data_type("Number")
                    .string_value("42")
                    .build()
                    .unwrap(),
            )
            .message_attributes(
                "blob",
                MessageAttributeValue::builder()
                    .data_type("Binary")
                    .binary_value(Blob::new(vec![0u8, 1, 2, 255]))
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
        sent.push(out);
    }
    settle(runner, sides, "fields", probe_url).await;
    let journal = journal.deliveries.lock().unwrap().clone();
    let records: Vec<&Value> = sides
        .iter()
        .map(|s| s.first_record(&journal, "fields"))
        .collect();
    for ((side, record), out) in sides.iter().zip(&records).zip(&sent) {
        let arn = provision::queue_arn(sqs, &side.orders).await.unwrap();
        assert_eq!(
            record["eventSourceARN"],
            arn.as_str(),
            "{}: {record:#}",
            side.name
        );
        assert_eq!(record["eventSource"], "aws:sqs", "{}", side.name);
        assert_eq!(
            record["md5OfBody"].as_str(),
            out.md5_of_message_body(),
            "{}",
            side.name
        );
        assert_eq!(
            record["md5OfMessageAttributes"].as_str(),
            out.md5_of_message_attributes(),
            "{}: {record:#}",
            side.name
        );
        assert_eq!(
            record["messageAttributes"]["blob"]["binaryValue"], "AAEC/w==",
            "{}: {record:#}",
            side.name
        );
        assert_eq!(
            record["messageAttributes"]["count"]["stringValue"], "42",
            "{}",
            side.name
        );
    }
    // The body as sent, byte for byte (its md5OfBody says so).
    assert_eq!(records[1]["body"], body, "runner");
    // LocalStack parses a JSON body and writes it back out: the body no
    // longer matches its md5OfBody.
    assert_eq!(records[0]["body"], r#"{"spaced": "\u00e9"}"#, "LocalStack");
    // The same fields, attributes and attribute shapes on both sides.
    let shape = |v: &Value| -> BTreeMap<String, BTreeSet<String>> {
        let keys = |v: &Value| -> BTreeSet<String> {
            v.as_object()
                .into_iter()
                .flatten()
                // AWS's records carry empty stringListValues and
                // binaryListValues (its documented sample event does);
                // LocalStack's leave them out: the same thing.
                .filter(|(_, x)| !x.is_null() && x.as_array().is_none_or(|a| !a.is_empty()))
                .map(|(k, _)| k.clone())
                .collect()
        };
        let mut m = BTreeMap::from([
            ("record".to_owned(), keys(v)),
            ("attributes".to_owned(), keys(&v["attributes"])),
            (
                "messageAttributes".to_owned(),
                keys(&v["messageAttributes"]),
            ),
        ]);
        for name in keys(&v["messageAttributes"]) {
            m.insert(
                format!("messageAttributes.{name}"),
                keys(&v["messageAttributes"][&name]),
            );
        }
        m
    };
    assert_eq!(
        shape(records[1]),
        shape(records[0]),
        "runner's record (left) against LocalStack's (right):\n{:#}\n{:#}",
        records[1],
        records[0]
    );
}
