use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

use shared::aws::{self, DynamoStore};
use shared::domain::ProductId;
use shared::faults::FaultPlan;
use shared::redis::RedisGate;
use shared::{config, telemetry};
use tools::{audit, client::Api, demo, provision, queues, runner};

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
    },
    /// Create the queues and the table (idempotent); prints their settings.
    Provision {
        #[arg(long, default_value = "flashsale")]
        prefix: String,
        /// Seconds a received message stays hidden (retry delay after a failure).
        #[arg(long, default_value_t = provision::DEFAULT_VISIBILITY_TIMEOUT)]
        visibility_timeout: u32,
    },
    /// Run a demo sale against a running API and print a SUMMARY line.
    Demo {
        #[arg(long, default_value = "http://127.0.0.1:3000")]
        base_url: String,
        #[arg(long, env = "FLASHSALE_ADMIN_TOKEN")]
        admin_token: String,
        /// Defaults to a fresh id per run.
        #[arg(long)]
        product: Option<String>,
        #[arg(long, default_value_t = 100)]
        stock: u32,
        #[arg(long, default_value_t = 1000)]
        buyers: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Chaos: Redis forgets this many stock decrements mid-sale.
        #[arg(long, default_value_t = 0)]
        lose_decrements: u32,
    },
    /// Audit a product's books in Redis and DynamoDB; exits 1 if they do not balance.
    Reconcile {
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
    /// Move parked messages back to the compensation queue (StartMessageMoveTask).
    Redrive {
        #[arg(long, env = "FLASHSALE_COMPENSATION_DLQ_URL")]
        from: String,
        #[arg(long, env = "FLASHSALE_ORDERS_DLQ_URL")]
        to: String,
    },
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
    match cli.command {
        Command::Serve { addr, pollers } => {
            telemetry::init();
            let cfg = runner::RunnerConfig {
                http_addr: addr,
                redis: config::redis_settings()?,
                table: config::table_name(),
                orders_queue_url: config::orders_queue_url()?,
                orders_dlq_url: config::orders_dlq_url()?,
                admin_token: config::admin_token(),
                insecure_user_from_body: config::insecure_user_from_body(),
                pollers,
                consumer_concurrency: config::consumer_concurrency()?,
                wait_time_secs: 5,
                sweep_every: config::sweep_every()?,
                sweep_after_ms: config::sweep_after()?.as_millis() as i64,
                faults: FaultPlan::from_env()?,
            };
            let running = runner::start(cfg, &sdk).await?;
            eprintln!("flashsale runner listening on http://{}", running.addr);
            shutdown_signal().await;
            running.stop().await;
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
        Command::Demo {
            base_url,
            admin_token,
            product,
            stock,
            buyers,
            concurrency,
            lose_decrements,
        } => {
            let product = product.unwrap_or_else(|| {
                format!("demo-{}", time::OffsetDateTime::now_utc().unix_timestamp())
            });
            let spec = demo::SaleSpec {
                product: product.clone(),
                stock,
                buyers,
                concurrency,
                lose_decrements,
            };
            let (gate, store) = stores(&sdk)?;
            let api = Api::new(base_url, admin_token);
            demo::create_and_warm(&api, &product, stock, 1).await?;
            let report = demo::run_sale(&api, &spec, Some(&gate)).await?;
            eprintln!(
                "sent {} requests in {:.2?}; answers by status: {:?}; replays matched {}, mismatched {}",
                report.requests,
                report.elapsed,
                report.by_status,
                report.replays_matched,
                report.replays_mismatched
            );
            let sqs = aws_sdk_sqs::Client::new(&sdk);
            let queues = [config::orders_queue_url()?, config::orders_dlq_url()?];
            let queues: Vec<&str> = queues.iter().map(String::as_str).collect();
            let pid = ProductId::parse(product.as_str())?;
            demo::wait_settled(&gate, Some(&sqs), &queues, &pid, Duration::from_secs(300)).await?;
            let books = audit::audit(&gate, &store, &pid).await?;
            let faults = demo::faults_injected(&api).await?;
            for problem in books.problems() {
                eprintln!("unbalanced: {problem}");
            }
            let ok = books.balanced() && report.replays_mismatched == 0;
            println!(
                "SUMMARY product={product} buyers={buyers} requests={} {books} faults_injected={faults} balanced={}",
                report.requests,
                yes_no(ok)
            );
            if !ok {
                return Ok(ExitCode::FAILURE);
            }
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
        Command::Redrive { from, to } => {
            let moved = queues::redrive(&sdk, &from, &to, true).await?;
            eprintln!("moved {moved} message(s) from {from} to {to}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn stores(sdk: &aws_config::SdkConfig) -> Result<(RedisGate, DynamoStore)> {
    Ok((
        RedisGate::new(config::redis_settings()?),
        DynamoStore::new(sdk, config::table_name()),
    ))
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
