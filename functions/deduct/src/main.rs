use std::convert::Infallible;

use lambda_http::{Error, Request, service_fn};
use shared::faults::{FaultPlan, Faulty};
use shared::{aws, config, redis::RedisGate, telemetry};

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::init();
    let sdk = aws::load_sdk_config().await;
    let faults = FaultPlan::from_env()?;
    let handler = deduct::Deduct {
        gate: Faulty::new(RedisGate::new(config::redis_settings()?), faults.clone()),
        queue: Faulty::new(
            aws::SqsQueue::new(&sdk, config::orders_queue_url()?),
            faults,
        ),
        insecure_user_from_body: config::insecure_user_from_body(),
    };
    let handler = &handler;
    lambda_http::run(service_fn(move |req: Request| async move {
        Ok::<_, Infallible>(handler.handle(req).await)
    }))
    .await
}
