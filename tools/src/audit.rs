//! The books of one product, read straight from Redis and DynamoDB.

use std::collections::HashMap;
use std::fmt;

use anyhow::{Context, Result};
use shared::aws::DynamoStore;
use shared::domain::{OrderStatus, ProductId};
use shared::ports::{OrderStore, StockGate};
use shared::redis::RedisGate;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Audit {
    pub stock_total: i64,
    /// Redis.
    pub stock_left: i64,
    pub admitted: i64,
    pub pending: i64,
    /// DynamoDB orders by status, and units sold.
    pub placed: i64,
    pub placed_units: i64,
    pub rejected: i64,
    pub compensated: i64,
    /// Units sold beyond the stock (must be 0).
    pub oversold: i64,
    /// Buyers holding more than one placed order (must be 0).
    pub duplicate_buyers: i64,
}

impl Audit {
    /// Every unit either sold or on the shelf, nothing pending, nothing oversold.
    pub fn balanced(&self) -> bool {
        self.oversold == 0
            && self.duplicate_buyers == 0
            && self.pending == 0
            && self.placed_units + self.stock_left == self.stock_total
    }
}

impl fmt::Display for Audit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "admitted={} placed={} stock_left={} oversold={} duplicate_buyers={} rejected={} compensated={} pending={} stock_total={}",
            self.admitted,
            self.placed,
            self.stock_left,
            self.oversold,
            self.duplicate_buyers,
            self.rejected,
            self.compensated,
            self.pending,
            self.stock_total
        )
    }
}

pub async fn audit(gate: &RedisGate, store: &DynamoStore, product: &ProductId) -> Result<Audit> {
    let stats = gate
        .stats(product)
        .await?
        .with_context(|| format!("product {product} is not warmed in this Redis"))?;
    let orders = store.orders_of(product).await?;
    let mut a = Audit {
        stock_total: stats.stock_total,
        stock_left: stats.stock_left,
        admitted: stats.admitted,
        pending: stats.pending,
        ..Audit::default()
    };
    let mut per_buyer: HashMap<String, i64> = HashMap::new();
    for o in &orders {
        match o.status {
            OrderStatus::Placed => {
                a.placed += 1;
                a.placed_units += i64::from(o.quantity.get());
                *per_buyer.entry(o.user_id.to_string()).or_default() += 1;
            }
            OrderStatus::Rejected => a.rejected += 1,
            OrderStatus::Compensated => a.compensated += 1,
            OrderStatus::Pending => {}
        }
    }
    a.oversold = (a.placed_units - a.stock_total).max(0);
    a.duplicate_buyers = per_buyer.values().filter(|n| **n > 1).count() as i64;
    Ok(a)
}
