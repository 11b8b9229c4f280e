//! The Redis adapter of [`StockGate`](crate::ports::StockGate): the Lua scripts next to this file hold
//! the rules; this module only builds keys, passes arguments and maps results.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{
    Cmd, ErrorKind, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, RedisResult, Script,
    Value,
};
use tokio::sync::Mutex;

use crate::domain::{
    Admission, AuditEntry, IdempotencyKey, KillSwitch, OrderMessage, OrderStatus, Product,
    ProductId, ProductStats, Purchase, Quantity, RateLimit, RateLimits, Refusal, RequestId,
    RequestView, StockChange, UserId, from_unix_ms, unix_ms,
};
use crate::error::InfraError;
use crate::ports::{
    AdmissionGate, ControlGate, PendingPage, PendingRequest, PortResult, SaleGate, SendMark,
    Settled, ShelfChange, ShelfGate, ShelfStep, Warm,
};

#[cfg(feature = "node-capacity")]
pub mod capacity;
pub mod keys;
#[cfg(feature = "sim")]
pub mod sim;

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

/// One connection strategy, created once per process and shared by every
/// invocation: a multiplexed connection manager, or a cluster connection.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection, Arc<Answers>),
    #[cfg(feature = "sim")]
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
struct Answers {
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
            #[cfg(feature = "sim")]
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
            #[cfg(feature = "sim")]
            Self::Sim(c) => c.req_packed_commands(pipeline, offset, count),
            #[cfg(feature = "node-capacity")]
            Self::Limited(c, _) => c.req_packed_commands(pipeline, offset, count),
        }
    }
    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c, _) => c.get_db(),
            #[cfg(feature = "sim")]
            Self::Sim(c) => c.get_db(),
            #[cfg(feature = "node-capacity")]
            Self::Limited(c, _) => c.get_db(),
        }
    }
}

/// One stock bucket's figures as read ([`RedisGate::bucket_read`]).
struct BucketRead {
    /// `stock_left`: its own shelf, without the units it lent.
    stats: ProductStats,
    /// Its sale's start (ms).
    starts_at_ms: i64,
    /// Units it lent plus units it received, ever: moves between buckets.
    moved: i64,
    /// Its transfers lent and not finished.
    lent: Vec<crate::buckets::Transfer>,
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

/// A product's stock buckets as the catalogue records them (None: no such
/// product), for [`RedisGate::count_buckets_with`].
pub type BucketCounts = dyn Fn(ProductId) -> std::pin::Pin<Box<dyn Future<Output = PortResult<Option<u16>>> + Send>>
    + Send
    + Sync;

/// [`BucketCounts`] from the catalogue's products.
pub fn buckets_from<S: crate::ports::Catalogue + Clone + 'static>(store: S) -> Box<BucketCounts> {
    Box::new(move |product| {
        let store = store.clone();
        Box::pin(async move {
            let found = store.product(&product).await.map_err(|e| {
                InfraError::transient(
                    "redis",
                    format!("the stock buckets of {product} are unknown: its bucket 0's meta is gone from Redis (a failover?) and DynamoDB's product could not be read ({e}); retry, and re-warm the product if this lasts"),
                )
            })?;
            Ok(found.map(|p| p.stock_buckets))
        })
    })
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
    #[cfg(feature = "sim")]
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
        gate.inner.transfers.store(0, Ordering::Relaxed);
        gate
    }

    /// How long a cluster connection may get no answer at all before it is
    /// replaced: several response timeouts, so a failover's own pause (the
    /// client retries within a timeout) does not trigger it.
    fn wedged_after(&self) -> Duration {
        self.inner.settings.response_timeout * 4
    }

    fn current(&self) -> Option<Conn> {
        let conn = self
            .inner
            .conn
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        conn.clone()
            .filter(|c| c.silent_for() < self.wedged_after())
    }

    async fn conn(&self) -> PortResult<Conn> {
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

    async fn connect(&self) -> PortResult<Conn> {
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

    async fn connect_to_redis(&self) -> PortResult<Conn> {
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

    /// The key layout of one product in this gate's namespace.
    pub fn keys(&self, product: &ProductId) -> keys::Keys {
        keys::Keys::new(&self.inner.settings.namespace, product)
    }

    /// How many stock buckets `product` has: its bucket 0's meta says (1
    /// when it does not name any), read once per process. Not remembered
    /// while that meta is missing (not warmed, or lost in a failover).
    /// Meta missing, the count comes from DynamoDB's product where the gate
    /// was given it ([`Self::count_buckets_with`]), and a failed read is an
    /// error (a guess could route a buyer's records to another bucket).
    pub async fn buckets(&self, product: &ProductId) -> PortResult<u16> {
        if let Some(k) = self.meta_buckets(product).await? {
            return Ok(k);
        }
        let Some(source) = self.inner.bucket_counts.get() else {
            return Ok(1);
        };
        let Some(k) = source(product.clone()).await? else {
            // No such product: nothing to route.
            return Ok(1);
        };
        let k = k.clamp(1, crate::buckets::MAX_BUCKETS);
        self.known_buckets().insert(product.clone(), k);
        Ok(k)
    }

    /// Where [`Self::buckets`] reads a product's stock buckets when its
    /// bucket 0's meta is missing (a failover forgot it): the catalogue.
    /// Set once, at wiring.
    pub fn count_buckets_with(&self, source: Box<BucketCounts>) {
        let _ = self.inner.bucket_counts.set(source);
    }

    /// The product's stock buckets as known here or as its bucket 0's meta
    /// says (1 when that names none); None while that meta is missing.
    async fn meta_buckets(&self, product: &ProductId) -> PortResult<Option<u16>> {
        let known = self.known_buckets().get(product).copied();
        if let Some(k) = known {
            return Ok(Some(k));
        }
        let mut c = self.conn().await?;
        let (limit, buckets): (Option<String>, Option<u16>) = redis::cmd("HMGET")
            .arg(self.keys(product).meta())
            .arg("limit")
            .arg("buckets")
            .query_async(&mut c)
            .await
            .map_err(classify)?;
        if limit.is_none() {
            return Ok(None);
        }
        let k = buckets.unwrap_or(1).clamp(1, crate::buckets::MAX_BUCKETS);
        self.known_buckets().insert(product.clone(), k);
        Ok(Some(k))
    }

    fn known_buckets(&self) -> std::sync::MutexGuard<'_, HashMap<ProductId, u16>> {
        self.inner
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One run of the admission script in bucket `bucket`.
    async fn admit_in(
        &self,
        p: &Purchase,
        bucket: u16,
        limits_charged: bool,
    ) -> PortResult<Admission> {
        let k = self.bucket_keys(&p.product_id, bucket);
        let mut c = self.conn().await?;
        let reply: Vec<String> = self
            .inner
            .scripts
            .admit
            .key(&k.admission(p)[..])
            .arg(p.request_id.as_str())
            .arg(p.user_id.as_str())
            .arg(p.quantity.get())
            .arg(if p.idempotency_key.is_some() {
                "1"
            } else {
                "0"
            })
            .arg(STATE_TTL_SECS)
            .arg(RateLimit::spec(self.inner.settings.rate_limits.buyer))
            .arg(RateLimit::spec(self.inner.settings.rate_limits.ip))
            .arg(if p.client_ip.is_some() { "1" } else { "0" })
            .arg(if limits_charged { "1" } else { "0" })
            .invoke_async(&mut c)
            .await
            .map_err(classify)?;
        let part = |i: usize| reply.get(i).map_or("", String::as_str);
        let number = |i: usize| part(i).parse::<i64>().map_err(|_| unexpected("admission"));
        match part(0) {
            "admitted" => Ok(Admission::Admitted {
                admitted_at_ms: number(1)?,
                sale_ends_at_ms: number(2)?,
            }),
            "replay" => Ok(Admission::Replay {
                admitted_at_ms: number(1)?,
                sale_ends_at_ms: number(2)?,
                status: OrderStatus::parse(part(3)).ok_or_else(|| unexpected("admission"))?,
                sent: part(4) == "1",
            }),
            "short" => Ok(Admission::Short {
                stock_left: number(1)?,
            }),
            "throttled" => Ok(Admission::Throttled {
                retry_after_ms: number(1)?,
            }),
            other => Refusal::from_code(other)
                .map(Admission::Refused)
                .ok_or_else(|| unexpected("admission")),
        }
    }

    /// The keys of the stock bucket holding `user`'s records.
    async fn buyer_keys(&self, product: &ProductId, user: &str) -> PortResult<keys::Keys> {
        let k = self.buckets(product).await?;
        Ok(self.bucket_keys(product, crate::buckets::bucket_of(user, k)))
    }

    /// One stock bucket's figures (its `stock_left` without the units it
    /// lent); None when its meta is missing.
    async fn bucket_read(
        &self,
        product: &ProductId,
        bucket: u16,
    ) -> PortResult<Option<BucketRead>> {
        let k = self.bucket_keys(product, bucket);
        let mut c = self.conn().await?;
        #[allow(clippy::type_complexity)]
        let (moves, meta, left, counters, pending, lent): (
            Vec<Option<i64>>,
            Vec<Option<i64>>,
            Option<i64>,
            Vec<Option<i64>>,
            i64,
            Vec<(String, String)>,
        ) = redis::pipe()
            // The moves before the shelf: a transfer landing between the
            // two reads shows as a move the resync's second read counts.
            .hmget(k.stats(), &["lent_units", "received_units"])
            .hmget(k.meta(), &["stock_total", "ends_at", "starts_at"])
            .get(k.stock())
            .hmget(
                k.stats(),
                &[
                    "admitted",
                    "placed",
                    "rejected",
                    "compensated",
                    "restocked",
                    "pending_units",
                    "placed_units",
                    "withdrawing",
                    "withdrawn_units",
                    "released_units",
                    "added_units",
                    "adopted_units",
                ],
            )
            .zcard(k.pending())
            .hgetall(k.transfers())
            .query_async(&mut c)
            .await
            .map_err(classify)?;
        let Some(stock_total) = meta.first().copied().flatten() else {
            return Ok(None);
        };
        let n = |i: usize| counters.get(i).copied().flatten().unwrap_or(0);
        let stats = ProductStats {
            stock_total,
            stock_left: left.unwrap_or(0),
            admitted: n(0),
            placed: n(1),
            rejected: n(2),
            compensated: n(3),
            restocked: n(4),
            pending_units: n(5),
            placed_units: n(6),
            withdrawing: n(7),
            withdrawn_units: n(8),
            returned_units: n(9) + n(10) + n(11),
            pending,
            ends_at_ms: meta.get(1).copied().flatten().unwrap_or(0),
        };
        let moved = moves.iter().map(|m| m.unwrap_or(0)).sum();
        Ok(Some(BucketRead {
            stats,
            starts_at_ms: meta.get(2).copied().flatten().unwrap_or(0),
            moved,
            lent: lent
                .iter()
                .filter_map(|(id, r)| crate::buckets::Transfer::parse(id, r))
                .collect(),
        }))
    }

    /// Every stock bucket's figures, in order; None when bucket 0's meta is
    /// missing, and a bucket whose meta is missing is left out.
    async fn bucket_reads(
        &self,
        product: &ProductId,
    ) -> PortResult<Option<Vec<(u16, BucketRead)>>> {
        let k = self.buckets(product).await?;
        let Some(first) = self.bucket_read(product, 0).await? else {
            return Ok(None);
        };
        let mut reads = vec![(0, first)];
        for b in 1..k {
            if let Some(r) = self.bucket_read(product, b).await? {
                reads.push((b, r));
            }
        }
        Ok(Some(reads))
    }

    /// The units of `reads`' lent transfers their borrowers have not
    /// received (at the time of this call): the shelf's, in transit.
    async fn in_transit(
        &self,
        product: &ProductId,
        reads: &[(u16, BucketRead)],
    ) -> PortResult<i64> {
        let lent: Vec<&crate::buckets::Transfer> =
            reads.iter().flat_map(|(_, r)| &r.lent).collect();
        if lent.is_empty() {
            return Ok(0);
        }
        let mut c = self.conn().await?;
        let mut units = 0;
        for t in lent {
            let received: bool = redis::cmd("EXISTS")
                .arg(self.bucket_keys(product, t.to).received(&t.id))
                .query_async(&mut c)
                .await
                .map_err(classify)?;
            if !received {
                units += t.units;
            }
        }
        Ok(units)
    }

    /// The bucketed resync ([`crate::buckets::correction`]): every bucket
    /// read, the units in transit, then every bucket's moves and fence again
    /// (the moves in between widen the band; a fence or a move count gone
    /// back is a failover: busy); the correction spread over the buckets by
    /// adjust.lua, each refusing if its bucket went back since its read.
    async fn resync_buckets(
        &self,
        product: &ProductId,
        ledger: &crate::domain::Ledger,
        fence_seen: i64,
    ) -> PortResult<Option<i64>> {
        let k = self.buckets(product).await?;
        let Some(reads) = self.bucket_reads(product).await? else {
            return Ok(None);
        };
        // A bucket not warmed (or forgotten in a failover) holds figures
        // nobody can read: nothing is corrected until a warm-up sets it.
        if reads.len() != usize::from(k) {
            tracing::warn!(product_id = %product, buckets = k, warmed = reads.len(), "a stock bucket has no meta (a failover forgot it?): the shelf is not resynced until POST /api/admin/products/{{id}}/warm restores it");
            return Ok(None);
        }
        let in_transit = self.in_transit(product, &reads).await?;
        let mut c = self.conn().await?;
        let mut unsure = 0;
        let mut moves = Vec::with_capacity(reads.len());
        for (b, r) in &reads {
            let n: Vec<Option<i64>> = redis::cmd("HMGET")
                .arg(self.bucket_keys(product, *b).stats())
                .arg(&[
                    "lent_units",
                    "received_units",
                    "placed_units",
                    "withdrawn_units",
                ])
                .query_async(&mut c)
                .await
                .map_err(classify)?;
            let n = |i: usize| n.get(i).copied().flatten().unwrap_or(0);
            let (moved, fence) = (n(0) + n(1), n(2) + n(3));
            if moved < r.moved || fence < r.stats.fence() {
                return Ok(None);
            }
            unsure += moved - r.moved;
            moves.push(moved);
        }
        let figures: Vec<crate::buckets::Figures> = reads
            .iter()
            .map(|(_, r)| crate::buckets::Figures {
                shelf: r.stats.stock_left,
                pending_units: r.stats.pending_units,
                withdrawing: r.stats.withdrawing,
                fence: r.stats.fence(),
                put_back: r.stats.returned_units,
            })
            .collect();
        let Some(fix) =
            crate::buckets::correction(ledger, fence_seen, &figures, in_transit, unsure)
        else {
            return Ok(None);
        };
        let shelves: Vec<i64> = figures.iter().map(|f| f.shelf).collect();
        let parts = crate::buckets::spread(fix.delta, &shelves);
        let mut applied = 0;
        let mut adopt = fix.adopted;
        for (((b, r), part), moved) in reads.iter().zip(parts).zip(moves) {
            if part == 0 && adopt == 0 {
                continue;
            }
            let k = self.bucket_keys(product, *b);
            let (code, moved): (String, i64) = self
                .inner
                .scripts
                .adjust
                .key(k.stock())
                .key(k.stats())
                .arg(part)
                .arg(r.stats.fence())
                .arg(adopt)
                .arg(moved)
                .invoke_async(&mut c)
                .await
                .map_err(classify)?;
            if code == "synced" {
                applied += moved;
                adopt = 0;
            }
        }
        Ok(Some(applied))
    }

    /// One stock bucket's pending index entries admitted by `cutoff_ms`,
    /// from `offset`, at most `limit`, with their states.
    async fn bucket_pending_page(
        &self,
        product: &ProductId,
        bucket: u16,
        cutoff_ms: i64,
        offset: usize,
        limit: usize,
    ) -> PortResult<PendingPage> {
        let k = self.bucket_keys(product, bucket);
        let mut c = self.conn().await?;
        let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(k.pending())
            .arg("-inf")
            .arg(cutoff_ms)
            .arg("LIMIT")
            .arg(offset)
            .arg(limit)
            .query_async(&mut c)
            .await
            .map_err(classify)?;
        let mut page = PendingPage {
            scanned: ids.len(),
            requests: Vec::with_capacity(ids.len()),
        };
        if ids.is_empty() {
            return Ok(page);
        }
        let ends_at: Option<i64> = redis::cmd("HGET")
            .arg(k.meta())
            .arg("ends_at")
            .query_async(&mut c)
            .await
            .map_err(classify)?;
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hgetall(k.req_raw(id));
        }
        let states: Vec<Vec<(String, String)>> =
            pipe.query_async(&mut c).await.map_err(classify)?;
        let mut orphans = Vec::new();
        for (raw, fields) in ids.iter().zip(states) {
            let usable = RequestId::parse(raw)
                .ok()
                .and_then(|id| pending_request(&id, &fields, ends_at.unwrap_or(0)));
            match usable {
                Some(r) => page.requests.push(r),
                None => orphans.push(raw.as_str()),
            }
        }
        if !orphans.is_empty() {
            // Nothing can be re-published without a state, and the entry
            // would hold this page forever: drop it from the index.
            tracing::warn!(product_id = %product, ?orphans, "pending requests without state dropped");
            redis::cmd("ZREM")
                .arg(k.pending())
                .arg(&orphans)
                .query_async::<()>(&mut c)
                .await
                .map_err(classify)?;
        }
        Ok(page)
    }

    /// Moves up to `lacking` units into bucket `to` from `lenders`, each
    /// asked once (the iterator goes on where this call stopped), `want`
    /// of what is still lacking from each; the units moved. Each transfer
    /// is named `<tag>-<lender>-<fresh number>`.
    async fn borrow(
        &self,
        product: &ProductId,
        to: u16,
        lenders: &mut impl Iterator<Item = u16>,
        lacking: i64,
        tag: &str,
        want: fn(i64) -> Want,
    ) -> PortResult<i64> {
        let mut got = 0;
        for s in lenders {
            let transfer = format!("{tag}-{s}-{}", self.transfer_no());
            got += self
                .move_units(product, s, to, &transfer, want(lacking - got))
                .await?;
            if got >= lacking {
                break;
            }
        }
        Ok(got)
    }

    /// A fresh number for a transfer's id.
    fn transfer_no(&self) -> u64 {
        self.inner.transfers.fetch_add(1, Ordering::Relaxed)
    }

    /// warm.lua in one stock bucket: its code and shelf.
    async fn warm_bucket(
        &self,
        p: &Product,
        bucket: u16,
        force: bool,
        ledger: i64,
        fence_seen: i64,
    ) -> PortResult<(String, i64)> {
        let k = self.bucket_keys(&p.product_id, bucket);
        let mut c = self.conn().await?;
        self.inner
            .scripts
            .warm
            .key(k.meta())
            .key(k.stock())
            .key(k.stats())
            .arg(p.stock)
            .arg(p.per_buyer_limit)
            .arg(unix_ms(p.starts_at))
            .arg(unix_ms(p.ends_at))
            .arg(if force { "1" } else { "0" })
            .arg(ledger)
            .arg(fence_seen)
            .arg(RateLimit::spec(p.rate_limits.buyer))
            .arg(RateLimit::spec(p.rate_limits.ip))
            .arg(if p.paused { "1" } else { "0" })
            .arg(p.control_seq)
            .arg(p.stock_buckets.clamp(1, crate::buckets::MAX_BUCKETS))
            .invoke_async(&mut c)
            .await
            .map_err(classify)
    }

    /// `warm`'s answer, once the product is in the set of warmed ones.
    /// Also when the sale had started: the set lives on another slot and
    /// may have forgotten the product in a failover of its own.
    async fn listed(&self, p: &Product, answer: Warm, c: &mut Conn) -> PortResult<Warm> {
        redis::cmd("SADD")
            .arg(keys::products(&self.inner.settings.namespace))
            .arg(p.product_id.as_str())
            .query_async::<()>(c)
            .await
            .map_err(classify)?;
        Ok(answer)
    }

    /// One step of a stock change in bucket 0 (`stock_change.lua`).
    async fn shelf_step(
        &self,
        change: &StockChange,
        step: ShelfStep,
        entry: Option<&str>,
    ) -> PortResult<ShelfChange> {
        let k = self.keys(&change.product_id);
        let mut c = self.conn().await?;
        let (code, detail): (String, String) = self
            .inner
            .scripts
            .stock_change
            .key(k.meta())
            .key(k.stock())
            .key(k.stats())
            .key(k.stock_changes())
            .arg(step.as_str())
            .arg(change.key.as_str())
            .arg(change.units())
            .arg(entry.unwrap_or_default())
            .arg(STATE_TTL_SECS)
            .invoke_async(&mut c)
            .await
            .map_err(classify)?;
        match code.as_str() {
            "cold" => Ok(ShelfChange::Cold),
            "short" => Ok(ShelfChange::Short {
                on_shelf: detail.parse().map_err(|_| unexpected("stock change"))?,
            }),
            "done" => Ok(ShelfChange::Done),
            "seen" => Ok(ShelfChange::Seen(detail)),
            _ => Err(unexpected("stock change")),
        }
    }

    /// The key layout of one of the product's stock buckets.
    pub fn bucket_keys(&self, product: &ProductId, bucket: u16) -> keys::Keys {
        keys::Keys::bucket(&self.inner.settings.namespace, product, bucket)
    }

    /// Moves up to `want` units of `product`'s shelf from bucket `from` to
    /// bucket `to` ([`crate::buckets`]): lends them in `from`'s slot,
    /// receives them in `to`'s, then finishes the transfer. Each step is
    /// once per `transfer` id (a fresh id per move), so a mover that fails
    /// between them leaves the units listed by `from` ([`Self::transfers`])
    /// for [`Self::complete_transfer`] to finish, and a retry moves nothing
    /// twice. A failover can still undo one side: the lender's forgetting
    /// the lend after the receive doubles the units, the borrower's
    /// forgetting the receive after the finish loses them; the resync sets
    /// the shelves from the ledger again (counting listed transfers as in
    /// transit). The units moved (0 when `from` had none).
    pub async fn move_units(
        &self,
        product: &ProductId,
        from: u16,
        to: u16,
        transfer: &str,
        want: Want,
    ) -> PortResult<i64> {
        let t = self.lend(product, from, to, transfer, want).await?;
        if t.units > 0 {
            self.complete_transfer(product, from, &t).await?;
        }
        Ok(t.units)
    }

    /// The first step of [`Self::move_units`]: up to `want` units off
    /// `from`'s shelf, listed there as in transit to `to`; the transfer as
    /// first lent (its own `to` when the id was used before).
    pub async fn lend(
        &self,
        product: &ProductId,
        from: u16,
        to: u16,
        transfer: &str,
        want: Want,
    ) -> PortResult<crate::buckets::Transfer> {
        let (units, mode) = match want {
            Want::Units(n) => (n, ""),
            Want::AtLeastHalf(n) => (n, "half"),
        };
        if from == to || units < 1 {
            return Err(InfraError::permanent(
                "redis",
                format!(
                    "a transfer moves at least one unit between two buckets, not {units} from bucket {from} to {to}"
                ),
            ));
        }
        let lender = self.bucket_keys(product, from);
        let mut c = self.conn().await?;
        let (units, to): (i64, u16) = self
            .inner
            .scripts
            .lend
            .key(lender.stock())
            .key(lender.transfers())
            .key(lender.stats())
            .key(lender.lent(transfer))
            .arg(transfer)
            .arg(to)
            .arg(units)
            .arg(mode)
            .invoke_async(&mut c)
            .await
            .map_err(classify)?;
        Ok(crate::buckets::Transfer {
            id: transfer.to_owned(),
            to,
            units,
            lent_at_ms: 0,
        })
    }

    /// Receives a transfer `from` lent (once, whoever runs it) and takes it
    /// off `from`'s list. Both markers live as long as request state (35
    /// days): a listed transfer must be completed within that (the sweeper
    /// finishes those left over 2 s).
    pub async fn complete_transfer(
        &self,
        product: &ProductId,
        from: u16,
        t: &crate::buckets::Transfer,
    ) -> PortResult<()> {
        let borrower = self.bucket_keys(product, t.to);
        let mut c = self.conn().await?;
        let _added: i64 = self
            .inner
            .scripts
            .receive
            .key(borrower.stock())
            .key(borrower.received(&t.id))
            .key(borrower.stats())
            .arg(t.units)
            .arg(STATE_TTL_SECS)
            .invoke_async(&mut c)
            .await
            .map_err(classify)?;
        let lender = self.bucket_keys(product, from);
        let _: i64 = self
            .inner
            .scripts
            .finish
            .key(lender.transfers())
            .key(lender.lent(&t.id))
            .arg(&t.id)
            .arg(format!("{}:{}", t.to, t.units))
            .arg(STATE_TTL_SECS)
            .invoke_async(&mut c)
            .await
            .map_err(classify)?;
        Ok(())
    }

    /// The transfers bucket `from` lent that are not finished: in transit,
    /// or left by a mover that failed.
    pub async fn transfers(
        &self,
        product: &ProductId,
        from: u16,
    ) -> PortResult<Vec<crate::buckets::Transfer>> {
        let mut c = self.conn().await?;
        let records: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(self.bucket_keys(product, from).transfers())
            .query_async(&mut c)
            .await
            .map_err(classify)?;
        records
            .iter()
            .map(|(id, r)| {
                crate::buckets::Transfer::parse(id, r).ok_or_else(|| {
                    InfraError::permanent(
                        "redis",
                        format!("transfer {id} of {product} bucket {from} is listed as {r:?}, not <to>:<units>:<lent_at>: fix or remove that field"),
                    )
                })
            })
            .collect()
    }

    /// A raw connection for tools (audits, demo set-up); not used by handlers.
    pub async fn command<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> PortResult<T> {
        let mut c = self.conn().await?;
        cmd.query_async(&mut c).await.map_err(classify)
    }
}

/// How many units a bucket is asked to lend ([`RedisGate::lend`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Up to this many.
    Units(i64),
    /// Up to this many, or half the lender's shelf when that is more.
    AtLeastHalf(i64),
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn pending_request(
    id: &RequestId,
    fields: &[(String, String)],
    sale_ends_at: i64,
) -> Option<PendingRequest> {
    let get = |name: &str| field(fields, name);
    let msg = OrderMessage {
        v: OrderMessage::VERSION,
        request_id: id.clone(),
        product_id: id.product(),
        user_id: UserId::parse(get("user")?).ok()?,
        quantity: Quantity::new(get("qty")?.parse().ok()?).ok()?,
        admitted_at: get("admitted_at")?.parse().ok()?,
        sale_ends_at,
    };
    let at = |name: &str| get(name).and_then(|v| v.parse::<i64>().ok());
    Some(PendingRequest {
        msg,
        sent_at_ms: at("sent_at").max(at("claimed_at")),
    })
}

fn request_view(id: &RequestId, fields: Vec<(String, String)>) -> Option<RequestView> {
    let get = |name: &str| field(&fields, name);
    Some(RequestView {
        request_id: id.clone(),
        product_id: id.product(),
        user_id: UserId::parse(get("user")?).ok()?,
        quantity: Quantity::new(get("qty")?.parse().ok()?).ok()?,
        status: OrderStatus::parse(get("status")?)?,
        updated_at: from_unix_ms(get("updated_at")?.parse().ok()?),
        reservation: None,
    })
}

impl AdmissionGate for RedisGate {
    /// In the buyer's stock bucket. One that ran dry (or holds fewer than
    /// asked) borrows from its siblings, at least half of each one's shelf,
    /// and admits again; sold out only when no sibling had any left.
    async fn admit(&self, p: &Purchase) -> PortResult<Admission> {
        // Meta missing, bucket 0 answers: not warmed, as it would for one
        // bucket (a buyer of another bucket is refused, never misrouted:
        // nothing is admitted there without the meta).
        let k = self.meta_buckets(&p.product_id).await?.unwrap_or(1);
        let b = crate::buckets::bucket_of(p.user_id.as_str(), k);
        let mut answer = self.admit_in(p, b, false).await?;
        if k == 1 {
            return Ok(answer);
        }
        let qty = i64::from(p.quantity.get());
        // Each sibling asked once, in ring order, until the buyer is served:
        // units borrowed may be borrowed on by another dry bucket before the
        // admission runs again, and the siblings not yet asked still count
        // (simulation seed 825: a 410 while a bucket never asked held one).
        let mut lenders = crate::buckets::siblings(b, k);
        let mut charged = false;
        loop {
            let missing = match answer {
                Admission::Refused(Refusal::SoldOut) => qty,
                Admission::Short { stock_left } => qty - stock_left,
                _ => return Ok(answer),
            };
            let got = self
                .borrow(
                    &p.product_id,
                    b,
                    &mut lenders,
                    missing,
                    p.request_id.as_str(),
                    Want::AtLeastHalf,
                )
                .await?;
            if got == 0 {
                return Ok(answer);
            }
            // A short answer charged the limiters; a sold-out one did not.
            charged |= matches!(answer, Admission::Short { .. });
            answer = self.admit_in(p, b, charged).await?;
        }
    }
    async fn request(&self, id: &RequestId, user: &str) -> PortResult<Option<RequestView>> {
        let k = self.buyer_keys(&id.product(), user).await?;
        let mut c = self.conn().await?;
        let fields: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(k.req(id))
            .query_async(&mut c)
            .await
            .map_err(classify)?;
        if fields.is_empty() {
            return Ok(None);
        }
        request_view(id, fields)
            .map(Some)
            .ok_or_else(|| unexpected("request state (corrupt hash)"))
    }
    async fn mark_sent(&self, id: &RequestId, user: &str, mark: SendMark) -> PortResult<()> {
        let k = self.buyer_keys(&id.product(), user).await?;
        let mut c = self.conn().await?;
        self.inner
            .scripts
            .mark_sent
            .key(k.req(id))
            .arg(mark.as_str())
            .invoke_async::<i64>(&mut c)
            .await
            .map_err(classify)?;
        Ok(())
    }
    async fn settle(&self, msg: &OrderMessage, status: Settled) -> PortResult<bool> {
        let k = self
            .buyer_keys(&msg.product_id, msg.user_id.as_str())
            .await?;
        let mut c = self.conn().await?;
        let changed: i64 = self
            .inner
            .scripts
            .settle
            .key(k.req(&msg.request_id))
            .key(k.pending())
            .key(k.stats())
            .key(k.buyers())
            .arg(msg.request_id.as_str())
            .arg(status.status().as_str())
            .arg(msg.user_id.as_str())
            .arg(msg.quantity.get())
            .arg(msg.admitted_at)
            .arg(STATE_TTL_SECS)
            .arg(u8::from(matches!(
                status,
                Settled::Rejected { free_buyer: true }
            )))
            .invoke_async(&mut c)
            .await
            .map_err(classify)?;
        Ok(changed == 1)
    }
    async fn restock(&self, msg: &OrderMessage) -> PortResult<bool> {
        let k = self
            .buyer_keys(&msg.product_id, msg.user_id.as_str())
            .await?;
        let mut c = self.conn().await?;
        let done: i64 = self
            .inner
            .scripts
            .restock
            .key(k.stock())
            .key(k.buyers())
            .key(k.req(&msg.request_id))
            .key(k.pending())
            .key(k.stats())
            .arg(msg.request_id.as_str())
            .arg(msg.user_id.as_str())
            .arg(msg.quantity.get())
            .arg(STATE_TTL_SECS)
            .arg(msg.admitted_at)
            .invoke_async(&mut c)
            .await
            .map_err(classify)?;
        Ok(done == 1)
    }
    /// The buckets' pending indexes one after another: bucket 0's entries,
    /// then bucket 1's, and so on, `offset` counting through them all.
    async fn pending_page(
        &self,
        product: &ProductId,
        cutoff_ms: i64,
        offset: usize,
        limit: usize,
    ) -> PortResult<PendingPage> {
        let k = self.buckets(product).await?;
        if k == 1 {
            return self
                .bucket_pending_page(product, 0, cutoff_ms, offset, limit)
                .await;
        }
        let mut page = PendingPage {
            scanned: 0,
            requests: Vec::new(),
        };
        let mut skip = offset;
        for b in 0..k {
            if page.scanned >= limit {
                break;
            }
            let mut c = self.conn().await?;
            let due: usize = redis::cmd("ZCOUNT")
                .arg(self.bucket_keys(product, b).pending())
                .arg("-inf")
                .arg(cutoff_ms)
                .query_async(&mut c)
                .await
                .map_err(classify)?;
            if skip >= due {
                skip -= due;
                continue;
            }
            let part = self
                .bucket_pending_page(product, b, cutoff_ms, skip, limit - page.scanned)
                .await?;
            skip = 0;
            page.scanned += part.scanned;
            page.requests.extend(part.requests);
        }
        Ok(page)
    }
}

impl ShelfGate for RedisGate {
    async fn release(&self, order: &RequestView, to: OrderStatus) -> PortResult<bool> {
        let k = self
            .buyer_keys(&order.product_id, order.user_id.as_str())
            .await?;
        let free_buyer = order
            .reservation
            .as_ref()
            .is_some_and(|r| r.rebuy_after_release);
        let mut c = self.conn().await?;
        let done: i64 = self
            .inner
            .scripts
            .release
            .key(k.stock())
            .key(k.buyers())
            .key(k.req(&order.request_id))
            .key(k.pending())
            .key(k.stats())
            .arg(order.request_id.as_str())
            .arg(order.user_id.as_str())
            .arg(order.quantity.get())
            .arg(to.as_str())
            .arg(if free_buyer { "1" } else { "0" })
            .arg(STATE_TTL_SECS)
            .invoke_async(&mut c)
            .await
            .map_err(classify)?;
        Ok(done == 1)
    }
    /// With stock buckets, bucket 0 is every stock change's home (its
    /// meta's stock_total, its list of changes): a withdrawal it is short
    /// for first borrows what it lacks from the siblings (once per change
    /// key), then takes again.
    async fn change_shelf(
        &self,
        change: &StockChange,
        step: ShelfStep,
        entry: Option<&AuditEntry>,
    ) -> PortResult<ShelfChange> {
        let entry = entry
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| InfraError::permanent("redis", format!("audit entry: {e}")))?;
        let first = self.shelf_step(change, step, entry.as_deref()).await?;
        let ShelfChange::Short { on_shelf } = first else {
            return Ok(first);
        };
        let k = self.buckets(&change.product_id).await?;
        let lacking = change.units() - on_shelf;
        let tag = format!("change-{}", change.key.as_str());
        let mut lenders = crate::buckets::siblings(0, k);
        let got = self
            .borrow(
                &change.product_id,
                0,
                &mut lenders,
                lacking,
                &tag,
                Want::Units,
            )
            .await?;
        if got == 0 {
            return Ok(first);
        }
        self.shelf_step(change, step, entry.as_deref()).await
    }
    async fn withdrawals_taken(
        &self,
        product: &ProductId,
    ) -> PortResult<Vec<(StockChange, AuditEntry)>> {
        let mut c = self.conn().await?;
        let all: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys(product).stock_changes())
            .query_async(&mut c)
            .await
            .map_err(classify)?;
        Ok(all
            .iter()
            .filter_map(|(key, state)| {
                let n: i64 = state.strip_prefix("taken:")?.parse().ok()?;
                let entry = serde_json::from_str(all.get(&format!("{key}|audit"))?).ok()?;
                let key = IdempotencyKey::parse(key).ok()?;
                Some((StockChange::new(product.clone(), key, -n).ok()?, entry))
            })
            .collect())
    }
    async fn resync(
        &self,
        product: &ProductId,
        ledger: &crate::domain::Ledger,
        fence_seen: i64,
    ) -> PortResult<Option<i64>> {
        if self.buckets(product).await? > 1 {
            return self.resync_buckets(product, ledger, fence_seen).await;
        }
        let k = self.keys(product);
        let mut c = self.conn().await?;
        let (code, drift): (String, i64) = self
            .inner
            .scripts
            .resync
            .key(k.stock())
            .key(k.stats())
            .arg(ledger.remaining)
            .arg(fence_seen)
            .arg(ledger.returned())
            .arg(ledger.releasing)
            .invoke_async(&mut c)
            .await
            .map_err(classify)?;
        Ok((code == "synced").then_some(drift))
    }
    async fn finish_transfers(&self, product: &ProductId, lent_by_ms: i64) -> PortResult<usize> {
        let k = self.buckets(product).await?;
        // One bucket lends to nobody: no call.
        if k == 1 {
            return Ok(0);
        }
        let mut finished = 0;
        for from in 0..k {
            for t in self.transfers(product, from).await? {
                if t.lent_at_ms <= lent_by_ms {
                    self.complete_transfer(product, from, &t).await?;
                    finished += 1;
                }
            }
        }
        Ok(finished)
    }
}

impl ControlGate for RedisGate {
    /// In every stock bucket: a pause or an end holds for every buyer.
    async fn apply_controls(&self, p: &Product) -> PortResult<bool> {
        let mut c = self.conn().await?;
        let mut any = false;
        for b in 0..self.buckets(&p.product_id).await? {
            let applied: i64 = self
                .inner
                .scripts
                .controls
                .key(self.bucket_keys(&p.product_id, b).meta())
                .arg(if p.paused { "1" } else { "0" })
                .arg(unix_ms(p.ends_at))
                .arg(p.control_seq)
                .invoke_async(&mut c)
                .await
                .map_err(classify)?;
            any |= applied != 0;
        }
        Ok(any)
    }
    async fn apply_kill_switch(&self, switch: KillSwitch) -> PortResult<()> {
        let mut c = self.conn().await?;
        self.inner
            .scripts
            .kill_switch
            .key(keys::kill_switch(&self.inner.settings.namespace))
            .arg(if switch.engaged { "1" } else { "0" })
            .arg(switch.seq)
            .invoke_async::<i64>(&mut c)
            .await
            .map_err(classify)?;
        Ok(())
    }
    async fn kill_switch(&self) -> PortResult<KillSwitch> {
        let mut c = self.conn().await?;
        let (engaged, seq): (Option<String>, Option<u64>) = redis::cmd("HMGET")
            .arg(keys::kill_switch(&self.inner.settings.namespace))
            .arg("engaged")
            .arg("seq")
            .query_async(&mut c)
            .await
            .map_err(classify)?;
        Ok(KillSwitch {
            engaged: engaged.as_deref() == Some("1"),
            seq: seq.unwrap_or(0),
        })
    }
    async fn set_denials(
        &self,
        product: &ProductId,
        add: &[(UserId, i64)],
        remove: &[UserId],
    ) -> PortResult<()> {
        if add.is_empty() && remove.is_empty() {
            return Ok(());
        }
        // Each entry in its buyer's stock bucket, which admits them.
        let k = self.buckets(product).await?;
        let mut pipe = redis::pipe();
        for b in 0..k {
            let deny = self.bucket_keys(product, b).deny();
            let mine = |u: &UserId| crate::buckets::bucket_of(u.as_str(), k) == b;
            let add: Vec<&(UserId, i64)> = add.iter().filter(|(u, _)| mine(u)).collect();
            let remove: Vec<&UserId> = remove.iter().filter(|u| mine(u)).collect();
            for chunk in add.chunks(500) {
                let pairs: Vec<(&str, i64)> = chunk.iter().map(|(u, t)| (u.as_str(), *t)).collect();
                // HSET, not redis-rs' hset_multiple: that sends HMSET,
                // deprecated since Redis 4 (and not simulated).
                pipe.cmd("HSET").arg(&deny).arg(&pairs).ignore();
            }
            for chunk in remove.chunks(500) {
                let users: Vec<&str> = chunk.iter().map(|u| u.as_str()).collect();
                pipe.hdel(&deny, users).ignore();
            }
        }
        let mut c = self.conn().await?;
        pipe.query_async::<()>(&mut c).await.map_err(classify)
    }
    async fn denials(&self, product: &ProductId) -> PortResult<Vec<(UserId, i64)>> {
        let mut c = self.conn().await?;
        let mut all = Vec::new();
        for b in 0..self.buckets(product).await? {
            let held: Vec<(String, i64)> = redis::cmd("HGETALL")
                .arg(self.bucket_keys(product, b).deny())
                .query_async(&mut c)
                .await
                .map_err(classify)?;
            all.extend(
                held.into_iter()
                    .filter_map(|(u, t)| Some((UserId::parse(u).ok()?, t))),
            );
        }
        Ok(all)
    }
}

impl SaleGate for RedisGate {
    async fn warm(
        &self,
        p: &Product,
        force: bool,
        ledger_remaining: i64,
        fence_seen: i64,
    ) -> PortResult<Warm> {
        let buckets = p.stock_buckets.clamp(1, crate::buckets::MAX_BUCKETS);
        let mut c = self.conn().await?;
        if buckets == 1 {
            let (code, left) = self
                .warm_bucket(p, 0, force, ledger_remaining, fence_seen)
                .await?;
            let answer = match code.as_str() {
                "warmed" => Warm::Warmed { stock_left: left },
                "started" => Warm::AlreadyStarted { stock_left: left },
                _ => return Err(unexpected("warm")),
            };
            return self.listed(p, answer, &mut c).await;
        }
        // Several buckets: each warm.lua subtracts what its bucket holds
        // besides its shelf (pending, withdrawing, and, its fence unknown
        // to the caller, every unit it settled), so each is handed its
        // share of the rest plus that: the sum never exceeds the ledger
        // (exact before the sale; the caller's resync, as admin's warm
        // runs, then sets it).
        let mut held = Vec::with_capacity(usize::from(buckets));
        for b in 0..buckets {
            held.push(self.bucket_read(&p.product_id, b).await?);
        }
        let owed = |r: &Option<BucketRead>| {
            r.as_ref().map_or(0, |r| {
                r.stats.pending_units + r.stats.withdrawing + r.stats.fence()
            })
        };
        let now = self.now_ms().await?;
        let started = held
            .iter()
            .flatten()
            .any(|r| r.starts_at_ms > 0 && r.starts_at_ms <= now);
        if started && !force {
            // Buckets a failover forgot get their meta back with an empty
            // shelf (the resync fills it); the others keep theirs.
            let mut left = 0;
            for (b, r) in (0..buckets).zip(&held) {
                match r {
                    Some(r) => left += r.stats.stock_left,
                    None => {
                        self.warm_bucket(p, b, true, 0, 0).await?;
                    }
                }
            }
            return self
                .listed(p, Warm::AlreadyStarted { stock_left: left }, &mut c)
                .await;
        }
        let owed_total: i64 = held.iter().map(owed).sum();
        let shares = crate::buckets::split((ledger_remaining - owed_total).max(0), buckets);
        let mut total = 0;
        for ((b, share), r) in (0..buckets).zip(shares).zip(&held) {
            let (code, left) = self.warm_bucket(p, b, force, share + owed(r), 0).await?;
            match code.as_str() {
                // Started since the read above: as warmed (its shelf set).
                "warmed" | "started" => total += left,
                _ => return Err(unexpected("warm")),
            }
        }
        self.known_buckets().insert(p.product_id.clone(), buckets);
        self.listed(p, Warm::Warmed { stock_left: total }, &mut c)
            .await
    }
    /// The product's figures: its stock buckets' summed (units lent by one
    /// bucket and not yet received by another count as on the shelf).
    async fn stats(&self, product: &ProductId) -> PortResult<Option<ProductStats>> {
        let Some(reads) = self.bucket_reads(product).await? else {
            return Ok(None);
        };
        let in_transit = self.in_transit(product, &reads).await?;
        let mut buckets = reads.into_iter().map(|(_, r)| r.stats);
        let Some(mut total) = buckets.next() else {
            return Ok(None);
        };
        total.stock_left += in_transit;
        for s in buckets {
            total.stock_left += s.stock_left;
            total.admitted += s.admitted;
            total.placed += s.placed;
            total.rejected += s.rejected;
            total.compensated += s.compensated;
            total.restocked += s.restocked;
            total.pending_units += s.pending_units;
            total.placed_units += s.placed_units;
            total.withdrawing += s.withdrawing;
            total.withdrawn_units += s.withdrawn_units;
            total.returned_units += s.returned_units;
            total.pending += s.pending;
        }
        Ok(Some(total))
    }
    async fn products(&self) -> PortResult<Vec<ProductId>> {
        let mut c = self.conn().await?;
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys::products(&self.inner.settings.namespace))
            .query_async(&mut c)
            .await
            .map_err(classify)?;
        Ok(ids
            .into_iter()
            .filter_map(|id| ProductId::parse(id).ok())
            .collect())
    }
    async fn retire(&self, product: &ProductId) -> PortResult<()> {
        let mut c = self.conn().await?;
        redis::cmd("SREM")
            .arg(keys::products(&self.inner.settings.namespace))
            .arg(product.as_str())
            .query_async::<()>(&mut c)
            .await
            .map_err(classify)
    }
    async fn now_ms(&self) -> PortResult<i64> {
        let mut c = self.conn().await?;
        let (secs, micros): (i64, i64) = redis::cmd("TIME")
            .query_async(&mut c)
            .await
            .map_err(classify)?;
        Ok(secs * 1000 + micros / 1000)
    }
}
