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

/// One bucket's figures as the bucketed resync reads them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    /// Units on its shelf (not counting those it lent).
    pub shelf: i64,
    pub pending_units: i64,
    pub withdrawing: i64,
    /// placed_units + withdrawn_units (resync.lua's fence).
    pub fence: i64,
    /// released + added + adopted units it put back on its shelf.
    pub put_back: i64,
}

/// What the resync does to a bucketed product's shelves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Correction {
    /// Units to add to the sum of the shelves (negative: to take).
    pub delta: i64,
    /// Units to adopt (resync.lua's `adopted_units`).
    pub adopted: i64,
}

/// resync.lua's arithmetic over the sum of the buckets. `in_transit`: units
/// lent and not yet received, which are the shelf's. `unsure`: units moved
/// between buckets while they were read one after the other (each such move
/// may be counted on both sides or on neither), so the shelves are only
/// known to within that many units: the band widens by it, and a correction
/// aims that far below resync.lua's target, so a miscount never oversells.
/// With `unsure` = 0 the answer is resync.lua's. None when the buckets'
/// fence went back below `fence_seen` (a failover): busy, change nothing.
pub fn correction(
    ledger: &crate::domain::Ledger,
    fence_seen: i64,
    buckets: &[Figures],
    in_transit: i64,
    unsure: i64,
) -> Option<Correction> {
    let sum = |f: fn(&Figures) -> i64| buckets.iter().map(f).sum::<i64>();
    let fence = sum(|b| b.fence);
    if fence < fence_seen {
        return None;
    }
    let put_back = sum(|b| b.put_back);
    let returned = ledger.returned();
    let unapplied = (returned - put_back).clamp(0, ledger.releasing.max(0));
    let since_read = (put_back - returned).max(0);
    let high = ledger.remaining - unapplied + since_read
        - sum(|b| b.pending_units)
        - sum(|b| b.withdrawing);
    let low = (high - (fence - fence_seen)).max(0);
    let shelf = sum(|b| b.shelf) + in_transit;
    let delta = if (low - unsure..=high + unsure).contains(&shelf) {
        0
    } else {
        (low - unsure).max(0) - shelf
    };
    Some(Correction {
        delta,
        adopted: (returned - put_back - ledger.releasing).max(0),
    })
}

/// A correction of `delta` units spread over shelves holding `shelves`:
/// units added evenly (a bucket left dry sends its buyers borrowing), units
/// taken from the fullest first, never more than a shelf holds.
pub fn spread(delta: i64, shelves: &[i64]) -> Vec<i64> {
    let n = u16::try_from(shelves.len()).unwrap_or(MAX_BUCKETS);
    if delta >= 0 {
        return split(delta, n);
    }
    let mut parts = vec![0; shelves.len()];
    let mut order: Vec<usize> = (0..shelves.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(shelves[i]));
    let mut left = -delta;
    for i in order {
        let take = left.min(shelves[i].max(0));
        parts[i] = -take;
        left -= take;
    }
    parts
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

    fn ledger(remaining: i64) -> crate::domain::Ledger {
        crate::domain::Ledger {
            remaining,
            ..Default::default()
        }
    }

    fn shelf(units: i64) -> Figures {
        Figures {
            shelf: units,
            ..Figures::default()
        }
    }

    #[test]
    fn the_sum_of_the_shelves_follows_the_ledger_within_the_units_moved_meanwhile() {
        let two = [shelf(6), shelf(6)];
        // 12 on the shelves, 10 in the ledger: 2 too many, taken.
        let fix = |l, unsure| correction(&ledger(l), 0, &two, 0, unsure).map(|c| c.delta);
        assert_eq!(fix(10, 0), Some(-2));
        assert_eq!(fix(12, 0), Some(0));
        // 3 units moved while the buckets were read: 12 may be 9 to 15, so
        // 10 is left alone, and 8 aims 3 below it.
        assert_eq!(fix(10, 3), Some(0));
        assert_eq!(fix(8, 3), Some(-7));
        assert_eq!(fix(20, 3), Some(5));
        // In transit counts as on the shelf.
        assert_eq!(
            correction(&ledger(14), 0, &two, 2, 0).map(|c| c.delta),
            Some(0)
        );
        // A fence gone back: busy.
        assert_eq!(correction(&ledger(12), 1, &two, 0, 0), None);
        // Pending units and units being withdrawn are not the shelf's.
        let busy = [
            Figures {
                shelf: 6,
                pending_units: 3,
                withdrawing: 1,
                ..Figures::default()
            },
            shelf(6),
        ];
        assert_eq!(
            correction(&ledger(16), 0, &busy, 0, 0).map(|c| c.delta),
            Some(0)
        );
    }

    #[test]
    fn a_correction_adds_evenly_and_takes_from_the_fullest() {
        assert_eq!(spread(5, &[0, 9, 2]), [2, 2, 1]);
        assert_eq!(spread(-5, &[1, 9, 2]), [0, -5, 0]);
        assert_eq!(spread(-10, &[1, 6, 2]), [-1, -6, -2]);
        assert_eq!(spread(0, &[1, 6]), [0, 0]);
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
