//! [`LifecycleStore`]: payments, refunds, releases and the due index.

use super::*;

impl LifecycleStore for DynamoStore {
    async fn pay(
        &self,
        o: &RequestView,
        event: &PaymentEvent,
        now_ms: i64,
    ) -> PortResult<PaymentWrite> {
        let id = o.request_id.as_str();
        let order = Update::builder()
            .table_name(&self.table)
            .key(table::PK, s(table::order(id)))
            .update_expression(
                "SET #st = :paid, updated_at = :now, paid_at = :now, payment_event = :ev \
                 REMOVE gsi2pk, gsi2sk",
            )
            .condition_expression("#st = :placed AND pay_by >= :now")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":paid", s(db_status(OrderStatus::Paid)))
            .expression_attribute_values(":placed", s(db_status(OrderStatus::Placed)))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":ev", s(event.event_id.as_str()))
            .build()
            .map_err(invalid)?;
        let record = PaymentRecord {
            event: event.clone(),
            outcome: PaymentOutcome::Paid,
            order_status: OrderStatus::Placed,
        };
        let payment = Put::builder()
            .table_name(&self.table)
            .set_item(Some(payment_item(&record, now_ms)))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(invalid)?;
        let units = i64::from(o.quantity.get());
        let counters = self
            .count(home_shard(o), &[("paid", 1), ("paid_units", units)])
            .build()
            .map_err(invalid)?;
        let items = vec![
            TransactWriteItem::builder().update(order).build(),
            TransactWriteItem::builder().put(payment).build(),
            TransactWriteItem::builder().update(counters).build(),
        ];
        match self.transact(items).await? {
            None => Ok(PaymentWrite::Written),
            Some(failed) if failed.get(1) == Some(&true) => Ok(PaymentWrite::EventExists),
            Some(_) => Ok(PaymentWrite::Refused(
                self.existing_status(&o.request_id).await?,
            )),
        }
    }
    async fn reverse(
        &self,
        o: &RequestView,
        record: &PaymentRecord,
        now_ms: i64,
    ) -> PortResult<PaymentWrite> {
        let Some(to) = record.outcome.moves_to() else {
            return Err(InfraError::permanent(
                "dynamodb",
                format!(
                    "reverse with outcome {}: only a refund or a dispute moves a paid order",
                    record.outcome.as_str()
                ),
            ));
        };
        if o.reservation.is_none() {
            return Err(InfraError::permanent(
                "dynamodb",
                format!(
                    "{} of {} from a view without its terms: read the order from DynamoDB first",
                    to.as_str(),
                    o.request_id
                ),
            ));
        }
        // Only from the status the decision read: a refund racing a
        // dispute (or a second refund) moves the order once, and the loser
        // is recorded against the status it then finds.
        let order = Update::builder()
            .table_name(&self.table)
            .key(table::PK, s(table::order(o.request_id.as_str())))
            .update_expression("SET #st = :to, updated_at = :now")
            .condition_expression("#st = :from")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":to", s(db_status(to)))
            .expression_attribute_values(":from", s(db_status(o.status)))
            .expression_attribute_values(":now", n(now_ms))
            .build()
            .map_err(invalid)?;
        let payment = Put::builder()
            .table_name(&self.table)
            .set_item(Some(payment_item(record, now_ms)))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(invalid)?;
        let counters = self
            .count(home_shard(o), &[(to.as_str(), 1)])
            .build()
            .map_err(invalid)?;
        let items = vec![
            TransactWriteItem::builder().update(order).build(),
            TransactWriteItem::builder().put(payment).build(),
            TransactWriteItem::builder().update(counters).build(),
        ];
        match self.transact(items).await? {
            None => Ok(PaymentWrite::Written),
            Some(failed) if failed.get(1) == Some(&true) => Ok(PaymentWrite::EventExists),
            Some(_) => Ok(PaymentWrite::Refused(
                self.existing_status(&o.request_id).await?,
            )),
        }
    }
    async fn record_event(&self, record: &PaymentRecord) -> PortResult<bool> {
        let now = unix_ms(time::OffsetDateTime::now_utc());
        let payment = Put::builder()
            .table_name(&self.table)
            .set_item(Some(payment_item(record, now)))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(invalid)?;
        let mut items = vec![TransactWriteItem::builder().put(payment).build()];
        // A refund of money owed back: that payment leaves the list of
        // refunds due (gsi1), with the refund's id on it.
        if record.outcome == PaymentOutcome::RefundSettled
            && let Some(due) = &record.event.payment_event_id
        {
            let settled = Update::builder()
                .table_name(&self.table)
                .key(table::PK, s(table::payment(due.as_str())))
                .update_expression("SET refunded_by = :ev REMOVE gsi1pk, gsi1sk")
                .condition_expression("attribute_exists(pk)")
                .expression_attribute_values(":ev", s(record.event.event_id.as_str()))
                .build()
                .map_err(invalid)?;
            items.push(TransactWriteItem::builder().update(settled).build());
        }
        if record.outcome.refund_due() {
            let counters = self
                .count(
                    table::product(record.event.request_id.product().as_str()),
                    &[("refund_due", 1)],
                )
                .build()
                .map_err(invalid)?;
            items.push(TransactWriteItem::builder().update(counters).build());
        }
        Ok(self.transact(items).await?.is_none())
    }
    async fn payment(&self, id: &EventId) -> PortResult<Option<PaymentRecord>> {
        self.get(table::payment(id.as_str()))
            .await?
            .as_ref()
            .map(payment_record)
            .transpose()
    }
    async fn release(
        &self,
        o: &RequestView,
        to: OrderStatus,
        now_ms: i64,
    ) -> PortResult<Transition> {
        if !to.is_release() {
            return Err(InfraError::permanent(
                "dynamodb",
                format!("release to {to:?}: only cancelled or expired release an order"),
            ));
        }
        // DynamoDB decides: the units, home shard and rebuy terms must be
        // the stored order's, so `o` must be DynamoDB's own view (Redis' copy
        // carries no terms, and after a failover may hold another quantity),
        // and the condition holds the write to the order as stored.
        let Some(terms) = &o.reservation else {
            return Err(InfraError::permanent(
                "dynamodb",
                format!(
                    "release of {} from a view without its reservation terms: read the order from \
                     DynamoDB first (a Redis view never drives a write)",
                    o.request_id
                ),
            ));
        };
        let id = o.request_id.as_str();
        let q = i64::from(o.quantity.get());
        let mut cond = "#st = :placed AND quantity = :q".to_owned();
        // Terms an older order may lack were their defaults then.
        cond.push_str(match terms.rebuy_after_release {
            true => " AND rebuy_after_release = :rebuy",
            false => {
                " AND (rebuy_after_release = :rebuy OR attribute_not_exists(rebuy_after_release))"
            }
        });
        cond.push_str(match terms.ledger_shards {
            1 => " AND (ledger_shards = :shards OR attribute_not_exists(ledger_shards))",
            _ => " AND ledger_shards = :shards",
        });
        if to == OrderStatus::Expired {
            cond.push_str(" AND pay_by < :now");
        }
        // Still due (the shelf step) from now on: the expirer finishes a
        // release whose Redis step did not run.
        let order = Update::builder()
            .table_name(&self.table)
            .key(table::PK, s(table::order(id)))
            .update_expression(
                "SET #st = :to, updated_at = :now, released_at = :now, shelf_due = :t, \
                 gsi2pk = :shard, gsi2sk = :due",
            )
            .condition_expression(cond)
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":to", s(db_status(to)))
            .expression_attribute_values(":placed", s(db_status(OrderStatus::Placed)))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":t", Av::Bool(true))
            .expression_attribute_values(":shard", s(table::due_shard(id)))
            .expression_attribute_values(":due", s(table::due_at(now_ms, id)))
            .expression_attribute_values(":q", n(q))
            .expression_attribute_values(":rebuy", Av::Bool(terms.rebuy_after_release))
            .expression_attribute_values(":shards", n(terms.ledger_shards))
            .build()
            .map_err(invalid)?;
        let counters = self
            .count(
                home_shard(o),
                &[
                    ("remaining", q),
                    ("releasing", q),
                    ("released", q),
                    (to.as_str(), 1),
                ],
            )
            .build()
            .map_err(invalid)?;
        let mut items = vec![
            TransactWriteItem::builder().update(order).build(),
            TransactWriteItem::builder().update(counters).build(),
        ];
        if terms.rebuy_after_release {
            let guard = Delete::builder()
                .table_name(&self.table)
                .key(
                    table::PK,
                    s(table::purchase(o.product_id.as_str(), o.user_id.as_str())),
                )
                .build()
                .map_err(invalid)?;
            items.push(TransactWriteItem::builder().delete(guard).build());
        }
        match self.transact(items).await? {
            None => Ok(Transition::Done),
            Some(_) => Ok(Transition::Refused(
                self.existing_status(&o.request_id).await?,
            )),
        }
    }
    async fn shelved(&self, o: &RequestView) -> PortResult<bool> {
        let order = Update::builder()
            .table_name(&self.table)
            .key(table::PK, s(table::order(o.request_id.as_str())))
            .update_expression("REMOVE shelf_due, gsi2pk, gsi2sk")
            .condition_expression("attribute_exists(shelf_due)")
            .build()
            .map_err(invalid)?;
        let counters = self
            .count(
                home_shard(o),
                &[("releasing", -i64::from(o.quantity.get()))],
            )
            .build()
            .map_err(invalid)?;
        let items = vec![
            TransactWriteItem::builder().update(order).build(),
            TransactWriteItem::builder().update(counters).build(),
        ];
        Ok(self.transact(items).await?.is_none())
    }
    async fn shelf_due(&self, id: &RequestId) -> PortResult<bool> {
        Ok(self
            .get(table::order(id.as_str()))
            .await?
            .is_some_and(|item| item.contains_key("shelf_due")))
    }
    async fn due(&self, now_ms: i64, limit: usize) -> PortResult<Vec<RequestView>> {
        // Everything due before `now_ms`: sort keys start with the
        // zero-padded time, then `#`.
        let before = format!("{:015}", now_ms.max(0));
        let mut orders = Vec::new();
        let first = self.next_shard.fetch_add(1, Ordering::Relaxed);
        for turn in 0..u64::from(table::DUE_SHARDS) {
            let shard = (first + turn) % u64::from(table::DUE_SHARDS);
            if orders.len() >= limit {
                break;
            }
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(table::GSI2)
                .key_condition_expression("#pk = :pk AND #sk < :before")
                .expression_attribute_names("#pk", table::GSI2_PK)
                .expression_attribute_names("#sk", table::GSI2_SK)
                .expression_attribute_values(":pk", s(format!("DUE#{shard}")))
                .expression_attribute_values(":before", s(&before))
                .limit(i32::try_from(limit - orders.len()).unwrap_or(i32::MAX))
                .send()
                .await
                .map_err(|e| classify("dynamodb", e))?;
            for item in out.items() {
                // One unreadable item must not stop expiry for everyone.
                match order_view(item) {
                    Ok(order) => orders.push(order),
                    Err(e) => tracing::error!(
                        pk = get_s(item, table::PK).unwrap_or("?"),
                        error = %e,
                        "skipping an unreadable order in the due index"
                    ),
                }
            }
        }
        Ok(orders)
    }
}
