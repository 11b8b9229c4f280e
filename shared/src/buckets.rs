//! A product's stock buckets: its Redis shelf split over K slots, so a
//! cluster spreads one hot product's admissions over K shards (each key of
//! one bucket shares its own hash tag, [`crate::redis::keys::Keys::bucket`]).
//! A buyer always reaches the same bucket, which holds their purchase
//! record, request records and rate limiter, so the per-buyer rules stay
//! atomic in one script. Bucket 0 is the product's keys as they were before
//! buckets: K = 1 is the unbucketed product. No I/O here.

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

/// FNV-1a, 64 bits.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// MurmurHash3's 64-bit finaliser: every input bit moves every output bit.
fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The bucket holding `user`'s records among `n`: FNV-1a of the user id,
/// mixed (FNV's low bits follow only each byte's low bits, its high bits
/// barely the last bytes), modulo `n`. Fixed forever, as the number of
/// buckets is fixed at creation: a buyer routed to two buckets could hold
/// an order in each.
pub fn bucket_of(user: &str, n: u16) -> u16 {
    let h = mix(fnv1a(user.as_bytes()));
    // Below `n`, which is at most MAX_BUCKETS: it fits.
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

/// The other buckets of `n`, in ring order after `bucket`: where a bucket
/// that ran dry borrows, nearest first.
pub fn siblings(bucket: u16, n: u16) -> impl Iterator<Item = u16> {
    let n = n.max(1);
    (1..n).map(move |d| (bucket + d) % n)
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
        assert_eq!(bucket_of("anyone", 1), 0);
        assert_eq!(bucket_of("anyone", 0), 0);
    }

    #[test]
    fn buyers_spread_evenly_and_stay_put() {
        for n in [2u16, 4, 8, 16] {
            let mut counts = vec![0u32; usize::from(n)];
            for i in 0..16_000 {
                counts[usize::from(bucket_of(&format!("buyer-{i}"), n))] += 1;
            }
            let even = 16_000 / u32::from(n);
            for c in &counts {
                assert!(c.abs_diff(even) * 10 < even, "{n} buckets: {counts:?}");
            }
        }
        // Fixed forever: these change only if the routing did.
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        let route = |user: &str, n| bucket_of(user, n);
        assert_eq!(
            ["a", "q", "A", "1", "buyer-42"].map(|u| [3, 4, 16].map(|n| route(u, n))),
            [[2, 3, 11], [0, 0, 12], [0, 1, 13], [1, 2, 6], [0, 1, 5]]
        );
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
    fn siblings_are_every_other_bucket_once() {
        assert_eq!(siblings(2, 4).collect::<Vec<_>>(), [3, 0, 1]);
        assert_eq!(siblings(0, 1).count(), 0);
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
