//! The Redis key layout. Every key of a product carries the hash tag
//! `{<product>}`, so one script's keys always live in one cluster slot.
//! Ids are validated to exclude `{`, `}` and `:`, so they cannot break it.

use crate::domain::{IdempotencyKey, ProductId, RequestId, UserId};

/// The default namespace. Deployments sharing one Redis (stages, test
/// runs) each set their own with `FLASHSALE_REDIS_NAMESPACE`.
pub const DEFAULT_NAMESPACE: &str = "fs";

/// Set of every warmed product, for the outbox sweeper. The only key without
/// a hash tag: no script touches it, it is written by its own command.
pub fn products(namespace: &str) -> String {
    format!("{namespace}:products")
}

pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(namespace: &str, product: &ProductId) -> Self {
        Self {
            prefix: format!("{namespace}:{{{product}}}:"),
        }
    }
    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }
    /// Hash: stock_total, limit, starts_at, ends_at (ms since epoch).
    pub fn meta(&self) -> String {
        self.key("meta")
    }
    /// String: units left.
    pub fn stock(&self) -> String {
        self.key("stock")
    }
    /// Hash: user -> request id of their admitted request.
    pub fn buyers(&self) -> String {
        self.key("buyers")
    }
    /// Hash: user, qty, status, admitted_at, updated_at.
    pub fn req(&self, id: &RequestId) -> String {
        self.key(&format!("req:{id}"))
    }
    /// Sorted set: pending request ids scored by admission time (the outbox).
    pub fn pending(&self) -> String {
        self.key("pending")
    }
    /// Hash: admitted, placed, rejected, compensated, units_out.
    pub fn stats(&self) -> String {
        self.key("stats")
    }
    /// String: request id admitted under this buyer's Idempotency-Key.
    pub fn idem(&self, user: &UserId, key: &IdempotencyKey) -> String {
        self.key(&format!("idem:{user}:{}", key.as_str()))
    }
    pub fn idem_placeholder(&self) -> String {
        self.key("idem:-")
    }
    /// String marker: this request's units were already put back.
    pub fn restocked(&self, id: &RequestId) -> String {
        self.key(&format!("restocked:{id}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_carries_the_product_hash_tag() {
        let p = ProductId::parse("p42").unwrap();
        let k = Keys::new(DEFAULT_NAMESPACE, &p);
        let id = RequestId::new(&p);
        let u = UserId::parse("u1").unwrap();
        let i = IdempotencyKey::parse("abc").unwrap();
        for key in [
            k.meta(),
            k.stock(),
            k.buyers(),
            k.req(&id),
            k.pending(),
            k.stats(),
            k.idem(&u, &i),
            k.restocked(&id),
        ] {
            assert!(key.starts_with("fs:{p42}:"), "{key}");
            assert_eq!(key.matches('{').count(), 1, "{key}");
        }
    }
}
