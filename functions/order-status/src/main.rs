use lambda_http::Request;
use shared::config;
use shared::wiring::{Error, Wiring};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let env = Wiring::from_env().await?;
    let api = order_status::OrderStatusApi {
        gate: env.gate().await?,
        store: env.store(),
        insecure_user_from_body: config::insecure_user_from_body(),
        terms: shared::lifecycle::Terms::system(),
        faults: env.faults.clone(),
        pages: order_status::ProductPages::new(
            std::sync::Arc::new(shared::ports::SystemClock),
            config::live_products()?,
        ),
    };
    // The connections are what a first buyer would wait for (the buy
    // scripts prepare also loads are deduct's, harmless here).
    env.warm_up(async {
        let (redis, dynamodb) = tokio::join!(api.gate.inner.prepare(), api.pages.load(&api.store));
        redis.and(dynamodb)
    })
    .await;
    let api = &api;
    env.run_http(move |req: Request| api.handle(req)).await
}
