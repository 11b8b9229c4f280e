//! The orders queue consumer. For each message: write `ORDER#<request_id>` as
//! PLACED, the buyer guard and the stock-ledger decrement in one transaction,
//! then settle the request in Redis. Duplicates are absorbed by the
//! conditional write. An empty ledger or a buyer guard held by another
//! request makes the order REJECTED: Redis admitted it only because it lost
//! state, so its unit is not put back (the sweeper's resync sets the shelf
//! from the ledger). Transient write failures (a transaction conflict on the
//! product's ledger item above all) are retried in process first: waiting
//! for SQS costs a visibility timeout and one of the message's few receives.
//! Only failed records are reported, so SQS redelivers just those.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use tracing::Instrument;

use std::sync::Arc;

use shared::batch;
use shared::domain::{OrderMessage, OrderStatus};
use shared::error::InfraError;
use shared::faults::{FaultPlan, FaultPoint};
use shared::lifecycle::Terms;
use shared::ports::{AdmissionGate, Catalogue, Fate, FateNote, OrderBook, Placement, Settled};
use shared::retry::{self, Backoff};

/// Deliveries after which an unplaced order is counted as stalled.
pub const STALLED_AFTER_RECEIVES: u32 = 2;

pub struct Consumer<G, S> {
    pub gate: G,
    pub store: S,
    /// Records of one batch processed at once.
    pub concurrency: usize,
    /// Chaos runs only: may "crash" after the DynamoDB write.
    pub faults: Arc<FaultPlan>,
    /// Each order is placed on its product's terms, due `payment_window_secs`
    /// after this clock's now.
    pub terms: Terms,
}

/// What happened to one record; all but `Poison`, `Failed` and `Crashed`
/// delete it from the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Placed,
    /// A duplicate delivery (or a fate decided elsewhere) absorbed.
    Duplicate(OrderStatus),
    /// DynamoDB refused the order (stock ledger empty, or the buyer holds
    /// another order): written REJECTED.
    Rejected,
    /// Unparseable or unknown version: left to reach the DLQ untouched.
    Poison,
    /// Transient or unexpected failure: SQS will deliver it again.
    Failed,
    /// Injected crash after the write: the whole batch goes unacknowledged.
    Crashed,
}

impl<G: AdmissionGate, S: OrderBook + Catalogue> Consumer<G, S> {
    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        let started = std::time::Instant::now();
        let outcomes = batch::process(event, self.concurrency, |record| async move {
            self.process(&record).await
        })
        .await;
        shared::telemetry::record_latency("order_consumer", started);
        // A crashed invocation acknowledges nothing: SQS redelivers it all.
        let crashed = outcomes.iter().any(|(_, o)| *o == Outcome::Crashed);
        batch::failures(
            outcomes
                .into_iter()
                .filter(|(_, o)| crashed || matches!(o, Outcome::Poison | Outcome::Failed))
                .map(|(id, _)| id),
        )
    }

    pub async fn process(&self, record: &SqsMessage) -> Outcome {
        let message_id = record.message_id.as_deref().unwrap_or("");
        let msg = match batch::order(record) {
            Ok(m) => m,
            Err(e) => {
                metrics::counter!("flashsale_poison_messages_total").increment(1);
                tracing::error!(message_id, error = %e, "poison message");
                return Outcome::Poison;
            }
        };
        let span = batch::span(record, &msg);
        async {
            match self.place(&msg).await {
                Ok(outcome) => {
                    tracing::info!(?outcome, "processed");
                    outcome
                }
                Err(e) => {
                    metrics::counter!("flashsale_consumer_failures_total").increment(1);
                    let receives = batch::receive_count(record);
                    if receives >= STALLED_AFTER_RECEIVES {
                        // A 202 still neither placed nor back on sale after
                        // this many deliveries: contention alone is retried
                        // in process, so this is an outage (alarmed).
                        metrics::counter!("flashsale_placements_stalled_total").increment(1);
                        tracing::error!(error = %e, receives, "order still unplaced; will be redelivered");
                    } else {
                        tracing::warn!(error = %e, transient = e.is_transient(), "will be redelivered");
                    }
                    Outcome::Failed
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn place(&self, msg: &OrderMessage) -> Result<Outcome, InfraError> {
        let placement = retry::transient(Backoff::DEFAULT, || async {
            let terms = self.terms.reservation(&self.store, msg).await?;
            self.store.place(msg, &terms).await
        })
        .await?;
        let reason = match placement {
            Placement::Placed => {
                if self.faults.hit(FaultPoint::CrashAfterWrite) {
                    tracing::warn!("injected crash after the DynamoDB write");
                    return Ok(Outcome::Crashed);
                }
                // Counted when DynamoDB placed it: a settle that fails here
                // is redelivered as a duplicate, never placed (and counted)
                // again; and whoever sees the settle sees the count.
                metrics::counter!("flashsale_orders_placed_total").increment(1);
                self.gate.settle(msg, Settled::Placed).await?;
                return Ok(Outcome::Placed);
            }
            Placement::Exists(status) => {
                self.gate.follow(msg, status).await?;
                metrics::counter!("flashsale_duplicates_absorbed_total").increment(1);
                return Ok(Outcome::Duplicate(status));
            }
            Placement::OutOfStock => "out_of_stock",
            Placement::BuyerTaken => "buyer_has_order",
        };
        let note = FateNote {
            reason: reason.into(),
            ..FateNote::default()
        };
        let fate = retry::transient(Backoff::DEFAULT, || {
            self.store.record_fate(msg, OrderStatus::Rejected, &note)
        })
        .await?;
        match fate {
            Fate::Won => {
                // Out of stock: DynamoDB holds no order of the buyer, so
                // Redis lets them buy again once units come back.
                let free_buyer = matches!(placement, Placement::OutOfStock);
                self.gate
                    .settle(msg, Settled::Rejected { free_buyer })
                    .await?;
                metrics::counter!("flashsale_business_rejections_total", "reason" => reason)
                    .increment(1);
                tracing::warn!(
                    reason,
                    "order rejected by DynamoDB; Redis admitted it after losing state"
                );
                Ok(Outcome::Rejected)
            }
            Fate::Exists(status) => {
                self.gate.follow(msg, status).await?;
                Ok(Outcome::Duplicate(status))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::aws::DynamoStore;
    use shared::embedded::Faults;
    use shared::fakes::{
        FakeGate, Probe, failed_ids, order_attribute, order_message, sqs_event as event,
        sqs_record, stocked,
    };

    /// A consumer over 10 units of p1, and DynamoDB's faults.
    async fn consumer() -> (Consumer<FakeGate, DynamoStore>, Faults) {
        let (store, faults) = stocked("p1", 10).await;
        let c = Consumer {
            gate: FakeGate::default(),
            store,
            concurrency: 4,
            faults: FaultPlan::none(),
            terms: shared::lifecycle::Terms::system(),
        };
        (c, faults)
    }

    fn order(user: &str) -> OrderMessage {
        order_message("p1", user, 1)
    }

    fn record(id: &str, msg: &OrderMessage) -> SqsMessage {
        sqs_record(id, &serde_json::to_string(msg).unwrap())
    }

    #[tokio::test]
    async fn places_orders_and_settles_redis() {
        let (c, _) = consumer().await;
        let (a, b) = (order("u1"), order("u2"));
        let resp = c
            .handle(event(vec![record("m1", &a), record("m2", &b)]))
            .await;
        assert!(failed_ids(&resp).is_empty());
        assert_eq!(
            c.store.status_of(&a.request_id).await,
            Some(OrderStatus::Placed)
        );
        assert_eq!(
            c.store.status_of(&b.request_id).await,
            Some(OrderStatus::Placed)
        );
        assert_eq!(c.gate.settled().len(), 2);
        assert_eq!(c.store.remaining(&a.product_id).await, Some(8));
    }

    #[tokio::test]
    async fn a_garbage_record_fails_alone() {
        let (c, _) = consumer().await;
        let a = order("u1");
        let resp = c
            .handle(event(vec![
                record("good", &a),
                sqs_record("bad", "{not json"),
            ]))
            .await;
        assert_eq!(failed_ids(&resp), vec!["bad"]);
        assert_eq!(
            c.store.status_of(&a.request_id).await,
            Some(OrderStatus::Placed)
        );
    }

    #[tokio::test]
    async fn duplicate_delivery_is_absorbed() {
        let (c, _) = consumer().await;
        let a = order("u1");
        let r = record("m1", &a);
        assert_eq!(c.process(&r).await, Outcome::Placed);
        assert_eq!(c.process(&r).await, Outcome::Duplicate(OrderStatus::Placed));
        assert_eq!(c.store.orders_of(&a.product_id).await.unwrap().len(), 1);
        assert_eq!(c.store.remaining(&a.product_id).await, Some(9));
        assert!(c.gate.restocked().is_empty());
    }

    #[tokio::test]
    async fn second_request_of_a_buyer_is_rejected_without_restock() {
        let (c, _) = consumer().await;
        let (first, second) = (order("u1"), order("u1"));
        assert_eq!(c.process(&record("m1", &first)).await, Outcome::Placed);
        let r2 = record("m2", &second);
        assert_eq!(c.process(&r2).await, Outcome::Rejected);
        assert_eq!(
            c.process(&r2).await,
            Outcome::Duplicate(OrderStatus::Rejected)
        );
        assert_eq!(
            c.store.status_of(&second.request_id).await,
            Some(OrderStatus::Rejected)
        );
        let reason = order_attribute(&c.store, &second.request_id, "reason").await;
        assert_eq!(reason.as_deref(), Some("buyer_has_order"));
        assert!(c.gate.restocked().is_empty());
        assert_eq!(c.store.remaining(&first.product_id).await, Some(9));
    }

    /// Issue 18, hole C: a buyer who holds an order is refused as such even
    /// when the ledger is empty too; as `out_of_stock` Redis would free them.
    #[tokio::test]
    async fn a_buyer_holding_an_order_is_rejected_as_such_when_stock_is_out_too() {
        let c = Consumer {
            store: stocked("p1", 1).await.0,
            ..consumer().await.0
        };
        let (first, second) = (order("u1"), order("u1"));
        assert_eq!(c.process(&record("m1", &first)).await, Outcome::Placed);
        assert_eq!(c.process(&record("m2", &second)).await, Outcome::Rejected);
        let reason = order_attribute(&c.store, &second.request_id, "reason").await;
        assert_eq!(reason.as_deref(), Some("buyer_has_order"));
    }

    #[tokio::test]
    async fn the_stock_ledger_rejects_what_redis_over_admitted() {
        let c = Consumer {
            store: stocked("p1", 2).await.0,
            ..consumer().await.0
        };
        let orders: Vec<OrderMessage> = (0..5).map(|i| order(&format!("u{i}"))).collect();
        let records = orders
            .iter()
            .enumerate()
            .map(|(i, o)| record(&format!("m{i}"), o))
            .collect();
        assert!(failed_ids(&c.handle(event(records)).await).is_empty());
        let mut statuses = Vec::new();
        for o in &orders {
            statuses.push(c.store.status_of(&o.request_id).await);
        }
        let count = |status| statuses.iter().filter(|s| **s == Some(status)).count();
        assert_eq!(
            (count(OrderStatus::Placed), count(OrderStatus::Rejected)),
            (2, 3)
        );
        assert_eq!(c.store.remaining(&orders[0].product_id).await, Some(0));
        assert!(
            c.gate.restocked().is_empty(),
            "phantom units must not go back"
        );
        let settled_rejected = c
            .gate
            .settled()
            .iter()
            .filter(|(_, s)| *s == OrderStatus::Rejected)
            .count();
        assert_eq!(settled_rejected, 3);
    }

    #[tokio::test]
    async fn a_product_made_to_fail_is_never_placed_and_its_records_fail() {
        for (spec, placed) in [
            ("place.fail_product:p1", false),
            ("place.fail_product:p9", true),
        ] {
            let (c, _) = consumer().await;
            let plan = Arc::new(FaultPlan::parse(spec).unwrap());
            let c = Consumer {
                gate: c.gate,
                store: shared::faults::Faulty::new(c.store, plan.clone()),
                concurrency: 4,
                faults: plan,
                terms: shared::lifecycle::Terms::system(),
            };
            let a = order("u1");
            let resp = c.handle(event(vec![record("a", &a)])).await;
            // Failed, it goes back to SQS: in the end to the DLQ and
            // compensation.
            assert_eq!(failed_ids(&resp).is_empty(), placed, "{spec}");
            let status = c.store.inner.status_of(&a.request_id).await;
            assert_eq!(status, placed.then_some(OrderStatus::Placed), "{spec}");
        }
    }

    #[tokio::test]
    async fn a_crash_after_the_write_acknowledges_nothing_and_redelivery_settles() {
        let c = Consumer {
            faults: Arc::new(FaultPlan::parse("consumer.crash_after_write:1").unwrap()),
            terms: shared::lifecycle::Terms::system(),
            ..consumer().await.0
        };
        let (a, b) = (order("u1"), order("u2"));
        let batch = || event(vec![record("a", &a), record("b", &b)]);
        assert_eq!(failed_ids(&c.handle(batch()).await), vec!["a", "b"]);
        assert_eq!(
            c.store.status_of(&a.request_id).await,
            Some(OrderStatus::Placed)
        );
        assert!(c.gate.settled().is_empty());
        // The redelivery finds the orders written and settles Redis.
        let healthy = Consumer {
            faults: FaultPlan::none(),
            terms: shared::lifecycle::Terms::system(),
            ..c
        };
        assert!(failed_ids(&healthy.handle(batch()).await).is_empty());
        assert_eq!(healthy.gate.settled().len(), 2);
        assert_eq!(healthy.store.remaining(&a.product_id).await, Some(8));
    }

    /// Hole 5: transaction conflicts on the ledger item are retried in
    /// process, not left to a 200 s redelivery that spends a receive.
    #[tokio::test(start_paused = true)]
    async fn conflicts_are_retried_in_process() {
        let (c, faults) = consumer().await;
        let a = order("u1");
        faults.fail_next(3);
        let resp = c.handle(event(vec![record("m1", &a)])).await;
        assert!(failed_ids(&resp).is_empty());
        assert_eq!(
            c.store.status_of(&a.request_id).await,
            Some(OrderStatus::Placed)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_reported_for_redelivery() {
        let (c, faults) = consumer().await;
        let a = order("u1");
        faults.fail_next(Backoff::DEFAULT.attempts as usize);
        let resp = c.handle(event(vec![record("m1", &a)])).await;
        assert_eq!(failed_ids(&resp), vec!["m1"]);
        // Redis down after the DynamoDB write: reported, then absorbed on redelivery.
        c.gate.failures.fail_next(1);
        let resp = c.handle(event(vec![record("m1", &a)])).await;
        assert_eq!(failed_ids(&resp), vec!["m1"]);
        assert_eq!(
            c.store.status_of(&a.request_id).await,
            Some(OrderStatus::Placed)
        );
        let resp = c.handle(event(vec![record("m1", &a)])).await;
        assert!(failed_ids(&resp).is_empty());
        assert_eq!(
            c.gate.settled(),
            vec![(a.request_id.clone(), OrderStatus::Placed)]
        );
    }

    #[tokio::test]
    async fn an_order_compensated_elsewhere_is_never_placed() {
        let (c, _) = consumer().await;
        let a = order("u1");
        let note = FateNote::default();
        let fate = c.store.record_fate(&a, OrderStatus::Compensated, &note);
        assert_eq!(fate.await.unwrap(), Fate::Won);
        assert_eq!(
            c.process(&record("late", &a)).await,
            Outcome::Duplicate(OrderStatus::Compensated)
        );
        assert_eq!(
            c.store.status_of(&a.request_id).await,
            Some(OrderStatus::Compensated)
        );
        assert!(c.gate.settled().is_empty());
        assert_eq!(c.store.remaining(&a.product_id).await, Some(10));
        // Redis follows DynamoDB: the compensation's restock (idempotent).
        assert_eq!(c.gate.restocked(), vec![a.request_id.clone()]);
    }
}
