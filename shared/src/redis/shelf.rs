//! [`ShelfGate`]: releases, stock changes, the resync (bucketed too) and
//! finishing transfers.

use super::{RedisGate, STATE_TTL_SECS, Want, classify, unexpected};
use crate::domain::{AuditEntry, IdempotencyKey, OrderStatus, ProductId, RequestView, StockChange};
use crate::error::InfraError;
use crate::ports::{PortResult, ShelfChange, ShelfGate, ShelfStep};

impl RedisGate {
    /// The bucketed resync ([`crate::buckets::correction`]): every bucket
    /// read, the units in transit, then every bucket's moves and fence again
    /// (the moves in between widen the band; a fence or a move count gone
    /// back is a failover: busy); the correction spread over the buckets by
    /// adjust.lua, each refusing if its bucket went back since its read.
    pub(super) async fn resync_buckets(
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
                .arg(r.version)
                .invoke_async(&mut c)
                .await
                .map_err(classify)?;
            // A bucket that moved since its read stops the plan: the rest
            // (the adoption above all) was computed from figures that no
            // longer hold, and a concurrent resync may be carrying it out
            // (handing the adoption to the next bucket adopted it twice).
            if code != "synced" {
                return Ok(None);
            }
            applied += moved;
            adopt = 0;
        }
        Ok(Some(applied))
    }

    /// One step of a stock change in bucket 0 (`stock_change.lua`).
    pub(super) async fn shelf_step(
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
    async fn restore_buckets(&self, product: &ProductId) -> PortResult<Vec<u16>> {
        let k = self.buckets(product).await?;
        if k == 1 {
            return Ok(Vec::new());
        }
        let mut c = self.conn().await?;
        let mut metas = Vec::with_capacity(usize::from(k));
        for b in 0..k {
            let meta: Vec<(String, String)> = redis::cmd("HGETALL")
                .arg(self.bucket_keys(product, b).meta())
                .query_async(&mut c)
                .await
                .map_err(classify)?;
            metas.push(meta);
        }
        let warmed = |m: &Vec<(String, String)>| m.iter().any(|(f, _)| f == "limit");
        // No bucket warmed: not warmed yet (or all forgotten), the
        // operator's warm-up to do, not the sweeper's.
        // The newest controls a bucket holds (controls.lua skips a bucket
        // without meta, and siblings may lag one another).
        let seq = |m: &Vec<(String, String)>| {
            m.iter()
                .find(|(f, _)| f == "control_seq")
                .and_then(|(_, v)| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let Some(source) = metas.iter().filter(|m| warmed(m)).max_by_key(|m| seq(m)) else {
            return Ok(Vec::new());
        };
        let pairs: Vec<&str> = source
            .iter()
            .flat_map(|(f, v)| [f.as_str(), v.as_str()])
            .collect();
        let mut restored = Vec::new();
        for (b, meta) in (0..k).zip(&metas) {
            if warmed(meta) {
                continue;
            }
            let keys = self.bucket_keys(product, b);
            let done: i64 = self
                .inner
                .scripts
                .restore
                .key(keys.meta())
                .key(keys.stock())
                .key(keys.stats())
                .arg(&pairs)
                .invoke_async(&mut c)
                .await
                .map_err(classify)?;
            if done == 1 {
                restored.push(b);
            }
        }
        Ok(restored)
    }
}
