//! The edge's copy of a sale (issue 32): one KeyValueStore value per
//! product, which the CloudFront Function (edge/viewer-request.js) reads to
//! answer "not started", "sold out" and "ended" without the origin. The
//! publisher (functions/edge-publisher) derives it from DynamoDB's product
//! and Redis' shelves; these are its decisions, without I/O.
//!
//! The value is `"<state>|<starts_at ms>|<ends_at ms>|<control_seq>"`,
//! state one of `upcoming`, `on_sale`, `paused`, `sold_out`, `ended`. The
//! edge answers `upcoming` before its start, `sold_out`, and `ended` or any
//! state after the end; any other or unreadable value lets the buy go on to
//! the origin.

use std::future::Future;

use crate::domain::{Product, SaleState, unix_ms};
use crate::ports::PortResult;

/// What the edge holds of a product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeValue {
    pub state: SaleState,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    /// The product's control sequence when it was read: a value never
    /// replaces one with a higher sequence (a newer control was seen).
    pub control_seq: u64,
}

impl EdgeValue {
    /// What the edge should say of `product` at `now_ms`. `sold_out` only
    /// when the publisher found every stock bucket dry on two reads a pass
    /// apart ([`Dryness`]): a 410 at the edge is a promise, and one read
    /// across buckets may catch units between two of them.
    pub fn of(product: &Product, now_ms: i64, sold_out: bool) -> Self {
        let (starts_at_ms, ends_at_ms) = (unix_ms(product.starts_at), unix_ms(product.ends_at));
        // The admission script's precedence (admit.lua), not the
        // storefront's: a paused sale is paused (503, ask again) even when
        // dry, and not started before it can be sold out.
        let state = if now_ms >= ends_at_ms {
            SaleState::Ended
        } else if product.paused {
            SaleState::Paused
        } else if now_ms < starts_at_ms {
            SaleState::Upcoming
        } else if sold_out {
            SaleState::SoldOut
        } else {
            SaleState::OnSale
        };
        Self {
            state,
            starts_at_ms,
            ends_at_ms,
            control_seq: product.control_seq,
        }
    }

    pub fn encode(&self) -> String {
        let state = match self.state {
            SaleState::Upcoming => "upcoming",
            SaleState::OnSale => "on_sale",
            SaleState::Paused => "paused",
            SaleState::SoldOut => "sold_out",
            SaleState::Ended => "ended",
        };
        format!(
            "{state}|{}|{}|{}",
            self.starts_at_ms, self.ends_at_ms, self.control_seq
        )
    }

    /// None for a value this code did not write (the edge lets such a buy
    /// through; the publisher replaces it).
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.split('|');
        let state = match parts.next()? {
            "upcoming" => SaleState::Upcoming,
            "on_sale" => SaleState::OnSale,
            "paused" => SaleState::Paused,
            "sold_out" => SaleState::SoldOut,
            "ended" => SaleState::Ended,
            _ => return None,
        };
        let starts_at_ms = parts.next()?.parse().ok()?;
        let ends_at_ms = parts.next()?.parse().ok()?;
        let control_seq = parts.next()?.parse().ok()?;
        parts.next().is_none().then_some(Self {
            state,
            starts_at_ms,
            ends_at_ms,
            control_seq,
        })
    }

    /// Whether to write `self` over what the store holds: only a change,
    /// and never over a value from a newer control (a late read must not
    /// roll the edge back).
    pub fn replaces(&self, stored: Option<&str>) -> bool {
        match stored.map(|s| (s, Self::parse(s))) {
            None | Some((_, None)) => true,
            Some((_, Some(old))) => old != *self && old.control_seq <= self.control_seq,
        }
    }
}

/// Whether a product's shelves were dry on the previous pass too: sold out
/// is published only then, so the edge's 410 waits one pass (the stated
/// bound: two passes plus the store's propagation) and never rests on a
/// read that caught units moving between buckets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dryness {
    dry_passes: u32,
}

impl Dryness {
    /// After a pass that read `stock_left` across the product's buckets
    /// (None: the shelf was not warm or not readable, which is never dry).
    pub fn observe(self, stock_left: Option<i64>) -> Self {
        match stock_left {
            Some(left) if left <= 0 => Self {
                dry_passes: self.dry_passes.saturating_add(1),
            },
            _ => Self::default(),
        }
    }

    /// The same pass read again (a retry after a stale write): a unit back
    /// clears it, but a dry read counts no second time.
    pub fn recheck(self, stock_left: Option<i64>) -> Self {
        match stock_left {
            Some(left) if left <= 0 => self,
            _ => Self::default(),
        }
    }

    pub fn sold_out(self) -> bool {
        self.dry_passes >= 2
    }
}

/// A write to the store, with its `If-Match`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// Written: the store's new version (ETag).
    At(String),
    /// The store moved on since `version` (another writer, or our own
    /// write whose answer was lost): nothing was written.
    Stale,
}

/// One change to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put { key: String, value: String },
    Delete { key: String },
}

/// The KeyValueStore's data plane, as far as the publisher uses it.
pub trait EdgeStore: Send + Sync {
    /// The store's current version (its ETag).
    fn version(&self) -> impl Future<Output = PortResult<String>> + Send;
    /// Every key and value.
    fn entries(&self) -> impl Future<Output = PortResult<Vec<(String, String)>>> + Send;
    /// Makes every change at once (at most 50), if the store is still at
    /// `version`.
    fn write(
        &self,
        changes: &[Change],
        version: &str,
    ) -> impl Future<Output = PortResult<Written>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_foreign_ones_do_not_parse() {
        let v = EdgeValue {
            state: SaleState::SoldOut,
            starts_at_ms: 1_700_000_000_000,
            ends_at_ms: 1_700_003_600_000,
            control_seq: 4,
        };
        assert_eq!(v.encode(), "sold_out|1700000000000|1700003600000|4");
        assert_eq!(EdgeValue::parse(&v.encode()), Some(v));
        for junk in [
            "",
            "sold_out",
            "sold_out|x|1|1",
            "gone|1|1|1",
            "on_sale|1|1",
            "on_sale|1|1|1|1",
        ] {
            assert_eq!(EdgeValue::parse(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn the_edge_says_sold_out_only_after_two_dry_passes() {
        let p = crate::fakes::product("p1");
        let on = unix_ms(p.starts_at) + 1;
        let dry = Dryness::default().observe(Some(0));
        assert_eq!(
            EdgeValue::of(&p, on, dry.sold_out()).state,
            SaleState::OnSale
        );
        let dry = dry.observe(Some(0));
        assert_eq!(
            EdgeValue::of(&p, on, dry.sold_out()).state,
            SaleState::SoldOut
        );
        assert!(!dry.observe(Some(1)).sold_out(), "a unit back clears it");
        assert!(!dry.observe(None).sold_out(), "an unread shelf is not dry");
        let once = Dryness::default().observe(Some(0));
        assert!(
            !once.recheck(Some(0)).sold_out(),
            "a retry is not a second pass"
        );
        assert!(!dry.recheck(Some(2)).sold_out());
        // Before the start a dry shelf is not sold out; after the end the
        // sale is ended whatever the shelf.
        let before = unix_ms(p.starts_at) - 1;
        assert_eq!(EdgeValue::of(&p, before, true).state, SaleState::Upcoming);
        let after = unix_ms(p.ends_at);
        assert_eq!(EdgeValue::of(&p, after, true).state, SaleState::Ended);
        // Paused outranks sold out, as in the admission script.
        let mut held = p.clone();
        held.paused = true;
        assert_eq!(EdgeValue::of(&held, on, true).state, SaleState::Paused);
    }

    #[test]
    fn a_value_from_an_older_control_never_replaces_a_newer_one() {
        let v = |state, control_seq| EdgeValue {
            state,
            starts_at_ms: 1,
            ends_at_ms: 2,
            control_seq,
        };
        let stored = v(SaleState::Paused, 3).encode();
        assert!(!v(SaleState::OnSale, 2).replaces(Some(&stored)));
        assert!(
            !v(SaleState::Paused, 3).replaces(Some(&stored)),
            "no change"
        );
        assert!(v(SaleState::SoldOut, 3).replaces(Some(&stored)));
        assert!(v(SaleState::OnSale, 4).replaces(Some(&stored)));
        assert!(v(SaleState::OnSale, 1).replaces(None));
        assert!(v(SaleState::OnSale, 1).replaces(Some("written by hand")));
    }
}
