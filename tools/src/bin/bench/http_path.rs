//! Figure 3: the HTTP path under load, the load test in its own process.

use super::*;

/// What the load test, run as its own process, saw.
pub(super) struct HttpRun {
    pub(super) requests_per_s: f64,
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
    pub(super) admitted: u64,
}

/// One load test against a buy-only server in this process: `buyers`
/// buyers (one keyed request each) for a sale of `stock` units; the client
/// is the `flashsale loadtest` binary in its own process, so it does not
/// share this runtime with the server.
pub(super) async fn http_run<Q: OrderQueue + 'static>(
    args: &Args,
    gate: &RedisGate,
    queue: Q,
    stock: u32,
    buyers: usize,
) -> Result<HttpRun> {
    let p = unique("bench-http");
    gate.warm(&bench_product(&p, stock), false, i64::from(stock), 0)
        .await?;
    let handler = Deduct {
        // As the runner and the functions run (the default).
        sold_out: SoldOutCache::new(config::sold_out_cache()?),
        ..deduct(gate, queue)
    };
    let (run, ()) = load_test(args, handler, &p, stock, buyers, |_, _| async { Ok(()) }).await?;
    Ok(run)
}

/// [`http_run`]'s load test against `handler` for product `p` (warmed),
/// with `beside` running against the same server until the test ends (it
/// gets the server's address and a signal that turns true at the end).
pub(super) async fn load_test<Q, F, Fut, T>(
    args: &Args,
    handler: Deduct<RedisGate, Q, DynamoStore>,
    p: &str,
    stock: u32,
    buyers: usize,
    beside: F,
) -> Result<(HttpRun, T)>
where
    Q: OrderQueue + 'static,
    F: FnOnce(std::net::SocketAddr, tokio::sync::watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(runner::serve(
        listener,
        Arc::new(BuyOnly(handler)),
        rx.clone(),
    ));
    let alongside = tokio::spawn(beside(addr, rx));
    let report = std::env::temp_dir().join(format!("{p}.json"));
    let status = tokio::process::Command::new(&args.client)
        .args(["loadtest", "--no-audit", "--admin-token", "unused"])
        .args(["--base-url", &format!("http://{addr}"), "--product", p])
        .args(["--buyers", &buyers.to_string(), "--requests-per-buyer", "1"])
        .args(["--concurrency", "64", "--report"])
        .arg(&report)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .with_context(|| format!("running the load test client {}", args.client.display()))?;
    let _ = stop.send(true);
    let beside = alongside.await.context("the task beside the load test")??;
    let _ = server.await;
    ensure!(status.success(), "the load test client failed: {status}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report)?)?;
    let _ = std::fs::remove_file(&report);
    let num = |v: &serde_json::Value| v.as_f64().context("a number in the load test's report");
    let run = HttpRun {
        requests_per_s: num(&r["requests_per_s"])?,
        p50_ms: num(&r["all"]["p50_ms"])?,
        p99_ms: num(&r["all"]["p99_ms"])?,
        admitted: r["by_status"]["202"]["count"].as_u64().unwrap_or(0),
    };
    ensure!(
        run.admitted == u64::from(stock).min(buyers as u64),
        "{} admitted of {stock} units",
        run.admitted
    );
    Ok((run, beside))
}

/// Figure 3: the HTTP buy through the runner's server with the client in
/// its own process. 3a: a realistic sale (mostly refusals) with the order
/// sends as the runner makes them against the queue replaced by a no-op
/// (the emulator's share). 3b: every buyer admitted, the runner's batched
/// sends against one SendMessage per buy.
pub(super) async fn http_path(
    args: &Args,
    gate: &RedisGate,
    sdk: &aws_config::SdkConfig,
) -> Result<Vec<Row>> {
    let names = provision::provision(sdk, &Names::with_prefix(&unique("bench")), 30).await?;
    let sqs = || SqsQueue::new(sdk, &names.orders_queue_url);
    let batched = || BatchingQueue::new(sqs(), Duration::from_millis(2));
    let runs = args.runs.min(3);
    let (mut mix, mut noop, mut all_batched, mut all_single) = (vec![], vec![], vec![], vec![]);
    let n = args.http_requests;
    for run in 0..runs {
        // Which goes first alternates (the queue fills up over the runs).
        for first in [run % 2 == 0, run % 2 == 1] {
            if first {
                mix.push(http_run(args, gate, batched(), args.http_stock, args.http_buyers).await?);
                all_batched.push(http_run(args, gate, batched(), n as u32, n).await?);
            } else {
                noop.push(http_run(args, gate, Discard, args.http_stock, args.http_buyers).await?);
                all_single.push(http_run(args, gate, sqs(), n as u32, n).await?);
            }
        }
    }
    // In run order (pairs are compared run by run).
    let rates = |r: &[HttpRun]| -> Vec<f64> { r.iter().map(|r| r.requests_per_s).collect() };
    let rate = |r: &[HttpRun]| Spread::of(rates(r));
    let lat = |r: &[HttpRun]| {
        format!(
            "{} req/s; p50 {:.1} / p99 {:.1} ms",
            rate(r).show(0),
            Spread::of(r.iter().map(|r| r.p50_ms).collect()).median(),
            Spread::of(r.iter().map(|r| r.p99_ms).collect()).median(),
        )
    };
    let ratio = |a: &[HttpRun], b: &[HttpRun]| Spread::ratios(&rates(a), &rates(b)).show(2);
    Ok(vec![
        Row {
            figure: format!(
                "3a. HTTP buys through the runner's server, a sale of {} units to {} buyers (one keyed buy each: mostly 410), client in its own process, 64 connections: sends to LocalStack SQS as the runner makes them (batched) vs the queue replaced by a no-op",
                args.http_stock, args.http_buyers
            ),
            ours: lat(&mix),
            baseline: lat(&noop),
            ratio: ratio(&mix, &noop),
            runs: format!("{runs}, alternating"),
            target: "(the emulator's share)".into(),
            met: "-",
        },
        Row {
            figure: format!(
                "3b. the same with every one of {} buyers admitted, admitted buys/s: the runner's batched sends (10 or 2 ms) vs one SendMessage per buy (before)",
                args.http_requests
            ),
            ours: rate(&all_batched).show(0),
            baseline: rate(&all_single).show(0),
            ratio: ratio(&all_batched, &all_single),
            runs: format!("{runs}, alternating"),
            target: "(reported; the runner only: a Lambda instance has one buy in flight)".into(),
            met: "-",
        },
    ])
}
