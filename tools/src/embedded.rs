//! DynamoDB inside this process: dynoxide's engine (SQLite in memory) behind
//! the SDK's HTTP client, so the real `DynamoStore` runs unchanged, through
//! the real SDK, with no emulator to start.
//!
//! The routing holds no DynamoDB rule and no flashsale one: each operation's
//! JSON goes to dynoxide's typed request and its typed answer (or error, with
//! the `__type` and cancellation reasons DynamoDB writes) comes back. Beside
//! it: [`Faults`] dynoxide cannot make (contention, lost replies), ordered by
//! the caller, and [`recording`], which records a real server's answers for
//! the differential test ([`Recording::replay_differences`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::byte_stream::ByteStream;
use dynoxide::{Database, DynoxideError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

/// One in-memory DynamoDB; clones share it and its [`Faults`].
#[derive(Clone)]
pub struct Embedded {
    db: Database,
    pub faults: Faults,
}

/// What dynoxide does not do by itself, ordered by the caller (a test, the
/// simulation's scheduler): refuse the next calls before they run, as
/// DynamoDB does under contention; run them and lose their replies (the
/// write committed, the caller sees a 500 and retries); hold items as a
/// transaction in flight does; or be unreachable for a stretch.
#[derive(Clone, Default, Debug)]
pub struct Faults(Arc<Mutex<FaultCounts>>);

#[derive(Default, Debug)]
struct FaultCounts {
    refuse: usize,
    lose_reply: usize,
    /// No call gets through before then (tokio's clock).
    down_until: Option<Instant>,
    /// Items held by another transaction in flight: (key attribute, its
    /// string value, until when).
    held: Vec<(String, String, Instant)>,
}

impl Faults {
    /// The next `n` calls are refused unrun: a transaction with
    /// TransactionConflict, anything else throttled.
    pub fn refuse_next(&self, n: usize) {
        self.counts().refuse = n;
    }

    /// The next `n` calls run, and their replies are lost.
    pub fn lose_next_replies(&self, n: usize) {
        self.counts().lose_reply = n;
    }

    /// For `stretch` (tokio's clock), every call fails to connect.
    pub fn unreachable_for(&self, stretch: Duration) {
        self.counts().down_until = Some(Instant::now() + stretch);
    }

    /// For `stretch`, the item whose `attribute` is the string `value` is
    /// held by a transaction in flight: a write or transactional read that
    /// touches it is refused with TransactionConflict (DynamoDB's answer),
    /// while a plain read sees its last committed state.
    pub fn hold(&self, attribute: &str, value: &str, stretch: Duration) {
        self.counts().held.push((
            attribute.to_owned(),
            value.to_owned(),
            Instant::now() + stretch,
        ));
    }

    /// Ends every ordered fault.
    pub fn clear(&self) {
        *self.counts() = FaultCounts::default();
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, FaultCounts> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the fault this call meets, if any.
    fn take(&self, operation: &str, body: &[u8]) -> Option<Fault> {
        let mut c = self.counts();
        let now = Instant::now();
        if c.down_until.is_some_and(|t| t > now) {
            return Some(Fault::Unreachable);
        }
        c.held.retain(|(_, _, until)| *until > now);
        if !c.held.is_empty()
            && let Some(items) = written_items(operation, body)
        {
            let held: Vec<bool> = items
                .iter()
                .map(|item| {
                    c.held.iter().any(|(attribute, value, _)| {
                        item.get(attribute).and_then(|v| v["S"].as_str()) == Some(value)
                    })
                })
                .collect();
            if held.contains(&true) {
                return Some(Fault::Held(held));
            }
        }
        if c.refuse > 0 {
            c.refuse -= 1;
            return Some(Fault::Refuse);
        }
        if c.lose_reply > 0 {
            c.lose_reply -= 1;
            return Some(Fault::LoseReply);
        }
        None
    }
}

enum Fault {
    Refuse,
    LoseReply,
    Unreachable,
    /// Which of the call's items are held.
    Held(Vec<bool>),
}

/// The items a write (or a transactional read) touches, each as its key or
/// whole item; None for a plain read or a table operation.
fn written_items(operation: &str, body: &[u8]) -> Option<Vec<serde_json::Value>> {
    let body: serde_json::Value = serde_json::from_slice(body).ok()?;
    let key = |op: &serde_json::Value| op.get("Item").or_else(|| op.get("Key")).cloned();
    match operation {
        "PutItem" | "UpdateItem" | "DeleteItem" => key(&body).map(|k| vec![k]),
        "TransactWriteItems" | "TransactGetItems" => {
            body["TransactItems"].as_array().map(|items| {
                items
                    .iter()
                    .map(|item| {
                        let op = item.as_object().and_then(|o| o.values().next());
                        op.and_then(key).unwrap_or_default()
                    })
                    .collect()
            })
        }
        _ => None,
    }
}

impl std::fmt::Debug for Embedded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Embedded DynamoDB")
    }
}

impl Embedded {
    pub fn new() -> Result<Self> {
        Ok(Self {
            db: Database::memory().context("opening dynoxide's in-memory database")?,
            faults: Faults::default(),
        })
    }

    /// An SDK configuration whose DynamoDB calls all land here (the
    /// credentials and endpoint are placeholders the SDK needs to sign) and
    /// meet the ordered [`Faults`].
    pub fn sdk(&self) -> SdkConfig {
        self.sdk_with(true)
    }

    /// The same, meeting no fault: a checker's reads.
    pub fn sdk_without_faults(&self) -> SdkConfig {
        self.sdk_with(false)
    }

    fn sdk_with(&self, faulty: bool) -> SdkConfig {
        SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("eu-west-1"))
            .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                "embedded", "embedded", None, None, "embedded",
            )))
            .endpoint_url("http://dynamodb.embedded.invalid")
            .http_client(SharedHttpClient::new(Client {
                embedded: self.clone(),
                others: None,
                faulty,
            }))
            .build()
    }

    /// `base` with its DynamoDB calls landing here and every other call
    /// (SQS) going where it went.
    pub fn over(&self, base: &SdkConfig) -> SdkConfig {
        base.to_builder()
            .http_client(SharedHttpClient::new(Client {
                embedded: self.clone(),
                others: Some(crate::capacity::http_client_of(base)),
                faulty: true,
            }))
            .build()
    }

    /// One request: its status and JSON body.
    pub fn dispatch(&self, operation: &str, body: &[u8]) -> (u16, String) {
        let db = &self.db;
        let out = match operation {
            "CreateTable" => run(body, |r| db.create_table(r)),
            "DescribeTable" => run(body, |r| db.describe_table(r)),
            "DeleteTable" => run(body, |r| db.delete_table(r)),
            "ListTables" => run(body, |r| db.list_tables(r)),
            "UpdateTimeToLive" => run(body, |r| db.update_time_to_live(r)),
            "DescribeTimeToLive" => run(body, |r| db.describe_time_to_live(r)),
            "PutItem" => run(body, |r| db.put_item(r)),
            "GetItem" => run(body, |r| db.get_item(r)),
            "UpdateItem" => run(body, |r| db.update_item(r)),
            "DeleteItem" => run(body, |r| db.delete_item(r)),
            "Query" => run(body, |r| db.query(r)),
            "Scan" => run(body, |r| db.scan(r)),
            "BatchGetItem" => run(body, |r| db.batch_get_item(r)),
            "BatchWriteItem" => run(body, |r| db.batch_write_item(r)),
            "TransactWriteItems" => run(body, |r| db.transact_write_items(r)),
            "TransactGetItems" => run(body, |r| db.transact_get_items(r)),
            other => Err(DynoxideError::ValidationException(format!(
                "the embedded DynamoDB does not route {other}: add it to tools::embedded"
            ))),
        };
        match out {
            Ok(json) => (200, json),
            Err(e) => (e.status_code(), e.to_json()),
        }
    }
}

fn run<Q: DeserializeOwned, R: Serialize>(
    body: &[u8],
    call: impl FnOnce(Q) -> dynoxide::Result<R>,
) -> dynoxide::Result<String> {
    // dynoxide's request types mark which DynamoDB error a value they
    // refuse is (a name too short is a ValidationException, a number where
    // a string belongs a SerializationException).
    let request = serde_json::from_slice(body).map_err(|e| {
        let message = e.to_string();
        match ["VALIDATION_REQUEST:", "VALIDATION_AS_READ:", "VALIDATION:"]
            .iter()
            .find_map(|marker| message.strip_prefix(marker))
        {
            Some(m) => DynoxideError::ValidationException(m.to_owned()),
            None if message.contains("missing field") || message.contains("unknown variant") => {
                DynoxideError::ValidationException(message)
            }
            None => DynoxideError::SerializationException(message),
        }
    })?;
    let answer = call(request)?;
    serde_json::to_string(&answer).map_err(|e| DynoxideError::InternalServerError(e.to_string()))
}

#[derive(Debug)]
struct Client {
    embedded: Embedded,
    others: Option<SharedHttpClient>,
    faulty: bool,
}

impl HttpClient for Client {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(Connector {
            faulty: self.faulty,
            embedded: self.embedded.clone(),
            others: self
                .others
                .as_ref()
                .map(|c| c.http_connector(settings, components)),
        })
    }
}

#[derive(Debug)]
struct Connector {
    embedded: Embedded,
    others: Option<SharedHttpConnector>,
    faulty: bool,
}

impl HttpConnector for Connector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let target = request.headers().get("x-amz-target").unwrap_or_default();
        let Some(operation) = target.strip_prefix("DynamoDB_20120810.") else {
            return match &self.others {
                Some(others) => others.call(request),
                None => HttpConnectorFuture::ready(Err(ConnectorError::user(
                    format!("the embedded DynamoDB got a call for another service ({target:?})")
                        .into(),
                ))),
            };
        };
        let body = request.body().bytes().unwrap_or_default().to_vec();
        let operation = operation.to_owned();
        let (embedded, faulty) = (self.embedded.clone(), self.faulty);
        HttpConnectorFuture::new(async move {
            // A call is I/O: other tasks run before it lands, as they would
            // while it crossed the network.
            tokio::task::yield_now().await;
            let fault = faulty
                .then(|| embedded.faults.take(&operation, &body))
                .flatten();
            let (status, json) = match fault {
                None => embedded.dispatch(&operation, &body),
                Some(Fault::Unreachable) => {
                    return Err(ConnectorError::io(
                        "connection refused: the embedded DynamoDB is unreachable (injected)".into(),
                    ));
                }
                Some(Fault::Held(held)) if operation.starts_with("Transact") => {
                    cancelled(held.iter().map(|h| if *h { "TransactionConflict" } else { "None" }))
                }
                Some(Fault::Held(_)) => (
                    400,
                    r#"{"__type":"com.amazonaws.dynamodb.v20120810#TransactionConflictException","message":"Transaction is ongoing for the item"}"#.to_owned(),
                ),
                // As DynamoDB cancels a transaction that meets another in
                // flight on its items (here: all of them).
                Some(Fault::Refuse) if operation.starts_with("Transact") => {
                    let items = written_items(&operation, &body).map_or(1, |i| i.len());
                    cancelled(std::iter::repeat_n("TransactionConflict", items))
                }
                Some(Fault::Refuse) => (
                    400,
                    r#"{"__type":"com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException","message":"The level of configured provisioned throughput for the table was exceeded"}"#.to_owned(),
                ),
                Some(Fault::LoseReply) => {
                    let _ = embedded.dispatch(&operation, &body);
                    (
                        500,
                        r#"{"__type":"com.amazonaws.dynamodb.v20120810#InternalServerError","message":"the reply was lost (injected)"}"#.to_owned(),
                    )
                }
            };
            let status = StatusCode::try_from(status)
                .unwrap_or_else(|_| StatusCode::try_from(500).unwrap_or_else(|_| unreachable!()));
            let mut response = HttpResponse::new(status, SdkBody::from(json));
            response
                .headers_mut()
                .insert("content-type", "application/x-amz-json-1.0");
            Ok(response)
        })
    }
}

/// A transaction cancelled with these reasons, one per item.
fn cancelled<'a>(codes: impl Iterator<Item = &'a str>) -> (u16, String) {
    let reasons: Vec<serde_json::Value> = codes
        .map(|code| serde_json::json!({ "Code": code }))
        .collect();
    (
        400,
        serde_json::json!({
            "__type": "com.amazonaws.dynamodb.v20120810#TransactionCanceledException",
            "Message": "Transaction cancelled, please refer cancellation reasons for specific reasons",
            "CancellationReasons": reasons,
        })
        .to_string(),
    )
}

/// One DynamoDB call as the adapter made it and as a server answered it.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub operation: String,
    pub request: Vec<u8>,
    pub status: u16,
    pub response: String,
}

/// The DynamoDB calls made through [`recording`]'s configuration, in order.
#[derive(Debug, Clone, Default)]
pub struct Recording(Arc<Mutex<Vec<Exchange>>>);

impl Recording {
    pub fn exchanges(&self) -> Vec<Exchange> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replays every recorded request, in order, on a fresh embedded store
    /// and lists where its answer differs from the recorded one: the status,
    /// the error's type, each cancellation reason's code, or a success's
    /// body (messages and consumed capacity aside). The differential test of
    /// the embedded store against the server the recording was made on.
    pub fn replay_differences(&self) -> Result<Vec<String>> {
        let embedded = Embedded::new()?;
        let mut differences = Vec::new();
        for (i, x) in self.exchanges().iter().enumerate() {
            let (status, response) = embedded.dispatch(&x.operation, &x.request);
            let (ours, theirs) = (
                answer(&x.operation, status, &response),
                answer(&x.operation, x.status, &x.response),
            );
            if ours != theirs {
                differences.push(format!(
                    "#{i} {}: recorded {theirs}, embedded {ours}; request {}",
                    x.operation,
                    String::from_utf8_lossy(&x.request)
                ));
            }
        }
        Ok(differences)
    }
}

/// What an answer means to the adapter: its status, an error's type and
/// cancellation codes, a success's body without the consumed capacity. A
/// table's description differs by nature (creation time, ARNs, sizes): only
/// its status counts, the one thing provisioning reads.
fn answer(operation: &str, status: u16, body: &str) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    if status != 200 {
        let kind = v["__type"].as_str().unwrap_or_default();
        let kind = kind.rsplit('#').next().unwrap_or_default().to_owned();
        let codes: Vec<serde_json::Value> = v["CancellationReasons"]
            .as_array()
            .map(|r| r.iter().map(|r| r["Code"].clone()).collect())
            .unwrap_or_default();
        return serde_json::json!({ "status": status, "type": kind, "codes": codes });
    }
    // CreateTable: DynamoDB answers CREATING, as dynoxide does; DynamoDB
    // Local answers ACTIVE. Provisioning waits on DescribeTable either way.
    if operation == "CreateTable" {
        return serde_json::json!({ "status": status });
    }
    if operation.ends_with("Table") {
        let table = v.get("Table").or_else(|| v.get("TableDescription"));
        let table_status = table.map(|t| t["TableStatus"].clone());
        return serde_json::json!({ "status": status, "table_status": table_status });
    }
    if let Some(o) = v.as_object_mut() {
        o.remove("ConsumedCapacity");
    }
    serde_json::json!({ "status": status, "body": v })
}

/// `base` with every DynamoDB call and its answer recorded.
pub fn recording(base: &SdkConfig) -> (SdkConfig, Recording) {
    let recording = Recording::default();
    let client = Recorder {
        inner: crate::capacity::http_client_of(base),
        recording: recording.clone(),
    };
    let sdk = base
        .to_builder()
        .http_client(SharedHttpClient::new(client))
        .build();
    (sdk, recording)
}

#[derive(Debug)]
struct Recorder {
    inner: SharedHttpClient,
    recording: Recording,
}

impl HttpClient for Recorder {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(RecordingConnector {
            inner: self.inner.http_connector(settings, components),
            recording: self.recording.clone(),
        })
    }
}

#[derive(Debug)]
struct RecordingConnector {
    inner: SharedHttpConnector,
    recording: Recording,
}

impl HttpConnector for RecordingConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let target = request.headers().get("x-amz-target").unwrap_or_default();
        let Some(operation) = target.strip_prefix("DynamoDB_20120810.") else {
            return self.inner.call(request);
        };
        let operation = operation.to_owned();
        let body = request.body().bytes().unwrap_or_default().to_vec();
        let reply = self.inner.call(request);
        let recording = self.recording.clone();
        HttpConnectorFuture::new(async move {
            let reply = reply.await?;
            let status = reply.status();
            let headers = reply.headers().clone();
            let bytes = ByteStream::new(reply.into_body())
                .collect()
                .await
                .map_err(|e| ConnectorError::io(e.into()))?
                .into_bytes();
            recording
                .0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Exchange {
                    operation,
                    request: body,
                    status: status.as_u16(),
                    response: String::from_utf8_lossy(&bytes).into_owned(),
                });
            let mut response = HttpResponse::new(status, SdkBody::from(bytes));
            *response.headers_mut() = headers;
            Ok(response)
        })
    }
}
