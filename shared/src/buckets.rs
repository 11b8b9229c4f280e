//! A product's stock buckets: its Redis shelf split over K slots, so a
//! cluster spreads one hot product's admissions over K shards (each key of
//! one bucket shares its own hash tag, [`crate::redis::keys::Keys::bucket`]).
//! A buyer always reaches the same bucket, which holds their purchase
//! record, request records and rate limiter, so the per-buyer rules stay
//! atomic in one script. Bucket 0 is the product's keys as they were before
//! buckets: K = 1 is the unbucketed product. No I/O here.

use crate::domain::UserId;

/// Most buckets a product may have: a sold-out answer has to find every
/// bucket dry, one call each.
pub const MAX_BUCKETS: u16 = 16;

/// Buy requests per second one bucket is planned for: 70% of the ~30k
/// admission scripts/s one redis-server runs here (docs/benchmarks.md,
/// figure 1), leaving room for settles, releases and the sweeper.
pub const BUYS_PER_BUCKET: u32 = 20_000;

/// Fewest units a bucket is planned to start with: a thinner one runs dry
/// at once and sends its buyers borrowing from its siblings.
pub const MIN_UNITS_PER_BUCKET: u32 = 10;

/// The buckets a sale of `stock` units expecting `buys_per_sec` needs.
pub fn buckets_for(stock: u32, buys_per_sec: u32) -> u16 {
    let by_rate = buys_per_sec.div_ceil(BUYS_PER_BUCKET);
    let by_stock = (stock / MIN_UNITS_PER_BUCKET).max(1);
    let n = by_rate.clamp(1, by_stock).min(u32::from(MAX_BUCKETS));
    u16::try_from(n).unwrap_or(MAX_BUCKETS)
}

/// The bucket holding `user`'s records among `n`: FNV-1a of the user id.
/// Fixed forever, as the number of buckets is fixed at creation: a buyer
/// routed to two buckets could hold an order in each.
pub fn bucket_of(user: &UserId, n: u16) -> u16 {
    let h = user
        .as_str()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    // `n` is at most MAX_BUCKETS, so the remainder fits.
    (h % u64::from(n.max(1))) as u16
}

/// Units one bucket lent another and the borrower may not have received
/// yet, as the lender lists it (`lend.lua`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub id: String,
    pub to: u16,
    pub units: i64,
    pub lent_at_ms: i64,
}

impl Transfer {
    /// A lender's record: `<to bucket>:<units>:<lent_at ms>`.
    pub fn parse(id: &str, record: &str) -> Option<Self> {
        let mut parts = record.splitn(3, ':');
        Some(Self {
            id: id.to_owned(),
            to: parts.next()?.parse().ok()?,
            units: parts.next()?.parse().ok()?,
            lent_at_ms: parts.next()?.parse().ok()?,
        })
    }
}

/// How `stock` units start out over `n` buckets: as even as integers allow.
pub fn split(stock: i64, n: u16) -> Vec<i64> {
    crate::ledger::split(stock, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_follow_the_rate_within_the_stock_and_the_cap() {
        assert_eq!(buckets_for(1_000, 0), 1);
        assert_eq!(buckets_for(1_000, BUYS_PER_BUCKET), 1);
        assert_eq!(buckets_for(1_000, BUYS_PER_BUCKET + 1), 2);
        assert_eq!(buckets_for(1_000, 8 * BUYS_PER_BUCKET), 8);
        // Each bucket keeps at least MIN_UNITS_PER_BUCKET units.
        assert_eq!(buckets_for(35, 8 * BUYS_PER_BUCKET), 3);
        assert_eq!(buckets_for(5, 8 * BUYS_PER_BUCKET), 1);
        assert_eq!(buckets_for(1_000_000, u32::MAX), MAX_BUCKETS);
    }

    #[test]
    fn one_bucket_holds_everyone() {
        let u = UserId::parse("anyone").unwrap();
        assert_eq!(bucket_of(&u, 1), 0);
        assert_eq!(bucket_of(&u, 0), 0);
    }

    #[test]
    fn buyers_spread_evenly_and_stay_put() {
        for n in [2u16, 4, 8, 16] {
            let mut counts = vec![0u32; usize::from(n)];
            for i in 0..16_000 {
                let u = UserId::parse(format!("buyer-{i}")).unwrap();
                let b = bucket_of(&u, n);
                assert_eq!(b, bucket_of(&u, n), "stable");
                counts[usize::from(b)] += 1;
            }
            let even = 16_000 / u32::from(n);
            for c in &counts {
                assert!(c.abs_diff(even) * 10 < even, "{n} buckets: {counts:?}");
            }
        }
        // Fixed forever: these change only if the hash did.
        let u = UserId::parse("buyer-42").unwrap();
        assert_eq!([2, 4, 8, 16].map(|n| bucket_of(&u, n)), [1, 1, 1, 9]);
    }

    #[test]
    fn a_lenders_record_reads_back() {
        assert_eq!(
            Transfer::parse("t1", "3:5:1700000000000"),
            Some(Transfer {
                id: "t1".into(),
                to: 3,
                units: 5,
                lent_at_ms: 1_700_000_000_000
            })
        );
        assert_eq!(Transfer::parse("t1", "3:5"), None);
        assert_eq!(Transfer::parse("t1", "x:5:1"), None);
    }

    #[test]
    fn a_split_adds_up() {
        for (stock, n) in [(100, 4), (7, 3), (0, 2), (1, 16)] {
            let parts = split(stock, n);
            assert_eq!(parts.len(), usize::from(n));
            assert_eq!(parts.iter().sum::<i64>(), stock);
        }
    }
}
