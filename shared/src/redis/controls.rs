//! [`ControlGate`]: pause/end, the kill switch and the deny list.

use super::{RedisGate, classify, keys};
use crate::domain::{KillSwitch, Product, ProductId, UserId, unix_ms};
use crate::ports::{ControlGate, PortResult};

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
