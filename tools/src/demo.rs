//! The demo sale around the load generator: create and warm a product,
//! run the rush, wait until everything settled, and hooks for chaos.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures::future::BoxFuture;
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use shared::domain::ProductId;
use shared::ports::prelude::*;
use shared::redis::RedisGate;

use crate::client::{Answer, Api};
use crate::cluster::{Drill, RedisCluster};
use crate::loadtest::{self, LoadSpec, Report, Run};
use shared::redis::keys::Keys;

fn rfc3339(t: OffsetDateTime) -> Result<String> {
    Ok(t.format(&Rfc3339)?)
}

/// Creates the product (on sale from now for an hour) and warms it.
/// Price of one demo unit, in cents.
pub const DEMO_PRICE: u64 = 4_999;

pub async fn create_and_warm(
    api: &Api,
    product: &str,
    stock: u32,
    limit: u32,
    payment_window_secs: u32,
    ledger_shards: u16,
) -> Result<()> {
    create_and_warm_bucketed(
        api,
        product,
        stock,
        limit,
        payment_window_secs,
        ledger_shards,
        1,
    )
    .await
}

/// [`create_and_warm`] of a product whose shelf is split in
/// `stock_buckets` Redis stock buckets.
pub async fn create_and_warm_bucketed(
    api: &Api,
    product: &str,
    stock: u32,
    limit: u32,
    payment_window_secs: u32,
    ledger_shards: u16,
    stock_buckets: u16,
) -> Result<()> {
    let now = OffsetDateTime::now_utc();
    let body = json!({
        "product_id": product,
        "name": format!("Demo item {product}"),
        "stock": stock,
        "per_buyer_limit": limit,
        "price": DEMO_PRICE,
        "currency": "EUR",
        "payment_window_secs": payment_window_secs,
        "ledger_shards": ledger_shards,
        "stock_buckets": stock_buckets,
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

/// Simulates Redis losing `n` acknowledged stock decrements.
pub async fn lose_decrements(gate: &RedisGate, product: &str, n: u32) -> Result<()> {
    let key = gate.keys(&ProductId::parse(product)?).stock();
    let _: i64 = gate.command(redis::cmd("INCRBY").arg(key).arg(n)).await?;
    Ok(())
}

/// The failover drill on the product's primary (see [`crate::cluster`]):
/// its replica misses the writes of the next 700 ms, then takes over.
pub fn failover(cluster_dir: &std::path::Path, keys: &Keys) -> Result<Drill> {
    let mut c = RedisCluster::attach(cluster_dir)?;
    let slot = c.slot_of(&keys.stock())?;
    let (primary, replica) = c.primary_and_replica(slot)?;
    c.isolate_replica(primary, replica)?;
    std::thread::sleep(Duration::from_millis(700));
    let drill = c.fail_over(primary, replica, slot, (&keys.stats(), "admitted"))?;
    c.wait_healthy(Duration::from_secs(30))?;
    Ok(drill)
}

/// A sale through the load generator; with `lose_decrements`, Redis forgets
/// that many decrements between the waves (a failover to a lagging replica).
pub async fn sale(
    api: &Api,
    spec: &LoadSpec,
    gate: Option<&RedisGate>,
    lose: u32,
) -> Result<(Run, Report)> {
    let hook = |_wave: usize| -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if lose > 0 {
                let gate = gate.context("losing decrements needs a Redis connection")?;
                lose_decrements(gate, &spec.product, lose).await?;
            }
            Ok(())
        })
    };
    let run = loadtest::run(api, spec, Some(&hook)).await?;
    let report = Report::of(spec, &run)?;
    Ok((run, report))
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

/// Waits until no reservation is open (each paid, cancelled or expired)
/// and every released unit is back on the shelf; the books then.
pub async fn wait_reservations_closed(
    gate: &RedisGate,
    store: &shared::aws::DynamoStore,
    product: &ProductId,
    timeout: Duration,
) -> Result<crate::audit::Audit> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let books = crate::audit::audit(gate, store, product).await?;
        if (books.open == 0 && books.releasing == 0) || std::time::Instant::now() > deadline {
            return Ok(books);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The placement-failure drill: one unit of a fresh `product`, bought
/// once, while the consumer fails every placement of it
/// (`FLASHSALE_FAULTS=place.fail_product:<product>` on the consumer). The
/// admitted order must travel the orders queue's redrive to the DLQ and
/// compensation, end COMPENSATED in DynamoDB with its unit back on sale,
/// and the product's books balance. How long that took.
pub async fn compensation_drill(
    api: &Api,
    gate: &RedisGate,
    store: &shared::aws::DynamoStore,
    product: &str,
    timeout: Duration,
) -> Result<Duration> {
    create_and_warm(api, product, 1, 1, 60, 1).await?;
    let buyer = "drill-buyer";
    let body = json!({ "product_id": product, "quantity": 1, "user_id": buyer });
    let key = format!("{product}-drill");
    let bought = retry_unavailable(|| api.buy(&body, Some(&key))).await?;
    ensure!(
        bought.status == 202,
        "the drill's buy answered {} {}",
        bought.status,
        bought.body
    );
    let request_id = bought.body["request_id"]
        .as_str()
        .context("the drill's 202 carried no request_id")?
        .to_owned();
    let started = Instant::now();
    loop {
        let order = api.order(&request_id, buyer).await?;
        match order.body["status"].as_str() {
            Some("compensated") => break,
            Some(s @ ("placed" | "paid")) => bail!(
                "the drill's order of {product} was {s}: the consumer must fail its placements \
                 (FLASHSALE_FAULTS=place.fail_product:{product} on the order consumer)"
            ),
            _ if started.elapsed() > timeout => bail!(
                "the drill's order {request_id} of {product} is not compensated after {timeout:?} \
                 (last answer {} {}): check that the orders queue's redrive policy names the DLQ, \
                 that the DLQ feeds compensation, and compensation's log",
                order.status,
                order.body
            ),
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    let took = started.elapsed();
    let product = ProductId::parse(product)?;
    let books = crate::audit::audit(gate, store, &product).await?;
    ensure!(
        books.balanced() && books.compensated == 1 && books.restocked == 1 && books.stock_left == 1,
        "after the drill's compensation the books of {} should hold one compensated unit back on sale: {books}",
        product.as_str()
    );
    Ok(took)
}

/// Faults the runner has injected so far (its `/health`).
pub async fn faults_injected(api: &Api) -> Result<u64> {
    let health = api.call("GET", "/health", &[], None).await?;
    Ok(health.body["faults_injected"].as_u64().unwrap_or(0))
}

/// `edge=off`, or what the local edge in front answered: the buys it
/// refused itself (sold out, not started, ended) and those it let through.
pub async fn edge_stats(api: &Api) -> String {
    match api.call("GET", "/_edge/stats", &[], None).await {
        Ok(a) if a.status == 200 => format!(
            "edge=on answered_at_edge={} forwarded={}",
            a.body["answered"].as_u64().unwrap_or(0),
            a.body["forwarded"].as_u64().unwrap_or(0)
        ),
        _ => "edge=off".to_owned(),
    }
}
