//! The scheduled expirer (every minute): reads the sparse due index and
//! - expires placed orders past `pay_by`, releasing their units;
//! - finishes releases whose Redis step did not run (a crash between the
//!   steps of a cancel or of an earlier expiry).
//!
//! Work comes in batches of `batch`, processed `concurrency` at a time,
//! until the index has nothing due or the time budget is spent. A finished
//! order leaves the index, so the next run resumes where this one stopped.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::Serialize;

use shared::domain::{OrderStatus, RequestView};
use shared::error::InfraError;
use shared::faults::FaultPlan;
use shared::lifecycle;
use shared::ports::{Clock, LifecycleStore, ShelfGate, Transition};

pub struct Expirer<G, S> {
    pub gate: G,
    pub store: S,
    pub clock: Arc<dyn Clock>,
    pub faults: Arc<FaultPlan>,
    pub batch: usize,
    pub concurrency: usize,
    /// No new batch starts after this long.
    pub budget: Duration,
}

/// What one run did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Run {
    pub expired: usize,
    /// Releases whose shelf step this run finished.
    pub finished: usize,
    /// Paid, cancelled or finished by someone else between the index read
    /// and the write (or a stale entry of the eventually consistent index).
    pub raced: usize,
    pub failed: usize,
    pub batches: usize,
    /// Lateness of each expiry (expiry time - pay_by), ms.
    #[serde(skip)]
    pub lateness_ms: Vec<i64>,
}

enum Step {
    Expired(i64),
    Finished,
    Raced,
    Failed,
}

impl<G: ShelfGate, S: LifecycleStore> Expirer<G, S> {
    pub async fn run(&self) -> Result<Run, InfraError> {
        // On the port's clock, so a simulation replays a run exactly.
        let stop_at =
            self.clock.now_ms() + i64::try_from(self.budget.as_millis()).unwrap_or(i64::MAX);
        let mut run = Run::default();
        while self.clock.now_ms() < stop_at {
            let now = self.clock.now_ms();
            let due = self.store.due(now, self.batch).await?;
            if due.is_empty() {
                break;
            }
            run.batches += 1;
            // Owned orders: a stream of borrows trips the compiler's
            // higher-ranked Send check when the future is spawned.
            let steps: Vec<Step> = futures::stream::iter(due)
                .map(|order| async move { self.step(&order).await })
                .buffer_unordered(self.concurrency.max(1))
                .collect()
                .await;
            let mut progress = false;
            for step in steps {
                match step {
                    Step::Expired(late) => {
                        run.expired += 1;
                        run.lateness_ms.push(late);
                        progress = true;
                    }
                    Step::Finished => {
                        run.finished += 1;
                        progress = true;
                    }
                    // Not progress: a stale index may return it again.
                    Step::Raced => run.raced += 1,
                    Step::Failed => run.failed += 1,
                }
            }
            // Nothing moved (the stores fail, or the index still lists what
            // is done): the next run tries again rather than this one
            // spinning on the same orders.
            if !progress {
                break;
            }
        }
        tracing::info!(?run.expired, run.finished, run.raced, run.failed, run.batches, "expiry run");
        Ok(run)
    }

    async fn step(&self, order: &RequestView) -> Step {
        let result = match order.status {
            OrderStatus::Placed => self.expire(order).await,
            OrderStatus::Cancelled | OrderStatus::Expired => {
                lifecycle::finish(&self.gate, &self.store, order, order.status)
                    .await
                    .map(|done| if done { Step::Finished } else { Step::Raced })
            }
            // The index holds nothing else; a stale entry is left alone.
            _ => Ok(Step::Raced),
        };
        result.unwrap_or_else(|e| {
            tracing::warn!(request_id = %order.request_id, error = %e, "expiry step failed; the next run retries");
            Step::Failed
        })
    }

    async fn expire(&self, order: &RequestView) -> Result<Step, InfraError> {
        let now = self.clock.now_ms();
        let outcome = lifecycle::release(
            &self.gate,
            &self.store,
            &self.faults,
            order,
            OrderStatus::Expired,
            now,
        )
        .await?;
        Ok(match outcome {
            Transition::Done => {
                let late = now - order.reservation.as_ref().map_or(now, |r| r.pay_by_ms);
                metrics::histogram!("flashsale_expiry_lateness_seconds").record(late as f64 / 1e3);
                Step::Expired(late)
            }
            Transition::Refused(_) => Step::Raced,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::aws::DynamoStore;
    use shared::domain::OrderMessage;
    use shared::embedded::Faults;
    use shared::fakes::{FakeGate, ManualClock, Probe, order_message, stocked, terms};
    use shared::ports::prelude::*;

    const NOW: i64 = 1_800_000_000_000;

    type TestExpirer = Expirer<Arc<FakeGate>, Arc<DynamoStore>>;

    /// An expirer over 100 units of p1 with these injected crashes, its
    /// clock, and DynamoDB's faults.
    async fn expirer(faults: &str) -> (TestExpirer, Arc<ManualClock>, Faults) {
        let clock = Arc::new(ManualClock::at(NOW));
        let (store, dynamodb) = stocked("p1", 100).await;
        let e = Expirer {
            gate: Arc::new(FakeGate::default()),
            store: Arc::new(store),
            clock: clock.clone(),
            faults: Arc::new(FaultPlan::parse(faults).unwrap()),
            batch: 3,
            concurrency: 2,
            budget: Duration::from_secs(5),
        };
        (e, clock, dynamodb)
    }

    async fn place(e: &TestExpirer, user: &str, pay_by: i64) -> OrderMessage {
        let msg = order_message("p1", user, NOW - 10_000);
        e.store.place(&msg, &terms(pay_by)).await.unwrap();
        msg
    }

    #[tokio::test]
    async fn expires_only_what_is_past_due_in_batches() {
        let (e, _, _) = expirer("").await;
        let mut due = Vec::new();
        for i in 0..7 {
            due.push(place(&e, &format!("d{i}"), NOW - 1 - i).await);
        }
        let on_time = place(&e, "later", NOW + 1).await;
        let at_deadline = place(&e, "now", NOW).await;
        let run = e.run().await.unwrap();
        assert_eq!((run.expired, run.batches, run.failed), (7, 3, 0));
        assert!(run.lateness_ms.iter().all(|l| (1..=7).contains(l)));
        for m in &due {
            assert_eq!(
                e.store.status_of(&m.request_id).await,
                Some(OrderStatus::Expired)
            );
        }
        for m in [&on_time, &at_deadline] {
            assert_eq!(
                e.store.status_of(&m.request_id).await,
                Some(OrderStatus::Placed)
            );
        }
        let ledger = e.store.ledger_of(&on_time.product_id).await;
        assert_eq!(
            (ledger.remaining, ledger.releasing, ledger.expired),
            (91 + 7, 0, 7)
        );
        assert_eq!(e.gate.released.lock().unwrap().len(), 7);
        // Nothing left: the next run does nothing.
        assert_eq!(e.run().await.unwrap().expired, 0);
    }

    /// A release that died between its DynamoDB and Redis steps (a cancel
    /// or an expiry) is finished by the next run: the unit goes back on the
    /// shelf exactly once, however often the crash repeats.
    #[tokio::test]
    async fn a_crash_mid_release_is_finished_by_the_next_run() {
        let (e, clock, _) = expirer("release.crash_mid:1").await;
        let msg = place(&e, "u1", NOW - 1).await;
        let run = e.run().await.unwrap();
        assert_eq!((run.expired, run.failed), (0, 1));
        assert_eq!(
            e.store.status_of(&msg.request_id).await,
            Some(OrderStatus::Expired)
        );
        let ledger = e.store.ledger_of(&msg.product_id).await;
        assert_eq!((ledger.remaining, ledger.releasing), (100, 1));
        assert!(e.gate.released.lock().unwrap().is_empty());
        // The next run (no crash this time) finishes it.
        clock.set(NOW + 60_000);
        let e = Expirer {
            faults: FaultPlan::none(),
            ..e
        };
        let run = e.run().await.unwrap();
        assert_eq!(run.finished, 1);
        assert_eq!(e.store.ledger_of(&msg.product_id).await.releasing, 0);
        assert_eq!(e.gate.released.lock().unwrap().len(), 1);
        assert_eq!(e.run().await.unwrap(), Run::default());
    }

    /// Failing stores: nothing is lost or doubled, and a later run completes.
    #[tokio::test]
    async fn failures_leave_work_for_the_next_run() {
        let (e, clock, dynamodb) = expirer("").await;
        let msgs = [place(&e, "a", NOW - 5).await, place(&e, "b", NOW - 4).await];
        e.gate.failures.fail_next(1);
        let run = e.run().await.unwrap();
        assert_eq!(run.expired + run.failed, 2);
        dynamodb.fail_next(1);
        assert!(e.run().await.is_err(), "the index read failed");
        clock.set(NOW + 60_000);
        e.run().await.unwrap();
        for m in &msgs {
            assert_eq!(
                e.store.status_of(&m.request_id).await,
                Some(OrderStatus::Expired)
            );
        }
        let ledger = e.store.ledger_of(&msgs[0].product_id).await;
        assert_eq!(
            (ledger.remaining, ledger.releasing, ledger.released),
            (100, 0, 2)
        );
        assert_eq!(e.gate.released.lock().unwrap().len(), 2);
    }

    /// Review finding: the due index is read eventually consistently, and
    /// Redis may forget a release's marker after it was confirmed (the
    /// resync then put the units back); finishing again must not add them
    /// a second time.
    #[tokio::test]
    async fn a_confirmed_release_is_not_put_back_twice() {
        let (e, _, _) = expirer("").await;
        let msg = place(&e, "u1", NOW - 1).await;
        assert_eq!(e.run().await.unwrap().expired, 1);
        let order = e.store.order(&msg.request_id).await.unwrap().unwrap();
        e.gate.released.lock().unwrap().clear();
        let done = lifecycle::finish(&e.gate, &e.store, &order, OrderStatus::Expired)
            .await
            .unwrap();
        assert!(!done, "nothing was left to do");
        assert!(e.gate.released.lock().unwrap().is_empty());
        assert_eq!(e.store.ledger_of(&msg.product_id).await.releasing, 0);
    }

    /// Two expirer runs overlapping (a slow run and the next schedule)
    /// release each order once.
    #[tokio::test]
    async fn overlapping_runs_release_once() {
        let (e, _, _) = expirer("").await;
        for i in 0..6 {
            place(&e, &format!("u{i}"), NOW - 1).await;
        }
        let (a, b) = tokio::join!(e.run(), e.run());
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.expired + b.expired, 6);
        let ledger = e
            .store
            .ledger_of(&shared::domain::ProductId::parse("p1").unwrap())
            .await;
        assert_eq!(
            (ledger.remaining, ledger.releasing, ledger.expired),
            (100, 0, 6)
        );
        assert_eq!(e.gate.released.lock().unwrap().len(), 6);
    }
}
