//! [`SaleGate`]: warm-up (bucketed too), a product's figures, the list of
//! warmed products and Redis' clock.

use super::{Conn, RedisGate, classify, keys, unexpected};
use crate::domain::{Product, ProductId, ProductStats, RateLimit, unix_ms};
use crate::ports::{PortResult, SaleGate, Warm};

/// One stock bucket's figures as read ([`RedisGate::bucket_read`]).
pub(super) struct BucketRead {
    /// `stock_left`: its own shelf, without the units it lent.
    pub(super) stats: ProductStats,
    /// Its sale's start (ms).
    pub(super) starts_at_ms: i64,
    /// Units it lent plus units it received, ever: moves between buckets.
    pub(super) moved: i64,
    /// Its `shelf_version` as read before its shelf: bumped by every script
    /// that sets or corrects the shelf from the ledger (warm.lua, adjust.lua,
    /// restore.lua), so a correction planned before one of those is refused.
    pub(super) version: i64,
    /// Its transfers lent and not finished.
    pub(super) lent: Vec<crate::buckets::Transfer>,
}

impl RedisGate {
    /// One stock bucket's figures (its `stock_left` without the units it
    /// lent); None when its meta is missing.
    pub(super) async fn bucket_read(
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
            .hmget(
                k.stats(),
                &["lent_units", "received_units", "shelf_version"],
            )
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
        let m = |i: usize| moves.get(i).copied().flatten().unwrap_or(0);
        let (moved, version) = (m(0) + m(1), m(2));
        Ok(Some(BucketRead {
            stats,
            starts_at_ms: meta.get(2).copied().flatten().unwrap_or(0),
            moved,
            version,
            lent: lent
                .iter()
                .filter_map(|(id, r)| crate::buckets::Transfer::parse(id, r))
                .collect(),
        }))
    }

    /// A bucket's `placed_units` and `withdrawn_units` whatever its meta: a
    /// bucket a failover forgot counts again from zero the settles that
    /// reach it after (settle.lua rebuilds the request), and the ledger has
    /// those units. Its part of the fence, read as any bucket's.
    pub(super) async fn bucket_fence(
        &self,
        product: &ProductId,
        bucket: u16,
    ) -> PortResult<(i64, i64)> {
        let mut c = self.conn().await?;
        let n: Vec<Option<i64>> = redis::cmd("HMGET")
            .arg(self.bucket_keys(product, bucket).stats())
            .arg(&["placed_units", "withdrawn_units"])
            .query_async(&mut c)
            .await
            .map_err(classify)?;
        let n = |i: usize| n.get(i).copied().flatten().unwrap_or(0);
        Ok((n(0), n(1)))
    }

    /// Every stock bucket's figures, in order; None when bucket 0's meta is
    /// missing, and a bucket whose meta is missing is left out.
    pub(super) async fn bucket_reads(
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

    /// warm.lua in one stock bucket: its code and shelf.
    pub(super) async fn warm_bucket(
        &self,
        p: &Product,
        bucket: u16,
        force: bool,
        ledger: i64,
        fence_seen: i64,
        moves_seen: Option<i64>,
    ) -> PortResult<(String, i64, i64)> {
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
            .arg(moves_seen.map(|m| m.to_string()).unwrap_or_default())
            .invoke_async(&mut c)
            .await
            .map_err(classify)
    }

    /// `warm`'s answer, once the product is in the set of warmed ones.
    /// Also when the sale had started: the set lives on another slot and
    /// may have forgotten the product in a failover of its own.
    pub(super) async fn listed(&self, p: &Product, answer: Warm, c: &mut Conn) -> PortResult<Warm> {
        redis::cmd("SADD")
            .arg(keys::products(&self.inner.settings.namespace))
            .arg(p.product_id.as_str())
            .query_async::<()>(c)
            .await
            .map_err(classify)?;
        Ok(answer)
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
            let (code, left, _) = self
                .warm_bucket(p, 0, force, ledger_remaining, fence_seen, None)
                .await?;
            let answer = match code.as_str() {
                "warmed" => Warm::Warmed { stock_left: left },
                "started" => Warm::AlreadyStarted { stock_left: left },
                _ => return Err(unexpected("warm")),
            };
            return self.listed(p, answer, &mut c).await;
        }
        // Several buckets: what one bucket's warm.lua holds back, over
        // all of them. Read every bucket; the product has for its shelves
        // the ledger less what every bucket holds off its shelf (pending,
        // being withdrawn), less what settled since the caller's fence read
        // (the ledger read may not have seen it), less the units in transit
        // (they land on a shelf after it is set). Each bucket is handed its
        // share plus what it held off its shelf, with its own fence as
        // read: its warm.lua takes off what was admitted or settled there
        // since, exactly as with one bucket.
        let mut held = Vec::with_capacity(usize::from(buckets));
        // Each bucket's fence, a forgotten one's too (its stats may count
        // settles since the failover): as `stats` reads it for the caller.
        let mut fences = Vec::with_capacity(usize::from(buckets));
        for b in 0..buckets {
            let r = self.bucket_read(&p.product_id, b).await?;
            fences.push(match &r {
                Some(r) => r.stats.fence(),
                None => {
                    let (placed, withdrawn) = self.bucket_fence(&p.product_id, b).await?;
                    placed + withdrawn
                }
            });
            held.push(r);
        }
        let off_shelf = |r: &Option<BucketRead>| {
            r.as_ref()
                .map_or(0, |r| r.stats.pending_units + r.stats.withdrawing)
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
                        self.warm_bucket(p, b, true, 0, 0, None).await?;
                    }
                }
            }
            return self
                .listed(p, Warm::AlreadyStarted { stock_left: left }, &mut c)
                .await;
        }
        let settled_since = (fences.iter().sum::<i64>() - fence_seen).max(0);
        let lent: Vec<crate::buckets::Transfer> =
            held.iter().flatten().flat_map(|r| r.lent.clone()).collect();
        let in_transit = self.not_received(&p.product_id, &lent).await?;
        let available =
            ledger_remaining - held.iter().map(off_shelf).sum::<i64>() - settled_since - in_transit;
        let shares = crate::buckets::split(available.max(0), buckets);
        let mut total = 0;
        // What a bucket could not hold back (it admitted, settled or lent
        // more since the read than its share) comes off the next ones'.
        let mut short = 0;
        for (((b, share), r), fence) in (0..buckets).zip(shares).zip(&held).zip(&fences) {
            let (code, left, shortfall) = self
                .warm_bucket(
                    p,
                    b,
                    force,
                    share - short + off_shelf(r),
                    *fence,
                    r.as_ref().map(|r| r.moved),
                )
                .await?;
            short = shortfall;
            match code.as_str() {
                // Started since the read above: as warmed (its shelf set).
                "warmed" | "started" => total += left,
                _ => return Err(unexpected("warm")),
            }
        }
        self.known_buckets().insert(p.product_id.clone(), buckets);
        // As the stats count it: units in transit are the shelf's.
        let stock_left = total + in_transit;
        self.listed(p, Warm::Warmed { stock_left }, &mut c).await
    }
    /// The product's figures: its stock buckets' summed (units lent by one
    /// bucket and not yet received by another count as on the shelf).
    async fn stats(&self, product: &ProductId) -> PortResult<Option<ProductStats>> {
        let Some(reads) = self.bucket_reads(product).await? else {
            return Ok(None);
        };
        let in_transit = self.in_transit(product, &reads).await?;
        // A bucket without meta (a failover forgot it) still counts in the
        // fence: the settles it saw since are in the ledger.
        let mut forgotten = (0, 0);
        for b in 1..self.buckets(product).await? {
            if !reads.iter().any(|(read, _)| *read == b) {
                let (placed, withdrawn) = self.bucket_fence(product, b).await?;
                forgotten = (forgotten.0 + placed, forgotten.1 + withdrawn);
            }
        }
        let mut buckets = reads.into_iter().map(|(_, r)| r.stats);
        let Some(mut total) = buckets.next() else {
            return Ok(None);
        };
        total.stock_left += in_transit;
        total.placed_units += forgotten.0;
        total.withdrawn_units += forgotten.1;
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
