use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::LambdaEvent;
use shared::config;
use shared::wiring::{Error, Wiring};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let env = Wiring::from_env().await?;
    let compensation = compensation::Compensation {
        gate: env.gate().await?,
        store: env.store(),
        concurrency: config::consumer_concurrency()?,
    };
    let compensation = &compensation;
    env.run(move |event: LambdaEvent<SqsEvent>| async move {
        Ok::<SqsBatchResponse, Error>(compensation.handle(event.payload).await)
    })
    .await
}
