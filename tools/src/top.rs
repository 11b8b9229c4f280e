//! `flashsale top`: a sale live in the terminal. Each refresh reads what
//! `reconcile` reads (Redis' counters, DynamoDB's ledger), the queues'
//! depths, and the stack's metrics, and draws one frame. A local runner's
//! metrics are counters (its Prometheus text): rates and latency quantiles
//! come from the difference between frames. A deployed stack's are in
//! CloudWatch (the functions' EMF lines), aggregated there over a window.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use anyhow::{Context, Result};
use ratatui::Frame;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Table};
use shared::aws::DynamoStore;
use shared::domain::ProductId;
use shared::ports::prelude::*;
use shared::redis::RedisGate;

use crate::client::Api;

/// One product's figures at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProductRow {
    pub product: String,
    pub stock_total: i64,
    pub stock_left: i64,
    pub admitted: i64,
    pub placed: i64,
    pub paid: i64,
    pub pending: i64,
    /// How long the oldest pending request has waited (ms).
    pub oldest_pending_ms: Option<i64>,
}

/// Cumulative histogram buckets: (upper bound, count), ascending.
pub type Buckets = Vec<(f64, f64)>;

/// One handler's latency over a window, as CloudWatch aggregates it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub count: f64,
}

/// Refusals and latencies, as the stack's metrics give them.
#[derive(Debug, Clone, PartialEq)]
pub enum Figures {
    /// A runner's counters since it started: `flashsale_rejected_total` by
    /// reason, `flashsale_handler_seconds` buckets by handler (upper bound
    /// s, cumulative count, ascending, the last one +Inf).
    Counters {
        refusals: BTreeMap<String, f64>,
        latency: BTreeMap<String, Buckets>,
    },
    /// CloudWatch's aggregates over the last `secs`.
    Window {
        secs: f64,
        refusals: BTreeMap<String, f64>,
        latency: BTreeMap<String, Latency>,
    },
}

impl Default for Figures {
    fn default() -> Self {
        Self::Counters {
            refusals: BTreeMap::new(),
            latency: BTreeMap::new(),
        }
    }
}

/// Everything one frame shows, read at `at_ms`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    pub at_ms: i64,
    pub products: Vec<ProductRow>,
    pub figures: Figures,
    /// (queue, messages waiting).
    pub queues: Vec<(String, i64)>,
    /// What could not be read this time (shown, not fatal).
    pub error: Option<String>,
}

/// The metrics of a runner's Prometheus text that the view shows.
pub fn parse_metrics(text: &str) -> Result<Figures> {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape =
        prometheus_parse::Scrape::parse(lines).context("the metrics are not Prometheus text")?;
    let (mut refusals, mut latency) = (BTreeMap::new(), BTreeMap::new());
    for s in scrape.samples {
        let label = |k: &str| s.labels.get(k).unwrap_or("").to_owned();
        match (s.metric.as_str(), &s.value) {
            ("flashsale_rejected_total", prometheus_parse::Value::Counter(v))
            | ("flashsale_rejected_total", prometheus_parse::Value::Untyped(v)) => {
                *refusals.entry(label("reason")).or_insert(0.0) += v;
            }
            ("flashsale_handler_seconds", prometheus_parse::Value::Histogram(buckets)) => {
                let mut b: Vec<(f64, f64)> =
                    buckets.iter().map(|h| (h.less_than, h.count)).collect();
                b.sort_by(|x, y| x.0.total_cmp(&y.0));
                latency.insert(label("handler"), b);
            }
            _ => {}
        }
    }
    Ok(Figures::Counters { refusals, latency })
}

/// Where the refusal and latency figures come from.
pub enum Metrics {
    /// A local runner's `/metrics`.
    Runner(Box<Api>),
    /// A deployed stack's CloudWatch metrics.
    CloudWatch(CloudWatch),
}

impl Metrics {
    async fn figures(&self) -> Result<Figures> {
        match self {
            Self::Runner(api) => parse_metrics(&api.text("/metrics").await?),
            Self::CloudWatch(cw) => cw.figures().await,
        }
    }
}

/// The functions' metrics in CloudWatch (namespace `flashsale`): refusals
/// summed and latency quantiles over the last `WINDOW_SECS`, read again at
/// most every `REREAD` (GetMetricData is billed per metric read, and EMF
/// lines reach it a minute late anyway).
pub struct CloudWatch {
    client: aws_sdk_cloudwatch::Client,
    last: tokio::sync::Mutex<Option<(std::time::Instant, Figures)>>,
}

/// What a GetMetricData query asks, for the figure its values go to.
#[derive(Clone, Copy)]
enum Asked {
    Refusals,
    P50,
    P99,
    Count,
}

const WINDOW_SECS: i32 = 300;
const REREAD: Duration = Duration::from_secs(30);
const NAMESPACE: &str = "flashsale";

impl CloudWatch {
    pub fn new(client: aws_sdk_cloudwatch::Client) -> Self {
        Self {
            client,
            last: tokio::sync::Mutex::new(None),
        }
    }

    pub async fn figures(&self) -> Result<Figures> {
        let mut last = self.last.lock().await;
        if let Some((at, figures)) = last.as_ref()
            && at.elapsed() < REREAD
        {
            return Ok(figures.clone());
        }
        let figures = self.read().await?;
        *last = Some((std::time::Instant::now(), figures.clone()));
        Ok(figures)
    }

    /// Every metric of `name` in the namespace (one per function and label).
    async fn list(&self, name: &str) -> Result<Vec<aws_sdk_cloudwatch::types::Metric>> {
        let mut all = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .client
                .list_metrics()
                .namespace(NAMESPACE)
                .metric_name(name)
                .set_next_token(token)
                .send()
                .await
                .context("CloudWatch ListMetrics")?;
            all.extend(page.metrics().iter().cloned());
            token = page.next_token().map(str::to_owned);
            if token.is_none() {
                return Ok(all);
            }
        }
    }

    async fn read(&self) -> Result<Figures> {
        use aws_sdk_cloudwatch::primitives::DateTime;
        use aws_sdk_cloudwatch::types::{MetricDataQuery, MetricStat};
        let dim = |m: &aws_sdk_cloudwatch::types::Metric, name: &str| {
            m.dimensions()
                .iter()
                .find(|d| d.name() == Some(name))
                .and_then(|d| d.value())
                .unwrap_or("")
                .to_owned()
        };
        // (query id, (what it asks, the reason or handler)), in id order.
        let mut queries = Vec::new();
        let mut asked = Vec::new();
        let mut query =
            |metric: &aws_sdk_cloudwatch::types::Metric, stat: &str, what: (Asked, String)| {
                let id = format!("q{}", queries.len());
                let stat = MetricStat::builder()
                    .metric(metric.clone())
                    .period(WINDOW_SECS)
                    .stat(stat)
                    .build();
                queries.push(
                    MetricDataQuery::builder()
                        .id(&id)
                        .metric_stat(stat)
                        .return_data(true)
                        .build(),
                );
                asked.push((id, what));
            };
        for m in self.list("flashsale_rejected_total").await? {
            query(&m, "Sum", (Asked::Refusals, dim(&m, "reason")));
        }
        for m in self.list("flashsale_handler_seconds").await? {
            let handler = dim(&m, "handler");
            query(&m, "p50", (Asked::P50, handler.clone()));
            query(&m, "p99", (Asked::P99, handler.clone()));
            query(&m, "SampleCount", (Asked::Count, handler));
        }
        let (mut refusals, mut latency) = (BTreeMap::new(), BTreeMap::<String, Latency>::new());
        if queries.is_empty() {
            return Ok(Figures::Window {
                secs: f64::from(WINDOW_SECS),
                refusals,
                latency,
            });
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let end = now - now % 60;
        let mut values: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for batch in queries.chunks(500) {
            let mut token = None;
            loop {
                let out = self
                    .client
                    .get_metric_data()
                    .start_time(DateTime::from_secs(end - i64::from(WINDOW_SECS)))
                    .end_time(DateTime::from_secs(end))
                    .set_metric_data_queries(Some(batch.to_vec()))
                    .set_next_token(token)
                    .send()
                    .await
                    .context("CloudWatch GetMetricData")?;
                for r in out.metric_data_results() {
                    values
                        .entry(r.id().unwrap_or_default().to_owned())
                        .or_default()
                        .extend(r.values());
                }
                token = out.next_token().map(str::to_owned);
                if token.is_none() {
                    break;
                }
            }
        }
        for (id, (kind, label)) in asked {
            let got = values.get(&id).filter(|v| !v.is_empty());
            match kind {
                Asked::Refusals => {
                    *refusals.entry(label).or_insert(0.0) += got.map_or(0.0, |v| v.iter().sum())
                }
                Asked::P50 => latency.entry(label).or_default().p50 = got.map(|v| v[0]),
                Asked::P99 => latency.entry(label).or_default().p99 = got.map(|v| v[0]),
                Asked::Count => {
                    latency.entry(label).or_default().count += got.map_or(0.0, |v| v.iter().sum())
                }
            }
        }
        Ok(Figures::Window {
            secs: f64::from(WINDOW_SECS),
            refusals,
            latency,
        })
    }
}

/// The `q` quantile of the requests counted between two readings of a
/// histogram's cumulative buckets, interpolated within its bucket as
/// Prometheus' `histogram_quantile` does; None without requests.
pub fn quantile(q: f64, now: &[(f64, f64)], before: Option<&[(f64, f64)]>) -> Option<f64> {
    let delta: Vec<(f64, f64)> = now
        .iter()
        .map(|(le, c)| {
            let earlier = before
                .and_then(|b| b.iter().find(|(l, _)| l == le))
                .map_or(0.0, |(_, c)| *c);
            (*le, (c - earlier).max(0.0))
        })
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (le, count) in delta {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let inside = count - below;
            let share = if inside > 0.0 {
                (rank - below) / inside
            } else {
                1.0
            };
            return Some(lower + (le - lower) * share);
        }
        (lower, below) = (le, count);
    }
    Some(lower)
}

/// Reads a sample from a stack.
pub struct Reader {
    pub gate: RedisGate,
    pub store: DynamoStore,
    pub sqs: aws_sdk_sqs::Client,
    /// (name, url) of the queues to show.
    pub queues: Vec<(String, String)>,
    /// Where refusals and latencies come from; None shows none.
    pub metrics: Option<Metrics>,
    /// The products to show; None: every product Redis sweeps.
    pub products: Option<Vec<ProductId>>,
}

impl Reader {
    pub async fn sample(&self) -> Sample {
        let mut s = Sample::default();
        let mut errors = Vec::new();
        match self.read_products().await {
            Ok((at, rows)) => (s.at_ms, s.products) = (at, rows),
            Err(e) => errors.push(format!("redis/dynamodb: {e:#}")),
        }
        if let Some(metrics) = &self.metrics {
            match metrics.figures().await {
                Ok(figures) => s.figures = figures,
                Err(e) => errors.push(format!("metrics: {e:#}")),
            }
        }
        for (name, url) in &self.queues {
            match crate::queues::depth(&self.sqs, url).await {
                Ok(n) => s.queues.push((name.clone(), n)),
                Err(e) => errors.push(format!("{name}: {e:#}")),
            }
        }
        s.error = (!errors.is_empty()).then(|| errors.join("; "));
        s
    }

    async fn read_products(&self) -> Result<(i64, Vec<ProductRow>)> {
        let now = self.gate.now_ms().await?;
        let ids = match &self.products {
            Some(ids) => ids.clone(),
            None => {
                let mut ids = self.gate.products().await?;
                ids.sort();
                ids
            }
        };
        let mut rows = Vec::new();
        for id in ids {
            let Some(stats) = self.gate.stats(&id).await? else {
                continue;
            };
            let paid = self.store.ledger(&id).await?.map_or(0, |l| l.paid);
            let oldest = self.gate.pending_page(&id, now, 0, 1).await?;
            rows.push(ProductRow {
                product: id.to_string(),
                stock_total: stats.stock_total,
                stock_left: stats.stock_left,
                admitted: stats.admitted,
                placed: stats.placed,
                paid,
                pending: stats.pending,
                oldest_pending_ms: oldest.requests.first().map(|r| now - r.msg.admitted_at),
            });
        }
        Ok((now, rows))
    }
}

/// The frames drawn so far, for rates (against the previous frame) and
/// latency quantiles (over the last `WINDOW` frames).
#[derive(Default)]
pub struct View {
    samples: VecDeque<Sample>,
}

/// Frames the latency quantiles look back over.
const WINDOW: usize = 10;

fn per_second(now: f64, before: Option<f64>, secs: f64) -> String {
    match before {
        Some(b) if secs > 0.0 => format!("{:.1}", (now - b).max(0.0) / secs),
        _ => "-".into(),
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |s| format!("{:.1}", s * 1000.0))
}

impl View {
    pub fn push(&mut self, s: Sample) {
        self.samples.push_back(s);
        while self.samples.len() > WINDOW + 1 {
            self.samples.pop_front();
        }
    }

    pub fn draw(&self, frame: &mut Frame) {
        let Some(now) = self.samples.back() else {
            return;
        };
        let prev = self.samples.iter().rev().nth(1);
        let oldest = self.samples.front().filter(|_| self.samples.len() > 1);
        let secs = prev.map_or(0.0, |p| (now.at_ms - p.at_ms) as f64 / 1000.0);
        let bold = Style::default().add_modifier(Modifier::BOLD);

        let [title, products, middle, queues, status] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Length(now.products.len() as u16 + 3),
            Constraint::Min(4),
            Constraint::Length(1),
            Constraint::Length(1),
        ])
        .areas(frame.area());
        let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(now.at_ms) * 1_000_000)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        frame.render_widget(
            Paragraph::new(format!("flashsale top  {at}  (q quits)")).style(bold),
            title,
        );

        let find =
            |p: &ProductRow| prev.and_then(|s| s.products.iter().find(|r| r.product == p.product));
        let rows = now.products.iter().map(|p| {
            let before = find(p);
            Row::new(vec![
                p.product.clone(),
                format!("{}/{}", p.stock_left, p.stock_total),
                p.admitted.to_string(),
                per_second(p.admitted as f64, before.map(|b| b.admitted as f64), secs),
                p.placed.to_string(),
                per_second(p.placed as f64, before.map(|b| b.placed as f64), secs),
                p.paid.to_string(),
                per_second(p.paid as f64, before.map(|b| b.paid as f64), secs),
                p.pending.to_string(),
                p.oldest_pending_ms
                    .map_or_else(|| "-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0)),
            ])
        });
        let header = Row::new([
            "product", "stock", "admitted", "/s", "placed", "/s", "paid", "/s", "pending", "oldest",
        ])
        .style(bold);
        frame.render_widget(
            Table::new(
                rows,
                [
                    Constraint::Min(12),
                    Constraint::Length(11),
                    Constraint::Length(9),
                    Constraint::Length(7),
                    Constraint::Length(8),
                    Constraint::Length(7),
                    Constraint::Length(6),
                    Constraint::Length(7),
                    Constraint::Length(8),
                    Constraint::Length(7),
                ],
            )
            .header(header)
            .block(Block::bordered().title(" sales ")),
            products,
        );

        let [refusals, latency] =
            Layout::horizontal([Constraint::Percentage(45), Constraint::Percentage(55)])
                .areas(middle);
        let (refused, timed, span) = figure_rows(now, prev, oldest, secs);
        frame.render_widget(
            Table::new(
                refused,
                [
                    Constraint::Min(18),
                    Constraint::Length(8),
                    Constraint::Length(7),
                ],
            )
            .header(Row::new(["reason", "total", "/s"]).style(bold))
            .block(Block::bordered().title(format!(" refusals, {span} "))),
            refusals,
        );
        frame.render_widget(
            Table::new(
                timed,
                [
                    Constraint::Min(16),
                    Constraint::Length(8),
                    Constraint::Length(8),
                    Constraint::Length(7),
                ],
            )
            .header(Row::new(["handler", "p50 ms", "p99 ms", "req/s"]).style(bold))
            .block(Block::bordered().title(format!(" latency, {span} "))),
            latency,
        );

        let depths: Vec<String> = now.queues.iter().map(|(q, n)| format!("{q} {n}")).collect();
        frame.render_widget(
            Paragraph::new(format!("queues: {}", depths.join("  "))),
            queues,
        );
        frame.render_widget(
            Paragraph::new(Line::from(now.error.clone().unwrap_or_default())),
            status,
        );
    }
}

/// The refusal and latency rows of a frame, and the span they cover: a
/// runner's counters against earlier frames, or CloudWatch's window.
fn figure_rows<'a>(
    now: &'a Sample,
    prev: Option<&'a Sample>,
    oldest: Option<&'a Sample>,
    secs: f64,
) -> (Vec<Row<'a>>, Vec<Row<'a>>, String) {
    match &now.figures {
        Figures::Counters { refusals, latency } => {
            let counters = |s: Option<&'a Sample>| match s.map(|s| &s.figures) {
                Some(Figures::Counters { refusals, latency }) => Some((refusals, latency)),
                _ => None,
            };
            let refused = refusals
                .iter()
                .map(|(reason, total)| {
                    let before = counters(prev).map(|(r, _)| r.get(reason).copied().unwrap_or(0.0));
                    Row::new(vec![
                        reason.clone(),
                        format!("{total:.0}"),
                        per_second(*total, before, secs),
                    ])
                })
                .collect();
            let window = oldest.map_or(0.0, |o| (now.at_ms - o.at_ms) as f64 / 1000.0);
            let timed = latency
                .iter()
                .map(|(handler, buckets)| {
                    let earlier = counters(oldest).map(|(_, l)| l.get(handler).map(Vec::as_slice));
                    let count = |b: &[(f64, f64)]| b.last().map_or(0.0, |l| l.1);
                    Row::new(vec![
                        handler.clone(),
                        ms(quantile(0.5, buckets, earlier.flatten())),
                        ms(quantile(0.99, buckets, earlier.flatten())),
                        per_second(
                            count(buckets),
                            earlier.map(|e| e.map_or(0.0, count)),
                            window,
                        ),
                    ])
                })
                .collect();
            (refused, timed, format!("last {WINDOW} frames"))
        }
        Figures::Window {
            secs,
            refusals,
            latency,
        } => {
            let refused = refusals
                .iter()
                .map(|(reason, total)| {
                    Row::new(vec![
                        reason.clone(),
                        format!("{total:.0}"),
                        per_second(*total, Some(0.0), *secs),
                    ])
                })
                .collect();
            let timed = latency
                .iter()
                .map(|(handler, l)| {
                    Row::new(vec![
                        handler.clone(),
                        ms(l.p50),
                        ms(l.p99),
                        per_second(l.count, Some(0.0), *secs),
                    ])
                })
                .collect();
            (refused, timed, format!("last {secs:.0} s (CloudWatch)"))
        }
    }
}

/// Draws a frame every `refresh` until q, Esc or Ctrl-C; the terminal is
/// restored however it ends.
pub async fn run(reader: Reader, refresh: Duration) -> Result<()> {
    use std::io::IsTerminal;
    anyhow::ensure!(
        std::io::stdout().is_terminal(),
        "flashsale top draws on a terminal; for a one-off reading use `flashsale reconcile`"
    );
    let (quit_tx, mut quit) = tokio::sync::mpsc::channel::<()>(1);
    // Keys are read on their own thread: crossterm's reads block.
    std::thread::spawn(move || {
        while !quit_tx.is_closed() {
            let Ok(true) = event::poll(Duration::from_millis(100)) else {
                continue;
            };
            if let Ok(Event::Key(k)) = event::read() {
                let ctrl_c =
                    k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c');
                if k.kind == KeyEventKind::Press
                    && (ctrl_c || matches!(k.code, KeyCode::Char('q') | KeyCode::Esc))
                {
                    let _ = quit_tx.blocking_send(());
                    return;
                }
            }
        }
    });
    let mut terminal = ratatui::init();
    let mut view = View::default();
    let mut tick = tokio::time::interval(refresh);
    let drawn = loop {
        tokio::select! {
            _ = quit.recv() => break Ok(()),
            _ = tick.tick() => {
                view.push(reader.sample().await);
                if let Err(e) = terminal.draw(|f| view.draw(f)) {
                    break Err(e);
                }
            }
        }
    };
    ratatui::restore();
    drawn.context("drawing on the terminal")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    const METRICS: &str = r#"# TYPE flashsale_rejected_total counter
flashsale_rejected_total{reason="sold_out"} 40
flashsale_rejected_total{reason="rate_limited"} 7
# TYPE flashsale_handler_seconds histogram
flashsale_handler_seconds_bucket{handler="deduct",le="0.001"} 10
flashsale_handler_seconds_bucket{handler="deduct",le="0.005"} 90
flashsale_handler_seconds_bucket{handler="deduct",le="0.01"} 100
flashsale_handler_seconds_bucket{handler="deduct",le="+Inf"} 100
flashsale_handler_seconds_sum{handler="deduct"} 0.3
flashsale_handler_seconds_count{handler="deduct"} 100
"#;

    #[test]
    fn quantiles_interpolate_within_buckets_over_the_window() {
        let Figures::Counters { refusals, latency } = parse_metrics(METRICS).unwrap() else {
            panic!("a runner's metrics are counters");
        };
        assert_eq!(refusals["sold_out"], 40.0);
        let b = &latency["deduct"];
        assert_eq!(b.len(), 4);
        // Rank 50 of 100: 40 of the 80 in (1 ms, 5 ms].
        let p50 = quantile(0.5, b, None).unwrap();
        assert!((p50 - 0.003).abs() < 1e-9, "{p50}");
        let p99 = quantile(0.99, b, None).unwrap();
        assert!((p99 - 0.0095).abs() < 1e-9, "{p99}");
        // Over a window in which nothing was answered: no figure.
        assert_eq!(quantile(0.5, b, Some(b)), None);
        // Beyond the last finite bucket: its bound.
        assert_eq!(
            quantile(0.5, &[(0.1, 0.0), (f64::INFINITY, 4.0)], None),
            Some(0.1)
        );
    }

    fn sale(
        at_ms: i64,
        admitted: i64,
        placed: i64,
        paid: i64,
        sold_out: f64,
        deduct: f64,
    ) -> Sample {
        Sample {
            at_ms,
            products: vec![ProductRow {
                product: "p42".into(),
                stock_total: 100,
                stock_left: 100 - admitted,
                admitted,
                placed,
                paid,
                pending: admitted - placed,
                oldest_pending_ms: (admitted > placed).then_some(1_500),
            }],
            figures: Figures::Counters {
                refusals: BTreeMap::from([("sold_out".into(), sold_out)]),
                latency: BTreeMap::from([(
                    "deduct".into(),
                    vec![
                        (0.001, deduct / 2.0),
                        (0.005, deduct),
                        (f64::INFINITY, deduct),
                    ],
                )]),
            },
            queues: vec![
                ("orders".into(), admitted - placed),
                ("orders-dlq".into(), 0),
            ],
            error: None,
        }
    }

    fn frame(view: &View) -> Vec<String> {
        let mut terminal = Terminal::new(TestBackend::new(100, 16)).unwrap();
        terminal.draw(|f| view.draw(f)).unwrap();
        let buf = terminal.backend().buffer().clone();
        (0..buf.area.height)
            .map(|y| {
                (0..buf.area.width)
                    .map(|x| buf[(x, y)].symbol())
                    .collect::<String>()
                    .trim_end()
                    .to_owned()
            })
            .collect()
    }

    /// The frames drawn for a known sale: the first without rates, the
    /// second with the rates of the second between them.
    #[test]
    fn frames_of_a_known_sale() {
        let mut view = View::default();
        view.push(sale(1_800_000_000_000, 20, 10, 2, 0.0, 20.0));
        let first = frame(&view);
        assert_eq!(first[0], "flashsale top  2027-01-15T08:00:00Z  (q quits)");
        let row = |lines: &[String]| lines.iter().find(|l| l.contains("p42")).cloned().unwrap();
        let cells = |line: String| {
            line.split(['│', ' '])
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            cells(row(&first)),
            [
                "p42", "80/100", "20", "-", "10", "-", "2", "-", "10", "1.5s"
            ]
        );
        assert!(
            first
                .iter()
                .any(|l| l.contains("queues: orders 10  orders-dlq 0")),
            "{first:#?}"
        );

        view.push(sale(1_800_000_002_000, 60, 50, 12, 30.0, 100.0));
        let second = frame(&view);
        assert_eq!(
            cells(row(&second)),
            [
                "p42", "40/100", "60", "20.0", "50", "20.0", "12", "5.0", "10", "1.5s"
            ]
        );
        let refused = second
            .iter()
            .find(|l| l.contains("sold_out"))
            .cloned()
            .unwrap();
        assert!(
            refused.contains("30") && refused.contains("15.0"),
            "{refused}"
        );
        // 80 requests in the window, half under 1 ms: p50 1 ms.
        let deduct = second
            .iter()
            .find(|l| l.contains("deduct"))
            .cloned()
            .unwrap();
        let deduct = cells(deduct);
        let at = deduct.iter().position(|c| c == "deduct").unwrap();
        assert_eq!(&deduct[at..at + 4], ["deduct", "1.0", "4.9", "40.0"]);
    }

    /// A deployed stack's frame: CloudWatch's window, per second over it.
    #[test]
    fn a_frame_from_cloudwatch_figures() {
        let mut view = View::default();
        let mut s = sale(1_800_000_000_000, 20, 10, 2, 0.0, 0.0);
        s.figures = Figures::Window {
            secs: 300.0,
            refusals: BTreeMap::from([("sold_out".into(), 60.0)]),
            latency: BTreeMap::from([(
                "deduct".into(),
                Latency {
                    p50: Some(0.0021),
                    p99: Some(0.0187),
                    count: 600.0,
                },
            )]),
        };
        view.push(s);
        let lines = frame(&view);
        let find = |what: &str| lines.iter().find(|l| l.contains(what)).cloned().unwrap();
        assert!(find("refusals, last 300 s (CloudWatch)").contains("latency, last 300 s"));
        let refused = find("sold_out");
        assert!(
            refused.contains("60") && refused.contains("0.2"),
            "{refused}"
        );
        let deduct = find("deduct");
        for want in ["2.1", "18.7", "2.0"] {
            assert!(deduct.contains(want), "{deduct}");
        }
    }
}
