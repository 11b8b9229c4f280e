//! Figure 2: the handler's overhead, the sold-out short circuit, the log budget.

use super::*;

pub(super) async fn handler_overhead(
    args: &Args,
    gate: &RedisGate,
    measured: &mut Measured,
) -> Result<Vec<Row>> {
    let p = ProductId::parse(unique("bench-h"))?;
    gate.warm(&bench_product(p.as_str(), 50_000_000), false, 50_000_000, 0)
        .await?;
    let handler = deduct(gate, Discard);
    let n = args.handler_calls;
    // Requests are built before timing: only the handler is measured.
    let requests: Vec<lambda_http::Request> = (0..n)
        .map(|i| {
            let body = format!(r#"{{"product_id":"{p}","quantity":1,"user_id":"h{i}"}}"#);
            lambda_http::http::Request::builder()
                .method("POST")
                .uri("/api/flash-sale/buy")
                .body(lambda_http::Body::from(body))
                .map_err(anyhow::Error::from)
        })
        .collect::<Result<_>>()?;
    let purchases: Vec<Purchase> = (0..n).map(|i| purchase(&p, n + i)).collect::<Result<_>>()?;
    let marked: Vec<Purchase> = (0..n)
        .map(|i| purchase(&p, 2 * n + i))
        .collect::<Result<_>>()?;
    // Interleaved, so all see the same machine noise. The handler makes two
    // Redis calls (admission, then the sent mark), so its baseline is both.
    let (mut with_handler, mut bare, mut bare_marked) = (histogram()?, histogram()?, histogram()?);
    for ((req, pur), pur_marked) in requests.into_iter().zip(&purchases).zip(&marked) {
        let t = Instant::now();
        let resp = handler.handle(req).await;
        with_handler.record(t.elapsed().as_micros().max(1) as u64)?;
        ensure!(resp.status() == 202, "handler answered {}", resp.status());
        let t = Instant::now();
        let a = gate.admit(pur).await?;
        bare.record(t.elapsed().as_micros().max(1) as u64)?;
        ensure!(matches!(a, Admission::Admitted { .. }));
        let t = Instant::now();
        let a = gate.admit(pur_marked).await?;
        gate.mark_sent(
            &pur_marked.request_id,
            pur_marked.user_id.as_str(),
            SendMark::Sent,
        )
        .await?;
        bare_marked.record(t.elapsed().as_micros().max(1) as u64)?;
        ensure!(matches!(a, Admission::Admitted { .. }));
    }
    let q = |h: &Histogram<u64>, q: f64| ms(h.value_at_quantile(q));
    let diff = |q_: f64| q(&with_handler, q_) - q(&bare_marked, q_);
    let mark = q(&bare_marked, 0.5) - q(&bare, 0.5);
    measured.deduct_ms = Some(q(&with_handler, 0.5));
    Ok(vec![
        Row {
            figure: "2. warm deduct handler (real Redis, no-op queue; JSON logs and a metrics recorder on, as deployed) vs bare admission + sent mark, p50 ms"
                .into(),
            ours: format!("{:.3}", q(&with_handler, 0.5)),
            baseline: format!("{:.3}", q(&bare_marked, 0.5)),
            ratio: format!("{:+.3} ms", diff(0.5)),
            runs: format!("{n} interleaved calls"),
            target: "< +0.2 ms".into(),
            met: verdict(diff(0.5) < 0.2),
        },
        Row {
            figure: "2. the same, p99 ms".into(),
            ours: format!("{:.3}", q(&with_handler, 0.99)),
            baseline: format!("{:.3}", q(&bare_marked, 0.99)),
            ratio: format!("{:+.3} ms", diff(0.99)),
            runs: format!("{n} interleaved calls"),
            target: "(reported)".into(),
            met: "-",
        },
        Row {
            figure: "2c. the sent mark after each send (a 202 only once queued; the sweeper leaves in-flight messages alone): admission + mark vs admission alone, p50 ms"
                .into(),
            ours: format!("{:.3}", q(&bare_marked, 0.5)),
            baseline: format!("{:.3}", q(&bare, 0.5)),
            ratio: format!("{mark:+.3} ms"),
            runs: format!("{n} interleaved calls"),
            target: "(the cost of that choice)".into(),
            met: "-",
        },
    ])
}

/// A buy of `product` by `user`, keyed or not.
pub(super) fn buy_request(
    product: &ProductId,
    user: &str,
    key: Option<&str>,
) -> Result<lambda_http::Request> {
    let body = format!(r#"{{"product_id":"{product}","quantity":1,"user_id":"{user}"}}"#);
    let mut req = lambda_http::http::Request::builder()
        .method("POST")
        .uri("/api/flash-sale/buy");
    if let Some(key) = key {
        req = req.header("Idempotency-Key", key);
    }
    Ok(req.body(lambda_http::Body::from(body))?)
}

/// Buys of a sold-out product: the per-instance short-circuit (410 from
/// memory; a keyed buy after one read of its key) against the same handler
/// running the admission script every time, which keyed buys always did
/// before the short-circuit learned to tell a replay.
pub(super) async fn sold_out_short_circuit(args: &Args, gate: &RedisGate) -> Result<Vec<Row>> {
    let p = ProductId::parse(unique("bench-s"))?;
    gate.warm(&bench_product(p.as_str(), 0), false, 0, 0)
        .await?;
    let cached = Deduct {
        sold_out: SoldOutCache::new(Duration::from_secs(600)),
        kill_switch: KillSwitchCache::new(Duration::from_millis(500)),
        ids: shared::domain::RequestIds::Random,
        ..deduct(gate, Discard)
    };
    let uncached = deduct(gate, Discard);
    let n = args.handler_calls;
    let mut rows = Vec::new();
    for keyed in [false, true] {
        let (mut with_cache, mut without) = (histogram()?, histogram()?);
        for i in 0..n {
            for (handler, h) in [(&cached, &mut with_cache), (&uncached, &mut without)] {
                let key = format!("k{keyed}-{i}-{}", h.len());
                let req = buy_request(&p, &format!("s{i}"), keyed.then_some(key.as_str()))?;
                let t = Instant::now();
                let resp = handler.handle(req).await;
                h.record(t.elapsed().as_micros().max(1) as u64)?;
                ensure!(
                    resp.status() == 410,
                    "expected sold out, got {}",
                    resp.status()
                );
            }
        }
        let (c50, c99) = p50_p99(&with_cache);
        let (u50, u99) = p50_p99(&without);
        rows.push(Row {
            figure: format!(
                "2b. sold out, {} buy, p50 / p99 ms: per-instance short-circuit vs the admission script every time{}",
                if keyed { "keyed (Idempotency-Key)" } else { "key-less" },
                if keyed { " (before this change)" } else { "" }
            ),
            ours: format!("{c50:.3} / {c99:.3}"),
            baseline: format!("{u50:.3} / {u99:.3}"),
            ratio: format!("{:.2} (p50)", c50 / u50),
            runs: format!("{n} interleaved calls"),
            target: "(reported)".into(),
            met: "-",
        });
    }
    Ok(rows)
}

/// Figure 2d: CPU the handler's process spends per refused buy, logging one
/// refusal in 100 (the budget) against logging every one (before it).
/// Keyed buys of a sold-out product, as the load test sends them, refused
/// by the admission script.
pub(super) async fn log_budget(args: &Args, gate: &RedisGate) -> Result<Vec<Row>> {
    let p = ProductId::parse(unique("bench-l"))?;
    gate.warm(&bench_product(p.as_str(), 0), false, 0, 0)
        .await?;
    // Without the sold-out short-circuit, which answers from memory and
    // logs nothing: each refusal here comes from the script and is logged
    // (or sampled), as refusals for other reasons are (already bought,
    // rate limited, short).
    let handler = deduct(gate, Discard);
    let n = args.handler_calls;
    let run = async |every: u64, round: usize| -> Result<f64> {
        deduct::REFUSALS_LOGGED.set_every(every);
        let started = cpu_time();
        for i in 0..n {
            let key = format!("l{every}-{round}-{i}");
            let resp = handler
                .handle(buy_request(&p, &format!("l{i}"), Some(&key))?)
                .await;
            ensure!(
                resp.status() == 410,
                "expected sold out, got {}",
                resp.status()
            );
        }
        Ok((cpu_time() - started).as_secs_f64() * 1e6 / n as f64)
    };
    let [sampled, every] = alternating(args.runs, [100, 1], run).await?;
    deduct::REFUSALS_LOGGED.set_every(config::refusal_log_every()?);
    let ratio = Spread::ratios(&sampled, &every);
    Ok(vec![Row {
        figure: "2d. log budget: process CPU µs per buy the admission script refuses (keyed, sold out, no short-circuit; JSON logs written to /dev/null), logging 1 refusal in 100 vs every one".into(),
        ours: Spread::of(sampled).show(1),
        baseline: Spread::of(every).show(1),
        ratio: ratio.show(2),
        runs: format!("{} × {n} calls, alternating", args.runs),
        target: "(reported; CloudWatch bills each line too)".into(),
        met: "-",
    }])
}
