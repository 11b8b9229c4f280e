//! [`StockLedger`]: operators' stock changes in the ledger.

use super::*;

impl StockLedger for DynamoStore {
    async fn change_stock(
        &self,
        change: &StockChange,
        entry: &AuditEntry,
    ) -> PortResult<Option<(StockChangeRecord, bool)>> {
        let (p, key) = (change.product_id.as_str(), change.key.as_str());
        let units = change.units();
        let adding = change.delta > 0;
        let record = |applied: bool| {
            let mut put = Put::builder()
                .table_name(&self.table)
                .item(table::PK, s(table::stock_change(p, key)))
                .item("product_id", s(p))
                .item("key", s(key))
                .item("delta", n(change.delta))
                .item("applied", Av::Bool(applied))
                .item("at", n(unix_ms(entry.at)))
                .condition_expression("attribute_not_exists(pk)");
            if applied && adding {
                // Due (its shelf step) until confirmed: the sweeper finds it.
                put = put
                    .item("shelf_due", Av::Bool(true))
                    .item(table::GSI1_PK, s(table::stock_due(p)))
                    .item(table::GSI1_SK, s(key));
            }
            put.build().map_err(invalid)
        };
        // An addition goes to shard 0 (the product's item). A withdrawal
        // takes units the ledger still holds, never an order's: from shard 0
        // first, then as a plan over the shards read (as a placement does).
        let mut takes = vec![(0, units)];
        let mut replans: u16 = 0;
        loop {
            let take0 = takes.iter().find(|(i, _)| *i == 0).map_or(0, |t| t.1);
            let counters: &[(&str, i64)] = if adding {
                &[
                    ("stock", change.delta),
                    ("remaining", change.delta),
                    ("releasing", units),
                    ("added", units),
                ]
            } else {
                &[
                    ("stock", change.delta),
                    ("remaining", -take0),
                    ("withdrawn", units),
                ]
            };
            let product = self.count(table::product(p), counters);
            let product = if adding || take0 == 0 {
                product.condition_expression("attribute_exists(pk)")
            } else {
                product
                    .condition_expression("attribute_exists(pk) AND remaining >= :need")
                    .expression_attribute_values(":need", n(take0))
            };
            let mut items = vec![
                TransactWriteItem::builder().put(record(true)?).build(),
                self.audit_put(entry)?,
                TransactWriteItem::builder()
                    .update(product.build().map_err(invalid)?)
                    .build(),
            ];
            for (shard, take) in takes.iter().filter(|(i, _)| *i != 0 && !adding) {
                items.push(self.take_units(table::ledger_shard(p, *shard), *take, &[])?);
            }
            let Some(failed) = self.transact(items).await? else {
                let rec = StockChangeRecord {
                    delta: change.delta,
                    applied: true,
                    shelf_due: adding,
                };
                return Ok(Some((rec, true)));
            };
            if failed.first().copied().unwrap_or(false) {
                return Ok(self.stock_change(change).await?.map(|rec| (rec, false)));
            }
            let Some(product) = self.get(table::product(p)).await? else {
                return Ok(None);
            };
            // A shard refused: plan again from a fresh read, at most once
            // per shard (each lost race is a take by an order).
            let n = get_n(&product, "ledger_shards").unwrap_or(1);
            replans += 1;
            if adding || replans > n {
                break;
            }
            let remaining = ledger::units(&self.shards(&change.product_id, n).await?);
            match ledger::plan_take(&remaining, 0, units) {
                Some(plan) => takes = plan,
                None => break,
            }
        }
        // The units are no longer in the ledger: recorded as refused, so a
        // retry answers alike.
        let refused = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(record(false)?.item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match refused {
            Ok(_) => Ok(Some((
                StockChangeRecord {
                    delta: change.delta,
                    applied: false,
                    shelf_due: false,
                },
                true,
            ))),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(self.stock_change(change).await?.map(|rec| (rec, false)))
            }
            Err(e) => Err(classify("dynamodb", e)),
        }
    }
    async fn stock_change(&self, change: &StockChange) -> PortResult<Option<StockChangeRecord>> {
        let item = self
            .get(table::stock_change(
                change.product_id.as_str(),
                change.key.as_str(),
            ))
            .await?;
        item.map(|item| {
            Ok(StockChangeRecord {
                delta: get_n(&item, "delta").ok_or_else(|| corrupt("stock change"))?,
                applied: matches!(item.get("applied"), Some(Av::Bool(true))),
                shelf_due: item.contains_key("shelf_due"),
            })
        })
        .transpose()
    }
    async fn stock_change_shelved(&self, change: &StockChange) -> PortResult<bool> {
        let record = Update::builder()
            .table_name(&self.table)
            .key(
                table::PK,
                s(table::stock_change(
                    change.product_id.as_str(),
                    change.key.as_str(),
                )),
            )
            .update_expression("REMOVE shelf_due, gsi1pk, gsi1sk")
            .condition_expression("attribute_exists(shelf_due)")
            .build()
            .map_err(invalid)?;
        let counters = self
            .count(
                table::product(change.product_id.as_str()),
                &[("releasing", -change.units())],
            )
            .build()
            .map_err(invalid)?;
        let items = vec![
            TransactWriteItem::builder().update(record).build(),
            TransactWriteItem::builder().update(counters).build(),
        ];
        Ok(self.transact(items).await?.is_none())
    }
    async fn stock_changes_due(&self, product: &ProductId) -> PortResult<Vec<StockChange>> {
        self.query_gsi1(&table::stock_due(product.as_str()), None, None)
            .await?
            .iter()
            .map(|item| {
                let parse = || {
                    let key = IdempotencyKey::parse(get_s(item, "key")?).ok()?;
                    StockChange::new(product.clone(), key, get_n(item, "delta")?).ok()
                };
                parse().ok_or_else(|| corrupt("stock change"))
            })
            .collect()
    }
}
