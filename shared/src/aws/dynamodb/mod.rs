//! The DynamoDB adapter: the table's layout, the item codecs and the
//! transaction helpers; one module per capability it implements.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue as Av, CancellationReason, Delete, Put, TransactWriteItem, Update,
};
use aws_sdk_sqs::error::SdkError;

use crate::domain::{
    AuditEntry, Control, Controlled, Currency, Denial, IdempotencyKey, KillSwitch, Ledger,
    OrderMessage, OrderStatus, Product, ProductId, Quantity, RateLimits, RequestId, RequestView,
    Reservation, StockChange, StockChangeRecord, UserId, from_unix_ms, unix_ms,
};
use crate::error::InfraError;
use crate::ledger;
use crate::payment::{EventId, PaymentEvent, PaymentOutcome, PaymentRecord};
use crate::ports::{
    Catalogue, ControlStore, Fate, FateNote, LifecycleStore, OrderBook, PaymentWrite, Placement,
    PortResult, StockLedger, Transition,
};
use crate::retry::{self, Backoff};
use crate::room::WaitingRoom;

use super::classify;

mod catalogue;
mod controls;
mod lifecycle;
mod orders;
mod stock;

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
        refunded: count("refunded"),
        disputed: count("disputed"),
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
                payment_event_id: get_s(item, "reverses").and_then(|e| EventId::parse(e).ok()),
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
    if let Some(reversed) = &e.payment_event_id {
        item.insert("reverses".into(), s(reversed.as_str()));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
