//! Configuration from the environment, read once at init.

use std::time::Duration;

use crate::domain::{RateLimit, RateLimits};
use crate::error::ConfigError;
use crate::redis::RedisSettings;
use crate::redis::keys::DEFAULT_NAMESPACE;

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn flag(name: &str) -> bool {
    matches!(var(name).as_deref(), Some("1" | "true" | "yes"))
}

fn required(name: &str) -> Result<String, ConfigError> {
    var(name).ok_or_else(|| {
        ConfigError(format!(
            "{name} is not set; set it in the function's environment"
        ))
    })
}

fn millis(name: &str, default: u64) -> Result<Duration, ConfigError> {
    match var(name) {
        None => Ok(Duration::from_millis(default)),
        Some(v) => v
            .parse()
            .map(Duration::from_millis)
            .map_err(|_| ConfigError(format!("{name}={v} is not a number of milliseconds"))),
    }
}

pub fn redis_settings() -> Result<RedisSettings, ConfigError> {
    Ok(RedisSettings {
        url: var("FLASHSALE_REDIS_URL").unwrap_or_else(|| "redis://127.0.0.1:6379".into()),
        cluster: flag("FLASHSALE_REDIS_CLUSTER"),
        namespace: redis_namespace()?,
        auth_token: Secret::RedisAuthToken.from_env(),
        response_timeout: millis("FLASHSALE_REDIS_TIMEOUT_MS", 500)?,
        connect_timeout: millis("FLASHSALE_REDIS_CONNECT_TIMEOUT_MS", 1000)?,
        rate_limits: rate_limits()?,
    })
}

/// The deployment's request limits per buyer and per client IP, each
/// `"<per second>/<burst>"` or `"off"`; a sale's own override them.
pub fn rate_limits() -> Result<RateLimits, ConfigError> {
    let limit = |name: &str, default: &str| {
        RateLimit::parse(&var(name).unwrap_or_else(|| default.into()))
            .map_err(|e| ConfigError(format!("{name}: {e}")))
    };
    Ok(RateLimits {
        buyer: limit("FLASHSALE_BUYER_RATE_LIMIT", DEFAULT_BUYER_RATE_LIMIT)?,
        ip: limit("FLASHSALE_IP_RATE_LIMIT", DEFAULT_IP_RATE_LIMIT)?,
    })
}

/// A buyer presses "buy" and retries a few times; a script does not stop.
pub const DEFAULT_BUYER_RATE_LIMIT: &str = "2/5";
/// Many buyers can share one address (carrier NAT, offices).
pub const DEFAULT_IP_RATE_LIMIT: &str = "20/50";

pub fn table_name() -> String {
    var("FLASHSALE_TABLE").unwrap_or_else(|| "flashsale".into())
}

pub fn orders_queue_url() -> Result<String, ConfigError> {
    required("FLASHSALE_ORDERS_QUEUE_URL")
}

/// The orders DLQ, which the compensation function consumes.
pub fn orders_dlq_url() -> Result<String, ConfigError> {
    required("FLASHSALE_ORDERS_DLQ_URL")
}

/// The parking lot: compensations that failed too often.
pub fn compensation_dlq_url() -> Result<String, ConfigError> {
    required("FLASHSALE_COMPENSATION_DLQ_URL")
}

/// Local runner and tests only: trust the body's `user_id` (and the status
/// endpoint's `?user_id=`) instead of the JWT authorizer's `sub` claim.
pub fn insecure_user_from_body() -> bool {
    flag("FLASHSALE_INSECURE_USER_FROM_BODY")
}

/// Shorter admin tokens are refused at start: they can be guessed.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// The admin token; unset means the admin API refuses everything.
pub fn admin_token() -> Result<Option<String>, ConfigError> {
    admin_token_of(Secret::AdminToken.from_env())
}

pub fn admin_token_of(value: Option<String>) -> Result<Option<String>, ConfigError> {
    match value {
        Some(t) if t.len() < MIN_ADMIN_TOKEN_LEN => Err(ConfigError(format!(
            "FLASHSALE_ADMIN_TOKEN is {} characters; use at least {MIN_ADMIN_TOKEN_LEN} (e.g. openssl rand -hex 24)",
            t.len()
        ))),
        other => Ok(other),
    }
}

/// A secret, as the environment gives it: in AWS the name of an SSM
/// Parameter Store SecureString (`<VAR>_PARAM`, read at init by
/// [`crate::wiring::Wiring`]), locally the value itself (`<VAR>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secret {
    AdminToken,
    PaymentWebhookSecret,
    RedisAuthToken,
    /// The header value the optional CloudFront edge adds to every request
    /// it forwards; a function that has it refuses requests without it.
    EdgeOriginSecret,
    /// The waiting room's signing keys ([`room_keys_of`]).
    RoomKeys,
}

impl Secret {
    pub const ALL: [Self; 5] = [
        Self::AdminToken,
        Self::PaymentWebhookSecret,
        Self::RedisAuthToken,
        Self::EdgeOriginSecret,
        Self::RoomKeys,
    ];
    /// The variable holding the value.
    pub fn var(self) -> &'static str {
        match self {
            Self::AdminToken => "FLASHSALE_ADMIN_TOKEN",
            Self::PaymentWebhookSecret => "FLASHSALE_PAYMENT_WEBHOOK_SECRET",
            Self::RedisAuthToken => "FLASHSALE_REDIS_AUTH_TOKEN",
            Self::EdgeOriginSecret => "FLASHSALE_EDGE_ORIGIN_SECRET",
            Self::RoomKeys => "FLASHSALE_ROOM_KEYS",
        }
    }
    /// The variable naming its SSM parameter.
    pub fn param_var(self) -> &'static str {
        match self {
            Self::AdminToken => "FLASHSALE_ADMIN_TOKEN_PARAM",
            Self::PaymentWebhookSecret => "FLASHSALE_PAYMENT_WEBHOOK_SECRET_PARAM",
            Self::RedisAuthToken => "FLASHSALE_REDIS_AUTH_TOKEN_PARAM",
            Self::EdgeOriginSecret => "FLASHSALE_EDGE_ORIGIN_SECRET_PARAM",
            Self::RoomKeys => "FLASHSALE_ROOM_KEYS_PARAM",
        }
    }
    /// The SSM parameter to read, when one is named.
    pub fn parameter(self) -> Option<String> {
        var(self.param_var())
    }
    /// The value from the environment (local runs and tests).
    pub fn from_env(self) -> Option<String> {
        var(self.var())
    }
}

/// The payment provider's webhook signing secret; required by the webhook.
pub fn payment_webhook_secret() -> Result<Vec<u8>, ConfigError> {
    payment_webhook_secret_of(Secret::PaymentWebhookSecret.from_env())
}

pub fn payment_webhook_secret_of(value: Option<String>) -> Result<Vec<u8>, ConfigError> {
    let secret = value.ok_or_else(|| {
        ConfigError(
            "FLASHSALE_PAYMENT_WEBHOOK_SECRET (or FLASHSALE_PAYMENT_WEBHOOK_SECRET_PARAM, an SSM SecureString) is not set; set it to the provider's signing secret".into(),
        )
    })?;
    if secret.len() < MIN_ADMIN_TOKEN_LEN {
        return Err(ConfigError(format!(
            "FLASHSALE_PAYMENT_WEBHOOK_SECRET is {} characters; use the provider's signing secret (at least {MIN_ADMIN_TOKEN_LEN})",
            secret.len()
        )));
    }
    Ok(secret.into_bytes())
}

/// The expirer's batch: orders read from the due index per query.
pub fn expiry_batch() -> Result<usize, ConfigError> {
    match var("FLASHSALE_EXPIRY_BATCH") {
        None => Ok(100),
        Some(v) => v
            .parse()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| ConfigError(format!("FLASHSALE_EXPIRY_BATCH={v} must be 1-1000"))),
    }
}

/// The local runner's expirer timer (EventBridge's schedule in AWS).
pub fn expire_every() -> Result<Duration, ConfigError> {
    millis("FLASHSALE_EXPIRE_EVERY_MS", 60_000)
}

/// How many records of one SQS batch are processed at once.
pub fn consumer_concurrency() -> Result<usize, ConfigError> {
    match var("FLASHSALE_CONSUMER_CONCURRENCY") {
        None => Ok(10),
        Some(v) => v.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
            ConfigError(format!(
                "FLASHSALE_CONSUMER_CONCURRENCY={v} must be a positive integer"
            ))
        }),
    }
}

/// How long a request may stay pending before the sweeper re-publishes it.
pub fn sweep_after() -> Result<Duration, ConfigError> {
    millis("FLASHSALE_SWEEP_AFTER_MS", 60_000)
}

/// How long after its last send a pending request is re-sent: beyond the
/// orders queue's visibility timeout x maxReceiveCount (template: 200 s x 5).
pub fn resend_after() -> Result<Duration, ConfigError> {
    millis("FLASHSALE_RESEND_AFTER_MS", 1_200_000)
}

/// The local runner's sweeper timer (EventBridge's schedule in AWS).
pub fn sweep_every() -> Result<Duration, ConfigError> {
    millis("FLASHSALE_SWEEP_EVERY_MS", 60_000)
}

fn redis_namespace() -> Result<String, ConfigError> {
    let ns = var("FLASHSALE_REDIS_NAMESPACE").unwrap_or_else(|| DEFAULT_NAMESPACE.into());
    let ok = ns.len() <= 32
        && ns
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(ns)
    } else {
        Err(ConfigError(format!(
            "FLASHSALE_REDIS_NAMESPACE={ns} must be 1-32 characters of A-Z a-z 0-9 _ -"
        )))
    }
}

/// How long one instance answers 410 from memory after Redis said sold out
/// (`FLASHSALE_SOLD_OUT_CACHE_MS`, default 1000; 0 turns it off).
pub fn sold_out_cache() -> Result<Duration, ConfigError> {
    millis("FLASHSALE_SOLD_OUT_CACHE_MS", 1000)
}

/// How often one deduct instance reads the list of live products, at most
/// and only when asked for an id it lacks (`FLASHSALE_LIVE_PRODUCTS_MS`,
/// default 1000; 0 reads it on every such miss: DynamoDB queries, never a
/// Redis call). A product created within it after a read may be answered
/// 404 `unknown_product` until the next.
pub fn live_products() -> Result<Duration, ConfigError> {
    millis("FLASHSALE_LIVE_PRODUCTS_MS", 1000)
}

/// How stale one deduct instance's copy of the kill switch may be
/// (`FLASHSALE_KILL_SWITCH_CACHE_MS`, default 500; 0 reads it every request).
pub fn kill_switch_cache() -> Result<Duration, ConfigError> {
    millis("FLASHSALE_KILL_SWITCH_CACHE_MS", 500)
}

/// How long a function's init may spend connecting to Redis and warming
/// its SDK clients (`FLASHSALE_INIT_WARM_MS`, default 1500; 0 skips it and
/// everything connects on first use). Past it the function starts anyway.
pub fn init_warm() -> Result<Duration, ConfigError> {
    millis("FLASHSALE_INIT_WARM_MS", 1500)
}

/// One in how many refusals deduct logs (`FLASHSALE_REFUSAL_LOG_EVERY`,
/// default 100; 1 logs every one, e.g. while investigating). Metrics count
/// them all either way.
pub fn refusal_log_every() -> Result<u64, ConfigError> {
    match var("FLASHSALE_REFUSAL_LOG_EVERY") {
        None => Ok(100),
        Some(v) => v.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
            ConfigError(format!(
                "FLASHSALE_REFUSAL_LOG_EVERY={v} must be a whole number of at least 1"
            ))
        }),
    }
}

/// The edge's KeyValueStore (`FLASHSALE_KVS_ARN`), written by the edge
/// publisher.
pub fn kvs_arn() -> Result<String, ConfigError> {
    required("FLASHSALE_KVS_ARN")
}

/// Another endpoint for that store's API (`FLASHSALE_KVS_ENDPOINT`: the
/// local store, tools::kvs); unset in AWS.
pub fn kvs_endpoint() -> Option<String> {
    var("FLASHSALE_KVS_ENDPOINT")
}

/// How often the edge publisher reads the sales and writes what changed
/// (`FLASHSALE_EDGE_PUBLISH_MS`, default 500): with the store's propagation
/// it bounds how long the edge can be behind the shelf.
pub fn edge_publish_every() -> Result<Duration, ConfigError> {
    millis("FLASHSALE_EDGE_PUBLISH_MS", 500)
}

/// The waiting room a sale created with `"waiting_room": {}` gets: each
/// `FLASHSALE_ROOM_*` variable (the template's `Room*` parameters) or its
/// default; a sale's own settings override them.
pub fn room_defaults() -> Result<crate::room::WaitingRoom, ConfigError> {
    let number = |name: &str, default: u32| match var(name) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| ConfigError(format!("{name}={v} is not a whole number"))),
    };
    let d = crate::room::WaitingRoom::DEFAULT;
    let room = crate::room::WaitingRoom {
        early_window_secs: number("FLASHSALE_ROOM_EARLY_WINDOW_SECS", d.early_window_secs)?,
        start_rate: number("FLASHSALE_ROOM_START_RATE", d.start_rate)?,
        ceiling: number("FLASHSALE_ROOM_CEILING", d.ceiling)?,
        admission_secs: number("FLASHSALE_ROOM_ADMISSION_SECS", d.admission_secs)?,
        paused: false,
    };
    room.validate()
        .map_err(|e| ConfigError(format!("FLASHSALE_ROOM_*: {e}")))?;
    Ok(room)
}

/// Entries per second the origin takes for any one sale's waiting room
/// (`FLASHSALE_ROOM_CAPACITY`: the share of API Gateway's quota its buys
/// may use, over the buys an entry makes; sales running at once each get
/// it, so split it between them); unset, each sale's ceiling alone bounds
/// its inlet.
pub fn room_capacity() -> Result<Option<f64>, ConfigError> {
    var("FLASHSALE_ROOM_CAPACITY")
        .map(|v| match v.parse::<f64>() {
            Ok(c) if c >= 1.0 && c.is_finite() => Ok(c),
            _ => Err(ConfigError(format!(
                "FLASHSALE_ROOM_CAPACITY={v} is not a number of entries per second (1 or more)"
            ))),
        })
        .transpose()
}

/// The waiting room's signing keys (`FLASHSALE_ROOM_KEYS`, or the SSM
/// SecureString `FLASHSALE_ROOM_KEYS_PARAM` names: `"<id>:<secret>,..."`,
/// the current key first); none when unset, and then a product with a room
/// answers its buys 503 (no admission can be checked).
pub fn room_keys_of(value: Option<String>) -> Result<Vec<crate::room::Key>, ConfigError> {
    match value {
        None => Ok(Vec::new()),
        Some(v) => crate::room::parse_keys(&v)
            .map_err(|e| ConfigError(format!("FLASHSALE_ROOM_KEYS: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hole 12: a guessable admin token refuses to start.
    #[test]
    fn short_admin_tokens_are_refused() {
        assert!(admin_token_of(Some("s3cret".into())).is_err());
        assert_eq!(admin_token_of(None).unwrap(), None);
        let ok = "0123456789abcdef".to_owned();
        assert_eq!(admin_token_of(Some(ok.clone())).unwrap(), Some(ok));
    }
}
