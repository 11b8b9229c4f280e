//! [`Catalogue`]: products, their ledgers and the live sales.

use super::*;

impl Catalogue for DynamoStore {
    async fn create_product(&self, p: &Product) -> PortResult<bool> {
        let id = p.product_id.as_str();
        let split = ledger::split(i64::from(p.stock), p.ledger_shards);
        let product = Put::builder()
            .table_name(&self.table)
            .item(table::PK, s(table::product(id)))
            .item("product_id", s(id))
            .item("name", s(&p.name))
            .item("stock", n(p.stock))
            .item("ledger_shards", n(split.len()))
            .item("stock_buckets", n(p.stock_buckets))
            .item("remaining", n(split[0]))
            .item("sold", n(0))
            .item("per_buyer_limit", n(p.per_buyer_limit))
            .item("starts_at", n(unix_ms(p.starts_at)))
            .item("ends_at", n(unix_ms(p.ends_at)))
            .item("price", n(p.price))
            .item("currency", s(p.currency.as_str()))
            .item("payment_window_secs", n(p.payment_window_secs))
            .item("rebuy_after_release", Av::Bool(p.rebuy_after_release))
            .item("paused", Av::Bool(p.paused))
            .item(
                "rate_limits",
                s(serde_json::to_string(&p.rate_limits).map_err(|_| corrupt("rate_limits"))?),
            )
            .item(table::GSI1_PK, s(table::PRODUCTS))
            .item(table::GSI1_SK, s(table::sale_end(unix_ms(p.ends_at))))
            .condition_expression("attribute_not_exists(pk)");
        let product = match &p.waiting_room {
            Some(room) => product.item("waiting_room", s(room_json(room)?)),
            None => product,
        }
        .build()
        .map_err(invalid)?;
        let mut items = vec![TransactWriteItem::builder().put(product).build()];
        for (i, units) in split.iter().enumerate().skip(1) {
            let shard = Put::builder()
                .table_name(&self.table)
                .item(table::PK, s(table::ledger_shard(id, i as u16)))
                .item("product_id", s(id))
                .item("remaining", n(units))
                .item("sold", n(0))
                .condition_expression("attribute_not_exists(pk)")
                .build()
                .map_err(invalid)?;
            items.push(TransactWriteItem::builder().put(shard).build());
        }
        Ok(self.transact(items).await?.is_none())
    }
    async fn product(&self, id: &ProductId) -> PortResult<Option<Product>> {
        let Some(item) = self.get(table::product(id.as_str())).await? else {
            return Ok(None);
        };
        let item = &item;
        let parse = || -> Option<Product> {
            Some(Product {
                product_id: ProductId::parse(get_s(item, "product_id")?).ok()?,
                name: get_s(item, "name")?.to_owned(),
                stock: get_n(item, "stock")?,
                per_buyer_limit: get_n(item, "per_buyer_limit")?,
                starts_at: from_unix_ms(get_n(item, "starts_at")?),
                ends_at: from_unix_ms(get_n(item, "ends_at")?),
                // Products created before the lifecycle have no terms: free,
                // "no currency" (ISO 4217 XXX), the default window.
                price: get_n(item, "price").unwrap_or(0),
                currency: get_s(item, "currency")
                    .map_or(Currency::parse("XXX"), Currency::parse)
                    .ok()?,
                payment_window_secs: get_n(item, "payment_window_secs")
                    .unwrap_or(crate::domain::DEFAULT_PAYMENT_WINDOW_SECS),
                rebuy_after_release: item
                    .get("rebuy_after_release")
                    .and_then(|v| v.as_bool().ok())
                    .copied()
                    .unwrap_or(false),
                rate_limits: match get_s(item, "rate_limits") {
                    Some(json) => serde_json::from_str(json).ok()?,
                    None => RateLimits::default(),
                },
                paused: item
                    .get("paused")
                    .and_then(|v| v.as_bool().ok())
                    .copied()
                    .unwrap_or(false),
                control_seq: get_n(item, "control_seq").unwrap_or(0),
                ledger_shards: get_n(item, "ledger_shards").unwrap_or(1),
                stock_buckets: get_n(item, "stock_buckets").unwrap_or(1),
                waiting_room: match get_s(item, "waiting_room") {
                    Some(json) => Some(serde_json::from_str(json).ok()?),
                    None => None,
                },
            })
        };
        parse().map(Some).ok_or_else(|| corrupt("product"))
    }
    async fn ledger(&self, id: &ProductId) -> PortResult<Option<Ledger>> {
        let Some(item) = self.get(table::product(id.as_str())).await? else {
            return Ok(None);
        };
        if !item.contains_key("remaining") {
            return Err(corrupt("product"));
        }
        match get_n::<u16>(&item, "ledger_shards").unwrap_or(1) {
            1 => Ok(Some(ledger_counts(&item))),
            // Its readers (the sweep, admin stats, warm-up) can wait a few
            // pauses for writes in flight to land; a placement cannot.
            n => {
                let snapshot = Backoff {
                    attempts: 6,
                    first: Duration::from_millis(5),
                };
                let shards = retry::transient(snapshot, || self.shards(id, n)).await?;
                Ok(Some(ledger::total(&shards)))
            }
        }
    }
    async fn live_products(&self, ends_after_ms: i64) -> PortResult<Vec<ProductId>> {
        let after = table::sale_end(ends_after_ms);
        let items = self
            .query_gsi1(table::PRODUCTS, Some(&after), Some("product_id"))
            .await?;
        Ok(items
            .iter()
            .filter_map(|item| ProductId::parse(get_s(item, "product_id")?).ok())
            .collect())
    }
}

pub(super) fn room_json(room: &WaitingRoom) -> PortResult<String> {
    serde_json::to_string(room).map_err(|_| corrupt("waiting_room"))
}
