//! Figure 8: placed orders/s by ledger shards.

use super::*;

/// Placed orders/s of one product of `shards` ledger shards: `orders`
/// messages fed to the consumer in batches of 10, 4 batches at a time (as 4
/// instances), records it reports failed fed again (SQS's redelivery),
/// until all are placed.
pub(super) async fn placed_per_s(
    store: &DynamoStore,
    gate: &RedisGate,
    shards: u16,
    orders: usize,
) -> Result<f64> {
    let mut product = bench_product(&unique("bench-shards"), (orders * 2) as u32);
    product.ledger_shards = shards;
    store.create_product(&product).await?;
    gate.warm(&product, false, i64::from(product.stock), 0)
        .await?;
    let pid = product.product_id.clone();
    let mut waiting: Vec<OrderMessage> = (0..orders)
        .map(|i| Ok(OrderMessage::new(&purchase(&pid, i)?, 1, 0)))
        .collect::<Result<_>>()?;
    let consumer = Consumer {
        gate: gate.clone(),
        store: store.clone(),
        concurrency: 10,
        faults: FaultPlan::none(),
        terms: shared::lifecycle::Terms::system(),
    };
    let started = Instant::now();
    while !waiting.is_empty() {
        ensure!(
            started.elapsed() < Duration::from_secs(300),
            "{} orders still unplaced after 300 s",
            waiting.len()
        );
        waiting = deliver(&consumer, &waiting).await?;
    }
    let rate = orders as f64 / started.elapsed().as_secs_f64();
    let ledger = store.ledger(&pid).await?.context("the bench product")?;
    ensure!(
        ledger.remaining == i64::from(product.stock) - orders as i64,
        "the shards hold {} after {orders} orders of {}",
        ledger.remaining,
        product.stock
    );
    Ok(rate)
}

/// One delivery of `orders` to the consumer in batches of 10, four batches
/// at once (as the event source mapping polls); the orders it reported
/// failed, for the next delivery.
pub(super) async fn deliver<G: StockGate, S: OrderStore>(
    consumer: &Consumer<G, S>,
    orders: &[OrderMessage],
) -> Result<Vec<OrderMessage>> {
    let batches: Vec<SqsEvent> = orders
        .chunks(10)
        .map(|chunk| {
            let mut event = SqsEvent::default();
            for (i, msg) in chunk.iter().enumerate() {
                let mut record = SqsMessage::default();
                record.message_id = Some(i.to_string());
                record.body = Some(serde_json::to_string(msg)?);
                event.records.push(record);
            }
            Ok(event)
        })
        .collect::<Result<_>>()?;
    let answers: Vec<_> = futures::stream::iter(batches)
        .map(|e| consumer.handle(e))
        .buffered(4)
        .collect()
        .await;
    Ok(answers
        .iter()
        .zip(orders.chunks(10))
        .flat_map(|(answer, chunk)| {
            answer
                .batch_item_failures
                .iter()
                .filter_map(|f| f.item_identifier.parse::<usize>().ok())
                .filter_map(|i| chunk.get(i).cloned())
        })
        .collect())
}

/// Figure 8: the sharded ledger under DynamoDB's per-item limits, which
/// DynamoDB Local does not have (tools::capacity enforces them, scaled so
/// that 16 shards stay below what the emulator itself can take).
pub(super) async fn ledger_shards(
    args: &Args,
    gate: &RedisGate,
    sdk: &aws_config::SdkConfig,
) -> Result<Vec<Row>> {
    use tools::capacity::{self, Capacity};
    let limits = Capacity {
        wcu_per_item: args.shard_wcu,
        hold: Duration::from_millis(10),
    };
    let names = provision::provision(sdk, &Names::with_prefix(&unique("bench")), 30).await?;
    let (limited, refusals) = capacity::limited(sdk, limits);
    let store = DynamoStore::new(&limited, &names.table);
    // Enough orders per shard that the full buckets every item starts with
    // (one second of capacity) are a small part of each run.
    let orders = |shards: u16| usize::from(shards) * (args.shard_wcu as usize * 2).max(40);
    let runs = args.runs.min(3);
    let [one, four, sixteen] = alternating(runs, [1, 4, 16], async |shards, _| {
        let shards = shards as u16;
        placed_per_s(&store, gate, shards, orders(shards)).await
    })
    .await?;
    let (passed, conflicts, throttled) = refusals.snapshot();
    let scale = format!(
        "scaled: {} WCU/s per item instead of ~1,000, each transaction in flight 10 ms; {passed} writes let through, {conflicts} cancelled as conflicts, {throttled} throttled",
        args.shard_wcu
    );
    let mut rows = vec![Row {
        figure: format!(
            "8. placed orders/s of one product through the consumer (4 batches of 10 at a time, failures fed again) under DynamoDB's per-item limits ({scale}): 1 ledger shard"
        ),
        ours: Spread::of(one.clone()).show(1),
        baseline: format!(
            "{:.0} (the item's capacity: {} WCU/s / 2 per transaction)",
            args.shard_wcu / 2.0,
            args.shard_wcu
        ),
        ratio: format!(
            "{:.2}",
            Spread::of(one.clone()).median() / (args.shard_wcu / 2.0)
        ),
        runs: format!("{runs}, order alternated"),
        target: "(reported)".into(),
        met: "-",
    }];
    for (shards, n) in [(4u16, four), (16, sixteen)] {
        let scaling = Spread::ratios(&n, &one);
        let goal = 0.7 * f64::from(shards);
        rows.push(Row {
            figure: format!("8. the same, {shards} ledger shards vs 1 shard"),
            ours: Spread::of(n).show(1),
            baseline: Spread::of(one.clone()).show(1),
            ratio: format!("{}×", scaling.show(2)),
            runs: format!("{runs}, order alternated"),
            target: format!("≥ {goal:.1}× (0.7 × {shards})"),
            met: verdict(scaling.median() >= goal),
        });
    }
    Ok(rows)
}
