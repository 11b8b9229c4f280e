use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{Error, LambdaEvent, service_fn};
use shared::faults::{FaultPlan, Faulty};
use shared::{aws, config, redis::RedisGate, telemetry};

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::init();
    let sdk = aws::load_sdk_config().await;
    let faults = FaultPlan::from_env()?;
    let consumer = order_consumer::Consumer {
        gate: Faulty::new(RedisGate::new(config::redis_settings()?), faults.clone()),
        store: Faulty::new(
            aws::DynamoStore::new(&sdk, config::table_name()),
            faults.clone(),
        ),
        concurrency: config::consumer_concurrency()?,
        faults,
    };
    let consumer = &consumer;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        Ok::<SqsBatchResponse, Error>(consumer.handle(event.payload).await)
    }))
    .await
}
