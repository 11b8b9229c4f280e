//! What both SQS-fed functions share: bounded concurrent processing of a
//! batch and the partial-failure answer (ReportBatchItemFailures).

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use futures::StreamExt;

use crate::domain::OrderMessage;
use crate::error::ValidationError;

/// Runs `process` over every record, at most `concurrency` at once, and
/// returns each record's message id with its outcome.
pub async fn process<O, F, Fut>(event: SqsEvent, concurrency: usize, process: F) -> Vec<(String, O)>
where
    F: Fn(SqsMessage) -> Fut,
    Fut: Future<Output = O>,
{
    futures::stream::iter(event.records)
        .map(|record| {
            let id = record.message_id.clone().unwrap_or_default();
            let outcome = process(record);
            async move { (id, outcome.await) }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await
}

/// The answer that makes SQS redeliver exactly these messages.
pub fn failures(ids: impl IntoIterator<Item = String>) -> SqsBatchResponse {
    let mut response = SqsBatchResponse::default();
    response.batch_item_failures = ids
        .into_iter()
        .map(|id| {
            let mut f = BatchItemFailure::default();
            f.item_identifier = id;
            f
        })
        .collect();
    response
}

/// The record's W3C trace context (message attribute), or "".
pub fn traceparent(record: &SqsMessage) -> &str {
    record
        .message_attributes
        .get("traceparent")
        .and_then(|a| a.string_value.as_deref())
        .unwrap_or("")
}

/// How many times SQS has delivered the record (its
/// `ApproximateReceiveCount`, 1 on the first delivery).
pub fn receive_count(record: &SqsMessage) -> u32 {
    record
        .attributes
        .get("ApproximateReceiveCount")
        .and_then(|c| c.parse().ok())
        .unwrap_or(1)
}

/// The record's order message; an error means a poison message.
pub fn order(record: &SqsMessage) -> Result<OrderMessage, ValidationError> {
    OrderMessage::from_json(record.body.as_deref().unwrap_or(""))
}

/// The span every log line of one order message carries: request, product,
/// trace (from the message's `traceparent`) and SQS message id.
pub fn span(record: &SqsMessage, msg: &OrderMessage) -> tracing::Span {
    tracing::info_span!(
        "message",
        request_id = %msg.request_id,
        product_id = %msg.product_id,
        trace_id = crate::telemetry::trace_id(traceparent(record)),
        message_id = record.message_id.as_deref().unwrap_or(""),
    )
}
