//! The Redis shelf against the DynamoDB ledger: healing it from the ledger,
//! and an operator's stock change (`POST /api/admin/products/{id}/stock`),
//! made once per Idempotency-Key on the shelf and the ledger together.
//!
//! A withdrawal starts on the Redis shelf, the only place that knows which
//! units nobody was admitted to: they are taken aside (`withdrawing`, which
//! the resync never offers), then DynamoDB records the withdrawal if its
//! ledger still holds them, and the shelf settles (or undoes) the take. An
//! addition starts in DynamoDB, its units `releasing` there until the shelf
//! has them, as a release's are. Every step is idempotent per key, and
//! whatever runs next (a retry of the call, the sweeper) finishes a change
//! a crash interrupted.

use crate::domain::{AuditEntry, StockChange};
use crate::error::InfraError;
use crate::ports::{Catalogue, SaleGate, ShelfChange, ShelfGate, ShelfStep, StockLedger};
use crate::retry::{self, Backoff};

/// How a stock change ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Made; `new` is false for a repeat of a change made before.
    Applied {
        new: bool,
    },
    /// A withdrawal of more units than nobody was admitted to: the shelf
    /// (or, after a failover, the ledger) holds `on_shelf` (None: unknown).
    Short {
        on_shelf: Option<i64>,
    },
    /// The key was used before for another change.
    KeyReused,
    UnknownProduct,
}

pub async fn change<G: ShelfGate + SaleGate, S: StockLedger + Catalogue>(
    gate: &G,
    store: &S,
    change: &StockChange,
    entry: &AuditEntry,
) -> Result<Outcome, InfraError> {
    // A repeat answers as the first did, and finishes what it left.
    if let Some(rec) = retry::transient(Backoff::DEFAULT, || store.stock_change(change)).await? {
        if rec.delta != change.delta {
            return Ok(Outcome::KeyReused);
        }
        return finish(gate, store, change, rec.applied)
            .await
            .map(|o| match o {
                Outcome::Applied { .. } => Outcome::Applied { new: false },
                other => other,
            });
    }
    // The first step is Redis' for both: a withdrawal takes its units, an
    // addition claims its key (so it cannot be recorded over a withdrawal
    // that took units under the same key and has yet to be recorded).
    let first = if change.delta > 0 {
        ShelfStep::Claim
    } else {
        ShelfStep::Take
    };
    match gate.change_shelf(change, first, Some(entry)).await? {
        ShelfChange::Short { on_shelf } => Ok(Outcome::Short {
            on_shelf: Some(on_shelf),
        }),
        ShelfChange::Seen(state) if !is_state_of(&state, change) => Ok(Outcome::KeyReused),
        // Taken or claimed now or before (a retry).
        ShelfChange::Done | ShelfChange::Seen(_) => record(gate, store, change, entry).await,
        // Not warmed here: DynamoDB alone, then the shelf from it, in case
        // a warm-up read the ledger before this change and set it after.
        ShelfChange::Cold => {
            let outcome = record(gate, store, change, entry).await?;
            heal_shelf(gate, store, &change.product_id).await?;
            Ok(outcome)
        }
    }
}

/// Whether a key's state in Redis (`taken:5`, `added:3`, ...) is that of
/// this change, not of another made under the same key.
fn is_state_of(state: &str, change: &StockChange) -> bool {
    let Some((step, n)) = state.split_once(':') else {
        return false;
    };
    let steps: &[&str] = if change.delta > 0 {
        &["adding", "added"]
    } else {
        &["taken", "withdrawn", "refused"]
    };
    steps.contains(&step) && n == change.units().to_string()
}

/// Sets the shelf from the ledger (the fence read first, see
/// resync.lua); nothing when the sale is not warmed.
pub async fn heal_shelf<G: ShelfGate + SaleGate, S: Catalogue>(
    gate: &G,
    store: &S,
    product: &crate::domain::ProductId,
) -> Result<(), InfraError> {
    if let Some(stats) = gate.stats(product).await? {
        resync_from_ledger(gate, store, product, stats.fence()).await?;
    }
    Ok(())
}

/// The shelf follows the ledger (`resync.lua`); the correction made.
/// `fence_seen` ([`crate::domain::ProductStats::fence`]) must be read
/// before the ledger.
pub async fn resync_from_ledger<G: ShelfGate, S: Catalogue>(
    gate: &G,
    store: &S,
    product: &crate::domain::ProductId,
    fence_seen: i64,
) -> Result<i64, InfraError> {
    let Some(ledger) = store.ledger(product).await? else {
        return Ok(0);
    };
    let drift = gate
        .resync(product, &ledger, fence_seen)
        .await?
        .unwrap_or(0);
    if drift != 0 {
        metrics::counter!("flashsale_stock_resyncs_total").increment(1);
        tracing::warn!(product_id = %product, drift, "Redis shelf differed from the DynamoDB ledger; corrected");
    }
    Ok(drift)
}

/// Records the change in DynamoDB and finishes it on the shelf: the steps
/// after a withdrawal's take, or an addition's all. Also the sweeper's, for
/// a withdrawal whose call died after the take.
pub async fn record<G: ShelfGate, S: StockLedger>(
    gate: &G,
    store: &S,
    change: &StockChange,
    entry: &AuditEntry,
) -> Result<Outcome, InfraError> {
    let recorded = retry::transient(Backoff::DEFAULT, || store.change_stock(change, entry)).await?;
    let Some((rec, new)) = recorded else {
        if change.delta < 0 {
            gate.change_shelf(change, ShelfStep::Undo, None).await?;
        }
        return Ok(Outcome::UnknownProduct);
    };
    if rec.delta != change.delta {
        // Another change holds the key: a withdrawal's take goes back.
        if change.delta < 0 {
            gate.change_shelf(change, ShelfStep::Undo, None).await?;
        }
        return Ok(Outcome::KeyReused);
    }
    finish(gate, store, change, rec.applied)
        .await
        .map(|o| match o {
            Outcome::Applied { .. } => Outcome::Applied { new },
            other => other,
        })
}

/// The shelf's steps after DynamoDB's record: a withdrawal settled (or,
/// refused, undone); an addition's units put on the shelf, only while its
/// record says they are due, then confirmed.
async fn finish<G: ShelfGate, S: StockLedger>(
    gate: &G,
    store: &S,
    change: &StockChange,
    applied: bool,
) -> Result<Outcome, InfraError> {
    if change.delta < 0 {
        let step = if applied {
            ShelfStep::Settle
        } else {
            ShelfStep::Undo
        };
        gate.change_shelf(change, step, None).await?;
        return Ok(if applied {
            Outcome::Applied { new: true }
        } else {
            Outcome::Short { on_shelf: None }
        });
    }
    shelve_addition(gate, store, change).await?;
    Ok(Outcome::Applied { new: true })
}

/// A withdrawal taken off the shelf, finished if DynamoDB has recorded it
/// (applied: settled; refused: undone); else left alone. True when it was.
pub async fn finish_recorded<G: ShelfGate, S: StockLedger>(
    gate: &G,
    store: &S,
    change: &StockChange,
) -> Result<bool, InfraError> {
    match retry::transient(Backoff::DEFAULT, || store.stock_change(change)).await? {
        Some(rec) if rec.delta == change.delta => {
            finish(gate, store, change, rec.applied).await?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// An addition's shelf step and its confirmation, if still due (the
/// sweeper finishes additions a crash interrupted through this too).
pub async fn shelve_addition<G: ShelfGate, S: StockLedger>(
    gate: &G,
    store: &S,
    change: &StockChange,
) -> Result<bool, InfraError> {
    let due = retry::transient(Backoff::DEFAULT, || store.stock_change(change))
        .await?
        .is_some_and(|r| r.shelf_due);
    if !due {
        return Ok(false);
    }
    gate.change_shelf(change, ShelfStep::Add, None).await?;
    retry::transient(Backoff::DEFAULT, || store.stock_change_shelved(change)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::DynamoStore;
    use crate::domain::{IdempotencyKey, ProductId, from_unix_ms};
    use crate::fakes::{Probe, admit_buyers, simulated_gate, stocked, warm};
    use crate::ports::prelude::*;
    use crate::redis::RedisGate;

    const NOW: i64 = 1_700_000_000_000;

    /// A warmed sale of 30 units, 10 of them admitted (pending).
    async fn sale() -> (RedisGate, DynamoStore, ProductId) {
        sale_with_ledger(30).await
    }

    /// The same shelf, the ledger holding `units` (a failover may leave the
    /// shelf showing more than the ledger has).
    async fn sale_with_ledger(units: u32) -> (RedisGate, DynamoStore, ProductId) {
        let (store, p) = cold_sale(units).await;
        let (_, gate) = simulated_gate();
        let product = store.product(&p).await.unwrap().unwrap();
        warm(&gate, &product, 30).await;
        admit_buyers(&gate, &p, 10).await;
        (gate, store, p)
    }

    /// A product of `units` in DynamoDB, warmed nowhere.
    async fn cold_sale(units: u32) -> (DynamoStore, ProductId) {
        (
            stocked("p1", units).await.0,
            ProductId::parse("p1").unwrap(),
        )
    }

    fn change(p: &ProductId, key: &str, delta: i64) -> StockChange {
        StockChange::new(p.clone(), IdempotencyKey::parse(key).unwrap(), delta).unwrap()
    }

    fn entry(p: &ProductId) -> AuditEntry {
        AuditEntry {
            product_id: Some(p.clone()),
            at: from_unix_ms(NOW),
            actor: "ops".into(),
            action: "withdraw_stock".into(),
            reason: "damaged".into(),
        }
    }

    /// The shelf, the units being withdrawn, the units withdrawn.
    async fn shelf(gate: &RedisGate, p: &ProductId) -> (i64, i64, i64) {
        let s = gate.stats(p).await.unwrap().expect("a warmed sale");
        (s.stock_left, s.withdrawing, s.withdrawn_units)
    }

    #[tokio::test]
    async fn a_withdrawal_takes_only_units_nobody_was_admitted_to_once_per_key() {
        let (gate, store, p) = sale().await;
        let c = change(&p, "w1", -15);
        assert_eq!(
            super::change(&gate, &store, &c, &entry(&p)).await.unwrap(),
            Outcome::Applied { new: true }
        );
        assert_eq!(shelf(&gate, &p).await, (5, 0, 15));
        let ledger = store.ledger_of(&p).await;
        assert_eq!((ledger.remaining, ledger.withdrawn), (15, 15));
        // A retry changes nothing and says so.
        assert_eq!(
            super::change(&gate, &store, &c, &entry(&p)).await.unwrap(),
            Outcome::Applied { new: false }
        );
        assert_eq!(shelf(&gate, &p).await, (5, 0, 15));
        assert_eq!(store.ledger_of(&p).await.remaining, 15);
        assert_eq!(store.audit(Some(&p)).await.unwrap().len(), 1);
        // The admitted units are not the operator's to withdraw.
        let more = change(&p, "w2", -6);
        assert_eq!(
            super::change(&gate, &store, &more, &entry(&p))
                .await
                .unwrap(),
            Outcome::Short { on_shelf: Some(5) }
        );
        assert_eq!(shelf(&gate, &p).await, (5, 0, 15));
        assert_eq!(store.ledger_of(&p).await.remaining, 15);
        // The same key for another change.
        let other = change(&p, "w1", -3);
        assert_eq!(
            super::change(&gate, &store, &other, &entry(&p))
                .await
                .unwrap(),
            Outcome::KeyReused
        );
    }

    #[tokio::test]
    async fn a_withdrawal_interrupted_after_its_take_is_finished_by_whoever_runs_next() {
        let (gate, store, p) = sale().await;
        let c = change(&p, "w1", -4);
        // The call died right after taking the units aside.
        gate.change_shelf(&c, ShelfStep::Take, Some(&entry(&p)))
            .await
            .unwrap();
        assert_eq!(shelf(&gate, &p).await, (16, 4, 0));
        let taken = gate.withdrawals_taken(&p).await.unwrap();
        assert_eq!(taken, [(c.clone(), entry(&p))]);
        // The sweeper's finish.
        assert_eq!(
            record(&gate, &store, &taken[0].0, &taken[0].1)
                .await
                .unwrap(),
            Outcome::Applied { new: true }
        );
        assert_eq!(shelf(&gate, &p).await, (16, 0, 4));
        assert_eq!(store.ledger_of(&p).await.remaining, 26);
        assert!(gate.withdrawals_taken(&p).await.unwrap().is_empty());
        // And the operator's retry finds it done.
        assert_eq!(
            super::change(&gate, &store, &c, &entry(&p)).await.unwrap(),
            Outcome::Applied { new: false }
        );
        assert_eq!(store.ledger_of(&p).await.remaining, 26);
    }

    /// After a failover that forgot sales, the shelf may show units the
    /// ledger no longer has: the ledger refuses and the take is undone.
    #[tokio::test]
    async fn a_withdrawal_the_ledger_cannot_cover_is_undone_on_the_shelf() {
        let (gate, store, p) = sale_with_ledger(3).await;
        let c = change(&p, "w1", -5);
        assert_eq!(
            super::change(&gate, &store, &c, &entry(&p)).await.unwrap(),
            Outcome::Short { on_shelf: None }
        );
        assert_eq!(shelf(&gate, &p).await, (20, 0, 0));
        assert_eq!(store.ledger_of(&p).await.remaining, 3);
        assert!(store.audit(Some(&p)).await.unwrap().is_empty());
        // A retry answers alike and moves nothing.
        assert_eq!(
            super::change(&gate, &store, &c, &entry(&p)).await.unwrap(),
            Outcome::Short { on_shelf: None }
        );
        assert_eq!(shelf(&gate, &p).await, (20, 0, 0));
    }

    /// Found in review: a withdrawal took units under a key and died; an
    /// addition under the same key must neither be recorded over it nor
    /// strand its units, and the withdrawal's finish gives them back.
    #[tokio::test]
    async fn a_key_held_by_an_unfinished_withdrawal_is_not_taken_by_an_addition() {
        let (gate, store, p) = sale().await;
        let w = change(&p, "k", -5);
        gate.change_shelf(&w, ShelfStep::Take, Some(&entry(&p)))
            .await
            .unwrap();
        let a = change(&p, "k", 5);
        assert_eq!(
            super::change(&gate, &store, &a, &entry(&p)).await.unwrap(),
            Outcome::KeyReused
        );
        assert!(
            store.stock_change(&a).await.unwrap().is_none(),
            "not recorded"
        );
        // And a record made under the key by another change gives a
        // withdrawal's take back when it is finished.
        store
            .change_stock(&change(&p, "k", 2), &entry(&p))
            .await
            .unwrap();
        assert_eq!(
            record(&gate, &store, &w, &entry(&p)).await.unwrap(),
            Outcome::KeyReused
        );
        assert_eq!(shelf(&gate, &p).await, (20, 0, 0));
        assert!(gate.withdrawals_taken(&p).await.unwrap().is_empty());
    }

    /// Found in review: a withdrawal that finds the sale cold is recorded
    /// in DynamoDB alone; a warm-up that read the ledger before it must not
    /// leave the shelf offering the withdrawn units.
    #[tokio::test]
    async fn a_cold_withdrawal_heals_a_shelf_warmed_from_an_older_ledger() {
        let (store, p) = cold_sale(30).await;
        let (_, gate) = simulated_gate();
        let c = change(&p, "w1", -5);
        assert_eq!(
            super::change(&gate, &store, &c, &entry(&p)).await.unwrap(),
            Outcome::Applied { new: true }
        );
        assert_eq!(store.ledger_of(&p).await.remaining, 25);
        // The warm-up read the ledger before the withdrawal and set the
        // shelf after it; then it heals, as the admin's warm does.
        let product = store.product(&p).await.unwrap().unwrap();
        warm(&gate, &product, 30).await;
        assert_eq!(shelf(&gate, &p).await.0, 30, "offering the withdrawn units");
        heal_shelf(&gate, &store, &p).await.unwrap();
        assert_eq!(shelf(&gate, &p).await.0, 25);
    }

    #[tokio::test]
    async fn an_addition_reaches_the_shelf_once_even_when_interrupted() {
        let (gate, store, p) = sale().await;
        let c = change(&p, "a1", 7);
        // Recorded, then the call died before the shelf step.
        store.change_stock(&c, &entry(&p)).await.unwrap();
        let ledger = store.ledger_of(&p).await;
        assert_eq!(
            (ledger.remaining, ledger.releasing, ledger.added),
            (37, 7, 7)
        );
        assert_eq!(
            store.stock_changes_due(&p).await.unwrap(),
            std::slice::from_ref(&c)
        );
        assert!(shelve_addition(&gate, &store, &c).await.unwrap());
        assert_eq!(shelf(&gate, &p).await.0, 27);
        assert_eq!(store.ledger_of(&p).await.releasing, 0);
        assert!(store.stock_changes_due(&p).await.unwrap().is_empty());
        // Finished: neither a second finish nor the retry adds again.
        assert!(!shelve_addition(&gate, &store, &c).await.unwrap());
        assert_eq!(
            super::change(&gate, &store, &c, &entry(&p)).await.unwrap(),
            Outcome::Applied { new: false }
        );
        assert_eq!(shelf(&gate, &p).await.0, 27);
        assert_eq!(store.product(&p).await.unwrap().unwrap().stock, 37);
    }
}
