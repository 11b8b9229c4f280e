//! A flash sale against a running API: create and warm a product, then a
//! rush of buyers, each buying twice (half of them repeating their
//! Idempotency-Key), with bounded concurrency.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt;
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use shared::domain::ProductId;
use shared::ports::StockGate;
use shared::redis::RedisGate;

use crate::client::{Answer, Api};

#[derive(Debug, Clone)]
pub struct SaleSpec {
    pub product: String,
    pub stock: u32,
    pub buyers: usize,
    pub concurrency: usize,
    /// Chaos: between the two waves, give Redis back this many units, as a
    /// failover to a lagging replica would (acknowledged decrements lost).
    pub lose_decrements: u32,
}

#[derive(Debug, Default)]
pub struct LoadReport {
    pub requests: usize,
    pub by_status: BTreeMap<u16, usize>,
    /// (buyer, request id) of every 202.
    pub admitted: Vec<(String, String)>,
    /// Repeated keys answered with the first request's id.
    pub replays_matched: usize,
    /// Repeated keys answered otherwise after a 202 (must be 0).
    pub replays_mismatched: usize,
    pub elapsed: Duration,
}

fn rfc3339(t: OffsetDateTime) -> Result<String> {
    Ok(t.format(&Rfc3339)?)
}

/// Creates the product (on sale from now for an hour) and warms it.
pub async fn create_and_warm(api: &Api, product: &str, stock: u32, limit: u32) -> Result<()> {
    let now = OffsetDateTime::now_utc();
    let body = json!({
        "product_id": product,
        "name": format!("Demo item {product}"),
        "stock": stock,
        "per_buyer_limit": limit,
        "starts_at": rfc3339(now - Duration::from_secs(1))?,
        "ends_at": rfc3339(now + Duration::from_secs(3600))?,
    });
    let created =
        retry_unavailable(|| api.admin("POST", "/api/admin/products", Some(&body))).await?;
    ensure!(
        created.status == 201,
        "creating {product} answered {} {}",
        created.status,
        created.body
    );
    let warm = format!("/api/admin/products/{product}/warm");
    let warmed = retry_unavailable(|| api.admin("POST", &warm, None)).await?;
    ensure!(
        warmed.status == 200,
        "warming {product} answered {} {}",
        warmed.status,
        warmed.body
    );
    Ok(())
}

/// Retries a call answered 503 (a transient failure), as a client should.
async fn retry_unavailable<F, Fut>(call: F) -> Result<Answer>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Answer>>,
{
    let mut answer = call().await?;
    for attempt in 1..5 {
        if answer.status != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
        answer = call().await?;
    }
    Ok(answer)
}

fn key(product: &str, buyer: usize, attempt: usize) -> String {
    format!("{product}-b{buyer}-k{attempt}")
}

async fn wave(
    api: &Api,
    spec: &SaleSpec,
    attempt: usize,
) -> Result<Vec<(usize, u16, Option<String>)>> {
    let results: Vec<Result<(usize, u16, Option<String>)>> = futures::stream::iter(0..spec.buyers)
        .map(|buyer| async move {
            // Even buyers repeat their first key; odd buyers use a new one.
            let k = key(
                &spec.product,
                buyer,
                if buyer % 2 == 0 { 1 } else { attempt },
            );
            let body = json!({
                "product_id": spec.product,
                "quantity": 1,
                "user_id": format!("buyer-{buyer}"),
            });
            let a = api.buy(&body, Some(&k)).await?;
            let id = a.body["request_id"].as_str().map(str::to_owned);
            Ok((buyer, a.status, id))
        })
        .buffer_unordered(spec.concurrency.max(1))
        .collect()
        .await;
    results.into_iter().collect()
}

/// Simulates Redis losing `n` acknowledged stock decrements.
pub async fn lose_decrements(gate: &RedisGate, product: &str, n: u32) -> Result<()> {
    let key = gate.keys(&ProductId::parse(product)?).stock();
    let _: i64 = gate.command(redis::cmd("INCRBY").arg(key).arg(n)).await?;
    Ok(())
}

/// Sends `2 × buyers` requests in two waves; with `lose_decrements`, Redis
/// forgets that many decrements between them (needs `gate`).
pub async fn run_sale(api: &Api, spec: &SaleSpec, gate: Option<&RedisGate>) -> Result<LoadReport> {
    let started = Instant::now();
    let mut report = LoadReport::default();
    let first = wave(api, spec, 1).await?;
    let mut first_ids = vec![None; spec.buyers];
    for (buyer, status, id) in first {
        *report.by_status.entry(status).or_default() += 1;
        if status == 202 {
            let id = id.context("202 without a request_id")?;
            report.admitted.push((format!("buyer-{buyer}"), id.clone()));
            first_ids[buyer] = Some(id);
        }
    }
    if spec.lose_decrements > 0 {
        let gate = gate.context("losing decrements needs a Redis connection")?;
        lose_decrements(gate, &spec.product, spec.lose_decrements).await?;
    }
    for (buyer, status, id) in wave(api, spec, 2).await? {
        *report.by_status.entry(status).or_default() += 1;
        if status == 202 {
            report
                .admitted
                .push((format!("buyer-{buyer}"), id.clone().unwrap_or_default()));
        }
        if buyer % 2 == 0 && first_ids[buyer].is_some() {
            if status == 200 && id == first_ids[buyer] {
                report.replays_matched += 1;
            } else {
                report.replays_mismatched += 1;
            }
        }
    }
    report.requests = 2 * spec.buyers;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Waits until no admitted request of the product is pending in Redis and
/// the given queues are empty (no redelivery, retry or compensation left).
pub async fn wait_settled(
    gate: &RedisGate,
    sqs: Option<&aws_sdk_sqs::Client>,
    queues: &[&str],
    product: &ProductId,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let pending = gate.stats(product).await?.map(|s| s.pending).unwrap_or(0);
        let mut queued = 0;
        if let Some(sqs) = sqs {
            for q in queues {
                queued += crate::queues::depth(sqs, q).await?;
            }
        }
        if pending == 0 && queued == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "after {timeout:?}, {pending} requests of {product} still pending and {queued} messages queued: are the consumers running?"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until no admitted request of the product is pending in Redis.
pub async fn wait_drained(gate: &RedisGate, product: &ProductId, timeout: Duration) -> Result<()> {
    wait_settled(gate, None, &[], product, timeout).await
}

/// Faults the runner has injected so far (its `/health`).
pub async fn faults_injected(api: &Api) -> Result<u64> {
    let health = api.call("GET", "/health", &[], None).await?;
    Ok(health.body["faults_injected"].as_u64().unwrap_or(0))
}
