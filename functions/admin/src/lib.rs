//! Operator API, behind a bearer token (and IAM auth in AWS):
//! - `POST /api/admin/products` creates a product in DynamoDB;
//! - `POST /api/admin/products/{id}/warm[?force=true]` loads it into Redis;
//! - `GET /api/admin/products/{id}` reports its counters;
//! - `POST /api/admin/products/{id}/{pause,resume,end}` `{"reason"}` controls
//!   a live sale, audited (`GET /api/admin/products/{id}/audit`);
//! - `GET|POST /api/admin/kill-switch` `{"engaged","reason"}` reads or
//!   throws the switch that stops every sale's admissions, audited with the
//!   other changes to every sale (`GET /api/admin/audit`);
//! - `PATCH /api/admin/products/{id}/waiting-room` `{"reason", "ceiling"?,
//!   "start_rate"?, "admission_secs"?, "paused"?}` tunes or pauses a sale's
//!   waiting-room inlet live, audited (the controller reads it each pass);
//! - `GET /api/admin/deny-list`, `PUT|DELETE /api/admin/deny-list/{user}`
//!   `{"reason","until"?}`: buyers every sale refuses (403 `buyer_blocked`).

use std::sync::Arc;

use lambda_http::Request;
use lambda_http::http::Method;
use serde_json::json;
use subtle::ConstantTimeEq;

use serde::Serialize;
use shared::deny::DenyList;
use shared::domain::{
    AuditEntry, Control, Controlled, Denial, IdempotencyKey, Ledger, Product, ProductId,
    ProductStats, StockChange, UserId,
};
use shared::http::{self as api, ApiError, HttpResponse};
use shared::ports::{
    Catalogue, Clock, ControlGate, ControlStore, SaleGate, ShelfGate, StockLedger, Warm,
};
use shared::room::{RoomChange, WaitingRoom};
use shared::stock;
use shared::{buckets, ledger};

#[derive(Serialize)]
struct Stats<'a> {
    #[serde(flatten)]
    sale: ProductStats,
    #[serde(flatten)]
    ledger: Ledger,
    price: u64,
    currency: &'a str,
    payment_window_secs: u32,
    rebuy_after_release: bool,
}

pub struct Admin<G, S> {
    pub gate: G,
    pub store: S,
    /// `FLASHSALE_ADMIN_TOKEN`; when unset every admin call is refused.
    pub token: Option<String>,
    /// Audit times, a sale's end, deny-list expiries.
    pub clock: Arc<dyn Clock>,
    /// What a sale created with a waiting room gets where its request is
    /// silent (`config::room_defaults`, the template's `Room*` parameters).
    pub room_defaults: WaitingRoom,
}

/// Who is calling: the IAM caller API Gateway authorised; else the admin
/// token, with the name its holder gives in `X-Flashsale-Operator` (a
/// claim, recorded as such).
fn actor(req: &Request) -> String {
    api::iam_caller(req).unwrap_or_else(|| {
        match api::header(req, "x-flashsale-operator")
            .map(str::trim)
            .filter(|n| !n.is_empty() && n.len() <= 100)
        {
            Some(name) => format!("admin-token ({name})"),
            None => "admin-token".to_owned(),
        }
    })
}

impl<G, S> Admin<G, S> {
    /// The audit entry of a change the request asks for: its body's `reason`
    /// (required), who asks, now.
    fn audit_entry(
        &self,
        req: &Request,
        product_id: Option<&ProductId>,
        action: &str,
    ) -> Result<AuditEntry, ApiError> {
        #[derive(serde::Deserialize)]
        struct Body {
            reason: String,
        }
        let body: Body = api::json_body(req, r#"{"reason": "why"} (it is audited)"#)?;
        let reason = body.reason.trim();
        if reason.is_empty() || reason.len() > 500 {
            return Err(ApiError::invalid(
                "reason must be 1-500 characters (it is audited)",
            ));
        }
        Ok(AuditEntry {
            product_id: product_id.cloned(),
            at: self.clock.now(),
            actor: actor(req),
            action: action.to_owned(),
            reason: reason.to_owned(),
        })
    }
}

impl<G: ShelfGate + ControlGate + SaleGate, S: Catalogue + ControlStore + StockLedger> Admin<G, S> {
    fn authorised(&self, req: &Request) -> bool {
        let Some(expected) = self.token.as_deref() else {
            tracing::error!("FLASHSALE_ADMIN_TOKEN is not set: refusing all admin calls");
            return false;
        };
        // Behind IAM auth the Authorization header carries the SigV4
        // signature, so the token may come in X-Flashsale-Admin-Token instead.
        // An empty header is no token at all: it must not hide the Bearer one.
        let given = api::header(req, "x-flashsale-admin-token")
            .filter(|t| !t.is_empty())
            .or_else(|| api::header(req, "authorization").and_then(|h| h.strip_prefix("Bearer ")))
            .unwrap_or("");
        given.as_bytes().ct_eq(expected.as_bytes()).into()
    }

    pub async fn handle(&self, req: Request) -> HttpResponse {
        let started = std::time::Instant::now();
        let answer = self.route(&req).await;
        shared::telemetry::record_latency("admin", started);
        answer.unwrap_or_else(ApiError::into_response)
    }

    async fn route(&self, req: &Request) -> Result<HttpResponse, ApiError> {
        if !self.authorised(req) {
            return Err(ApiError::new(401, "unauthenticated"));
        }
        let segments = api::segments_after(req, "/api/admin")
            .ok_or_else(|| ApiError::new(404, "not_found"))?;
        let (scope, segments) = segments
            .split_first()
            .ok_or_else(|| ApiError::new(404, "not_found"))?;
        match (req.method().clone(), *scope, segments) {
            (_, "products", segments) => self.product_route(req, segments).await,
            (Method::GET, "kill-switch", []) => {
                let switch = ControlStore::kill_switch(&self.store).await?;
                Ok(api::json_response(200, &switch))
            }
            (Method::POST, "kill-switch", []) => self.kill_switch(req).await,
            (Method::GET, "deny-list", []) => {
                let entries = ControlStore::denials(&self.store).await?;
                Ok(api::json_response(200, &json!({ "entries": entries })))
            }
            (Method::PUT | Method::DELETE, "deny-list", [user]) => {
                self.deny(req, &UserId::parse(*user)?).await
            }
            (_, "deny-list", [] | [_]) => Err(ApiError::new(405, "method_not_allowed")),
            (Method::GET, "audit", []) => {
                let entries = self.store.audit(None).await?;
                Ok(api::json_response(200, &json!({ "entries": entries })))
            }
            (_, "kill-switch" | "audit", []) => Err(ApiError::new(405, "method_not_allowed")),
            _ => Err(ApiError::new(404, "not_found")),
        }
    }

    async fn product_route(
        &self,
        req: &Request,
        segments: &[&str],
    ) -> Result<HttpResponse, ApiError> {
        match (req.method().clone(), segments) {
            (Method::POST, []) => self.create(req).await,
            (Method::POST, [id, "warm"]) => {
                let force = api::query_param(req, "force").as_deref() == Some("true");
                self.warm(&ProductId::parse(*id)?, force).await
            }
            (Method::GET, [id]) => self.stats(&ProductId::parse(*id)?).await,
            (Method::POST, [id, action @ ("pause" | "resume" | "end")]) => {
                let control =
                    Control::parse(action).ok_or_else(|| ApiError::new(404, "not_found"))?;
                self.control(req, &ProductId::parse(*id)?, control).await
            }
            (Method::POST, [id, "stock"]) => self.change_stock(req, &ProductId::parse(*id)?).await,
            (Method::PATCH, [id, "waiting-room"]) => {
                self.change_room(req, &ProductId::parse(*id)?).await
            }
            (Method::GET, [id, "audit"]) => {
                let id = ProductId::parse(*id)?;
                let entries = self.store.audit(Some(&id)).await?;
                Ok(api::json_response(
                    200,
                    &json!({ "product_id": id, "entries": entries }),
                ))
            }
            (
                _,
                []
                | [_]
                | [
                    _,
                    "warm" | "pause" | "resume" | "end" | "stock" | "audit" | "waiting-room",
                ],
            ) => Err(ApiError::new(405, "method_not_allowed")),
            _ => Err(ApiError::new(404, "not_found")),
        }
    }

    async fn create(&self, req: &Request) -> Result<HttpResponse, ApiError> {
        #[derive(serde::Deserialize)]
        struct NewProduct {
            #[serde(flatten)]
            product: Product,
            /// The sale's expected placed orders per second: enough ledger
            /// shards for it (or `ledger_shards`; given both, the larger).
            #[serde(default)]
            expected_orders_per_sec: u32,
            /// The sale's expected buy requests per second: enough Redis
            /// stock buckets for it (or `stock_buckets`; both: the larger).
            #[serde(default)]
            expected_buyers_per_sec: u32,
            /// A waiting room (`{}`: the deployment's defaults).
            waiting_room: Option<RoomChange>,
        }
        let NewProduct {
            mut product,
            expected_orders_per_sec,
            expected_buyers_per_sec,
            waiting_room,
        } = api::json_body(
            req,
            r#"{"product_id","name","stock","per_buyer_limit","starts_at","ends_at","price","currency"} (optional "payment_window_secs", "rebuy_after_release", "ledger_shards" or "expected_orders_per_sec", "stock_buckets" or "expected_buyers_per_sec", "waiting_room": {"early_window_secs","start_rate","ceiling","admission_secs"}) with RFC 3339 times and the price in minor units"#,
        )?;
        // Both given: the larger (validated, so 0 is refused, not raised).
        product.validate()?;
        product.waiting_room = waiting_room
            .map(|change| change.apply(self.room_defaults))
            .transpose()?;
        product.ledger_shards = product
            .ledger_shards
            .max(ledger::shards_for(product.stock, expected_orders_per_sec));
        product.stock_buckets = product
            .stock_buckets
            .max(buckets::buckets_for(product.stock, expected_buyers_per_sec));
        if !self.store.create_product(&product).await? {
            return Err(ApiError::new(409, "product_exists"));
        }
        tracing::info!(product_id = %product.product_id, "product created");
        Ok(api::json_response(201, &product))
    }

    async fn warm(&self, id: &ProductId, force: bool) -> Result<HttpResponse, ApiError> {
        let product = self
            .store
            .product(id)
            .await?
            .ok_or_else(|| ApiError::new(404, "unknown_product"))?;
        // The fence before the ledger, as the sweeper's resync reads them.
        let seen = self.gate.stats(id).await?.map_or(0, |s| s.fence());
        let ledger = self
            .store
            .ledger(id)
            .await?
            .ok_or_else(|| ApiError::new(404, "unknown_product"))?
            .shelf_units();
        match self.gate.warm(&product, force, ledger, seen).await? {
            Warm::Warmed { stock_left } => {
                // A stock change that found the sale cold may have been
                // recorded after the ledger read above: the shelf follows it.
                stock::heal_shelf(&self.gate, &self.store, id).await?;
                // The deny list travels with the sale (admit.lua reads it
                // in the sale's slot); the sweeper keeps it in line after.
                let now = self.clock.now_ms();
                DenyList::read(&self.store, now)
                    .await?
                    .sync(&self.gate, &self.store, id)
                    .await?;
                tracing::info!(product_id = %id, stock_left, force, "product warmed");
                Ok(api::json_response(
                    200,
                    &json!({ "product_id": id, "stock_left": stock_left }),
                ))
            }
            Warm::AlreadyStarted { .. } => Err(ApiError::new(409, "sale_started").with_message(
                "the sale has started; re-warm with ?force=true (the shelf is then set from the DynamoDB ledger)",
            )),
        }
    }

    /// Records the control with its audit entry in DynamoDB, then applies
    /// it to Redis. Repeating a call is safe: a control already recorded is
    /// not recorded again, and is applied to Redis again (the sweeper also
    /// applies the recorded controls every run).
    async fn control(
        &self,
        req: &Request,
        id: &ProductId,
        control: Control,
    ) -> Result<HttpResponse, ApiError> {
        let entry = self.audit_entry(req, Some(id), control.as_str())?;
        let reason = entry.reason.as_str();
        // The product's item is the stock ledger's too: a transaction
        // conflict with the sale is retried here, when a pause matters most.
        let Controlled { product, changed } =
            shared::retry::transient(shared::retry::Backoff::DEFAULT, || {
                self.store.control(id, control, &entry)
            })
            .await
            .map_err(|e| ApiError::from(e).with_message("not recorded: repeat the call"))?
            .ok_or_else(|| ApiError::new(404, "unknown_product"))?;
        let live = self.gate.apply_controls(&product).await.map_err(|e| {
            ApiError::from(e).with_message(
                "recorded, but not yet applied to the live sale: repeat the call (it is safe) or wait for the next sweep",
            )
        })?;
        tracing::info!(product_id = %id, action = control.as_str(), actor = %entry.actor, reason, "sale control");
        Ok(api::json_response(
            200,
            &json!({
                "product_id": id,
                "paused": product.paused,
                "ends_at": product.ends_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
                "live": live,
                // False for a repeat: already so, and not audited again.
                "changed": changed,
            }),
        ))
    }

    /// Tunes or pauses a sale's waiting room, audited: the edge follows on
    /// the controller's next pass. Its early window is fixed (places were
    /// drawn over it), and a room is never added to or taken from a sale.
    async fn change_room(&self, req: &Request, id: &ProductId) -> Result<HttpResponse, ApiError> {
        let entry = self.audit_entry(req, Some(id), "waiting_room")?;
        let mut body: serde_json::Map<String, serde_json::Value> = api::json_body(
            req,
            r#"{"reason", "ceiling"?, "start_rate"?, "admission_secs"?, "paused"?}"#,
        )?;
        body.remove("reason");
        let change: RoomChange = serde_json::from_value(body.into()).map_err(|e| {
            ApiError::invalid(format!(
                "{e}: name only ceiling, start_rate, admission_secs, paused (and reason)"
            ))
        })?;
        if change.early_window_secs.is_some() {
            return Err(ApiError::invalid(
                "early_window_secs is fixed once the sale exists: places were drawn over it",
            ));
        }
        let product = self
            .store
            .product(id)
            .await?
            .ok_or_else(|| ApiError::new(404, "unknown_product"))?;
        let from = product.waiting_room.ok_or_else(|| {
            ApiError::new(409, "no_waiting_room").with_message(
                "this sale was created without a waiting room; a room is set at creation only",
            )
        })?;
        let to = change.apply(from)?;
        let changed = from != to;
        if changed && !self.store.change_room(id, &from, &to, &entry).await? {
            return Err(ApiError::new(409, "changed_concurrently").with_message(
                "the room changed while this call read it: read it and repeat the call",
            ));
        }
        tracing::info!(product_id = %id, actor = %entry.actor, reason = %entry.reason, ?to, "waiting room changed");
        Ok(api::json_response(
            200,
            &json!({ "product_id": id, "waiting_room": to, "changed": changed }),
        ))
    }

    /// `{"delta": ±n, "reason"}` with an Idempotency-Key: units added to
    /// or withdrawn from the sale, shelf and ledger together, never below
    /// what buyers were admitted to (see `shared::stock`).
    async fn change_stock(&self, req: &Request, id: &ProductId) -> Result<HttpResponse, ApiError> {
        let key = api::ascii_header(req, "idempotency-key")?
            .map(IdempotencyKey::parse)
            .transpose()?
            .ok_or_else(|| {
                ApiError::invalid("an Idempotency-Key header is required: a retry must not change the stock twice")
            })?;
        #[derive(serde::Deserialize)]
        struct Body {
            delta: i64,
        }
        let body: Body = api::json_body(
            req,
            r#"{"delta": <units, negative to withdraw>, "reason": "why"}"#,
        )?;
        let change = StockChange::new(id.clone(), key, body.delta)?;
        let action = if change.delta > 0 {
            "add_stock"
        } else {
            "withdraw_stock"
        };
        let entry = self.audit_entry(req, Some(id), &format!("{action} {}", change.units()))?;
        let unfinished = |e: shared::error::InfraError| {
            ApiError::from(e).with_message(
                "the change may be part done: repeat the call with the same Idempotency-Key (it is safe), or the next sweep finishes it",
            )
        };
        let outcome = stock::change(&self.gate, &self.store, &change, &entry)
            .await
            .map_err(unfinished)?;
        match outcome {
            stock::Outcome::Applied { new } => {
                let product = self
                    .store
                    .product(id)
                    .await?
                    .ok_or_else(|| ApiError::new(404, "unknown_product"))?;
                tracing::info!(product_id = %id, delta = change.delta, actor = %entry.actor, reason = %entry.reason, new, "stock change");
                Ok(api::json_response(
                    200,
                    &json!({ "product_id": id, "delta": change.delta, "stock_total": product.stock, "changed": new }),
                ))
            }
            stock::Outcome::Short { on_shelf } => Err(ApiError::new(409, "insufficient_stock")
                .with_message(match on_shelf {
                    Some(n) => format!("only {n} units are on the shelf (the rest are admitted or sold); withdraw at most {n}"),
                    None => "the units were sold or admitted meanwhile; nothing was withdrawn".to_owned(),
                })),
            stock::Outcome::KeyReused => Err(ApiError::new(422, "idempotency_key_reused")
                .with_message("this Idempotency-Key was used for another change; use a new key")),
            stock::Outcome::UnknownProduct => Err(ApiError::new(404, "unknown_product")),
        }
    }

    /// Records the switch, then tells Redis, where every deduct instance
    /// reads it (each at most `FLASHSALE_KILL_SWITCH_CACHE_MS` late).
    async fn kill_switch(&self, req: &Request) -> Result<HttpResponse, ApiError> {
        #[derive(serde::Deserialize)]
        struct Body {
            engaged: bool,
        }
        let body: Body = api::json_body(
            req,
            r#"{"engaged": true|false, "reason": "why"} (it is audited)"#,
        )?;
        let action = if body.engaged {
            "stop_admissions"
        } else {
            "resume_admissions"
        };
        let entry = self.audit_entry(req, None, action)?;
        let (switch, changed) = shared::retry::transient(shared::retry::Backoff::DEFAULT, || {
            self.store.switch_admissions(body.engaged, &entry)
        })
        .await
        .map_err(|e| ApiError::from(e).with_message("not recorded: repeat the call"))?;
        self.gate.apply_kill_switch(switch).await.map_err(|e| {
            ApiError::from(e).with_message(
                "recorded, but not yet applied to the live sales: repeat the call (it is safe) or wait for the next sweep",
            )
        })?;
        tracing::warn!(engaged = switch.engaged, actor = %entry.actor, reason = %entry.reason, "kill switch");
        Ok(api::json_response(
            200,
            &json!({ "engaged": switch.engaged, "seq": switch.seq, "changed": changed }),
        ))
    }

    /// PUT puts a buyer on the deny list `{"reason", "until"?}` (RFC 3339;
    /// none = until taken off), DELETE `{"reason"}` takes them off: recorded
    /// with its audit entry, then copied into every sale Redis holds (the
    /// sweeper copies it into any it missed).
    async fn deny(&self, req: &Request, user: &UserId) -> Result<HttpResponse, ApiError> {
        let put = req.method() == Method::PUT;
        let entry = self.audit_entry(
            req,
            None,
            &format!("{} {user}", if put { "deny" } else { "allow" }),
        )?;
        let denial = if put {
            #[derive(serde::Deserialize)]
            struct Body {
                #[serde(default, with = "time::serde::rfc3339::option")]
                until: Option<time::OffsetDateTime>,
            }
            let body: Body =
                api::json_body(req, r#"{"reason": "why", "until": "<RFC 3339, optional>"}"#)?;
            if body.until.is_some_and(|u| u <= entry.at) {
                return Err(ApiError::invalid("until must be in the future"));
            }
            Some(Denial {
                user_id: user.clone(),
                reason: entry.reason.clone(),
                actor: entry.actor.clone(),
                at: entry.at,
                until: body.until,
            })
        } else {
            None
        };
        let changed = shared::retry::transient(shared::retry::Backoff::DEFAULT, || {
            self.store.set_denial(user, denial.as_ref(), &entry)
        })
        .await
        .map_err(|e| ApiError::from(e).with_message("not recorded: repeat the call"))?;
        if !changed {
            return Err(ApiError::new(404, "not_listed"));
        }
        let copy: Vec<(UserId, i64)> = denial
            .iter()
            .map(|d| (user.clone(), d.until_ms()))
            .collect();
        let gone: Vec<UserId> = if put { Vec::new() } else { vec![user.clone()] };
        let not_applied = |e: shared::error::InfraError| {
            ApiError::from(e).with_message(
                "recorded, but not yet applied to every live sale: repeat the call (it is safe) or wait for the next sweep",
            )
        };
        let sales = self.gate.products().await.map_err(not_applied)?;
        for product in &sales {
            self.gate
                .set_denials(product, &copy, &gone)
                .await
                .map_err(not_applied)?;
        }
        tracing::warn!(user_id = %user, denied = put, actor = %entry.actor, reason = %entry.reason, "deny list");
        Ok(api::json_response(
            200,
            &json!({ "user_id": user, "denied": put, "until": denial.and_then(|d| d.until).map(|u| u.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()), "sales": sales.len() }),
        ))
    }

    /// Redis' counters of the sale, the DynamoDB ledger's of the orders'
    /// lives after it, and the product's terms.
    async fn stats(&self, id: &ProductId) -> Result<HttpResponse, ApiError> {
        let product = self
            .store
            .product(id)
            .await?
            .ok_or_else(|| ApiError::new(404, "unknown_product"))?;
        let ledger = self.store.ledger(id).await?.unwrap_or_default();
        // Created but not warmed yet: nothing is on sale.
        let sale = self.gate.stats(id).await?.unwrap_or(ProductStats {
            stock_total: i64::from(product.stock),
            ..ProductStats::default()
        });
        Ok(api::json_response(
            200,
            &Stats {
                sale,
                ledger,
                price: product.price,
                currency: product.currency.as_str(),
                payment_window_secs: product.payment_window_secs,
                rebuy_after_release: product.rebuy_after_release,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lambda_http::{Body, http};
    use shared::aws::DynamoStore;
    use shared::fakes::FakeGate;
    use std::sync::atomic::Ordering;

    type TestAdmin = Admin<FakeGate, DynamoStore>;

    async fn admin() -> TestAdmin {
        Admin {
            gate: FakeGate::default(),
            store: shared::fakes::store().await.0,
            token: Some("s3cret".into()),
            clock: Arc::new(shared::ports::SystemClock),
            room_defaults: ROOM,
        }
    }

    const ROOM: WaitingRoom = WaitingRoom::DEFAULT;

    /// The product as DynamoDB stores it.
    async fn stored(a: &TestAdmin, id: &str) -> Option<Product> {
        let id = ProductId::parse(id).unwrap();
        a.store.product(&id).await.unwrap()
    }

    const PRODUCT: &str = r#"{"product_id":"p1","name":"Phone","stock":100,"per_buyer_limit":1,"price":49900,"currency":"EUR",
        "starts_at":"2026-01-01T00:00:00Z","ends_at":"2026-01-02T00:00:00Z"}"#;

    async fn call<G: ShelfGate + ControlGate + SaleGate>(
        a: &Admin<G, DynamoStore>,
        method: &str,
        path: &str,
        token: &str,
        body: &str,
    ) -> (u16, serde_json::Value) {
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("Authorization", format!("Bearer {token}"))
            .body(Body::from(body))
            .unwrap();
        let resp = a.handle(req).await;
        let body = serde_json::from_slice(resp.body().as_ref()).unwrap_or_default();
        (resp.status().as_u16(), body)
    }

    #[tokio::test]
    async fn create_warm_and_read_a_product() {
        let a = admin().await;
        assert_eq!(
            call(&a, "POST", "/api/admin/products", "s3cret", PRODUCT)
                .await
                .0,
            201
        );
        assert_eq!(
            call(&a, "POST", "/api/admin/products", "s3cret", PRODUCT)
                .await
                .0,
            409
        );
        let (status, body) = call(&a, "GET", "/api/admin/products/p1", "s3cret", "").await;
        assert_eq!((status, body["stock_total"].as_i64()), (200, Some(100)));
        let (status, body) = call(&a, "POST", "/api/admin/products/p1/warm", "s3cret", "").await;
        assert_eq!((status, body["stock_left"].as_i64()), (200, Some(100)));
        assert_eq!(a.gate.warmed.lock().unwrap().len(), 1);
    }

    /// A room is set at creation (the defaults where the request is
    /// silent) and tuned or paused live, audited; never added later.
    #[tokio::test]
    async fn a_waiting_room_is_set_at_creation_and_tuned_live() {
        let a = &admin().await;
        let with = |id: &str, room: &str| {
            PRODUCT.replace(r#""p1""#, &format!("{id:?}")).replace(
                r#""currency":"EUR","#,
                &format!(r#""currency":"EUR","waiting_room":{room},"#),
            )
        };
        let create = |body: String| async move {
            call(a, "POST", "/api/admin/products", "s3cret", &body).await
        };
        let (status, body) = create(with("room", r#"{"ceiling":80}"#)).await;
        assert_eq!(status, 201, "{body}");
        let room = WaitingRoom {
            ceiling: 80,
            ..WaitingRoom::DEFAULT
        };
        assert_eq!(stored(a, "room").await.unwrap().waiting_room, Some(room));
        assert_eq!(body["waiting_room"]["ceiling"], 80);
        assert_eq!(create(with("plain", "null")).await.0, 201);
        assert_eq!(stored(a, "plain").await.unwrap().waiting_room, None);
        for (bad, why) in [
            (r#"{"start_rate":900}"#, "start_rate"),
            (r#"{"admission_secs":5}"#, "admission_secs"),
            (r#"{"celing":80}"#, "celing"),
        ] {
            let (status, body) = create(with("bad", bad)).await;
            assert_eq!(status, 400, "{bad}");
            assert!(body["message"].as_str().unwrap().contains(why), "{body}");
        }
        let patch = |id: &str, body: &str| {
            let path = format!("/api/admin/products/{id}/waiting-room");
            let body = body.to_owned();
            async move { call(a, "PATCH", &path, "s3cret", &body).await }
        };
        let (status, body) = patch(
            "room",
            r#"{"reason":"origin hot","paused":true,"ceiling":60}"#,
        )
        .await;
        assert_eq!(
            (status, body["changed"].as_bool()),
            (200, Some(true)),
            "{body}"
        );
        let paused = WaitingRoom {
            paused: true,
            ceiling: 60,
            ..room
        };
        assert_eq!(stored(a, "room").await.unwrap().waiting_room, Some(paused));
        let (status, body) = patch("room", r#"{"reason":"again","paused":true}"#).await;
        assert_eq!((status, body["changed"].as_bool()), (200, Some(false)));
        for (id, bad, expected, why) in [
            ("room", r#"{"reason":"x","ceiling":10}"#, 400, "start_rate"),
            (
                "room",
                r#"{"reason":"x","early_window_secs":60}"#,
                400,
                "fixed",
            ),
            ("room", r#"{"reason":"x","celing":1}"#, 400, "celing"),
            ("room", r#"{"paused":false}"#, 400, "reason"),
            (
                "plain",
                r#"{"reason":"x","paused":true}"#,
                409,
                "at creation",
            ),
            ("nope", r#"{"reason":"x","paused":true}"#, 404, ""),
        ] {
            let (status, body) = patch(id, bad).await;
            assert_eq!(status, expected, "{bad}: {body}");
            assert!(body.to_string().contains(why), "{bad}: {body}");
        }
        assert_eq!(stored(a, "room").await.unwrap().waiting_room, Some(paused));
        // Only the change is audited.
        let room_id = ProductId::parse("room").unwrap();
        let audit = a.store.audit(Some(&room_id)).await.unwrap();
        assert_eq!(audit.len(), 1);
        assert_eq!(
            (audit[0].action.as_str(), audit[0].reason.as_str()),
            ("waiting_room", "origin hot")
        );
    }

    #[tokio::test]
    async fn ledger_shards_follow_the_expected_rate_or_the_setting() {
        let a = admin().await;
        let with = |id: &str, extra: &str| {
            PRODUCT
                .replace(r#""p1""#, &format!(r#""{id}""#))
                .replace(r#""stock":100"#, &format!(r#""stock":1000{extra}"#))
        };
        for (id, extra, shards) in [
            ("one", "", 1),
            ("rate", r#","expected_orders_per_sec":2000"#, 6),
            ("set", r#","ledger_shards":16"#, 16),
            (
                "both",
                r#","ledger_shards":2,"expected_orders_per_sec":2000"#,
                6,
            ),
        ] {
            let (status, body) = call(
                &a,
                "POST",
                "/api/admin/products",
                "s3cret",
                &with(id, extra),
            )
            .await;
            assert_eq!(
                (status, body["ledger_shards"].as_u64()),
                (201, Some(shards)),
                "{id}"
            );
            assert_eq!(
                u64::from(stored(&a, id).await.unwrap().ledger_shards),
                shards
            );
        }
        // Out of range, or thinner than 10 units a shard (1000 / 10 > 64,
        // so the thin case needs a smaller stock).
        let thin = PRODUCT
            .replace(r#""p1""#, r#""thin""#)
            .replace(r#""stock":100"#, r#""stock":30,"ledger_shards":4"#);
        for body in [
            with("many", r#","ledger_shards":65"#),
            with("none", r#","ledger_shards":0"#),
            thin,
        ] {
            let (status, answer) = call(&a, "POST", "/api/admin/products", "s3cret", &body).await;
            assert_eq!(status, 400, "{answer}");
            assert!(
                answer["message"]
                    .as_str()
                    .unwrap()
                    .contains("ledger_shards"),
                "{answer}"
            );
        }
    }

    #[tokio::test]
    async fn stock_buckets_follow_the_expected_buyers_or_the_setting() {
        let a = admin().await;
        let with = |id: &str, stock: u32, extra: &str| {
            PRODUCT
                .replace(r#""p1""#, &format!(r#""{id}""#))
                .replace(r#""stock":100"#, &format!(r#""stock":{stock}{extra}"#))
        };
        for (id, stock, extra, buckets) in [
            ("one", 1000, "", 1),
            ("rate", 1000, r#","expected_buyers_per_sec":70000"#, 4),
            ("set", 1000, r#","stock_buckets":8"#, 8),
            (
                "both",
                1000,
                r#","stock_buckets":2,"expected_buyers_per_sec":70000"#,
                4,
            ),
            // 10 units a bucket at least, 16 buckets at most.
            ("thin", 30, r#","expected_buyers_per_sec":500000"#, 3),
            ("huge", 100_000, r#","expected_buyers_per_sec":900000"#, 16),
        ] {
            let (status, body) = call(
                &a,
                "POST",
                "/api/admin/products",
                "s3cret",
                &with(id, stock, extra),
            )
            .await;
            assert_eq!(
                (status, body["stock_buckets"].as_u64()),
                (201, Some(buckets)),
                "{id}"
            );
            assert_eq!(
                u64::from(stored(&a, id).await.unwrap().stock_buckets),
                buckets
            );
        }
        for body in [
            with("many", 1000, r#","stock_buckets":17"#),
            with("none", 1000, r#","stock_buckets":0"#),
            with("thinset", 30, r#","stock_buckets":4"#),
        ] {
            let (status, answer) = call(&a, "POST", "/api/admin/products", "s3cret", &body).await;
            assert_eq!(status, 400, "{answer}");
            assert!(
                answer["message"]
                    .as_str()
                    .unwrap()
                    .contains("stock_buckets"),
                "{answer}"
            );
        }
    }

    #[tokio::test]
    async fn the_kill_switch_is_recorded_once_applied_every_time_and_audited() {
        let a = admin().await;
        let path = "/api/admin/kill-switch";
        let stop = r#"{"engaged":true,"reason":"redis latency"}"#;
        let (status, body) = call(&a, "POST", path, "s3cret", stop).await;
        assert_eq!(status, 200);
        assert_eq!(body, json!({"engaged": true, "seq": 1, "changed": true}));
        let (_, body) = call(&a, "POST", path, "s3cret", stop).await;
        assert_eq!(body, json!({"engaged": true, "seq": 1, "changed": false}));
        let (status, body) = call(&a, "GET", path, "s3cret", "").await;
        assert_eq!((status, body), (200, json!({"engaged": true, "seq": 1})));
        let go = r#"{"engaged":false,"reason":"recovered"}"#;
        let (_, body) = call(&a, "POST", path, "s3cret", go).await;
        assert_eq!(body["seq"], 2);
        assert_eq!(
            *a.gate.kill_switch.lock().unwrap(),
            shared::domain::KillSwitch {
                engaged: false,
                seq: 2
            }
        );
        let (status, _) = call(&a, "POST", path, "s3cret", r#"{"engaged":true}"#).await;
        assert_eq!(status, 400, "a reason is required");

        let (status, body) = call(&a, "GET", "/api/admin/audit", "s3cret", "").await;
        assert_eq!(status, 200);
        let actions: Vec<(&str, &str)> = body["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["action"].as_str().unwrap(), e["reason"].as_str().unwrap()))
            .collect();
        assert_eq!(
            actions,
            [
                ("stop_admissions", "redis latency"),
                ("resume_admissions", "recovered")
            ]
        );
        assert!(body["entries"][0].get("product_id").is_none());
        assert_eq!(call(&a, "DELETE", path, "s3cret", "").await.0, 405);
    }

    #[tokio::test]
    async fn the_deny_list_is_recorded_audited_and_copied_into_every_sale() {
        let a = admin().await;
        call(&a, "POST", "/api/admin/products", "s3cret", PRODUCT).await;
        call(&a, "POST", "/api/admin/products/p1/warm", "s3cret", "").await;
        let path = "/api/admin/deny-list/bot7";
        let (status, body) = call(&a, "PUT", path, "s3cret", r#"{"reason":"scripted"}"#).await;
        assert_eq!((status, &body["denied"]), (200, &json!(true)));
        let p1 = ProductId::parse("p1").unwrap();
        let copy = |a: &TestAdmin| {
            a.gate
                .denials
                .lock()
                .unwrap()
                .get(&p1)
                .map(|sale| sale.keys().map(ToString::to_string).collect::<Vec<_>>())
                .unwrap_or_default()
        };
        assert_eq!(copy(&a), ["bot7"]);
        let (status, body) = call(&a, "GET", "/api/admin/deny-list", "s3cret", "").await;
        assert_eq!(
            (status, &body["entries"][0]["user_id"]),
            (200, &json!("bot7"))
        );
        let past = r#"{"reason":"x","until":"2001-01-01T00:00:00Z"}"#;
        assert_eq!(call(&a, "PUT", path, "s3cret", past).await.0, 400);

        let (status, _) = call(&a, "DELETE", path, "s3cret", r#"{"reason":"appeal"}"#).await;
        assert_eq!(status, 200);
        assert!(copy(&a).is_empty());
        let (status, body) = call(&a, "DELETE", path, "s3cret", r#"{"reason":"again"}"#).await;
        assert_eq!((status, &body["error"]), (404, &json!("not_listed")));
        let (_, body) = call(&a, "GET", "/api/admin/audit", "s3cret", "").await;
        let actions: Vec<&str> = body["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["action"].as_str().unwrap())
            .collect();
        assert_eq!(actions, ["deny bot7", "allow bot7"]);
        // A sale warmed later starts with the list.
        call(&a, "PUT", path, "s3cret", r#"{"reason":"back"}"#).await;
        a.gate.denials.lock().unwrap().clear();
        call(&a, "POST", "/api/admin/products/p1/warm", "s3cret", "").await;
        assert_eq!(copy(&a), ["bot7"]);
    }

    /// On the real scripts (a simulated Redis): the shelf's rules are theirs.
    #[tokio::test]
    async fn stock_changes_need_a_key_and_stop_at_what_buyers_were_admitted_to() {
        let fake = admin().await;
        let a = Admin {
            gate: shared::fakes::simulated_gate().1,
            store: fake.store,
            token: fake.token,
            clock: fake.clock,
            room_defaults: ROOM,
        };
        // On sale now, 60 of its 100 units admitted.
        let rfc = |t: time::OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap()
        };
        let now = time::OffsetDateTime::now_utc();
        let on_sale = PRODUCT
            .replace("2026-01-01T00:00:00Z", &rfc(now - time::Duration::hours(1)))
            .replace("2026-01-02T00:00:00Z", &rfc(now + time::Duration::hours(1)));
        call(&a, "POST", "/api/admin/products", "s3cret", &on_sale).await;
        let (status, _) = call(&a, "POST", "/api/admin/products/p1/warm", "s3cret", "").await;
        assert_eq!(status, 200);
        let p = ProductId::parse("p1").unwrap();
        shared::fakes::admit_buyers(&a.gate, &p, 60).await;
        let shelf = || async { a.gate.stats(&p).await.unwrap().unwrap().stock_left };
        assert_eq!(shelf().await, 40);
        let change = |key: Option<&str>, body: &str| {
            let mut req = http::Request::builder()
                .method("POST")
                .uri("/api/admin/products/p1/stock")
                .header("Authorization", "Bearer s3cret");
            if let Some(key) = key {
                req = req.header("Idempotency-Key", key);
            }
            let req = req.body(Body::from(body.to_owned())).unwrap();
            let a = &a;
            async move {
                let resp = a.handle(req).await;
                let body: serde_json::Value =
                    serde_json::from_slice(resp.body().as_ref()).unwrap_or_default();
                (resp.status().as_u16(), body)
            }
        };
        let withdraw = r#"{"delta":-10,"reason":"damaged in transit"}"#;
        assert_eq!(change(None, withdraw).await.0, 400, "a key is required");
        assert_eq!(
            change(Some("k1"), r#"{"delta":0,"reason":"x"}"#).await.0,
            400
        );
        let (status, body) = change(Some("k1"), withdraw).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            (&body["stock_total"], &body["changed"]),
            (&json!(90), &json!(true))
        );
        let (status, body) = change(Some("k1"), withdraw).await;
        assert_eq!((status, &body["changed"]), (200, &json!(false)));
        let (status, body) = change(Some("k2"), r#"{"delta":-31,"reason":"x"}"#).await;
        assert_eq!(
            (status, &body["error"]),
            (409, &json!("insufficient_stock"))
        );
        let (status, _) = change(Some("k1"), r#"{"delta":-3,"reason":"x"}"#).await;
        assert_eq!(status, 422);
        let (status, body) = change(Some("k3"), r#"{"delta":5,"reason":"found a pallet"}"#).await;
        assert_eq!((status, &body["stock_total"]), (200, &json!(95)));
        assert_eq!(shelf().await, 35);
        let (_, body) = call(&a, "GET", "/api/admin/products/p1/audit", "s3cret", "").await;
        let actions: Vec<&str> = body["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["action"].as_str().unwrap())
            .collect();
        assert_eq!(actions, ["withdraw_stock 10", "add_stock 5"]);
    }

    #[tokio::test]
    async fn controls_are_recorded_once_applied_every_time_and_audited() {
        let a = admin().await;
        call(&a, "POST", "/api/admin/products", "s3cret", PRODUCT).await;
        let pause = |reason: &str| format!(r#"{{"reason":"{reason}"}}"#);
        let path = "/api/admin/products/p1/pause";
        let (status, body) = call(&a, "POST", path, "s3cret", &pause("bots")).await;
        assert_eq!((status, &body["paused"]), (200, &json!(true)));
        assert_eq!(body["changed"], json!(true));
        // Repeated (a retry after a Redis error): applied again, audited once.
        let (status, body) = call(&a, "POST", path, "s3cret", &pause("bots")).await;
        assert_eq!((status, &body["changed"]), (200, &json!(false)));
        let (status, body) = call(
            &a,
            "POST",
            "/api/admin/products/p1/resume",
            "s3cret",
            &pause("ok"),
        )
        .await;
        assert_eq!((status, &body["paused"]), (200, &json!(false)));
        let applied: Vec<bool> = a
            .gate
            .controlled
            .lock()
            .unwrap()
            .iter()
            .map(|p| p.paused)
            .collect();
        assert_eq!(applied, [true, true, false]);

        let (status, body) = call(&a, "GET", "/api/admin/products/p1/audit", "s3cret", "").await;
        assert_eq!(status, 200);
        let entries: Vec<(&str, &str, &str)> = body["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["action"].as_str().unwrap(),
                    e["reason"].as_str().unwrap(),
                    e["actor"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            entries,
            [
                ("pause", "bots", "admin-token"),
                ("resume", "ok", "admin-token")
            ]
        );

        // Refusals: no reason, unknown product, Redis down (recorded, 503).
        assert_eq!(call(&a, "POST", path, "s3cret", "{}").await.0, 400);
        let unknown = "/api/admin/products/nope/end";
        assert_eq!(
            call(&a, "POST", unknown, "s3cret", &pause("x")).await.0,
            404
        );
        a.gate.failures.fail_next(1);
        let (status, body) = call(
            &a,
            "POST",
            "/api/admin/products/p1/end",
            "s3cret",
            &pause("done"),
        )
        .await;
        assert_eq!(status, 503, "{body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("repeat the call")
        );
        let ended = stored(&a, "p1").await.unwrap().ends_at;
        assert!(ended <= time::OffsetDateTime::now_utc());
    }

    #[tokio::test]
    async fn rewarm_after_start_needs_force() {
        let a = admin().await;
        call(&a, "POST", "/api/admin/products", "s3cret", PRODUCT).await;
        a.gate.started.store(true, Ordering::SeqCst);
        let (status, body) = call(&a, "POST", "/api/admin/products/p1/warm", "s3cret", "").await;
        assert_eq!(
            (status, body["error"].as_str()),
            (409, Some("sale_started"))
        );
        let path = "/api/admin/products/p1/warm?force=true";
        assert_eq!(call(&a, "POST", path, "s3cret", "").await.0, 200);
    }

    /// Hole 12: an empty X-Flashsale-Admin-Token must not hide a correct
    /// Bearer token (nor stand for an empty one).
    #[tokio::test]
    async fn an_empty_admin_header_is_no_token() {
        let a = admin().await;
        let req = |header: &str, bearer: &str| {
            http::Request::builder()
                .method("GET")
                .uri("/api/admin/products/p1")
                .header("X-Flashsale-Admin-Token", header)
                .header("Authorization", format!("Bearer {bearer}"))
                .body(Body::Empty)
                .unwrap()
        };
        assert_eq!(a.handle(req("", "s3cret")).await.status().as_u16(), 404);
        assert_eq!(a.handle(req("", "")).await.status().as_u16(), 401);
        assert_eq!(a.handle(req("s3cret", "x")).await.status().as_u16(), 404);
    }

    #[tokio::test]
    async fn refuses_wrong_tokens_and_bad_input() {
        let a = admin().await;
        assert_eq!(
            call(&a, "GET", "/api/admin/products/p1", "wrong", "")
                .await
                .0,
            401
        );
        assert_eq!(
            call(&a, "GET", "/api/admin/products/p1", "", "").await.0,
            401
        );
        let unset = Admin {
            token: None,
            ..admin().await
        };
        assert_eq!(
            call(&unset, "GET", "/api/admin/products/p1", "", "")
                .await
                .0,
            401
        );
        assert_eq!(
            call(&a, "GET", "/api/admin/products/p1", "s3cret", "")
                .await
                .0,
            404
        );
        assert_eq!(
            call(&a, "POST", "/api/admin/products/p1/warm", "s3cret", "")
                .await
                .0,
            404
        );
        assert_eq!(
            call(&a, "GET", "/api/admin/products/p%7B1", "s3cret", "")
                .await
                .0,
            400
        );
        for body in [
            "[]",
            r#"{"product_id":"p1"}"#,
            &PRODUCT.replace("\"stock\":100", "\"stock\":-1"),
            &PRODUCT.replace("2026-01-02", "2025-01-02"),
            &PRODUCT.replace("\"per_buyer_limit\":1", "\"per_buyer_limit\":0"),
            &PRODUCT.replace("\"p1\"", "\"p:1\""),
        ] {
            assert_eq!(
                call(&a, "POST", "/api/admin/products", "s3cret", body)
                    .await
                    .0,
                400,
                "{body}"
            );
        }
        assert_eq!(stored(&a, "p1").await, None);
    }
}
