//! [`OrderBook`]: placing orders and reading them.

use super::*;

impl OrderBook for DynamoStore {
    async fn place(&self, msg: &OrderMessage, terms: &Reservation) -> PortResult<Placement> {
        let cond = "attribute_not_exists(pk)";
        let id = msg.request_id.as_str();
        let shards = terms.ledger_shards.max(1);
        let mut item = Self::order_item(msg, OrderStatus::Placed);
        item.extend([
            ("pay_by".into(), n(terms.pay_by_ms)),
            ("amount".into(), n(terms.amount)),
            ("currency".into(), s(terms.currency.as_str())),
            (
                "rebuy_after_release".into(),
                Av::Bool(terms.rebuy_after_release),
            ),
            ("ledger_shards".into(), n(shards)),
            (table::GSI2_PK.into(), s(table::due_shard(id))),
            (table::GSI2_SK.into(), s(table::due_at(terms.pay_by_ms, id))),
        ]);
        let order = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(cond)
            .build()
            .map_err(invalid)?;
        let guard = Put::builder()
            .table_name(&self.table)
            .item(
                table::PK,
                s(table::purchase(
                    msg.product_id.as_str(),
                    msg.user_id.as_str(),
                )),
            )
            .item("request_id", s(msg.request_id.as_str()))
            .item("quantity", n(msg.quantity.get()))
            .item(table::TTL, n(guard_expires_at(msg)))
            .condition_expression(cond)
            .build()
            .map_err(invalid)?;
        let quantity = i64::from(msg.quantity.get());
        let home = ledger::home(id, shards);
        // The home shard, one transaction, in the common case. The plan
        // survives every retry below: only a read of all shards changes it.
        let mut takes = self.first_plan(&msg.product_id, home, quantity);
        let deadline = tokio::time::Instant::now() + PLACE_CONTENTION_BUDGET;
        let mut pause = Duration::from_millis(2);
        loop {
            let mut items = vec![
                TransactWriteItem::builder().put(order.clone()).build(),
                TransactWriteItem::builder().put(guard.clone()).build(),
            ];
            // The stock guard: DynamoDB's own count of units, so an order
            // Redis admitted by mistake (lost decrements after a failover)
            // cannot land.
            for (shard, take) in &takes {
                let shard = table::ledger_shard(msg.product_id.as_str(), *shard);
                items.push(self.take_units(shard, *take, &[("sold", *take)])?);
            }
            let Some(reasons) = self.transact_reasons(items).await? else {
                return Ok(Placement::Placed);
            };
            let at = |i: usize| reasons.get(i).copied().unwrap_or(Cancel::No);
            if at(0) == Cancel::Condition {
                return Ok(Placement::Exists(
                    self.existing_status(&msg.request_id).await?,
                ));
            }
            // A buyer holding another order is refused as such, whatever the
            // shards say: as out of stock, Redis would free them to buy again.
            if at(1) == Cancel::Condition {
                return Ok(Placement::BuyerTaken);
            }
            // A shard that refused (dry) or was held (contended) sends the
            // order to one snapshot of them all: sold out only when all
            // together lack the units, else a new plan, starting after a
            // contended shard so contenders spread over the others.
            let refused = (0..takes.len()).find(|k| {
                at(2 + k) == Cancel::Condition || (at(2 + k) != Cancel::No && shards > 1)
            });
            let mut contended = reasons.contains(&Cancel::Contended);
            if let Some(k) = refused {
                let start = match at(2 + k) {
                    Cancel::Condition => home,
                    _ => (takes[k].0 + 1) % shards,
                };
                // One shard that refused the units: sold out, nothing to read.
                let snapshot = match shards {
                    1 => Ok(vec![0]),
                    _ => self.shard_units(&msg.product_id, shards).await,
                };
                match snapshot.map(|remaining| ledger::plan_take(&remaining, start, quantity)) {
                    Ok(Some(plan)) => takes = plan,
                    // The buyer's guard is held by their other order in
                    // flight: if it lands they hold an order, so wait for
                    // it rather than answer out of stock (which frees them).
                    Ok(None) if at(1) == Cancel::Contended => {}
                    Ok(None) => return Ok(Placement::OutOfStock),
                    // The snapshot met writes in flight (DynamoDB cancels a
                    // transactional read then; on a busy sale it would keep
                    // doing so): try the next shard whole, and decide sold
                    // out only from a snapshot that gets through.
                    Err(e) if e.is_transient() => {
                        contended = true;
                        takes = vec![((takes[k].0 + 1) % shards, quantity)];
                    }
                    Err(e) => return Err(e),
                }
            } else if !contended {
                return Err(InfraError::transient(
                    "dynamodb",
                    format!("placement cancelled without a reason: {reasons:?}"),
                ));
            }
            // Another transaction holds an item (a contender on a shard, or
            // this order's own other delivery): pause, jittered so
            // contenders part. A dry shard's replan goes on at once.
            let wait = if contended {
                pause / 2 + pause.mul_f64(fastrand::f64())
            } else {
                Duration::ZERO
            };
            if tokio::time::Instant::now() + wait > deadline {
                metrics::counter!("flashsale_placement_contention_exhausted_total").increment(1);
                return Err(InfraError::transient(
                    "dynamodb",
                    format!(
                        "the ledger stayed contended for {PLACE_CONTENTION_BUDGET:?} (last reasons {reasons:?}); \
                         the order is left to its next delivery"
                    ),
                ));
            }
            tokio::time::sleep(wait).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }
    async fn record_fate(
        &self,
        msg: &OrderMessage,
        status: OrderStatus,
        note: &FateNote,
    ) -> PortResult<Fate> {
        let mut item = Self::order_item(msg, status);
        item.insert("reason".into(), s(&note.reason));
        item.insert("receive_count".into(), n(note.receive_count));
        if let Some(t) = note.first_failure_ms {
            item.insert("first_failure_at".into(), n(t));
        }
        if let Some(t) = note.last_failure_ms {
            item.insert("last_failure_at".into(), n(t));
        }
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(Fate::Won),
            Err(SdkError::ServiceError(se))
                if matches!(se.err(), PutItemError::ConditionalCheckFailedException(_)) =>
            {
                Ok(Fate::Exists(self.existing_status(&msg.request_id).await?))
            }
            Err(e) => Err(classify("dynamodb", e)),
        }
    }
    async fn order(&self, id: &RequestId) -> PortResult<Option<RequestView>> {
        self.get(table::order(id.as_str()))
            .await?
            .as_ref()
            .map(order_view)
            .transpose()
    }
    async fn orders_of(&self, id: &ProductId) -> PortResult<Vec<RequestView>> {
        self.query_gsi1(&table::product(id.as_str()), None, None)
            .await?
            .iter()
            .map(order_view)
            .collect()
    }
}
