//! The books of one product, read straight from Redis and DynamoDB, and
//! the rules that say whether they balance.

use std::collections::HashMap;
use std::fmt;

use anyhow::{Context, Result};
use shared::aws::DynamoStore;
use shared::domain::{OrderStatus, ProductId};
use shared::ports::prelude::*;
use shared::redis::RedisGate;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Audit {
    /// The sale's stock now (DynamoDB's product, after operators' changes).
    pub stock_total: i64,
    // Redis.
    /// Units on the shelf.
    pub stock_left: i64,
    pub admitted: i64,
    pub pending: i64,
    /// Compensations that put units back (at most one per compensated
    /// request; none for one Redis had forgotten).
    pub restocked: i64,
    /// Units an operator's withdrawal took off the shelf, not yet recorded.
    pub withdrawing: i64,
    // DynamoDB.
    /// Units operators added and withdrew (the ledger's counts).
    pub added: i64,
    pub withdrawn: i64,
    /// Orders ever placed (whatever they became after).
    pub placed: i64,
    /// Units held by orders: placed and not released (reserved or paid).
    pub placed_units: i64,
    /// Reservations still open (placed, not paid, cancelled or expired).
    pub open: i64,
    pub rejected: i64,
    pub compensated: i64,
    /// Orders paid once (whatever the provider did since), and their units.
    pub paid: i64,
    pub paid_units: i64,
    /// Paid orders now refunded / disputed (their units stay sold).
    pub refunded: i64,
    pub disputed: i64,
    pub cancelled: i64,
    pub expired: i64,
    /// Units given back by releases (the ledger's count).
    pub released: i64,
    /// Released units not yet confirmed back on the Redis shelf.
    pub releasing: i64,
    pub refund_due: i64,
    /// The ledger's paid count disagrees with the paid orders by this much.
    pub paid_miscount: i64,
    /// The ledger's refund count disagrees with the refunded orders (a
    /// refund moves one order and counts once; refunded is final).
    pub refunded_miscount: i64,
    /// The stock ledger's units for the shelf (remaining - releasing).
    pub ledger_remaining: i64,
    /// Units sold beyond the stock.
    pub oversold: i64,
    /// Buyers holding more than one placed order.
    pub duplicate_buyers: i64,
}

impl Audit {
    /// Every rule the books break, in words; empty when they balance.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.oversold > 0 {
            p.push(format!("{} units sold beyond the stock", self.oversold));
        }
        if self.duplicate_buyers > 0 {
            p.push(format!("{} buyers hold two orders", self.duplicate_buyers));
        }
        if self.pending > 0 {
            p.push(format!("{} admitted requests still pending", self.pending));
        }
        // More decided than Redis counts is fine: a failover can forget
        // admissions whose messages were already in SQS.
        let decided = self.placed + self.rejected + self.compensated;
        if self.releasing > 0 {
            p.push(format!(
                "{} released units not yet back on the shelf",
                self.releasing
            ));
        }
        if self.withdrawing > 0 {
            p.push(format!(
                "{} units taken off the shelf by a withdrawal not yet recorded",
                self.withdrawing
            ));
        }
        if self.paid_miscount != 0 {
            p.push(format!(
                "the ledger counts {} paid orders more than DynamoDB holds",
                self.paid_miscount
            ));
        }
        if self.refunded_miscount != 0 {
            p.push(format!(
                "the ledger counts {} refunded orders more than DynamoDB holds",
                self.refunded_miscount
            ));
        }
        if decided < self.admitted {
            p.push(format!(
                "{} requests admitted in Redis but only {decided} orders decided in DynamoDB",
                self.admitted
            ));
        }
        if self.placed_units + self.stock_left != self.stock_total {
            p.push(format!(
                "units held by orders {} + units on the shelf {} != stock {}",
                self.placed_units, self.stock_left, self.stock_total
            ));
        }
        if self.ledger_remaining != self.stock_left {
            p.push(format!(
                "Redis shelf {} != DynamoDB ledger {} (Redis lost or gained state)",
                self.stock_left, self.ledger_remaining
            ));
        }
        if self.restocked > self.compensated {
            p.push(format!(
                "{} compensations but {} restocks",
                self.compensated, self.restocked
            ));
        }
        p
    }

    pub fn balanced(&self) -> bool {
        self.problems().is_empty()
    }
}

impl fmt::Display for Audit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "admitted={} placed={} stock_left={} oversold={} duplicate_buyers={} rejected={} compensated={} pending={} restocked={} ledger_remaining={} stock_total={} added={} withdrawn={} paid={} cancelled={} expired={} released={} refund_due={} open={} refunded={} disputed={}",
            self.admitted,
            self.placed,
            self.stock_left,
            self.oversold,
            self.duplicate_buyers,
            self.rejected,
            self.compensated,
            self.pending,
            self.restocked,
            self.ledger_remaining,
            self.stock_total,
            self.added,
            self.withdrawn,
            self.paid,
            self.cancelled,
            self.expired,
            self.released,
            self.refund_due,
            self.open,
            self.refunded,
            self.disputed,
        )
    }
}

pub async fn audit(gate: &RedisGate, store: &DynamoStore, product: &ProductId) -> Result<Audit> {
    let stats = gate
        .stats(product)
        .await?
        .with_context(|| format!("product {product} is not warmed in this Redis"))?;
    let ledger = store
        .ledger(product)
        .await?
        .with_context(|| format!("product {product} has no stock ledger in DynamoDB"))?;
    let stock_total = store
        .product(product)
        .await?
        .with_context(|| format!("product {product} is not in DynamoDB"))?
        .stock;
    let mut a = Audit {
        stock_total: i64::from(stock_total),
        withdrawing: stats.withdrawing,
        added: ledger.added,
        withdrawn: ledger.withdrawn,
        stock_left: stats.stock_left,
        admitted: stats.admitted,
        pending: stats.pending,
        restocked: stats.restocked,
        ledger_remaining: ledger.shelf_units(),
        released: ledger.released,
        releasing: ledger.releasing,
        refund_due: ledger.refund_due,
        ..Audit::default()
    };
    let mut per_buyer: HashMap<String, i64> = HashMap::new();
    for o in store.orders_of(product).await? {
        let units = i64::from(o.quantity.get());
        if o.status.was_placed() {
            a.placed += 1;
        }
        // Held: reserved, or sold (paid, and whatever the provider did
        // with the money since: the unit does not come back).
        if o.status.was_placed() && !o.status.is_release() {
            a.placed_units += units;
            *per_buyer.entry(o.user_id.to_string()).or_default() += 1;
        }
        if o.status.was_paid() {
            a.paid += 1;
            a.paid_units += units;
        }
        match o.status {
            OrderStatus::Placed => a.open += 1,
            OrderStatus::Paid => {}
            OrderStatus::Refunded => a.refunded += 1,
            OrderStatus::Disputed => a.disputed += 1,
            OrderStatus::Cancelled => a.cancelled += 1,
            OrderStatus::Expired => a.expired += 1,
            OrderStatus::Rejected => a.rejected += 1,
            OrderStatus::Compensated => a.compensated += 1,
            OrderStatus::Pending => {}
        }
    }
    a.paid_miscount = ledger.paid - a.paid;
    a.refunded_miscount = ledger.refunded - a.refunded;
    a.oversold = (a.placed_units - a.stock_total).max(0);
    a.duplicate_buyers = per_buyer.values().filter(|n| **n > 1).count() as i64;
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn balanced() -> Audit {
        Audit {
            stock_total: 10,
            stock_left: 2,
            admitted: 12,
            placed: 8,
            placed_units: 8,
            rejected: 3,
            compensated: 1,
            restocked: 1,
            ledger_remaining: 2,
            ..Audit::default()
        }
    }

    #[test]
    fn balanced_books_have_no_problems() {
        assert_eq!(balanced().problems(), Vec::<String>::new());
    }

    #[test]
    fn each_broken_rule_is_named() {
        let cases: Vec<(Audit, &str)> = vec![
            (
                Audit {
                    placed_units: 11,
                    oversold: 1,
                    ..balanced()
                },
                "beyond the stock",
            ),
            (
                Audit {
                    duplicate_buyers: 1,
                    ..balanced()
                },
                "two orders",
            ),
            (
                Audit {
                    pending: 1,
                    admitted: 13,
                    ..balanced()
                },
                "pending",
            ),
            (
                Audit {
                    admitted: 13,
                    ..balanced()
                },
                "decided in DynamoDB",
            ),
            (
                Audit {
                    stock_left: 3,
                    ledger_remaining: 3,
                    ..balanced()
                },
                "!= stock",
            ),
            (
                Audit {
                    ledger_remaining: 0,
                    ..balanced()
                },
                "ledger",
            ),
            (
                Audit {
                    restocked: 2,
                    ..balanced()
                },
                "restocks",
            ),
            (
                Audit {
                    releasing: 1,
                    ..balanced()
                },
                "not yet back on the shelf",
            ),
            (
                Audit {
                    paid_miscount: 1,
                    ..balanced()
                },
                "paid orders",
            ),
        ];
        for (audit, words) in cases {
            let problems = audit.problems();
            assert!(
                problems.iter().any(|p| p.contains(words)),
                "{words}: {problems:?}"
            );
            assert!(!audit.balanced());
        }
    }
}
