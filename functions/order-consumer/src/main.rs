use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{Error, LambdaEvent, service_fn};
use shared::{aws, config, redis::RedisGate, telemetry};

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::init();
    let sdk = aws::load_sdk_config().await;
    let consumer = order_consumer::Consumer {
        gate: RedisGate::new(config::redis_settings()?),
        store: aws::DynamoStore::new(&sdk, config::table_name()),
        concurrency: config::consumer_concurrency()?,
    };
    let consumer = &consumer;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        Ok::<SqsBatchResponse, Error>(consumer.handle(event.payload).await)
    }))
    .await
}
