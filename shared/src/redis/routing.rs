//! Which stock bucket holds what: a product's bucket count (its bucket 0's
//! meta, else the catalogue) and a buyer's bucket.

use std::collections::HashMap;

use super::{RedisGate, classify, keys};
use crate::domain::ProductId;
use crate::error::InfraError;
use crate::ports::PortResult;

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

impl RedisGate {
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
    pub(super) async fn meta_buckets(&self, product: &ProductId) -> PortResult<Option<u16>> {
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

    pub(super) fn known_buckets(&self) -> std::sync::MutexGuard<'_, HashMap<ProductId, u16>> {
        self.inner
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The keys of the stock bucket holding `user`'s records.
    pub(super) async fn buyer_keys(
        &self,
        product: &ProductId,
        user: &str,
    ) -> PortResult<keys::Keys> {
        let k = self.buckets(product).await?;
        Ok(self.bucket_keys(product, crate::buckets::bucket_of(user, k)))
    }
}
