//! AWS adapters: the SQS [`OrderQueue`] and the DynamoDB [`OrderStore`](crate::ports::OrderStore).
//! Endpoints come from the SDK's own environment variables
//! (`AWS_ENDPOINT_URL_SQS`, `AWS_ENDPOINT_URL_DYNAMODB`), so LocalStack and
//! DynamoDB Local need no code of ours.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue as Av, CancellationReason, Delete, Put, TransactWriteItem, Update,
};
use aws_sdk_sqs::error::SdkError;
use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};

use crate::domain::{
    AuditEntry, Control, Controlled, Currency, Denial, IdempotencyKey, KillSwitch, Ledger,
    OrderMessage, OrderStatus, Product, ProductId, Quantity, RateLimits, RequestId, RequestView,
    Reservation, StockChange, StockChangeRecord, UserId, from_unix_ms, unix_ms,
};
use crate::error::InfraError;
use crate::ledger;
use crate::payment::{EventId, PaymentEvent, PaymentOutcome, PaymentRecord};
use crate::ports::{
    Catalogue, ControlStore, Fate, FateNote, LifecycleStore, OrderBook, OrderQueue, PaymentWrite,
    Placement, PortResult, StockLedger, Transition,
};
use crate::retry::{self, Backoff};

/// The AWS SDK's HTTPS client trusts the system's CA certificates and
/// panics, deep inside its first use, when there are none (a container image
/// without `ca-certificates`). Checked at init instead, with what to do.
pub fn require_ca_certificates() -> Result<(), crate::error::ConfigError> {
    let found = rustls_native_certs::load_native_certs();
    trust_store_verdict(found.certs.len(), found.errors.len())
}

fn trust_store_verdict(certs: usize, errors: usize) -> Result<(), crate::error::ConfigError> {
    if certs > 0 {
        return Ok(());
    }
    Err(crate::error::ConfigError(format!(
        "no CA certificates found ({errors} load errors): the AWS SDK cannot make HTTPS calls. \
         Install the ca-certificates package in the image (provided.al2023 has it), or point \
         SSL_CERT_FILE / SSL_CERT_DIR at a CA bundle"
    )))
}

/// Loads the shared SDK configuration once per process, with timeouts that
/// keep a slow AWS call from eating the whole Lambda budget.
pub async fn load_sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(2))
                .operation_attempt_timeout(Duration::from_secs(3))
                .operation_timeout(Duration::from_secs(10))
                .build(),
        )
        .load()
        .await
}

const TRANSIENT_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "RequestThrottled",
    "RequestLimitExceeded",
    "ProvisionedThroughputExceededException",
    "TransactionConflictException",
    "TransactionInProgressException",
    "InternalServerError",
    "InternalFailure",
    "ServiceUnavailable",
    "KMSThrottlingException",
];

/// Transport failures, throttling and 5xx are transient; anything else the
/// service refused (bad names, permissions, validation) is permanent.
pub(crate) fn classify<E, R>(service: &'static str, err: SdkError<E, R>) -> InfraError
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    let detail = match &err {
        SdkError::ServiceError(s) => {
            let e = s.err();
            format!(
                "{}: {}",
                e.code().unwrap_or("unknown error"),
                e.message().unwrap_or("")
            )
        }
        other => format!("{other}: {:?}", other.source()),
    };
    let transient = match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(s) => s.err().code().is_some_and(|c| TRANSIENT_CODES.contains(&c)),
        _ => false,
    };
    if transient {
        InfraError::transient(service, detail)
    } else {
        InfraError::permanent(service, detail)
    }
}

// ---------------------------------------------------------------- SQS ----

#[derive(Clone)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

impl SqsQueue {
    /// One cheap call at init: resolves credentials and opens the pooled
    /// HTTPS connection, which the first buyer would otherwise wait for.
    pub async fn prepare(&self) -> PortResult<()> {
        self.client
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| classify("sqs", e))?;
        Ok(())
    }

    pub fn new(config: &SdkConfig, queue_url: impl Into<String>) -> Self {
        Self {
            client: aws_sdk_sqs::Client::new(config),
            queue_url: queue_url.into(),
        }
    }
}

impl OrderQueue for SqsQueue {
    async fn send(&self, msg: &OrderMessage, traceparent: &str) -> PortResult<()> {
        let body = serde_json::to_string(msg)
            .map_err(|e| InfraError::permanent("sqs", format!("cannot encode message: {e}")))?;
        let tp = MessageAttributeValue::builder()
            .data_type("String")
            .string_value(traceparent)
            .build()
            .map_err(|e| InfraError::permanent("sqs", e.to_string()))?;
        self.client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .message_attributes("traceparent", tp)
            .send()
            .await
            .map_err(|e| classify("sqs", e))?;
        Ok(())
    }

    async fn send_batch(
        &self,
        msgs: &[OrderMessage],
        traceparents: Option<&[String]>,
    ) -> PortResult<Vec<RequestId>> {
        let mut entries = Vec::with_capacity(msgs.len());
        for (i, msg) in msgs.iter().enumerate() {
            let body = serde_json::to_string(msg)
                .map_err(|e| InfraError::permanent("sqs", format!("cannot encode message: {e}")))?;
            let tp = match traceparents.and_then(|t| t.get(i)) {
                Some(tp) => tp.clone(),
                None => crate::telemetry::traceparent(None),
            };
            let tp = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(tp)
                .build()
                .map_err(|e| InfraError::permanent("sqs", e.to_string()))?;
            entries.push(
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(body)
                    .message_attributes("traceparent", tp)
                    .build()
                    .map_err(|e| InfraError::permanent("sqs", e.to_string()))?,
            );
        }
        let out = self
            .client
            .send_message_batch()
            .queue_url(&self.queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| classify("sqs", e))?;
        Ok(out
            .failed
            .iter()
            .filter_map(|f| msgs.get(f.id.parse::<usize>().ok()?))
            .map(|m| m.request_id.clone())
            .collect())
    }
}

// ---------------------------------------------------------------- SSM ----

/// Reads a SecureString from Parameter Store, decrypted: how the functions
/// get their secrets in AWS without plain environment values.
///
/// Parameter Store allows 40 reads per second per account and region by
/// default, and a sale's burst of cold starts can exceed it: throttled reads
/// are retried with jitter for up to ~3 s of the init; turn on Parameter
/// Store's higher throughput for large sales (docs/operations.md).
pub async fn ssm_secret(config: &SdkConfig, name: &str) -> PortResult<String> {
    let client = aws_sdk_ssm::Client::new(config);
    let backoff = crate::retry::Backoff {
        attempts: 7,
        first: Duration::from_millis(50),
    };
    let out = crate::retry::transient(backoff, || async {
        client
            .get_parameter()
            .name(name)
            .with_decryption(true)
            .send()
            .await
            .map_err(|e| classify("ssm", e))
    })
    .await?;
    out.parameter
        .and_then(|p| p.value)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            InfraError::permanent(
                "ssm",
                format!("parameter {name} has no value; put the secret there as a SecureString"),
            )
        })
}

// ----------------------------------------------------------- DynamoDB ----

/// Single-table layout:
/// - `ORDER#<request_id>`: the order; its existence decides the request's fate.
/// - `PURCHASE#<product>#<user>`: the buyer guard (one order per buyer).
/// - `PRODUCT#<product>`: the product definition.
///
/// - `PAYMENT#<event_id>`: a payment event and how it ended.
///
/// Orders carry `gsi1pk = PRODUCT#<product>` so audits can list a product's
/// orders through the `gsi1` index. Orders that owe work (placed and unpaid,
/// or released with the shelf step due) also carry `gsi2pk = DUE#<shard>`,
/// `gsi2sk = <when due>#<request_id>`: `gsi2` is sparse, so the expirer's
/// query reads only those.
pub mod table {
    pub const PK: &str = "pk";
    pub const GSI1: &str = "gsi1";
    pub const GSI1_PK: &str = "gsi1pk";
    pub const GSI1_SK: &str = "gsi1sk";
    pub const GSI2: &str = "gsi2";
    pub const GSI2_PK: &str = "gsi2pk";
    pub const GSI2_SK: &str = "gsi2sk";
    /// Partitions of `gsi2`: spreads a sale's burst of placements over
    /// several index partitions (each takes ~1,000 writes/s).
    pub const DUE_SHARDS: u32 = 4;
    /// The table's TTL attribute (epoch seconds).
    pub const TTL: &str = "expires_at";

    pub fn order(request_id: &str) -> String {
        format!("ORDER#{request_id}")
    }
    pub fn purchase(product: &str, user: &str) -> String {
        format!("PURCHASE#{product}#{user}")
    }
    pub fn product(product: &str) -> String {
        format!("PRODUCT#{product}")
    }
    /// Shard `i` of a product's stock ledger: shard 0 is the product's own
    /// item, so a product of one shard is one item as before.
    pub fn ledger_shard(product: &str, i: u16) -> String {
        match i {
            0 => self::product(product),
            i => format!("LEDGER#{product}#{i}"),
        }
    }
    pub fn payment(event_id: &str) -> String {
        format!("PAYMENT#{event_id}")
    }
    /// `gsi1pk` of a product's payments due for refund.
    pub fn refunds(product: &str) -> String {
        format!("REFUND_DUE#{product}")
    }
    pub fn due_shard(request_id: &str) -> String {
        let h = request_id
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
        format!("DUE#{}", h % DUE_SHARDS)
    }
    /// `gsi2sk`: sorts by the time an order falls due.
    pub fn due_at(at_ms: i64, request_id: &str) -> String {
        format!("{:015}#{request_id}", at_ms.max(0))
    }
    /// `gsi1pk` of every product item: `gsi1` lists products by sale end.
    pub const PRODUCTS: &str = "PRODUCTS";
    /// `gsi1sk` of a product item: its sale's end, sortable as text.
    pub fn sale_end(ends_at_ms: i64) -> String {
        format!("{:015}", ends_at_ms.max(0))
    }
    /// A product's audit entries (gsi1), by time; `AUDIT` alone those about
    /// every sale (product ids are never empty).
    pub fn audit(product: Option<&str>) -> String {
        format!("AUDIT#{}", product.unwrap_or_default())
    }
    /// The kill switch's item.
    pub const KILL_SWITCH: &str = "SWITCH#admissions";
    /// A buyer's deny-list entry.
    pub fn denial(user: &str) -> String {
        format!("DENY#{user}")
    }
    /// `gsi1pk` of every deny-list entry (sorted by buyer).
    pub const DENIED: &str = "DENIED";
    /// An operator's stock change, by its Idempotency-Key.
    pub fn stock_change(product: &str, key: &str) -> String {
        format!("STOCK#{product}#{key}")
    }
    /// `gsi1pk` of a product's additions whose shelf step is due.
    pub fn stock_due(product: &str) -> String {
        format!("STOCK_DUE#{product}")
    }
}

/// Buyer guards outlive their sale by this much, then expire (table TTL):
/// the one-order-per-buyer rule matters only while the product is on sale.
const GUARD_TTL_SECS: i64 = 30 * 24 * 3600;

/// When a buyer guard may go: a month after the sale ends (or after the
/// admission, for messages that do not carry the sale's end).
pub fn guard_expires_at(msg: &OrderMessage) -> i64 {
    msg.admitted_at.max(msg.sale_ends_at) / 1000 + GUARD_TTL_SECS
}

#[derive(Clone)]
pub struct DynamoStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
    conflicts: Arc<AtomicU64>,
    /// The due index's shard a `due` query starts with, in turn, so one
    /// shard whose orders keep failing cannot starve the others.
    next_shard: Arc<AtomicU64>,
    /// Per product, the last snapshot of its ledger shards' units this
    /// process read: placements skip the shards it showed dry.
    snapshots: Arc<std::sync::Mutex<HashMap<ProductId, ShardSnapshot>>>,
}

/// When a product's shards were read, and each one's units then.
type ShardSnapshot = (tokio::time::Instant, Vec<i64>);

fn s(v: impl Into<String>) -> Av {
    Av::S(v.into())
}
fn n(v: impl ToString) -> Av {
    Av::N(v.to_string())
}

type Item = HashMap<String, Av>;

fn get_s<'a>(item: &'a Item, k: &str) -> Option<&'a str> {
    item.get(k).and_then(|v| v.as_s().ok()).map(String::as_str)
}
fn get_n<T: std::str::FromStr>(item: &Item, k: &str) -> Option<T> {
    item.get(k)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
}

fn db_status(status: OrderStatus) -> String {
    status.as_str().to_ascii_uppercase()
}

fn corrupt(what: &str) -> InfraError {
    InfraError::permanent(
        "dynamodb",
        format!("{what} item is missing attributes; inspect it in the table"),
    )
}

/// The ledger item an order's payment and release count on.
fn home_shard(o: &RequestView) -> String {
    table::ledger_shard(o.product_id.as_str(), ledger::home_of(o))
}

/// A ledger item's counters (the product's item is shard 0).
fn ledger_counts(item: &Item) -> Ledger {
    let count = |k: &str| get_n::<i64>(item, k).unwrap_or(0);
    Ledger {
        remaining: count("remaining"),
        releasing: count("releasing"),
        paid: count("paid"),
        paid_units: count("paid_units"),
        cancelled: count("cancelled"),
        expired: count("expired"),
        released: count("released"),
        refund_due: count("refund_due"),
        added: count("added"),
        withdrawn: count("withdrawn"),
    }
}

fn order_view(item: &Item) -> PortResult<RequestView> {
    let parse = || -> Option<RequestView> {
        let id = RequestId::parse(get_s(item, "request_id")?).ok()?;
        Some(RequestView {
            product_id: id.product(),
            request_id: id,
            user_id: UserId::parse(get_s(item, "user_id")?).ok()?,
            quantity: Quantity::new(get_n(item, "quantity")?).ok()?,
            status: OrderStatus::parse(get_s(item, "status")?)?,
            updated_at: from_unix_ms(get_n(item, "updated_at")?),
            reservation: match get_n::<i64>(item, "pay_by") {
                None => None,
                Some(pay_by_ms) => Some(Reservation {
                    pay_by_ms,
                    amount: get_n(item, "amount")?,
                    currency: Currency::parse(get_s(item, "currency")?).ok()?,
                    rebuy_after_release: item
                        .get("rebuy_after_release")
                        .and_then(|v| v.as_bool().ok())
                        .copied()
                        .unwrap_or(false),
                    ledger_shards: get_n(item, "ledger_shards").unwrap_or(1),
                }),
            },
        })
    };
    parse().ok_or_else(|| corrupt("order"))
}

fn payment_record(item: &Item) -> PortResult<PaymentRecord> {
    let parse = || -> Option<PaymentRecord> {
        Some(PaymentRecord {
            event: PaymentEvent {
                event_id: EventId::parse(get_s(item, "event_id")?).ok()?,
                request_id: RequestId::parse(get_s(item, "request_id")?).ok()?,
                amount: get_n(item, "amount")?,
                currency: Currency::parse(get_s(item, "currency")?).ok()?,
                status: get_s(item, "event_status")?.to_owned(),
            },
            outcome: PaymentOutcome::parse(get_s(item, "outcome")?)?,
            order_status: OrderStatus::parse(get_s(item, "order_status")?)?,
        })
    };
    parse().ok_or_else(|| corrupt("payment"))
}

fn payment_item(r: &PaymentRecord, now_ms: i64) -> Item {
    let e = &r.event;
    let mut item = HashMap::from([
        (table::PK.into(), s(table::payment(e.event_id.as_str()))),
        ("event_id".into(), s(e.event_id.as_str())),
        ("request_id".into(), s(e.request_id.as_str())),
        ("amount".into(), n(e.amount)),
        ("currency".into(), s(e.currency.as_str())),
        ("event_status".into(), s(&e.status)),
        ("outcome".into(), s(r.outcome.as_str())),
        ("order_status".into(), s(r.order_status.as_str())),
        ("refund_due".into(), Av::Bool(r.outcome.refund_due())),
        ("recorded_at".into(), n(now_ms)),
    ]);
    // Money owed back is listed per product through gsi1 (`flashsale refunds`).
    if r.outcome.refund_due() {
        item.insert(
            table::GSI1_PK.into(),
            s(table::refunds(e.request_id.product().as_str())),
        );
        item.insert(
            table::GSI1_SK.into(),
            s(format!("{:015}#{}", now_ms.max(0), e.event_id.as_str())),
        );
    }
    item
}

fn denial_of(item: &Item) -> PortResult<Denial> {
    let parse = || {
        Some(Denial {
            user_id: UserId::parse(get_s(item, "user_id")?).ok()?,
            reason: get_s(item, "reason")?.to_owned(),
            actor: get_s(item, "actor")?.to_owned(),
            at: from_unix_ms(get_n(item, "at")?),
            until: get_n(item, "until").map(from_unix_ms),
        })
    };
    parse().ok_or_else(|| corrupt("deny-list entry"))
}

fn invalid(e: impl std::fmt::Display) -> InfraError {
    InfraError::permanent("dynamodb", e.to_string())
}

/// Why DynamoDB cancelled one item of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cancel {
    /// Not the cause (DynamoDB's `None`).
    No,
    /// Its condition failed: a decision, not a failure.
    Condition,
    /// Another transaction held it, or its partition was out of capacity:
    /// contention, which passes.
    Contended,
}

/// Each item's cancellation reason, or None when the transaction committed.
/// A cancellation for any other reason (validation, item size) is an error.
fn cancellation(
    result: Result<
        aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsOutput,
        SdkError<TransactWriteItemsError, aws_sdk_dynamodb::config::http::HttpResponse>,
    >,
) -> PortResult<Option<Vec<Cancel>>> {
    match result {
        Ok(_) => Ok(None),
        Err(SdkError::ServiceError(se)) => {
            let TransactWriteItemsError::TransactionCanceledException(tc) = se.err() else {
                return Err(classify("dynamodb", SdkError::ServiceError(se)));
            };
            let reasons: &[CancellationReason] = tc.cancellation_reasons();
            reasons
                .iter()
                .map(|r| match r.code() {
                    None | Some("None") => Ok(Cancel::No),
                    Some("ConditionalCheckFailed") => Ok(Cancel::Condition),
                    Some(
                        "TransactionConflict" | "ThrottlingError" | "ProvisionedThroughputExceeded",
                    ) => Ok(Cancel::Contended),
                    Some(_) => Err(InfraError::transient(
                        "dynamodb",
                        format!("transaction cancelled: {reasons:?}"),
                    )),
                })
                .collect::<PortResult<Vec<_>>>()
                .map(Some)
        }
        Err(e) => Err(classify("dynamodb", e)),
    }
}

/// Which items' conditions failed, or None when the transaction committed;
/// a transaction cancelled by contention alone is a transient error.
fn cancelled_conditions(reasons: Option<Vec<Cancel>>) -> PortResult<Option<Vec<bool>>> {
    match reasons {
        None => Ok(None),
        Some(r) if r.contains(&Cancel::Condition) => {
            Ok(Some(r.iter().map(|c| *c == Cancel::Condition).collect()))
        }
        Some(r) => Err(InfraError::transient(
            "dynamodb",
            format!("transaction cancelled by contention: {r:?}"),
        )),
    }
}

/// How long a placement keeps replanning and retrying a contended ledger in
/// process before it leaves the message to SQS: contention passes within
/// milliseconds, a redelivery costs a visibility timeout and a receive.
const PLACE_CONTENTION_BUDGET: Duration = Duration::from_secs(2);

/// A shard snapshot younger than this still steers a placement away from
/// the shards it showed dry (a release may refill one later).
const SNAPSHOT_FRESH: Duration = Duration::from_secs(1);

/// Creates the table (its key and both indexes) unless it exists, and
/// waits until it is ACTIVE: `flashsale provision`, the stack tests and the
/// embedded DynamoDB. template.yaml declares the same table on AWS.
pub async fn create_table(sdk: &SdkConfig, name: &str) -> PortResult<()> {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType,
        Projection, ProjectionType, ScalarAttributeType, TableStatus,
    };
    let ddb = aws_sdk_dynamodb::Client::new(sdk);
    let attr = |n: &str| {
        AttributeDefinition::builder()
            .attribute_name(n)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(invalid)
    };
    let key = |n: &str, t: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(n)
            .key_type(t)
            .build()
            .map_err(invalid)
    };
    let gsi = |name: &str, pk: &str, sk: &str| {
        GlobalSecondaryIndex::builder()
            .index_name(name)
            .key_schema(key(pk, KeyType::Hash)?)
            .key_schema(key(sk, KeyType::Range)?)
            .projection(
                Projection::builder()
                    .projection_type(ProjectionType::All)
                    .build(),
            )
            .build()
            .map_err(invalid)
    };
    let created = ddb
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attr(table::PK)?)
        .attribute_definitions(attr(table::GSI1_PK)?)
        .attribute_definitions(attr(table::GSI1_SK)?)
        .attribute_definitions(attr(table::GSI2_PK)?)
        .attribute_definitions(attr(table::GSI2_SK)?)
        .key_schema(key(table::PK, KeyType::Hash)?)
        .global_secondary_indexes(gsi(table::GSI1, table::GSI1_PK, table::GSI1_SK)?)
        .global_secondary_indexes(gsi(table::GSI2, table::GSI2_PK, table::GSI2_SK)?)
        .send()
        .await;
    if let Err(e) = created {
        let exists = e
            .as_service_error()
            .is_some_and(|s| s.is_resource_in_use_exception());
        if !exists {
            return Err(classify("dynamodb", e));
        }
    }
    for _ in 0..120 {
        let status = ddb
            .describe_table()
            .table_name(name)
            .send()
            .await
            .map_err(|e| classify("dynamodb", e))?
            .table
            .and_then(|t| t.table_status);
        if status == Some(TableStatus::Active) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(InfraError::transient(
        "dynamodb",
        format!("table {name} did not become ACTIVE in 30 s: check the DynamoDB endpoint"),
    ))
}

impl DynamoStore {
    pub fn new(config: &SdkConfig, table: impl Into<String>) -> Self {
        Self {
            client: aws_sdk_dynamodb::Client::new(config),
            table: table.into(),
            conflicts: Arc::new(AtomicU64::new(0)),
            next_shard: Arc::new(AtomicU64::new(0)),
            snapshots: Arc::default(),
        }
    }

    /// One cheap read at init (an order key nobody writes), for the same
    /// reason as [`SqsQueue::prepare`].
    pub async fn prepare(&self) -> PortResult<()> {
        self.client
            .get_item()
            .table_name(&self.table)
            .key(table::PK, s(table::order("init-warm-up")))
            .send()
            .await
            .map_err(|e| classify("dynamodb", e))?;
        Ok(())
    }

    /// Transactions cancelled by a conflicting concurrent write (each
    /// retried): the measure of contention on the ledger's items.
    pub fn transaction_conflicts(&self) -> u64 {
        self.conflicts.load(Ordering::Relaxed)
    }

    pub fn client(&self) -> &aws_sdk_dynamodb::Client {
        &self.client
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    fn order_item(msg: &OrderMessage, status: OrderStatus) -> Item {
        let now = unix_ms(time::OffsetDateTime::now_utc());
        HashMap::from([
            (table::PK.into(), s(table::order(msg.request_id.as_str()))),
            (
                table::GSI1_PK.into(),
                s(table::product(msg.product_id.as_str())),
            ),
            (
                table::GSI1_SK.into(),
                s(table::order(msg.request_id.as_str())),
            ),
            ("request_id".into(), s(msg.request_id.as_str())),
            ("product_id".into(), s(msg.product_id.as_str())),
            ("user_id".into(), s(msg.user_id.as_str())),
            ("quantity".into(), n(msg.quantity.get())),
            ("status".into(), s(db_status(status))),
            ("admitted_at".into(), n(msg.admitted_at)),
            ("updated_at".into(), n(now)),
        ])
    }

    /// An audit entry's item (gsi1 `AUDIT#<product>`, by time), for the
    /// transaction that makes the change it records.
    fn audit_put(&self, entry: &AuditEntry) -> PortResult<TransactWriteItem> {
        let at = unix_ms(entry.at);
        let scope = table::audit(entry.product_id.as_ref().map(ProductId::as_str));
        let id_part = uuid::Uuid::now_v7().simple().to_string();
        let mut put = Put::builder()
            .table_name(&self.table)
            .item(table::PK, s(format!("{scope}#{at:015}#{id_part}")))
            .item(table::GSI1_PK, s(scope))
            .item(table::GSI1_SK, s(format!("{at:015}#{id_part}")))
            .item("at", n(at))
            .item("actor", s(&entry.actor))
            .item("action", s(&entry.action))
            .item("reason", s(&entry.reason));
        if let Some(p) = &entry.product_id {
            put = put.item("product_id", s(p.as_str()));
        }
        Ok(TransactWriteItem::builder()
            .put(put.build().map_err(invalid)?)
            .build())
    }

    /// A consistent read of one item by key.
    async fn get(&self, pk: String) -> PortResult<Option<Item>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(table::PK, s(pk))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify("dynamodb", e))?;
        Ok(out.item)
    }

    /// Every item of `gsi1` under `pk` (with a sort key above `after`), all
    /// pages.
    async fn query_gsi1(
        &self,
        pk: &str,
        after: Option<&str>,
        projection: Option<&str>,
    ) -> PortResult<Vec<Item>> {
        let mut query = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(table::GSI1)
            .expression_attribute_names("#pk", table::GSI1_PK)
            .expression_attribute_values(":pk", s(pk))
            .set_projection_expression(projection.map(str::to_owned));
        query = match after {
            Some(after) => query
                .key_condition_expression("#pk = :pk AND #sk > :after")
                .expression_attribute_names("#sk", table::GSI1_SK)
                .expression_attribute_values(":after", s(after)),
            None => query.key_condition_expression("#pk = :pk"),
        };
        let mut pages = query.into_paginator().items().send();
        let mut items = Vec::new();
        while let Some(item) = pages.next().await {
            items.push(item.map_err(|e| classify("dynamodb", e))?);
        }
        Ok(items)
    }

    /// Runs one transaction: None when it committed, else which items
    /// failed their condition (other cancellations are errors).
    async fn transact(&self, items: Vec<TransactWriteItem>) -> PortResult<Option<Vec<bool>>> {
        cancelled_conditions(self.transact_reasons(items).await?)
    }

    /// A transaction, and each item's reason when it was cancelled.
    async fn transact_reasons(
        &self,
        items: Vec<TransactWriteItem>,
    ) -> PortResult<Option<Vec<Cancel>>> {
        let result = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await;
        if let Err(SdkError::ServiceError(se)) = &result
            && let TransactWriteItemsError::TransactionCanceledException(tc) = se.err()
            && tc
                .cancellation_reasons()
                .iter()
                .any(|r| r.code() == Some("TransactionConflict"))
        {
            self.conflicts.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("flashsale_transaction_conflicts_total").increment(1);
        }
        cancellation(result)
    }

    /// Where an order of `quantity` starts: its home shard, unless this
    /// process read the shards lately and saw it dry; then the plan that
    /// read gives (a fresh read still decides sold out).
    fn first_plan(&self, product: &ProductId, home: u16, quantity: i64) -> Vec<(u16, i64)> {
        let snapshots = self.snapshots.lock().unwrap_or_else(|e| e.into_inner());
        snapshots
            .get(product)
            .filter(|(at, remaining)| {
                at.elapsed() < SNAPSHOT_FRESH
                    && remaining
                        .get(usize::from(home))
                        .is_some_and(|r| *r < quantity)
            })
            .and_then(|(_, remaining)| ledger::plan_take(remaining, home, quantity))
            .unwrap_or_else(|| vec![(home, quantity)])
    }

    /// One snapshot of a product's shards' units, remembered for
    /// [`Self::first_plan`].
    async fn shard_units(&self, product: &ProductId, shards: u16) -> PortResult<Vec<i64>> {
        let remaining = ledger::units(&self.shards(product, shards).await?);
        self.snapshots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                product.clone(),
                (tokio::time::Instant::now(), remaining.clone()),
            );
        Ok(remaining)
    }

    /// Each of a product's `n` ledger shards, read as one snapshot
    /// (TransactGetItems: a sold-out decision must not add up shards read
    /// at different moments); a shard not written yet counts as empty.
    async fn shards(&self, product: &ProductId, n: u16) -> PortResult<Vec<Ledger>> {
        use aws_sdk_dynamodb::types::{Get, TransactGetItem};
        let mut read = self.client.transact_get_items();
        for i in 0..n.max(1) {
            let get = Get::builder()
                .table_name(&self.table)
                .key(table::PK, s(table::ledger_shard(product.as_str(), i)))
                .build()
                .map_err(invalid)?;
            read = read.transact_items(TransactGetItem::builder().get(get).build());
        }
        // DynamoDB cancels a transactional read that meets a write in
        // flight on one of its items: contention, read again.
        let out = read.send().await.map_err(|e| match &e {
            SdkError::ServiceError(se)
                if se.err().code() == Some("TransactionCanceledException") =>
            {
                InfraError::transient(
                    "dynamodb",
                    "the ledger shards' snapshot read met a write in flight; it is read again",
                )
            }
            _ => classify("dynamodb", e),
        })?;
        Ok(out
            .responses()
            .iter()
            .map(|r| r.item().map(ledger_counts).unwrap_or_default())
            .collect())
    }

    /// An update of a ledger item's counters (`pk` the product's or one of
    /// its shards): `ADD` each (name, delta).
    fn count(
        &self,
        pk: String,
        deltas: &[(&str, i64)],
    ) -> aws_sdk_dynamodb::types::builders::UpdateBuilder {
        let mut update = Update::builder()
            .table_name(&self.table)
            .key(table::PK, s(pk));
        let mut parts = Vec::new();
        for (i, (name, delta)) in deltas.iter().enumerate() {
            parts.push(format!("#c{i} :c{i}"));
            update = update
                .expression_attribute_names(format!("#c{i}"), *name)
                .expression_attribute_values(format!(":c{i}"), n(delta));
        }
        update.update_expression(format!("ADD {}", parts.join(", ")))
    }

    /// Takes `units` from a ledger item, only while it holds them, counting
    /// `also` alongside.
    fn take_units(
        &self,
        pk: String,
        units: i64,
        also: &[(&str, i64)],
    ) -> PortResult<TransactWriteItem> {
        let mut deltas = vec![("remaining", -units)];
        deltas.extend_from_slice(also);
        let update = self
            .count(pk, &deltas)
            .condition_expression("remaining >= :need")
            .expression_attribute_values(":need", n(units))
            .build()
            .map_err(invalid)?;
        Ok(TransactWriteItem::builder().update(update).build())
    }

    /// A product's payments recorded as due for refund, oldest first (for
    /// the operator who refunds them; not a hot path).
    pub async fn refunds_due(&self, product: &ProductId) -> PortResult<Vec<PaymentRecord>> {
        self.query_gsi1(&table::refunds(product.as_str()), None, None)
            .await?
            .iter()
            .map(payment_record)
            .collect()
    }

    async fn existing_status(&self, id: &RequestId) -> PortResult<OrderStatus> {
        self.order(id).await?.map(|o| o.status).ok_or_else(|| {
            InfraError::transient(
                "dynamodb",
                "order reported as existing but not readable yet",
            )
        })
    }
}

impl OrderBook for DynamoStore {
    async fn place(&self, msg: &OrderMessage, terms: &Reservation) -> PortResult<Placement> {
        let cond = "attribute_not_exists(pk)";
        let id = msg.request_id.as_str();
        let shards = terms.ledger_shards.max(1);
        let mut item = Self::order_item(msg, OrderStatus::Placed);
        item.extend([
            ("pay_by".into(), n(terms.pay_by_ms)),
            ("amount".into(), n(terms.amount)),
            ("currency".into(), s(terms.currency.as_str())),
            (
                "rebuy_after_release".into(),
                Av::Bool(terms.rebuy_after_release),
            ),
            ("ledger_shards".into(), n(shards)),
            (table::GSI2_PK.into(), s(table::due_shard(id))),
            (table::GSI2_SK.into(), s(table::due_at(terms.pay_by_ms, id))),
        ]);
        let order = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(cond)
            .build()
            .map_err(invalid)?;
        let guard = Put::builder()
            .table_name(&self.table)
            .item(
                table::PK,
                s(table::purchase(
                    msg.product_id.as_str(),
                    msg.user_id.as_str(),
                )),
            )
            .item("request_id", s(msg.request_id.as_str()))
            .item("quantity", n(msg.quantity.get()))
            .item(table::TTL, n(guard_expires_at(msg)))
            .condition_expression(cond)
            .build()
            .map_err(invalid)?;
        let quantity = i64::from(msg.quantity.get());
        let home = ledger::home(id, shards);
        // The home shard, one transaction, in the common case. The plan
        // survives every retry below: only a read of all shards changes it.
        let mut takes = self.first_plan(&msg.product_id, home, quantity);
        let deadline = tokio::time::Instant::now() + PLACE_CONTENTION_BUDGET;
        let mut pause = Duration::from_millis(2);
        loop {
            let mut items = vec![
                TransactWriteItem::builder().put(order.clone()).build(),
                TransactWriteItem::builder().put(guard.clone()).build(),
            ];
            // The stock guard: DynamoDB's own count of units, so an order
            // Redis admitted by mistake (lost decrements after a failover)
            // cannot land.
            for (shard, take) in &takes {
                let shard = table::ledger_shard(msg.product_id.as_str(), *shard);
                items.push(self.take_units(shard, *take, &[("sold", *take)])?);
            }
            let Some(reasons) = self.transact_reasons(items).await? else {
                return Ok(Placement::Placed);
            };
            let at = |i: usize| reasons.get(i).copied().unwrap_or(Cancel::No);
            if at(0) == Cancel::Condition {
                return Ok(Placement::Exists(
                    self.existing_status(&msg.request_id).await?,
                ));
            }
            // A buyer holding another order is refused as such, whatever the
            // shards say: as out of stock, Redis would free them to buy again.
            if at(1) == Cancel::Condition {
                return Ok(Placement::BuyerTaken);
            }
            // A shard that refused (dry) or was held (contended) sends the
            // order to one snapshot of them all: sold out only when all
            // together lack the units, else a new plan, starting after a
            // contended shard so contenders spread over the others.
            let refused = (0..takes.len()).find(|k| {
                at(2 + k) == Cancel::Condition || (at(2 + k) != Cancel::No && shards > 1)
            });
            let mut contended = reasons.contains(&Cancel::Contended);
            if let Some(k) = refused {
                let start = match at(2 + k) {
                    Cancel::Condition => home,
                    _ => (takes[k].0 + 1) % shards,
                };
                // One shard that refused the units: sold out, nothing to read.
                let snapshot = match shards {
                    1 => Ok(vec![0]),
                    _ => self.shard_units(&msg.product_id, shards).await,
                };
                match snapshot.map(|remaining| ledger::plan_take(&remaining, start, quantity)) {
                    Ok(Some(plan)) => takes = plan,
                    // The buyer's guard is held by their other order in
                    // flight: if it lands they hold an order, so wait for
                    // it rather than answer out of stock (which frees them).
                    Ok(None) if at(1) == Cancel::Contended => {}
                    Ok(None) => return Ok(Placement::OutOfStock),
                    // The snapshot met writes in flight (DynamoDB cancels a
                    // transactional read then; on a busy sale it would keep
                    // doing so): try the next shard whole, and decide sold
                    // out only from a snapshot that gets through.
                    Err(e) if e.is_transient() => {
                        contended = true;
                        takes = vec![((takes[k].0 + 1) % shards, quantity)];
                    }
                    Err(e) => return Err(e),
                }
            } else if !contended {
                return Err(InfraError::transient(
                    "dynamodb",
                    format!("placement cancelled without a reason: {reasons:?}"),
                ));
            }
            // Another transaction holds an item (a contender on a shard, or
            // this order's own other delivery): pause, jittered so
            // contenders part. A dry shard's replan goes on at once.
            let wait = if contended {
                pause / 2 + pause.mul_f64(fastrand::f64())
            } else {
                Duration::ZERO
            };
            if tokio::time::Instant::now() + wait > deadline {
                metrics::counter!("flashsale_placement_contention_exhausted_total").increment(1);
                return Err(InfraError::transient(
                    "dynamodb",
                    format!(
                        "the ledger stayed contended for {PLACE_CONTENTION_BUDGET:?} (last reasons {reasons:?}); \
                         the order is left to its next delivery"
                    ),
                ));
            }
            tokio::time::sleep(wait).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }
    async fn record_fate(
        &self,
        msg: &OrderMessage,
        status: OrderStatus,
        note: &FateNote,
    ) -> PortResult<Fate> {
        let mut item = Self::order_item(msg, status);
        item.insert("reason".into(), s(&note.reason));
        item.insert("receive_count".into(), n(note.receive_count));
        if let Some(t) = note.first_failure_ms {
            item.insert("first_failure_at".into(), n(t));
        }
        if let Some(t) = note.last_failure_ms {
            item.insert("last_failure_at".into(), n(t));
        }
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(Fate::Won),
            Err(SdkError::ServiceError(se))
                if matches!(se.err(), PutItemError::ConditionalCheckFailedException(_)) =>
            {
                Ok(Fate::Exists(self.existing_status(&msg.request_id).await?))
            }
            Err(e) => Err(classify("dynamodb", e)),
        }
    }
    async fn order(&self, id: &RequestId) -> PortResult<Option<RequestView>> {
        self.get(table::order(id.as_str()))
            .await?
            .as_ref()
            .map(order_view)
            .transpose()
    }
    async fn orders_of(&self, id: &ProductId) -> PortResult<Vec<RequestView>> {
        self.query_gsi1(&table::product(id.as_str()), None, None)
            .await?
            .iter()
            .map(order_view)
            .collect()
    }
}

impl LifecycleStore for DynamoStore {
    async fn pay(
        &self,
        o: &RequestView,
        event: &PaymentEvent,
        now_ms: i64,
    ) -> PortResult<PaymentWrite> {
        let id = o.request_id.as_str();
        let order = Update::builder()
            .table_name(&self.table)
            .key(table::PK, s(table::order(id)))
            .update_expression(
                "SET #st = :paid, updated_at = :now, paid_at = :now, payment_event = :ev \
                 REMOVE gsi2pk, gsi2sk",
            )
            .condition_expression("#st = :placed AND pay_by >= :now")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":paid", s(db_status(OrderStatus::Paid)))
            .expression_attribute_values(":placed", s(db_status(OrderStatus::Placed)))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":ev", s(event.event_id.as_str()))
            .build()
            .map_err(invalid)?;
        let record = PaymentRecord {
            event: event.clone(),
            outcome: PaymentOutcome::Paid,
            order_status: OrderStatus::Placed,
        };
        let payment = Put::builder()
            .table_name(&self.table)
            .set_item(Some(payment_item(&record, now_ms)))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(invalid)?;
        let units = i64::from(o.quantity.get());
        let counters = self
            .count(home_shard(o), &[("paid", 1), ("paid_units", units)])
            .build()
            .map_err(invalid)?;
        let items = vec![
            TransactWriteItem::builder().update(order).build(),
            TransactWriteItem::builder().put(payment).build(),
            TransactWriteItem::builder().update(counters).build(),
        ];
        match self.transact(items).await? {
            None => Ok(PaymentWrite::Paid),
            Some(failed) if failed.get(1) == Some(&true) => Ok(PaymentWrite::EventExists),
            Some(_) => Ok(PaymentWrite::Refused(
                self.existing_status(&o.request_id).await?,
            )),
        }
    }
    async fn record_refund(&self, record: &PaymentRecord) -> PortResult<bool> {
        let now = unix_ms(time::OffsetDateTime::now_utc());
        let payment = Put::builder()
            .table_name(&self.table)
            .set_item(Some(payment_item(record, now)))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(invalid)?;
        let counters = self
            .count(
                table::product(record.event.request_id.product().as_str()),
                &[("refund_due", 1)],
            )
            .build()
            .map_err(invalid)?;
        let items = vec![
            TransactWriteItem::builder().put(payment).build(),
            TransactWriteItem::builder().update(counters).build(),
        ];
        Ok(self.transact(items).await?.is_none())
    }
    async fn payment(&self, id: &EventId) -> PortResult<Option<PaymentRecord>> {
        self.get(table::payment(id.as_str()))
            .await?
            .as_ref()
            .map(payment_record)
            .transpose()
    }
    async fn release(
        &self,
        o: &RequestView,
        to: OrderStatus,
        now_ms: i64,
    ) -> PortResult<Transition> {
        if !to.is_release() {
            return Err(InfraError::permanent(
                "dynamodb",
                format!("release to {to:?}: only cancelled or expired release an order"),
            ));
        }
        // DynamoDB decides: the units, home shard and rebuy terms must be
        // the stored order's, so `o` must be DynamoDB's own view (Redis' copy
        // carries no terms, and after a failover may hold another quantity),
        // and the condition holds the write to the order as stored.
        let Some(terms) = &o.reservation else {
            return Err(InfraError::permanent(
                "dynamodb",
                format!(
                    "release of {} from a view without its reservation terms: read the order from \
                     DynamoDB first (a Redis view never drives a write)",
                    o.request_id
                ),
            ));
        };
        let id = o.request_id.as_str();
        let q = i64::from(o.quantity.get());
        let mut cond = "#st = :placed AND quantity = :q".to_owned();
        // Terms an older order may lack were their defaults then.
        cond.push_str(match terms.rebuy_after_release {
            true => " AND rebuy_after_release = :rebuy",
            false => {
                " AND (rebuy_after_release = :rebuy OR attribute_not_exists(rebuy_after_release))"
            }
        });
        cond.push_str(match terms.ledger_shards {
            1 => " AND (ledger_shards = :shards OR attribute_not_exists(ledger_shards))",
            _ => " AND ledger_shards = :shards",
        });
        if to == OrderStatus::Expired {
            cond.push_str(" AND pay_by < :now");
        }
        // Still due (the shelf step) from now on: the expirer finishes a
        // release whose Redis step did not run.
        let order = Update::builder()
            .table_name(&self.table)
            .key(table::PK, s(table::order(id)))
            .update_expression(
                "SET #st = :to, updated_at = :now, released_at = :now, shelf_due = :t, \
                 gsi2pk = :shard, gsi2sk = :due",
            )
            .condition_expression(cond)
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":to", s(db_status(to)))
            .expression_attribute_values(":placed", s(db_status(OrderStatus::Placed)))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":t", Av::Bool(true))
            .expression_attribute_values(":shard", s(table::due_shard(id)))
            .expression_attribute_values(":due", s(table::due_at(now_ms, id)))
            .expression_attribute_values(":q", n(q))
            .expression_attribute_values(":rebuy", Av::Bool(terms.rebuy_after_release))
            .expression_attribute_values(":shards", n(terms.ledger_shards))
            .build()
            .map_err(invalid)?;
        let counters = self
            .count(
                home_shard(o),
                &[
                    ("remaining", q),
                    ("releasing", q),
                    ("released", q),
                    (to.as_str(), 1),
                ],
            )
            .build()
            .map_err(invalid)?;
        let mut items = vec![
            TransactWriteItem::builder().update(order).build(),
            TransactWriteItem::builder().update(counters).build(),
        ];
        if terms.rebuy_after_release {
            let guard = Delete::builder()
                .table_name(&self.table)
                .key(
                    table::PK,
                    s(table::purchase(o.product_id.as_str(), o.user_id.as_str())),
                )
                .build()
                .map_err(invalid)?;
            items.push(TransactWriteItem::builder().delete(guard).build());
        }
        match self.transact(items).await? {
            None => Ok(Transition::Done),
            Some(_) => Ok(Transition::Refused(
                self.existing_status(&o.request_id).await?,
            )),
        }
    }
    async fn shelved(&self, o: &RequestView) -> PortResult<bool> {
        let order = Update::builder()
            .table_name(&self.table)
            .key(table::PK, s(table::order(o.request_id.as_str())))
            .update_expression("REMOVE shelf_due, gsi2pk, gsi2sk")
            .condition_expression("attribute_exists(shelf_due)")
            .build()
            .map_err(invalid)?;
        let counters = self
            .count(
                home_shard(o),
                &[("releasing", -i64::from(o.quantity.get()))],
            )
            .build()
            .map_err(invalid)?;
        let items = vec![
            TransactWriteItem::builder().update(order).build(),
            TransactWriteItem::builder().update(counters).build(),
        ];
        Ok(self.transact(items).await?.is_none())
    }
    async fn shelf_due(&self, id: &RequestId) -> PortResult<bool> {
        Ok(self
            .get(table::order(id.as_str()))
            .await?
            .is_some_and(|item| item.contains_key("shelf_due")))
    }
    async fn due(&self, now_ms: i64, limit: usize) -> PortResult<Vec<RequestView>> {
        // Everything due before `now_ms`: sort keys start with the
        // zero-padded time, then `#`.
        let before = format!("{:015}", now_ms.max(0));
        let mut orders = Vec::new();
        let first = self.next_shard.fetch_add(1, Ordering::Relaxed);
        for turn in 0..u64::from(table::DUE_SHARDS) {
            let shard = (first + turn) % u64::from(table::DUE_SHARDS);
            if orders.len() >= limit {
                break;
            }
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(table::GSI2)
                .key_condition_expression("#pk = :pk AND #sk < :before")
                .expression_attribute_names("#pk", table::GSI2_PK)
                .expression_attribute_names("#sk", table::GSI2_SK)
                .expression_attribute_values(":pk", s(format!("DUE#{shard}")))
                .expression_attribute_values(":before", s(&before))
                .limit(i32::try_from(limit - orders.len()).unwrap_or(i32::MAX))
                .send()
                .await
                .map_err(|e| classify("dynamodb", e))?;
            for item in out.items() {
                // One unreadable item must not stop expiry for everyone.
                match order_view(item) {
                    Ok(order) => orders.push(order),
                    Err(e) => tracing::error!(
                        pk = get_s(item, table::PK).unwrap_or("?"),
                        error = %e,
                        "skipping an unreadable order in the due index"
                    ),
                }
            }
        }
        Ok(orders)
    }
}

impl Catalogue for DynamoStore {
    async fn create_product(&self, p: &Product) -> PortResult<bool> {
        let id = p.product_id.as_str();
        let split = ledger::split(i64::from(p.stock), p.ledger_shards);
        let product = Put::builder()
            .table_name(&self.table)
            .item(table::PK, s(table::product(id)))
            .item("product_id", s(id))
            .item("name", s(&p.name))
            .item("stock", n(p.stock))
            .item("ledger_shards", n(split.len()))
            .item("remaining", n(split[0]))
            .item("sold", n(0))
            .item("per_buyer_limit", n(p.per_buyer_limit))
            .item("starts_at", n(unix_ms(p.starts_at)))
            .item("ends_at", n(unix_ms(p.ends_at)))
            .item("price", n(p.price))
            .item("currency", s(p.currency.as_str()))
            .item("payment_window_secs", n(p.payment_window_secs))
            .item("rebuy_after_release", Av::Bool(p.rebuy_after_release))
            .item("paused", Av::Bool(p.paused))
            .item(
                "rate_limits",
                s(serde_json::to_string(&p.rate_limits).map_err(|_| corrupt("rate_limits"))?),
            )
            .item(table::GSI1_PK, s(table::PRODUCTS))
            .item(table::GSI1_SK, s(table::sale_end(unix_ms(p.ends_at))))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(invalid)?;
        let mut items = vec![TransactWriteItem::builder().put(product).build()];
        for (i, units) in split.iter().enumerate().skip(1) {
            let shard = Put::builder()
                .table_name(&self.table)
                .item(table::PK, s(table::ledger_shard(id, i as u16)))
                .item("product_id", s(id))
                .item("remaining", n(units))
                .item("sold", n(0))
                .condition_expression("attribute_not_exists(pk)")
                .build()
                .map_err(invalid)?;
            items.push(TransactWriteItem::builder().put(shard).build());
        }
        Ok(self.transact(items).await?.is_none())
    }
    async fn product(&self, id: &ProductId) -> PortResult<Option<Product>> {
        let Some(item) = self.get(table::product(id.as_str())).await? else {
            return Ok(None);
        };
        let item = &item;
        let parse = || -> Option<Product> {
            Some(Product {
                product_id: ProductId::parse(get_s(item, "product_id")?).ok()?,
                name: get_s(item, "name")?.to_owned(),
                stock: get_n(item, "stock")?,
                per_buyer_limit: get_n(item, "per_buyer_limit")?,
                starts_at: from_unix_ms(get_n(item, "starts_at")?),
                ends_at: from_unix_ms(get_n(item, "ends_at")?),
                // Products created before the lifecycle have no terms: free,
                // "no currency" (ISO 4217 XXX), the default window.
                price: get_n(item, "price").unwrap_or(0),
                currency: get_s(item, "currency")
                    .map_or(Currency::parse("XXX"), Currency::parse)
                    .ok()?,
                payment_window_secs: get_n(item, "payment_window_secs")
                    .unwrap_or(crate::domain::DEFAULT_PAYMENT_WINDOW_SECS),
                rebuy_after_release: item
                    .get("rebuy_after_release")
                    .and_then(|v| v.as_bool().ok())
                    .copied()
                    .unwrap_or(false),
                rate_limits: match get_s(item, "rate_limits") {
                    Some(json) => serde_json::from_str(json).ok()?,
                    None => RateLimits::default(),
                },
                paused: item
                    .get("paused")
                    .and_then(|v| v.as_bool().ok())
                    .copied()
                    .unwrap_or(false),
                control_seq: get_n(item, "control_seq").unwrap_or(0),
                ledger_shards: get_n(item, "ledger_shards").unwrap_or(1),
            })
        };
        parse().map(Some).ok_or_else(|| corrupt("product"))
    }
    async fn ledger(&self, id: &ProductId) -> PortResult<Option<Ledger>> {
        let Some(item) = self.get(table::product(id.as_str())).await? else {
            return Ok(None);
        };
        if !item.contains_key("remaining") {
            return Err(corrupt("product"));
        }
        match get_n::<u16>(&item, "ledger_shards").unwrap_or(1) {
            1 => Ok(Some(ledger_counts(&item))),
            // Its readers (the sweep, admin stats, warm-up) can wait a few
            // pauses for writes in flight to land; a placement cannot.
            n => {
                let snapshot = Backoff {
                    attempts: 6,
                    first: Duration::from_millis(5),
                };
                let shards = retry::transient(snapshot, || self.shards(id, n)).await?;
                Ok(Some(ledger::total(&shards)))
            }
        }
    }
    async fn live_products(&self, ends_after_ms: i64) -> PortResult<Vec<ProductId>> {
        let after = table::sale_end(ends_after_ms);
        let items = self
            .query_gsi1(table::PRODUCTS, Some(&after), Some("product_id"))
            .await?;
        Ok(items
            .iter()
            .filter_map(|item| ProductId::parse(get_s(item, "product_id")?).ok())
            .collect())
    }
}

impl ControlStore for DynamoStore {
    async fn control(
        &self,
        id: &ProductId,
        control: Control,
        entry: &AuditEntry,
    ) -> PortResult<Option<Controlled>> {
        let at = unix_ms(entry.at);
        let product = Update::builder()
            .table_name(&self.table)
            .key(table::PK, s(table::product(id.as_str())));
        // Only a change is written (and audited): a repeated control is a
        // no-op here, and the caller applies it to Redis again.
        let product = match control {
            Control::Pause | Control::Resume => {
                let pause = control == Control::Pause;
                product
                    .update_expression("SET paused = :to ADD control_seq :one")
                    .condition_expression(if pause {
                        "attribute_exists(pk) AND (attribute_not_exists(paused) OR paused = :from)"
                    } else {
                        "attribute_exists(pk) AND paused = :from"
                    })
                    .expression_attribute_values(":to", Av::Bool(pause))
                    .expression_attribute_values(":from", Av::Bool(!pause))
            }
            Control::End => product
                .update_expression("SET ends_at = :now, #sk = :sk ADD control_seq :one")
                .condition_expression("attribute_exists(pk) AND ends_at > :now")
                .expression_attribute_names("#sk", table::GSI1_SK)
                .expression_attribute_values(":now", n(at))
                .expression_attribute_values(":sk", s(table::sale_end(at))),
        };
        let product = product.expression_attribute_values(":one", n(1));
        let items = vec![
            TransactWriteItem::builder()
                .update(product.build().map_err(|_| corrupt("control"))?)
                .build(),
            self.audit_put(entry)?,
        ];
        // Committed, or refused by its condition (unknown, or nothing to
        // change): either way the product as it now is.
        let changed = self.transact(items).await?.is_none();
        Ok(self
            .product(id)
            .await?
            .map(|product| Controlled { product, changed }))
    }
    async fn audit(&self, id: Option<&ProductId>) -> PortResult<Vec<AuditEntry>> {
        self.query_gsi1(&table::audit(id.map(ProductId::as_str)), None, None)
            .await?
            .iter()
            .map(|item| {
                let entry = || {
                    Some(AuditEntry {
                        product_id: match get_s(item, "product_id") {
                            Some(p) => Some(ProductId::parse(p).ok()?),
                            None => None,
                        },
                        at: from_unix_ms(get_n(item, "at")?),
                        actor: get_s(item, "actor")?.to_owned(),
                        action: get_s(item, "action")?.to_owned(),
                        reason: get_s(item, "reason").unwrap_or_default().to_owned(),
                    })
                };
                entry().ok_or_else(|| corrupt("audit"))
            })
            .collect()
    }
    async fn switch_admissions(
        &self,
        engaged: bool,
        entry: &AuditEntry,
    ) -> PortResult<(KillSwitch, bool)> {
        // Only a change is written and audited, as for a sale's controls.
        let switch = Update::builder()
            .table_name(&self.table)
            .key(table::PK, s(table::KILL_SWITCH))
            .update_expression("SET engaged = :to ADD seq :one")
            .condition_expression(if engaged {
                "attribute_not_exists(engaged) OR engaged = :from"
            } else {
                "engaged = :from"
            })
            .expression_attribute_values(":to", Av::Bool(engaged))
            .expression_attribute_values(":from", Av::Bool(!engaged))
            .expression_attribute_values(":one", n(1))
            .build()
            .map_err(invalid)?;
        let items = vec![
            TransactWriteItem::builder().update(switch).build(),
            self.audit_put(entry)?,
        ];
        let changed = self.transact(items).await?.is_none();
        Ok((ControlStore::kill_switch(self).await?, changed))
    }
    async fn kill_switch(&self) -> PortResult<KillSwitch> {
        let item = self.get(table::KILL_SWITCH.to_owned()).await?;
        Ok(item.map_or_else(KillSwitch::default, |item| KillSwitch {
            engaged: matches!(item.get("engaged"), Some(Av::Bool(true))),
            seq: get_n(&item, "seq").unwrap_or(0),
        }))
    }
    async fn set_denial(
        &self,
        user: &UserId,
        denial: Option<&Denial>,
        entry: &AuditEntry,
    ) -> PortResult<bool> {
        let pk = table::denial(user.as_str());
        let change = match denial {
            Some(d) => {
                let mut put = Put::builder()
                    .table_name(&self.table)
                    .item(table::PK, s(pk))
                    .item(table::GSI1_PK, s(table::DENIED))
                    .item(table::GSI1_SK, s(user.as_str()))
                    .item("user_id", s(user.as_str()))
                    .item("reason", s(&d.reason))
                    .item("actor", s(&d.actor))
                    .item("at", n(unix_ms(d.at)));
                if let Some(until) = d.until {
                    // Gone from the table a week after it lapsed.
                    put = put
                        .item("until", n(unix_ms(until)))
                        .item(table::TTL, n(until.unix_timestamp() + 7 * 24 * 3600));
                }
                TransactWriteItem::builder()
                    .put(put.build().map_err(invalid)?)
                    .build()
            }
            None => TransactWriteItem::builder()
                .delete(
                    Delete::builder()
                        .table_name(&self.table)
                        .key(table::PK, s(pk))
                        .condition_expression("attribute_exists(pk)")
                        .build()
                        .map_err(invalid)?,
                )
                .build(),
        };
        let items = vec![change, self.audit_put(entry)?];
        Ok(self.transact(items).await?.is_none())
    }
    async fn denials(&self) -> PortResult<Vec<Denial>> {
        self.query_gsi1(table::DENIED, None, None)
            .await?
            .iter()
            .map(denial_of)
            .collect()
    }
    async fn denial(&self, user: &UserId) -> PortResult<Option<Denial>> {
        self.get(table::denial(user.as_str()))
            .await?
            .as_ref()
            .map(denial_of)
            .transpose()
    }
}

impl StockLedger for DynamoStore {
    async fn change_stock(
        &self,
        change: &StockChange,
        entry: &AuditEntry,
    ) -> PortResult<Option<(StockChangeRecord, bool)>> {
        let (p, key) = (change.product_id.as_str(), change.key.as_str());
        let units = change.units();
        let adding = change.delta > 0;
        let record = |applied: bool| {
            let mut put = Put::builder()
                .table_name(&self.table)
                .item(table::PK, s(table::stock_change(p, key)))
                .item("product_id", s(p))
                .item("key", s(key))
                .item("delta", n(change.delta))
                .item("applied", Av::Bool(applied))
                .item("at", n(unix_ms(entry.at)))
                .condition_expression("attribute_not_exists(pk)");
            if applied && adding {
                // Due (its shelf step) until confirmed: the sweeper finds it.
                put = put
                    .item("shelf_due", Av::Bool(true))
                    .item(table::GSI1_PK, s(table::stock_due(p)))
                    .item(table::GSI1_SK, s(key));
            }
            put.build().map_err(invalid)
        };
        // An addition goes to shard 0 (the product's item). A withdrawal
        // takes units the ledger still holds, never an order's: from shard 0
        // first, then as a plan over the shards read (as a placement does).
        let mut takes = vec![(0, units)];
        let mut replans: u16 = 0;
        loop {
            let take0 = takes.iter().find(|(i, _)| *i == 0).map_or(0, |t| t.1);
            let counters: &[(&str, i64)] = if adding {
                &[
                    ("stock", change.delta),
                    ("remaining", change.delta),
                    ("releasing", units),
                    ("added", units),
                ]
            } else {
                &[
                    ("stock", change.delta),
                    ("remaining", -take0),
                    ("withdrawn", units),
                ]
            };
            let product = self.count(table::product(p), counters);
            let product = if adding || take0 == 0 {
                product.condition_expression("attribute_exists(pk)")
            } else {
                product
                    .condition_expression("attribute_exists(pk) AND remaining >= :need")
                    .expression_attribute_values(":need", n(take0))
            };
            let mut items = vec![
                TransactWriteItem::builder().put(record(true)?).build(),
                self.audit_put(entry)?,
                TransactWriteItem::builder()
                    .update(product.build().map_err(invalid)?)
                    .build(),
            ];
            for (shard, take) in takes.iter().filter(|(i, _)| *i != 0 && !adding) {
                items.push(self.take_units(table::ledger_shard(p, *shard), *take, &[])?);
            }
            let Some(failed) = self.transact(items).await? else {
                let rec = StockChangeRecord {
                    delta: change.delta,
                    applied: true,
                    shelf_due: adding,
                };
                return Ok(Some((rec, true)));
            };
            if failed.first().copied().unwrap_or(false) {
                return Ok(self.stock_change(change).await?.map(|rec| (rec, false)));
            }
            let Some(product) = self.get(table::product(p)).await? else {
                return Ok(None);
            };
            // A shard refused: plan again from a fresh read, at most once
            // per shard (each lost race is a take by an order).
            let n = get_n(&product, "ledger_shards").unwrap_or(1);
            replans += 1;
            if adding || replans > n {
                break;
            }
            let remaining = ledger::units(&self.shards(&change.product_id, n).await?);
            match ledger::plan_take(&remaining, 0, units) {
                Some(plan) => takes = plan,
                None => break,
            }
        }
        // The units are no longer in the ledger: recorded as refused, so a
        // retry answers alike.
        let refused = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(record(false)?.item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match refused {
            Ok(_) => Ok(Some((
                StockChangeRecord {
                    delta: change.delta,
                    applied: false,
                    shelf_due: false,
                },
                true,
            ))),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(self.stock_change(change).await?.map(|rec| (rec, false)))
            }
            Err(e) => Err(classify("dynamodb", e)),
        }
    }
    async fn stock_change(&self, change: &StockChange) -> PortResult<Option<StockChangeRecord>> {
        let item = self
            .get(table::stock_change(
                change.product_id.as_str(),
                change.key.as_str(),
            ))
            .await?;
        item.map(|item| {
            Ok(StockChangeRecord {
                delta: get_n(&item, "delta").ok_or_else(|| corrupt("stock change"))?,
                applied: matches!(item.get("applied"), Some(Av::Bool(true))),
                shelf_due: item.contains_key("shelf_due"),
            })
        })
        .transpose()
    }
    async fn stock_change_shelved(&self, change: &StockChange) -> PortResult<bool> {
        let record = Update::builder()
            .table_name(&self.table)
            .key(
                table::PK,
                s(table::stock_change(
                    change.product_id.as_str(),
                    change.key.as_str(),
                )),
            )
            .update_expression("REMOVE shelf_due, gsi1pk, gsi1sk")
            .condition_expression("attribute_exists(shelf_due)")
            .build()
            .map_err(invalid)?;
        let counters = self
            .count(
                table::product(change.product_id.as_str()),
                &[("releasing", -change.units())],
            )
            .build()
            .map_err(invalid)?;
        let items = vec![
            TransactWriteItem::builder().update(record).build(),
            TransactWriteItem::builder().update(counters).build(),
        ];
        Ok(self.transact(items).await?.is_none())
    }
    async fn stock_changes_due(&self, product: &ProductId) -> PortResult<Vec<StockChange>> {
        self.query_gsi1(&table::stock_due(product.as_str()), None, None)
            .await?
            .iter()
            .map(|item| {
                let parse = || {
                    let key = IdempotencyKey::parse(get_s(item, "key")?).ok()?;
                    StockChange::new(product.clone(), key, get_n(item, "delta")?).ok()
                };
                parse().ok_or_else(|| corrupt("stock change"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_trust_store_is_a_clear_error_not_a_panic() {
        assert!(trust_store_verdict(140, 0).is_ok());
        let err = trust_store_verdict(0, 1).unwrap_err().to_string();
        assert!(err.contains("no CA certificates"), "{err}");
        assert!(err.contains("ca-certificates"), "{err}");
    }

    /// Hole 9: the one-order-per-buyer guard must outlive the sale, however
    /// long it runs, not a fixed time from the admission.
    #[test]
    fn buyer_guards_outlive_the_sale() {
        let mut msg = crate::fakes::order_message("p1", "u1", 1_000_000);
        msg.sale_ends_at = msg.admitted_at + 90 * 24 * 3_600_000;
        assert_eq!(
            guard_expires_at(&msg),
            msg.sale_ends_at / 1000 + GUARD_TTL_SECS
        );
        // Messages from before `sale_ends_at`: counted from the admission.
        msg.sale_ends_at = 0;
        assert_eq!(guard_expires_at(&msg), 1_000 + GUARD_TTL_SECS);
    }
}
