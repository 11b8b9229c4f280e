//! The Redis key layout. Every key of a product carries the hash tag
//! `{<product>}`, so one script's keys always live in one cluster slot.
//! Ids are validated to exclude `{`, `}` and `:`, so they cannot break it.

use crate::domain::{ProductId, Purchase, RequestId};

/// The default namespace. Deployments sharing one Redis (stages, test
/// runs) each set their own with `FLASHSALE_REDIS_NAMESPACE`.
pub const DEFAULT_NAMESPACE: &str = "fs";

/// Set of every warmed product, for the outbox sweeper. The only key without
/// a hash tag: no script touches it, it is written by its own command.
pub fn products(namespace: &str) -> String {
    format!("{namespace}:products")
}

/// Hash: the global kill switch (`kill_switch.lua`). No hash tag: deduct
/// reads it with its own command, cached, never inside a script.
pub fn kill_switch(namespace: &str) -> String {
    format!("{namespace}:kill_switch")
}

/// What Redis Cluster hashes to pick a key's slot: the text between the
/// first `{` and the next `}` when that is not empty, else the whole key
/// (for the simulated Redis and the benchmarks' node model).
#[cfg(any(test, feature = "sim", feature = "node-capacity"))]
pub(crate) fn hash_tag(key: &[u8]) -> &[u8] {
    let Some(open) = key.iter().position(|b| *b == b'{') else {
        return key;
    };
    match key[open + 1..].iter().position(|b| *b == b'}') {
        Some(len) if len > 0 => &key[open + 1..open + 1 + len],
        _ => key,
    }
}

pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(namespace: &str, product: &ProductId) -> Self {
        Self::bucket(namespace, product, 0)
    }
    /// The keys of one of the product's stock buckets ([`crate::buckets`]),
    /// each under its own hash tag `{<product>#<bucket>}` (`#` is not
    /// allowed in ids, so no product's tag can equal it); bucket 0 keeps
    /// the product's own tag, so one bucket is the unbucketed layout.
    pub fn bucket(namespace: &str, product: &ProductId, bucket: u16) -> Self {
        let tag = match bucket {
            0 => product.to_string(),
            b => format!("{product}#{b}"),
        };
        Self {
            prefix: format!("{namespace}:{{{tag}}}:"),
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
    /// Hash: user, qty, status, admitted_at, updated_at, sent_at.
    pub fn req(&self, id: &RequestId) -> String {
        self.req_raw(id.as_str())
    }
    /// [`Self::req`] of an id read back from the pending index.
    pub fn req_raw(&self, id: &str) -> String {
        self.key(&format!("req:{id}"))
    }
    /// Sorted set: pending request ids scored by admission time (the outbox).
    pub fn pending(&self) -> String {
        self.key("pending")
    }
    /// Hash: user -> blocked until (ms; 0 = until removed): the operators'
    /// deny list, copied into every sale so admission reads it in its slot.
    pub fn deny(&self) -> String {
        self.key("deny")
    }
    /// Hash: an operator's stock changes by key: their state, and a taken
    /// withdrawal's audit entry (`stock_change.lua`).
    pub fn stock_changes(&self) -> String {
        self.key("stock_changes")
    }
    /// String: the account a waiting-room admission was redeemed for
    /// (`redeem.lua`; the nonce is the admission's, which the room signed).
    pub fn room_pass(&self, nonce: &str) -> String {
        self.key(&format!("room:{nonce}"))
    }
    /// String: a sampled place of the product's room, counted (`seen.lua`).
    pub fn room_seen(&self, nonce: &str) -> String {
        self.key(&format!("room_seen:{nonce}"))
    }
    /// Hash: second of arrival time -> sampled places there.
    pub fn room_places(&self) -> String {
        self.key("room_places")
    }
    /// String: admissions redeemed for the product.
    pub fn room_entries(&self) -> String {
        self.key("room_entries")
    }
    /// The KEYS of `admit.lua`, in order: every key a request touches,
    /// all in the product's slot.
    pub fn admission(&self, p: &Purchase) -> [String; 10] {
        [
            self.meta(),
            self.stock(),
            self.buyers(),
            self.req(&p.request_id),
            self.pending(),
            self.stats(),
            self.key(&format!("rl:u:{}", p.user_id)),
            // A key in the slot even when there is no address to limit.
            self.key(&format!(
                "rl:ip:{}",
                p.client_ip.map_or_else(String::new, limited_address)
            )),
            self.deny(),
            self.key(&format!(
                "rl:ip48:{}",
                p.client_ip.and_then(site_prefix).unwrap_or_default()
            )),
        ]
    }
    /// Hash: transfers this bucket lent and its sibling has not finished
    /// receiving: id -> "<to bucket>:<units>:<lent_at ms>" (`lend.lua`).
    pub fn transfers(&self) -> String {
        self.key("transfers")
    }
    /// String: a transfer this bucket received (`receive.lua`).
    pub fn received(&self, transfer: &str) -> String {
        self.key(&format!("xfer:{transfer}"))
    }
    /// String: a transfer this bucket lent and saw finished (`finish.lua`).
    pub fn lent(&self, transfer: &str) -> String {
        self.key(&format!("lent:{transfer}"))
    }
    /// Hash: admitted, placed, rejected, compensated, restocked,
    /// pending_units, placed_units, resync_drift, lent_units, received_units,
    /// arrived_units (units ever put on the shelf, by any script: what the
    /// admission's census watches).
    pub fn stats(&self) -> String {
        self.key("stats")
    }
}

/// The address a limit counts: an IPv4 address (also IPv4-mapped IPv6), or
/// an IPv6 address's /64, which one client holds whole.
fn limited_address(ip: std::net::IpAddr) -> String {
    match ip.to_canonical() {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

/// An IPv6 client's /48 (a site's allocation, which holds 65,536 /64s),
/// limited again beside its /64; None for IPv4 (and IPv4-mapped) clients.
pub fn site_prefix(ip: std::net::IpAddr) -> Option<String> {
    match ip.to_canonical() {
        std::net::IpAddr::V4(_) => None,
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            Some(format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_client_is_limited_by_its_64_and_its_48() {
        let ip = |s: &str| limited_address(s.parse().unwrap());
        assert_eq!(ip("2001:db8:1:2:aaaa::1"), ip("2001:db8:1:2:bbbb::9"));
        assert_eq!(ip("2001:db8:1:2::1"), "2001:db8:1:2::/64");
        assert_eq!(ip("::ffff:192.0.2.7"), "192.0.2.7");
        let site = |s: &str| site_prefix(s.parse().unwrap());
        assert_eq!(site("2001:db8:1:2::1"), site("2001:db8:1:ffff::9"));
        assert_eq!(site("2001:db8:1:2::1").as_deref(), Some("2001:db8:1::/48"));
        assert_eq!(site("192.0.2.7"), None);
        assert_eq!(site("::ffff:192.0.2.7"), None);
    }

    #[test]
    fn every_key_carries_the_product_hash_tag() {
        let p = ProductId::parse("p42").unwrap();
        let k = Keys::new(DEFAULT_NAMESPACE, &p);
        let purchase = Purchase {
            request_id: RequestId::new(&p),
            product_id: p.clone(),
            user_id: crate::domain::UserId::parse("u1").unwrap(),
            quantity: crate::domain::Quantity::new(1).unwrap(),
            idempotency_key: None,
            client_ip: Some("2001:db8::1".parse().unwrap()),
        };
        for key in k.admission(&purchase) {
            assert!(key.starts_with("fs:{p42}:"), "{key}");
            assert_eq!(key.matches('{').count(), 1, "{key}");
        }
        // Bucket 0 is the product's own layout; the others their own slots.
        assert_eq!(Keys::bucket(DEFAULT_NAMESPACE, &p, 0).stock(), k.stock());
        for (b, tag) in [(1, "fs:{p42#1}:"), (15, "fs:{p42#15}:")] {
            for key in Keys::bucket(DEFAULT_NAMESPACE, &p, b).admission(&purchase) {
                assert!(key.starts_with(tag), "{key}");
            }
        }
    }
}
