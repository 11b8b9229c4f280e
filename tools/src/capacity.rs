//! What DynamoDB Local cannot show, enforced in front of it: each item's
//! write capacity (a partition takes ~1,000 WCU/s; a transactional write of
//! a small item costs 2 WCU, a plain one 1) and transaction conflicts (a
//! transaction touching an item another transaction holds is cancelled with
//! `TransactionConflict`). It wraps the SDK's HTTP client, so the real
//! adapter runs unchanged over it and sees the errors DynamoDB would send:
//! `TransactionCanceledException` with `ThrottlingError` or
//! `TransactionConflict` reasons, `ProvisionedThroughputExceededException`
//! for a plain write. Only for benches and chaos runs
//! (`FLASHSALE_DYNAMODB_CAPACITY`), never in a function.
//!
//! Every item is taken as its own partition (DynamoDB's adaptive capacity
//! isolates a hot item that way at best). A transaction holds its items
//! while it is in flight, as DynamoDB's do: one that commits is in flight
//! for at least `hold` (its reply waits that long), one the emulator
//! cancels on a condition until it answers. Once it has answered its items
//! are free, so an order never conflicts with its own earlier attempt.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aws_config::SdkConfig;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::body::SdkBody;
use serde_json::{Value, json};

/// The limits the decorator enforces.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Capacity {
    /// Write capacity units per second of each item (its partition).
    pub wcu_per_item: f64,
    /// How long a transaction is in flight at least, holding its items
    /// against other writes.
    pub hold: Duration,
}

impl Capacity {
    /// DynamoDB's per-partition limit; the hold is a typical transaction's
    /// latency in one region.
    pub const AWS: Self = Self {
        wcu_per_item: 1_000.0,
        hold: Duration::from_millis(10),
    };

    /// `wcu=<per item per second>,hold_ms=<ms>`, either part optional
    /// (defaults: [`Self::AWS`]).
    pub fn parse(spec: &str) -> Result<Self> {
        let mut c = Self::AWS;
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .with_context(|| format!("{part:?}: expected key=value"))?;
            match k {
                "wcu" => c.wcu_per_item = v.parse().context("wcu must be a number")?,
                "hold_ms" => {
                    c.hold = Duration::from_millis(v.parse().context("hold_ms must be whole ms")?)
                }
                _ => bail!("{k:?}: expected wcu or hold_ms"),
            }
        }
        if c.wcu_per_item < 2.0 {
            bail!("wcu must be at least 2 (one transactional write)");
        }
        Ok(c)
    }

    /// `FLASHSALE_DYNAMODB_CAPACITY`, when set.
    pub fn from_env() -> Result<Option<Self>> {
        match std::env::var("FLASHSALE_DYNAMODB_CAPACITY") {
            Ok(spec) if !spec.trim().is_empty() => Self::parse(&spec)
                .map(Some)
                .context("FLASHSALE_DYNAMODB_CAPACITY must be like wcu=1000,hold_ms=10"),
            _ => Ok(None),
        }
    }
}

/// The DynamoDB writes the decorator let through and those it refused.
#[derive(Debug, Default)]
pub struct Refusals {
    pub conflicts: AtomicU64,
    pub throttled: AtomicU64,
    pub passed: AtomicU64,
}

impl Refusals {
    /// Counts a refusal (a conflict, else a throttle) and answers `body`
    /// as DynamoDB would (400).
    fn refuse(&self, conflict: bool, body: Value) -> HttpConnectorFuture {
        let (counter, reason) = if conflict {
            (&self.conflicts, "conflict")
        } else {
            (&self.throttled, "throttled")
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("flashsale_capacity_refused_total", "reason" => reason).increment(1);
        HttpConnectorFuture::ready(Ok(error_response(body)))
    }

    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.passed.load(Ordering::Relaxed),
            self.conflicts.load(Ordering::Relaxed),
            self.throttled.load(Ordering::Relaxed),
        )
    }
}

struct ItemState {
    tokens: f64,
    refilled: Instant,
    /// A transaction in flight holds it.
    held: bool,
}

#[derive(Debug, Clone)]
struct Limited {
    inner: SharedHttpClient,
    state: Arc<Ledger>,
}

struct Ledger {
    capacity: Capacity,
    items: Mutex<HashMap<String, ItemState>>,
    refusals: Arc<Refusals>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// `sdk`'s HTTP client: the one it names, or the one the SDK would pick
/// itself when it names none.
pub fn http_client_of(sdk: &SdkConfig) -> SharedHttpClient {
    sdk.http_client().unwrap_or_else(|| {
        use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
        aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
            .build_https()
    })
}

/// `sdk` with its DynamoDB calls going through the decorator; the counters
/// of what it refused.
pub fn limited(sdk: &SdkConfig, capacity: Capacity) -> (SdkConfig, Arc<Refusals>) {
    let inner = http_client_of(sdk);
    let refusals = Arc::new(Refusals::default());
    let client = Limited {
        inner,
        state: Arc::new(Ledger {
            capacity,
            items: Mutex::new(HashMap::new()),
            refusals: refusals.clone(),
        }),
    };
    let sdk = sdk
        .to_builder()
        .http_client(SharedHttpClient::new(client))
        .build();
    (sdk, refusals)
}

impl HttpClient for Limited {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(LimitedConnector {
            inner: self.inner.http_connector(settings, components),
            state: self.state.clone(),
        })
    }
}

#[derive(Debug)]
struct LimitedConnector {
    inner: SharedHttpConnector,
    state: Arc<Ledger>,
}

/// A write's items (table + key) and whether it is a transaction.
fn writes(target: &str, body: &Value) -> Option<(bool, Vec<String>)> {
    let key = |table: &Value, key: &Value| format!("{}|{}", table.as_str().unwrap_or(""), key);
    match target {
        "DynamoDB_20120810.TransactWriteItems" => {
            let items = body["TransactItems"].as_array()?;
            let keys = items
                .iter()
                .filter_map(|op| {
                    let (_, op) = op.as_object()?.iter().next()?;
                    let k = if op["Key"].is_null() {
                        op["Item"]["pk"].clone()
                    } else {
                        op["Key"]["pk"].clone()
                    };
                    Some(key(&op["TableName"], &k))
                })
                .collect();
            Some((true, keys))
        }
        "DynamoDB_20120810.PutItem" => {
            Some((false, vec![key(&body["TableName"], &body["Item"]["pk"])]))
        }
        "DynamoDB_20120810.UpdateItem" | "DynamoDB_20120810.DeleteItem" => {
            Some((false, vec![key(&body["TableName"], &body["Key"]["pk"])]))
        }
        _ => None,
    }
}

/// The items of a transactional read (table + key).
fn reads(body: &Value) -> Option<Vec<String>> {
    body["TransactItems"]
        .as_array()?
        .iter()
        .map(|op| {
            let get = &op["Get"];
            Some(format!(
                "{}|{}",
                get["TableName"].as_str()?,
                get["Key"]["pk"]
            ))
        })
        .collect()
}

/// DynamoDB's answer to a cancelled transaction, one reason per item.
fn cancelled(reasons: &[Option<&'static str>]) -> Value {
    let codes: Vec<Value> = reasons
        .iter()
        .map(|r| json!({ "Code": r.unwrap_or("None") }))
        .collect();
    json!({
        "__type": "com.amazonaws.dynamodb.v20120810#TransactionCanceledException",
        "Message": "Transaction cancelled, please refer cancellation reasons for specific reasons",
        "CancellationReasons": codes,
    })
}

enum Verdict {
    Pass,
    /// Per item: None, or the reason it was refused.
    Cancelled(Vec<Option<&'static str>>),
    /// A plain write to an item a transaction holds.
    Conflict,
    Throttled,
}

impl Ledger {
    fn admit(&self, transaction: bool, keys: &[String]) -> Verdict {
        let now = Instant::now();
        let cost = if transaction { 2.0 } else { 1.0 };
        let c = self.capacity;
        let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        let mut reasons = vec![None; keys.len()];
        for (i, k) in keys.iter().enumerate() {
            let s = items.entry(k.clone()).or_insert(ItemState {
                tokens: c.wcu_per_item,
                refilled: now,
                held: false,
            });
            s.tokens = (s.tokens + now.duration_since(s.refilled).as_secs_f64() * c.wcu_per_item)
                .min(c.wcu_per_item);
            s.refilled = now;
            // A plain write to a held item is refused too (DynamoDB's
            // TransactionConflictException).
            if s.held {
                reasons[i] = Some("TransactionConflict");
            } else if s.tokens < cost {
                reasons[i] = Some("ThrottlingError");
            }
        }
        if reasons.iter().any(Option::is_some) {
            return match (transaction, reasons[0]) {
                (true, _) => Verdict::Cancelled(reasons),
                (false, Some("TransactionConflict")) => Verdict::Conflict,
                (false, _) => Verdict::Throttled,
            };
        }
        // Items idle for longer than a bucket takes to refill are as new:
        // forget them, so a long run does not keep one entry per order.
        if items.len() > 100_000 {
            items.retain(|_, s| s.held || now.duration_since(s.refilled) < Duration::from_secs(1));
        }
        for k in keys {
            if let Some(s) = items.get_mut(k) {
                s.tokens -= cost;
                s.held = transaction;
            }
        }
        Verdict::Pass
    }

    /// Per item of a transactional read, whether a transaction in flight
    /// holds it; None when none does.
    fn held(&self, keys: &[String]) -> Option<Vec<Option<&'static str>>> {
        let items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        let reasons: Vec<_> = keys
            .iter()
            .map(|k| {
                items
                    .get(k)
                    .is_some_and(|s| s.held)
                    .then_some("TransactionConflict")
            })
            .collect();
        reasons.iter().any(Option::is_some).then_some(reasons)
    }

    /// A transaction's reply came back (or its call was dropped): its items
    /// are free.
    fn release(&self, keys: &[String]) {
        let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        for k in keys {
            if let Some(s) = items.get_mut(k) {
                s.held = false;
            }
        }
    }
}

/// A transaction in flight: its items are released when this drops.
struct InFlight {
    ledger: Arc<Ledger>,
    keys: Vec<String>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.ledger.release(&self.keys);
    }
}

fn error_response(body: Value) -> HttpResponse {
    let status = StatusCode::try_from(400).unwrap_or_else(|_| unreachable!("400 is valid"));
    let mut resp = HttpResponse::new(status, SdkBody::from(body.to_string()));
    resp.headers_mut()
        .insert("content-type", "application/x-amz-json-1.0");
    resp
}

impl HttpConnector for LimitedConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let target = request
            .headers()
            .get("x-amz-target")
            .unwrap_or_default()
            .to_owned();
        // Only DynamoDB's writes are limited; everything else (reads, SQS)
        // passes untouched and uncounted.
        let parsed = target
            .starts_with("DynamoDB_20120810.")
            .then(|| request.body().bytes())
            .flatten()
            .and_then(|b| serde_json::from_slice::<Value>(b).ok())
            .and_then(|body| writes(&target, &body));
        let Some((transaction, keys)) = parsed else {
            // A transactional read meeting a write in flight is cancelled
            // too (it takes no write capacity).
            if target == "DynamoDB_20120810.TransactGetItems"
                && let Some(reasons) = request
                    .body()
                    .bytes()
                    .and_then(|b| serde_json::from_slice::<Value>(b).ok())
                    .and_then(|body| reads(&body))
                    .and_then(|keys| self.state.held(&keys))
            {
                return self.state.refusals.refuse(true, cancelled(&reasons));
            }
            return self.inner.call(request);
        };
        let refusals = &self.state.refusals;
        match self.state.admit(transaction, &keys) {
            Verdict::Pass if transaction => {
                refusals.passed.fetch_add(1, Ordering::Relaxed);
                let in_flight = InFlight {
                    ledger: self.state.clone(),
                    keys,
                };
                let done_at = tokio::time::Instant::now() + self.state.capacity.hold;
                let reply = self.inner.call(request);
                HttpConnectorFuture::new(async move {
                    let reply = reply.await;
                    // One the emulator cancelled (a condition failed) is
                    // over when it answers; one that commits takes `hold`.
                    if reply.as_ref().is_ok_and(|r| r.status().is_success()) {
                        tokio::time::sleep_until(done_at).await;
                    }
                    drop(in_flight);
                    reply
                })
            }
            Verdict::Pass => {
                refusals.passed.fetch_add(1, Ordering::Relaxed);
                self.inner.call(request)
            }
            Verdict::Conflict => refusals.refuse(
                true,
                json!({
                    "__type": "com.amazonaws.dynamodb.v20120810#TransactionConflictException",
                    "message": "Transaction is ongoing for the item",
                }),
            ),
            Verdict::Cancelled(reasons) => refusals.refuse(
                reasons.contains(&Some("TransactionConflict")),
                cancelled(&reasons),
            ),
            Verdict::Throttled => refusals.refuse(
                false,
                json!({
                    "__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
                    "message": "The level of configured provisioned throughput for the table was exceeded",
                }),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(c: Capacity) -> Ledger {
        Ledger {
            capacity: c,
            items: Mutex::new(HashMap::new()),
            refusals: Arc::default(),
        }
    }

    #[test]
    fn specs_parse_and_bad_ones_say_what_is_expected() {
        assert_eq!(Capacity::parse("").unwrap(), Capacity::AWS);
        let c = Capacity::parse("wcu=20, hold_ms=5").unwrap();
        assert_eq!((c.wcu_per_item, c.hold), (20.0, Duration::from_millis(5)));
        assert!(Capacity::parse("wcu=1").is_err());
        assert!(Capacity::parse("rcu=3").is_err());
    }

    #[test]
    fn a_held_item_conflicts_and_an_item_out_of_capacity_is_throttled() {
        let l = ledger(Capacity {
            wcu_per_item: 4.0,
            hold: Duration::from_secs(60),
        });
        let (a, b) = ("t|a".to_owned(), "t|b".to_owned());
        assert!(matches!(
            l.admit(true, std::slice::from_ref(&a)),
            Verdict::Pass
        ));
        match l.admit(true, &[b.clone(), a.clone()]) {
            Verdict::Cancelled(r) => assert_eq!(r, vec![None, Some("TransactionConflict")]),
            _ => panic!("a held item must conflict"),
        }
        // A plain write to the held item conflicts too.
        assert!(matches!(
            l.admit(false, std::slice::from_ref(&a)),
            Verdict::Conflict
        ));
        // Plain writes spend capacity, 1 WCU each: b (not charged for the
        // cancelled transaction) takes four, then it is out.
        for _ in 0..4 {
            assert!(matches!(
                l.admit(false, std::slice::from_ref(&b)),
                Verdict::Pass
            ));
        }
        assert!(matches!(l.admit(false, &[b]), Verdict::Throttled));
    }

    /// Issue 18: items stayed held for `hold` after DynamoDB Local had
    /// answered, so an order's retry conflicted with its own earlier,
    /// cancelled attempt. Held while in flight only.
    #[test]
    fn a_transaction_frees_its_items_when_it_answers() {
        let l = Arc::new(ledger(Capacity {
            wcu_per_item: 100.0,
            hold: Duration::from_secs(60),
        }));
        let a = vec!["t|a".to_owned()];
        assert!(matches!(l.admit(true, &a), Verdict::Pass));
        let in_flight = InFlight {
            ledger: l.clone(),
            keys: a.clone(),
        };
        assert!(matches!(l.admit(true, &a), Verdict::Cancelled(_)));
        // A transactional read of it is cancelled too, and only while held.
        let body = json!({"TransactItems": [{"Get": {"TableName": "t", "Key": {"pk": "a"}}}]});
        assert_eq!(reads(&body).unwrap(), [r#"t|"a""#]);
        assert_eq!(l.held(&a), Some(vec![Some("TransactionConflict")]));
        drop(in_flight);
        assert_eq!(l.held(&a), None);
        assert!(matches!(l.admit(true, &a), Verdict::Pass));
    }

    #[test]
    fn the_items_of_a_transaction_are_found_in_every_operation() {
        let body = json!({"TransactItems": [
            {"Put": {"TableName": "t", "Item": {"pk": {"S": "ORDER#1"}, "x": {"N": "1"}}}},
            {"Update": {"TableName": "t", "Key": {"pk": {"S": "PRODUCT#p"}}}},
            {"Delete": {"TableName": "t", "Key": {"pk": {"S": "PURCHASE#p#u"}}}},
        ]});
        let (tx, keys) = writes("DynamoDB_20120810.TransactWriteItems", &body).unwrap();
        assert!(tx);
        assert_eq!(
            keys,
            [
                r#"t|{"S":"ORDER#1"}"#,
                r#"t|{"S":"PRODUCT#p"}"#,
                r#"t|{"S":"PURCHASE#p#u"}"#
            ]
        );
        assert!(writes("DynamoDB_20120810.GetItem", &body).is_none());
    }
}
