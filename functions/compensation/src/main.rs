use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{Error, LambdaEvent, service_fn};
use shared::faults::{FaultPlan, Faulty};
use shared::{aws, config, redis::RedisGate, telemetry};

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::init();
    let sdk = aws::load_sdk_config().await;
    let faults = FaultPlan::from_env()?;
    let compensation = compensation::Compensation {
        gate: Faulty::new(RedisGate::new(config::redis_settings()?), faults.clone()),
        store: Faulty::new(aws::DynamoStore::new(&sdk, config::table_name()), faults),
        concurrency: config::consumer_concurrency()?,
    };
    let compensation = &compensation;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        Ok::<SqsBatchResponse, Error>(compensation.handle(event.payload).await)
    }))
    .await
}
