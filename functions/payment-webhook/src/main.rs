use std::sync::Arc;

use lambda_http::Request;
use shared::ports::SystemClock;
use shared::wiring::{Error, Wiring};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let env = Wiring::from_env().await?;
    let webhook = payment_webhook::Webhook {
        store: env.store(),
        clock: Arc::new(SystemClock),
        secret: env.payment_webhook_secret().await?,
    };
    let webhook = &webhook;
    env.run_http(move |req: Request| webhook.handle(req)).await
}
