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
