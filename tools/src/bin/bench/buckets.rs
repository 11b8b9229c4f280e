//! Figure 11: one product's buys per second by stock buckets, each bucket's
//! slot a Redis node limited to a set rate of script calls
//! (shared::redis::capacity), as figure 8 limits DynamoDB's items.

use super::*;
use shared::redis::capacity::Nodes;

/// Buys answered per second (admitted, or refused by the per-buyer limit)
/// of one product of `buckets` stock buckets: 2 s of the nodes' capacity,
/// each buyer asking twice, `in_flight` at a time, every slot running at
/// most `per_node` script calls a second. Also the calls each node ran.
async fn buys_per_s(
    buckets: u16,
    per_node: f64,
    in_flight: usize,
) -> Result<(f64, BTreeMap<String, u64>)> {
    let gate = RedisGate::new(config::redis_settings()?);
    let nodes = Arc::new(Nodes::new(per_node));
    gate.limit_nodes(nodes.clone());
    let mut product = bench_product(&unique("bench-buckets"), 1_000_000);
    product.stock_buckets = buckets;
    gate.warm(&product, false, i64::from(product.stock), 0)
        .await?;
    let pid = product.product_id.clone();
    let calls = (2.0 * per_node * f64::from(buckets)) as usize;
    let started = Instant::now();
    let answers: Vec<Result<Admission>> = futures::stream::iter(0..calls)
        .map(|i| {
            let (gate, pid) = (&gate, &pid);
            async move { Ok(gate.admit(&purchase(pid, i / 2)?).await?) }
        })
        .buffer_unordered(in_flight)
        .collect()
        .await;
    let answers: Vec<Admission> = answers.into_iter().collect::<Result<_>>()?;
    let rate = calls as f64 / started.elapsed().as_secs_f64();
    let admitted = answers
        .iter()
        .filter(|a| matches!(a, Admission::Admitted { .. }))
        .count();
    ensure!(
        admitted == calls.div_ceil(2),
        "{admitted} of {calls} buys by {} buyers were admitted",
        calls.div_ceil(2)
    );
    Ok((rate, nodes.served()))
}

pub(super) async fn stock_buckets(args: &Args) -> Result<Vec<Row>> {
    let runs = args.runs.min(3);
    let per_node = args.node_script_rate;
    let mut served = BTreeMap::new();
    let [one, four, eight] = alternating(runs, [1, 4, 8], async |k, _| {
        let (rate, nodes) = buys_per_s(k as u16, per_node, 64).await?;
        if k == 8 {
            served = nodes;
        }
        Ok(rate)
    })
    .await?;
    let model = format!(
        "every slot a Redis node running at most {per_node:.0} script calls/s, 64 buys in flight, each buyer asking twice (the second refused by the limit), 2 s of capacity a run"
    );
    let mut rows = vec![Row {
        figure: format!("11. buys answered/s of one product ({model}): 1 stock bucket"),
        ours: Spread::of(one.clone()).show(0),
        baseline: format!("{per_node:.0} (one node's capacity)"),
        ratio: format!("{:.2}", Spread::of(one.clone()).median() / per_node),
        runs: format!("{runs}, order alternated"),
        target: "(reported)".into(),
        met: "-",
    }];
    for (k, n) in [(4u16, four), (8, eight)] {
        let scaling = Spread::ratios(&n, &one);
        let goal = 0.7 * f64::from(k);
        rows.push(Row {
            figure: format!("11. the same, {k} stock buckets vs 1"),
            ours: Spread::of(n).show(0),
            baseline: Spread::of(one.clone()).show(0),
            ratio: format!("{}×", scaling.show(2)),
            runs: format!("{runs}, order alternated"),
            target: format!("≥ {goal:.1}× (0.7 × {k})"),
            met: verdict(scaling.median() >= goal),
        });
    }
    let total: u64 = served.values().sum();
    let shares: Vec<String> = served
        .values()
        .map(|n| format!("{:.1}%", 100.0 * *n as f64 / total.max(1) as f64))
        .collect();
    rows.push(Row {
        figure:
            "11. the same, 8 buckets: each node's share of the product's script calls (last run)"
                .into(),
        ours: shares.join(" / "),
        baseline: "12.5% each".into(),
        ratio: "-".into(),
        runs: "1".into(),
        target: "(reported)".into(),
        met: "-",
    });
    Ok(rows)
}
