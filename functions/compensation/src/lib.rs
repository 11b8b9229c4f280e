//! Compensation, fed by the orders DLQ: a message lands here only after the
//! consumer failed it `maxReceiveCount` times. Its fate is decided by the
//! same key as placement: write `ORDER#<request_id>` as COMPENSATED if it
//! does not exist. If that write wins, the units go back to Redis (once per
//! request id) and the buyer is released. If the order already exists, Redis
//! is only brought in line: a placed unit is never restocked. Failures are
//! reported per record; after this queue's own `maxReceiveCount` they park
//! in the compensation DLQ for an operator.

use std::time::{SystemTime, UNIX_EPOCH};

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use tracing::Instrument;

use shared::batch;
use shared::domain::{OrderMessage, OrderStatus};
use shared::error::InfraError;
use shared::ports::{AdmissionGate, Fate, FateNote, OrderBook};

pub struct Compensation<G, S> {
    pub gate: G,
    pub store: S,
    pub concurrency: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// This call decided COMPENSATED and put the units back.
    Compensated,
    /// The fate was decided before (placed, rejected or compensated): Redis
    /// was brought in line, nothing restocked twice.
    AlreadyDecided(OrderStatus),
    /// Not an order message: parked untouched for an operator.
    Poison,
    Failed,
}

fn attr_i64(record: &SqsMessage, name: &str) -> Option<i64> {
    record.attributes.get(name)?.parse().ok()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl<G: AdmissionGate, S: OrderBook> Compensation<G, S> {
    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        let started = std::time::Instant::now();
        let outcomes = batch::process(event, self.concurrency, |record| async move {
            self.process(&record).await
        })
        .await;
        shared::telemetry::record_latency("compensation", started);
        batch::failures(
            outcomes
                .into_iter()
                .filter(|(_, o)| matches!(o, Outcome::Poison | Outcome::Failed))
                .map(|(id, _)| id),
        )
    }

    pub async fn process(&self, record: &SqsMessage) -> Outcome {
        let message_id = record.message_id.as_deref().unwrap_or("");
        let msg = match batch::order(record) {
            Ok(m) => m,
            Err(e) => {
                metrics::counter!("flashsale_compensation_poison_total").increment(1);
                tracing::error!(message_id, error = %e, "cannot compensate: not an order message");
                return Outcome::Poison;
            }
        };
        let span = batch::span(record, &msg);
        let note = FateNote {
            reason: "orders queue gave up: delivery retries exhausted".into(),
            receive_count: batch::receive_count(record),
            first_failure_ms: attr_i64(record, "ApproximateFirstReceiveTimestamp"),
            last_failure_ms: Some(now_ms()),
        };
        async {
            match self.compensate(&msg, &note).await {
                Ok(outcome) => {
                    tracing::info!(?outcome, "compensation processed");
                    outcome
                }
                Err(e) => {
                    metrics::counter!("flashsale_compensation_failures_total").increment(1);
                    tracing::warn!(error = %e, transient = e.is_transient(), "compensation will be retried");
                    Outcome::Failed
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn compensate(&self, msg: &OrderMessage, note: &FateNote) -> Result<Outcome, InfraError> {
        match self
            .store
            .record_fate(msg, OrderStatus::Compensated, note)
            .await?
        {
            Fate::Won => {
                self.gate.restock(msg).await?;
                metrics::counter!("flashsale_compensations_total").increment(1);
                Ok(Outcome::Compensated)
            }
            Fate::Exists(status) => {
                // Decided before (or an earlier attempt of ours that did not
                // finish): Redis follows; a placed unit is never restocked.
                self.gate.follow(msg, status).await?;
                Ok(Outcome::AlreadyDecided(status))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use order_consumer::Consumer;
    use shared::aws::DynamoStore;
    use shared::fakes::{
        FakeGate, Probe, failed_ids, order_attribute, order_message, sqs_event, sqs_record, stocked,
    };
    use shared::faults::FaultPlan;

    type Shared = (Arc<FakeGate>, Arc<DynamoStore>);

    async fn shared_ports() -> Shared {
        (
            Arc::new(FakeGate::default()),
            Arc::new(stocked("p1", 10).await.0),
        )
    }

    fn compensation((gate, store): &Shared) -> Compensation<Arc<FakeGate>, Arc<DynamoStore>> {
        Compensation {
            gate: gate.clone(),
            store: store.clone(),
            concurrency: 4,
        }
    }

    fn consumer((gate, store): &Shared) -> Consumer<Arc<FakeGate>, Arc<DynamoStore>> {
        Consumer {
            gate: gate.clone(),
            store: store.clone(),
            concurrency: 4,
            faults: FaultPlan::none(),
            terms: shared::lifecycle::Terms::system(),
        }
    }

    fn order(user: &str) -> OrderMessage {
        order_message("p1", user, 1)
    }

    fn record(id: &str, body: &str) -> SqsMessage {
        let mut m = sqs_record(id, body);
        m.attributes.insert(
            "ApproximateFirstReceiveTimestamp".into(),
            "1700000000000".into(),
        );
        m
    }

    fn json(msg: &OrderMessage) -> String {
        serde_json::to_string(msg).unwrap()
    }

    #[tokio::test]
    async fn compensates_once_and_records_why() {
        let ports = shared_ports().await;
        let c = compensation(&ports);
        let a = order("u1");
        let r = record("d1", &json(&a));
        assert_eq!(c.process(&r).await, Outcome::Compensated);
        assert_eq!(
            c.process(&r).await,
            Outcome::AlreadyDecided(OrderStatus::Compensated)
        );
        assert_eq!(ports.0.restocked(), vec![a.request_id.clone()]);
        let note = async |name| order_attribute(&ports.1, &a.request_id, name).await;
        assert_eq!(note("receive_count").await.as_deref(), Some("1"));
        assert_eq!(
            note("first_failure_at").await.as_deref(),
            Some("1700000000000")
        );
        assert!(note("last_failure_at").await.is_some());
        assert!(note("reason").await.unwrap().contains("retries exhausted"));
    }

    #[tokio::test]
    async fn a_placed_order_is_never_restocked() {
        let ports = shared_ports().await;
        let a = order("u1");
        let consumed = consumer(&ports).process(&record("m1", &json(&a))).await;
        assert_eq!(consumed, order_consumer::Outcome::Placed);
        let c = compensation(&ports);
        assert_eq!(
            c.process(&record("d1", &json(&a))).await,
            Outcome::AlreadyDecided(OrderStatus::Placed)
        );
        assert!(ports.0.restocked().is_empty());
        assert_eq!(
            ports.1.status_of(&a.request_id).await,
            Some(OrderStatus::Placed)
        );
    }

    #[tokio::test]
    async fn compensation_racing_a_late_duplicate_delivery_decides_once() {
        // Both orders of arrival, interleaved at every port call: exactly one
        // fate, and the unit is restocked if and only if it is COMPENSATED.
        let mut fates = std::collections::HashSet::new();
        for round in 0..200 {
            let ports = shared_ports().await;
            let a = order(&format!("u{round}"));
            let body = json(&a);
            let (comp, cons) = (compensation(&ports), consumer(&ports));
            let (r1, r2) = (record("dlq", &body), record("late", &body));
            // Either side starts first, the other up to three port calls late.
            let late = |n: usize| async move {
                for _ in 0..n {
                    tokio::task::yield_now().await;
                }
            };
            let (c_out, s_out) = if round % 2 == 0 {
                tokio::join!(comp.process(&r1), async {
                    late(round / 2 % 4).await;
                    cons.process(&r2).await
                })
            } else {
                let (s, c) = tokio::join!(cons.process(&r2), async {
                    late(round / 2 % 4).await;
                    comp.process(&r1).await
                });
                (c, s)
            };
            let fate = ports.1.status_of(&a.request_id).await.unwrap();
            let restocked = ports.0.restocked();
            match fate {
                OrderStatus::Compensated => {
                    assert_eq!(c_out, Outcome::Compensated);
                    assert_eq!(
                        s_out,
                        order_consumer::Outcome::Duplicate(OrderStatus::Compensated)
                    );
                    assert_eq!(restocked, vec![a.request_id.clone()]);
                    assert_eq!(ports.1.remaining(&a.product_id).await, Some(10));
                }
                OrderStatus::Placed => {
                    assert_eq!(s_out, order_consumer::Outcome::Placed);
                    assert_eq!(c_out, Outcome::AlreadyDecided(OrderStatus::Placed));
                    assert!(restocked.is_empty());
                    assert_eq!(ports.1.remaining(&a.product_id).await, Some(9));
                }
                other => panic!("unexpected fate {other:?}"),
            }
            fates.insert(fate);
        }
        assert_eq!(fates.len(), 2, "both winners were exercised");
    }

    #[tokio::test]
    async fn failures_are_reported_per_record() {
        let ports = shared_ports().await;
        let c = compensation(&ports);
        let (a, b) = (order("u1"), order("u2"));
        ports.0.failures.fail_next(1);
        let event = sqs_event(vec![record("a", &json(&a)), record("junk", "not an order")]);
        let resp = c.handle(event).await;
        let failed = failed_ids(&resp);
        // The Redis failure after the fate was decided retries; the junk parks.
        assert_eq!(failed, vec!["a", "junk"]);
        assert_eq!(
            ports.1.status_of(&a.request_id).await,
            Some(OrderStatus::Compensated)
        );
        assert_eq!(
            c.process(&record("a", &json(&a))).await,
            Outcome::AlreadyDecided(OrderStatus::Compensated)
        );
        assert_eq!(ports.0.restocked(), vec![a.request_id.clone()]);
        assert_eq!(
            c.process(&record("b", &json(&b))).await,
            Outcome::Compensated
        );
    }
}
