use std::convert::Infallible;

use lambda_http::{Error, Request, service_fn};
use shared::{config, wiring::Wiring};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let env = Wiring::from_env().await?;
    let handler = deduct::Deduct {
        gate: env.gate()?,
        queue: env.orders_queue()?,
        insecure_user_from_body: config::insecure_user_from_body(),
    };
    let handler = &handler;
    lambda_http::run(service_fn(move |req: Request| async move {
        Ok::<_, Infallible>(handler.handle(req).await)
    }))
    .await
}
