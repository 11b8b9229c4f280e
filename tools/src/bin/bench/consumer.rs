//! Figure 4: the consumer's batches against DynamoDB.

use super::*;

pub(super) async fn consumer(
    args: &Args,
    gate: &RedisGate,
    sdk: &aws_config::SdkConfig,
    measured: &mut Measured,
) -> Result<Vec<Row>> {
    let names = provision::provision(sdk, &Names::with_prefix(&unique("bench")), 30).await?;
    let store = DynamoStore::new(sdk, &names.table);
    let p = unique("bench-c");
    let product = bench_product(&p, 1_000_000);
    store.create_product(&product).await?;
    gate.warm(&product, false, i64::from(product.stock), 0)
        .await?;
    let batches = 30;
    let mut user = 0;
    let pid = product.product_id.clone();
    let mut batch = || -> Result<SqsEvent> {
        let mut event = SqsEvent::default();
        for i in 0..10 {
            user += 1;
            let msg = OrderMessage::new(&purchase(&pid, user)?, 1, 0);
            let mut record = SqsMessage::default();
            record.message_id = Some(format!("m{i}"));
            record.body = Some(serde_json::to_string(&msg)?);
            event.records.push(record);
        }
        Ok(event)
    };
    let timed = async |concurrency: usize, events: Vec<SqsEvent>| -> Result<Duration> {
        let c = Consumer {
            gate: gate.clone(),
            store: store.clone(),
            concurrency,
            faults: FaultPlan::none(),
            terms: shared::lifecycle::Terms::system(),
        };
        let started = Instant::now();
        for e in events {
            let resp = c.handle(e).await;
            ensure!(
                resp.batch_item_failures.is_empty(),
                "consumer failures in the bench"
            );
        }
        Ok(started.elapsed())
    };
    // Alternating which goes first: the JVM behind DynamoDB Local warms up
    // over the first runs, and neither side may have it to itself.
    let runs = args.runs.min(3);
    let per_batch = |d: Duration| d.as_secs_f64() * 1000.0 / batches as f64;
    let [sequential, concurrent] = alternating(runs, [1, 10], async |concurrency, _| {
        let events: Vec<SqsEvent> = (0..batches).map(|_| batch()).collect::<Result<_>>()?;
        Ok(per_batch(timed(concurrency as usize, events).await?))
    })
    .await?;
    let ratio = Spread::ratios(&sequential, &concurrent);
    // Control: the emulator alone, two-item transactions on unrelated keys,
    // 10 at once vs one by one. If this ratio is low too, the limit is
    // DynamoDB Local's handling of transactions, not the consumer.
    let ddb = store.client().clone();
    let table_name = names.table.clone();
    let control = async |concurrency: usize| -> Result<Duration> {
        let started = Instant::now();
        let mut next = 0usize;
        while next < batches * 10 {
            let wave: Vec<_> = (next..(next + concurrency).min(batches * 10))
                .map(|i| {
                    let (ddb, table) = (ddb.clone(), table_name.clone());
                    let tag = format!("{}-{concurrency}-{i}", uuid::Uuid::new_v4().simple());
                    async move {
                        let put = |pk: String| {
                            aws_sdk_dynamodb::types::Put::builder()
                                .table_name(&table)
                                .item("pk", aws_sdk_dynamodb::types::AttributeValue::S(pk))
                                .condition_expression("attribute_not_exists(pk)")
                                .build()
                        };
                        ddb.transact_write_items()
                            .transact_items(
                                aws_sdk_dynamodb::types::TransactWriteItem::builder()
                                    .put(put(format!("CTRL#A#{tag}"))?)
                                    .build(),
                            )
                            .transact_items(
                                aws_sdk_dynamodb::types::TransactWriteItem::builder()
                                    .put(put(format!("CTRL#B#{tag}"))?)
                                    .build(),
                            )
                            .send()
                            .await?;
                        Ok::<_, anyhow::Error>(())
                    }
                })
                .collect();
            next += wave.len();
            for r in futures::future::join_all(wave).await {
                r?;
            }
        }
        Ok(started.elapsed())
    };
    let [control_seq, control_conc] = alternating(runs, [1, 10], async |concurrency, _| {
        Ok(per_batch(control(concurrency as usize).await?))
    })
    .await?;
    let control_ratio = Spread::ratios(&control_seq, &control_conc);
    let concurrent = Spread::of(concurrent);
    measured.consumer_batch_ms = Some(concurrent.median());
    Ok(vec![
        Row {
            figure: format!(
                "4. consumer, {batches} batches of 10 on DynamoDB Local, ms per batch: concurrent (10 at once) vs a sequential per-record loop"
            ),
            ours: concurrent.show(1),
            baseline: Spread::of(sequential).show(1),
            ratio: format!("{}×", ratio.show(2)),
            runs: format!("{runs}, order alternated"),
            target: "≥ 5×".into(),
            met: verdict(ratio.median() >= 5.0),
        },
        Row {
            figure: format!(
                "4. control: DynamoDB Local alone, {} two-item transactions on unrelated keys, 10 at once vs one by one, ms per 10",
                batches * 10
            ),
            ours: Spread::of(control_conc).show(1),
            baseline: Spread::of(control_seq).show(1),
            ratio: format!("{}×", control_ratio.show(2)),
            runs: format!("{runs}, order alternated"),
            target: "(the emulator's ceiling for figure 4)".into(),
            met: "-",
        },
    ])
}
