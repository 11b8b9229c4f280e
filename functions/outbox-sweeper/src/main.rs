use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use lambda_runtime::{Error, LambdaEvent, service_fn};
use shared::faults::{FaultPlan, Faulty};
use shared::{aws, config, redis::RedisGate, telemetry};

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::init();
    let sdk = aws::load_sdk_config().await;
    let faults = FaultPlan::from_env()?;
    let sweeper = outbox_sweeper::Sweeper {
        gate: Faulty::new(RedisGate::new(config::redis_settings()?), faults.clone()),
        queue: Faulty::new(
            aws::SqsQueue::new(&sdk, config::orders_queue_url()?),
            faults.clone(),
        ),
        store: Faulty::new(aws::DynamoStore::new(&sdk, config::table_name()), faults),
        older_than_ms: config::sweep_after()?.as_millis() as i64,
        max_per_product: 10_000,
    };
    let sweeper = &sweeper;
    lambda_runtime::run(service_fn(
        move |_: LambdaEvent<EventBridgeEvent>| async move {
            sweeper.sweep().await.map_err(Error::from)
        },
    ))
    .await
}
