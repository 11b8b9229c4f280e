//! [`ControlStore`]: controls, the kill switch, the deny list, the audit.

use super::*;

impl ControlStore for DynamoStore {
    async fn control(
        &self,
        id: &ProductId,
        control: Control,
        entry: &AuditEntry,
    ) -> PortResult<Option<Controlled>> {
        let at = unix_ms(entry.at);
        let product = Update::builder()
            .table_name(&self.table)
            .key(table::PK, s(table::product(id.as_str())));
        // Only a change is written (and audited): a repeated control is a
        // no-op here, and the caller applies it to Redis again.
        let product = match control {
            Control::Pause | Control::Resume => {
                let pause = control == Control::Pause;
                product
                    .update_expression("SET paused = :to ADD control_seq :one")
                    .condition_expression(if pause {
                        "attribute_exists(pk) AND (attribute_not_exists(paused) OR paused = :from)"
                    } else {
                        "attribute_exists(pk) AND paused = :from"
                    })
                    .expression_attribute_values(":to", Av::Bool(pause))
                    .expression_attribute_values(":from", Av::Bool(!pause))
            }
            Control::End => product
                .update_expression("SET ends_at = :now, #sk = :sk ADD control_seq :one")
                .condition_expression("attribute_exists(pk) AND ends_at > :now")
                .expression_attribute_names("#sk", table::GSI1_SK)
                .expression_attribute_values(":now", n(at))
                .expression_attribute_values(":sk", s(table::sale_end(at))),
        };
        let product = product.expression_attribute_values(":one", n(1));
        let items = vec![
            TransactWriteItem::builder()
                .update(product.build().map_err(|_| corrupt("control"))?)
                .build(),
            self.audit_put(entry)?,
        ];
        // Committed, or refused by its condition (unknown, or nothing to
        // change): either way the product as it now is.
        let changed = self.transact(items).await?.is_none();
        Ok(self
            .product(id)
            .await?
            .map(|product| Controlled { product, changed }))
    }
    async fn change_room(
        &self,
        id: &ProductId,
        from: &WaitingRoom,
        to: &WaitingRoom,
        entry: &AuditEntry,
    ) -> PortResult<bool> {
        // The room as the caller read it: two operators' changes never
        // merge into one neither asked for.
        let product = Update::builder()
            .table_name(&self.table)
            .key(table::PK, s(table::product(id.as_str())))
            .update_expression("SET waiting_room = :to")
            .condition_expression("waiting_room = :from")
            .expression_attribute_values(":to", s(catalogue::room_json(to)?))
            .expression_attribute_values(":from", s(catalogue::room_json(from)?))
            .build()
            .map_err(invalid)?;
        let items = vec![
            TransactWriteItem::builder().update(product).build(),
            self.audit_put(entry)?,
        ];
        Ok(self.transact(items).await?.is_none())
    }
    async fn audit(&self, id: Option<&ProductId>) -> PortResult<Vec<AuditEntry>> {
        self.query_gsi1(&table::audit(id.map(ProductId::as_str)), None, None)
            .await?
            .iter()
            .map(|item| {
                let entry = || {
                    Some(AuditEntry {
                        product_id: match get_s(item, "product_id") {
                            Some(p) => Some(ProductId::parse(p).ok()?),
                            None => None,
                        },
                        at: from_unix_ms(get_n(item, "at")?),
                        actor: get_s(item, "actor")?.to_owned(),
                        action: get_s(item, "action")?.to_owned(),
                        reason: get_s(item, "reason").unwrap_or_default().to_owned(),
                    })
                };
                entry().ok_or_else(|| corrupt("audit"))
            })
            .collect()
    }
    async fn switch_admissions(
        &self,
        engaged: bool,
        entry: &AuditEntry,
    ) -> PortResult<(KillSwitch, bool)> {
        // Only a change is written and audited, as for a sale's controls.
        let switch = Update::builder()
            .table_name(&self.table)
            .key(table::PK, s(table::KILL_SWITCH))
            .update_expression("SET engaged = :to ADD seq :one")
            .condition_expression(if engaged {
                "attribute_not_exists(engaged) OR engaged = :from"
            } else {
                "engaged = :from"
            })
            .expression_attribute_values(":to", Av::Bool(engaged))
            .expression_attribute_values(":from", Av::Bool(!engaged))
            .expression_attribute_values(":one", n(1))
            .build()
            .map_err(invalid)?;
        let items = vec![
            TransactWriteItem::builder().update(switch).build(),
            self.audit_put(entry)?,
        ];
        let changed = self.transact(items).await?.is_none();
        Ok((ControlStore::kill_switch(self).await?, changed))
    }
    async fn kill_switch(&self) -> PortResult<KillSwitch> {
        let item = self.get(table::KILL_SWITCH.to_owned()).await?;
        Ok(item.map_or_else(KillSwitch::default, |item| KillSwitch {
            engaged: matches!(item.get("engaged"), Some(Av::Bool(true))),
            seq: get_n(&item, "seq").unwrap_or(0),
        }))
    }
    async fn set_denial(
        &self,
        user: &UserId,
        denial: Option<&Denial>,
        entry: &AuditEntry,
    ) -> PortResult<bool> {
        let pk = table::denial(user.as_str());
        let change = match denial {
            Some(d) => {
                let mut put = Put::builder()
                    .table_name(&self.table)
                    .item(table::PK, s(pk))
                    .item(table::GSI1_PK, s(table::DENIED))
                    .item(table::GSI1_SK, s(user.as_str()))
                    .item("user_id", s(user.as_str()))
                    .item("reason", s(&d.reason))
                    .item("actor", s(&d.actor))
                    .item("at", n(unix_ms(d.at)));
                if let Some(until) = d.until {
                    // Gone from the table a week after it lapsed.
                    put = put
                        .item("until", n(unix_ms(until)))
                        .item(table::TTL, n(until.unix_timestamp() + 7 * 24 * 3600));
                }
                TransactWriteItem::builder()
                    .put(put.build().map_err(invalid)?)
                    .build()
            }
            None => TransactWriteItem::builder()
                .delete(
                    Delete::builder()
                        .table_name(&self.table)
                        .key(table::PK, s(pk))
                        .condition_expression("attribute_exists(pk)")
                        .build()
                        .map_err(invalid)?,
                )
                .build(),
        };
        let items = vec![change, self.audit_put(entry)?];
        Ok(self.transact(items).await?.is_none())
    }
    async fn denials(&self) -> PortResult<Vec<Denial>> {
        self.query_gsi1(table::DENIED, None, None)
            .await?
            .iter()
            .map(denial_of)
            .collect()
    }
    async fn denial(&self, user: &UserId) -> PortResult<Option<Denial>> {
        self.get(table::denial(user.as_str()))
            .await?
            .as_ref()
            .map(denial_of)
            .transpose()
    }
}
