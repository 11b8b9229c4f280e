//! Figure 10: a contended sale: how long admitted units stayed neither placed nor on sale.

use super::*;

/// What a contended sale did to its admitted units.
#[derive(Default)]
pub(super) struct Unplaced {
    /// The longest an admitted unit stayed neither placed nor back on sale.
    pub(super) longest: Duration,
    /// Deliveries after the first (each a receive spent).
    pub(super) redelivered: usize,
    /// Orders still unplaced after every receive: compensated, their units
    /// back on sale only then.
    pub(super) compensated: usize,
}

/// Figure 10: how long an admitted unit stays neither placed nor back on
/// sale when its ledger is contended (issue 18, hole B). 40 orders at once
/// for a 40-unit product on 4 shards, every transaction in flight 100 ms
/// (tools::capacity), against the same sale with no contention. SQS is
/// modelled, not waited for: a failed delivery comes back after the
/// template's visibility timeout (200 s), and an order failing its 5th is
/// compensated.
pub(super) async fn contended_sale(
    args: &Args,
    gate: &RedisGate,
    sdk: &aws_config::SdkConfig,
) -> Result<Vec<Row>> {
    use tools::capacity::{self, Capacity};
    const VISIBILITY: Duration = Duration::from_secs(200);
    const RECEIVES: u32 = 5;
    const HOLD: Duration = Duration::from_millis(100);
    let names = provision::provision(sdk, &Names::with_prefix(&unique("bench")), 30).await?;
    let (limited, refusals) = capacity::limited(
        sdk,
        Capacity {
            wcu_per_item: 1_000.0,
            hold: HOLD,
        },
    );
    let sale = async |contended: bool| -> Result<Unplaced> {
        let sdk = if contended { &limited } else { sdk };
        let store = DynamoStore::new(sdk, &names.table);
        let mut product = bench_product(&unique("bench-contended"), 40);
        product.ledger_shards = 4;
        store.create_product(&product).await?;
        gate.warm(&product, false, 40, 0).await?;
        let pid = product.product_id.clone();
        let mut waiting: Vec<OrderMessage> = (0..40)
            .map(|i| Ok(OrderMessage::new(&purchase(&pid, i)?, 1, 0)))
            .collect::<Result<_>>()?;
        let consumer = Consumer {
            gate: gate.clone(),
            store,
            concurrency: 10,
            faults: FaultPlan::none(),
            terms: shared::lifecycle::Terms::system(),
        };
        let mut out = Unplaced::default();
        for receive in 1..=RECEIVES {
            let delivery = Instant::now();
            let failed = deliver(&consumer, &waiting).await?;
            if failed.len() < waiting.len() {
                let waited = VISIBILITY * (receive - 1) + delivery.elapsed();
                out.longest = out.longest.max(waited);
            }
            waiting = failed;
            if waiting.is_empty() {
                break;
            }
            if receive < RECEIVES {
                out.redelivered += waiting.len();
            }
        }
        // Past its last receive an order waits one more visibility timeout
        // before SQS moves it to the DLQ, whose compensation restocks it.
        out.compensated = waiting.len();
        if out.compensated > 0 {
            out.longest = out.longest.max(VISIBILITY * RECEIVES);
        }
        Ok(out)
    };
    let runs = args.runs.min(3);
    let (mut worst, mut calm) = (Unplaced::default(), Unplaced::default());
    for _ in 0..runs {
        for (contended, into) in [(true, &mut worst), (false, &mut calm)] {
            let u = sale(contended).await?;
            into.longest = into.longest.max(u.longest);
            into.redelivered += u.redelivered;
            into.compensated += u.compensated;
        }
    }
    let (passed, conflicts, throttled) = refusals.snapshot();
    let show = |u: &Unplaced| {
        format!(
            "{:.2} s longest; {} redelivered, {} compensated",
            u.longest.as_secs_f64(),
            u.redelivered,
            u.compensated
        )
    };
    Ok(vec![Row {
        figure: format!(
            "10. contended sale: 40 orders at once for 40 units on 4 ledger shards, each transaction in flight {} ms \
             ({passed} writes let through, {conflicts} cancelled as conflicts, {throttled} throttled): the longest an \
             admitted unit stayed neither placed nor on sale (+ 200 s a redelivery, as deployed), worst of the runs",
            HOLD.as_millis()
        ),
        ours: show(&worst),
        baseline: format!("{} (no contention)", show(&calm)),
        ratio: format!(
            "{:.1}",
            worst.longest.as_secs_f64() / calm.longest.as_secs_f64().max(1e-3)
        ),
        runs: format!("{runs}, worst"),
        target: "no receive spent, none compensated".into(),
        met: verdict(worst.redelivered == 0 && worst.compensated == 0),
    }])
}
