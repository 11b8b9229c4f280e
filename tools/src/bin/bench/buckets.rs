//! Figure 11: one product's buys per second by stock buckets, each bucket's
//! slot a Redis node limited to a set rate of script calls
//! (shared::redis::capacity), as figure 8 limits DynamoDB's items.
//! Figure 12: whether a bucketed product answers sold out only when it is,
//! under a burst on its driest bucket.

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

/// Units of each of the 4 buckets of figure 12.
const BUCKET_UNITS: u32 = 100;

/// What one burst of figure 12 saw.
#[derive(Default)]
struct Burst {
    /// The product's shelves read right after the first 410 was answered
    /// (None: no 410). Nothing comes back on sale during the burst, so it
    /// is a lower bound of what stood when that 410 was answered.
    after_first_410: Option<i64>,
    admitted: usize,
    /// 410s after which the shelves, read at once, still held units.
    false_410: usize,
    /// 503 stock_moving answers (asked again 10 ms later).
    moving: usize,
}

impl Burst {
    /// Buys admitted of those answered while units remained.
    fn share(&self) -> f64 {
        self.admitted as f64 / (self.admitted + self.false_410).max(1) as f64
    }
}

/// A product of 4 × [`BUCKET_UNITS`] in `buckets` stock buckets; the buyers
/// of bucket 0 (of 4, so both sides have the same ones) first buy its
/// share out one by one, then twice as many as the units left ask at once,
/// `in_flight` at a time, each until admitted or told 410.
async fn burst(buckets: u16, in_flight: usize) -> Result<Burst> {
    let gate = RedisGate::new(config::redis_settings()?);
    let mut product = bench_product(&unique("bench-dry"), 4 * BUCKET_UNITS);
    product.stock_buckets = buckets;
    gate.warm(&product, false, i64::from(product.stock), 0)
        .await?;
    let pid = product.product_id.clone();
    let left = 3 * BUCKET_UNITS as usize;
    let buyers: Vec<String> = (0..)
        .map(|i| format!("d{i}"))
        .filter(|u| shared::buckets::bucket_of(u, 4) == 0)
        .take(BUCKET_UNITS as usize + 2 * left)
        .collect();
    let buy = |user: &str| -> Result<Purchase> {
        Ok(Purchase {
            request_id: RequestId::new(&pid),
            product_id: pid.clone(),
            user_id: UserId::parse(user)?,
            quantity: Quantity::new(1)?,
            idempotency_key: None,
            client_ip: None,
        })
    };
    for user in &buyers[..BUCKET_UNITS as usize] {
        let answer = gate.admit(&buy(user)?).await?;
        ensure!(
            matches!(answer, Admission::Admitted { .. }),
            "{user} of a full shelf: {answer:?}"
        );
    }
    let moving = AtomicUsize::new(0);
    let answers: Vec<Result<(Instant, Option<i64>)>> =
        futures::stream::iter(&buyers[BUCKET_UNITS as usize..])
            .map(|user| {
                let (gate, pid, moving, buy) = (&gate, &pid, &moving, &buy);
                async move {
                    loop {
                        match gate.admit(&buy(user)?).await? {
                            Admission::Admitted { .. } => return Ok((Instant::now(), None)),
                            Admission::Refused(Refusal::StockMoving) => {
                                moving.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            Admission::Refused(Refusal::SoldOut) => {
                                let at = Instant::now();
                                let stats = gate.stats(pid).await?.context("a warmed sale")?;
                                return Ok((at, Some(stats.stock_left)));
                            }
                            other => bail!("{user}: {other:?}"),
                        }
                    }
                }
            })
            .buffer_unordered(in_flight)
            .collect()
            .await;
    let answers: Vec<(Instant, Option<i64>)> = answers.into_iter().collect::<Result<_>>()?;
    let refusals = answers
        .iter()
        .filter_map(|(at, shelf)| Some((*at, (*shelf)?)));
    let out = Burst {
        after_first_410: refusals.clone().min_by_key(|(at, _)| *at).map(|(_, s)| s),
        admitted: answers.iter().filter(|(_, s)| s.is_none()).count(),
        false_410: refusals.filter(|(_, s)| *s > 0).count(),
        moving: moving.into_inner(),
    };
    let end = gate.stats(&pid).await?.context("a warmed sale")?;
    ensure!(
        out.admitted <= left && end.stock_left + out.admitted as i64 == left as i64,
        "{} admitted of {left} units, {} left on the shelves",
        out.admitted,
        end.stock_left
    );
    Ok(out)
}

pub(super) async fn dry_bucket(args: &Args) -> Result<Vec<Row>> {
    let runs = args.runs.min(3);
    let mut seen: [Vec<Burst>; 2] = Default::default();
    alternating(runs, [1, 4], async |k, _| {
        let b = burst(k as u16, 64).await?;
        let side = usize::from(k == 4);
        let share = b.share();
        seen[side].push(b);
        Ok(share)
    })
    .await?;
    let [one, four] = &seen;
    let worst_left = |s: &[Burst]| {
        s.iter()
            .map(|b| b.after_first_410.map_or("no 410".into(), |n| n.to_string()))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let shares = |s: &[Burst]| Spread::of(s.iter().map(|b| 100.0 * b.share()).collect());
    let moving = |s: &[Burst]| Spread::of(s.iter().map(|b| b.moving as f64).collect());
    let model = format!(
        "4 × {BUCKET_UNITS} units; bucket 0's buyers buy its share out, then {} more of them ask at once for the {} units its siblings hold, 64 in flight, each until admitted or told 410 (503 stock_moving asked again after 10 ms)",
        6 * BUCKET_UNITS,
        3 * BUCKET_UNITS
    );
    let exact = four.iter().all(|b| b.after_first_410.unwrap_or(0) == 0);
    let all_served = four.iter().all(|b| b.false_410 == 0);
    Ok(vec![
        Row {
            figure: format!(
                "12. a burst on a dry stock bucket ({model}): units on the shelves read right after the first 410 (a lower bound of what stood when it was answered), each run: 4 stock buckets vs 1"
            ),
            ours: worst_left(four),
            baseline: worst_left(one),
            ratio: "-".into(),
            runs: format!("{runs}, order alternated"),
            target: "0 in every run".into(),
            met: verdict(exact),
        },
        Row {
            figure: "12. the same: share of the buys answered while units remained that were admitted, %: 4 stock buckets vs 1".into(),
            ours: shares(four).show(1),
            baseline: shares(one).show(1),
            ratio: format!("{:.3}", shares(four).median() / shares(one).median()),
            runs: format!("{runs}, order alternated"),
            target: "100% in every run".into(),
            met: verdict(all_served),
        },
        Row {
            figure: "12. the same: 503 stock_moving answers a burst (units moving between buckets while a dry bucket's buyer looked): 4 stock buckets vs 1".into(),
            ours: moving(four).show(0),
            baseline: moving(one).show(0),
            ratio: "-".into(),
            runs: format!("{runs}, order alternated"),
            target: "(reported)".into(),
            met: "-",
        },
    ])
}
