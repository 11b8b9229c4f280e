use std::convert::Infallible;

use lambda_http::{Error, Request, service_fn};
use shared::{config, wiring::Wiring};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let env = Wiring::from_env().await?;
    let api = order_status::OrderStatusApi {
        gate: env.gate()?,
        store: env.store(),
        insecure_user_from_body: config::insecure_user_from_body(),
    };
    let api = &api;
    lambda_http::run(service_fn(move |req: Request| async move {
        Ok::<_, Infallible>(api.handle(req).await)
    }))
    .await
}
