//! The real functions behind the Lambda Invoke API (`sam local start-lambda`,
//! `cargo lambda watch`): what the runner's event source mappings and
//! schedules call with `--invoke` instead of the handlers in process.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use aws_config::SdkConfig;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use aws_sdk_lambda::primitives::Blob;
use serde::Serialize;

/// The event-driven functions the runner drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    OrderConsumer,
    Compensation,
    OutboxSweeper,
    OrderExpirer,
}

impl Function {
    /// The function's logical id in template.yaml (`sam local` names them so).
    pub fn logical_id(self) -> &'static str {
        match self {
            Self::OrderConsumer => "OrderConsumerFunction",
            Self::Compensation => "CompensationFunction",
            Self::OutboxSweeper => "OutboxSweeperFunction",
            Self::OrderExpirer => "OrderExpirerFunction",
        }
    }
    /// The binary (`cargo lambda watch` names them so).
    pub fn binary(self) -> &'static str {
        match self {
            Self::OrderConsumer => "order-consumer",
            Self::Compensation => "compensation",
            Self::OutboxSweeper => "outbox-sweeper",
            Self::OrderExpirer => "order-expirer",
        }
    }
}

/// How the endpoint names functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Names {
    /// template.yaml's logical ids: `sam local start-lambda`.
    Template,
    /// Binary names: `cargo lambda watch`.
    Binary,
}

#[derive(Debug, Clone)]
pub struct InvokeConfig {
    pub endpoint: String,
    pub names: Names,
}

/// A Lambda Invoke API client for one endpoint.
#[derive(Debug, Clone)]
pub struct Invoker {
    client: aws_sdk_lambda::Client,
    names: Names,
}

/// Timeouts for a synchronous Invoke: a cold start (a container, the
/// function's init) plus the longest function timeout in the template
/// (60 s). Both the attempt and the operation: the shared SDK config's 10 s
/// operation timeout would otherwise cut a slow cold start short.
pub fn invoke_timeouts() -> aws_config::timeout::TimeoutConfig {
    aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(2))
        .operation_attempt_timeout(Duration::from_secs(90))
        .operation_timeout(Duration::from_secs(90))
        .build()
}

impl Invoker {
    pub fn new(sdk: &SdkConfig, cfg: &InvokeConfig) -> Self {
        let conf = aws_sdk_lambda::config::Builder::from(sdk)
            .endpoint_url(&cfg.endpoint)
            .timeout_config(invoke_timeouts())
            // A timed-out invoke may still run: the caller decides what to redo.
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .build();
        Self {
            client: aws_sdk_lambda::Client::from_conf(conf),
            names: cfg.names,
        }
    }

    fn name(&self, f: Function) -> &'static str {
        match self.names {
            Names::Template => f.logical_id(),
            Names::Binary => f.binary(),
        }
    }

    /// Invokes `f` synchronously with `event`; its response payload, or an
    /// error when the call failed or the function reported one.
    pub async fn invoke<E: Serialize>(&self, f: Function, event: &E) -> Result<Vec<u8>> {
        let name = self.name(f);
        let out = self
            .client
            .invoke()
            .function_name(name)
            .payload(Blob::new(serde_json::to_vec(event)?))
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "invoking {name}: {}",
                    aws_sdk_lambda::error::DisplayErrorContext(&e)
                )
            })?;
        let payload = out.payload.map(Blob::into_inner).unwrap_or_default();
        if let Some(kind) = out.function_error {
            bail!(
                "{name} failed ({kind}): {}",
                String::from_utf8_lossy(&payload)
            );
        }
        Ok(payload)
    }

    /// An SQS batch, as an event source mapping with ReportBatchItemFailures
    /// sends it: the records the function reports failed, or an error (the
    /// whole batch is then redelivered).
    pub async fn sqs(&self, f: Function, event: &SqsEvent) -> Result<SqsBatchResponse> {
        let payload = self.invoke(f, event).await?;
        batch_response(&payload).with_context(|| format!("{} answered", self.name(f)))
    }

    /// A scheduled run (EventBridge Scheduler's event).
    pub async fn schedule(&self, f: Function) -> Result<()> {
        self.invoke(f, &scheduled_event(self.name(f)))
            .await
            .map(drop)
    }
}

/// A batch response as Lambda reads it: nothing, `null`, `{}` or a null
/// list is a batch without failures (AWS documents these as success; the
/// events crate's type requires the list); anything else that is not such
/// an object is an error, and the whole batch is redelivered.
pub fn batch_response(payload: &[u8]) -> Result<SqsBatchResponse> {
    let text = payload.trim_ascii();
    if text.is_empty() || text == b"null" {
        return Ok(SqsBatchResponse::default());
    }
    let value: serde_json::Value = serde_json::from_slice(text).with_context(|| {
        format!(
            "something other than a batch response: {}",
            String::from_utf8_lossy(payload)
        )
    })?;
    // Only an object can be a response. AWS documents invalid JSON as a
    // failure but says nothing of a JSON string, number or list; LocalStack
    // fails a batch answered with a string (tests/event_source_mapping.rs),
    // and none of them is a response, so none acknowledges a record.
    if !value.is_object() {
        bail!(
            "a batch response that is not a JSON object: {}",
            String::from_utf8_lossy(payload)
        );
    }
    if value
        .get("batchItemFailures")
        .is_none_or(serde_json::Value::is_null)
    {
        return Ok(SqsBatchResponse::default());
    }
    serde_json::from_value(value).with_context(|| {
        format!(
            "a batch response whose failures are not [{{\"itemIdentifier\": ...}}]: {}",
            String::from_utf8_lossy(payload)
        )
    })
}

/// What EventBridge Scheduler sends a target.
pub fn scheduled_event(name: &str) -> serde_json::Value {
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    serde_json::json!({
        "version": "0",
        "id": uuid::Uuid::new_v4().to_string(),
        "detail-type": "Scheduled Event",
        "source": "aws.scheduler",
        "account": "000000000000",
        "time": now,
        "region": "us-east-1",
        "resources": [format!("arn:aws:scheduler:us-east-1:000000000000:schedule/default/{name}")],
        "detail": {},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn invoke_clients_wait_90_s_not_the_shared_configs_10_s() {
        let sdk = shared::aws::load_sdk_config().await;
        let invoker = Invoker::new(
            &sdk,
            &InvokeConfig {
                endpoint: "http://127.0.0.1:1".into(),
                names: Names::Binary,
            },
        );
        let timeouts = invoker.client.config().timeout_config().cloned().unwrap();
        assert_eq!(timeouts.operation_timeout(), Some(Duration::from_secs(90)));
        assert_eq!(
            timeouts.operation_attempt_timeout(),
            Some(Duration::from_secs(90))
        );
    }

    #[test]
    fn a_batch_response_is_read_as_lambda_reads_it() {
        for success in [
            "",
            " null ",
            "{}",
            r#"{"batchItemFailures":null}"#,
            r#"{"batchItemFailures":[]}"#,
        ] {
            let r = batch_response(success.as_bytes()).unwrap();
            assert!(r.batch_item_failures.is_empty(), "{success:?}");
        }
        let r = batch_response(br#"{"batchItemFailures":[{"itemIdentifier":"m1"}]}"#).unwrap();
        assert_eq!(r.batch_item_failures[0].item_identifier, "m1");
        // Whole-batch failures: the mapping redelivers everything.
        for failure in [
            "not json",
            r#""a string""#,
            "[]",
            "1",
            r#"{"batchItemFailures":[{"id":"m1"}]}"#,
        ] {
            assert!(batch_response(failure.as_bytes()).is_err(), "{failure:?}");
        }
    }
}
