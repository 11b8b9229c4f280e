//! The orders queue consumer. For each message: write `ORDER#<request_id>` as
//! PLACED with the buyer guard (one transaction), then settle the request in
//! Redis. Duplicates are absorbed by the conditional write; a buyer guard held
//! by another request makes the order REJECTED and its units go back to stock.
//! Only failed records are reported, so SQS redelivers just those.

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use futures::StreamExt;
use tracing::Instrument;

use shared::domain::{OrderMessage, OrderStatus};
use shared::error::InfraError;
use shared::ports::{Fate, OrderStore, Placement, StockGate};

pub struct Consumer<G, S> {
    pub gate: G,
    pub store: S,
    /// Records of one batch processed at once.
    pub concurrency: usize,
}

/// What happened to one record; all but `Failed` delete it from the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Placed,
    /// A duplicate delivery (or a fate decided elsewhere) absorbed.
    Duplicate(OrderStatus),
    /// The buyer already holds another order: REJECTED, units restocked.
    Rejected,
    /// Unparseable or unknown version: left to reach the DLQ untouched.
    Poison,
    /// Transient or unexpected failure: SQS will deliver it again.
    Failed,
}

impl<G: StockGate, S: OrderStore> Consumer<G, S> {
    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        let failed: Vec<String> = futures::stream::iter(event.records)
            .map(|record| async move {
                let outcome = self.process(&record).await;
                (record.message_id, outcome)
            })
            .buffer_unordered(self.concurrency.max(1))
            .filter_map(|(id, outcome)| async move {
                matches!(outcome, Outcome::Poison | Outcome::Failed).then(|| id.unwrap_or_default())
            })
            .collect()
            .await;
        let mut response = SqsBatchResponse::default();
        response.batch_item_failures = failed
            .into_iter()
            .map(|id| {
                let mut f = BatchItemFailure::default();
                f.item_identifier = id;
                f
            })
            .collect();
        response
    }

    pub async fn process(&self, record: &SqsMessage) -> Outcome {
        let traceparent = record
            .message_attributes
            .get("traceparent")
            .and_then(|a| a.string_value.as_deref())
            .unwrap_or("");
        let message_id = record.message_id.as_deref().unwrap_or("");
        let msg = match OrderMessage::from_json(record.body.as_deref().unwrap_or("")) {
            Ok(m) => m,
            Err(e) => {
                metrics::counter!("flashsale_poison_messages_total").increment(1);
                tracing::error!(message_id, error = %e, "poison message");
                return Outcome::Poison;
            }
        };
        let span = tracing::info_span!(
            "order",
            request_id = %msg.request_id,
            product_id = %msg.product_id,
            trace_id = shared::telemetry::trace_id(traceparent),
            message_id,
        );
        async {
            match self.place(&msg).await {
                Ok(outcome) => {
                    tracing::info!(?outcome, "processed");
                    outcome
                }
                Err(e) => {
                    metrics::counter!("flashsale_consumer_failures_total").increment(1);
                    tracing::warn!(error = %e, transient = e.is_transient(), "will be redelivered");
                    Outcome::Failed
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn place(&self, msg: &OrderMessage) -> Result<Outcome, InfraError> {
        match self.store.place(msg).await? {
            Placement::Placed => {
                self.gate.settle(msg, OrderStatus::Placed).await?;
                metrics::counter!("flashsale_orders_placed_total").increment(1);
                Ok(Outcome::Placed)
            }
            Placement::Exists(status) => {
                self.repair(msg, status).await?;
                metrics::counter!("flashsale_duplicates_absorbed_total").increment(1);
                Ok(Outcome::Duplicate(status))
            }
            Placement::BuyerTaken => {
                match self.store.record_fate(msg, OrderStatus::Rejected).await? {
                    Fate::Won => {
                        // The buyer keeps their other order, so they stay recorded as a buyer.
                        self.gate.restock(msg, OrderStatus::Rejected, false).await?;
                        metrics::counter!("flashsale_business_rejections_total").increment(1);
                        Ok(Outcome::Rejected)
                    }
                    Fate::Exists(status) => {
                        self.repair(msg, status).await?;
                        Ok(Outcome::Duplicate(status))
                    }
                }
            }
        }
    }

    /// DynamoDB already decided this request: bring Redis in line with it.
    /// Restocking is idempotent per request id, so repeating it is harmless.
    async fn repair(&self, msg: &OrderMessage, status: OrderStatus) -> Result<(), InfraError> {
        match status {
            OrderStatus::Placed | OrderStatus::Pending => {
                self.gate.settle(msg, OrderStatus::Placed).await?;
            }
            OrderStatus::Rejected => {
                self.gate.restock(msg, status, false).await?;
            }
            OrderStatus::Compensated => {
                self.gate.restock(msg, status, true).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::domain::{ProductId, Quantity, RequestId, UserId};
    use shared::fakes::{FakeGate, FakeStore};

    fn consumer() -> Consumer<FakeGate, FakeStore> {
        Consumer {
            gate: FakeGate::default(),
            store: FakeStore::default(),
            concurrency: 4,
        }
    }

    fn order(user: &str) -> OrderMessage {
        let p = ProductId::parse("p1").unwrap();
        OrderMessage {
            v: 1,
            request_id: RequestId::new(&p),
            product_id: p,
            user_id: UserId::parse(user).unwrap(),
            quantity: Quantity::new(1).unwrap(),
            admitted_at: 1,
        }
    }

    fn record(id: &str, body: &str) -> SqsMessage {
        let mut m = SqsMessage::default();
        m.message_id = Some(id.into());
        m.body = Some(body.into());
        m
    }

    fn event(records: Vec<SqsMessage>) -> SqsEvent {
        let mut e = SqsEvent::default();
        e.records = records;
        e
    }

    fn failed_ids(r: &SqsBatchResponse) -> Vec<&str> {
        r.batch_item_failures
            .iter()
            .map(|f| f.item_identifier.as_str())
            .collect()
    }

    #[tokio::test]
    async fn places_orders_and_settles_redis() {
        let c = consumer();
        let a = order("u1");
        let b = order("u2");
        let resp = c
            .handle(event(vec![
                record("m1", &serde_json::to_string(&a).unwrap()),
                record("m2", &serde_json::to_string(&b).unwrap()),
            ]))
            .await;
        assert!(failed_ids(&resp).is_empty());
        assert_eq!(c.store.status_of(&a.request_id), Some(OrderStatus::Placed));
        assert_eq!(c.store.status_of(&b.request_id), Some(OrderStatus::Placed));
        assert_eq!(c.gate.settled().len(), 2);
    }

    #[tokio::test]
    async fn a_garbage_record_fails_alone() {
        let c = consumer();
        let a = order("u1");
        let resp = c
            .handle(event(vec![
                record("good", &serde_json::to_string(&a).unwrap()),
                record("bad", "{not json"),
            ]))
            .await;
        assert_eq!(failed_ids(&resp), vec!["bad"]);
        assert_eq!(c.store.status_of(&a.request_id), Some(OrderStatus::Placed));
    }

    #[tokio::test]
    async fn duplicate_delivery_is_absorbed() {
        let c = consumer();
        let a = order("u1");
        let r = record("m1", &serde_json::to_string(&a).unwrap());
        assert_eq!(c.process(&r).await, Outcome::Placed);
        assert_eq!(c.process(&r).await, Outcome::Duplicate(OrderStatus::Placed));
        assert_eq!(c.store.orders.lock().unwrap().len(), 1);
        assert!(c.gate.restocked().is_empty());
    }

    #[tokio::test]
    async fn second_request_of_a_buyer_is_rejected_and_restocked_once() {
        let c = consumer();
        let first = order("u1");
        let second = order("u1");
        let r2 = record("m2", &serde_json::to_string(&second).unwrap());
        assert_eq!(
            c.process(&record("m1", &serde_json::to_string(&first).unwrap()))
                .await,
            Outcome::Placed
        );
        assert_eq!(c.process(&r2).await, Outcome::Rejected);
        assert_eq!(
            c.process(&r2).await,
            Outcome::Duplicate(OrderStatus::Rejected)
        );
        assert_eq!(
            c.store.status_of(&second.request_id),
            Some(OrderStatus::Rejected)
        );
        assert_eq!(
            c.gate.restocked(),
            vec![(second.request_id.clone(), OrderStatus::Rejected, false)]
        );
    }

    #[tokio::test]
    async fn transient_failures_are_reported_for_redelivery() {
        let c = consumer();
        let a = order("u1");
        let body = serde_json::to_string(&a).unwrap();
        c.store.failures.fail_next(1);
        let resp = c.handle(event(vec![record("m1", &body)])).await;
        assert_eq!(failed_ids(&resp), vec!["m1"]);
        // Redis down after the DynamoDB write: reported, then absorbed on redelivery.
        c.gate.failures.fail_next(1);
        let resp = c.handle(event(vec![record("m1", &body)])).await;
        assert_eq!(failed_ids(&resp), vec!["m1"]);
        assert_eq!(c.store.status_of(&a.request_id), Some(OrderStatus::Placed));
        let resp = c.handle(event(vec![record("m1", &body)])).await;
        assert!(failed_ids(&resp).is_empty());
        assert_eq!(
            c.gate.settled(),
            vec![(a.request_id.clone(), OrderStatus::Placed)]
        );
    }

    #[tokio::test]
    async fn an_order_compensated_elsewhere_is_never_placed() {
        let c = consumer();
        let a = order("u1");
        assert_eq!(
            c.store
                .record_fate(&a, OrderStatus::Compensated)
                .await
                .unwrap(),
            Fate::Won
        );
        let r = record("late", &serde_json::to_string(&a).unwrap());
        assert_eq!(
            c.process(&r).await,
            Outcome::Duplicate(OrderStatus::Compensated)
        );
        assert_eq!(
            c.store.status_of(&a.request_id),
            Some(OrderStatus::Compensated)
        );
        assert!(c.gate.settled().is_empty());
    }
}
