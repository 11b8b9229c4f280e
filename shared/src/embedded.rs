//! DynamoDB inside this process, for tests and the simulation: dynoxide's
//! engine (SQLite in memory) behind the SDK's HTTP client, so the real
//! [`DynamoStore`](crate::aws::DynamoStore) runs unchanged, through the real
//! SDK, with no emulator to start.
//!
//! The routing holds no DynamoDB rule and no flashsale one: each operation's
//! JSON goes to dynoxide's typed request and its typed answer (or error, with
//! the `__type` and cancellation reasons DynamoDB writes) comes back. Beside
//! it: [`Faults`] dynoxide cannot make (contention, lost replies, outages),
//! ordered by the caller. `tools::embedded` records a real server's answers
//! and replays them here (the differential test).

use std::sync::{Arc, Mutex};
use std::time::Duration;

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
use dynoxide::{Database, DynoxideError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use crate::error::InfraError;

// The errors DynamoDB answers, as the SDK decodes them.
const CONFLICT: &str = r#"{"__type":"com.amazonaws.dynamodb.v20120810#TransactionConflictException","message":"Transaction is ongoing for the item"}"#;
const THROTTLED: &str = r#"{"__type":"com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException","message":"The level of configured provisioned throughput for the table was exceeded"}"#;
const FAILED: &str = r#"{"__type":"com.amazonaws.dynamodb.v20120810#InternalServerError","message":"internal server error (injected)"}"#;
const REPLY_LOST: &str = r#"{"__type":"com.amazonaws.dynamodb.v20120810#InternalServerError","message":"the reply was lost (injected)"}"#;

/// One in-memory DynamoDB; clones share it and its [`Faults`].
#[derive(Clone)]
pub struct Embedded {
    db: Database,
    /// The table's writes, replayed late for the secondary indexes when
    /// they lag ([`Faults::lag_indexes`]).
    index: Arc<Mutex<LaggingIndex>>,
    pub faults: Faults,
}

/// Secondary indexes that lag: DynamoDB updates a global secondary index
/// asynchronously, so a query on it may not yet show the latest writes. A
/// replica applies every write that committed, in order, once it is
/// `lag` old, and index queries read the replica: the indexes as they were
/// `lag` ago (a consistent prefix, the simplest model of that lag).
#[derive(Default)]
struct LaggingIndex {
    /// Every write that committed: when, the operation and its request.
    writes: Vec<(Instant, String, Vec<u8>)>,
    /// Made at the first lagging query; how many writes it applied.
    replica: Option<Database>,
    applied: usize,
}

/// The operations that change items, and those that change the table.
const ITEM_WRITES: [&str; 5] = [
    "PutItem",
    "UpdateItem",
    "DeleteItem",
    "TransactWriteItems",
    "BatchWriteItem",
];
const TABLE_WRITES: [&str; 3] = ["CreateTable", "DeleteTable", "UpdateTimeToLive"];

/// What dynoxide does not do by itself, ordered by the caller (a test, the
/// simulation's scheduler): refuse the next calls before they run, as
/// DynamoDB does under contention; run them and lose their replies (the
/// write committed, the caller sees a 500 and retries); hold items as a
/// transaction in flight does; or be unreachable for a stretch.
#[derive(Clone, Default, Debug)]
pub struct Faults(Arc<Mutex<FaultCounts>>);

#[derive(Default, Debug)]
struct FaultCounts {
    fail: usize,
    refuse: usize,
    lose_reply: usize,
    /// No call gets through before then (tokio's clock).
    down_until: Option<Instant>,
    /// Items held by another transaction in flight: (key attribute, its
    /// string value, until when).
    held: Vec<(String, String, Instant)>,
    /// How far the secondary indexes lag behind the table.
    index_lag: Duration,
}

impl Faults {
    /// The next `n` calls fail unrun with an internal server error (a
    /// transient failure that is not contention).
    pub fn fail_next(&self, n: usize) {
        self.counts().fail = n;
    }

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

    /// From now on, queries on a secondary index see the table as it was
    /// `lag` ago (tokio's clock); zero makes them current again.
    pub fn lag_indexes(&self, lag: Duration) {
        self.counts().index_lag = lag;
    }

    fn index_lag(&self) -> Duration {
        self.counts().index_lag
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
        if c.fail > 0 {
            c.fail -= 1;
            return Some(Fault::Fail);
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
    Fail,
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
    pub fn new() -> Result<Self, InfraError> {
        let db = Database::memory().map_err(|e| {
            InfraError::permanent(
                "dynamodb",
                format!("opening dynoxide's in-memory database: {e}"),
            )
        })?;
        Ok(Self {
            db,
            index: Arc::default(),
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

    /// An HTTP client that answers DynamoDB calls here (meeting the
    /// ordered faults) and sends every other call (SQS) to `others`.
    pub fn http_client(&self, others: Option<SharedHttpClient>) -> SharedHttpClient {
        SharedHttpClient::new(Client {
            embedded: self.clone(),
            others,
            faulty: true,
        })
    }

    /// One request: its status and JSON body.
    pub fn dispatch(&self, operation: &str, body: &[u8]) -> (u16, String) {
        let answer = route(&self.db, operation, body);
        if answer.0 == 200
            && (ITEM_WRITES.contains(&operation) || TABLE_WRITES.contains(&operation))
        {
            self.lagging()
                .writes
                .push((Instant::now(), operation.to_owned(), body.to_vec()));
        }
        answer
    }

    /// A request whose secondary-index queries see the table as it was
    /// `lag` ago.
    fn dispatch_lagging(&self, operation: &str, body: &[u8], lag: Duration) -> (u16, String) {
        let on_index = operation == "Query"
            && serde_json::from_slice::<serde_json::Value>(body)
                .is_ok_and(|b| b.get("IndexName").is_some());
        if lag.is_zero() || !on_index {
            return self.dispatch(operation, body);
        }
        let mut index = self.lagging();
        let replica = match &index.replica {
            Some(db) => db.clone(),
            None => match Database::memory() {
                Ok(db) => index.replica.insert(db).clone(),
                Err(e) => {
                    return (
                        500,
                        DynoxideError::InternalServerError(e.to_string()).to_json(),
                    );
                }
            },
        };
        let cutoff = Instant::now().checked_sub(lag);
        // Table operations are never late: the index exists with its table.
        while let Some((at, op, request)) = index.writes.get(index.applied)
            && (cutoff.is_some_and(|c| *at <= c) || !ITEM_WRITES.contains(&op.as_str()))
        {
            route(&replica, op, request);
            index.applied += 1;
        }
        route(&replica, operation, body)
    }

    fn lagging(&self) -> std::sync::MutexGuard<'_, LaggingIndex> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One request on one database: its status and JSON body.
fn route(db: &Database, operation: &str, body: &[u8]) -> (u16, String) {
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
            "the embedded DynamoDB does not route {other}: add it to shared::embedded"
        ))),
    };
    match out {
        Ok(json) => (200, json),
        Err(e) => (e.status_code(), e.to_json()),
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
                    format!(
                        "the embedded DynamoDB got a call for another service ({target:?}): \
                         build the client with Embedded::http_client(Some(<that service's client>))"
                    )
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
                None => {
                    let lag = if faulty {
                        embedded.faults.index_lag()
                    } else {
                        Duration::ZERO
                    };
                    embedded.dispatch_lagging(&operation, &body, lag)
                }
                Some(Fault::Unreachable) => {
                    return Err(ConnectorError::io(
                        "connection refused: the embedded DynamoDB is unreachable (injected)"
                            .into(),
                    ));
                }
                Some(Fault::Held(held)) if operation.starts_with("Transact") => cancelled(
                    held.iter()
                        .map(|h| if *h { "TransactionConflict" } else { "None" }),
                ),
                Some(Fault::Held(_)) => (400, CONFLICT.to_owned()),
                // As DynamoDB cancels a transaction that meets another in
                // flight on its items (here: all of them).
                Some(Fault::Refuse) if operation.starts_with("Transact") => {
                    let items = written_items(&operation, &body).map_or(1, |i| i.len());
                    cancelled(std::iter::repeat_n("TransactionConflict", items))
                }
                Some(Fault::Refuse) => (400, THROTTLED.to_owned()),
                Some(Fault::Fail) => (500, FAILED.to_owned()),
                Some(Fault::LoseReply) => {
                    let _ = embedded.dispatch(&operation, &body);
                    (500, REPLY_LOST.to_owned())
                }
            };
            let status =
                StatusCode::try_from(status).map_err(|e| ConnectorError::other(e.into(), None))?;
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
