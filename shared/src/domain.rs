//! Domain types and decisions. No I/O here: everything is a value or a pure
//! function, so the rules can be unit-tested without a Redis or an AWS stack.

use serde::{Deserialize, Serialize};
use std::fmt;
use time::OffsetDateTime;

use crate::error::ValidationError;

/// Largest quantity one request may ask for, whatever the product's limit:
/// keeps absurd numbers out of Lua arithmetic and DynamoDB conditions.
pub const MAX_QUANTITY: u32 = 100;

/// Ids that end up inside Redis keys and DynamoDB keys. The charset excludes
/// `{`, `}`, `:`, `#` and `.`, so an id can never break the key layout, the
/// Redis Cluster hash tag or the request-id format.
fn validate_id(field: &'static str, value: &str, max: usize) -> Result<(), ValidationError> {
    let ok_len = !value.is_empty() && value.len() <= max;
    let ok_chars = value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok_len && ok_chars {
        Ok(())
    } else {
        Err(ValidationError::BadId {
            field,
            rule: format!("1-{max} characters of A-Z a-z 0-9 _ -"),
        })
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $field:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub const MAX_LEN: usize = $max;
            pub fn parse(value: impl Into<String>) -> Result<Self, ValidationError> {
                let value = value.into();
                validate_id($field, &value, $max)?;
                Ok(Self(value))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $name {
            type Error = ValidationError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(value)
            }
        }
        impl From<$name> for String {
            fn from(value: $name) -> Self {
                value.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A product (SKU) on sale.
    ProductId,
    "product_id",
    64
);
id_type!(
    /// A buyer: the JWT `sub` claim, or the body's `user_id` in insecure mode.
    UserId,
    "user_id",
    128
);

/// The client's `Idempotency-Key`: 1–128 of `A-Za-z0-9_-.:`. Scoped per buyer
/// and product in Redis, so two buyers can never collide on a key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

/// A token a client or provider chose (idempotency key, payment event id):
/// 1-`max` characters of `A-Za-z0-9_-.:`.
pub(crate) fn validate_token(
    field: &'static str,
    value: &str,
    max: usize,
) -> Result<(), ValidationError> {
    let ok = !value.is_empty()
        && value.len() <= max
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::BadId {
            field,
            rule: format!("1-{max} characters of A-Z a-z 0-9 _ - . :"),
        })
    }
}

impl IdempotencyKey {
    pub fn parse(value: &str) -> Result<Self, ValidationError> {
        validate_token("Idempotency-Key", value, 128)?;
        Ok(Self(value.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The UUID namespace of keyed request ids (fixed forever: changing it would
/// let a replay after a failover admit twice).
const KEYED_REQUESTS: uuid::Uuid = uuid::Uuid::from_u128(0x6f1b_52c4_93e1_4f0a_9d7e_2b8c_5a10_c3d4);

/// A request id carries its product: `<product_id>.<uuid v7>`. The status
/// endpoint gets only the request id, and the product tells it which Redis
/// hash slot holds the request state, without a global (cluster-unsafe) index.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RequestId {
    raw: String,
    product_len: usize,
}

impl RequestId {
    /// A fresh id for a request without an Idempotency-Key.
    pub fn new(product: &ProductId) -> Self {
        Self::with_uuid(product, uuid::Uuid::now_v7())
    }

    /// The id of a keyed request: a name-based UUID of (product, buyer, key).
    /// Redis may forget an Idempotency-Key in a failover; DynamoDB does not
    /// forget `ORDER#<id>`, so a replay lands on the same fate item.
    pub fn derived(product: &ProductId, user: &UserId, key: &IdempotencyKey) -> Self {
        // NUL cannot occur in any of the three, so the name is unambiguous.
        let name = format!("{product}\0{user}\0{}", key.as_str());
        Self::with_uuid(
            product,
            uuid::Uuid::new_v5(&KEYED_REQUESTS, name.as_bytes()),
        )
    }

    fn with_uuid(product: &ProductId, id: uuid::Uuid) -> Self {
        Self {
            product_len: product.as_str().len(),
            raw: format!("{product}.{id}"),
        }
    }

    pub fn parse(value: &str) -> Result<Self, ValidationError> {
        let bad = || ValidationError::BadId {
            field: "request_id",
            rule: "<product_id>.<uuid> (lower-case, hyphenated), as returned by the buy endpoint"
                .into(),
        };
        let (product, id) = value.split_once('.').ok_or_else(bad)?;
        ProductId::parse(product).map_err(|_| bad())?;
        // The hyphenated lower-case form only, as ids are made: a braced,
        // URN, simple or upper-case spelling of the same UUID would be
        // stored and keyed as another request.
        let uuid = uuid::Uuid::try_parse(id).map_err(|_| bad())?;
        if uuid.hyphenated().to_string() != id {
            return Err(bad());
        }
        Ok(Self {
            raw: value.to_owned(),
            product_len: product.len(),
        })
    }

    pub fn product(&self) -> ProductId {
        ProductId(self.raw[..self.product_len].to_owned())
    }
    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

/// Where the ids of requests without an Idempotency-Key come from.
pub enum RequestIds {
    /// Time-ordered v7 UUIDs: what the functions use.
    Random,
    /// A seeded sequence, so that a simulation seed replays exactly.
    Seeded(std::sync::Mutex<fastrand::Rng>),
}

impl RequestIds {
    pub fn seeded(seed: u64) -> Self {
        Self::Seeded(std::sync::Mutex::new(fastrand::Rng::with_seed(seed)))
    }

    pub fn fresh(&self, product: &ProductId) -> RequestId {
        match self {
            Self::Random => RequestId::new(product),
            Self::Seeded(rng) => {
                let bits = rng.lock().unwrap_or_else(|e| e.into_inner()).u128(..);
                let id = uuid::Builder::from_random_bytes(bits.to_le_bytes()).into_uuid();
                RequestId::with_uuid(product, id)
            }
        }
    }
}

impl TryFrom<String> for RequestId {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}
impl From<RequestId> for String {
    fn from(value: RequestId) -> Self {
        value.raw
    }
}
impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// Units in one request: 1..=[`MAX_QUANTITY`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Quantity(u32);

impl Quantity {
    pub fn new(value: u32) -> Result<Self, ValidationError> {
        if (1..=MAX_QUANTITY).contains(&value) {
            Ok(Self(value))
        } else {
            Err(ValidationError::BadQuantity { max: MAX_QUANTITY })
        }
    }
    pub fn get(self) -> u32 {
        self.0
    }
}
impl TryFrom<u32> for Quantity {
    type Error = ValidationError;
    fn try_from(value: u32) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}
impl From<Quantity> for u32 {
    fn from(value: Quantity) -> Self {
        value.0
    }
}

/// Where a request stands. Forward-only: `Pending` becomes exactly one of
/// `Placed`, `Rejected` or `Compensated`; a placed order (a reservation)
/// becomes exactly one of `Paid`, `Cancelled` or `Expired`. Each edge is one
/// conditional write on `ORDER#<request_id>` (docs/architecture.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    Pending,
    Placed,
    Rejected,
    Compensated,
    Paid,
    Cancelled,
    Expired,
    /// Paid, then the provider refunded the payment. The unit was sold: it
    /// does not come back on sale.
    Refunded,
    /// Paid, then the buyer disputed the payment with their bank (a
    /// chargeback); a refund may still follow. The unit stays sold.
    Disputed,
}

impl OrderStatus {
    const ALL: [Self; 9] = [
        Self::Pending,
        Self::Placed,
        Self::Rejected,
        Self::Compensated,
        Self::Paid,
        Self::Cancelled,
        Self::Expired,
        Self::Refunded,
        Self::Disputed,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Placed => "placed",
            Self::Rejected => "rejected",
            Self::Compensated => "compensated",
            Self::Paid => "paid",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
            Self::Refunded => "refunded",
            Self::Disputed => "disputed",
        }
    }
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.to_ascii_lowercase();
        Self::ALL.into_iter().find(|s| s.as_str() == value)
    }
    /// Decided by DynamoDB: no longer waiting in the queue.
    pub fn is_terminal(self) -> bool {
        self != Self::Pending
    }
    /// The order was placed once, so its units left the DynamoDB ledger
    /// (and came back if it was released).
    pub fn was_placed(self) -> bool {
        matches!(
            self,
            Self::Placed
                | Self::Paid
                | Self::Cancelled
                | Self::Expired
                | Self::Refunded
                | Self::Disputed
        )
    }
    /// Paid once: the unit was sold, whatever the money did since.
    pub fn was_paid(self) -> bool {
        matches!(self, Self::Paid | Self::Refunded | Self::Disputed)
    }
    /// A release: the reservation ended unpaid and its units went back.
    pub fn is_release(self) -> bool {
        matches!(self, Self::Cancelled | Self::Expired)
    }
}

/// Why the admission script refused a request. Each maps to one HTTP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    UnknownProduct,
    SaleNotStarted,
    SaleEnded,
    LimitExceeded,
    AlreadyPurchased,
    /// Nothing left at all. Only this one may be cached as "sold out".
    SoldOut,
    /// The same Idempotency-Key was sent before with another quantity.
    KeyReused,
    /// An operator paused the sale; it may resume.
    SalePaused,
    /// The buyer is on the operators' deny list.
    BuyerBlocked,
    /// The buyer's stock bucket is dry and units were moving between the
    /// product's buckets while the gate looked for them, so it cannot say
    /// the product is sold out (a 410 is a promise): nothing was taken;
    /// ask again shortly. Never cached.
    StockMoving,
}

impl Refusal {
    /// The code the admission script returns and the API's `error` field.
    pub fn code(self) -> &'static str {
        match self {
            Self::UnknownProduct => "unknown_product",
            Self::SaleNotStarted => "sale_not_started",
            Self::SaleEnded => "sale_ended",
            Self::LimitExceeded => "limit_exceeded",
            Self::AlreadyPurchased => "already_purchased",
            Self::SoldOut => "sold_out",
            Self::KeyReused => "idempotency_key_reused",
            Self::SalePaused => "sale_paused",
            Self::BuyerBlocked => "buyer_blocked",
            Self::StockMoving => "stock_moving",
        }
    }
    pub fn from_code(code: &str) -> Option<Self> {
        [
            Self::UnknownProduct,
            Self::SaleNotStarted,
            Self::SaleEnded,
            Self::LimitExceeded,
            Self::AlreadyPurchased,
            Self::SoldOut,
            Self::KeyReused,
            Self::SalePaused,
            Self::BuyerBlocked,
            Self::StockMoving,
        ]
        .into_iter()
        .find(|r| r.code() == code)
    }
    pub fn http_status(self) -> u16 {
        match self {
            Self::UnknownProduct => 404,
            Self::SaleNotStarted | Self::SaleEnded | Self::BuyerBlocked => 403,
            Self::LimitExceeded | Self::AlreadyPurchased => 409,
            Self::SoldOut => 410,
            Self::KeyReused => 422,
            Self::SalePaused | Self::StockMoving => 503,
        }
    }
}

/// What the buy endpoint asks the stock gate.
#[derive(Debug, Clone)]
pub struct Purchase {
    pub request_id: RequestId,
    pub product_id: ProductId,
    pub user_id: UserId,
    pub quantity: Quantity,
    pub idempotency_key: Option<IdempotencyKey>,
    /// Where the request came from, for the per-IP limit (None: not limited).
    pub client_ip: Option<std::net::IpAddr>,
}

/// The stock gate's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// A unit was taken; the request is pending in the outbox index. Also
    /// the answer when the same admission ran twice (a client re-sent the
    /// script after a dropped connection): the earlier admission's time.
    Admitted {
        admitted_at_ms: i64,
        sale_ends_at_ms: i64,
    },
    /// The same buyer repeated an Idempotency-Key: the request (its id is
    /// derived from the key) was admitted before, at this time.
    Replay {
        admitted_at_ms: i64,
        sale_ends_at_ms: i64,
        status: OrderStatus,
        /// Its message reached the queue.
        sent: bool,
    },
    /// Fewer units left than asked for, but not none: the buyer may ask for
    /// fewer. Never cached as sold out, since a smaller request succeeds.
    Short {
        stock_left: i64,
    },
    /// The buyer or the client IP is over its rate limit: nothing else was
    /// looked at or changed. Ask again after this long.
    Throttled {
        retry_after_ms: i64,
    },
    /// Before the sale's start ([`Refusal::SaleNotStarted`]), which the
    /// answer names (ms since the epoch).
    NotStarted {
        starts_at_ms: i64,
    },
    Refused(Refusal),
}

/// The queue message, versioned so consumers can refuse what they don't know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderMessage {
    pub v: u32,
    pub request_id: RequestId,
    pub product_id: ProductId,
    pub user_id: UserId,
    pub quantity: Quantity,
    /// Milliseconds since the Unix epoch, Redis server time.
    pub admitted_at: i64,
    /// The sale's end (ms), so the buyer guard can outlive it; 0 = unknown
    /// (messages from before this field).
    #[serde(default)]
    pub sale_ends_at: i64,
}

impl OrderMessage {
    pub const VERSION: u32 = 1;

    pub fn new(p: &Purchase, admitted_at_ms: i64, sale_ends_at_ms: i64) -> Self {
        Self {
            v: Self::VERSION,
            request_id: p.request_id.clone(),
            product_id: p.product_id.clone(),
            user_id: p.user_id.clone(),
            quantity: p.quantity,
            admitted_at: admitted_at_ms,
            sale_ends_at: sale_ends_at_ms,
        }
    }

    /// Parses and checks a queue body; an error means a poison message.
    pub fn from_json(body: &str) -> Result<Self, ValidationError> {
        let msg: Self = serde_json::from_str(body)
            .map_err(|e| ValidationError::BadMessage(format!("not an order message: {e}")))?;
        if msg.v != Self::VERSION {
            return Err(ValidationError::BadMessage(format!(
                "message version {} is not supported (expected {})",
                msg.v,
                Self::VERSION
            )));
        }
        if msg.request_id.product() != msg.product_id {
            return Err(ValidationError::BadMessage(
                "request_id does not belong to product_id".into(),
            ));
        }
        Ok(msg)
    }
}

/// A request as Redis or DynamoDB knows it: what the status endpoint returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestView {
    pub request_id: RequestId,
    pub product_id: ProductId,
    pub user_id: UserId,
    pub quantity: Quantity,
    pub status: OrderStatus,
    /// RFC 3339.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// Once placed: `pay_by`, `amount`, `currency` (DynamoDB only).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<Reservation>,
}

/// A product as an operator defines it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub product_id: ProductId,
    pub name: String,
    pub stock: u32,
    pub per_buyer_limit: u32,
    /// When buys open; omitted, the sale opens as it is created.
    #[serde(with = "time::serde::rfc3339", default = "OffsetDateTime::now_utc")]
    pub starts_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub ends_at: OffsetDateTime,
    /// Price of one unit in the currency's minor units (cents).
    pub price: u64,
    pub currency: Currency,
    /// How long a placed order is reserved for its buyer to pay.
    #[serde(default = "default_payment_window")]
    pub payment_window_secs: u32,
    /// A cancelled or expired order frees its buyer to buy again; by default
    /// it does not (no second reservation in one sale: anti-hoarding).
    #[serde(default)]
    pub rebuy_after_release: bool,
    /// This sale's request limits; the deployment's defaults where unset.
    #[serde(default, skip_serializing_if = "RateLimits::is_default")]
    pub rate_limits: RateLimits,
    /// An operator paused the sale: buys answer 503 `sale_paused`.
    #[serde(default)]
    pub paused: bool,
    /// How many controls changed the sale (DynamoDB counts them): Redis
    /// takes controls only in this order, so a stale copy cannot undo a
    /// newer pause or end.
    #[serde(default)]
    pub control_seq: u64,
    /// How many DynamoDB items hold the stock ledger ([`crate::ledger`]):
    /// more for a sale expecting more orders per second. Fixed at creation.
    #[serde(default = "one_shard")]
    pub ledger_shards: u16,
    /// How many Redis stock buckets hold the shelf ([`crate::buckets`]):
    /// more for a sale expecting more buyers per second than one Redis
    /// shard admits. Fixed at creation, as a buyer's bucket follows from it.
    #[serde(default = "one_shard")]
    pub stock_buckets: u16,
    /// The sale's waiting room at the edge (docs/waiting-room.md), if it
    /// has one: then every buy needs an admission from it. Set at creation
    /// (the admin API fills it from a partial `RoomChange`).
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub waiting_room: Option<crate::room::WaitingRoom>,
}

fn one_shard() -> u16 {
    1
}

/// An operator's live control of a sale, audited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Control {
    Pause,
    Resume,
    /// Ends the sale now (its end time becomes now).
    End,
}

impl Control {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pause" => Some(Self::Pause),
            "resume" => Some(Self::Resume),
            "end" => Some(Self::End),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::End => "end",
        }
    }
}

/// A sale after a control, and whether the control changed it (a repeat
/// does not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Controlled {
    pub product: Product,
    pub changed: bool,
}

/// Who changed what, when and why: about one sale, or (no product) about
/// every sale: the kill switch, the deny list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_id: Option<ProductId>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub actor: String,
    pub action: String,
    pub reason: String,
}

/// The global kill switch: engaged, no sale admits anyone. `seq` counts its
/// changes (DynamoDB's order), so Redis never takes a stale copy over a
/// newer one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillSwitch {
    pub engaged: bool,
    pub seq: u64,
}

/// An operator's change of a sale's stock, made once per `key` (the call's
/// Idempotency-Key): units added (`delta` > 0) or withdrawn (< 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockChange {
    pub product_id: ProductId,
    pub key: IdempotencyKey,
    pub delta: i64,
}

/// The largest change one call makes.
pub const MAX_STOCK_DELTA: i64 = 1_000_000;

impl StockChange {
    pub fn new(
        product_id: ProductId,
        key: IdempotencyKey,
        delta: i64,
    ) -> Result<Self, ValidationError> {
        if delta == 0 || delta.abs() > MAX_STOCK_DELTA {
            return Err(ValidationError::BadStockDelta {
                max: MAX_STOCK_DELTA,
            });
        }
        Ok(Self {
            product_id,
            key,
            delta,
        })
    }
    /// The units moved, whichever way.
    pub fn units(&self) -> i64 {
        self.delta.abs()
    }
}

/// A stock change as DynamoDB recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StockChangeRecord {
    pub delta: i64,
    /// False: a withdrawal refused because the units were no longer there.
    pub applied: bool,
    /// An addition whose units are not confirmed on the Redis shelf yet.
    pub shelf_due: bool,
}

/// A buyer on the operators' deny list: refused by every sale (403
/// `buyer_blocked`) until `until`, or until removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Denial {
    pub user_id: UserId,
    pub reason: String,
    pub actor: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub until: Option<OffsetDateTime>,
}

impl Denial {
    /// What a sale's copy holds: the end in ms, 0 for none.
    pub fn until_ms(&self) -> i64 {
        self.until.map_or(0, unix_ms)
    }
    pub fn active(&self, now_ms: i64) -> bool {
        self.until.is_none_or(|u| now_ms < unix_ms(u))
    }
}

/// A GCRA limit: `per_second` requests sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

impl RateLimit {
    pub const MAX_PER_SECOND: u32 = 1000;

    /// `"<per second>/<burst>"`, e.g. `"2/5"`; `"off"` is None.
    pub fn parse(spec: &str) -> Result<Option<Self>, ValidationError> {
        let spec = spec.trim();
        if spec.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let bad = || {
            ValidationError::BadField(format!(
                "rate limit {spec:?} must be \"<per second>/<burst>\" (e.g. \"2/5\") or \"off\""
            ))
        };
        let (rate, burst) = spec.split_once('/').ok_or_else(bad)?;
        let limit = Self {
            per_second: rate.trim().parse().map_err(|_| bad())?,
            burst: burst.trim().parse().map_err(|_| bad())?,
        };
        limit.validate()?;
        Ok(Some(limit))
    }

    pub fn validate(&self) -> Result<(), ValidationError> {
        if !(1..=Self::MAX_PER_SECOND).contains(&self.per_second)
            || !(1..=10_000).contains(&self.burst)
        {
            return Err(ValidationError::BadField(
                "a rate limit needs per_second 1-1000 and burst 1-10000".into(),
            ));
        }
        Ok(())
    }

    /// What admit.lua reads: `"<ms between requests>:<burst>"`.
    pub fn spec(limit: Option<Self>) -> String {
        limit.map_or_else(String::new, |l| {
            format!("{}:{}", 1000_u32.div_ceil(l.per_second), l.burst)
        })
    }
}

/// Requests per buyer and per client IP, each sale's own or the defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buyer: Option<RateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<RateLimit>,
}

impl RateLimits {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
    /// This sale's limits where set, else `defaults`'.
    pub fn or(self, defaults: Self) -> Self {
        Self {
            buyer: self.buyer.or(defaults.buyer),
            ip: self.ip.or(defaults.ip),
        }
    }
}

pub const DEFAULT_PAYMENT_WINDOW_SECS: u32 = 900;
fn default_payment_window() -> u32 {
    DEFAULT_PAYMENT_WINDOW_SECS
}

/// An ISO 4217 code: three upper-case letters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency(String);

impl Currency {
    pub fn parse(value: &str) -> Result<Self, ValidationError> {
        if value.len() == 3 && value.bytes().all(|b| b.is_ascii_uppercase()) {
            Ok(Self(value.to_owned()))
        } else {
            Err(ValidationError::BadField(format!(
                "currency must be an ISO 4217 code such as EUR or USD, not {value:?}"
            )))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl TryFrom<String> for Currency {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}
impl From<Currency> for String {
    fn from(value: Currency) -> Self {
        value.0
    }
}
impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a placed order holds its buyer to, fixed when it is placed: the
/// amount due, the deadline, and what a release does to the buyer's slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reservation {
    /// ms since the epoch: the last instant a payment is accepted.
    #[serde(rename = "pay_by", serialize_with = "ms_as_rfc3339")]
    pub pay_by_ms: i64,
    pub amount: u64,
    pub currency: Currency,
    #[serde(skip)]
    pub rebuy_after_release: bool,
    /// The product's ledger shards when placed: the order's later counters
    /// go to its home shard ([`crate::ledger::home`]).
    #[serde(skip)]
    pub ledger_shards: u16,
}

fn ms_as_rfc3339<S: serde::Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    time::serde::rfc3339::serialize(&from_unix_ms(*ms), s)
}

/// Upper bound on stock for one product: keeps Lua integers and DynamoDB
/// numbers far from overflow and catches a typo'd extra zero or five.
pub const MAX_STOCK: u32 = 10_000_000;

impl Product {
    pub fn validate(&self) -> Result<(), ValidationError> {
        let bad = |m: &str| Err(ValidationError::BadField(m.to_owned()));
        if self.name.trim().is_empty() || self.name.len() > 200 {
            return bad("name must be 1-200 characters");
        }
        if self.stock > MAX_STOCK {
            return bad("stock must be between 0 and 10000000");
        }
        if !(1..=MAX_QUANTITY).contains(&self.per_buyer_limit) {
            return bad("per_buyer_limit must be between 1 and 100");
        }
        if self.ends_at <= self.starts_at {
            return bad("ends_at must be after starts_at");
        }
        if self.price > MAX_PRICE {
            return bad("price (minor units) must be at most 1000000000000");
        }
        if !(1..=86_400).contains(&self.payment_window_secs) {
            return bad("payment_window_secs must be between 1 and 86400");
        }
        let most_shards = (self.stock / crate::ledger::MIN_UNITS_PER_SHARD).clamp(1, 64);
        if !(1..=most_shards).contains(&u32::from(self.ledger_shards)) {
            return bad(
                "ledger_shards must be between 1 and 64, and leave each shard at least 10 units",
            );
        }
        let most_buckets = (self.stock / crate::buckets::MIN_UNITS_PER_BUCKET)
            .clamp(1, u32::from(crate::buckets::MAX_BUCKETS));
        if !(1..=most_buckets).contains(&u32::from(self.stock_buckets)) {
            return bad(
                "stock_buckets must be between 1 and 16, and leave each bucket at least 10 units",
            );
        }
        for limit in [self.rate_limits.buyer, self.rate_limits.ip]
            .into_iter()
            .flatten()
        {
            limit.validate()?;
        }
        Ok(())
    }

    /// The product after `control` at `now`: paused, resumed, or ended then
    /// (a sale already over keeps its end).
    pub fn controlled(mut self, control: Control, now: OffsetDateTime) -> Self {
        match control {
            Control::Pause => self.paused = true,
            Control::Resume => self.paused = false,
            Control::End => self.ends_at = self.ends_at.min(now),
        }
        self.control_seq += 1;
        self
    }

    /// The reservation of an order of `quantity` placed at `placed_at_ms`.
    pub fn reservation(&self, quantity: Quantity, placed_at_ms: i64) -> Reservation {
        Reservation {
            pay_by_ms: placed_at_ms + i64::from(self.payment_window_secs) * 1000,
            amount: self.price.saturating_mul(u64::from(quantity.get())),
            currency: self.currency.clone(),
            rebuy_after_release: self.rebuy_after_release,
            ledger_shards: self.ledger_shards,
        }
    }

    /// What the storefront shows, given the shelf (None before the warm-up).
    /// Final states first, as the admission script answers.
    pub fn sale_state(&self, now_ms: i64, stock_left: Option<i64>) -> SaleState {
        let started = now_ms >= unix_ms(self.starts_at);
        if now_ms >= unix_ms(self.ends_at) {
            SaleState::Ended
        } else if started && stock_left.unwrap_or(0) <= 0 {
            SaleState::SoldOut
        } else if self.paused {
            SaleState::Paused
        } else if !started {
            SaleState::Upcoming
        } else {
            SaleState::OnSale
        }
    }
}

/// Keeps `price x quantity` far from u64 overflow.
pub const MAX_PRICE: u64 = 1_000_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SaleState {
    Upcoming,
    OnSale,
    /// An operator paused it; it may resume.
    Paused,
    SoldOut,
    Ended,
}

/// Per-product counters, from Redis.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProductStats {
    pub stock_total: i64,
    pub stock_left: i64,
    pub admitted: i64,
    pub placed: i64,
    pub rejected: i64,
    pub compensated: i64,
    pub pending: i64,
    /// Compensations that put units back (once per request id).
    pub restocked: i64,
    /// Units of the requests still pending: what the shelf owes the queue.
    pub pending_units: i64,
    /// Units of requests settled as placed.
    pub placed_units: i64,
    /// Units an operator's withdrawal took off the shelf, not yet confirmed
    /// in DynamoDB: not the shelf's to offer.
    pub withdrawing: i64,
    /// Units of confirmed withdrawals.
    pub withdrawn_units: i64,
    /// Units this Redis put back on the shelf for DynamoDB's releases and
    /// additions: against the ledger's own count of them
    /// ([`Ledger::returned`]) it says which of those the shelf holds.
    pub returned_units: i64,
    /// The sale's end, ms since the epoch.
    pub ends_at_ms: i64,
}

impl ProductStats {
    /// Units that left this Redis' own accounting for the ledger's (placed,
    /// withdrawn): the resync reads it before the ledger as its fence.
    pub fn fence(&self) -> i64 {
        self.placed_units + self.withdrawn_units
    }
}

/// The product's item in DynamoDB: the stock ledger and the lifecycle's
/// counters, each moved in the same transaction as the order it counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Ledger {
    /// Units not in any live order (including those `releasing`).
    pub remaining: i64,
    /// Units released in DynamoDB whose return to the Redis shelf is not
    /// confirmed yet: not the shelf's to offer until it is.
    pub releasing: i64,
    pub paid: i64,
    pub paid_units: i64,
    /// Paid orders the provider refunded, and those disputed (a dispute
    /// later refunded counts in both). Their units stay sold.
    pub refunded: i64,
    pub disputed: i64,
    pub cancelled: i64,
    pub expired: i64,
    /// Units given back by cancelled and expired orders.
    pub released: i64,
    /// Payments recorded for refund: late, for an order no longer payable,
    /// a second payment, or the wrong amount.
    pub refund_due: i64,
    /// Units operators added to and withdrew from the sale.
    pub added: i64,
    pub withdrawn: i64,
}

impl Ledger {
    /// What the shelf may offer once every release and addition recorded
    /// here has reached it (reports; the resync uses [`Self::shelf_for`]).
    pub fn shelf_units(&self) -> i64 {
        self.remaining - self.releasing
    }

    /// Units the ledger got back from releases and added by operators: each
    /// goes on the Redis shelf once, after it is recorded here.
    pub fn returned(&self) -> i64 {
        self.released + self.added
    }

    /// Confirmed returns a shelf's count (`returned_units`) lacks for sure:
    /// forgotten in a failover, or added while the sale was cold. The
    /// resync adopts them into the count, so they cannot hide a later
    /// release in flight.
    pub fn adoptable(&self, returned_units: i64) -> i64 {
        (self.returned() - returned_units - self.releasing).max(0)
    }

    /// What a shelf that has put back `returned_units` ([`ProductStats`])
    /// may offer of this ledger read: the exact fence of releases and
    /// additions. Those recorded here but not on that shelf yet are not its
    /// to offer (at most `releasing` of them: a confirmed one the shelf
    /// lacks was forgotten in a failover and is offered again); those the
    /// shelf put back after this read are.
    pub fn shelf_for(&self, returned_units: i64) -> i64 {
        let unapplied = (self.returned() - returned_units).clamp(0, self.releasing.max(0));
        let since_read = (returned_units - self.returned()).max(0);
        self.remaining - unapplied + since_read
    }
}

/// When the outbox sweeper re-sends a pending request: never sent (the
/// function died before its send) and older than `unsent_after_ms`, or last
/// sent longer ago than SQS may still be delivering it (`resend_after_ms`,
/// beyond visibility timeout x maxReceiveCount). Anything sooner would add
/// copies of a message still in flight.
pub fn republish_due(
    admitted_at_ms: i64,
    sent_at_ms: Option<i64>,
    now_ms: i64,
    unsent_after_ms: i64,
    resend_after_ms: i64,
) -> bool {
    match sent_at_ms {
        None => now_ms - admitted_at_ms >= unsent_after_ms,
        Some(sent) => now_ms - sent >= resend_after_ms,
    }
}

pub fn unix_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// `ms` as JavaScript's `Date.toISOString` writes it (UTC, milliseconds):
/// the edge function writes the same bytes for the same instant.
pub fn iso_ms(ms: i64) -> String {
    let t = from_unix_ms(ms);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

pub fn from_unix_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_storefront_state_says_the_final_answer_first() {
        let mut p = crate::fakes::product("p1");
        let (start, end) = (unix_ms(p.starts_at), unix_ms(p.ends_at));
        let state = |p: &Product, now: i64, left: i64| p.sale_state(now, Some(left));
        assert_eq!(state(&p, start - 1, 5), SaleState::Upcoming);
        assert_eq!(state(&p, start, 5), SaleState::OnSale);
        assert_eq!(state(&p, start, 0), SaleState::SoldOut);
        p.paused = true;
        assert_eq!(state(&p, start - 1, 5), SaleState::Paused);
        assert_eq!(state(&p, start, 5), SaleState::Paused);
        assert_eq!(state(&p, start, 0), SaleState::SoldOut);
        assert_eq!(state(&p, end, 5), SaleState::Ended);
    }

    #[test]
    fn ids_reject_key_breaking_characters() {
        for bad in [
            "",
            "a{b",
            "a}b",
            "a:b",
            "a#b",
            "a.b",
            "a b",
            "é",
            &"x".repeat(65),
        ] {
            assert!(ProductId::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(ProductId::parse("p42_A-b").is_ok());
        assert!(UserId::parse("u".repeat(128)).is_ok());
        assert!(UserId::parse("u".repeat(129)).is_err());
    }

    #[test]
    fn idempotency_keys_follow_the_documented_charset() {
        assert!(IdempotencyKey::parse("abc-1_2.3:4").is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(128)).is_ok());
        for bad in ["", "a b", "a{b}", "a/b", &"k".repeat(129)] {
            assert!(IdempotencyKey::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn request_ids_carry_their_product() {
        let p = ProductId::parse("p42").unwrap();
        let id = RequestId::new(&p);
        assert_eq!(id.product(), p);
        let again = RequestId::parse(id.as_str()).unwrap();
        assert_eq!(again, id);
        for bad in [
            "p42",
            "p42.",
            "p42.not-a-uuid",
            ".0190a5b2-0000-7000-8000-000000000000",
            // Issue 31, item 4: one canonical form (what the buy endpoint
            // returns): the other spellings of the same UUID are refused,
            // never stored raw beside it.
            "p42.{0190a5b2-0000-7000-8000-000000000000}",
            "p42.urn:uuid:0190a5b2-0000-7000-8000-000000000000",
            "p42.0190a5b2000070008000000000000000",
            "p42.0190A5B2-0000-7000-8000-000000000000",
        ] {
            assert!(RequestId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn keyed_request_ids_are_stable_and_scoped() {
        let p = ProductId::parse("p42").unwrap();
        let u = UserId::parse("u1").unwrap();
        let k = IdempotencyKey::parse("k-1").unwrap();
        let id = RequestId::derived(&p, &u, &k);
        assert_eq!(id, RequestId::derived(&p, &u, &k));
        assert_eq!(RequestId::parse(id.as_str()).unwrap(), id);
        assert_eq!(id.product(), p);
        let other_user = UserId::parse("u2").unwrap();
        let other_key = IdempotencyKey::parse("k-2").unwrap();
        let other_product = ProductId::parse("p43").unwrap();
        assert_ne!(RequestId::derived(&p, &other_user, &k), id);
        assert_ne!(RequestId::derived(&p, &u, &other_key), id);
        assert_ne!(
            RequestId::derived(&other_product, &u, &k).as_str()[4..],
            id.as_str()[4..]
        );
        // Pinned: a change would let replays across a deploy admit twice.
        assert_eq!(
            id.as_str(),
            format!(
                "p42.{}",
                uuid::Uuid::new_v5(&KEYED_REQUESTS, b"p42\0u1\0k-1")
            )
        );
    }

    #[test]
    fn republishing_waits_for_what_sqs_may_still_deliver() {
        let (unsent, resend) = (60_000, 1_200_000);
        assert!(!republish_due(0, None, 59_999, unsent, resend));
        assert!(republish_due(0, None, 60_000, unsent, resend));
        assert!(!republish_due(0, Some(1_000), 1_000_000, unsent, resend));
        assert!(republish_due(0, Some(1_000), 1_201_000, unsent, resend));
    }

    /// The release fence (resync.lua holds the same arithmetic): 2 units
    /// released of a ledger now holding 10.
    #[test]
    fn a_shelf_gets_the_released_units_it_put_back_and_no_others() {
        let recorded = Ledger {
            remaining: 10,
            releasing: 2,
            released: 2,
            ..Ledger::default()
        };
        // Not on the shelf yet: not its to offer.
        assert_eq!(recorded.shelf_for(0), 8);
        // On the shelf: its own.
        assert_eq!(recorded.shelf_for(2), 10);
        // Put back after a read from before the release.
        let before = Ledger {
            remaining: 8,
            ..Ledger::default()
        };
        assert_eq!(before.shelf_for(2), 10);
        // Confirmed, and forgotten by the shelf in a failover: offered again.
        let confirmed = Ledger {
            releasing: 0,
            ..recorded
        };
        assert_eq!(confirmed.shelf_for(0), 10);
    }

    #[test]
    fn quantities_are_bounded() {
        assert!(Quantity::new(0).is_err());
        assert!(Quantity::new(1).is_ok());
        assert!(Quantity::new(MAX_QUANTITY).is_ok());
        assert!(Quantity::new(MAX_QUANTITY + 1).is_err());
    }

    #[test]
    fn order_messages_round_trip_and_refuse_garbage() {
        let p = ProductId::parse("p1").unwrap();
        let msg = OrderMessage {
            v: 1,
            request_id: RequestId::new(&p),
            product_id: p,
            user_id: UserId::parse("u1").unwrap(),
            quantity: Quantity::new(2).unwrap(),
            admitted_at: 1_700_000_000_000,
            sale_ends_at: 1_700_000_360_000,
        };
        let json = serde_json::to_string(&msg).unwrap();
        assert_eq!(OrderMessage::from_json(&json).unwrap(), msg);
        // Messages from before `sale_ends_at` still parse.
        let old = json.replace(",\"sale_ends_at\":1700000360000", "");
        assert_ne!(old, json);
        assert_eq!(OrderMessage::from_json(&old).unwrap().sale_ends_at, 0);
        assert!(OrderMessage::from_json("garbage").is_err());
        let v2 = json.replace("\"v\":1", "\"v\":2");
        assert!(OrderMessage::from_json(&v2).is_err());
        let other = json.replace("\"product_id\":\"p1\"", "\"product_id\":\"p2\"");
        assert!(OrderMessage::from_json(&other).is_err());
    }

    #[test]
    fn refusals_map_to_the_documented_answers() {
        assert_eq!(Refusal::SoldOut.http_status(), 410);
        assert_eq!(Refusal::UnknownProduct.http_status(), 404);
        assert_eq!(Refusal::SaleEnded.http_status(), 403);
        assert_eq!(Refusal::AlreadyPurchased.http_status(), 409);
        assert_eq!(Refusal::from_code("sold_out"), Some(Refusal::SoldOut));
        assert_eq!(Refusal::KeyReused.http_status(), 422);
        assert_eq!(
            Refusal::from_code("idempotency_key_reused"),
            Some(Refusal::KeyReused)
        );
        assert_eq!(Refusal::from_code("nope"), None);
    }
}
