//! The connection: one per process, connected on first use, replaced when a
//! cluster client stops answering.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{
    Cmd, ErrorKind, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, RedisResult, Value,
};

#[cfg(feature = "node-capacity")]
use super::capacity;
#[cfg(any(test, feature = "sim"))]
use super::sim;
use super::{RedisGate, classify, write};
use crate::error::InfraError;
use crate::ports::PortResult;

/// One connection strategy, created once per process and shared by every
/// invocation: a multiplexed connection manager, or a cluster connection.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection, Arc<Answers>),
    #[cfg(any(test, feature = "sim"))]
    Sim(sim::SimRedis),
    #[cfg(feature = "node-capacity")]
    Limited(Box<Conn>, Arc<capacity::Nodes>),
}

/// Whether a cluster connection still gets answers. redis-rs 1.8's cluster
/// client can deadlock for good: a slot refresh waits for its connection
/// map's write lock while a request it no longer polls holds a read turn
/// (seen when a primary died under load: every call of every slot timed out
/// for the rest of the run). No retry inside that client can help, so a
/// connection that got no answer at all for [`RedisGate::wedged_after`] is
/// replaced by a fresh one, which reads the topology again from the seeds.
pub(super) struct Answers {
    epoch: Instant,
    /// Milliseconds after `epoch` of the first call that got no answer since
    /// the last one that did; 0 while calls are answered.
    silent_since_ms: AtomicU64,
}

impl Answers {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            silent_since_ms: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        // +1: 0 means "answering".
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    fn observe<T>(&self, result: &RedisResult<T>) {
        match result {
            // A reply, even an error reply (MOVED, CLUSTERDOWN), is an answer.
            Err(e)
                if e.is_timeout()
                    || e.is_io_error()
                    || e.is_connection_dropped()
                    || e.kind() == ErrorKind::ClusterConnectionNotFound =>
            {
                let _ = self.silent_since_ms.compare_exchange(
                    0,
                    self.now_ms(),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            _ => self.silent_since_ms.store(0, Ordering::Relaxed),
        }
    }

    fn silent_for(&self) -> Duration {
        match self.silent_since_ms.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            since => Duration::from_millis(self.now_ms().saturating_sub(since)),
        }
    }
}

impl Conn {
    fn silent_for(&self) -> Duration {
        match self {
            Self::Cluster(_, answers) => answers.silent_for(),
            _ => Duration::ZERO,
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c, answers) => Box::pin(async move {
                let result = c.req_packed_command(cmd).await;
                answers.observe(&result);
                result
            }),
            #[cfg(any(test, feature = "sim"))]
            Self::Sim(c) => c.req_packed_command(cmd),
            #[cfg(feature = "node-capacity")]
            Self::Limited(c, nodes) => Box::pin(async move {
                nodes.turn(cmd).await;
                c.req_packed_command(cmd).await
            }),
        }
    }
    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c, answers) => Box::pin(async move {
                let result = c.req_packed_commands(pipeline, offset, count).await;
                answers.observe(&result);
                result
            }),
            #[cfg(any(test, feature = "sim"))]
            Self::Sim(c) => c.req_packed_commands(pipeline, offset, count),
            #[cfg(feature = "node-capacity")]
            Self::Limited(c, _) => c.req_packed_commands(pipeline, offset, count),
        }
    }
    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c, _) => c.get_db(),
            #[cfg(any(test, feature = "sim"))]
            Self::Sim(c) => c.get_db(),
            #[cfg(feature = "node-capacity")]
            Self::Limited(c, _) => c.get_db(),
        }
    }
}

impl RedisGate {
    /// How long a cluster connection may get no answer at all before it is
    /// replaced: several response timeouts, so a failover's own pause (the
    /// client retries within a timeout) does not trigger it.
    pub(super) fn wedged_after(&self) -> Duration {
        self.inner.settings.response_timeout * 4
    }

    pub(super) fn current(&self) -> Option<Conn> {
        let conn = self
            .inner
            .conn
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        conn.clone()
            .filter(|c| c.silent_for() < self.wedged_after())
    }

    pub(super) async fn conn(&self) -> PortResult<Conn> {
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let _one_at_a_time = self.inner.connecting.lock().await;
        if let Some(c) = self.current() {
            return Ok(c);
        }
        if let Some(old) = write(&self.inner.conn).take() {
            tracing::warn!(
                silent_for = ?old.silent_for(),
                "the Redis cluster client got no answer for too long; connecting again from the seed nodes"
            );
            metrics::counter!("flashsale_redis_reconnects_total").increment(1);
        }
        let conn = self.connect().await?;
        *write(&self.inner.conn) = Some(conn.clone());
        Ok(conn)
    }

    pub(super) async fn connect(&self) -> PortResult<Conn> {
        let conn = self.connect_to_redis().await?;
        #[cfg(feature = "node-capacity")]
        if let Some(nodes) = self.inner.nodes.get() {
            return Ok(Conn::Limited(Box::new(conn), nodes.clone()));
        }
        Ok(conn)
    }

    /// Every hash tag's slot limited to a node's script calls a second, for
    /// benchmarks ([`capacity::Nodes`]); set before the first call.
    #[cfg(feature = "node-capacity")]
    pub fn limit_nodes(&self, nodes: Arc<capacity::Nodes>) {
        let _ = self.inner.nodes.set(nodes);
    }

    pub(super) async fn connect_to_redis(&self) -> PortResult<Conn> {
        let s = &self.inner.settings;
        if s.cluster {
            let nodes: Vec<&str> = s.url.split(',').map(str::trim).collect();
            let mut builder = redis::cluster::ClusterClient::builder(nodes)
                .connection_timeout(s.connect_timeout)
                .response_timeout(s.response_timeout);
            if let Some(token) = &s.auth_token {
                builder = builder.password(token.clone());
            }
            let client = builder.build().map_err(classify)?;
            client
                .get_async_connection()
                .await
                .map(|c| Conn::Cluster(c, Answers::new()))
                .map_err(classify)
        } else {
            let bad_url = |e: RedisError| {
                InfraError::permanent(
                    "redis",
                    format!("bad FLASHSALE_REDIS_URL (redis:// or rediss:// for TLS): {e}"),
                )
            };
            let mut info = s.url.as_str().into_connection_info().map_err(bad_url)?;
            if let Some(token) = &s.auth_token {
                let settings = info.redis_settings().clone().set_password(token);
                info = info.set_redis_settings(settings);
            }
            let client = redis::Client::open(info).map_err(bad_url)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(s.connect_timeout))
                .set_response_timeout(Some(s.response_timeout))
                .set_number_of_retries(1);
            ConnectionManager::new_with_config(client, config)
                .await
                .map(Conn::Single)
                .map_err(classify)
        }
    }

    /// Connects and loads the buy path's scripts now (at init), so a fresh
    /// instance's first buyer does not pay the handshake and a NOSCRIPT
    /// round trip. Optional: every call connects on first use anyway.
    pub async fn prepare(&self) -> PortResult<()> {
        let mut c = self.conn().await?;
        for script in [&self.inner.scripts.admit, &self.inner.scripts.mark_sent] {
            script.load_async(&mut c).await.map_err(classify)?;
        }
        Ok(())
    }
}
