//! Typed errors. Whether a failure is worth retrying is a property of its
//! type: that decides retry (report the SQS record failed), 503, or DLQ.

use thiserror::Error;

/// Input that can never succeed as sent. Always permanent; never a 5xx.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ValidationError {
    #[error("{field} is invalid: it must be {rule}")]
    BadId { field: &'static str, rule: String },
    #[error("quantity is invalid: it must be an integer from 1 to {max}")]
    BadQuantity { max: u32 },
    #[error(
        "delta is invalid: a non-zero integer from -{max} to {max} (units added, or withdrawn when negative)"
    )]
    BadStockDelta { max: i64 },
    #[error("{0}")]
    BadField(String),
    #[error("{0}; such a message is sent to the dead-letter queue untouched")]
    BadMessage(String),
}

/// Retry class of an infrastructure failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Throttling, timeouts, lost connections: the same call may succeed later.
    Transient,
    /// Misconfiguration or a refused call: retrying the same call won't help.
    Permanent,
}

/// A failure talking to Redis, SQS or DynamoDB.
#[derive(Debug, Clone, Error)]
#[error("{service} call failed ({retry:?}): {detail}. {hint}")]
pub struct InfraError {
    pub service: &'static str,
    pub retry: Retry,
    pub detail: String,
    pub hint: &'static str,
}

impl InfraError {
    pub fn transient(service: &'static str, detail: impl Into<String>) -> Self {
        Self {
            service,
            retry: Retry::Transient,
            detail: detail.into(),
            hint: "It is retried; if it persists check that the service is reachable and not throttling.",
        }
    }
    pub fn permanent(service: &'static str, detail: impl Into<String>) -> Self {
        Self {
            service,
            retry: Retry::Permanent,
            detail: detail.into(),
            hint: "Retrying will not help; check the configuration (endpoint, names, permissions).",
        }
    }
    pub fn is_transient(&self) -> bool {
        self.retry == Retry::Transient
    }
}

/// Configuration read from the environment at init.
#[derive(Debug, Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(pub String);
