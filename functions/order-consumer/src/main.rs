use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::LambdaEvent;
use shared::config;
use shared::wiring::{Error, Wiring};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let env = Wiring::from_env().await?;
    let consumer = order_consumer::Consumer {
        gate: env.gate().await?,
        store: env.store(),
        concurrency: config::consumer_concurrency()?,
        faults: env.faults.clone(),
        terms: shared::lifecycle::Terms::system(),
    };
    let consumer = &consumer;
    env.run(move |event: LambdaEvent<SqsEvent>| async move {
        Ok::<SqsBatchResponse, Error>(consumer.handle(event.payload).await)
    })
    .await
}
