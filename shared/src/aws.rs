//! AWS adapters: the SQS [`OrderQueue`] and the DynamoDB [`OrderStore`].
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
use aws_sdk_dynamodb::types::{AttributeValue as Av, Put, TransactWriteItem, Update};
use aws_sdk_sqs::error::SdkError;
use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};

use crate::domain::{
    OrderMessage, OrderStatus, Product, ProductId, Quantity, RequestId, RequestView, UserId,
    from_unix_ms, unix_ms,
};
use crate::error::InfraError;
use crate::ports::{Fate, FateNote, OrderQueue, OrderStore, Placement, PortResult};

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

    async fn send_batch(&self, msgs: &[OrderMessage]) -> PortResult<Vec<RequestId>> {
        let mut entries = Vec::with_capacity(msgs.len());
        for (i, msg) in msgs.iter().enumerate() {
            let body = serde_json::to_string(msg)
                .map_err(|e| InfraError::permanent("sqs", format!("cannot encode message: {e}")))?;
            let tp = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(crate::telemetry::traceparent(None))
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

// ----------------------------------------------------------- DynamoDB ----

/// Single-table layout:
/// - `ORDER#<request_id>`: the order; its existence decides the request's fate.
/// - `PURCHASE#<product>#<user>`: the buyer guard (one order per buyer).
/// - `PRODUCT#<product>`: the product definition.
///
/// Orders carry `gsi1pk = PRODUCT#<product>` so audits can list a product's
/// orders through the `gsi1` index.
pub mod table {
    pub const PK: &str = "pk";
    pub const GSI1: &str = "gsi1";
    pub const GSI1_PK: &str = "gsi1pk";
    pub const GSI1_SK: &str = "gsi1sk";
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
    /// `gsi1pk` of every product item: `gsi1` lists products by sale end.
    pub const PRODUCTS: &str = "PRODUCTS";
    /// `gsi1sk` of a product item: its sale's end, sortable as text.
    pub fn sale_end(ends_at_ms: i64) -> String {
        format!("{:015}", ends_at_ms.max(0))
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
}

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
        })
    };
    parse().ok_or_else(|| corrupt("order"))
}

impl DynamoStore {
    pub fn new(config: &SdkConfig, table: impl Into<String>) -> Self {
        Self {
            client: aws_sdk_dynamodb::Client::new(config),
            table: table.into(),
            conflicts: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Order transactions cancelled by a conflicting concurrent write (each
    /// retried): the measure of contention on the stock ledger item.
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

    async fn existing_status(&self, id: &RequestId) -> PortResult<OrderStatus> {
        self.order(id).await?.map(|o| o.status).ok_or_else(|| {
            InfraError::transient(
                "dynamodb",
                "order reported as existing but not readable yet",
            )
        })
    }
}

impl OrderStore for DynamoStore {
    async fn place(&self, msg: &OrderMessage) -> PortResult<Placement> {
        let cond = "attribute_not_exists(pk)";
        let order = Put::builder()
            .table_name(&self.table)
            .set_item(Some(Self::order_item(msg, OrderStatus::Placed)))
            .condition_expression(cond)
            .build()
            .map_err(|e| InfraError::permanent("dynamodb", e.to_string()))?;
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
            .map_err(|e| InfraError::permanent("dynamodb", e.to_string()))?;
        // The stock guard: DynamoDB's own count of units, so an order Redis
        // admitted by mistake (lost decrements after a failover) cannot land.
        let ledger = Update::builder()
            .table_name(&self.table)
            .key(table::PK, s(table::product(msg.product_id.as_str())))
            .update_expression("SET remaining = remaining - :q, sold = sold + :q")
            .condition_expression("remaining >= :q")
            .expression_attribute_values(":q", n(msg.quantity.get()))
            .build()
            .map_err(|e| InfraError::permanent("dynamodb", e.to_string()))?;
        let result = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(order).build())
            .transact_items(TransactWriteItem::builder().put(guard).build())
            .transact_items(TransactWriteItem::builder().update(ledger).build())
            .send()
            .await;
        match result {
            Ok(_) => Ok(Placement::Placed),
            Err(SdkError::ServiceError(se)) => {
                if let TransactWriteItemsError::TransactionCanceledException(tc) = se.err() {
                    let failed = |i: usize| {
                        tc.cancellation_reasons()
                            .get(i)
                            .and_then(|r| r.code())
                            .is_some_and(|c| c == "ConditionalCheckFailed")
                    };
                    if failed(0) {
                        return Ok(Placement::Exists(
                            self.existing_status(&msg.request_id).await?,
                        ));
                    }
                    // Out of stock first: once the ledger is empty every
                    // unit Redis still hands out is one it should not have.
                    if failed(2) {
                        return Ok(Placement::OutOfStock);
                    }
                    if failed(1) {
                        return Ok(Placement::BuyerTaken);
                    }
                    let conflict = tc
                        .cancellation_reasons()
                        .iter()
                        .any(|r| r.code() == Some("TransactionConflict"));
                    if conflict {
                        self.conflicts.fetch_add(1, Ordering::Relaxed);
                    }
                    // Cancelled for another reason (conflict, throttling): retry.
                    return Err(InfraError::transient(
                        "dynamodb",
                        format!("transaction cancelled: {:?}", tc.cancellation_reasons()),
                    ));
                }
                Err(classify("dynamodb", SdkError::ServiceError(se)))
            }
            Err(e) => Err(classify("dynamodb", e)),
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

    async fn create_product(&self, p: &Product) -> PortResult<bool> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(table::PK, s(table::product(p.product_id.as_str())))
            .item("product_id", s(p.product_id.as_str()))
            .item("name", s(&p.name))
            .item("stock", n(p.stock))
            .item("remaining", n(p.stock))
            .item("sold", n(0))
            .item("per_buyer_limit", n(p.per_buyer_limit))
            .item("starts_at", n(unix_ms(p.starts_at)))
            .item("ends_at", n(unix_ms(p.ends_at)))
            .item(table::GSI1_PK, s(table::PRODUCTS))
            .item(table::GSI1_SK, s(table::sale_end(unix_ms(p.ends_at))))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(se))
                if matches!(se.err(), PutItemError::ConditionalCheckFailedException(_)) =>
            {
                Ok(false)
            }
            Err(e) => Err(classify("dynamodb", e)),
        }
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
            })
        };
        parse().map(Some).ok_or_else(|| corrupt("product"))
    }

    async fn orders_of(&self, id: &ProductId) -> PortResult<Vec<RequestView>> {
        self.query_gsi1(&table::product(id.as_str()), None, None)
            .await?
            .iter()
            .map(order_view)
            .collect()
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

    async fn stock_ledger(&self, id: &ProductId) -> PortResult<Option<i64>> {
        Ok(self
            .get(table::product(id.as_str()))
            .await?
            .and_then(|i| get_n(&i, "remaining")))
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
