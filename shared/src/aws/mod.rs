//! AWS adapters: the SQS [`OrderQueue`](crate::ports::OrderQueue) (`sqs`)
//! and the DynamoDB [`OrderStore`](crate::ports::OrderStore) (`dynamodb`, a
//! module per capability), the SDK's configuration, errors and secrets.
//! Endpoints come from the SDK's own environment variables
//! (`AWS_ENDPOINT_URL_SQS`, `AWS_ENDPOINT_URL_DYNAMODB`), so LocalStack and
//! DynamoDB Local need no code of ours.

use std::error::Error as StdError;
use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_sqs::error::SdkError;

use crate::error::InfraError;
use crate::ports::PortResult;

mod dynamodb;
#[cfg(feature = "edge-store")]
mod kvs;
mod sqs;

pub use dynamodb::{DynamoStore, create_table, guard_expires_at, table};
#[cfg(feature = "edge-store")]
pub use kvs::KvsStore;
pub use sqs::SqsQueue;

/// The AWS SDK's HTTPS client trusts the system's CA certificates and
/// panics, deep inside its first use, when there are none (a container image
/// without `ca-certificates`). Checked at init instead, with what to do.
pub fn require_ca_certificates() -> Result<(), crate::error::ConfigError> {
    let found = rustls_native_certs::load_native_certs();
    trust_store_verdict(found.certs.len(), found.errors.len())
}

fn trust_store_verdict(certs: usize, errors: usize) -> Result<(), crate::error::ConfigError> {
    if certs > 0 {
        return Ok(());
    }
    Err(crate::error::ConfigError(format!(
        "no CA certificates found ({errors} load errors): the AWS SDK cannot make HTTPS calls. \
         Install the ca-certificates package in the image (provided.al2023 has it), or point \
         SSL_CERT_FILE / SSL_CERT_DIR at a CA bundle"
    )))
}

/// Loads the shared SDK configuration once per process, with timeouts that
/// keep a slow AWS call from eating the whole Lambda budget.
pub async fn load_sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(2))
                .operation_attempt_timeout(Duration::from_secs(3))
                .operation_timeout(Duration::from_secs(10))
                .build(),
        )
        .load()
        .await
}

const TRANSIENT_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "RequestThrottled",
    "RequestLimitExceeded",
    "ProvisionedThroughputExceededException",
    "TransactionConflictException",
    "TransactionInProgressException",
    "InternalServerError",
    "InternalFailure",
    "ServiceUnavailable",
    "KMSThrottlingException",
];

/// Transport failures, throttling and 5xx are transient; anything else the
/// service refused (bad names, permissions, validation) is permanent.
pub(crate) fn classify<E, R>(service: &'static str, err: SdkError<E, R>) -> InfraError
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    let detail = match &err {
        SdkError::ServiceError(s) => {
            let e = s.err();
            format!(
                "{}: {}",
                e.code().unwrap_or("unknown error"),
                e.message().unwrap_or("")
            )
        }
        other => format!("{other}: {:?}", other.source()),
    };
    let transient = match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(s) => s.err().code().is_some_and(|c| TRANSIENT_CODES.contains(&c)),
        _ => false,
    };
    if transient {
        InfraError::transient(service, detail)
    } else {
        InfraError::permanent(service, detail)
    }
}

// ---------------------------------------------------------------- SSM ----

/// Reads a SecureString from Parameter Store, decrypted: how the functions
/// get their secrets in AWS without plain environment values.
///
/// Parameter Store allows 40 reads per second per account and region by
/// default, and a sale's burst of cold starts can exceed it: throttled reads
/// are retried with jitter for up to ~3 s of the init; turn on Parameter
/// Store's higher throughput for large sales (docs/operations.md).
pub async fn ssm_secret(config: &SdkConfig, name: &str) -> PortResult<String> {
    let client = aws_sdk_ssm::Client::new(config);
    let backoff = crate::retry::Backoff {
        attempts: 7,
        first: Duration::from_millis(50),
    };
    let out = crate::retry::transient(backoff, || async {
        client
            .get_parameter()
            .name(name)
            .with_decryption(true)
            .send()
            .await
            .map_err(|e| classify("ssm", e))
    })
    .await?;
    out.parameter
        .and_then(|p| p.value)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            InfraError::permanent(
                "ssm",
                format!("parameter {name} has no value; put the secret there as a SecureString"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_trust_store_is_a_clear_error_not_a_panic() {
        assert!(trust_store_verdict(140, 0).is_ok());
        let err = trust_store_verdict(0, 1).unwrap_err().to_string();
        assert!(err.contains("no CA certificates"), "{err}");
        assert!(err.contains("ca-certificates"), "{err}");
    }
}
