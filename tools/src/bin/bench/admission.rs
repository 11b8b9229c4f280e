//! Figure 1: the admission script, against redis-benchmark.

use super::*;

pub(super) static BUYERS: AtomicUsize = AtomicUsize::new(0);

/// `n` admissions over `connections` gates (each its own connection), with
/// `in_flight` callers per connection; ops/s.
pub(super) async fn admissions_per_s(
    gates: &[RedisGate],
    in_flight: usize,
    product: &ProductId,
    n: usize,
) -> Result<f64> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for gate in gates {
        for _ in 0..in_flight {
            let (gate, next, p) = (gate.clone(), next.clone(), product.clone());
            tasks.spawn(async move {
                loop {
                    if next.fetch_add(1, Ordering::Relaxed) >= n {
                        return Ok::<_, anyhow::Error>(());
                    }
                    // A new buyer every call, across runs of one product.
                    let buyer = BUYERS.fetch_add(1, Ordering::Relaxed);
                    let a = gate.admit(&purchase(&p, buyer)?).await?;
                    ensure!(
                        matches!(a, Admission::Admitted { .. }),
                        "bench admission refused: {a:?}"
                    );
                }
            });
        }
    }
    while let Some(t) = tasks.join_next().await {
        t??;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// The same script file, keys and argument pattern, by redis-benchmark over
/// `connections` connections pipelining `pipeline` calls each; ops/s.
pub(super) async fn redis_benchmark(
    gate: &RedisGate,
    product: &ProductId,
    connections: usize,
    pipeline: usize,
    n: usize,
) -> Result<f64> {
    let sha: String = gate
        .command(redis::cmd("SCRIPT").arg("LOAD").arg(ADMIT_SCRIPT))
        .await?;
    let k = gate.keys(product);
    let port = std::env::var("REDIS_PORT").context("REDIS_PORT (from the stack's env)")?;
    // One request key per call, as the adapter's fresh ids give: the
    // script answers an existing request instead of admitting it again.
    let template = RequestId::new(product);
    let req_key = k.req(&template).replace(template.as_str(), "__rand_int__");
    let request_id = format!("{product}.__rand_int__");
    // The buyer's rate limiter as the adapter passes it (no client IP here).
    let buyer_limiter =
        k.admission(&purchase(product, 0)?)[6].replace("rl:u:b0", "rl:u:u__rand_int__");
    let ip_limiter = format!("{}-unused", k.stock());
    let limits = config::rate_limits()?;
    let (buyer_spec, ip_spec) = (
        shared::domain::RateLimit::spec(limits.buyer),
        shared::domain::RateLimit::spec(limits.ip),
    );
    let (c, p, n_s) = (connections.to_string(), pipeline.to_string(), n.to_string());
    let before = gate.stats(product).await?.map_or(0, |s| s.admitted);
    let cmd_args = [
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-c",
        &c,
        "-P",
        &p,
        "-n",
        &n_s,
        "-r",
        "1000000000",
        "--csv",
        "EVALSHA",
        &sha,
        "10",
        &k.meta(),
        &k.stock(),
        &k.buyers(),
        &req_key,
        &k.pending(),
        &k.stats(),
        &buyer_limiter,
        &ip_limiter,
        &k.deny(),
        &ip_limiter,
        &request_id,
        "u__rand_int__",
        "1",
        "0",
        "604800",
        &buyer_spec,
        &ip_spec,
        "0",
    ];
    // The stack's Redis has a password (REDISCLI_AUTH, from its env).
    let auth: Vec<String> = std::env::var("REDISCLI_AUTH")
        .map(|pw| vec!["-a".to_owned(), pw])
        .unwrap_or_default();
    let out = Command::new("redis-benchmark")
        .args(&auth)
        .args(cmd_args)
        .output()
        .context("running redis-benchmark (apt install redis-tools)")?;
    ensure!(
        out.status.success(),
        "redis-benchmark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = String::from_utf8_lossy(&out.stdout);
    let raw: f64 = csv
        .lines()
        .find(|l| l.starts_with("\"EVALSHA"))
        .and_then(|l| l.split("\",\"").nth(1))
        .and_then(|v| v.trim_matches('"').parse().ok())
        .with_context(|| format!("no rps in redis-benchmark's output: {csv}"))?;
    let admitted = gate.stats(product).await?.map_or(0, |s| s.admitted) - before;
    ensure!(
        admitted as f64 > 0.95 * n as f64,
        "redis-benchmark's calls were not admissions ({admitted} of {n} admitted): {csv}"
    );
    Ok(raw)
}

/// Figure 1: the adapter against redis-benchmark at equal connections and
/// equal calls in flight, several runs each, alternating.
pub(super) async fn admission(args: &Args, gate: &RedisGate) -> Result<Vec<Row>> {
    let warmed = async |prefix: &str| -> Result<ProductId> {
        let p = ProductId::parse(unique(prefix))?;
        gate.warm(&bench_product(p.as_str(), 50_000_000), false, 50_000_000, 0)
            .await?;
        Ok(p)
    };
    let ours_product = warmed("bench-a").await?;
    let settings = config::redis_settings()?;
    let n_conn = args.concurrency;
    // (label, connections, calls in flight per connection, calls per run)
    let setups = [
        (
            "1 connection × 1 call in flight (as one Lambda instance runs it)",
            1,
            1,
            args.admissions / 5,
        ),
        (
            &*format!("{n_conn} connections × 1 call in flight each (as {n_conn} instances)"),
            n_conn,
            1,
            args.admissions,
        ),
        (
            &*format!(
                "1 connection × {n_conn} calls in flight, pipelined (the local runner; no Lambda instance does this)"
            ),
            1,
            n_conn,
            args.admissions,
        ),
    ];
    let mut rows = Vec::new();
    for (k, (label, connections, in_flight, n)) in setups.into_iter().enumerate() {
        let gates: Vec<RedisGate> = (0..connections)
            .map(|_| RedisGate::new(settings.clone()))
            .collect();
        for g in &gates {
            g.prepare().await?;
        }
        let (mut ours, mut raw) = (Vec::new(), Vec::new());
        for _ in 0..args.runs {
            ours.push(admissions_per_s(&gates, in_flight, &ours_product, n).await?);
            // A product per run: redis-benchmark's random ids can repeat
            // across its processes, and a repeat is a replay, not an
            // admission.
            let raw_product = warmed("bench-r").await?;
            raw.push(redis_benchmark(gate, &raw_product, connections, in_flight, n).await?);
        }
        let ratio = Spread::ratios(&ours, &raw);
        let like_for_like = k < 2;
        rows.push(Row {
            figure: format!(
                "1{}. admission script, ops/s, {label}: RedisGate vs redis-benchmark EVALSHA alike",
                ['a', 'b', 'c'][k]
            ),
            ours: Spread::of(ours).show(0),
            baseline: Spread::of(raw).show(0),
            ratio: ratio.show(2),
            runs: format!("{} × {n} calls, alternating", args.runs),
            target: if like_for_like {
                "≥ 0.8".into()
            } else {
                "(reported)".into()
            },
            met: if like_for_like {
                verdict(ratio.median() >= 0.8)
            } else {
                "-"
            },
        });
    }
    Ok(rows)
}
