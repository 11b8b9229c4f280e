//! `flashsale top`: a sale live in the terminal. Each refresh reads what
//! `reconcile` reads (Redis' counters, DynamoDB's ledger), the queues'
//! depths, and the stack's metrics (the runner's Prometheus text), and
//! draws one frame; rates and latency quantiles come from the difference
//! between frames.

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
use shared::ports::{OrderStore, StockGate};
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

/// Everything one frame shows, read at `at_ms`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    pub at_ms: i64,
    pub products: Vec<ProductRow>,
    /// `flashsale_rejected_total` by reason (cumulative).
    pub refusals: BTreeMap<String, f64>,
    /// `flashsale_handler_seconds` buckets by handler: (upper bound s,
    /// cumulative count), ascending, the last one +Inf.
    pub latency: BTreeMap<String, Buckets>,
    /// (queue, messages waiting).
    pub queues: Vec<(String, i64)>,
    /// What could not be read this time (shown, not fatal).
    pub error: Option<String>,
}

/// The metrics of a runner's Prometheus text that the view shows.
pub fn parse_metrics(text: &str) -> Result<(BTreeMap<String, f64>, BTreeMap<String, Buckets>)> {
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
    Ok((refusals, latency))
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
    /// The runner whose `/metrics` to read; None shows no metrics.
    pub metrics: Option<Api>,
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
        if let Some(api) = &self.metrics {
            match api.text("/metrics").await.and_then(|t| parse_metrics(&t)) {
                Ok((refusals, latency)) => (s.refusals, s.latency) = (refusals, latency),
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
        let refused = now.refusals.iter().map(|(reason, total)| {
            let before = prev.and_then(|p| p.refusals.get(reason).copied());
            Row::new(vec![
                reason.clone(),
                format!("{total:.0}"),
                per_second(*total, before.or(prev.map(|_| 0.0)), secs),
            ])
        });
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
            .block(Block::bordered().title(" refusals ")),
            refusals,
        );
        let timed = now.latency.iter().map(|(handler, buckets)| {
            let earlier = oldest
                .and_then(|o| o.latency.get(handler))
                .map(Vec::as_slice);
            let count = |b: &[(f64, f64)]| b.last().map_or(0.0, |l| l.1);
            let window = oldest.map_or(0.0, |o| (now.at_ms - o.at_ms) as f64 / 1000.0);
            Row::new(vec![
                handler.clone(),
                ms(quantile(0.5, buckets, earlier)),
                ms(quantile(0.99, buckets, earlier)),
                per_second(
                    count(buckets),
                    earlier.map(count).or(oldest.map(|_| 0.0)),
                    window,
                ),
            ])
        });
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
            .block(Block::bordered().title(format!(" latency, last {WINDOW} frames "))),
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
        let (refusals, latency) = parse_metrics(METRICS).unwrap();
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
            refusals: BTreeMap::from([("sold_out".into(), sold_out)]),
            latency: BTreeMap::from([(
                "deduct".into(),
                vec![
                    (0.001, deduct / 2.0),
                    (0.005, deduct),
                    (f64::INFINITY, deduct),
                ],
            )]),
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
}
