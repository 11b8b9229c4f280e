//! Figure 13: figure 3a's realistic sale, quiet and with one buyer flooding
//! made-up product ids (issue 31): what the real buyers see, what the
//! flooder gets, and what its requests cost Redis.

use super::*;
use tokio::sync::watch;

/// Flood requests in flight at once.
const FLOOD_IN_FLIGHT: usize = 8;

/// What the flooder got.
#[derive(Default)]
struct Flood {
    sent: u64,
    /// Answered other than 429 (404 unknown_product: refused, but heard).
    heard: u64,
    secs: f64,
}

/// What a flood posts.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// Buys of made-up product ids by one buyer.
    MadeUpIds,
    /// The control: bodies deduct refuses at parsing (400), before any
    /// guard or call: what any request costs this machine's server.
    Malformed,
}

/// One caller posting `kind`, `FLOOD_IN_FLIGHT` at a time, as fast as the
/// server answers, until `stop` (or `limit` requests).
async fn flood(
    addr: std::net::SocketAddr,
    stop: watch::Receiver<bool>,
    limit: u64,
    kind: Kind,
) -> Result<Flood> {
    let api = Api::new(format!("http://{addr}"), "unused");
    let sent = AtomicUsize::new(0);
    let heard = AtomicUsize::new(0);
    let started = Instant::now();
    let worker = |w: usize| {
        let (api, sent, heard, mut stop) = (&api, &sent, &heard, stop.clone());
        async move {
            for i in 0.. {
                if *stop.borrow_and_update() || sent.fetch_add(1, Ordering::Relaxed) as u64 >= limit
                {
                    break;
                }
                let body = match kind {
                    Kind::MadeUpIds => serde_json::json!({
                        "product_id": format!("made-up-{w}-{i}"),
                        "user_id": "flooder",
                    }),
                    Kind::Malformed => serde_json::json!({"user_id": "flooder"}),
                };
                if api.buy(&body, None).await?.status != 429 {
                    heard.fetch_add(1, Ordering::Relaxed);
                }
            }
            anyhow::Ok(())
        }
    };
    let workers: Vec<_> = (0..FLOOD_IN_FLIGHT).map(worker).collect();
    futures::future::try_join_all(workers).await?;
    Ok(Flood {
        sent: sent.load(Ordering::Relaxed).min(limit as usize) as u64,
        heard: heard.load(Ordering::Relaxed) as u64,
        secs: started.elapsed().as_secs_f64(),
    })
}

/// Redis' count of commands processed so far.
async fn redis_commands(gate: &RedisGate) -> Result<u64> {
    let info: String = gate.command(redis::cmd("INFO").arg("stats")).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|n| n.trim().parse().ok())
        .context("INFO stats without total_commands_processed")
}

/// A deduct as deployed, over the stack's DynamoDB (the list of live
/// products is read there) and a no-op queue (the emulator's share out of
/// the comparison), and a fresh product in both stores.
async fn sale(
    gate: &RedisGate,
    store: &DynamoStore,
    stock: u32,
) -> Result<(Deduct<RedisGate, Discard, DynamoStore>, String)> {
    let p = unique("bench-flood");
    let product = bench_product(&p, stock);
    store.create_product(&product).await?;
    gate.warm(&product, false, i64::from(stock), 0).await?;
    let (live, refusals) = deduct::guards(
        Arc::new(shared::ports::SystemClock),
        config::live_products()?,
    );
    let handler = Deduct {
        store: store.clone(),
        sold_out: SoldOutCache::new(config::sold_out_cache()?),
        live,
        refusals,
        room: deduct::RoomCheck::off(),
        ..deduct(gate, Discard)
    };
    Ok((handler, p))
}

pub(super) async fn flood_figure(
    args: &Args,
    gate: &RedisGate,
    sdk: &aws_config::SdkConfig,
) -> Result<Vec<Row>> {
    let names = provision::provision(sdk, &Names::with_prefix(&unique("bench")), 30).await?;
    let store = DynamoStore::new(sdk, &names.table);
    let runs = args.runs.min(3);
    let (stock, buyers) = (args.http_stock, args.http_buyers);
    let (mut quiet, mut flooded, mut control, mut floods) = (
        Vec::<HttpRun>::new(),
        Vec::<HttpRun>::new(),
        Vec::<HttpRun>::new(),
        Vec::<Flood>::new(),
    );
    let nothing = |_, _| async { Ok(()) };
    for run in 0..runs {
        // Which goes first rotates.
        for side in (0..3).map(|i| (i + run) % 3) {
            let (handler, p) = sale(gate, &store, stock).await?;
            match side {
                0 => quiet.push(
                    load_test(args, handler, &p, stock, buyers, nothing)
                        .await?
                        .0,
                ),
                1 => {
                    let (r, f) = load_test(args, handler, &p, stock, buyers, |addr, stop| {
                        flood(addr, stop, u64::MAX, Kind::MadeUpIds)
                    })
                    .await?;
                    flooded.push(r);
                    floods.push(f);
                }
                _ => {
                    let (r, _) = load_test(args, handler, &p, stock, buyers, |addr, stop| {
                        flood(addr, stop, u64::MAX, Kind::Malformed)
                    })
                    .await?;
                    control.push(r);
                }
            }
        }
    }
    // The flood alone, Redis' commands counted around it.
    let (handler, _) = sale(gate, &store, stock).await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, rx) = watch::channel(false);
    let server = tokio::spawn(runner::serve(
        listener,
        Arc::new(BuyOnly(handler)),
        rx.clone(),
    ));
    let before = redis_commands(gate).await?;
    let alone = flood(addr, rx, 5_000, Kind::MadeUpIds).await?;
    // The second INFO counts itself.
    let per_request =
        (redis_commands(gate).await? - before).saturating_sub(1) as f64 / alone.sent as f64;
    let _ = stop.send(true);
    let _ = server.await;

    let rates = |r: &[HttpRun]| -> Vec<f64> { r.iter().map(|r| r.requests_per_s).collect() };
    let p99 = |r: &[HttpRun]| Spread::of(r.iter().map(|r| r.p99_ms).collect());
    let throughput = Spread::ratios(&rates(&flooded), &rates(&quiet));
    let against_control = Spread::ratios(&rates(&flooded), &rates(&control));
    let tail = Spread::ratios(
        &flooded.iter().map(|r| r.p99_ms).collect::<Vec<_>>(),
        &quiet.iter().map(|r| r.p99_ms).collect::<Vec<_>>(),
    );
    let sale_of = format!(
        "figure 3a's sale ({stock} units, {buyers} buyers, one keyed buy each, 64 connections, the queue a no-op), with one buyer posting made-up product ids {FLOOD_IN_FLIGHT} at a time as fast as answered, beside it vs alone"
    );
    let flood_rate = Spread::of(floods.iter().map(|f| f.sent as f64 / f.secs).collect());
    let heard_rate = Spread::of(floods.iter().map(|f| f.heard as f64 / f.secs).collect());
    Ok(vec![
        Row {
            figure: format!("13. {sale_of}: real buyers' requests/s"),
            ours: Spread::of(rates(&flooded)).show(0),
            baseline: Spread::of(rates(&quiet)).show(0),
            ratio: throughput.show(2),
            runs: format!("{runs}, alternating"),
            target: "≥ 0.90".into(),
            met: verdict(throughput.median() >= 0.9),
        },
        Row {
            figure: "13. the same: real buyers' requests/s beside the flood of made-up ids vs beside a flood of malformed buys at the same concurrency (refused at parsing: what any request costs this 2-core machine, where flooder, server and client share the cores)".into(),
            ours: Spread::of(rates(&flooded)).show(0),
            baseline: Spread::of(rates(&control)).show(0),
            ratio: against_control.show(2),
            runs: format!("{runs}, alternating"),
            target: "≥ 0.90".into(),
            met: verdict(against_control.median() >= 0.9),
        },
        Row {
            figure: "13. the same: real buyers' p99 ms".into(),
            ours: p99(&flooded).show(1),
            baseline: p99(&quiet).show(1),
            ratio: tail.show(2),
            runs: format!("{runs}, alternating"),
            target: "≤ 1.10".into(),
            met: verdict(tail.median() <= 1.1),
        },
        Row {
            figure: format!(
                "13. the same: the flooder's requests/s, and those answered other than 429 (its refusal budget: {} at once, then 1/s per instance)",
                deduct::REFUSAL_BURST
            ),
            ours: format!("{} sent; {} heard", flood_rate.show(0), heard_rate.show(2)),
            baseline: "1/s (one instance)".into(),
            ratio: "-".into(),
            runs: format!("{runs}"),
            target: "heard ≈ its budget (reported)".into(),
            met: "-",
        },
        Row {
            figure: format!(
                "13. the same: Redis commands per flood request, the flood alone ({} requests)",
                alone.sent
            ),
            ours: format!("{per_request:.3}"),
            baseline: "0".into(),
            ratio: "-".into(),
            runs: "1".into(),
            target: "0".into(),
            met: verdict(per_request == 0.0),
        },
    ])
}
