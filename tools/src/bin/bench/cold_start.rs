//! Figure 5: cold starts of the real bootstraps and their first request.

use super::*;

pub(super) const FUNCTIONS: [&str; 8] = [
    "deduct",
    "order-status",
    "admin",
    "order-consumer",
    "compensation",
    "outbox-sweeper",
    "payment-webhook",
    "order-expirer",
];

/// A fake Lambda Runtime API that hands out one invocation, then none.
pub(super) struct FakeRuntime {
    pub(super) event: std::sync::Mutex<Option<String>>,
    /// (what, when, body): `next` when an invocation is asked for,
    /// `response` / `error` when one is answered.
    pub(super) seen: tokio::sync::mpsc::UnboundedSender<(&'static str, Instant, String)>,
}

impl Routes for FakeRuntime {
    fn route(&self, req: lambda_http::Request) -> impl Future<Output = HttpResponse> + Send {
        let path = req.uri().path().to_owned();
        let body = String::from_utf8_lossy(req.body().as_ref()).into_owned();
        let now = Instant::now();
        let event = if path.ends_with("/invocation/next") {
            let _ = self.seen.send(("next", now, String::new()));
            Some(self.event.lock().unwrap_or_else(|e| e.into_inner()).take())
        } else {
            let what = if path.ends_with("/response") {
                "response"
            } else {
                "error"
            };
            let _ = self.seen.send((what, now, body));
            None
        };
        async move {
            let mut resp = lambda_http::http::Response::builder();
            match event {
                // No second invocation: the instance waits, as a warm one does.
                Some(None) => std::future::pending().await,
                Some(Some(event)) => {
                    resp = resp
                        .status(200)
                        .header("Lambda-Runtime-Aws-Request-Id", "bench-invocation-1")
                        .header("Lambda-Runtime-Deadline-Ms", "9999999999999")
                        .header(
                            "Lambda-Runtime-Invoked-Function-Arn",
                            "arn:aws:lambda:eu-west-1:123456789012:function:bench",
                        )
                        .header(
                            "Lambda-Runtime-Trace-Id",
                            "Root=1-00000000-000000000000000000000000",
                        );
                    resp.body(lambda_http::Body::from(event))
                }
                None => resp.status(202).body(lambda_http::Body::Empty),
            }
            .unwrap_or_default()
        }
    }
}

/// Starts `bootstrap` against a [`FakeRuntime`]: the time from process
/// start to its first `next` (init) and, given an `event`, from handing it
/// out to its answer, with the answer.
pub(super) async fn fresh_instance(
    bootstrap: &Path,
    function: &str,
    env: &[(String, String)],
    event: Option<String>,
) -> Result<(Duration, Option<(Duration, String)>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (seen, mut saw) = tokio::sync::mpsc::unbounded_channel();
    let serving = event.is_some();
    let runtime = Arc::new(FakeRuntime {
        event: std::sync::Mutex::new(event),
        seen,
    });
    let (stop, rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(runner::serve(listener, runtime, rx));
    let started = Instant::now();
    let mut child = tokio::process::Command::new(bootstrap)
        .env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", function)
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "bench")
        .env("AWS_LAMBDA_LOG_GROUP_NAME", "bench")
        .env("AWS_REGION", "eu-west-1")
        .env("AWS_ACCESS_KEY_ID", "bench")
        .env("AWS_SECRET_ACCESS_KEY", "bench")
        .env("FLASHSALE_ORDERS_QUEUE_URL", "http://127.0.0.1:1/q")
        .env("FLASHSALE_ADMIN_TOKEN", "bench-token-0123456789")
        .env(
            "FLASHSALE_PAYMENT_WEBHOOK_SECRET",
            "bench-webhook-secret-0123",
        )
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bootstrap.display()))?;
    let result = tokio::time::timeout(Duration::from_secs(20), async {
        let mut init = None;
        while let Some((what, at, body)) = saw.recv().await {
            match (what, init) {
                ("next", None) if !serving => return Ok((at - started, None)),
                ("next", None) => init = Some(at),
                ("response" | "error", Some(handed)) => {
                    return Ok((handed - started, Some((at - handed, body))));
                }
                _ => {}
            }
        }
        bail!("the fake runtime stopped")
    })
    .await
    .with_context(|| format!("{function} never asked for or answered an invocation"));
    let _ = child.kill().await;
    let _ = stop.send(true);
    server.abort();
    result?
}

/// The time from process start to the first `next`, with no backends to
/// reach (so no init warm-up: figure 5b measures that against the stack).
pub(super) async fn init_time(bootstrap: &Path, function: &str) -> Result<Duration> {
    let no_warm_up = [("FLASHSALE_INIT_WARM_MS".to_owned(), "0".to_owned())];
    Ok(fresh_instance(bootstrap, function, &no_warm_up, None)
        .await?
        .0)
}

/// Figure 5b: a fresh deduct instance's init and first buy, against the
/// real local stack, with the init warm-up (Redis connected, buy scripts
/// loaded, SQS and DynamoDB clients warmed) against without it.
pub(super) async fn first_request(
    args: &Args,
    gate: &RedisGate,
    sdk: &aws_config::SdkConfig,
) -> Result<Vec<Row>> {
    let bootstrap = args.lambda_dir.join("deduct").join("bootstrap");
    let names = provision::provision(sdk, &Names::with_prefix(&unique("bench")), 30).await?;
    let p = unique("bench-f");
    gate.warm(&bench_product(&p, 1_000_000), false, 1_000_000, 0)
        .await?;
    let mut env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("FLASHSALE_") || k.starts_with("AWS_ENDPOINT_URL"))
        .collect();
    env.push((
        "FLASHSALE_ORDERS_QUEUE_URL".into(),
        names.orders_queue_url.clone(),
    ));
    env.push(("FLASHSALE_TABLE".into(), names.table.clone()));
    let template: serde_json::Value =
        serde_json::from_str(include_str!("../../../../events/deduct-buy.json"))?;
    let (mut init_on, mut init_off, mut first_on, mut first_off) = (vec![], vec![], vec![], vec![]);
    for i in 0..args.starts {
        for warm in if i % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        } {
            let mut event = template.clone();
            event["body"] = format!(r#"{{"product_id":"{p}","quantity":1}}"#).into();
            event["headers"]["idempotency-key"] = format!("first-{i}-{warm}").into();
            event["requestContext"]["authorizer"]["jwt"]["claims"]["sub"] =
                format!("first-{i}-{warm}").into();
            let mut env = env.clone();
            env.push((
                "FLASHSALE_INIT_WARM_MS".into(),
                if warm { "1500" } else { "0" }.into(),
            ));
            let (init, first) =
                fresh_instance(&bootstrap, "deduct", &env, Some(event.to_string())).await?;
            let (took, answer) = first.context("no answer")?;
            ensure!(
                answer.contains("202"),
                "the first buy was not admitted: {answer}"
            );
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            if warm {
                (&mut init_on, &mut first_on)
            } else {
                (&mut init_off, &mut first_off)
            }
            .0
            .push(ms(init));
            if warm { &mut first_on } else { &mut first_off }.push(ms(took));
        }
    }
    let (first_on, first_off) = (Spread::of(first_on), Spread::of(first_off));
    Ok(vec![
        Row {
            figure: "5b. deduct, fresh instance on the local stack: first buy, ms from the event handed out to its 202, with the init warm-up vs connecting on first use (FLASHSALE_INIT_WARM_MS=0)".into(),
            ours: first_on.show(2),
            baseline: first_off.show(2),
            ratio: format!("{:.2}", first_on.median() / first_off.median()),
            runs: format!("{} starts each, alternating", args.starts),
            target: "(reported; no TLS or AUTH locally: AWS adds both to the baseline)".into(),
            met: "-",
        },
        Row {
            figure: "5b. the same instances: init, ms from process start to the first invocation/next".into(),
            ours: Spread::of(init_on).show(1),
            baseline: Spread::of(init_off).show(1),
            ratio: "-".into(),
            runs: format!("{} starts each, alternating", args.starts),
            target: "(the warm-up moves the connecting into init)".into(),
            met: "-",
        },
    ])
}

pub(super) async fn cold_start(args: &Args) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for f in FUNCTIONS {
        let bootstrap = args.lambda_dir.join(f).join("bootstrap");
        if !bootstrap.exists() {
            bail!("{} is missing: run `make build` first", bootstrap.display());
        }
        let size = std::fs::metadata(&bootstrap)?.len() as f64 / 1_048_576.0;
        let arm = args
            .arm64_dir
            .as_ref()
            .and_then(|d| std::fs::metadata(d.join(f).join("bootstrap")).ok())
            .map(|m| m.len() as f64 / 1_048_576.0);
        let mut times = Vec::new();
        for _ in 0..args.starts.max(1) {
            times.push(init_time(&bootstrap, f).await?.as_secs_f64() * 1000.0);
        }
        let median = Spread::of(times).median();
        rows.push(Row {
            figure: format!("5. {f}: stripped release binary, MB (arm64, deployed / x86_64)"),
            ours: format!(
                "{} / {size:.1}",
                arm.map_or("-".into(), |a| format!("{a:.1}"))
            ),
            baseline: "-".into(),
            ratio: "-".into(),
            runs: "-".into(),
            target: "< 8 MB".into(),
            met: verdict(arm.unwrap_or(size) < 8.0),
        });
        rows.push(Row {
            figure: format!(
                "5. {f}: init, process start to first invocation/next, median of {} (ms)",
                args.starts
            ),
            ours: format!("{median:.1}"),
            baseline: "-".into(),
            ratio: "-".into(),
            runs: format!("{} starts", args.starts),
            target: "< 25 ms".into(),
            met: verdict(median < 25.0),
        });
    }
    Ok(rows)
}
