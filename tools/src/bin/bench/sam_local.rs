//! Figure 7: the bootstraps under `sam local`.

use super::*;

/// p50 / p99 of a histogram in ms.
pub(super) fn p50_p99(h: &Histogram<u64>) -> (f64, f64) {
    (ms(h.value_at_quantile(0.5)), ms(h.value_at_quantile(0.99)))
}

/// The release bootstraps under `sam local` (sam-local/start.sh on this
/// stack) against the same handlers in the local runner.
pub(super) async fn sam_local(args: &Args, sdk: &aws_config::SdkConfig) -> Result<Vec<Row>> {
    let names = provision::provision(sdk, &Names::with_prefix(&unique("bench-s")), 30).await?;
    let stack =
        PathBuf::from(std::env::var("STACK_DIR").context("STACK_DIR (localstack/with-stack.sh)")?);
    let token = "bench-admin-token-0123456789";
    let secret = "whsec_bench_0123456789";
    let out = Command::new(&args.sam_local)
        .env("FLASHSALE_ORDERS_QUEUE_URL", &names.orders_queue_url)
        .env("FLASHSALE_TABLE", &names.table)
        .env("FLASHSALE_ADMIN_TOKEN", token)
        .env("FLASHSALE_PAYMENT_WEBHOOK_SECRET", secret)
        .env("SAM_BOOTSTRAPS", "lambda")
        .status()
        .with_context(|| format!("running {}", args.sam_local.display()))?;
    ensure!(out.success(), "{} failed", args.sam_local.display());
    let env = std::fs::read_to_string(stack.join("sam.env"))?;
    let value = |k: &str| -> Result<String> {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("export {k}=")))
            .map(str::to_owned)
            .with_context(|| format!("{k} missing from sam.env"))
    };
    let (sam_api, sam_lambda) = (value("SAM_API_URL")?, value("SAM_LAMBDA_URL")?);
    let sam_up_ms: f64 = value("SAM_UP_MS")?.parse()?;

    let cfg = runner::RunnerConfig {
        pollers: 1,
        // Only what figure 7 calls runs.
        sweep_every: Duration::from_secs(3600),
        expire_every: Duration::from_secs(3600),
        ..runner::RunnerConfig::local(config::redis_settings()?, &names, token, secret.as_bytes())
    };
    let started = Instant::now();
    let running = runner::start(cfg, sdk).await?;
    let local = Api::new(format!("http://{}", running.addr), token);
    ensure!(
        local.call("GET", "/health", &[], None).await?.status == 200,
        "runner unhealthy"
    );
    let runner_up_ms = started.elapsed().as_secs_f64() * 1000.0;

    let product = unique("bench-s");
    create_through_api(&local, &product, 10).await?;
    let sam = Api::new(sam_api, token);
    let page = format!("/api/flash-sale/products/{product}");
    let invoker = tools::invoke::Invoker::new(
        sdk,
        &tools::invoke::InvokeConfig {
            endpoint: sam_lambda,
            names: tools::invoke::Names::Template,
        },
    );
    // Warm both paths, then interleave so both see the same noise.
    for _ in 0..3 {
        sam.call("GET", &page, &[], None).await?;
        invoker
            .schedule(tools::invoke::Function::OrderExpirer)
            .await?;
    }
    let (mut http_sam, mut http_local) = (histogram()?, histogram()?);
    for _ in 0..args.sam_calls {
        for (api, h) in [(&sam, &mut http_sam), (&local, &mut http_local)] {
            let t = Instant::now();
            let a = api.call("GET", &page, &[], None).await?;
            h.record(t.elapsed().as_micros().max(1) as u64)?;
            ensure!(
                a.status == 200,
                "product page answered {}: {}",
                a.status,
                a.body
            );
        }
    }
    let (mut inv_sam, mut inv_local) = (histogram()?, histogram()?);
    for _ in 0..args.sam_calls / 4 {
        let t = Instant::now();
        invoker
            .schedule(tools::invoke::Function::OrderExpirer)
            .await?;
        inv_sam.record(t.elapsed().as_micros().max(1) as u64)?;
        let t = Instant::now();
        running.app.expirer.run().await?;
        inv_local.record(t.elapsed().as_micros().max(1) as u64)?;
    }
    running.stop().await;
    let pair = |h: &Histogram<u64>| {
        let (p50, p99) = p50_p99(h);
        format!("p50 {p50:.1} / p99 {p99:.1} ms")
    };
    let extra = |a: &Histogram<u64>, b: &Histogram<u64>| {
        format!(
            "+{:.1} ms",
            ms(a.value_at_quantile(0.5)) - ms(b.value_at_quantile(0.5))
        )
    };
    Ok(vec![
        Row {
            figure: "7. sam local start-api + start-lambda, 8 warm containers (EAGER) on vfs: ms from start to both serving, vs the local runner's start to healthy".into(),
            ours: format!("{sam_up_ms:.0}"),
            baseline: format!("{runner_up_ms:.0}"),
            ratio: format!("{:.0}×", sam_up_ms / runner_up_ms.max(1.0)),
            runs: "1".into(),
            target: "(reported)".into(),
            met: "-",
        },
        Row {
            figure: format!(
                "7. warm product page (order-status: DynamoDB + Redis), {} sequential GETs: through sam local start-api (release bootstrap in its container) vs the local runner in process",
                args.sam_calls
            ),
            ours: pair(&http_sam),
            baseline: pair(&http_local),
            ratio: extra(&http_sam, &http_local),
            runs: format!("{} sequential calls each", args.sam_calls),
            target: "(sam local's share)".into(),
            met: "-",
        },
        Row {
            figure: format!(
                "7. warm order-expirer run (nothing due: 4 index queries), {} sequential: Lambda Invoke through sam local start-lambda vs the handler in process",
                args.sam_calls / 4
            ),
            ours: pair(&inv_sam),
            baseline: pair(&inv_local),
            ratio: extra(&inv_sam, &inv_local),
            runs: format!("{} sequential calls each", args.sam_calls / 4),
            target: "(sam local's share)".into(),
            met: "-",
        },
    ])
}
