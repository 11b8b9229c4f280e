use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use shared::aws::{self, DynamoStore};
use shared::domain::ProductId;
use shared::faults::FaultPlan;
use shared::redis::RedisGate;
use shared::{config, telemetry};
use tools::{
    audit, capacity, cfnlocal, client::Api, demo, gateway, invoke, loadtest, provision, queues,
    runner, samlocal,
};

/// flashsale's local tools. AWS endpoints come from the SDK's environment
/// (`AWS_ENDPOINT_URL_SQS`, `AWS_ENDPOINT_URL_DYNAMODB`, `AWS_REGION`), Redis
/// from `FLASHSALE_REDIS_URL`, queues and table from what `provision` prints.
#[derive(Parser)]
#[command(name = "flashsale", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API, consume the orders queue and its DLQ, and run the
    /// outbox sweeper, all with the Lambda handlers.
    Serve {
        #[arg(long, env = "FLASHSALE_HTTP_ADDR", default_value = "127.0.0.1:3000")]
        addr: SocketAddr,
        #[arg(long, env = "FLASHSALE_POLLERS", default_value_t = 4)]
        pollers: usize,
        /// Messages per batch (the event source mapping's BatchSize, 1..=10).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(i32).range(1..=10))]
        batch_size: i32,
        /// Seconds to gather a batch (MaximumBatchingWindowInSeconds).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=20))]
        batching_window_secs: u64,
        /// Send the queues' batches and the schedules' runs to the real
        /// functions at this Lambda endpoint (`sam local start-lambda`,
        /// `cargo lambda watch`) instead of the handlers in this process.
        #[arg(long, env = "FLASHSALE_INVOKE_URL")]
        invoke: Option<String>,
        /// How that endpoint names the functions.
        #[arg(long, value_enum, default_value = "template")]
        invoke_names: invoke::Names,
        /// Also serve the local edge here (issue 32): the edge function
        /// (node, edge/local/server.mjs) in front of this runner, a local
        /// KeyValueStore, and the edge publisher writing it.
        #[arg(long, env = "FLASHSALE_EDGE_ADDR")]
        edge: Option<SocketAddr>,
        /// How long the local store's writes take to reach the edge.
        #[arg(long, env = "FLASHSALE_KVS_PROPAGATION_MS", default_value_t = 1000)]
        kvs_propagation_ms: u64,
    },
    /// The HTTP API for functions deployed into LocalStack (which has no
    /// API Gateway v2): template.yaml's routes, each invoked as API Gateway
    /// would (localstack/deploy.sh writes `--targets`; the Lambda endpoint
    /// is AWS_ENDPOINT_URL's).
    Gateway {
        #[arg(long, env = "FLASHSALE_HTTP_ADDR", default_value = "127.0.0.1:3000")]
        addr: SocketAddr,
        /// JSON list of {method, path, function, name}.
        #[arg(long)]
        targets: std::path::PathBuf,
        /// Invocations in flight per function (LocalStack runs a container
        /// for each).
        #[arg(long, env = "FLASHSALE_GATEWAY_CONCURRENCY", default_value_t = 4)]
        concurrency: usize,
        /// Also serve the local edge here, in front of the gateway, with
        /// its store and the publisher in this process (LocalStack cannot
        /// run CloudFront, so the template's publisher is not deployed).
        #[arg(long, env = "FLASHSALE_EDGE_ADDR")]
        edge: Option<SocketAddr>,
        #[arg(long, env = "FLASHSALE_KVS_PROPAGATION_MS", default_value_t = 1000)]
        kvs_propagation_ms: u64,
    },
    /// Create the queues and the table (idempotent); prints their settings.
    Provision {
        #[arg(long, default_value = "flashsale")]
        prefix: String,
        /// Seconds a received message stays hidden (retry delay after a failure).
        #[arg(long, default_value_t = provision::DEFAULT_VISIBILITY_TIMEOUT)]
        visibility_timeout: u32,
    },
    /// A flash-sale load against an API (the local runner by default): a
    /// report of throughput and latency per response code, then the audit.
    Loadtest(LoadArgs),
    /// A crowd of ten times what the origin takes (`--origin-rate`, held by
    /// a throttle as API Gateway's) meets a sale through the waiting room,
    /// then the same crowd meets one without it (issue 33, figure 15):
    /// origin load, 429s, the admitted rate, fairness (Kendall's tau), the
    /// bots' share, the wait estimate's error, the buy's p99, the books.
    /// Exits 1 if any unit was oversold or the books do not balance.
    Crowd {
        /// Buys a second the origin's throttle lets through.
        #[arg(long, default_value_t = 20.0)]
        origin_rate: f64,
        /// Seconds the crowd arrives over, at ten times the origin's rate.
        #[arg(long, default_value_t = 4.0)]
        crowd_secs: f64,
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Audit a product's books in Redis and DynamoDB; exits 1 if they do not balance.
    Reconcile {
        #[arg(long)]
        product: String,
    },
    /// A running sale, live in the terminal: per product admitted, placed,
    /// paid, stock left and their rates, refusals by reason, latency per
    /// handler, queue depths and the oldest pending request. q quits.
    Top {
        /// The products to show (repeatable); every warmed one by default.
        #[arg(long)]
        product: Vec<String>,
        /// Where refusals and latencies come from: a local runner's URL
        /// (its /metrics), or `cloudwatch` for a deployed stack (the
        /// functions' metrics over the last 5 minutes); none leaves those
        /// panes empty.
        #[arg(long, env = "FLASHSALE_API_URL")]
        metrics: Option<String>,
        #[arg(long, default_value_t = 1000)]
        refresh_ms: u64,
    },
    /// List a product's payments recorded as due for refund (late, for an
    /// order no longer payable, a second payment, or the wrong amount).
    Refunds {
        #[arg(long)]
        product: String,
    },
    /// List the messages parked in the compensation DLQ and why.
    Parked {
        #[arg(long, env = "FLASHSALE_COMPENSATION_DLQ_URL")]
        queue: String,
        #[arg(long, default_value_t = 100)]
        max: usize,
    },
    /// Start a Redis Cluster on loopback (3 primaries + 3 replicas) that
    /// outlives this command; prints the exports that point the runner at it.
    /// Its PID files land in `--dir` (localstack/stop.sh stops them).
    ClusterUp {
        #[arg(long, env = "STACK_DIR")]
        dir: std::path::PathBuf,
    },
    /// Write what `sam local` needs to run the real bootstraps on this
    /// stack into `--out`: bootstraps/, api.json (start-api), events.json
    /// (start-lambda) and env.json (`--env-file` with its `${VAR}`s filled
    /// from the environment).
    SamLocalFiles {
        #[arg(long, default_value = "template.yaml")]
        template: std::path::PathBuf,
        #[arg(long, default_value = "sam-local/env.json")]
        env_file: std::path::PathBuf,
        /// The built binaries, laid out as `--layout` says; copied to
        /// `<out>/bootstraps/<binary>/bootstrap`.
        #[arg(long)]
        binaries: std::path::PathBuf,
        #[arg(long, value_enum)]
        layout: samlocal::Layout,
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// template.yaml as LocalStack's CloudFormation deploys it, and what
    /// localstack/deploy.sh does beside it (tools::cfnlocal): writes
    /// template.json, table.json, ttl, routes.json and functions (logical id,
    /// binary and reserved concurrency or `-`, per line) to `--out`.
    LocalstackTemplate {
        #[arg(long, default_value = "template.yaml")]
        template: std::path::PathBuf,
        /// The S3 bucket holding `<binary>.zip` per function.
        #[arg(long)]
        bucket: String,
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// The placement-failure drill (tools::demo::compensation_drill): buys
    /// one unit of a fresh product whose placements the deployed consumer
    /// fails (`FLASHSALE_FAULTS=place.fail_product:<product>`), and waits
    /// until the order is compensated and the unit back on sale.
    CompensationDrill {
        #[arg(long, default_value = "http://127.0.0.1:3000")]
        base_url: String,
        #[arg(long, env = "FLASHSALE_ADMIN_TOKEN")]
        admin_token: String,
        #[arg(long)]
        product: String,
        #[arg(long, default_value_t = 180)]
        timeout_secs: u64,
    },
    /// Move parked messages back to the compensation queue (StartMessageMoveTask).
    Redrive {
        #[arg(long, env = "FLASHSALE_COMPENSATION_DLQ_URL")]
        from: String,
        #[arg(long, env = "FLASHSALE_ORDERS_DLQ_URL")]
        to: String,
    },
}

#[derive(clap::Args)]
struct LoadArgs {
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    base_url: String,
    #[arg(long, env = "FLASHSALE_ADMIN_TOKEN")]
    admin_token: String,
    /// An existing, warmed product; by default a fresh one is created and warmed.
    #[arg(long)]
    product: Option<String>,
    /// Units of the fresh product.
    #[arg(long, default_value_t = 100)]
    stock: u32,
    #[arg(long, default_value_t = 1000)]
    buyers: usize,
    #[arg(long, default_value_t = 2)]
    requests_per_buyer: usize,
    /// Share of buyers whose later requests repeat their first Idempotency-Key.
    #[arg(long, default_value_t = 0.5)]
    repeat_share: f64,
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Milliseconds over which the workers of each wave start.
    #[arg(long, default_value_t = 0)]
    ramp_ms: u64,
    /// Chaos: Redis forgets this many stock decrements between waves.
    #[arg(long, default_value_t = 0)]
    lose_decrements: u32,
    /// Chaos: this long into the sale, the product's primary in the Redis
    /// Cluster of `FLASHSALE_REDIS_CLUSTER_DIR` fails over to a replica that
    /// missed its last writes (see tools::cluster); not before
    /// `--failover-after-admitted` admissions. A failover that loses no
    /// acknowledged write fails the run: it proved nothing.
    #[arg(long)]
    failover_after_ms: Option<u64>,
    /// Chaos: the failover's replica stops receiving writes only once the
    /// sale admitted this many buyers, so it misses admissions still being
    /// acknowledged (a rush that sells out first leaves it nothing to miss).
    #[arg(long, default_value_t = 0)]
    failover_after_admitted: i64,
    /// Write the report as JSON here.
    #[arg(long)]
    report: Option<std::path::PathBuf>,
    /// Draw throughput and p99 latency over time into this PNG.
    #[arg(long)]
    chart: Option<std::path::PathBuf>,
    /// Skip the audit (for an API whose Redis and DynamoDB are out of reach).
    #[arg(long)]
    no_audit: bool,
    /// End with one SUMMARY line (the demo's).
    #[arg(long)]
    summary: bool,
    /// Payment window of the fresh product.
    #[arg(long, default_value_t = 900)]
    payment_window_secs: u32,
    /// Ledger shards of the fresh product (docs/architecture.md, "Ledger
    /// shards").
    #[arg(long, default_value_t = 1)]
    ledger_shards: u16,
    /// Redis stock buckets of the fresh product (docs/operations.md, "Stock
    /// buckets").
    #[arg(long, default_value_t = 1)]
    stock_buckets: u16,
    /// After the rush, winners pay (signed webhooks, secret from
    /// FLASHSALE_PAYMENT_WEBHOOK_SECRET), cancel or walk away, and the units
    /// that come back are bought by waves of the buyers who lost.
    #[arg(long)]
    after_sale: bool,
    /// How long the waves may go on.
    #[arg(long, default_value_t = 120)]
    after_sale_secs: u64,
    /// Chaos: pay within this many ms of the deadline, either side.
    #[arg(long)]
    pay_near_deadline_ms: Option<i64>,
    /// Seed of the buyers' choices.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

async fn loadtest(sdk: &aws_config::SdkConfig, a: LoadArgs) -> Result<ExitCode> {
    let api = Api::new(a.base_url, a.admin_token);
    let product = match a.product {
        Some(p) => p,
        None => {
            let p = format!("sale-{}", time::OffsetDateTime::now_utc().unix_timestamp());
            demo::create_and_warm_bucketed(
                &api,
                &p,
                a.stock,
                1,
                a.payment_window_secs,
                a.ledger_shards,
                a.stock_buckets,
            )
            .await?;
            p
        }
    };
    let spec = loadtest::LoadSpec {
        product: product.clone(),
        buyers: a.buyers,
        requests_per_buyer: a.requests_per_buyer.max(1),
        repeat_share: a.repeat_share,
        concurrency: a.concurrency,
        ramp: Duration::from_millis(a.ramp_ms),
        progress: true,
    };
    let gate = (!a.no_audit || a.lose_decrements > 0)
        .then(|| stores(sdk))
        .transpose()?;
    let drill = match a.failover_after_ms {
        Some(ms) => {
            let dir = std::env::var("FLASHSALE_REDIS_CLUSTER_DIR").context(
                "--failover-after-ms needs FLASHSALE_REDIS_CLUSTER_DIR (flashsale cluster-up)",
            )?;
            let gate = RedisGate::new(config::redis_settings()?);
            let keys = gate.keys(&ProductId::parse(product.as_str())?);
            let after_admitted = a.failover_after_admitted;
            Some(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                let admitted = redis::cmd("HGET")
                    .arg(keys.stats())
                    .arg("admitted")
                    .to_owned();
                while gate
                    .command::<Option<i64>>(&admitted)
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or(0)
                    < after_admitted
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                tokio::task::spawn_blocking(move || {
                    demo::failover(std::path::Path::new(&dir), &keys)
                })
                .await?
            }))
        }
        None => None,
    };
    let (run, report) = demo::sale(
        &api,
        &spec,
        gate.as_ref().map(|(g, _)| g),
        a.lose_decrements,
    )
    .await?;
    let drill = match drill {
        Some(task) => Some(task.await??),
        None => None,
    };
    eprint!("{}", report.table());
    if let Some(path) = &a.report {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
        eprintln!("report: {}", path.display());
    }
    if let Some(path) = &a.chart {
        let title = format!(
            "flashsale load test: {} requests, {} workers",
            report.requests, a.concurrency
        );
        tools::chart::draw(path, &title, &loadtest::timeline(&run, 40)?)?;
        eprintln!("chart: {}", path.display());
    }
    let after_sale = if a.after_sale {
        let secret = config::payment_webhook_secret()?;
        let winners = report.admitted.clone();
        let won: std::collections::HashSet<&str> =
            winners.iter().map(|(u, _)| u.as_str()).collect();
        let losers: Vec<String> = (0..a.buyers)
            .map(|b| format!("buyer-{b}"))
            .filter(|u| !won.contains(u.as_str()))
            .collect();
        let mut driver = tools::aftersale::AfterSale {
            api: &api,
            product: &product,
            secret: &secret,
            price: demo::DEMO_PRICE,
            mix: tools::aftersale::Mix {
                near_deadline_ms: a.pay_near_deadline_ms,
                ..tools::aftersale::Mix::default()
            },
            rng: fastrand::Rng::with_seed(a.seed),
        };
        let tally = driver
            .run(winners, losers, Duration::from_secs(a.after_sale_secs))
            .await?;
        eprintln!("after the sale: {tally:?}");
        Some(tally)
    } else {
        None
    };
    let Some((gate, store)) = gate.filter(|_| !a.no_audit) else {
        return Ok(ExitCode::SUCCESS);
    };
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let queues = [config::orders_queue_url()?, config::orders_dlq_url()?];
    let queues: Vec<&str> = queues.iter().map(String::as_str).collect();
    let pid = ProductId::parse(product.as_str())?;
    demo::wait_settled(&gate, Some(&sqs), &queues, &pid, Duration::from_secs(300)).await?;
    let books = if after_sale.is_some() {
        demo::wait_reservations_closed(&gate, &store, &pid, Duration::from_secs(120)).await?
    } else {
        audit::audit(&gate, &store, &pid).await?
    };
    for problem in books.problems() {
        eprintln!("unbalanced: {problem}");
    }
    // After the lifecycle every unit is paid or back on sale, and every
    // payment the provider made is a paid order or owed back.
    let closed = after_sale.as_ref().is_none_or(|t| {
        let payments_accounted = t.payments_decided as i64 == books.paid + books.refund_due;
        if !payments_accounted {
            eprintln!(
                "unbalanced: {} payments answered, {} paid + {} refund_due recorded",
                t.payments_decided, books.paid, books.refund_due
            );
        }
        books.open == 0
            && books.paid_units + books.stock_left == books.stock_total
            && payments_accounted
    });
    let lost_nothing = drill.as_ref().is_some_and(|d| d.lost_writes == 0);
    if lost_nothing {
        eprintln!(
            "the failover lost no acknowledged write, so it proved nothing: its replica stopped receiving writes after the last admission (start it earlier with a lower --failover-after-admitted or --failover-after-ms)"
        );
    }
    let ok = books.balanced() && closed && report.replays_mismatched == 0 && !lost_nothing;
    if a.summary {
        let faults = demo::faults_injected(&api).await?;
        let failover = drill.map_or(String::new(), |d| {
            eprintln!("failover: promoted in {:?}", d.promoted_in);
            format!(
                " failovers=1 lost_writes={} stranded={}",
                d.lost_writes,
                books.stock_total - books.placed_units - books.stock_left
            )
        });
        let edge = demo::edge_stats(&api).await;
        println!(
            "SUMMARY product={product} buyers={} requests={} {books} faults_injected={faults}{failover} {edge} balanced={}",
            a.buyers,
            report.requests,
            yes_no(ok)
        );
    } else {
        println!("AUDIT product={product} {books} balanced={}", yes_no(ok));
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let sdk = aws::load_sdk_config().await;
    // Benches and chaos runs: DynamoDB's per-item limits, which the
    // emulator does not have (tools::capacity).
    let sdk = match capacity::Capacity::from_env()? {
        Some(limits) => {
            eprintln!("DynamoDB calls limited as on AWS, scaled: {limits:?}");
            capacity::limited(&sdk, limits).0
        }
        None => sdk,
    };
    match cli.command {
        Command::Serve {
            addr,
            pollers,
            batch_size,
            batching_window_secs,
            invoke,
            invoke_names,
            edge,
            kvs_propagation_ms,
        } => {
            telemetry::init();
            deduct::REFUSALS_LOGGED.set_every(config::refusal_log_every()?);
            let cfg = runner::RunnerConfig {
                http_addr: addr,
                redis: config::redis_settings()?,
                table: config::table_name(),
                orders_queue_url: config::orders_queue_url()?,
                orders_dlq_url: config::orders_dlq_url()?,
                admin_token: config::admin_token()?,
                insecure_user_from_body: config::insecure_user_from_body(),
                pollers,
                consumer_concurrency: config::consumer_concurrency()?,
                wait_time_secs: 5,
                sweep_every: config::sweep_every()?,
                sweep_after_ms: config::sweep_after()?.as_millis() as i64,
                resend_after_ms: config::resend_after()?.as_millis() as i64,
                faults: FaultPlan::from_env()?,
                sold_out_cache: config::sold_out_cache()?,
                live_products: config::live_products()?,
                kill_switch_cache: config::kill_switch_cache()?,
                webhook_secret: config::payment_webhook_secret().ok(),
                expire_every: config::expire_every()?,
                expiry_batch: config::expiry_batch()?,
                batch_size,
                batching_window: Duration::from_secs(batching_window_secs),
                invoke: invoke.map(|endpoint| invoke::InvokeConfig {
                    endpoint,
                    names: invoke_names,
                }),
                send_linger: send_linger()?,
                edge: edge.map(|_| edge_config(kvs_propagation_ms)).transpose()?,
                room_defaults: config::room_defaults()?,
                room_keys: config::room_keys_of(config::Secret::RoomKeys.from_env())?,
            };
            let running = runner::start(cfg, &sdk).await?;
            eprintln!("flashsale runner listening on http://{}", running.addr);
            let local_edge = match (edge, &running.kvs) {
                (Some(listen), Some((kvs, _))) => {
                    Some(local_edge(listen, running.addr, *kvs, kvs_propagation_ms).await?)
                }
                _ => None,
            };
            shutdown_signal().await;
            if let Some(e) = local_edge {
                e.stop().await;
            }
            running.stop().await;
        }
        Command::SamLocalFiles {
            template,
            env_file,
            binaries,
            layout,
            out,
        } => {
            let vars = samlocal::fill_env_file(&read(&env_file)?, |k| std::env::var(k).ok())
                .with_context(|| format!("filling {}", env_file.display()))?;
            let template = read(&template)?;
            let bootstraps = std::path::absolute(out.join("bootstraps"))?;
            samlocal::place_bootstraps(&template, &binaries, layout, &bootstraps)?;
            for (name, role) in [
                ("api.json", samlocal::Role::Api),
                ("events.json", samlocal::Role::Events),
            ] {
                let text = samlocal::template(&template, &vars, &bootstraps, role)?;
                std::fs::write(out.join(name), text)?;
            }
            std::fs::write(out.join("env.json"), samlocal::env_file_json(&vars)?)?;
        }
        Command::Gateway {
            addr,
            targets,
            concurrency,
            edge,
            kvs_propagation_ms,
        } => {
            let text = read(&targets)?;
            let targets: Vec<gateway::Target> = serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not a list of {{method, path, function, name}}",
                    targets.display()
                )
            })?;
            let gateway = gateway::Gateway::new(&sdk, targets, concurrency);
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            let addr = listener.local_addr()?;
            eprintln!("gateway on http://{addr}: template.yaml's routes, invoked in LocalStack");
            // Runs until killed; the channel only satisfies serve's shutdown.
            let (_keep, shutdown) = tokio::sync::watch::channel(false);
            let _edge = match edge {
                Some(listen) => {
                    let gate = RedisGate::new(config::redis_settings()?);
                    let store = DynamoStore::new(&sdk, config::table_name());
                    let cfg = edge_config(kvs_propagation_ms)?;
                    let keys = config::room_keys_of(config::Secret::RoomKeys.from_env())?;
                    let (kvs, _, _) =
                        runner::start_edge(&cfg, &sdk, gate, store, keys, shutdown.clone()).await?;
                    Some(local_edge(listen, addr, kvs, kvs_propagation_ms).await?)
                }
                None => None,
            };
            runner::serve(listener, std::sync::Arc::new(gateway), shutdown).await;
        }
        Command::LocalstackTemplate {
            template,
            bucket,
            out,
        } => {
            let text = read(&template)?;
            let local = cfnlocal::local_template(&text, &bucket)?;
            std::fs::create_dir_all(&out)?;
            std::fs::write(out.join("template.json"), local.template.to_string())?;
            std::fs::write(out.join("table.json"), local.table.to_string())?;
            std::fs::write(out.join("ttl"), local.ttl_attribute.unwrap_or_default())?;
            std::fs::write(
                out.join("routes.json"),
                serde_json::to_string_pretty(&local.routes)?,
            )?;
            let functions: String = local
                .functions
                .iter()
                .map(|f| {
                    let reserved = f.reserved_concurrency.map_or("-".into(), |n| n.to_string());
                    format!("{} {} {reserved}\n", f.logical_id, f.binary)
                })
                .collect();
            std::fs::write(out.join("functions"), functions)?;
        }
        Command::Provision {
            prefix,
            visibility_timeout,
        } => {
            let names = provision::Names::with_prefix(&prefix);
            let p = provision::provision(&sdk, &names, visibility_timeout).await?;
            println!("export FLASHSALE_ORDERS_QUEUE_URL={}", p.orders_queue_url);
            println!("export FLASHSALE_ORDERS_DLQ_URL={}", p.orders_dlq_url);
            println!(
                "export FLASHSALE_COMPENSATION_DLQ_URL={}",
                p.compensation_dlq_url
            );
            println!("export FLASHSALE_TABLE={}", p.table);
        }
        Command::Loadtest(args) => return loadtest(&sdk, args).await,
        Command::Crowd {
            origin_rate,
            crowd_secs,
            seed,
        } => {
            let standard = tools::crowd::CrowdSpec::standard();
            let scale = origin_rate / standard.origin_rate;
            let spec = tools::crowd::CrowdSpec {
                origin_rate,
                arrivals_per_sec: origin_rate * 10.0,
                crowd_secs,
                inlet_rate: ((f64::from(standard.inlet_rate) * scale).round() as u32).max(1),
                stock: ((origin_rate * 10.0 * crowd_secs * 0.6).round() as u32).max(1),
                seed: seed.unwrap_or(standard.seed),
                ..standard
            };
            let report = tools::crowd::run(&sdk, &spec).await?;
            println!("{}", report.summary());
            let (r, w) = (&report.room, &report.without);
            if r.oversold + w.oversold > 0 || !(r.balanced && w.balanced) {
                eprintln!("the crowd's books do not balance: {r:?} / {w:?}");
                return Ok(ExitCode::FAILURE);
            }
            // A crowd the throttle never refused, or a room that let nobody
            // buy, proves nothing.
            if w.throttled == 0 || r.units == 0 || r.early_let_in == 0 {
                eprintln!(
                    "the crowd proved nothing: {} 429s without the room, {} units and {} early visitors let in through it",
                    w.throttled, r.units, r.early_let_in
                );
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::CompensationDrill {
            base_url,
            admin_token,
            product,
            timeout_secs,
        } => {
            let (gate, store) = stores(&sdk)?;
            let api = Api::new(base_url, admin_token);
            let took = demo::compensation_drill(
                &api,
                &gate,
                &store,
                &product,
                Duration::from_secs(timeout_secs),
            )
            .await?;
            println!(
                "DRILL product={product} compensated_after_ms={} balanced=yes",
                took.as_millis()
            );
        }
        Command::Reconcile { product } => {
            let (gate, store) = stores(&sdk)?;
            let books = audit::audit(&gate, &store, &ProductId::parse(product.as_str())?).await?;
            println!(
                "RECONCILE product={product} {books} balanced={}",
                yes_no(books.balanced())
            );
            for problem in books.problems() {
                println!("  unbalanced: {problem}");
            }
            if !books.balanced() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Top {
            product,
            metrics,
            refresh_ms,
        } => {
            let (gate, store) = stores(&sdk)?;
            let products = (!product.is_empty())
                .then(|| {
                    product
                        .iter()
                        .map(ProductId::parse)
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()?;
            let queues = [
                ("orders", config::orders_queue_url()),
                ("orders-dlq", config::orders_dlq_url()),
                ("parking-lot", config::compensation_dlq_url()),
            ]
            .into_iter()
            .filter_map(|(name, url)| Some((name.to_owned(), url.ok()?)))
            .collect();
            let reader = tools::top::Reader {
                gate,
                store,
                sqs: aws_sdk_sqs::Client::new(&sdk),
                queues,
                metrics: metrics.map(|from| match from.as_str() {
                    "cloudwatch" => tools::top::Metrics::CloudWatch(tools::top::CloudWatch::new(
                        aws_sdk_cloudwatch::Client::new(&sdk),
                    )),
                    url => tools::top::Metrics::Runner(Box::new(tools::client::Api::new(url, ""))),
                }),
                products,
            };
            tools::top::run(reader, Duration::from_millis(refresh_ms.max(100))).await?;
        }
        Command::Refunds { product } => {
            let (_, store) = stores(&sdk)?;
            let due = store
                .refunds_due(&ProductId::parse(product.as_str())?)
                .await?;
            for r in &due {
                println!(
                    "{}\trequest_id={}\t{} {}\t{}\torder was {}",
                    r.event.event_id.as_str(),
                    r.event.request_id,
                    r.event.amount,
                    r.event.currency,
                    r.outcome.as_str(),
                    r.order_status.as_str()
                );
            }
            eprintln!("{} payment(s) due for refund", due.len());
        }
        Command::Parked { queue, max } => {
            let (_, store) = stores(&sdk)?;
            let sqs = aws_sdk_sqs::Client::new(&sdk);
            let parked = queues::parked(&sqs, &queue, &store, max).await?;
            for p in &parked {
                println!(
                    "{}\treceives={}\trequest_id={}\t{}",
                    p.message_id,
                    p.receive_count,
                    p.request_id.as_deref().unwrap_or("-"),
                    p.reason
                );
            }
            eprintln!("{} parked message(s)", parked.len());
        }
        Command::ClusterUp { dir } => {
            let c = tools::cluster::RedisCluster::start_detached(&dir)?;
            println!("export FLASHSALE_REDIS_URL={}", c.url());
            println!("export FLASHSALE_REDIS_CLUSTER=1");
            println!("export FLASHSALE_REDIS_CLUSTER_DIR={}", dir.display());
        }
        Command::Redrive { from, to } => {
            let moved = queues::redrive(&sdk, &from, &to, true).await?;
            eprintln!("moved {moved} message(s) from {from} to {to}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn read(path: &std::path::Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn stores(sdk: &aws_config::SdkConfig) -> Result<(RedisGate, DynamoStore)> {
    let store = DynamoStore::new(sdk, config::table_name());
    let gate = RedisGate::new(config::redis_settings()?);
    gate.count_buckets_with(shared::redis::buckets_from(store.clone()));
    Ok((gate, store))
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// `FLASHSALE_LOCAL_SEND_LINGER_MS` (default 2): the runner's buys' order
/// sends leave in SQS batches flushed at 10 or this long after the first;
/// 0 sends each alone.
/// The local edge's store and publisher (`serve --edge`, `gateway --edge`).
fn edge_config(propagation_ms: u64) -> Result<runner::EdgeConfig> {
    Ok(runner::EdgeConfig {
        propagation: Duration::from_millis(propagation_ms),
        publish_every: config::edge_publish_every()?,
        room_capacity: config::room_capacity()?,
        ..runner::EdgeConfig::local()
    })
}

/// The local edge on `listen` in front of `origin`, reading the store at `kvs`.
async fn local_edge(
    listen: SocketAddr,
    origin: SocketAddr,
    kvs: SocketAddr,
    propagation_ms: u64,
) -> Result<tools::edge::LocalEdge> {
    let e = tools::edge::LocalEdge::start(listen, origin, kvs).await?;
    eprintln!(
        "local edge listening on http://{} (store at http://{kvs}, propagation {propagation_ms} ms)",
        e.addr
    );
    Ok(e)
}

fn send_linger() -> Result<Duration> {
    match std::env::var("FLASHSALE_LOCAL_SEND_LINGER_MS") {
        Err(_) => Ok(Duration::from_millis(2)),
        Ok(v) => v.parse().map(Duration::from_millis).map_err(|_| {
            anyhow::anyhow!("FLASHSALE_LOCAL_SEND_LINGER_MS={v} is not a number of milliseconds")
        }),
    }
}
