use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use lambda_runtime::LambdaEvent;
use shared::config;
use shared::wiring::{Error, Wiring};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let env = Wiring::from_env().await?;
    let sweeper = outbox_sweeper::Sweeper {
        gate: env.gate().await?,
        queue: env.orders_queue()?,
        store: env.store(),
        older_than_ms: config::sweep_after()?.as_millis() as i64,
        resend_after_ms: config::resend_after()?.as_millis() as i64,
        max_per_product: 10_000,
    };
    let sweeper = &sweeper;
    env.run(move |_: LambdaEvent<EventBridgeEvent>| async move {
        // Boxed: the sweep future is deep enough to hit the type-layout limit.
        Box::pin(sweeper.sweep()).await.map_err(Error::from)
    })
    .await
}
