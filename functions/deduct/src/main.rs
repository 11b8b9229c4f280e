use lambda_http::Request;
use shared::config;
use shared::wiring::{Error, Wiring};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let env = Wiring::from_env().await?;
    deduct::REFUSALS_LOGGED.set_every(config::refusal_log_every()?);
    let (live, refusals) = deduct::guards(
        std::sync::Arc::new(shared::ports::SystemClock),
        config::live_products()?,
    );
    let handler = deduct::Deduct {
        gate: env.gate().await?,
        queue: env.orders_queue()?,
        store: env.store(),
        insecure_user_from_body: config::insecure_user_from_body(),
        sold_out: deduct::SoldOutCache::new(config::sold_out_cache()?),
        kill_switch: deduct::KillSwitchCache::new(config::kill_switch_cache()?),
        ids: shared::domain::RequestIds::Random,
        live,
        refusals,
        room: deduct::RoomCheck::new(
            env.room_keys().await?,
            std::sync::Arc::new(shared::ports::SystemClock),
        ),
    };
    // All three, each on its own: a dead Redis must not keep the SDK
    // clients cold.
    env.warm_up(async {
        let (redis, sqs, dynamodb) = tokio::join!(
            handler.gate.inner.prepare(),
            handler.queue.inner.prepare(),
            handler.live.load(&handler.store),
        );
        redis.and(sqs).and(dynamodb)
    })
    .await;
    let handler = &handler;
    env.run_http(move |req: Request| handler.handle(req)).await
}
