//! A flash-sale load against any base URL: every buyer buys in
//! `requests_per_buyer` waves; a share of buyers repeat their first
//! Idempotency-Key. Workers ramp up to the concurrency; latencies go into
//! HdrHistograms per response code; a timeline feeds the chart.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::json;

use crate::client::Api;

#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub product: String,
    pub buyers: usize,
    pub requests_per_buyer: usize,
    /// Share of buyers whose later requests repeat their first key (0..=1).
    pub repeat_share: f64,
    pub concurrency: usize,
    /// Time for the workers of a wave to all start.
    pub ramp: Duration,
    pub progress: bool,
}

impl LoadSpec {
    /// Repeating buyers are spread evenly over the range.
    pub fn repeats(&self, buyer: usize) -> bool {
        let share = self.repeat_share.clamp(0.0, 1.0);
        ((buyer + 1) as f64 * share).floor() > (buyer as f64 * share).floor()
    }

    fn key(&self, buyer: usize, wave: usize) -> String {
        let k = if self.repeats(buyer) { 1 } else { wave };
        format!("{}-b{buyer}-k{k}", self.product)
    }
}

/// One answered request.
#[derive(Debug, Clone)]
pub struct Sample {
    pub buyer: usize,
    pub wave: usize,
    pub status: u16,
    pub request_id: Option<String>,
    pub latency: Duration,
    /// When it completed, from the start of the run.
    pub at: Duration,
}

/// Something that happens between two waves (the chaos demo's Redis loss).
pub type Interlude<'a> = &'a (dyn Fn(usize) -> futures::future::BoxFuture<'a, Result<()>> + Sync);

pub struct Run {
    pub samples: Vec<Sample>,
    pub elapsed: Duration,
}

pub async fn run(api: &Api, spec: &LoadSpec, between_waves: Option<Interlude<'_>>) -> Result<Run> {
    let bar = if spec.progress {
        ProgressBar::new((spec.buyers * spec.requests_per_buyer) as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} requests {per_sec} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let mut samples = Vec::with_capacity(spec.buyers * spec.requests_per_buyer);
    for wave in 1..=spec.requests_per_buyer {
        if wave > 1
            && let Some(hook) = between_waves
        {
            hook(wave).await?;
        }
        samples.extend(run_wave(api, spec, wave, started, &bar).await?);
    }
    bar.finish_and_clear();
    Ok(Run {
        samples,
        elapsed: started.elapsed(),
    })
}

async fn run_wave(
    api: &Api,
    spec: &LoadSpec,
    wave: usize,
    started: Instant,
    bar: &ProgressBar,
) -> Result<Vec<Sample>> {
    let next = Arc::new(AtomicUsize::new(0));
    let workers = spec.concurrency.clamp(1, spec.buyers.max(1));
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let (api, spec, next, bar) = (api.clone(), spec.clone(), next.clone(), bar.clone());
        let delay = spec.ramp.mul_f64(w as f64 / workers as f64);
        tasks.spawn(async move {
            tokio::time::sleep(delay).await;
            let mut mine = Vec::new();
            loop {
                let buyer = next.fetch_add(1, Ordering::Relaxed);
                if buyer >= spec.buyers {
                    return Ok::<_, anyhow::Error>(mine);
                }
                let body = json!({
                    "product_id": spec.product,
                    "quantity": 1,
                    "user_id": format!("buyer-{buyer}"),
                });
                let key = spec.key(buyer, wave);
                let sent = Instant::now();
                let answer = api.buy(&body, Some(&key)).await?;
                let latency = sent.elapsed();
                bar.inc(1);
                mine.push(Sample {
                    buyer,
                    wave,
                    status: answer.status,
                    request_id: answer.body["request_id"].as_str().map(str::to_owned),
                    latency,
                    at: started.elapsed(),
                });
            }
        });
    }
    let mut samples = Vec::new();
    while let Some(done) = tasks.join_next().await {
        samples.extend(done.context("a load worker panicked")??);
    }
    Ok(samples)
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// Throughput and latency figures of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub requests: usize,
    pub elapsed_s: f64,
    pub requests_per_s: f64,
    pub all: Latency,
    pub by_status: BTreeMap<u16, Latency>,
    /// (buyer, request id) of every order answered 202, once each.
    #[serde(skip)]
    pub admitted: Vec<(String, String)>,
    /// Repeated keys answered 2xx with the first request's id (a 202 after
    /// a failover that forgot the first: admitted again under the same id).
    pub replays_matched: usize,
    /// Repeated keys answered 2xx with another request id (must be 0).
    pub replays_mismatched: usize,
    /// Repeated keys refused (4xx) after a 202: only after Redis forgot the
    /// first request in a failover; its order stands (GET it by id).
    pub replays_refused: usize,
}

fn histogram() -> Result<Histogram<u64>> {
    // 1 µs to 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).context("building a latency histogram")
}

impl Report {
    pub fn of(spec: &LoadSpec, run: &Run) -> Result<Self> {
        let mut all = histogram()?;
        let mut by_status: BTreeMap<u16, Histogram<u64>> = BTreeMap::new();
        for s in &run.samples {
            let us = (s.latency.as_micros() as u64).clamp(1, 60_000_000);
            all.record(us)?;
            match by_status.get_mut(&s.status) {
                Some(h) => h.record(us)?,
                None => {
                    let mut h = histogram()?;
                    h.record(us)?;
                    by_status.insert(s.status, h);
                }
            }
        }
        let first: BTreeMap<usize, &str> = run
            .samples
            .iter()
            .filter(|s| s.wave == 1 && s.status == 202)
            .filter_map(|s| Some((s.buyer, s.request_id.as_deref()?)))
            .collect();
        let (mut matched, mut mismatched, mut refused) = (0, 0, 0);
        for s in run
            .samples
            .iter()
            .filter(|s| s.wave > 1 && spec.repeats(s.buyer))
        {
            let Some(id) = first.get(&s.buyer) else {
                continue;
            };
            // A 5xx is no answer (unavailable, try again), not another one.
            match s.status {
                200..=299 if s.request_id.as_deref() == Some(*id) => matched += 1,
                200..=299 => mismatched += 1,
                400..=499 => refused += 1,
                _ => {}
            }
        }
        let secs = run.elapsed.as_secs_f64().max(1e-9);
        Ok(Self {
            requests: run.samples.len(),
            elapsed_s: secs,
            requests_per_s: run.samples.len() as f64 / secs,
            all: Latency::of(&all),
            by_status: by_status
                .iter()
                .map(|(k, h)| (*k, Latency::of(h)))
                .collect(),
            admitted: {
                // One order per id: a keyed buy admitted again after a
                // failover forgot it is the same order, answered 202 twice.
                let mut seen = std::collections::HashSet::new();
                run.samples
                    .iter()
                    .filter(|s| s.status == 202)
                    .filter_map(|s| Some((format!("buyer-{}", s.buyer), s.request_id.clone()?)))
                    .filter(|(_, id)| seen.insert(id.clone()))
                    .collect()
            },
            replays_matched: matched,
            replays_mismatched: mismatched,
            replays_refused: refused,
        })
    }

    pub fn count(&self, status: u16) -> u64 {
        self.by_status.get(&status).map_or(0, |l| l.count)
    }

    /// A human-readable table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{} requests in {:.2} s: {:.0} req/s\n{:>6} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
            self.requests,
            self.elapsed_s,
            self.requests_per_s,
            "status",
            "count",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms"
        );
        let row = |name: String, l: &Latency| {
            format!(
                "{name:>6} {:>7} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}\n",
                l.count, l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
            )
        };
        for (status, l) in &self.by_status {
            out += &row(status.to_string(), l);
        }
        out += &row("all".into(), &self.all);
        out += &format!(
            "idempotent replays: {} matched, {} mismatched, {} refused after a failover\n",
            self.replays_matched, self.replays_mismatched, self.replays_refused
        );
        out
    }
}

/// Throughput and p99 latency per time bucket, for the chart.
pub fn timeline(run: &Run, buckets: usize) -> Result<Vec<(f64, f64, f64)>> {
    let total = run.elapsed.as_secs_f64().max(1e-3);
    let width = total / buckets.max(1) as f64;
    let mut hist: Vec<Histogram<u64>> = (0..buckets.max(1))
        .map(|_| histogram())
        .collect::<Result<_>>()?;
    for s in &run.samples {
        let i = ((s.at.as_secs_f64() / width) as usize).min(hist.len() - 1);
        hist[i].record((s.latency.as_micros() as u64).clamp(1, 60_000_000))?;
    }
    Ok(hist
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let rate = h.len() as f64 / width;
            let p99 = if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(0.99) as f64 / 1000.0
            };
            ((i as f64 + 0.5) * width, rate, p99)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(share: f64) -> LoadSpec {
        LoadSpec {
            product: "p".into(),
            buyers: 1000,
            requests_per_buyer: 2,
            repeat_share: share,
            concurrency: 1,
            ramp: Duration::ZERO,
            progress: false,
        }
    }

    fn sample(buyer: usize, wave: usize, status: u16, id: Option<&str>, ms: u64) -> Sample {
        Sample {
            buyer,
            wave,
            status,
            request_id: id.map(str::to_owned),
            latency: Duration::from_millis(ms),
            at: Duration::from_millis(ms),
        }
    }

    #[test]
    fn repeating_buyers_are_the_asked_share_spread_evenly() {
        for share in [0.0, 0.25, 0.5, 1.0] {
            let s = spec(share);
            let n = (0..1000).filter(|b| s.repeats(*b)).count();
            assert_eq!(n, (1000.0 * share) as usize, "{share}");
        }
        let half = spec(0.5);
        assert!(!half.repeats(0) && half.repeats(1) && !half.repeats(2));
        assert_eq!(half.key(1, 2), half.key(1, 1));
        assert_ne!(half.key(2, 2), half.key(2, 1));
    }

    #[test]
    fn the_report_checks_replays_and_splits_latency_by_status() {
        let s = spec(0.5);
        let run = Run {
            samples: vec![
                sample(1, 1, 202, Some("a"), 10),
                sample(1, 2, 200, Some("a"), 2),
                sample(3, 1, 202, Some("b"), 12),
                sample(3, 2, 202, Some("c"), 14),
                sample(2, 1, 410, None, 1),
                sample(2, 2, 409, None, 1),
            ],
            elapsed: Duration::from_secs(2),
        };
        let r = Report::of(&s, &run).unwrap();
        assert_eq!((r.replays_matched, r.replays_mismatched), (1, 1));
        assert_eq!(r.requests, 6);
        assert!((r.requests_per_s - 3.0).abs() < 1e-9);
        assert_eq!((r.count(202), r.count(200), r.count(410)), (3, 1, 1));
        let l = &r.by_status[&202];
        assert!(l.p50_ms >= 11.9 && l.p50_ms <= 12.1, "{l:?}");
        assert!(l.max_ms >= 13.9 && l.max_ms <= 14.1, "{l:?}");
        assert_eq!(r.admitted.len(), 3);
        assert!(r.table().contains("1 matched, 1 mismatched"));
    }

    /// Issue 18: after a failover forgot an admission, the repeat-key buy
    /// was admitted again under the same derived id and answered 202: one
    /// order, listed once among the winners (it was listed twice, and paid
    /// twice by the demo under one event id).
    #[test]
    fn an_order_admitted_twice_is_one_winner() {
        let s = spec(1.0);
        let run = Run {
            samples: vec![
                sample(1, 1, 202, Some("a"), 10),
                sample(1, 2, 202, Some("a"), 12),
            ],
            elapsed: Duration::from_secs(1),
        };
        let r = Report::of(&s, &run).unwrap();
        assert_eq!(r.count(202), 2);
        assert_eq!(r.admitted, [("buyer-1".to_owned(), "a".to_owned())]);
    }
}
