//! The stock ledger's shards: which ledger item an order takes its units
//! from. A DynamoDB partition takes about 1,000 WCU/s and a transactional
//! write of a small item costs 2, so a product whose ledger is one item
//! places at most ~500 orders/s, fewer once concurrent transactions on it
//! conflict. A product may split its units over N items instead; each order
//! takes from one (or, when none alone holds its quantity, several) in the
//! same transaction as the order itself, so the ledger's sum stays exact.
//! No I/O here: the DynamoDB adapter and the in-memory store both follow it.

use crate::domain::{Ledger, RequestView};

/// Most shards a product may have: a placement that has to read them all
/// (its home shard ran dry) reads them in one TransactGetItems (100 items
/// at most).
pub const MAX_SHARDS: u16 = 64;

/// Orders per second one shard is planned for: 70% of the ~500
/// transactional writes/s a partition takes, leaving room for releases,
/// payments and retries on the same item.
pub const ORDERS_PER_SHARD: u32 = 350;

/// Fewest units a shard is planned to start with: thinner shards run dry
/// early and send placements to the slower read-and-replan path.
pub const MIN_UNITS_PER_SHARD: u32 = 10;

/// The shards a sale of `stock` units expecting `orders_per_sec` needs.
pub fn shards_for(stock: u32, orders_per_sec: u32) -> u16 {
    let by_rate = orders_per_sec.div_ceil(ORDERS_PER_SHARD);
    let by_stock = (stock / MIN_UNITS_PER_SHARD).max(1);
    let n = by_rate.clamp(1, by_stock).min(u32::from(MAX_SHARDS));
    u16::try_from(n).unwrap_or(MAX_SHARDS)
}

/// How `stock` units start out over `n` shards: as even as integers allow.
pub fn split(stock: i64, n: u16) -> Vec<i64> {
    let n = i64::from(n.max(1));
    (0..n)
        .map(|i| stock / n + i64::from(i < stock % n))
        .collect()
}

/// The shard an order starts from, and the one its later counters (payment,
/// release) go to: spread evenly and stable across processes, so concurrent
/// consumers write different items.
pub fn home(request_id: &str, n: u16) -> u16 {
    let h = request_id
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    // `n` is at most MAX_SHARDS, so the remainder fits.
    (h % u32::from(n.max(1))) as u16
}

/// The home shard of a placed order (of the shards its product had then;
/// one for orders from before shards, or read without their terms).
pub fn home_of(o: &RequestView) -> u16 {
    let n = o.reservation.as_ref().map_or(1, |r| r.ledger_shards);
    home(o.request_id.as_str(), n)
}

/// Each shard's units.
pub fn units(shards: &[Ledger]) -> Vec<i64> {
    shards.iter().map(|s| s.remaining).collect()
}

/// Where to take `quantity` units from, given each shard's `remaining`:
/// the first shard from `start` on (in ring order) that holds them all,
/// else as many as each holds in that order; None when all together hold
/// fewer (sold out).
pub fn plan_take(remaining: &[i64], start: u16, quantity: i64) -> Option<Vec<(u16, i64)>> {
    let n = remaining.len();
    if n == 0 || remaining.iter().map(|r| (*r).max(0)).sum::<i64>() < quantity {
        return None;
    }
    let ring = || (0..n).map(|k| (usize::from(start) + k) % n);
    if let Some(i) = ring().find(|&i| remaining[i] >= quantity) {
        return Some(vec![(i as u16, quantity)]);
    }
    let mut need = quantity;
    let mut takes = Vec::new();
    for i in ring() {
        let take = remaining[i].max(0).min(need);
        if take > 0 {
            takes.push((i as u16, take));
            need -= take;
        }
        if need == 0 {
            break;
        }
    }
    Some(takes)
}

/// The product's ledger: the sum of its shards' counters.
pub fn total<'a>(shards: impl IntoIterator<Item = &'a Ledger>) -> Ledger {
    shards.into_iter().fold(Ledger::default(), |t, s| Ledger {
        remaining: t.remaining + s.remaining,
        releasing: t.releasing + s.releasing,
        paid: t.paid + s.paid,
        paid_units: t.paid_units + s.paid_units,
        refunded: t.refunded + s.refunded,
        disputed: t.disputed + s.disputed,
        cancelled: t.cancelled + s.cancelled,
        expired: t.expired + s.expired,
        released: t.released + s.released,
        refund_due: t.refund_due + s.refund_due,
        added: t.added + s.added,
        withdrawn: t.withdrawn + s.withdrawn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_follow_the_rate_within_the_stock() {
        assert_eq!(shards_for(1_000, 0), 1);
        assert_eq!(shards_for(1_000, 350), 1);
        assert_eq!(shards_for(1_000, 351), 2);
        assert_eq!(shards_for(100_000, 5_000), 15);
        // Never thinner than MIN_UNITS_PER_SHARD, never more than MAX_SHARDS.
        assert_eq!(shards_for(30, 5_000), 3);
        assert_eq!(shards_for(5, 5_000), 1);
        assert_eq!(shards_for(10_000_000, 1_000_000), MAX_SHARDS);
    }

    #[test]
    fn a_split_is_even_and_loses_nothing() {
        assert_eq!(split(10, 4), vec![3, 3, 2, 2]);
        assert_eq!(split(0, 3), vec![0, 0, 0]);
        assert_eq!(split(7, 1), vec![7]);
        for (stock, n) in [(1_000, 16), (3, 8), (12_345, 64)] {
            assert_eq!(split(stock, n).iter().sum::<i64>(), stock);
        }
    }

    #[test]
    fn homes_spread_over_every_shard() {
        let mut seen = [0u32; 16];
        for i in 0..1_600 {
            seen[usize::from(home(&format!("p1-req-{i}"), 16))] += 1;
        }
        assert!(seen.iter().all(|&c| (50..=150).contains(&c)), "{seen:?}");
        assert_eq!(home("anything", 1), 0);
    }

    #[test]
    fn a_take_prefers_one_shard_from_the_start_on() {
        assert_eq!(plan_take(&[5, 5, 5], 1, 2), Some(vec![(1, 2)]));
        // The start is dry: the next in ring order that holds it all.
        assert_eq!(plan_take(&[5, 0, 1, 0], 1, 2), Some(vec![(0, 2)]));
        assert_eq!(plan_take(&[0, 0, 3], 0, 3), Some(vec![(2, 3)]));
    }

    #[test]
    fn a_take_no_shard_holds_alone_is_split_and_only_the_sum_sells_out() {
        assert_eq!(
            plan_take(&[1, 0, 1, 1], 2, 3),
            Some(vec![(2, 1), (3, 1), (0, 1)])
        );
        assert_eq!(plan_take(&[1, 0, 1], 0, 3), None);
        assert_eq!(plan_take(&[0, 0], 1, 1), None);
        assert_eq!(plan_take(&[], 0, 1), None);
        // A negative shard (never written so) neither lends nor borrows.
        assert_eq!(plan_take(&[-2, 2], 0, 2), Some(vec![(1, 2)]));
    }

    #[test]
    fn the_total_adds_every_counter() {
        let a = Ledger {
            remaining: 3,
            paid: 1,
            withdrawn: 2,
            ..Ledger::default()
        };
        let b = Ledger {
            remaining: 4,
            releasing: 1,
            paid: 2,
            ..Ledger::default()
        };
        let t = total([&a, &b]);
        assert_eq!(
            (t.remaining, t.releasing, t.paid, t.withdrawn),
            (7, 1, 3, 2)
        );
    }
}
