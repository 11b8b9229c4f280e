//! The local runner's order sends, batched: one process serves every buyer
//! here (on Lambda an instance has one request in flight, so there is
//! nothing to batch), and one SendMessageBatch of 10 costs the emulator
//! about what one SendMessage does. A send waits for its own batch entry's
//! answer, so a 202 still means the order is queued (issue #6's promise);
//! a batch that fails fails each of its sends, which the deduct handler
//! treats exactly as a failed single send.

use std::sync::Arc;
use std::time::Duration;

use shared::domain::{OrderMessage, RequestId};
use shared::error::InfraError;
use shared::ports::{OrderQueue, PortResult};
use tokio::sync::{mpsc, oneshot};

/// SQS takes at most 10 entries per SendMessageBatch.
const MAX_BATCH: usize = 10;

struct Waiting {
    msg: OrderMessage,
    traceparent: String,
    done: oneshot::Sender<PortResult<()>>,
}

/// An order queue whose sends leave in batches of up to 10, each batch
/// flushed when full or `linger` after its first send. A zero linger sends
/// each message on its own.
pub struct BatchingQueue<Q> {
    inner: Arc<Q>,
    waiting: Option<mpsc::Sender<Waiting>>,
}

impl<Q: OrderQueue + Send + Sync + 'static> BatchingQueue<Q> {
    /// Spawns the flusher on the current runtime (unless `linger` is zero).
    pub fn new(inner: Q, linger: Duration) -> Self {
        let inner = Arc::new(inner);
        if linger.is_zero() {
            return Self {
                inner,
                waiting: None,
            };
        }
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(flush(inner.clone(), rx, linger));
        Self {
            inner,
            waiting: Some(tx),
        }
    }
}

async fn flush<Q: OrderQueue + Send + Sync + 'static>(
    inner: Arc<Q>,
    mut rx: mpsc::Receiver<Waiting>,
    linger: Duration,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + linger;
        while batch.len() < MAX_BATCH {
            tokio::select! {
                next = rx.recv() => match next {
                    Some(w) => batch.push(w),
                    None => break,
                },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        // Batches go out concurrently: a slow one does not hold the next.
        let inner = inner.clone();
        tokio::spawn(async move {
            let msgs: Vec<OrderMessage> = batch.iter().map(|w| w.msg.clone()).collect();
            let traceparents: Vec<String> = batch.iter().map(|w| w.traceparent.clone()).collect();
            let answer = inner.send_batch(&msgs, Some(&traceparents)).await;
            for w in batch {
                let result = match &answer {
                    Err(e) => Err(e.clone()),
                    Ok(failed) if failed.contains(&w.msg.request_id) => Err(InfraError::transient(
                        "sqs",
                        "SQS refused this entry of a batch; it is retried like a failed send",
                    )),
                    Ok(_) => Ok(()),
                };
                // The sender gave up (its request ended): nothing to tell.
                let _ = w.done.send(result);
            }
        });
    }
}

impl<Q: OrderQueue + Send + Sync + 'static> OrderQueue for BatchingQueue<Q> {
    async fn send(&self, msg: &OrderMessage, traceparent: &str) -> PortResult<()> {
        let Some(waiting) = &self.waiting else {
            return self.inner.send(msg, traceparent).await;
        };
        let gone = || InfraError::transient("sqs", "the runner's send batcher stopped; retry");
        let (done, answer) = oneshot::channel();
        waiting
            .send(Waiting {
                msg: msg.clone(),
                traceparent: traceparent.to_owned(),
                done,
            })
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    async fn send_batch(
        &self,
        msgs: &[OrderMessage],
        traceparents: Option<&[String]>,
    ) -> PortResult<Vec<RequestId>> {
        self.inner.send_batch(msgs, traceparents).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::fakes::{FakeQueue, order_message};
    use std::sync::atomic::Ordering;

    #[tokio::test(start_paused = true)]
    async fn sends_leave_in_batches_of_ten_or_after_the_linger() {
        let queue = Arc::new(FakeQueue::default());
        let batching = Arc::new(BatchingQueue::new(queue.clone(), Duration::from_millis(2)));
        let sends: Vec<_> = (0..13)
            .map(|i| {
                let b = batching.clone();
                tokio::spawn(async move {
                    b.send(&order_message("p1", &format!("u{i}"), 0), "tp")
                        .await
                })
            })
            .collect();
        for s in sends {
            s.await.unwrap().unwrap();
        }
        assert_eq!(queue.sent().len(), 13);
        assert_eq!(
            queue.batches.load(Ordering::SeqCst),
            2,
            "10, then 3 after the linger"
        );
        assert!(
            queue.sent().iter().all(|(_, tp)| tp == "tp"),
            "each keeps its trace"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_batch_fails_each_of_its_sends_and_a_zero_linger_sends_alone() {
        let queue = Arc::new(FakeQueue::default());
        queue.failures.fail_next(1);
        let batching = BatchingQueue::new(queue.clone(), Duration::from_millis(2));
        let e = batching
            .send(&order_message("p1", "u1", 0), "tp")
            .await
            .unwrap_err();
        assert!(e.is_transient(), "{e}");
        assert!(queue.sent().is_empty());

        // An entry SQS refuses fails its own send, not its batch-mates'.
        let (refused, kept) = (order_message("p1", "u3", 0), order_message("p1", "u4", 0));
        queue
            .refuse_entries
            .lock()
            .unwrap()
            .push(refused.request_id.clone());
        let (a, b) = tokio::join!(batching.send(&refused, "tp"), batching.send(&kept, "tp"));
        assert!(a.unwrap_err().is_transient());
        b.unwrap();
        assert_eq!(queue.sent().len(), 1);

        let direct = BatchingQueue::new(queue.clone(), Duration::ZERO);
        direct
            .send(&order_message("p1", "u2", 0), "tp")
            .await
            .unwrap();
        assert_eq!(queue.sent()[1].1, "tp", "sent alone, with its traceparent");
        assert_eq!(queue.batches.load(Ordering::SeqCst), 1);
    }
}
