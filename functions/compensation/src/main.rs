use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{Error, LambdaEvent, service_fn};
use shared::{config, wiring::Wiring};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let env = Wiring::from_env().await?;
    let compensation = compensation::Compensation {
        gate: env.gate()?,
        store: env.store(),
        concurrency: config::consumer_concurrency()?,
    };
    let compensation = &compensation;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        Ok::<SqsBatchResponse, Error>(compensation.handle(event.payload).await)
    }))
    .await
}
