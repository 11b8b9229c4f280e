//! [`AdmissionGate`]: admission in the buyer's stock bucket, borrowing from
//! its siblings; request state, settle, restock and the pending index.

use super::{RedisGate, STATE_TTL_SECS, Want, classify, keys, unexpected};
use crate::domain::{
    Admission, OrderMessage, OrderStatus, ProductId, Purchase, Quantity, RateLimit, Refusal,
    RequestId, RequestView, UserId, from_unix_ms,
};
use crate::ports::{AdmissionGate, PendingPage, PendingRequest, PortResult, SendMark, Settled};

/// Rounds of borrowing (each asks every sibling once) an admission runs
/// before it answers [`Refusal::StockMoving`] instead of a 410 it could not
/// stand behind.
pub const BORROW_ROUNDS: usize = 3;

/// The stats fields the census compares across its two passes: units ever
/// put on the shelf, and the counters of each way they come.
const ARRIVALS: [&str; 7] = [
    "arrived_units",
    "received_units",
    "released_units",
    "added_units",
    "restocked",
    "resync_drift",
    "adopted_units",
];
type ArrivalCounts = Vec<Option<i64>>;

impl RedisGate {
    /// The units a product's shelves held at one instant while this ran
    /// (every bucket's shelf plus the units in transit between buckets), or
    /// None when that cannot be told. Each bucket's `arrived_units` (units
    /// ever put on its shelf: every script that raises a shelf counts them)
    /// is read before its shelf and its lent transfers, and again once every
    /// bucket and every transfer's receive marker was read. Let T be the
    /// moment between the two passes. A bucket whose count did not move
    /// gained nothing over a span holding T, so at T it held at most what
    /// was read. A unit in transit at T was lent after its lender's read
    /// (then counted on that shelf) or before (then listed, and not yet
    /// received when its marker was read, or its receive would have moved
    /// the borrower's count within its span). So the sum bounds what the
    /// product held at T from above: a total below the quantity asked is a
    /// sold-out that stands. Miscounts only overcount (a unit lent after one
    /// read and received before another), which never makes a false 410.
    /// Not covered: a failover that forgets a shelf's arrivals and sees as
    /// many arrive again within the census (docs/architecture.md). The
    /// counters scripts of a release before `arrived_units` kept (receives,
    /// releases, additions, restocks, resyncs) are compared too, so a census
    /// stands while a deploy still runs the older scripts somewhere.
    pub(super) async fn census(&self, product: &ProductId, k: u16) -> PortResult<Option<i64>> {
        let mut c = self.conn().await?;
        let mut arrived = Vec::with_capacity(usize::from(k));
        let mut total = 0;
        let mut lent = Vec::new();
        for b in 0..k {
            let keys = self.bucket_keys(product, b);
            let (count, shelf, transfers): (ArrivalCounts, Option<i64>, Vec<(String, String)>) =
                redis::pipe()
                    .hmget(keys.stats(), &ARRIVALS)
                    .get(keys.stock())
                    .hgetall(keys.transfers())
                    .query_async(&mut c)
                    .await
                    .map_err(classify)?;
            arrived.push(count);
            total += shelf.unwrap_or(0).max(0);
            lent.extend(
                transfers
                    .iter()
                    .filter_map(|(id, r)| crate::buckets::Transfer::parse(id, r)),
            );
        }
        total += self.not_received(product, &lent).await?;
        for (b, before) in (0..k).zip(arrived) {
            let now: ArrivalCounts = redis::cmd("HMGET")
                .arg(self.bucket_keys(product, b).stats())
                .arg(&ARRIVALS)
                .query_async(&mut c)
                .await
                .map_err(classify)?;
            if now != before {
                return Ok(None);
            }
        }
        Ok(Some(total))
    }

    /// One run of the admission script in bucket `bucket`.
    pub(super) async fn admit_in(
        &self,
        p: &Purchase,
        bucket: u16,
        limits_charged: bool,
    ) -> PortResult<Admission> {
        let k = self.bucket_keys(&p.product_id, bucket);
        let mut c = self.conn().await?;
        let reply: Vec<String> = self
            .inner
            .scripts
            .admit
            .key(&k.admission(p)[..])
            .arg(p.request_id.as_str())
            .arg(p.user_id.as_str())
            .arg(p.quantity.get())
            .arg(if p.idempotency_key.is_some() {
                "1"
            } else {
                "0"
            })
            .arg(STATE_TTL_SECS)
            .arg(RateLimit::spec(self.inner.settings.rate_limits.buyer))
            .arg(RateLimit::spec(self.inner.settings.rate_limits.ip))
            .arg(if p.client_ip.is_some() { "1" } else { "0" })
            .arg(if limits_charged { "1" } else { "0" })
            .arg(if p.client_ip.and_then(keys::site_prefix).is_some() {
                "1"
            } else {
                "0"
            })
            .invoke_async(&mut c)
            .await
            .map_err(classify)?;
        let part = |i: usize| reply.get(i).map_or("", String::as_str);
        let number = |i: usize| part(i).parse::<i64>().map_err(|_| unexpected("admission"));
        match part(0) {
            "admitted" => Ok(Admission::Admitted {
                admitted_at_ms: number(1)?,
                sale_ends_at_ms: number(2)?,
            }),
            "replay" => Ok(Admission::Replay {
                admitted_at_ms: number(1)?,
                sale_ends_at_ms: number(2)?,
                status: OrderStatus::parse(part(3)).ok_or_else(|| unexpected("admission"))?,
                sent: part(4) == "1",
            }),
            "short" => Ok(Admission::Short {
                stock_left: number(1)?,
            }),
            "throttled" => Ok(Admission::Throttled {
                retry_after_ms: number(1)?,
            }),
            "sale_not_started" => Ok(Admission::NotStarted {
                starts_at_ms: number(1)?,
            }),
            other => Refusal::from_code(other)
                .map(Admission::Refused)
                .ok_or_else(|| unexpected("admission")),
        }
    }

    /// One stock bucket's pending index entries admitted by `cutoff_ms`,
    /// from `offset`, at most `limit`, with their states.
    pub(super) async fn bucket_pending_page(
        &self,
        product: &ProductId,
        bucket: u16,
        cutoff_ms: i64,
        offset: usize,
        limit: usize,
    ) -> PortResult<PendingPage> {
        let k = self.bucket_keys(product, bucket);
        let mut c = self.conn().await?;
        let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(k.pending())
            .arg("-inf")
            .arg(cutoff_ms)
            .arg("LIMIT")
            .arg(offset)
            .arg(limit)
            .query_async(&mut c)
            .await
            .map_err(classify)?;
        let mut page = PendingPage {
            scanned: ids.len(),
            requests: Vec::with_capacity(ids.len()),
        };
        if ids.is_empty() {
            return Ok(page);
        }
        let ends_at: Option<i64> = redis::cmd("HGET")
            .arg(k.meta())
            .arg("ends_at")
            .query_async(&mut c)
            .await
            .map_err(classify)?;
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hgetall(k.req_raw(id));
        }
        let states: Vec<Vec<(String, String)>> =
            pipe.query_async(&mut c).await.map_err(classify)?;
        let mut orphans = Vec::new();
        for (raw, fields) in ids.iter().zip(states) {
            let usable = RequestId::parse(raw)
                .ok()
                .and_then(|id| pending_request(&id, &fields, ends_at.unwrap_or(0)));
            match usable {
                Some(r) => page.requests.push(r),
                None => orphans.push(raw.as_str()),
            }
        }
        if !orphans.is_empty() {
            // Nothing can be re-published without a state, and the entry
            // would hold this page forever: drop it from the index.
            tracing::warn!(product_id = %product, ?orphans, "pending requests without state dropped");
            redis::cmd("ZREM")
                .arg(k.pending())
                .arg(&orphans)
                .query_async::<()>(&mut c)
                .await
                .map_err(classify)?;
        }
        Ok(page)
    }
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn pending_request(
    id: &RequestId,
    fields: &[(String, String)],
    sale_ends_at: i64,
) -> Option<PendingRequest> {
    let get = |name: &str| field(fields, name);
    let msg = OrderMessage {
        v: OrderMessage::VERSION,
        request_id: id.clone(),
        product_id: id.product(),
        user_id: UserId::parse(get("user")?).ok()?,
        quantity: Quantity::new(get("qty")?.parse().ok()?).ok()?,
        admitted_at: get("admitted_at")?.parse().ok()?,
        sale_ends_at,
    };
    let at = |name: &str| get(name).and_then(|v| v.parse::<i64>().ok());
    Some(PendingRequest {
        msg,
        sent_at_ms: at("sent_at").max(at("claimed_at")),
    })
}

fn request_view(id: &RequestId, fields: Vec<(String, String)>) -> Option<RequestView> {
    let get = |name: &str| field(&fields, name);
    Some(RequestView {
        request_id: id.clone(),
        product_id: id.product(),
        user_id: UserId::parse(get("user")?).ok()?,
        quantity: Quantity::new(get("qty")?.parse().ok()?).ok()?,
        status: OrderStatus::parse(get("status")?)?,
        updated_at: from_unix_ms(get("updated_at")?.parse().ok()?),
        reservation: None,
    })
}

impl AdmissionGate for RedisGate {
    /// In the buyer's stock bucket. One that ran dry (or holds fewer than
    /// asked) borrows from its siblings, at least half of each one's shelf,
    /// admitting again after every borrow; sold out only when a census of
    /// every bucket proves the product as a whole could not serve the buyer
    /// ([`Self::census`]); after [`BORROW_ROUNDS`] rounds without either,
    /// [`Refusal::StockMoving`] (503): a 410 is a promise.
    async fn admit(&self, p: &Purchase) -> PortResult<Admission> {
        // Meta missing, bucket 0 answers: not warmed, as it would for one
        // bucket (a buyer of another bucket is refused, never misrouted:
        // nothing is admitted there without the meta).
        let k = self.meta_buckets(&p.product_id).await?.unwrap_or(1);
        let b = crate::buckets::bucket_of(p.user_id.as_str(), k);
        let mut answer = self.admit_in(p, b, false).await?;
        if k == 1 {
            return Ok(answer);
        }
        let qty = i64::from(p.quantity.get());
        // Every stock answer comes after the limiters were charged
        // (admit.lua): later runs do not charge them again.
        let missing = |answer: &Admission| match answer {
            Admission::Refused(Refusal::SoldOut) => Some(qty),
            Admission::Short { stock_left } => Some(qty - stock_left),
            _ => None,
        };
        for _ in 0..BORROW_ROUNDS {
            // Every sibling asked in ring order, the buyer's bucket again
            // after each borrow: other buyers of this bucket may take what
            // was borrowed, and a sibling asked may refill (or lend on)
            // after it was asked, so no answer of one round is final.
            let mut moved = false;
            for s in crate::buckets::siblings(b, k) {
                let Some(lacking) = missing(&answer) else {
                    return Ok(answer);
                };
                let transfer = format!("{}-{s}-{}", p.request_id.as_str(), self.transfer_no());
                let got = self
                    .move_units(&p.product_id, s, b, &transfer, Want::AtLeastHalf(lacking))
                    .await?;
                if got > 0 {
                    moved = true;
                    answer = self.admit_in(p, b, true).await?;
                }
            }
            if missing(&answer).is_none() {
                return Ok(answer);
            }
            if !moved
                && let Some(total) = self.census(&p.product_id, k).await?
                && total < qty
            {
                return Ok(if total < 1 {
                    Admission::Refused(Refusal::SoldOut)
                } else {
                    Admission::Short { stock_left: total }
                });
            }
            // Units stand somewhere (in transit, or back since asked):
            // the buyer's bucket first, then the siblings again.
            answer = self.admit_in(p, b, true).await?;
        }
        Ok(missing(&answer).map_or(answer, |_| Admission::Refused(Refusal::StockMoving)))
    }
    async fn request(&self, id: &RequestId, user: &str) -> PortResult<Option<RequestView>> {
        let k = self.buyer_keys(&id.product(), user).await?;
        let mut c = self.conn().await?;
        let fields: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(k.req(id))
            .query_async(&mut c)
            .await
            .map_err(classify)?;
        if fields.is_empty() {
            return Ok(None);
        }
        request_view(id, fields)
            .map(Some)
            .ok_or_else(|| unexpected("request state (corrupt hash)"))
    }
    async fn mark_sent(&self, id: &RequestId, user: &str, mark: SendMark) -> PortResult<()> {
        let k = self.buyer_keys(&id.product(), user).await?;
        let mut c = self.conn().await?;
        self.inner
            .scripts
            .mark_sent
            .key(k.req(id))
            .arg(mark.as_str())
            .invoke_async::<i64>(&mut c)
            .await
            .map_err(classify)?;
        Ok(())
    }
    async fn settle(&self, msg: &OrderMessage, status: Settled) -> PortResult<bool> {
        let k = self
            .buyer_keys(&msg.product_id, msg.user_id.as_str())
            .await?;
        let mut c = self.conn().await?;
        let changed: i64 = self
            .inner
            .scripts
            .settle
            .key(k.req(&msg.request_id))
            .key(k.pending())
            .key(k.stats())
            .key(k.buyers())
            .arg(msg.request_id.as_str())
            .arg(status.status().as_str())
            .arg(msg.user_id.as_str())
            .arg(msg.quantity.get())
            .arg(msg.admitted_at)
            .arg(STATE_TTL_SECS)
            .arg(u8::from(matches!(
                status,
                Settled::Rejected { free_buyer: true }
            )))
            .invoke_async(&mut c)
            .await
            .map_err(classify)?;
        Ok(changed == 1)
    }
    async fn restock(&self, msg: &OrderMessage) -> PortResult<bool> {
        let k = self
            .buyer_keys(&msg.product_id, msg.user_id.as_str())
            .await?;
        let mut c = self.conn().await?;
        let done: i64 = self
            .inner
            .scripts
            .restock
            .key(k.stock())
            .key(k.buyers())
            .key(k.req(&msg.request_id))
            .key(k.pending())
            .key(k.stats())
            .arg(msg.request_id.as_str())
            .arg(msg.user_id.as_str())
            .arg(msg.quantity.get())
            .arg(STATE_TTL_SECS)
            .arg(msg.admitted_at)
            .invoke_async(&mut c)
            .await
            .map_err(classify)?;
        Ok(done == 1)
    }
    /// The buckets' pending indexes one after another: bucket 0's entries,
    /// then bucket 1's, and so on, `offset` counting through them all.
    async fn pending_page(
        &self,
        product: &ProductId,
        cutoff_ms: i64,
        offset: usize,
        limit: usize,
    ) -> PortResult<PendingPage> {
        let k = self.buckets(product).await?;
        if k == 1 {
            return self
                .bucket_pending_page(product, 0, cutoff_ms, offset, limit)
                .await;
        }
        let mut page = PendingPage {
            scanned: 0,
            requests: Vec::new(),
        };
        let mut skip = offset;
        for b in 0..k {
            if page.scanned >= limit {
                break;
            }
            let mut c = self.conn().await?;
            let due: usize = redis::cmd("ZCOUNT")
                .arg(self.bucket_keys(product, b).pending())
                .arg("-inf")
                .arg(cutoff_ms)
                .query_async(&mut c)
                .await
                .map_err(classify)?;
            if skip >= due {
                skip -= due;
                continue;
            }
            let part = self
                .bucket_pending_page(product, b, cutoff_ms, skip, limit - page.scanned)
                .await?;
            skip = 0;
            page.scanned += part.scanned;
            page.requests.extend(part.requests);
        }
        Ok(page)
    }
}
