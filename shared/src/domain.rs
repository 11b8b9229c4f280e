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

impl IdempotencyKey {
    pub fn parse(value: &str) -> Result<Self, ValidationError> {
        let ok = !value.is_empty()
            && value.len() <= 128
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
        if ok {
            Ok(Self(value.to_owned()))
        } else {
            Err(ValidationError::BadId {
                field: "Idempotency-Key",
                rule: "1-128 characters of A-Z a-z 0-9 _ - . :".into(),
            })
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

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
    pub fn new(product: &ProductId) -> Self {
        let raw = format!("{}.{}", product, uuid::Uuid::now_v7());
        Self {
            product_len: product.as_str().len(),
            raw,
        }
    }

    pub fn parse(value: &str) -> Result<Self, ValidationError> {
        let bad = || ValidationError::BadId {
            field: "request_id",
            rule: "<product_id>.<uuid>, as returned by the buy endpoint".into(),
        };
        let (product, id) = value.split_once('.').ok_or_else(bad)?;
        ProductId::parse(product).map_err(|_| bad())?;
        uuid::Uuid::try_parse(id).map_err(|_| bad())?;
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

/// Where a request stands. Forward-only: `Pending` becomes exactly one of the
/// terminal states, and a terminal state never changes again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    Pending,
    Placed,
    Rejected,
    Compensated,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Placed => "placed",
            Self::Rejected => "rejected",
            Self::Compensated => "compensated",
        }
    }
    pub fn parse(value: &str) -> Option<Self> {
        match value.to_ascii_lowercase().as_str() {
            "pending" => Some(Self::Pending),
            "placed" => Some(Self::Placed),
            "rejected" => Some(Self::Rejected),
            "compensated" => Some(Self::Compensated),
            _ => None,
        }
    }
    pub fn is_terminal(self) -> bool {
        self != Self::Pending
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
    SoldOut,
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
        ]
        .into_iter()
        .find(|r| r.code() == code)
    }
    pub fn http_status(self) -> u16 {
        match self {
            Self::UnknownProduct => 404,
            Self::SaleNotStarted | Self::SaleEnded => 403,
            Self::LimitExceeded | Self::AlreadyPurchased => 409,
            Self::SoldOut => 410,
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
}

/// The stock gate's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// A unit was taken; the request is pending in the outbox index.
    Admitted {
        admitted_at_ms: i64,
    },
    /// The same buyer repeated an Idempotency-Key: the earlier request.
    Replay {
        request_id: RequestId,
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
}

impl OrderMessage {
    pub const VERSION: u32 = 1;

    pub fn new(p: &Purchase, admitted_at_ms: i64) -> Self {
        Self {
            v: Self::VERSION,
            request_id: p.request_id.clone(),
            product_id: p.product_id.clone(),
            user_id: p.user_id.clone(),
            quantity: p.quantity,
            admitted_at: admitted_at_ms,
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
}

/// A product as an operator defines it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub product_id: ProductId,
    pub name: String,
    pub stock: u32,
    pub per_buyer_limit: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub starts_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub ends_at: OffsetDateTime,
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
        Ok(())
    }
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
}

pub fn unix_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

pub fn from_unix_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        ] {
            assert!(RequestId::parse(bad).is_err(), "{bad:?} accepted");
        }
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
        };
        let json = serde_json::to_string(&msg).unwrap();
        assert_eq!(OrderMessage::from_json(&json).unwrap(), msg);
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
        assert_eq!(Refusal::from_code("nope"), None);
    }
}
