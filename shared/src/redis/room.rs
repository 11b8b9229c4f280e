//! [`RoomGate`]: waiting-room admissions redeemed once per account.

use super::{RedisGate, classify};
use crate::domain::ProductId;
use crate::ports::{PortResult, RoomGate};

impl RoomGate for RedisGate {
    async fn redeem(
        &self,
        product: &ProductId,
        nonce: &str,
        user: &str,
        ttl_ms: i64,
    ) -> PortResult<String> {
        let keys = self.keys(product);
        let mut c = self.conn().await?;
        self.inner
            .scripts
            .redeem
            .key(keys.room_pass(nonce))
            .key(keys.room_entries())
            .arg(user)
            .arg(ttl_ms.max(1))
            .invoke_async(&mut c)
            .await
            .map_err(classify)
    }
    async fn seen(
        &self,
        product: &ProductId,
        nonce: &str,
        place_ms: i64,
        ttl_ms: i64,
    ) -> PortResult<bool> {
        let keys = self.keys(product);
        let mut c = self.conn().await?;
        let counted: i64 = self
            .inner
            .scripts
            .seen
            .key(keys.room_seen(nonce))
            .key(keys.room_places())
            .arg(place_ms.div_euclid(1000))
            .arg(ttl_ms.max(1))
            .invoke_async(&mut c)
            .await
            .map_err(classify)?;
        Ok(counted == 1)
    }
    async fn places(&self, product: &ProductId, from_ms: i64, to_ms: i64) -> PortResult<Vec<u64>> {
        let seconds: Vec<i64> = (from_ms.div_euclid(1000)..to_ms.div_euclid(1000)).collect();
        if seconds.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = self.conn().await?;
        let counts: Vec<Option<u64>> = redis::cmd("HMGET")
            .arg(self.keys(product).room_places())
            .arg(&seconds)
            .query_async(&mut c)
            .await
            .map_err(classify)?;
        Ok(counts.into_iter().map(Option::unwrap_or_default).collect())
    }
    async fn entries(&self, product: &ProductId) -> PortResult<u64> {
        let mut c = self.conn().await?;
        let n: Option<u64> = redis::cmd("GET")
            .arg(self.keys(product).room_entries())
            .query_async(&mut c)
            .await
            .map_err(classify)?;
        Ok(n.unwrap_or(0))
    }
}
