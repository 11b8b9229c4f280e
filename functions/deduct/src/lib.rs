//! `POST /api/flash-sale/buy`: admit a purchase through the stock gate, then
//! enqueue the order. A 202 is a promise that must survive Redis forgetting
//! the admission (failover), so it is given only once the message is in SQS.
//! If the send fails, the request's fate is decided here as COMPENSATED on
//! the same DynamoDB key the consumer writes (whoever writes first wins), the
//! unit goes back, and the buyer gets 503. If even that cannot be written,
//! the request stays pending in Redis for the outbox sweeper and the buyer
//! gets 503 with the request id to look up: no promise was made.
//!
//! `GET /api/flash-sale/room/seen?product_id=` counts a waiting room's
//! sampled place (the room's page asks for it on one first visit in
//! [`shared::room::SAMPLE_EVERY`]): the inlet controller's view of the line
//! ahead of its frontier.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lambda_http::Request;
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;
use tracing::Instrument;

use shared::domain::{
    Admission, IdempotencyKey, MAX_QUANTITY, OrderMessage, OrderStatus, ProductId, Purchase,
    Quantity, Refusal, RequestId, RequestIds, UserId,
};
use shared::error::ValidationError;
use shared::http::{self as api, ApiError, HttpResponse};
use shared::live::{Known, LiveProducts, RefusalBudget};
use shared::ports::{
    AdmissionGate, Catalogue, Clock, ControlGate, Fate, FateNote, OrderBook, OrderQueue, RoomGate,
    SendMark,
};
use shared::room::{Key, Kind, Pass, PassError};
use shared::telemetry;

pub struct Deduct<G, Q, S> {
    pub gate: G,
    pub queue: Q,
    /// Only to decide the fate of a request whose message could not be sent.
    pub store: S,
    /// Local runner and tests: take the buyer from the body's `user_id`.
    pub insecure_user_from_body: bool,
    pub sold_out: SoldOutCache,
    pub kill_switch: KillSwitchCache,
    /// Ids of requests without an Idempotency-Key.
    pub ids: RequestIds,
    /// The products worth a Redis call; any other id is refused here.
    pub live: LiveProducts,
    /// Refusals each buyer earned here, across products.
    pub refusals: RefusalBudget,
    /// The waiting room's check (issue 33).
    pub room: RoomCheck,
}

/// Per instance: the waiting room's check. A product created with a room
/// takes buys only with an admission its room signed (the edge checks it
/// too; this is the check that holds, as the edge can be bypassed or see
/// no product), redeemed here for one buyer account: farming places buys
/// no more than the accounts behind them could.
pub struct RoomCheck {
    keys: Vec<Key>,
    clock: Arc<dyn Clock>,
    /// Each product's room (its sale's end, ms) or none, as DynamoDB said:
    /// fixed at the sale's creation, so never stale once read (an end
    /// brought forward only shortens what the redemption needs). None: off.
    rooms: Option<Mutex<HashMap<ProductId, Option<i64>>>>,
}

impl RoomCheck {
    /// `keys`: the room's signing keys (`config::room_keys_of`); none, and
    /// a product with a room answers 503 (no admission can be checked).
    pub fn new(keys: Vec<Key>, clock: Arc<dyn Clock>) -> Self {
        Self {
            keys,
            clock,
            rooms: Some(Mutex::default()),
        }
    }

    /// Never reads, no product has a room: for a benchmark of the path
    /// after it, whose store is unreachable.
    pub fn off() -> Self {
        Self {
            keys: Vec::new(),
            clock: Arc::new(shared::ports::SystemClock),
            rooms: None,
        }
    }

    /// The sale's end (ms) when the product has a room.
    async fn room<S: Catalogue>(&self, store: &S, id: &ProductId) -> Result<Option<i64>, ApiError> {
        let Some(rooms) = &self.rooms else {
            return Ok(None);
        };
        if let Some(known) = rooms.lock().unwrap_or_else(|e| e.into_inner()).get(id) {
            return Ok(*known);
        }
        // Unknown here (a product read fails, or vanished): fail closed, a
        // room's buys must not go through because DynamoDB was slow.
        let product = store.product(id).await.map_err(|e| {
            tracing::warn!(error = %e, "product unreadable: cannot tell whether it has a waiting room");
            room_unavailable("whether this sale has a waiting room cannot be read now; try again shortly")
        })?;
        // An unknown id is not remembered: created later, with a room, it
        // must not pass as one without.
        let Some(product) = product else {
            return Ok(None);
        };
        let room = product
            .waiting_room
            .map(|_| shared::domain::unix_ms(product.ends_at));
        rooms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), room);
        Ok(room)
    }
}

fn room_unavailable(message: &str) -> ApiError {
    ApiError::new(503, "room_unavailable").with_message(message)
}

/// The edge's refusal, word for word in its fields: where to queue.
fn admission_required(id: &ProductId, why: impl std::fmt::Display) -> ApiError {
    ApiError::new(403, "admission_required")
        .with_message(format!(
            "this sale has a waiting room: {why}; wait your turn at the room"
        ))
        .with_room(format!("/room?product_id={id}"))
}

/// The room's sampled first visits (see the module's comment).
pub const SEEN_PATH: &str = "/api/flash-sale/room/seen";

/// A buyer's refusals an instance answers before it answers 429 in process:
/// this many at once, then one a second.
pub const REFUSAL_BURST: u32 = 10;
pub const REFUSAL_INTERVAL: Duration = Duration::from_secs(1);

/// The in-process guards (`Deduct::live`, `Deduct::refusals`) on `clock`,
/// the list of live products read at most once a `period`
/// (`config::live_products`).
pub fn guards(clock: std::sync::Arc<dyn Clock>, period: Duration) -> (LiveProducts, RefusalBudget) {
    (
        LiveProducts::new(clock.clone(), period),
        RefusalBudget::new(clock, REFUSAL_INTERVAL, REFUSAL_BURST),
    )
}

/// Per instance: the global kill switch as Redis last said, read again
/// once it is older than `ttl`, so a thrown switch stops this instance
/// within `ttl` without costing every request a round trip. Timed by
/// tokio's clock (the wall clock in a Lambda), which the simulation moves.
pub struct KillSwitchCache {
    ttl: Duration,
    last: Mutex<Option<(Instant, bool)>>,
}

impl KillSwitchCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            last: Mutex::new(None),
        }
    }

    async fn engaged<G: ControlGate>(&self, gate: &G) -> bool {
        let last = *self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, engaged)) = last
            && at.elapsed() < self.ttl
        {
            return engaged;
        }
        let engaged = match gate.kill_switch().await {
            Ok(switch) => switch.engaged,
            // Redis is failing: the admission is likely to fail too, and the
            // sweeper re-asserts the switch once it is back. Keep what was
            // known rather than ask again on every request meanwhile.
            Err(e) => {
                tracing::warn!(error = %e, "kill switch unreadable; keeping the last known state");
                last.is_some_and(|(_, engaged)| engaged)
            }
        };
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), engaged));
        engaged
    }
}

/// Per instance: after Redis said a product is sold out, answer 410 from
/// memory for a short while without running the admission script. A keyed
/// request may be the replay of an admitted one: one read of its state in
/// Redis tells (a replay goes on to the script, which answers it).
pub struct SoldOutCache {
    ttl: Duration,
    until: Mutex<HashMap<ProductId, Instant>>,
}

impl SoldOutCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            until: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ProductId, Instant>> {
        self.until.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_sold_out(&self, product: &ProductId) -> bool {
        !self.ttl.is_zero()
            && self
                .lock()
                .get(product)
                .is_some_and(|t| *t > Instant::now())
    }

    pub fn remember(&self, product: &ProductId) {
        if !self.ttl.is_zero() {
            self.lock()
                .insert(product.clone(), Instant::now() + self.ttl);
        }
    }
}

#[derive(Deserialize)]
struct BuyBody {
    product_id: String,
    #[serde(default = "one")]
    quantity: u64,
    user_id: Option<String>,
}

fn one() -> u64 {
    1
}

/// A validated buy request and the waiting-room admission it carries (the
/// edge's header or the room's cookie), or the 4xx refusal explaining what
/// is wrong.
fn parse(
    req: &Request,
    insecure: bool,
    ids: &RequestIds,
) -> Result<(Purchase, Option<String>), ApiError> {
    let body: BuyBody = api::json_body(
        req,
        r#"a JSON object like {"product_id":"p42","quantity":1}"#,
    )?;
    // The edge reads the product from the header or the query (it cannot
    // read a body): one naming another product than the body would have
    // it answer for the wrong sale.
    let header = api::ascii_header(req, "x-flashsale-product")?.map(str::to_owned);
    for named in [header, api::query_param(req, "product_id")]
        .into_iter()
        .flatten()
    {
        if named != body.product_id {
            return Err(ApiError::invalid(format!(
                "the request names product {named:?} outside its body and {:?} in it: send the same product in both",
                body.product_id
            )));
        }
    }
    let product_id = ProductId::parse(body.product_id)?;
    let quantity = u32::try_from(body.quantity)
        .map_err(|_| ValidationError::BadQuantity { max: MAX_QUANTITY })
        .and_then(Quantity::new)?;
    let user = match api::jwt_subject(req) {
        Some(sub) => Some(sub),
        None if insecure => body.user_id,
        None => None,
    };
    let user_id = UserId::parse(user.ok_or_else(|| ApiError::new(401, "unauthenticated"))?)?;
    let idempotency_key = api::ascii_header(req, "idempotency-key")?
        .map(IdempotencyKey::parse)
        .transpose()?;
    let request_id = match &idempotency_key {
        Some(key) => RequestId::derived(&product_id, &user_id, key),
        None => ids.fresh(&product_id),
    };
    let admission = match api::ascii_header(req, "x-flashsale-admission")? {
        Some(pass) => Some(pass.to_owned()),
        None => api::cookie(req, &format!("fs_admit_{product_id}")).map(str::to_owned),
    };
    let purchase = Purchase {
        request_id,
        product_id,
        user_id,
        quantity,
        idempotency_key,
        client_ip: api::client_ip(req, insecure),
    };
    Ok((purchase, admission))
}

/// Refusals are counted in metrics; one in this many is also logged
/// (`config::refusal_log_every`, set at init).
pub static REFUSALS_LOGGED: telemetry::Sampler = telemetry::Sampler::new(100);

/// How long a buyer of a paused sale is asked to wait before asking again.
const PAUSED_RETRY_AFTER_SECS: i64 = 5;
/// The same while units move between a product's stock buckets: a moment.
const STOCK_MOVING_RETRY_AFTER_SECS: i64 = 1;
/// The same while the kill switch is thrown: an incident, likely longer.
const STOPPED_RETRY_AFTER_SECS: i64 = 30;

/// 429 `rate_limited`, asking again in `wait_ms` (whole seconds, at least 1).
fn throttled(wait_ms: i64) -> HttpResponse {
    let secs = (wait_ms.max(1) + 999) / 1000;
    ApiError::new(429, "rate_limited")
        .with_message(format!("too many requests; try again in {secs} s"))
        .retry_after(secs)
}

impl<G: AdmissionGate + ControlGate + RoomGate, Q: OrderQueue, S: OrderBook + Catalogue>
    Deduct<G, Q, S>
{
    pub async fn handle(&self, req: Request) -> HttpResponse {
        if req.uri().path() == SEEN_PATH {
            return self
                .seen(&req)
                .await
                .unwrap_or_else(ApiError::into_response);
        }
        let started = std::time::Instant::now();
        let answer = self.answer(req).await;
        telemetry::record_latency("deduct", started);
        answer
    }

    async fn answer(&self, req: Request) -> HttpResponse {
        let (purchase, admission) = match parse(&req, self.insecure_user_from_body, &self.ids) {
            Ok(p) => p,
            Err(refusal) => {
                metrics::counter!("flashsale_rejected_total", "reason" => refusal.code)
                    .increment(1);
                return refusal.into_response();
            }
        };
        let traceparent = telemetry::traceparent(api::header(&req, "traceparent"));
        let span = tracing::info_span!(
            "buy",
            request_id = %purchase.request_id,
            product_id = %purchase.product_id,
            trace_id = telemetry::trace_id(&traceparent),
        );
        self.buy(purchase, admission, traceparent)
            .instrument(span)
            .await
            .unwrap_or_else(ApiError::into_response)
    }

    async fn buy(
        &self,
        purchase: Purchase,
        admission: Option<String>,
        traceparent: String,
    ) -> Result<HttpResponse, ApiError> {
        // Refusals no stock could change cost nothing past these two, and a
        // caller who keeps earning them is answered here for any product.
        if let Some(wait_ms) = self.refusals.exhausted(&purchase.user_id) {
            metrics::counter!("flashsale_rejected_total", "reason" => "refusals_limited")
                .increment(1);
            return Ok(throttled(wait_ms));
        }
        if self.live.check(&self.store, &purchase.product_id).await == Known::Unknown {
            self.refusals.charge(&purchase.user_id);
            metrics::counter!("flashsale_rejected_total", "reason" => "unknown_product")
                .increment(1);
            return Err(ApiError::new(404, Refusal::UnknownProduct.code()));
        }
        if let Err(refusal) = self.let_in(&purchase, admission.as_deref()).await {
            metrics::counter!("flashsale_rejected_total", "reason" => refusal.code).increment(1);
            return Err(refusal);
        }
        if self.kill_switch.engaged(&self.gate).await && !self.is_replay(&purchase).await {
            metrics::counter!("flashsale_rejected_total", "reason" => "admissions_stopped")
                .increment(1);
            return Ok(ApiError::new(503, "admissions_stopped")
                .with_message("an operator stopped every sale's admissions; try again later")
                .retry_after(STOPPED_RETRY_AFTER_SECS));
        }
        if self.sold_out.is_sold_out(&purchase.product_id) && !self.is_replay(&purchase).await {
            metrics::counter!("flashsale_rejected_total", "reason" => "sold_out").increment(1);
            return Err(ApiError::new(410, "sold_out"));
        }
        let admission = self.gate.admit(&purchase).await.map_err(|e| {
            // The script may have run and only its reply been lost: the
            // request may go on (the sweeper sends it), so name it.
            ApiError::from(e).with_message(format!(
                "the outcome is unknown; check GET /api/flash-sale/orders/{}",
                purchase.request_id
            ))
        })?;
        match admission {
            Admission::Admitted {
                admitted_at_ms,
                sale_ends_at_ms,
            } => {
                metrics::counter!("flashsale_admitted_total").increment(1);
                let msg = OrderMessage::new(&purchase, admitted_at_ms, sale_ends_at_ms);
                if let Err(e) = self.enqueue(&msg, &traceparent).await {
                    return self.unsent(&msg, e).await;
                }
                tracing::info!("admitted");
                Ok(api::json_response(
                    202,
                    &json!({ "request_id": purchase.request_id, "status": "pending" }),
                ))
            }
            Admission::Short { stock_left } => {
                metrics::counter!("flashsale_rejected_total", "reason" => "insufficient_stock")
                    .increment(1);
                Err(ApiError::new(409, "insufficient_stock")
                    .with_message(format!("only {stock_left} left; ask for fewer")))
            }
            Admission::Replay {
                admitted_at_ms,
                sale_ends_at_ms,
                status,
                sent,
            } => {
                metrics::counter!("flashsale_idempotent_replays_total").increment(1);
                let id = &purchase.request_id;
                // Pending and never marked sent: the first attempt died (or
                // lost Redis' reply) before its send, and this answer is a
                // promise too. A second copy in the queue would be harmless.
                if status == OrderStatus::Pending && !sent {
                    let msg = OrderMessage::new(&purchase, admitted_at_ms, sale_ends_at_ms);
                    if let Err(e) = self.enqueue(&msg, &traceparent).await {
                        return self.unsent(&msg, e).await;
                    }
                }
                tracing::info!("idempotent replay");
                Ok(api::json_response(
                    200,
                    &json!({ "request_id": id, "status": status }),
                ))
            }
            Admission::Throttled { retry_after_ms } => {
                metrics::counter!("flashsale_rejected_total", "reason" => "rate_limited")
                    .increment(1);
                if REFUSALS_LOGGED.hit() {
                    tracing::info!(
                        retry_after_ms,
                        sampled_1_in = REFUSALS_LOGGED.every(),
                        "rate limited"
                    );
                }
                Ok(throttled(retry_after_ms))
            }
            Admission::NotStarted { starts_at_ms } => {
                // Not charged: the buyer is waiting for the start.
                metrics::counter!("flashsale_rejected_total", "reason" => Refusal::SaleNotStarted.code())
                    .increment(1);
                Err(ApiError::new(403, Refusal::SaleNotStarted.code()).with_starts_at(starts_at_ms))
            }
            Admission::Refused(reason) => {
                // Only what no wait or stock changes for this buyer: a
                // buyer waiting for the start or a resume, throttled (maybe
                // by others behind the same address), or whose product
                // Redis forgot in a failover is not charged.
                if matches!(
                    reason,
                    Refusal::SaleEnded
                        | Refusal::LimitExceeded
                        | Refusal::AlreadyPurchased
                        | Refusal::KeyReused
                        | Refusal::BuyerBlocked
                ) {
                    self.refusals.charge(&purchase.user_id);
                }
                // Only a true zero: a buyer asking for more than is left
                // must not make the product look sold out to everyone.
                if reason == Refusal::SoldOut {
                    self.sold_out.remember(&purchase.product_id);
                }
                metrics::counter!("flashsale_rejected_total", "reason" => reason.code())
                    .increment(1);
                if REFUSALS_LOGGED.hit() {
                    tracing::info!(
                        reason = reason.code(),
                        sampled_1_in = REFUSALS_LOGGED.every(),
                        "refused"
                    );
                }
                let refused = ApiError::new(reason.http_status(), reason.code());
                match reason {
                    Refusal::SalePaused => Ok(refused
                        .with_message("the sale is paused by its operator; try again shortly")
                        .retry_after(PAUSED_RETRY_AFTER_SECS)),
                    Refusal::StockMoving => Ok(refused
                        .with_message(
                            "units of this product are moving between its stock buckets; nothing was taken, try again in a second",
                        )
                        .retry_after(STOCK_MOVING_RETRY_AFTER_SECS)),
                    _ => Err(refused),
                }
            }
        }
    }

    /// Counts the place in the room's cookie, once, if the room samples it;
    /// 204 either way (the page's image needs nothing back).
    async fn seen(&self, req: &Request) -> Result<HttpResponse, ApiError> {
        let id = ProductId::parse(
            api::query_param(req, "product_id")
                .ok_or_else(|| ApiError::invalid("product_id is missing from the query"))?,
        )?;
        let held = api::cookie(req, &format!("fs_place_{id}"))
            .ok_or_else(|| ApiError::invalid("no place cookie: visit the room's page first"))?;
        let now = self.room.clock.now_ms();
        let pass = Pass::verify(held, &self.room.keys, Kind::Place, &id, now)
            .map_err(|e| ApiError::new(403, "place_refused").with_message(e))?;
        if shared::room::sampled(&pass.nonce) {
            self.gate
                .seen(&id, &pass.nonce, pass.place_ms, pass.expires_ms - now)
                .await?;
        }
        let mut resp = HttpResponse::new(lambda_http::Body::Empty);
        *resp.status_mut() = lambda_http::http::StatusCode::NO_CONTENT;
        // Each visitor's own count: no cache keeps it.
        resp.headers_mut().insert(
            lambda_http::http::header::CACHE_CONTROL,
            lambda_http::http::HeaderValue::from_static("no-store"),
        );
        Ok(resp)
    }

    /// Whether the waiting room lets this buy in: no room, or an admission
    /// its room signed for this product, alive (a keyed replay of an
    /// admitted request may come after it expired: the first admission
    /// answers it), and redeemed for this buyer's account or free.
    async fn let_in(&self, purchase: &Purchase, held: Option<&str>) -> Result<(), ApiError> {
        let id = &purchase.product_id;
        let Some(ends_at) = self.room.room(&self.store, id).await? else {
            return Ok(());
        };
        if self.room.keys.is_empty() {
            tracing::error!(
                "a sale with a waiting room, but no FLASHSALE_ROOM_KEYS: its buys cannot be checked"
            );
            return Err(room_unavailable(
                "the waiting room cannot check admissions now; try again shortly",
            ));
        }
        let held = held.ok_or_else(|| admission_required(id, "no admission"))?;
        let now = self.room.clock.now_ms();
        let pass = match Pass::verify(held, &self.room.keys, Kind::Admission, id, now) {
            Ok(pass) => pass,
            Err(PassError::Expired(_)) if self.is_replay(purchase).await => return Ok(()),
            Err(e) => return Err(admission_required(id, e)),
        };
        // Held until the sale ends: the place behind the admission lives
        // that long, and the room signs it a fresh admission (the same
        // nonce) each time it comes back; a hold only as long as one
        // admission would let the next account buy with it.
        let ttl_ms = ends_at.max(pass.expires_ms) - now + 60_000;
        let holder = self
            .gate
            .redeem(id, &pass.nonce, purchase.user_id.as_str(), ttl_ms)
            .await?;
        if holder != purchase.user_id.as_str() {
            self.refusals.charge(&purchase.user_id);
            return Err(ApiError::new(403, "admission_used")
                .with_message(
                    "this admission was redeemed by another account: a place in line buys for one account; take your own place",
                )
                .with_room(format!("/room?product_id={id}")));
        }
        Ok(())
    }

    /// Whether a keyed request names one Redis already holds: a replay,
    /// answered from its first admission even when the sale is known sold
    /// out or admissions are stopped.
    async fn is_replay(&self, purchase: &Purchase) -> bool {
        purchase.idempotency_key.is_some()
            && matches!(
                self.gate
                    .request(&purchase.request_id, purchase.user_id.as_str())
                    .await,
                Ok(Some(_))
            )
    }

    async fn enqueue(
        &self,
        msg: &OrderMessage,
        traceparent: &str,
    ) -> Result<(), shared::error::InfraError> {
        self.queue.send(msg, traceparent).await?;
        // Only spares the sweeper a needless re-send if it fails.
        if let Err(e) = self
            .gate
            .mark_sent(&msg.request_id, msg.user_id.as_str(), SendMark::Sent)
            .await
        {
            tracing::warn!(error = %e, "sent, but not marked as sent");
        }
        Ok(())
    }

    /// The message did not reach the queue (or its fate is unknown): decide
    /// the request here rather than promise what Redis alone remembers.
    async fn unsent(
        &self,
        msg: &OrderMessage,
        error: shared::error::InfraError,
    ) -> Result<HttpResponse, ApiError> {
        metrics::counter!("flashsale_queue_send_failures_total").increment(1);
        tracing::error!(error = %error, "order not enqueued; deciding its fate here");
        let note = FateNote {
            reason: "enqueue_failed".into(),
            ..FateNote::default()
        };
        let unavailable = |what: &str| {
            Err(ApiError::new(503, "unavailable").with_message(format!(
                "{what}; request {} is not confirmed, check GET /api/flash-sale/orders/{}",
                msg.request_id, msg.request_id
            )))
        };
        match self
            .store
            .record_fate(msg, OrderStatus::Compensated, &note)
            .await
        {
            Ok(Fate::Won) => {
                // If this fails the request stays pending in Redis; the
                // sweeper's re-send meets COMPENSATED and restocks then.
                if let Err(e) = self.gate.restock(msg).await {
                    tracing::warn!(error = %e, "compensated, restock left to the sweeper");
                }
                metrics::counter!("flashsale_compensations_total").increment(1);
                Err(ApiError::new(503, "unavailable")
                    .with_message("the order could not be queued and was cancelled; try again"))
            }
            // The send did land and the consumer was faster: a real order.
            Ok(Fate::Exists(status)) if status != OrderStatus::Compensated => {
                Ok(api::json_response(
                    202,
                    &json!({ "request_id": msg.request_id, "status": status }),
                ))
            }
            Ok(Fate::Exists(_)) => unavailable("the order could not be queued"),
            Err(e) => {
                tracing::error!(error = %e, "fate not recorded; left pending to the outbox sweeper");
                unavailable("the order could not be queued")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lambda_http::{Body, http};
    use shared::aws::DynamoStore;
    use shared::embedded::Faults;
    use shared::fakes::{FakeGate, FakeQueue, Probe};

    type TestDeduct = Deduct<FakeGate, FakeQueue, DynamoStore>;

    async fn deduct(insecure: bool) -> (TestDeduct, Faults) {
        let (store, faults) = shared::fakes::store().await;
        for p in ["p1", "p2", "p42"] {
            shared::fakes::add_product(&store, p, 10).await;
        }
        let (live, refusals) = guards(
            std::sync::Arc::new(shared::ports::SystemClock),
            Duration::from_secs(1),
        );
        let d = Deduct {
            gate: FakeGate::default(),
            queue: FakeQueue::default(),
            store,
            insecure_user_from_body: insecure,
            sold_out: SoldOutCache::new(Duration::from_secs(60)),
            kill_switch: KillSwitchCache::new(Duration::ZERO),
            ids: RequestIds::Random,
            live,
            refusals,
            room: RoomCheck::new(
                vec![room_key()],
                std::sync::Arc::new(shared::ports::SystemClock),
            ),
        };
        d.live.load(&d.store).await.unwrap();
        (d, faults)
    }

    fn buy(body: &str) -> Request {
        http::Request::builder()
            .method("POST")
            .uri("/api/flash-sale/buy")
            .body(Body::from(body))
            .unwrap()
    }

    async fn call<G: AdmissionGate + ControlGate + RoomGate>(
        d: &Deduct<G, FakeQueue, DynamoStore>,
        req: Request,
    ) -> (u16, serde_json::Value) {
        let resp = d.handle(req).await;
        let body: serde_json::Value = serde_json::from_slice(resp.body().as_ref()).unwrap();
        (resp.status().as_u16(), body)
    }

    fn room_key() -> Key {
        Key {
            id: "k1".into(),
            secret: b"room-test-secret-0123456789abcdef".to_vec(),
        }
    }

    /// An admission to `product` the room signed, living `life_ms` more.
    fn admission(product: &str, nonce: &str, life_ms: i64) -> String {
        let now = shared::ports::SystemClock.now_ms();
        Pass {
            kind: Kind::Admission,
            product: ProductId::parse(product).unwrap(),
            place_ms: now - 1_000,
            nonce: nonce.into(),
            expires_ms: now + life_ms,
        }
        .sign(&room_key())
    }

    /// A deduct on the simulated Redis (the real scripts, redeem.lua's rule
    /// included) with a sale "room" that has a waiting room and "plain"
    /// that has none, and `keys` to check admissions with.
    async fn with_room(
        keys: Vec<Key>,
    ) -> (
        Deduct<shared::redis::RedisGate, FakeQueue, DynamoStore>,
        Faults,
    ) {
        let (store, faults) = shared::fakes::store().await;
        let (_, gate) = shared::fakes::simulated_gate();
        for (id, room) in [
            ("room", Some(shared::room::WaitingRoom::DEFAULT)),
            ("plain", None),
        ] {
            let mut p = shared::fakes::product(id);
            p.waiting_room = room;
            store.create_product(&p).await.unwrap();
            shared::fakes::warm(&gate, &p, 10).await;
        }
        let (live, refusals) = guards(
            std::sync::Arc::new(shared::ports::SystemClock),
            Duration::from_secs(1),
        );
        let d = Deduct {
            gate,
            queue: FakeQueue::default(),
            store,
            insecure_user_from_body: true,
            sold_out: SoldOutCache::new(Duration::ZERO),
            kill_switch: KillSwitchCache::new(Duration::ZERO),
            ids: RequestIds::Random,
            live,
            refusals,
            room: RoomCheck::new(keys, std::sync::Arc::new(shared::ports::SystemClock)),
        };
        (d, faults)
    }

    fn buy_as(product: &str, user: &str, headers: &[(&str, &str)]) -> Request {
        let mut req = http::Request::builder()
            .method("POST")
            .uri("/api/flash-sale/buy");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.body(Body::from(format!(
            r#"{{"product_id":"{product}","user_id":"{user}"}}"#
        )))
        .unwrap()
    }

    /// Issue 33: a sale with a room takes a buy only with an admission its
    /// room signed, for it, alive, and each admission for one account; the
    /// refusal says why and where to queue. A sale without a room is as
    /// before.
    #[tokio::test]
    async fn a_sale_with_a_waiting_room_takes_only_its_admissions_each_for_one_account() {
        let (d, _) = with_room(vec![room_key()]).await;
        let a1 = admission("room", "00000000000000a1", 60_000);
        let refused = |why: &'static str, headers: Vec<(&'static str, String)>| {
            let d = &d;
            async move {
                let headers: Vec<(&str, &str)> =
                    headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
                let (status, body) = call(d, buy_as("room", "u9", &headers)).await;
                assert_eq!(
                    (status, body["error"].as_str()),
                    (403, Some("admission_required")),
                    "{why}: {body}"
                );
                assert_eq!(body["room"], "/room?product_id=room", "{why}");
                let message = body["message"].as_str().unwrap();
                assert!(message.contains(why), "{why}: {message}");
            }
        };
        refused("no admission", vec![]).await;
        let forged = format!("{}0", &a1[..a1.len() - 1]);
        let forged = if forged == a1 {
            format!("{}1", &a1[..a1.len() - 1])
        } else {
            forged
        };
        refused("forged", vec![("x-flashsale-admission", forged)]).await;
        let place = Pass {
            kind: Kind::Place,
            ..Pass::verify(
                &a1,
                &[room_key()],
                Kind::Admission,
                &ProductId::parse("room").unwrap(),
                0,
            )
            .unwrap()
        }
        .sign(&room_key());
        refused(
            "go through the room",
            vec![("x-flashsale-admission", place)],
        )
        .await;
        refused(
            "not this one",
            vec![(
                "x-flashsale-admission",
                admission("plain", "00000000000000a2", 60_000),
            )],
        )
        .await;
        refused(
            "expired",
            vec![(
                "x-flashsale-admission",
                admission("room", "00000000000000a3", -1),
            )],
        )
        .await;
        let rotated = a1.replace(".k1.", ".k0.");
        refused("no longer holds", vec![("x-flashsale-admission", rotated)]).await;
        assert!(
            d.queue.sent().is_empty(),
            "nothing refused reached the queue"
        );

        let (status, body) =
            call(&d, buy_as("room", "u1", &[("x-flashsale-admission", &a1)])).await;
        assert_eq!(status, 202, "{body}");
        // Another account with the same admission, here as the room's
        // cookie: refused; its own admission takes it in.
        let cookie = format!("other=1; fs_admit_room={a1}");
        let (status, body) = call(&d, buy_as("room", "u2", &[("cookie", &cookie)])).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (403, Some("admission_used")),
            "{body}"
        );
        let own = format!(
            "fs_admit_room={}",
            admission("room", "00000000000000b2", 60_000)
        );
        assert_eq!(
            call(&d, buy_as("room", "u2", &[("cookie", &own)])).await.0,
            202
        );
        // The holder again is the sale's business (one unit each here).
        let (status, body) =
            call(&d, buy_as("room", "u1", &[("x-flashsale-admission", &a1)])).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (409, Some("already_purchased")),
            "{body}"
        );
        assert_eq!(
            d.gate
                .entries(&ProductId::parse("room").unwrap())
                .await
                .unwrap(),
            2
        );
        // Held until the sale ends (an hour here), not the admission's
        // minute: the room hands the same nonce a fresh admission.
        let held: i64 = d
            .gate
            .command(
                redis::cmd("TTL").arg(
                    d.gate
                        .keys(&ProductId::parse("room").unwrap())
                        .room_pass("00000000000000a1"),
                ),
            )
            .await
            .unwrap();
        assert!(held > 3_500, "{held} s");
        // An id DynamoDB does not know is not remembered as roomless: once
        // created with a room, its buys need an admission.
        let later = ProductId::parse("later").unwrap();
        assert_eq!(d.room.room(&d.store, &later).await.unwrap(), None);
        let mut p = shared::fakes::product("later");
        p.waiting_room = Some(shared::room::WaitingRoom::DEFAULT);
        d.store.create_product(&p).await.unwrap();
        assert!(d.room.room(&d.store, &later).await.unwrap().is_some());
        // No room, no admission needed.
        assert_eq!(call(&d, buy_as("plain", "u1", &[])).await.0, 202);
    }

    /// The room's page counts a sampled place at the origin, once however
    /// often it is asked; an unsampled, forged or missing place counts
    /// nothing.
    #[tokio::test]
    async fn a_sampled_place_is_counted_once() {
        let (d, _) = with_room(vec![room_key()]).await;
        let now = shared::ports::SystemClock.now_ms();
        let place = |nonce: &str, at: i64| {
            Pass {
                kind: Kind::Place,
                product: ProductId::parse("room").unwrap(),
                place_ms: at,
                nonce: nonce.into(),
                expires_ms: now + 3_600_000,
            }
            .sign(&room_key())
        };
        let seen = |cookie: Option<String>| {
            let mut req = http::Request::builder()
                .method("GET")
                .uri(format!("{SEEN_PATH}?product_id=room"));
            if let Some(c) = cookie {
                req = req.header("cookie", format!("fs_place_room={c}"));
            }
            d.handle(req.body(Body::Empty).unwrap())
        };
        let at = now - 10_000;
        for _ in 0..3 {
            assert_eq!(
                seen(Some(place("0032aaaaaaaaaaaa", at))).await.status(),
                204
            );
        }
        assert_eq!(
            seen(Some(place("0033aaaaaaaaaaaa", at))).await.status(),
            204
        );
        let forged = place("0064aaaaaaaaaaaa", at).replace(".k1.", ".k9.");
        assert_eq!(seen(Some(forged)).await.status(), 403);
        assert_eq!(seen(None).await.status(), 400);
        let id = ProductId::parse("room").unwrap();
        let counted: u64 = d
            .gate
            .places(&id, at - 1_000, at + 1_000)
            .await
            .unwrap()
            .iter()
            .sum();
        assert_eq!(counted, 1, "the sampled place, once");
        let after = d.gate.places(&id, at + 1_000, at + 5_000).await.unwrap();
        assert_eq!(after, [0, 0, 0, 0]);
    }

    /// A keyed replay of an admitted buy may come after its admission
    /// expired: the first admission answers it. A new buy may not.
    #[tokio::test]
    async fn an_expired_admission_answers_only_a_replay() {
        let (d, _) = with_room(vec![room_key()]).await;
        let live = admission("room", "00000000000000c1", 60_000);
        let dead = admission("room", "00000000000000c1", -1);
        let keyed = |key: &'static str, pass: &str| {
            buy_as(
                "room",
                "u3",
                &[("x-flashsale-admission", pass), ("idempotency-key", key)],
            )
        };
        assert_eq!(call(&d, keyed("k-1", &live)).await.0, 202);
        let (status, body) = call(&d, keyed("k-1", &dead)).await;
        assert_eq!(
            (status, body["status"].as_str()),
            (200, Some("pending")),
            "{body}"
        );
        let (status, body) = call(&d, keyed("k-2", &dead)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (403, Some("admission_required")),
            "{body}"
        );
    }

    /// Fail closed: without keys, or when DynamoDB cannot say whether the
    /// sale has a room, a buy is a 503, never let through.
    #[tokio::test]
    async fn a_room_that_cannot_be_checked_answers_503() {
        let a = admission("room", "00000000000000d1", 60_000);
        let (d, _) = with_room(Vec::new()).await;
        let (status, body) = call(&d, buy_as("room", "u1", &[("x-flashsale-admission", &a)])).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (503, Some("room_unavailable")),
            "{body}"
        );
        assert_eq!(call(&d, buy_as("plain", "u1", &[])).await.0, 202);
        let (d, faults) = with_room(vec![room_key()]).await;
        faults.unreachable_for(Duration::from_secs(60));
        let (status, body) = call(&d, buy_as("room", "u1", &[("x-flashsale-admission", &a)])).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (503, Some("room_unavailable")),
            "{body}"
        );
        faults.clear();
        assert_eq!(
            call(&d, buy_as("room", "u1", &[("x-flashsale-admission", &a)]))
                .await
                .0,
            202
        );
    }

    #[tokio::test]
    async fn admitted_purchase_is_enqueued_with_trace_context() {
        let (d, _) = deduct(true).await;
        let (status, body) = call(
            &d,
            buy(r#"{"product_id":"p1","quantity":2,"user_id":"u1"}"#),
        )
        .await;
        assert_eq!(status, 202);
        assert_eq!(body["status"], "pending");
        let sent = d.queue.sent();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0.request_id.as_str(), body["request_id"]);
        assert_eq!(sent[0].0.quantity.get(), 2);
        assert_eq!(sent[0].0.v, 1);
        assert!(sent[0].1.starts_with("00-"));
    }

    /// Issue 31, item 1: a caller rotating made-up product ids reaches no
    /// admission script (each id a fresh Redis budget before), and past
    /// its refusal budget is answered 429 for any product, a real one
    /// too; another buyer is untouched.
    #[tokio::test]
    async fn a_caller_rotating_product_ids_reaches_no_script_and_is_limited_across_products() {
        let (d, _) = deduct(true).await;
        let mut answers = Vec::new();
        for n in 0..30 {
            let body = format!(r#"{{"product_id":"made-up-{n}","user_id":"bot"}}"#);
            answers.push(call(&d, buy(&body)).await);
        }
        assert!(
            d.gate.purchases.lock().unwrap().is_empty(),
            "no admission ran"
        );
        let burst = REFUSAL_BURST as usize;
        assert!(
            answers[..burst]
                .iter()
                .all(|(s, b)| (*s, &b["error"]) == (404, &json!("unknown_product"))),
            "{answers:?}"
        );
        assert!(
            answers[burst..].iter().all(|(s, _)| *s == 429),
            "{answers:?}"
        );
        let real = r#"{"product_id":"p1","user_id":"bot"}"#;
        assert_eq!(call(&d, buy(real)).await.0, 429, "limited across products");
        assert!(d.gate.purchases.lock().unwrap().is_empty());
        let (status, _) = call(&d, buy(r#"{"product_id":"p1","user_id":"u1"}"#)).await;
        assert_eq!(status, 202);
    }

    #[tokio::test]
    async fn a_sent_request_is_marked_so_the_sweeper_leaves_it_alone() {
        let (d, _) = deduct(true).await;
        let (status, body) = call(&d, buy(r#"{"product_id":"p1","user_id":"u1"}"#)).await;
        assert_eq!(status, 202);
        let id = RequestId::parse(body["request_id"].as_str().unwrap()).unwrap();
        assert!(d.gate.sent_at.lock().unwrap().contains_key(&id));
    }

    /// Hole 2: a 202 must not rest on Redis alone. A failed send decides the
    /// request as COMPENSATED in DynamoDB, puts the unit back, answers 503.
    #[tokio::test]
    async fn failed_send_compensates_and_answers_503_never_202() {
        let (d, _) = deduct(true).await;
        d.queue.failures.fail_next(1);
        let (status, body) = call(&d, buy(r#"{"product_id":"p1","user_id":"u1"}"#)).await;
        assert_eq!((status, body["error"].as_str()), (503, Some("unavailable")));
        assert!(d.queue.sent().is_empty());
        let purchase = d.gate.purchases.lock().unwrap()[0].clone();
        assert_eq!(
            d.store.status_of(&purchase.request_id).await,
            Some(OrderStatus::Compensated)
        );
        assert_eq!(d.gate.restocked(), vec![purchase.request_id]);
    }

    #[tokio::test]
    async fn failed_send_and_failed_fate_answer_503_with_the_id_to_check() {
        let (d, faults) = deduct(true).await;
        // Known to have no room: the failure below is the fate's write.
        let p1 = ProductId::parse("p1").unwrap();
        assert_eq!(d.room.room(&d.store, &p1).await.unwrap(), None);
        d.queue.failures.fail_next(1);
        faults.fail_next(1);
        let (status, body) = call(&d, buy(r#"{"product_id":"p1","user_id":"u1"}"#)).await;
        assert_eq!(status, 503);
        let purchase = d.gate.purchases.lock().unwrap()[0].clone();
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains(purchase.request_id.as_str())
        );
        assert!(d.gate.restocked().is_empty(), "the outcome is unknown");
    }

    /// Hole 3: a keyed request's id is derived from (product, buyer, key),
    /// so a replay after Redis forgot the key lands on the same fate item.
    #[tokio::test]
    async fn keyed_requests_get_derived_ids() {
        let (d, _) = deduct(true).await;
        let keyed = |user: &str, key: &str| {
            let mut req = buy(&format!(r#"{{"product_id":"p1","user_id":"{user}"}}"#));
            req.headers_mut()
                .insert("Idempotency-Key", key.parse().unwrap());
            req
        };
        let (_, a) = call(&d, keyed("u1", "k")).await;
        let (_, b) = call(&d, keyed("u1", "k")).await;
        let (_, c) = call(&d, keyed("u2", "k")).await;
        let (_, e) = call(&d, keyed("u1", "k2")).await;
        assert_eq!(a["request_id"], b["request_id"]);
        assert_ne!(a["request_id"], c["request_id"]);
        assert_ne!(a["request_id"], e["request_id"]);
        let (_, f) = call(&d, buy(r#"{"product_id":"p1","user_id":"u1"}"#)).await;
        let (_, g) = call(&d, buy(r#"{"product_id":"p1","user_id":"u1"}"#)).await;
        assert_ne!(f["request_id"], g["request_id"], "key-less ids are fresh");
    }

    #[tokio::test]
    async fn a_throttled_buyer_gets_429_with_retry_after() {
        let (d, _) = deduct(true).await;
        d.gate.answer(Admission::Throttled {
            retry_after_ms: 1_200,
        });
        let resp = d.handle(buy(r#"{"product_id":"p1","user_id":"u1"}"#)).await;
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["retry-after"], "2");
        let body: serde_json::Value = serde_json::from_slice(resp.body().as_ref()).unwrap();
        assert_eq!(body["error"], "rate_limited");
        assert!(d.queue.sent().is_empty());
    }

    #[tokio::test]
    async fn a_paused_sale_is_a_503_with_retry_after() {
        let (d, _) = deduct(true).await;
        d.gate.answer(Admission::Refused(Refusal::SalePaused));
        let resp = d.handle(buy(r#"{"product_id":"p1","user_id":"u1"}"#)).await;
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["retry-after"], "5");
        let body: serde_json::Value = serde_json::from_slice(resp.body().as_ref()).unwrap();
        assert_eq!(body["error"], "sale_paused");
    }

    #[tokio::test]
    async fn units_moving_between_buckets_is_a_503_with_retry_after_never_cached() {
        let (d, _) = deduct(true).await;
        d.gate.answer(Admission::Refused(Refusal::StockMoving));
        let body = r#"{"product_id":"p1","user_id":"u1"}"#;
        let resp = d.handle(buy(body)).await;
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["retry-after"], "1");
        let error: serde_json::Value = serde_json::from_slice(resp.body().as_ref()).unwrap();
        assert_eq!(error["error"], "stock_moving");
        // Not a sold-out: the next buy asks the gate again.
        assert_eq!(d.handle(buy(body)).await.status(), 202);
    }

    #[tokio::test]
    async fn a_thrown_kill_switch_stops_admissions_within_the_cache_period() {
        use shared::domain::KillSwitch;
        let (mut d, _) = deduct(true).await;
        d.kill_switch = KillSwitchCache::new(Duration::from_millis(200));
        let thrown = KillSwitch {
            engaged: true,
            seq: 1,
        };
        let body = r#"{"product_id":"p1","user_id":"u1"}"#;
        assert_eq!(d.handle(buy(body)).await.status(), 202);
        d.gate.apply_kill_switch(thrown).await.unwrap();
        // This instance read the switch on the first request: not yet.
        assert_eq!(d.handle(buy(body)).await.status(), 202);
        tokio::time::sleep(Duration::from_millis(250)).await;
        let admitted = d.gate.purchases.lock().unwrap().len();
        let resp = d.handle(buy(body)).await;
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["retry-after"], "30");
        let json: serde_json::Value = serde_json::from_slice(resp.body().as_ref()).unwrap();
        assert_eq!(json["error"], "admissions_stopped");
        assert_eq!(
            d.gate.purchases.lock().unwrap().len(),
            admitted,
            "not admitted"
        );
        // Unreadable: the last known state holds.
        d.gate.failures.fail_next(1);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(d.handle(buy(body)).await.status(), 503);
    }

    /// Found in review: a buyer replaying an admitted request's key while
    /// the switch is thrown still learns what became of it; a new keyed
    /// request is refused like any other.
    #[tokio::test]
    async fn a_thrown_kill_switch_still_answers_replays() {
        use shared::domain::KillSwitch;
        let (d, _) = deduct(true).await;
        d.gate
            .apply_kill_switch(KillSwitch {
                engaged: true,
                seq: 1,
            })
            .await
            .unwrap();
        let keyed = |key: &str| {
            let mut req = buy(r#"{"product_id":"p1","user_id":"u1"}"#);
            req.headers_mut()
                .insert("idempotency-key", key.parse().unwrap());
            req
        };
        let (status, body) = call(&d, keyed("fresh")).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (503, Some("admissions_stopped"))
        );
        // The request "k1" was admitted before the switch.
        let (first, _) = parse(&keyed("k1"), true, &RequestIds::Random).unwrap();
        d.gate.put_request(shared::fakes::view(
            &OrderMessage::new(&first, 5, 10),
            OrderStatus::Placed,
        ));
        d.gate.answer(replay(OrderStatus::Placed, true));
        let (status, body) = call(&d, keyed("k1")).await;
        assert_eq!((status, body["status"].as_str()), (200, Some("placed")));
    }

    #[tokio::test]
    async fn the_client_ip_is_api_gateways_and_forwarded_only_locally() {
        let event = include_str!("../../../events/deduct-buy.json");
        let forwarded = |req: &mut Request| {
            req.headers_mut()
                .insert("x-forwarded-for", "198.51.100.9, 10.0.0.1".parse().unwrap());
        };
        for (insecure, want) in [(false, "203.0.113.7"), (true, "198.51.100.9")] {
            let d = deduct(insecure).await.0;
            let mut req = lambda_http::request::from_str(event).unwrap();
            forwarded(&mut req);
            d.handle(req).await;
            let seen = d.gate.purchases.lock().unwrap()[0].client_ip;
            assert_eq!(seen, Some(want.parse().unwrap()), "insecure={insecure}");
        }
    }

    /// Hole 4: asking for more than is left is the buyer's problem, not a
    /// sold-out product: 409 with what is left, and nothing cached.
    #[tokio::test]
    async fn too_few_left_is_a_409_and_never_cached_as_sold_out() {
        let (d, _) = deduct(true).await;
        d.gate.answer(Admission::Short { stock_left: 2 });
        let (status, body) = call(
            &d,
            buy(r#"{"product_id":"p1","quantity":3,"user_id":"u1"}"#),
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (409, Some("insufficient_stock"))
        );
        assert!(body["message"].as_str().unwrap().contains('2'));
        assert_eq!(
            call(&d, buy(r#"{"product_id":"p1","user_id":"u2"}"#))
                .await
                .0,
            202
        );
    }

    /// Hole 12: a key reused with another quantity, or one that is not ASCII.
    #[tokio::test]
    async fn reused_or_non_ascii_keys_are_refused() {
        let (d, _) = deduct(true).await;
        d.gate.answer(Admission::Refused(Refusal::KeyReused));
        let mut req = buy(r#"{"product_id":"p1","quantity":2,"user_id":"u1"}"#);
        req.headers_mut()
            .insert("Idempotency-Key", "k".parse().unwrap());
        let (status, body) = call(&d, req).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (422, Some("idempotency_key_reused"))
        );
        let mut req = buy(r#"{"product_id":"p1","user_id":"u1"}"#);
        req.headers_mut().insert(
            "Idempotency-Key",
            http::HeaderValue::from_bytes("clé".as_bytes()).unwrap(),
        );
        assert_eq!(call(&d, req).await.0, 400);
        assert_eq!(d.gate.purchases.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn refusals_map_to_their_status_codes() {
        let (d, _) = deduct(true).await;
        for (refusal, code) in [
            (Refusal::AlreadyPurchased, 409),
            (Refusal::LimitExceeded, 409),
            (Refusal::SaleEnded, 403),
            (Refusal::UnknownProduct, 404),
            (Refusal::KeyReused, 422),
            // Last: afterwards this instance answers 410 from memory.
            (Refusal::SoldOut, 410),
        ] {
            d.gate.answer(Admission::Refused(refusal));
            let (status, body) = call(&d, buy(r#"{"product_id":"p1","user_id":"u1"}"#)).await;
            assert_eq!(
                (status, body["error"].as_str().unwrap()),
                (code, refusal.code())
            );
        }
        assert!(d.queue.sent().is_empty());
    }

    #[tokio::test]
    async fn a_header_naming_another_product_than_the_body_is_refused() {
        let (d, _) = deduct(true).await;
        let body = r#"{"product_id":"p1","user_id":"u1"}"#;
        let mut req = buy(body);
        req.headers_mut()
            .insert("X-Flashsale-Product", "p2".parse().unwrap());
        let (status, answer) = call(&d, req).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (400, Some("invalid_request"))
        );
        let mut req = buy(body);
        req.headers_mut()
            .insert("X-Flashsale-Product", "p1".parse().unwrap());
        assert_eq!(call(&d, req).await.0, 202);
        assert_eq!(d.gate.purchases.lock().unwrap().len(), 1);
    }

    /// Before the start the answer names it, as the edge's does
    /// (edge/viewer-request.js writes it with Date.toISOString).
    #[tokio::test]
    async fn not_started_names_the_start() {
        let (d, _) = deduct(true).await;
        d.gate.answer(Admission::NotStarted {
            starts_at_ms: 4_102_444_800_042,
        });
        let (status, body) = call(&d, buy(r#"{"product_id":"p1","user_id":"u1"}"#)).await;
        assert_eq!(
            (status, body),
            (
                403,
                json!({"error": "sale_not_started", "starts_at": "2100-01-01T00:00:00.042Z"})
            )
        );
    }

    fn keyed(body: &str, key: &str) -> Request {
        let mut req = buy(body);
        req.headers_mut()
            .insert("Idempotency-Key", key.parse().unwrap());
        req
    }

    fn replay(status: OrderStatus, sent: bool) -> Admission {
        Admission::Replay {
            admitted_at_ms: 5,
            sale_ends_at_ms: 3_600_000,
            status,
            sent,
        }
    }

    #[tokio::test]
    async fn replay_returns_the_earlier_request_and_its_status() {
        let (d, _) = deduct(true).await;
        let p = ProductId::parse("p1").unwrap();
        let u = UserId::parse("u1").unwrap();
        let earlier = RequestId::derived(&p, &u, &IdempotencyKey::parse("k-1").unwrap());
        d.gate.answer(replay(OrderStatus::Placed, true));
        let (status, body) = call(&d, keyed(r#"{"product_id":"p1","user_id":"u1"}"#, "k-1")).await;
        assert_eq!(status, 200);
        assert_eq!(body["request_id"], earlier.as_str());
        assert_eq!(body["status"], "placed");
        assert!(d.queue.sent().is_empty(), "decided: nothing to send");
    }

    /// Found by the simulation: the first attempt was admitted but died (or
    /// lost Redis' reply) before its send; a 200 for the replay must not
    /// rest on Redis alone, so a pending replay is (re-)enqueued.
    #[tokio::test]
    async fn a_pending_replay_is_enqueued_before_it_is_answered() {
        let (d, _) = deduct(true).await;
        // Sent before: its message is in the queue, nothing to add.
        d.gate.answer(replay(OrderStatus::Pending, true));
        let (status, _) = call(&d, keyed(r#"{"product_id":"p1","user_id":"u1"}"#, "k-1")).await;
        assert_eq!(status, 200);
        assert!(d.queue.sent().is_empty());
        // Never sent: it is now.
        d.gate.answer(replay(OrderStatus::Pending, false));
        let (status, body) = call(&d, keyed(r#"{"product_id":"p1","user_id":"u1"}"#, "k-1")).await;
        assert_eq!((status, body["status"].as_str()), (200, Some("pending")));
        let sent = d.queue.sent();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0.request_id.as_str(), body["request_id"]);
        assert_eq!(sent[0].0.admitted_at, 5);
        // And when that send fails, the replay is no promise either.
        d.gate.answer(replay(OrderStatus::Pending, false));
        d.queue.failures.fail_next(1);
        let (status, _) = call(&d, keyed(r#"{"product_id":"p1","user_id":"u1"}"#, "k-1")).await;
        assert_eq!(status, 503);
    }

    #[tokio::test]
    async fn redis_down_fails_closed_with_503() {
        let (d, _) = deduct(true).await;
        // The kill switch's read (tolerated), then the admission.
        d.gate.failures.fail_next(2);
        let (status, body) = call(&d, buy(r#"{"product_id":"p1","user_id":"u1"}"#)).await;
        assert_eq!(
            (status, body["error"].as_str().unwrap()),
            (503, "unavailable")
        );
        // Found in review: the script may have run with its reply lost, so
        // the answer names the request to look up.
        let id = d
            .gate
            .purchases
            .lock()
            .unwrap()
            .first()
            .map(|p| p.request_id.clone());
        assert!(id.is_none(), "the fake failed before recording");
        assert!(body["message"].as_str().unwrap().contains("p1."));
    }

    #[tokio::test]
    async fn bad_input_is_a_400_and_reaches_nothing() {
        let (d, _) = deduct(true).await;
        let big = format!(
            r#"{{"product_id":"p1","user_id":"u1","pad":"{}"}}"#,
            "x".repeat(5000)
        );
        for body in [
            "",
            "not json",
            "[1,2]",
            r#"{"product_id":42}"#,
            r#"{"product_id":"p{1}","user_id":"u1"}"#,
            r#"{"product_id":"p1","user_id":"u:1"}"#,
            r#"{"product_id":"p1","quantity":0,"user_id":"u1"}"#,
            r#"{"product_id":"p1","quantity":-1,"user_id":"u1"}"#,
            r#"{"product_id":"p1","quantity":1.5,"user_id":"u1"}"#,
            r#"{"product_id":"p1","quantity":99999999999,"user_id":"u1"}"#,
            &big,
        ] {
            let (status, resp) = call(&d, buy(body)).await;
            assert_eq!(status, 400, "{body:.60}");
            assert_eq!(resp["error"], "invalid_request");
            assert!(resp["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
        let mut req = buy(r#"{"product_id":"p1","user_id":"u1"}"#);
        req.headers_mut()
            .insert("Idempotency-Key", "bad key".parse().unwrap());
        assert_eq!(call(&d, req).await.0, 400);
        assert!(d.gate.purchases.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn without_insecure_mode_a_body_user_id_is_not_an_identity() {
        let (d, _) = deduct(false).await;
        let (status, body) = call(&d, buy(r#"{"product_id":"p1","user_id":"u1"}"#)).await;
        assert_eq!(
            (status, body["error"].as_str().unwrap()),
            (401, "unauthenticated")
        );
        assert!(d.gate.purchases.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn sold_out_is_answered_from_memory_but_never_for_a_replay() {
        let (d, _) = deduct(true).await;
        d.gate.answer(Admission::Refused(Refusal::SoldOut));
        let body = r#"{"product_id":"p1","user_id":"u1"}"#;
        assert_eq!(call(&d, buy(body)).await.0, 410);
        // No key: Redis is not asked again.
        assert_eq!(call(&d, buy(body)).await.0, 410);
        assert_eq!(d.gate.purchases.lock().unwrap().len(), 1);
        // A keyed request Redis does not hold is no replay: from memory too
        // (issue 12: a keyed sold-out storm ran the whole script each time).
        let (status, _) = call(&d, keyed(body, "k-2")).await;
        assert_eq!(status, 410);
        assert_eq!(d.gate.purchases.lock().unwrap().len(), 1);
        // A keyed request Redis holds is a replay: the script answers it.
        let (first, _) = parse(&keyed(body, "k-1"), true, &RequestIds::Random).unwrap();
        d.gate.put_request(shared::fakes::view(
            &OrderMessage::new(&first, 5, 10),
            OrderStatus::Pending,
        ));
        d.gate.answer(replay(OrderStatus::Pending, true));
        let (status, _) = call(&d, keyed(body, "k-1")).await;
        assert_eq!(status, 200);
        // Other products are not affected; a zero TTL turns it off.
        assert_eq!(
            call(&d, buy(r#"{"product_id":"p2","user_id":"u1"}"#))
                .await
                .0,
            202
        );
        let off = SoldOutCache::new(Duration::ZERO);
        off.remember(&ProductId::parse("p1").unwrap());
        assert!(!off.is_sold_out(&ProductId::parse("p1").unwrap()));
    }
}
