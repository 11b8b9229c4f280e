use std::convert::Infallible;

use lambda_http::{Error, Request, service_fn};
use shared::{aws, config, redis::RedisGate, telemetry};

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::init();
    let sdk = aws::load_sdk_config().await;
    let api = order_status::OrderStatusApi {
        gate: RedisGate::new(config::redis_settings()?),
        store: aws::DynamoStore::new(&sdk, config::table_name()),
        insecure_user_from_body: config::insecure_user_from_body(),
    };
    let api = &api;
    lambda_http::run(service_fn(move |req: Request| async move {
        Ok::<_, Infallible>(api.handle(req).await)
    }))
    .await
}
