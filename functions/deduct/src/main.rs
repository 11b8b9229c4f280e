use std::convert::Infallible;

use lambda_http::{Error, Request, service_fn};
use shared::{aws, config, redis::RedisGate, telemetry};

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::init();
    let sdk = aws::load_sdk_config().await;
    let handler = deduct::Deduct {
        gate: RedisGate::new(config::redis_settings()?),
        queue: aws::SqsQueue::new(&sdk, config::orders_queue_url()?),
        insecure_user_from_body: config::insecure_user_from_body(),
    };
    let handler = &handler;
    lambda_http::run(service_fn(move |req: Request| async move {
        Ok::<_, Infallible>(handler.handle(req).await)
    }))
    .await
}
