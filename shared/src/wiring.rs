//! What every Lambda's `main` does: logs, metrics (CloudWatch Embedded
//! Metric Format, flushed after each invocation), the SDK configuration and
//! the fault plan, then adapters built once per process from the
//! environment, and the runtime loop.

use std::sync::Arc;
use std::time::Duration;

use aws_config::SdkConfig;
use lambda_http::Request;
use lambda_runtime::{Diagnostic, LambdaEvent};
use metrics_cloudwatch_embedded::Collector;
use serde::{Serialize, de::DeserializeOwned};

use crate::aws::{DynamoStore, SqsQueue};
use crate::config::Secret;
use crate::error::ConfigError;
use crate::faults::{FaultPlan, Faulty};
use crate::http::{self, HttpResponse};
use crate::ports::PortResult;
use crate::redis::RedisGate;
use crate::{aws, config, telemetry};

pub type Error = lambda_runtime::Error;

pub struct Wiring {
    pub sdk: SdkConfig,
    pub faults: Arc<FaultPlan>,
    metrics: &'static Collector,
}

impl Wiring {
    pub async fn from_env() -> Result<Self, Error> {
        telemetry::init();
        let function = std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|_| "local".into());
        let metrics = metrics_cloudwatch_embedded::Builder::new()
            .cloudwatch_namespace("flashsale")
            .with_dimension("function", function)
            .lambda_cold_start_metric("flashsale_cold_starts")
            .with_lambda_request_id("RequestId")
            .with_lambda_xray_trace_id("XRayTraceId")
            .init()
            .map_err(|e| ConfigError(format!("cannot set up CloudWatch metrics: {e}")))?;
        aws::require_ca_certificates()?;
        Ok(Self {
            sdk: aws::load_sdk_config().await,
            faults: FaultPlan::from_env()?,
            metrics,
        })
    }

    /// A secret this function needs, read once at init: from SSM Parameter
    /// Store (decrypted) when its parameter is named, else the environment.
    /// A failure fails the init: a missing secret is a deployment error.
    pub async fn secret(&self, secret: Secret) -> Result<Option<String>, ConfigError> {
        let Some(name) = secret.parameter() else {
            return Ok(secret.from_env());
        };
        aws::ssm_secret(&self.sdk, &name)
            .await
            .map(Some)
            .map_err(|e| {
                ConfigError(format!(
                    "cannot read {} from SSM parameter {name}: {e}",
                    secret.var()
                ))
            })
    }

    /// The waiting room's signing keys (none when unset).
    pub async fn room_keys(&self) -> Result<Vec<crate::room::Key>, ConfigError> {
        config::room_keys_of(self.secret(Secret::RoomKeys).await?)
    }

    pub async fn gate(&self) -> Result<Faulty<RedisGate>, ConfigError> {
        let mut settings = config::redis_settings()?;
        settings.auth_token = self.secret(Secret::RedisAuthToken).await?;
        let gate = RedisGate::new(settings);
        gate.count_buckets_with(crate::redis::buckets_from(self.store()));
        Ok(Faulty::new(gate, self.faults.clone()))
    }

    pub async fn admin_token(&self) -> Result<Option<String>, ConfigError> {
        config::admin_token_of(self.secret(Secret::AdminToken).await?)
    }

    pub async fn payment_webhook_secret(&self) -> Result<Vec<u8>, ConfigError> {
        config::payment_webhook_secret_of(self.secret(Secret::PaymentWebhookSecret).await?)
    }

    pub fn store(&self) -> Faulty<DynamoStore> {
        Faulty::new(
            DynamoStore::new(&self.sdk, config::table_name()),
            self.faults.clone(),
        )
    }

    pub fn orders_queue(&self) -> Result<Faulty<SqsQueue>, ConfigError> {
        Ok(Faulty::new(
            SqsQueue::new(&self.sdk, config::orders_queue_url()?),
            self.faults.clone(),
        ))
    }

    /// Connections the first request would otherwise open (`steps`), made
    /// during init within `config::init_warm` ([`warm_up_within`]).
    pub async fn warm_up(&self, steps: impl Future<Output = PortResult<()>>) {
        match config::init_warm() {
            Ok(budget) if !budget.is_zero() => {
                warm_up_within(budget, steps).await;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "init warm-up skipped"),
        }
    }

    /// Runs an event handler, flushing metrics as EMF after each invocation.
    pub async fn run<E, R, F, Fut, Err>(&self, handler: F) -> Result<(), Error>
    where
        E: DeserializeOwned,
        R: Serialize,
        F: Fn(LambdaEvent<E>) -> Fut,
        Fut: Future<Output = Result<R, Err>>,
        Err: Into<Diagnostic> + std::fmt::Debug,
    {
        metrics_cloudwatch_embedded::lambda::service::run(
            self.metrics,
            lambda_runtime::service_fn(handler),
        )
        .await
    }

    /// Runs an HTTP handler behind API Gateway, flushing metrics likewise.
    /// A function given the edge's origin secret answers only requests that
    /// came through the edge (the others, 403, never reach the handler).
    pub async fn run_http<'a, F, Fut>(&self, handler: F) -> Result<(), Error>
    where
        F: Fn(Request) -> Fut,
        Fut: Future<Output = HttpResponse> + Send + 'a,
    {
        let edge = self.secret(Secret::EdgeOriginSecret).await?;
        let edge = edge.as_deref();
        metrics_cloudwatch_embedded::lambda::service::run_http(
            self.metrics,
            lambda_http::service_fn(move |mut req: Request| {
                let answer = match edge {
                    Some(secret) if !http::came_through_edge(&req, secret) => None,
                    Some(_) => {
                        http::source_is_viewer(&mut req);
                        Some(handler(req))
                    }
                    None => Some(handler(req)),
                };
                async move {
                    Ok::<_, std::convert::Infallible>(match answer {
                        Some(answer) => answer.await,
                        None => http::not_through_edge(),
                    })
                }
            }),
        )
        .await
    }
}

/// Runs `steps` for at most `budget`; whether they finished. Never fails:
/// a dead Redis at init must still let the function start and answer 503,
/// connecting on first use.
pub async fn warm_up_within(budget: Duration, steps: impl Future<Output = PortResult<()>>) -> bool {
    let started = std::time::Instant::now();
    match tokio::time::timeout(budget, steps).await {
        Ok(Ok(())) => {
            tracing::info!(
                took_ms = started.elapsed().as_millis() as u64,
                "connections warmed at init"
            );
            true
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "init warm-up failed; connecting on first use");
            false
        }
        Err(_) => {
            tracing::warn!(
                budget_ms = budget.as_millis() as u64,
                "init warm-up ran out of time; connecting on first use"
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::InfraError;

    #[tokio::test(start_paused = true)]
    async fn a_warm_up_is_bounded_and_never_fails_the_init() {
        let budget = Duration::from_millis(500);
        assert!(warm_up_within(budget, async { Ok(()) }).await);
        let failed = async { Err(InfraError::transient("redis", "connection refused")) };
        assert!(!warm_up_within(budget, failed).await);
        let started = tokio::time::Instant::now();
        assert!(!warm_up_within(budget, std::future::pending()).await);
        assert_eq!(started.elapsed(), budget);
    }
}
