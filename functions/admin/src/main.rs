use std::convert::Infallible;

use lambda_http::{Error, Request, service_fn};
use shared::{config, wiring::Wiring};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let env = Wiring::from_env().await?;
    let admin = admin::Admin {
        gate: env.gate()?,
        store: env.store(),
        token: config::admin_token(),
    };
    let admin = &admin;
    lambda_http::run(service_fn(move |req: Request| async move {
        Ok::<_, Infallible>(admin.handle(req).await)
    }))
    .await
}
