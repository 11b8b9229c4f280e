//! The crowd (issue 33): a sale whose origin takes `R` buys a second (the
//! local edge throttles it as API Gateway does, 429 beyond) meets a crowd
//! of `10 R` visitors a second for its first seconds, a tenth of them bots
//! that come early, refresh every 100 ms and hold several accounts. Once
//! through the waiting room (the edge function, its curve steered by the
//! publisher), once straight at the buy; the same runner, edge and stack.
//! What it reports is docs/benchmarks.md's figure 15 and the demo's
//! `crowd:` line.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use aws_config::SdkConfig;
use hdrhistogram::Histogram;
use serde_json::json;
use shared::aws::DynamoStore;
use shared::domain::ProductId;
use shared::ports::Clock;
use shared::redis::RedisGate;
use shared::room::{Inlet, Key, RoomValue};

use crate::client::{Api, Page};
use crate::provision::{self, Names};
use crate::runner::{self, EdgeConfig, RunnerConfig};

#[derive(Debug, Clone)]
pub struct CrowdSpec {
    /// Buys a second the origin's throttle lets through (and its burst).
    pub origin_rate: f64,
    /// Visitors a second while the crowd arrives, and for how long: half
    /// of it before the start, half after.
    pub arrivals_per_sec: f64,
    pub crowd_secs: f64,
    /// The share of the crowd that are bots: they arrive in the first half
    /// of the early window, refresh every 100 ms and hold `bot_accounts`.
    pub bot_share: f64,
    pub bot_accounts: usize,
    /// The room's early window (places drawn at random over it).
    pub early_secs: u32,
    /// The inlet's rate (start and ceiling), entries a second.
    pub inlet_rate: u32,
    pub stock: u32,
    pub seed: u64,
}

impl CrowdSpec {
    /// The demo's and the figure's: R = 20, 800 visitors over 4 s.
    pub fn standard() -> Self {
        Self {
            origin_rate: 20.0,
            arrivals_per_sec: 200.0,
            crowd_secs: 4.0,
            bot_share: 0.1,
            bot_accounts: 3,
            early_secs: 10,
            // Below R: bots try a second account with their admission, and
            // a buy refused 503 is retried.
            inlet_rate: 16,
            stock: 480,
            seed: 33,
        }
    }
}

/// The edge's clock (Date.now), which the places are drawn on.
fn now_ms() -> i64 {
    shared::ports::SystemClock.now_ms()
}

async fn sleep_until(ms: i64) {
    let wait = ms - now_ms();
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
}

#[derive(Debug, Clone)]
struct Visitor {
    bot: bool,
    /// When they come (ms since the epoch).
    arrives: i64,
    address: String,
    accounts: Vec<String>,
}

/// What happened to one visitor.
#[derive(Debug, Clone, Default)]
struct Outcome {
    /// The wait the room's page first estimated (s).
    estimate: Option<f64>,
    /// When the room let them in (ms).
    let_in: Option<i64>,
    units: u32,
    /// Buys after the let-in, and their latencies.
    buy_latencies: Vec<Duration>,
    sold_out: bool,
    /// Answers that were neither a unit, sold out, nor a refusal we expect.
    odd: Vec<u16>,
}

/// One side of the comparison.
#[derive(Debug, Clone, Default)]
pub struct Side {
    pub visitors: usize,
    pub bots: usize,
    pub accounts: usize,
    pub bot_accounts: usize,
    pub units: u32,
    pub bot_units: u32,
    /// Requests the origin took, and the ones its throttle refused.
    pub origin_requests: u64,
    pub throttled: u64,
    /// While people waited (the inlet's start to the last let-in): the
    /// origin's requests a second, the inlet's rate (mean of the rate the
    /// store held), the rate visitors were let in, and the worst second.
    pub busy_secs: f64,
    pub origin_rps: f64,
    pub inlet_rate: f64,
    pub admitted_rate: f64,
    pub worst_second_ratio: f64,
    /// Kendall's tau between arrival and let-in, early arrivals and the
    /// others.
    pub tau_early: f64,
    pub early_let_in: usize,
    pub tau_after: f64,
    pub after_let_in: usize,
    /// |estimate - wait| over the humans' first pages (s).
    pub wait_error_p50: f64,
    pub wait_error_p90: f64,
    pub buy_p99_ms: f64,
    pub oversold: i64,
    pub balanced: bool,
    pub odd: usize,
}

impl Side {
    /// The bots' share of the units over their share of the accounts.
    pub fn bot_advantage(&self) -> f64 {
        let units = f64::from(self.bot_units) / f64::from(self.units.max(1));
        let accounts = self.bot_accounts as f64 / self.accounts.max(1) as f64;
        units / accounts
    }
}

#[derive(Debug, Clone)]
pub struct CrowdReport {
    pub spec: CrowdSpec,
    pub room: Side,
    pub without: Side,
}

impl CrowdReport {
    /// One line for the demo's summary.
    pub fn summary(&self) -> String {
        let r = &self.room;
        format!(
            "crowd: origin R={:.0}/s visitors={} ({} bots × {} accounts) origin_rps={:.1} ({:.2}x the inlet's {:.1}) 429s={} (without the room {}) admitted={:.1}/s ({:.2}x) tau_early={:.3} tau_after={:.3} bots={:.2}x their accounts' share (without {:.2}x) wait_error p50={:.1} s p90={:.1} s buy_p99={:.0} ms oversold={} balanced={}",
            self.spec.origin_rate,
            r.visitors,
            r.bots,
            self.spec.bot_accounts,
            r.origin_rps,
            r.origin_rps / r.inlet_rate.max(f64::MIN_POSITIVE),
            r.inlet_rate,
            r.throttled,
            self.without.throttled,
            r.admitted_rate,
            r.admitted_rate / r.inlet_rate.max(f64::MIN_POSITIVE),
            r.tau_early,
            r.tau_after,
            r.bot_advantage(),
            self.without.bot_advantage(),
            r.wait_error_p50,
            r.wait_error_p90,
            r.buy_p99_ms,
            r.oversold + self.without.oversold,
            r.balanced && self.without.balanced,
        )
    }
}

/// Kendall's tau-a of the pairs (ties count neither way).
pub fn kendall_tau(pairs: &[(i64, i64)]) -> f64 {
    let n = pairs.len();
    if n < 2 {
        return 0.0;
    }
    let mut score = 0i64;
    for i in 0..n {
        for j in i + 1..n {
            let a = (pairs[i].0 - pairs[j].0).signum();
            let b = (pairs[i].1 - pairs[j].1).signum();
            score += a * b;
        }
    }
    score as f64 / (n * (n - 1) / 2) as f64
}

fn quantile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * q).round() as usize]
}

/// The number after `label` in a page ("Estimated wait: 12 s.").
fn number_after(body: &str, label: &str) -> Option<f64> {
    let rest = &body[body.find(label)? + label.len()..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Runs the crowd through the room and without it, on one runner (the
/// stack's Redis, SQS and DynamoDB) behind one throttled local edge.
pub async fn run(sdk: &SdkConfig, spec: &CrowdSpec) -> Result<CrowdReport> {
    const TOKEN: &str = "crowd-admin-token";
    let prefix = format!("crowd-{}", now_ms());
    let names = provision::provision(sdk, &Names::with_prefix(&prefix), 30).await?;
    let key = Key {
        id: "c1".into(),
        secret: format!(
            "crowd-{:032x}",
            fastrand::Rng::with_seed(spec.seed).u128(..)
        )
        .into_bytes(),
    };
    let cfg = RunnerConfig {
        edge: Some(EdgeConfig::local()),
        room_keys: vec![key],
        ..RunnerConfig::local(
            shared::config::redis_settings()?,
            &names,
            TOKEN,
            b"crowd-webhook-secret",
        )
    };
    let running = runner::start(cfg, sdk).await?;
    let origin = Api::new(format!("http://{}", running.addr), TOKEN);
    let (kvs, _) = running.kvs.clone().context("the runner's local store")?;
    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let burst = spec.origin_rate.ceil() as u32;
    let edge = crate::edge::LocalEdge::start_throttled(
        loopback,
        running.addr,
        kvs,
        Some((spec.origin_rate, burst)),
    )
    .await?;
    let through = Api::new(format!("http://{}", edge.addr), TOKEN);
    let gate = RedisGate::new(shared::config::redis_settings()?);
    let store = DynamoStore::new(sdk, &names.table);
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let queues = [
        names.orders_queue_url.as_str(),
        names.orders_dlq_url.as_str(),
    ];
    let mut sides = Vec::new();
    for with_room in [true, false] {
        let product = format!("{prefix}-{}", if with_room { "room" } else { "open" });
        let side = side(spec, &origin, &through, &product, with_room).await?;
        let id = ProductId::parse(&product)?;
        crate::demo::wait_settled(&gate, Some(&sqs), &queues, &id, Duration::from_secs(120))
            .await?;
        let audit = crate::audit::audit(&gate, &store, &id).await?;
        sides.push(Side {
            oversold: audit.oversold,
            balanced: audit.balanced(),
            ..side
        });
    }
    edge.stop().await;
    running.stop().await;
    let without = sides.pop().context("the side without a room")?;
    let room = sides.pop().context("the side with a room")?;
    Ok(CrowdReport {
        spec: spec.clone(),
        room,
        without,
    })
}

/// The crowd, drawn from the seed: bots early, humans around the start.
fn crowd(spec: &CrowdSpec, start: i64) -> Vec<Visitor> {
    let mut rng = fastrand::Rng::with_seed(spec.seed);
    let total = (spec.arrivals_per_sec * spec.crowd_secs).round() as usize;
    let bots = (total as f64 * spec.bot_share).round() as usize;
    let early = i64::from(spec.early_secs) * 1000;
    let span = (spec.crowd_secs * 1000.0) as i64;
    (0..total)
        .map(|i| {
            let bot = i < bots;
            let arrives = if bot {
                start - early + rng.i64(0..early / 2)
            } else {
                start - span / 2 + rng.i64(0..span.max(1))
            };
            let accounts = if bot { spec.bot_accounts } else { 1 };
            Visitor {
                bot,
                arrives,
                address: format!(
                    "10.{}.{}.{}",
                    100 + i / 62_500,
                    (i / 250) % 250,
                    i % 250 + 1
                ),
                accounts: (0..accounts).map(|a| format!("v{i}-a{a}")).collect(),
            }
        })
        .collect()
}

async fn create(
    origin: &Api,
    product: &str,
    spec: &CrowdSpec,
    starts_at: i64,
    room: bool,
) -> Result<()> {
    let rfc = |ms: i64| shared::domain::iso_ms(ms);
    let mut body = json!({
        "product_id": product, "name": "crowd", "stock": spec.stock, "per_buyer_limit": 1,
        "price": 100, "currency": "EUR",
        "starts_at": rfc(starts_at), "ends_at": rfc(starts_at + 3_600_000),
    });
    if room {
        body["waiting_room"] = json!({
            "early_window_secs": spec.early_secs,
            "start_rate": spec.inlet_rate,
            "ceiling": spec.inlet_rate,
            "admission_secs": 60,
        });
    }
    let created = origin
        .admin("POST", "/api/admin/products", Some(&body))
        .await?;
    ensure!(
        created.status == 201,
        "creating {product}: {}",
        created.body
    );
    let warm = origin
        .admin("POST", &format!("/api/admin/products/{product}/warm"), None)
        .await?;
    ensure!(warm.status == 200, "warming {product}: {}", warm.body);
    Ok(())
}

/// What the edge and its copy of the store said, sampled every 250 ms:
/// (ms, requests forwarded to the origin, throttled, the inlet's rate).
type Samples = Arc<Mutex<Vec<(i64, u64, u64, Option<f64>)>>>;

async fn sample(
    edge: Api,
    product: String,
    samples: Samples,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let key = format!("{product}#room");
    while !*stop.borrow() {
        if let (Ok(stats), Ok(view)) = (
            edge.call("GET", "/_edge/stats", &[], None).await,
            edge.call("GET", "/_edge/view", &[], None).await,
        ) {
            let n = |k: &str| stats.body[k].as_u64().unwrap_or(0);
            // Unmeasured (no density yet): no rate to hold the origin to.
            let rate = view.body[&key]
                .as_str()
                .and_then(RoomValue::parse)
                .filter(|r| r.density > 0 || r.curve.paused)
                .map(|r| {
                    if r.curve.paused {
                        0.0
                    } else {
                        Inlet::rate_of(&r)
                    }
                });
            samples.lock().unwrap_or_else(|e| e.into_inner()).push((
                now_ms(),
                n("forwarded"),
                n("throttled"),
                rate,
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn side(
    spec: &CrowdSpec,
    origin: &Api,
    edge: &Api,
    product: &str,
    room: bool,
) -> Result<Side> {
    // Time for the publisher and the store's propagation to reach the edge.
    let start = now_ms() + i64::from(spec.early_secs) * 1000 + 4_000;
    create(origin, product, spec, start, room).await?;
    let visitors = crowd(spec, start);
    let samples: Samples = Arc::default();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let sampler = tokio::spawn(sample(
        edge.clone(),
        product.to_owned(),
        samples.clone(),
        stopped,
    ));
    let outcomes = futures::future::join_all(visitors.iter().map(|v| {
        let edge = edge.clone();
        async move {
            sleep_until(v.arrives).await;
            visit(&edge, product, v, room).await
        }
    }))
    .await;
    let _ = stop.send(true);
    let _ = sampler.await;
    let outcomes: Vec<Outcome> = outcomes.into_iter().collect::<Result<_>>()?;
    let samples = samples.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if std::env::var_os("FLASHSALE_CROWD_TRACE").is_some() {
        for s in &samples {
            let let_in = outcomes
                .iter()
                .filter_map(|o| o.let_in)
                .filter(|t| *t <= s.0)
                .count();
            eprintln!(
                "{:>7} ms forwarded={} throttled={} rate={:?} let_in={let_in}",
                s.0 - start,
                s.1,
                s.2,
                s.3
            );
        }
    }
    measure(start, &visitors, &outcomes, &samples)
}

/// One visitor, through the room's page (with `room`) or straight at the buy.
async fn visit(edge: &Api, product: &str, v: &Visitor, room: bool) -> Result<Outcome> {
    let mut out = Outcome::default();
    let forwarded = v.address.clone();
    let mut admission = None;
    if room {
        let path = format!("/room?product_id={product}");
        let mut place: Option<String> = None;
        let deadline = v.arrives + 300_000;
        loop {
            let cookie = place
                .as_ref()
                .map(|p| format!("fs_place_{product}={p}"))
                .unwrap_or_default();
            let mut headers = vec![("X-Forwarded-For", forwarded.as_str())];
            if !cookie.is_empty() {
                headers.push(("Cookie", cookie.as_str()));
            }
            let page: Page = edge.page("GET", &path, &headers, None).await?;
            if let Some(p) = page.set_cookie(&format!("fs_place_{product}")) {
                place = Some(p).filter(|p| !p.is_empty());
            }
            match page.status {
                303 => {
                    out.let_in = Some(now_ms());
                    admission = page.set_cookie(&format!("fs_admit_{product}"));
                    break;
                }
                200 if page.body.contains("Sold out") || page.body.contains("has ended") => {
                    out.sold_out = true;
                    return Ok(out);
                }
                200 => {
                    // The page's 1x1 image, as a browser loads it: one
                    // first visit in 50 counts its place at the origin.
                    if let Some(at) = page.body.find("<img src=\"") {
                        let src = &page.body[at + 10..];
                        let src = &src[..src.find('"').unwrap_or(0)];
                        if let Some(p) = &place {
                            let cookie = format!("fs_place_{product}={p}");
                            let headers = [
                                ("X-Forwarded-For", forwarded.as_str()),
                                ("Cookie", cookie.as_str()),
                            ];
                            let _ = edge.page("GET", src, &headers, None).await?;
                        }
                    }
                    if out.estimate.is_none() {
                        out.estimate = number_after(&page.body, "Estimated wait: ");
                    }
                    let refresh = number_after(&page.body, "content=\"").unwrap_or(5.0);
                    let pause = if v.bot { 0.1 } else { refresh };
                    tokio::time::sleep(Duration::from_secs_f64(pause)).await;
                }
                // Setting up (no keys yet): the page asks to wait.
                503 => tokio::time::sleep(Duration::from_secs(2)).await,
                other => {
                    out.odd.push(other);
                    return Ok(out);
                }
            }
            ensure!(
                now_ms() < deadline,
                "a visitor waited 5 minutes without being let in"
            );
        }
    }
    let cookie = admission
        .map(|a| format!("fs_admit_{product}={a}"))
        .unwrap_or_default();
    for account in &v.accounts {
        let mut tries = 0;
        loop {
            tries += 1;
            let mut headers = vec![
                ("X-Forwarded-For", forwarded.as_str()),
                ("X-Flashsale-Product", product),
            ];
            if !cookie.is_empty() {
                headers.push(("Cookie", cookie.as_str()));
            }
            let sent = std::time::Instant::now();
            let a = edge
                .call(
                    "POST",
                    "/api/flash-sale/buy",
                    &headers,
                    Some(&json!({ "product_id": product, "user_id": account })),
                )
                .await?;
            if out.let_in.is_some() {
                out.buy_latencies.push(sent.elapsed());
            }
            match a.status {
                202 => {
                    out.units += 1;
                    break;
                }
                410 => {
                    out.sold_out = true;
                    return Ok(out);
                }
                // Throttled, or not started yet (without a room the crowd
                // comes before the start too): ask again.
                429 | 503 if tries < 60 => {
                    tokio::time::sleep(Duration::from_millis(if v.bot { 100 } else { 1000 })).await;
                }
                403 if a.body["error"] == "sale_not_started" => {
                    tokio::time::sleep(Duration::from_millis(if v.bot { 100 } else { 1000 })).await;
                }
                // The admission is another account's now: a bot learns it.
                403 if a.body["error"] == "admission_used" => return Ok(out),
                other => {
                    out.odd.push(other);
                    break;
                }
            }
        }
    }
    Ok(out)
}

fn measure(
    start: i64,
    visitors: &[Visitor],
    outcomes: &[Outcome],
    samples: &[(i64, u64, u64, Option<f64>)],
) -> Result<Side> {
    let pairs = || visitors.iter().zip(outcomes);
    let mut side = Side {
        visitors: visitors.len(),
        bots: visitors.iter().filter(|v| v.bot).count(),
        accounts: visitors.iter().map(|v| v.accounts.len()).sum(),
        bot_accounts: visitors
            .iter()
            .filter(|v| v.bot)
            .map(|v| v.accounts.len())
            .sum(),
        units: outcomes.iter().map(|o| o.units).sum(),
        bot_units: pairs().filter(|(v, _)| v.bot).map(|(_, o)| o.units).sum(),
        odd: outcomes.iter().map(|o| o.odd.len()).sum(),
        ..Side::default()
    };
    if let (Some(first), Some(last)) = (samples.first(), samples.last()) {
        side.origin_requests = last.1 - first.1;
        side.throttled = last.2 - first.2;
    }
    let early: Vec<(i64, i64)> = pairs()
        .filter(|(v, _)| v.arrives < start)
        .filter_map(|(v, o)| Some((v.arrives, o.let_in?)))
        .collect();
    let after: Vec<(i64, i64)> = pairs()
        .filter(|(v, _)| v.arrives >= start)
        .filter_map(|(v, o)| Some((v.arrives, o.let_in?)))
        .collect();
    side.tau_early = kendall_tau(&early);
    side.early_let_in = early.len();
    side.tau_after = kendall_tau(&after);
    side.after_let_in = after.len();
    // While people waited: from the inlet's opening to the last let-in.
    if let Some(last) = outcomes.iter().filter_map(|o| o.let_in).max() {
        let window: Vec<&(i64, u64, u64, Option<f64>)> = samples
            .iter()
            .filter(|s| s.0 >= start && s.0 <= last)
            .collect();
        if let (Some(a), Some(b)) = (window.first(), window.last())
            && b.0 > a.0
        {
            let secs = (b.0 - a.0) as f64 / 1000.0;
            side.busy_secs = secs;
            side.origin_rps = (b.1 - a.1) as f64 / secs;
            let rates: Vec<f64> = window.iter().filter_map(|s| s.3).collect();
            side.inlet_rate = rates.iter().sum::<f64>() / rates.len().max(1) as f64;
            let let_in = outcomes
                .iter()
                .filter_map(|o| o.let_in)
                .filter(|t| *t >= a.0 && *t <= b.0)
                .count();
            side.admitted_rate = let_in as f64 / secs;
            // Each second's origin requests against the rate then.
            side.worst_second_ratio = window
                .windows(5)
                .filter_map(|w| {
                    let (a, b) = (w[0], w[4]);
                    let rate = b.3.filter(|r| *r > 0.0)?;
                    let rps = (b.1 - a.1) as f64 * 1000.0 / (b.0 - a.0).max(1) as f64;
                    Some(rps / rate)
                })
                .fold(0.0, f64::max);
        }
    }
    let mut errors: Vec<f64> = pairs()
        .filter(|(v, _)| !v.bot)
        .filter_map(|(v, o)| {
            let waited = (o.let_in? - v.arrives) as f64 / 1000.0;
            Some((o.estimate? - waited).abs())
        })
        .collect();
    side.wait_error_p50 = quantile(&mut errors, 0.5);
    side.wait_error_p90 = quantile(&mut errors, 0.9);
    let mut buys = Histogram::<u64>::new(3)?;
    for d in outcomes.iter().flat_map(|o| &o.buy_latencies) {
        let _ = buys.record(d.as_micros() as u64);
    }
    side.buy_p99_ms = buys.value_at_quantile(0.99) as f64 / 1000.0;
    Ok(side)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kendall_tau_reads_order() {
        let same: Vec<(i64, i64)> = (0..10).map(|i| (i, i)).collect();
        assert_eq!(kendall_tau(&same), 1.0);
        let reversed: Vec<(i64, i64)> = (0..10).map(|i| (i, -i)).collect();
        assert_eq!(kendall_tau(&reversed), -1.0);
        assert_eq!(kendall_tau(&[(1, 1)]), 0.0);
        assert_eq!(
            number_after("Estimated wait: 12 s.", "Estimated wait: "),
            Some(12.0)
        );
        assert_eq!(
            number_after(r#"<meta http-equiv="refresh" content="7">"#, "content=\""),
            Some(7.0)
        );
    }
}
