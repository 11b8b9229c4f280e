use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use edge_publisher::Publisher;
use lambda_runtime::LambdaEvent;
use shared::aws::KvsStore;
use shared::config;
use shared::ports::SystemClock;
use shared::wiring::{Error, Wiring};

/// Stop this long before the invocation's deadline, so the last write
/// finishes inside it.
const MARGIN: Duration = Duration::from_secs(3);
/// A run's length: the schedule fires every minute.
const RUN_FOR: Duration = Duration::from_secs(57);

#[tokio::main]
async fn main() -> Result<(), Error> {
    let env = Wiring::from_env().await?;
    let edge = KvsStore::new(
        &env.sdk,
        config::kvs_arn()?,
        config::kvs_endpoint().as_deref(),
    );
    let publisher = Publisher::new(env.gate().await?, env.store(), edge, Arc::new(SystemClock))
        .with_rooms(env.room_keys().await?, config::room_capacity()?);
    let every = config::edge_publish_every()?;
    let publisher = &publisher;
    // A schedule fires at most once a minute: each invocation publishes
    // every `every` until its deadline (the template's reserved concurrency
    // of 1 makes the next one wait for it).
    env.run(move |event: LambdaEvent<EventBridgeEvent>| async move {
        // Done before the next minute's run is due, so it is not throttled
        // (a gap of a few seconds a minute: docs/operations.md).
        let until = event
            .context
            .deadline()
            .checked_sub(MARGIN)
            .map(|d| d.min(std::time::SystemTime::now() + RUN_FOR));
        loop {
            if let Err(e) = publisher.publish().await {
                tracing::warn!(error = %e, "publish failed; the next pass retries");
            }
            let next = std::time::SystemTime::now() + every;
            if until.is_none_or(|u| next >= u) {
                return Ok::<_, Error>(());
            }
            tokio::time::sleep(every).await;
        }
    })
    .await
}
