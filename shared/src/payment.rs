//! The payment provider's webhook, as values and pure decisions: the
//! signature check and whether an order can take a payment. No I/O here.

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::domain::{Currency, OrderStatus, RequestId, RequestView};
use crate::error::ValidationError;

/// A signature's timestamp may be this far from the server's clock.
pub const SIGNATURE_TOLERANCE_SECS: i64 = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    /// Missing, malformed, or not made with our secret.
    Bad,
    /// Made with our secret, but too long ago (or ahead): a replay.
    Stale,
}

impl SignatureError {
    pub fn code(self) -> &'static str {
        match self {
            Self::Bad => "bad_signature",
            Self::Stale => "stale_signature",
        }
    }
}

fn mac(secret: &[u8], t: &str, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length; the error branch cannot happen.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `Flashsale-Signature` header value for `body` at unix time `t`.
pub fn sign(secret: &[u8], t: i64, body: &[u8]) -> String {
    let tag = mac(secret, &t.to_string(), body).finalize().into_bytes();
    format!("t={t},v1={}", hex::encode(tag))
}

/// Checks `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`. Several
/// `v1` entries are allowed (the provider signs with old and new secrets
/// while one is rotated). The tag is compared in constant time; the clock
/// only after the tag, so an attacker learns nothing from the answer.
pub fn verify(
    secret: &[u8],
    header: Option<&str>,
    body: &[u8],
    now_secs: i64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Bad)?;
    let mut t = None;
    let mut tags = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v),
            Some(("v1", v)) => tags.push(v),
            _ => {}
        }
    }
    let t = t.ok_or(SignatureError::Bad)?;
    let signed_at: i64 = t.parse().map_err(|_| SignatureError::Bad)?;
    let genuine = tags.iter().any(|tag| {
        hex::decode(tag).is_ok_and(|tag| mac(secret, t, body).verify_slice(&tag).is_ok())
    });
    if !genuine {
        return Err(SignatureError::Bad);
    }
    if (now_secs - signed_at).abs() > SIGNATURE_TOLERANCE_SECS {
        return Err(SignatureError::Stale);
    }
    Ok(())
}

/// The provider's notification body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentEvent {
    pub event_id: EventId,
    pub request_id: RequestId,
    pub amount: u64,
    pub currency: Currency,
    pub status: String,
    /// A refund's or dispute's: the event id of the payment it reverses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_event_id: Option<EventId>,
}

/// What a provider's event says happened to the money.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// `succeeded`: a payment captured.
    Captured,
    /// `refunded`: a payment given back (of any amount: the event's amount
    /// is kept in its record).
    Refunded,
    /// `disputed`: the buyer's bank opened a chargeback.
    Disputed,
    /// Anything else (`pending`, `failed`, ...): acknowledged, ignored.
    Other,
}

impl PaymentEvent {
    pub fn kind(&self) -> EventKind {
        match self.status.as_str() {
            "succeeded" => EventKind::Captured,
            "refunded" => EventKind::Refunded,
            "disputed" => EventKind::Disputed,
            _ => EventKind::Other,
        }
    }
}

/// The provider's event id: the key a repeated delivery is recognised by.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EventId(String);

impl EventId {
    pub fn parse(value: &str) -> Result<Self, ValidationError> {
        crate::domain::validate_token("event_id", value, 255)?;
        Ok(Self(value.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl TryFrom<String> for EventId {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}
impl From<EventId> for String {
    fn from(value: EventId) -> Self {
        value.0
    }
}

/// How a payment event ended; stored with it, so a repeat answers the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentOutcome {
    Paid,
    AmountMismatch,
    OrderNotPayable,
    /// A refund moved the paid (or disputed) order to `refunded`.
    Refunded,
    /// A dispute moved the paid order to `disputed`.
    Disputed,
    /// A refund or dispute of an order that was not paid (or was refunded
    /// already): recorded, the order left as it was.
    NotPaid,
    /// The refund of a payment recorded `refund_due` (late, a duplicate,
    /// the wrong amount): the money owed back went back; that payment
    /// leaves the list of refunds due, the order is left as it was.
    RefundSettled,
}

impl PaymentOutcome {
    const ALL: [Self; 7] = [
        Self::Paid,
        Self::AmountMismatch,
        Self::OrderNotPayable,
        Self::Refunded,
        Self::Disputed,
        Self::NotPaid,
        Self::RefundSettled,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Paid => "paid",
            Self::AmountMismatch => "amount_mismatch",
            Self::OrderNotPayable => "order_not_payable",
            Self::Refunded => "refunded",
            Self::Disputed => "disputed",
            Self::NotPaid => "not_paid",
            Self::RefundSettled => "refund_settled",
        }
    }
    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == value)
    }
    /// The money was taken but bought nothing: it must be refunded.
    pub fn refund_due(self) -> bool {
        matches!(self, Self::AmountMismatch | Self::OrderNotPayable)
    }
    /// The status a refund or dispute moves its order to, if any.
    pub fn moves_to(self) -> Option<OrderStatus> {
        match self {
            Self::Refunded => Some(OrderStatus::Refunded),
            Self::Disputed => Some(OrderStatus::Disputed),
            _ => None,
        }
    }
}

/// A payment event as recorded (`PAYMENT#<event_id>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRecord {
    pub event: PaymentEvent,
    pub outcome: PaymentOutcome,
    /// The order's status when the event was decided.
    pub order_status: OrderStatus,
}

/// Whether `order` can take `event` at `now_ms` (the server's clock). The
/// conditional write re-checks status and deadline, so a payment racing the
/// expirer or a cancel ends as exactly one of them.
pub fn decide(order: &RequestView, event: &PaymentEvent, now_ms: i64) -> PaymentOutcome {
    let Some(terms) = &order.reservation else {
        return PaymentOutcome::OrderNotPayable;
    };
    if order.status != OrderStatus::Placed || now_ms > terms.pay_by_ms {
        PaymentOutcome::OrderNotPayable
    } else if terms.amount != event.amount || terms.currency != event.currency {
        PaymentOutcome::AmountMismatch
    } else {
        PaymentOutcome::Paid
    }
}

/// What a refund or dispute (`kind`) does to `order`: a refund ends a paid
/// or disputed order `refunded`, a dispute a paid one `disputed`; any
/// other order is left as it is (the event is still recorded). The
/// conditional write re-checks the status.
pub fn decide_reversal(order: &RequestView, kind: EventKind) -> PaymentOutcome {
    match (kind, order.status) {
        (EventKind::Refunded, OrderStatus::Paid | OrderStatus::Disputed) => {
            PaymentOutcome::Refunded
        }
        (EventKind::Disputed, OrderStatus::Paid) => PaymentOutcome::Disputed,
        _ => PaymentOutcome::NotPaid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec_test";
    const BODY: &[u8] = br#"{"event_id":"e1"}"#;

    #[test]
    fn signatures_check_secret_body_and_clock() {
        let header = sign(SECRET, 1_000, BODY);
        assert_eq!(verify(SECRET, Some(&header), BODY, 1_000), Ok(()));
        assert_eq!(verify(SECRET, Some(&header), BODY, 1_300), Ok(()));
        assert_eq!(
            verify(SECRET, Some(&header), BODY, 1_301),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify(SECRET, Some(&header), BODY, 699),
            Err(SignatureError::Stale)
        );
        let bad = Err(SignatureError::Bad);
        assert_eq!(verify(b"other", Some(&header), BODY, 1_000), bad);
        assert_eq!(verify(SECRET, Some(&header), b"{}", 1_000), bad);
        assert_eq!(verify(SECRET, None, BODY, 1_000), bad);
        assert_eq!(verify(SECRET, Some("t=1000"), BODY, 1_000), bad);
        assert_eq!(verify(SECRET, Some("v1=00"), BODY, 1_000), bad);
        assert_eq!(verify(SECRET, Some("t=1000,v1=zz"), BODY, 1_000), bad);
        // A stale timestamp with a forged tag is a bad signature, not stale.
        assert_eq!(verify(SECRET, Some("t=1,v1=00"), BODY, 1_000), bad);
        // The timestamp is signed: moving it breaks the tag.
        let moved = header.replace("t=1000", "t=1001");
        assert_eq!(verify(SECRET, Some(&moved), BODY, 1_000), bad);
        // Rotation: any v1 may match.
        let old = sign(b"old", 1_000, BODY);
        let both = format!("{header},{}", old.split_once(',').unwrap().1);
        assert_eq!(verify(b"old", Some(&both), BODY, 1_000), Ok(()));
    }
}
