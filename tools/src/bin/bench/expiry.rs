//! Figure 6: how late orders expire under the scheduled expirer.

use super::*;

/// Figure 6: how late orders expire when `expiry_orders` fall due at once
/// and the expirer runs every `expiry_period_ms` (as EventBridge would),
/// each run with three quarters of a period as its budget.
pub(super) async fn expiry(
    args: &Args,
    gate: &RedisGate,
    sdk: &aws_config::SdkConfig,
) -> Result<Vec<Row>> {
    let names = provision::provision(sdk, &Names::with_prefix(&unique("bench")), 30).await?;
    let store = DynamoStore::new(sdk, &names.table);
    let product = bench_product(&unique("bench-e"), u32::try_from(args.expiry_orders)?);
    store.create_product(&product).await?;
    gate.warm(&product, false, i64::from(product.stock), 0)
        .await?;
    // Placed with one deadline, already past when the schedule starts: the
    // orders all fall due at the schedule's first tick.
    let pay_by = shared::domain::unix_ms(time::OffsetDateTime::now_utc());
    let terms = product.reservation(Quantity::new(1)?, pay_by - 900_000);
    let placed = AtomicUsize::new(0);
    futures::stream::iter(0..args.expiry_orders)
        .map(|i| {
            let (store, terms, placed) = (&store, &terms, &placed);
            let msg = purchase(&product.product_id, i).map(|p| OrderMessage::new(&p, 1, 0));
            async move {
                let msg = msg?;
                let placement = shared::retry::transient(shared::retry::Backoff::DEFAULT, || {
                    store.place(&msg, terms)
                })
                .await?;
                ensure!(
                    placement == shared::ports::Placement::Placed,
                    "{placement:?}"
                );
                placed.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<Result<()>>>()
        .await
        .into_iter()
        .collect::<Result<Vec<()>>>()?;
    let period = Duration::from_millis(args.expiry_period_ms);
    let expirer = order_expirer::Expirer {
        gate: gate.clone(),
        store: store.clone(),
        clock: Arc::new(shared::ports::SystemClock),
        faults: FaultPlan::none(),
        batch: 100,
        concurrency: 8,
        budget: period.mul_f64(0.75),
    };
    let due_at = shared::domain::unix_ms(time::OffsetDateTime::now_utc());
    let mut lateness = Histogram::<u64>::new_with_bounds(1, 24 * 3_600_000, 3)?;
    let mut runs = 0;
    let mut working = Duration::ZERO;
    let started = Instant::now();
    while lateness.len() < args.expiry_orders as u64 {
        let tick = started + period * runs;
        tokio::time::sleep_until(tick.into()).await;
        runs += 1;
        let run_started = Instant::now();
        let run = expirer.run().await?;
        working += run_started.elapsed();
        ensure!(run.failed == 0, "expiry failures in the bench: {run:?}");
        for late in run.lateness_ms {
            // Relative to the moment they fell due (the first tick).
            lateness.record(u64::try_from(late - (due_at - pay_by)).unwrap_or(0).max(1))?;
        }
        ensure!(runs < 1_000, "expiry did not finish in 1,000 runs");
    }
    // The rate while the expirer works (not the idle rest of each period).
    let rate = args.expiry_orders as f64 / working.as_secs_f64();
    let p = |q: f64| lateness.value_at_quantile(q) as f64 / 1000.0;
    let secs = period.as_secs_f64();
    Ok(vec![
        Row {
            figure: format!(
                "6. expiry lateness, {} orders due at once on DynamoDB Local, expirer every {secs:.0} s (batches of 100, 8 at a time): p50 / p99 s after falling due, vs the schedule period",
                args.expiry_orders
            ),
            ours: format!("p50 {:.1} / p99 {:.1} s", p(0.5), p(0.99)),
            baseline: format!("{secs:.0} s"),
            ratio: format!("{:.1} / {:.1} periods", p(0.5) / secs, p(0.99) / secs),
            runs: format!("1 burst, {runs} expirer runs"),
            target: "(reported)".into(),
            met: "-",
        },
        Row {
            figure: "6. the same: expiries per second while a run works (each a release transaction, a consistent read, the Redis step and the shelved transaction), vs what clears the burst within one 45 s run of AWS's 60 s schedule".into(),
            ours: format!("{rate:.0}/s"),
            baseline: format!("{} orders / 45 s = {:.0}/s", args.expiry_orders, args.expiry_orders as f64 / 45.0),
            ratio: format!("{:.2}", rate / (args.expiry_orders as f64 / 45.0)),
            runs: format!("1 burst, {runs} expirer runs"),
            target: "(reported)".into(),
            met: "-",
        },
    ])
}
