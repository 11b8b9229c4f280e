//! Units moved between a product's stock buckets ([`crate::buckets`]): lend,
//! receive, finish; the borrowing helper and the units in transit.

use std::sync::atomic::Ordering;

use super::sale::BucketRead;
use super::{RedisGate, STATE_TTL_SECS, classify};
use crate::domain::ProductId;
use crate::error::InfraError;
use crate::ports::PortResult;

impl RedisGate {
    /// The units of `reads`' lent transfers their borrowers have not
    /// received (at the time of this call): the shelf's, in transit.
    pub(super) async fn in_transit(
        &self,
        product: &ProductId,
        reads: &[(u16, BucketRead)],
    ) -> PortResult<i64> {
        let lent: Vec<crate::buckets::Transfer> =
            reads.iter().flat_map(|(_, r)| r.lent.clone()).collect();
        self.not_received(product, &lent).await
    }

    /// The units of `lent` their borrowers have not received (at the time
    /// of this call).
    pub(super) async fn not_received(
        &self,
        product: &ProductId,
        lent: &[crate::buckets::Transfer],
    ) -> PortResult<i64> {
        if lent.is_empty() {
            return Ok(0);
        }
        let mut c = self.conn().await?;
        let mut units = 0;
        for t in lent {
            let received: bool = redis::cmd("EXISTS")
                .arg(self.bucket_keys(product, t.to).received(&t.id))
                .query_async(&mut c)
                .await
                .map_err(classify)?;
            if !received {
                units += t.units;
            }
        }
        Ok(units)
    }

    /// Moves up to `lacking` units into bucket `to` from `lenders`, each
    /// asked once (the iterator goes on where this call stopped), `want`
    /// of what is still lacking from each; the units moved. Each transfer
    /// is named `<tag>-<lender>-<fresh number>`.
    pub(super) async fn borrow(
        &self,
        product: &ProductId,
        to: u16,
        lenders: &mut impl Iterator<Item = u16>,
        lacking: i64,
        tag: &str,
        want: fn(i64) -> Want,
    ) -> PortResult<i64> {
        let mut got = 0;
        for s in lenders {
            let transfer = format!("{tag}-{s}-{}", self.transfer_no());
            got += self
                .move_units(product, s, to, &transfer, want(lacking - got))
                .await?;
            if got >= lacking {
                break;
            }
        }
        Ok(got)
    }

    /// A fresh number for a transfer's id.
    pub(super) fn transfer_no(&self) -> u64 {
        self.inner.transfers.fetch_add(1, Ordering::Relaxed)
    }

    /// Moves up to `want` units of `product`'s shelf from bucket `from` to
    /// bucket `to` ([`crate::buckets`]): lends them in `from`'s slot,
    /// receives them in `to`'s, then finishes the transfer. Each step is
    /// once per `transfer` id (a fresh id per move), so a mover that fails
    /// between them leaves the units listed by `from` ([`Self::transfers`])
    /// for [`Self::complete_transfer`] to finish, and a retry moves nothing
    /// twice. A failover can still undo one side: the lender's forgetting
    /// the lend after the receive doubles the units, the borrower's
    /// forgetting the receive after the finish loses them; the resync sets
    /// the shelves from the ledger again (counting listed transfers as in
    /// transit). The units moved (0 when `from` had none).
    pub async fn move_units(
        &self,
        product: &ProductId,
        from: u16,
        to: u16,
        transfer: &str,
        want: Want,
    ) -> PortResult<i64> {
        let t = self.lend(product, from, to, transfer, want).await?;
        if t.units > 0 {
            self.complete_transfer(product, from, &t).await?;
        }
        Ok(t.units)
    }

    /// The first step of [`Self::move_units`]: up to `want` units off
    /// `from`'s shelf, listed there as in transit to `to`; the transfer as
    /// first lent (its own `to` when the id was used before).
    pub async fn lend(
        &self,
        product: &ProductId,
        from: u16,
        to: u16,
        transfer: &str,
        want: Want,
    ) -> PortResult<crate::buckets::Transfer> {
        let (units, mode) = match want {
            Want::Units(n) => (n, ""),
            Want::AtLeastHalf(n) => (n, "half"),
        };
        if from == to || units < 1 {
            return Err(InfraError::permanent(
                "redis",
                format!(
                    "a transfer moves at least one unit between two buckets, not {units} from bucket {from} to {to}"
                ),
            ));
        }
        let lender = self.bucket_keys(product, from);
        let mut c = self.conn().await?;
        let (units, to): (i64, u16) = self
            .inner
            .scripts
            .lend
            .key(lender.stock())
            .key(lender.transfers())
            .key(lender.stats())
            .key(lender.lent(transfer))
            .arg(transfer)
            .arg(to)
            .arg(units)
            .arg(mode)
            .invoke_async(&mut c)
            .await
            .map_err(classify)?;
        Ok(crate::buckets::Transfer {
            id: transfer.to_owned(),
            to,
            units,
            lent_at_ms: 0,
        })
    }

    /// Receives a transfer `from` lent (once, whoever runs it) and takes it
    /// off `from`'s list. Both markers live as long as request state (35
    /// days): a listed transfer must be completed within that (the sweeper
    /// finishes those left over 2 s).
    pub async fn complete_transfer(
        &self,
        product: &ProductId,
        from: u16,
        t: &crate::buckets::Transfer,
    ) -> PortResult<()> {
        let borrower = self.bucket_keys(product, t.to);
        let mut c = self.conn().await?;
        let _added: i64 = self
            .inner
            .scripts
            .receive
            .key(borrower.stock())
            .key(borrower.received(&t.id))
            .key(borrower.stats())
            .arg(t.units)
            .arg(STATE_TTL_SECS)
            .invoke_async(&mut c)
            .await
            .map_err(classify)?;
        let lender = self.bucket_keys(product, from);
        let _: i64 = self
            .inner
            .scripts
            .finish
            .key(lender.transfers())
            .key(lender.lent(&t.id))
            .arg(&t.id)
            .arg(format!("{}:{}", t.to, t.units))
            .arg(STATE_TTL_SECS)
            .invoke_async(&mut c)
            .await
            .map_err(classify)?;
        Ok(())
    }

    /// The transfers bucket `from` lent that are not finished: in transit,
    /// or left by a mover that failed.
    pub async fn transfers(
        &self,
        product: &ProductId,
        from: u16,
    ) -> PortResult<Vec<crate::buckets::Transfer>> {
        let mut c = self.conn().await?;
        let records: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(self.bucket_keys(product, from).transfers())
            .query_async(&mut c)
            .await
            .map_err(classify)?;
        records
            .iter()
            .map(|(id, r)| {
                crate::buckets::Transfer::parse(id, r).ok_or_else(|| {
                    InfraError::permanent(
                        "redis",
                        format!("transfer {id} of {product} bucket {from} is listed as {r:?}, not <to>:<units>:<lent_at>: fix or remove that field"),
                    )
                })
            })
            .collect()
    }
}

/// How many units a bucket is asked to lend ([`RedisGate::lend`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Up to this many.
    Units(i64),
    /// Up to this many, or half the lender's shelf when that is more.
    AtLeastHalf(i64),
}
