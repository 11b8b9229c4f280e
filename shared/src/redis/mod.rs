//! The Redis adapter of the gate ports ([`AdmissionGate`](crate::ports::AdmissionGate),
//! [`ShelfGate`](crate::ports::ShelfGate), [`ControlGate`](crate::ports::ControlGate),
//! [`SaleGate`](crate::ports::SaleGate)), a file per port: the Lua scripts
//! next to these files hold the rules; the Rust only builds keys, passes
//! arguments and maps results. The gate itself (its settings, scripts and
//! shared state) lives here; the connection in `conn`, bucket routing in
//! `routing`, moves between buckets in `transfers`.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::{Cmd, RedisError, Script};
use tokio::sync::Mutex;

use crate::domain::{ProductId, RateLimits};
use crate::error::InfraError;
use crate::ports::PortResult;

mod admission;
#[cfg(feature = "node-capacity")]
pub mod capacity;
mod conn;
mod controls;
pub mod keys;
mod room;
mod routing;
mod sale;
mod shelf;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
mod transfers;

use conn::Conn;
pub use routing::{BucketCounts, buckets_from};
pub use transfers::Want;

/// The admission script, for benchmarks that run it outside the adapter.
pub const ADMIT_SCRIPT: &str = include_str!("admit.lua");

/// How long request state lives: it is what makes settle and restock
/// idempotent, so it must outlive the longest a message can still arrive
/// (orders queue + DLQ + parking-lot retention; tools/tests/template.rs
/// checks the template against it). The buyers hash has no TTL.
pub const STATE_TTL_SECS: u64 = 35 * 24 * 3600;

#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://host:port` (or a comma-separated seed list in cluster mode).
    pub url: String,
    pub cluster: bool,
    /// Key namespace (`FLASHSALE_REDIS_NAMESPACE`, default `fs`).
    pub namespace: String,
    /// ElastiCache AUTH token, kept out of the URL (`FLASHSALE_REDIS_AUTH_TOKEN`).
    pub auth_token: Option<String>,
    pub response_timeout: Duration,
    pub connect_timeout: Duration,
    /// The deployment's request limits; a sale's own win (admit.lua).
    pub rate_limits: RateLimits,
}

struct Scripts {
    admit: Script,
    settle: Script,
    restock: Script,
    release: Script,
    warm: Script,
    resync: Script,
    mark_sent: Script,
    controls: Script,
    kill_switch: Script,
    stock_change: Script,
    lend: Script,
    receive: Script,
    finish: Script,
    adjust: Script,
    restore: Script,
    redeem: Script,
    seen: Script,
}

/// Cheap to clone: clones share one connection and the loaded scripts.
#[derive(Clone)]
pub struct RedisGate {
    inner: Arc<Inner>,
}

struct Inner {
    settings: RedisSettings,
    // Connected on first use: a Redis outage at cold start then answers 503
    // (fail closed) instead of crashing the init phase. Replaced when it
    // stops answering (see `Answers`).
    conn: RwLock<Option<Conn>>,
    connecting: Mutex<()>,
    scripts: Scripts,
    /// Each product's stock buckets, learnt from its bucket 0's meta: fixed
    /// at creation, so never stale once known.
    buckets: std::sync::Mutex<HashMap<ProductId, u16>>,
    bucket_counts: std::sync::OnceLock<Box<BucketCounts>>,
    /// Makes every transfer between buckets a fresh id: a retry of a
    /// request or a change must ask its siblings again, not read the
    /// answer a finished transfer left (random per process; 0 simulated).
    transfers: AtomicU64,
    #[cfg(feature = "node-capacity")]
    nodes: std::sync::OnceLock<Arc<capacity::Nodes>>,
}

fn classify(err: RedisError) -> InfraError {
    use redis::RetryMethod;
    let transient = err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_cluster_error()
        || !matches!(err.retry_method(), RetryMethod::NoRetry);
    if transient {
        InfraError::transient("redis", err.to_string())
    } else {
        InfraError::permanent("redis", err.to_string())
    }
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn unexpected(what: &str) -> InfraError {
    InfraError::permanent("redis", format!("unexpected reply from the {what} script"))
}

impl RedisGate {
    pub fn new(settings: RedisSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                conn: RwLock::new(None),
                connecting: Mutex::new(()),
                scripts: Scripts {
                    admit: Script::new(ADMIT_SCRIPT),
                    settle: Script::new(include_str!("settle.lua")),
                    restock: Script::new(include_str!("restock.lua")),
                    release: Script::new(include_str!("release.lua")),
                    warm: Script::new(include_str!("warm.lua")),
                    resync: Script::new(include_str!("resync.lua")),
                    mark_sent: Script::new(include_str!("mark_sent.lua")),
                    controls: Script::new(include_str!("controls.lua")),
                    kill_switch: Script::new(include_str!("kill_switch.lua")),
                    stock_change: Script::new(include_str!("stock_change.lua")),
                    lend: Script::new(include_str!("lend.lua")),
                    receive: Script::new(include_str!("receive.lua")),
                    finish: Script::new(include_str!("finish.lua")),
                    adjust: Script::new(include_str!("adjust.lua")),
                    restore: Script::new(include_str!("restore.lua")),
                    redeem: Script::new(include_str!("redeem.lua")),
                    seen: Script::new(include_str!("seen.lua")),
                },
                buckets: std::sync::Mutex::new(HashMap::new()),
                bucket_counts: std::sync::OnceLock::new(),
                transfers: AtomicU64::new(uuid::Uuid::new_v4().as_u64_pair().0 >> 16),
                #[cfg(feature = "node-capacity")]
                nodes: std::sync::OnceLock::new(),
            }),
        }
    }

    /// This gate over a simulated Redis (deterministic simulations).
    #[cfg(any(test, feature = "sim"))]
    pub fn simulated(redis: sim::SimRedis, namespace: &str) -> Self {
        let gate = Self::new(RedisSettings {
            url: "sim://".into(),
            cluster: false,
            namespace: namespace.into(),
            auth_token: None,
            response_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            rate_limits: RateLimits::default(),
        });
        *write(&gate.inner.conn) = Some(Conn::Sim(redis));
        // A seed replays exactly.
        gate.inner
            .transfers
            .store(0, std::sync::atomic::Ordering::Relaxed);
        gate
    }

    /// The key layout of one product in this gate's namespace.
    pub fn keys(&self, product: &ProductId) -> keys::Keys {
        keys::Keys::new(&self.inner.settings.namespace, product)
    }

    /// The key layout of one of the product's stock buckets.
    pub fn bucket_keys(&self, product: &ProductId, bucket: u16) -> keys::Keys {
        keys::Keys::bucket(&self.inner.settings.namespace, product, bucket)
    }

    /// A raw connection for tools (audits, demo set-up); not used by handlers.
    pub async fn command<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> PortResult<T> {
        let mut c = self.conn().await?;
        cmd.query_async(&mut c).await.map_err(classify)
    }
}
