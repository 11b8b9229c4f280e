use std::convert::Infallible;

use lambda_http::{Error, Request, service_fn};
use shared::faults::{FaultPlan, Faulty};
use shared::{aws, config, redis::RedisGate, telemetry};

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::init();
    let sdk = aws::load_sdk_config().await;
    let faults = FaultPlan::from_env()?;
    let admin = admin::Admin {
        gate: Faulty::new(RedisGate::new(config::redis_settings()?), faults.clone()),
        store: Faulty::new(aws::DynamoStore::new(&sdk, config::table_name()), faults),
        token: config::admin_token(),
    };
    let admin = &admin;
    lambda_http::run(service_fn(move |req: Request| async move {
        Ok::<_, Infallible>(admin.handle(req).await)
    }))
    .await
}
