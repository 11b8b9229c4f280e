use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use lambda_runtime::LambdaEvent;
use shared::config;
use shared::ports::SystemClock;
use shared::wiring::{Error, Wiring};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let env = Wiring::from_env().await?;
    let expirer = order_expirer::Expirer {
        gate: env.gate().await?,
        store: env.store(),
        clock: Arc::new(SystemClock),
        faults: env.faults.clone(),
        batch: config::expiry_batch()?,
        concurrency: 8,
        // The template's timeout is 60 s: stop taking new batches well before.
        budget: Duration::from_secs(45),
    };
    let expirer = &expirer;
    env.run(move |_: LambdaEvent<EventBridgeEvent>| async move {
        Box::pin(expirer.run()).await.map_err(Error::from)
    })
    .await
}
