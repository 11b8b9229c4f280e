use lambda_http::Request;
use shared::wiring::{Error, Wiring};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let env = Wiring::from_env().await?;
    let admin = admin::Admin {
        gate: env.gate().await?,
        store: env.store(),
        token: env.admin_token().await?,
        clock: std::sync::Arc::new(shared::ports::SystemClock),
        room_defaults: shared::config::room_defaults()?,
    };
    let admin = &admin;
    env.run_http(move |req: Request| admin.handle(req)).await
}
