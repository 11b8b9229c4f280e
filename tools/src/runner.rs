//! The local runner: the HTTP API, the orders-queue consumer, the
//! compensation consumer of the orders DLQ and the timers of the outbox
//! sweeper and the order expirer in one process, calling the very handlers
//! the Lambdas run. HTTP requests become `lambda_http::Request`s; queue
//! messages become real `SqsEvent` batches, and only records not reported
//! failed are deleted, as an event source mapping with
//! ReportBatchItemFailures does. With [`RunnerConfig::invoke`] the queues'
//! batches and the timers' runs go to the real functions through the Lambda
//! Invoke API instead (`sam local start-lambda`, `cargo lambda watch`).

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result};
use aws_config::SdkConfig;
use aws_lambda_events::encodings::Base64Data;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage, SqsMessageAttribute};
use aws_sdk_sqs::operation::receive_message::ReceiveMessageError;
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use lambda_http::Body;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use admin::Admin;
use compensation::Compensation;
use deduct::Deduct;
use edge_publisher::Publisher;
use order_consumer::Consumer;
use order_expirer::Expirer;
use order_status::OrderStatusApi;
use outbox_sweeper::Sweeper;
use payment_webhook::Webhook;
use shared::aws::{DynamoStore, KvsStore, SqsQueue};
use shared::faults::{FaultPlan, Faulty};
use shared::http::{self as api, ApiError, HttpResponse};
use shared::lifecycle::Terms;
use shared::ports::SystemClock;
use shared::ports::prelude::*;
use shared::redis::{RedisGate, RedisSettings};

use crate::batching::BatchingQueue;
use crate::invoke::{Function, InvokeConfig, Invoker};
use crate::kvs::{LOCAL_ARN, LocalKvs};
use crate::provision::Provisioned;

#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub http_addr: SocketAddr,
    pub redis: RedisSettings,
    pub table: String,
    pub orders_queue_url: String,
    /// The orders DLQ, consumed by the compensation handler.
    pub orders_dlq_url: String,
    pub admin_token: Option<String>,
    pub insecure_user_from_body: bool,
    /// Concurrent queue pollers: Lambda scales consumers out the same way.
    pub pollers: usize,
    pub consumer_concurrency: usize,
    /// Long-polling wait per ReceiveMessage call.
    pub wait_time_secs: i32,
    /// The sweeper's timer (EventBridge's schedule in AWS).
    pub sweep_every: Duration,
    pub sweep_after_ms: i64,
    pub resend_after_ms: i64,
    /// Chaos runs only (`FLASHSALE_FAULTS`).
    pub faults: Arc<FaultPlan>,
    pub sold_out_cache: Duration,
    pub kill_switch_cache: Duration,
    /// How often deduct reads the list of live products (`config::live_products`).
    pub live_products: Duration,
    /// The payment webhook's signing secret; None answers 503 there.
    pub webhook_secret: Option<Vec<u8>>,
    /// The expirer's timer (EventBridge's schedule in AWS) and batch.
    pub expire_every: Duration,
    pub expiry_batch: usize,
    /// The event source mappings' batch size (1..=10) and batching window.
    pub batch_size: i32,
    pub batching_window: Duration,
    /// Invoke the real functions for queues and timers instead of the
    /// handlers in this process.
    pub invoke: Option<InvokeConfig>,
    /// Buys' order sends leave in SQS batches, flushed at 10 or this long
    /// after the first (tools::batching); zero sends each alone.
    pub send_linger: Duration,
    /// The local edge's store and publisher (issue 32); None: no edge.
    pub edge: Option<EdgeConfig>,
    /// What a sale created with a waiting room gets by default, and the
    /// keys its passes are signed with (issue 33).
    pub room_defaults: shared::room::WaitingRoom,
    pub room_keys: Vec<shared::room::Key>,
}

/// The local KeyValueStore ([`crate::kvs`]) the runner serves, and the
/// edge publisher it runs on a timer (EventBridge's schedule in AWS).
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    pub kvs_addr: SocketAddr,
    /// How long a write takes to reach what the edge reads.
    pub propagation: Duration,
    pub publish_every: Duration,
    /// Entries per second the origin takes across the waiting rooms
    /// (`config::room_capacity`; None: each sale's ceiling alone).
    pub room_capacity: Option<f64>,
}

impl EdgeConfig {
    /// A store on a free loopback port, a second's propagation, passes
    /// every 500 ms (the publisher's default).
    pub fn local() -> Self {
        Self {
            kvs_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            propagation: Duration::from_secs(1),
            publish_every: Duration::from_millis(500),
            room_capacity: None,
        }
    }
}

impl RunnerConfig {
    /// A runner on a free loopback port for `names`, as tests and benches
    /// start from: the buyer from the body, no faults, the handlers in
    /// process, timers every 500 ms.
    pub fn local(
        redis: RedisSettings,
        names: &Provisioned,
        admin_token: &str,
        webhook_secret: &[u8],
    ) -> Self {
        Self {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            redis,
            table: names.table.clone(),
            orders_queue_url: names.orders_queue_url.clone(),
            orders_dlq_url: names.orders_dlq_url.clone(),
            admin_token: Some(admin_token.to_owned()),
            insecure_user_from_body: true,
            pollers: 3,
            consumer_concurrency: 10,
            wait_time_secs: 1,
            sweep_every: Duration::from_millis(500),
            sweep_after_ms: 60_000,
            resend_after_ms: 600_000,
            faults: FaultPlan::none(),
            sold_out_cache: Duration::from_secs(1),
            kill_switch_cache: Duration::from_millis(500),
            // Tests create a product and buy it at once: the list is read
            // on every miss, so a product created a moment after a read is
            // not refused (queries, never a Redis call).
            live_products: Duration::ZERO,
            webhook_secret: Some(webhook_secret.to_vec()),
            expire_every: Duration::from_millis(500),
            expiry_batch: 100,
            batch_size: 10,
            batching_window: Duration::ZERO,
            invoke: None,
            send_linger: Duration::from_millis(2),
            edge: None,
            room_defaults: shared::room::WaitingRoom::DEFAULT,
            room_keys: Vec::new(),
        }
    }
}

type Gate = Faulty<RedisGate>;
type Store = Faulty<DynamoStore>;
type Queue = Faulty<SqsQueue>;
type BuyQueue = Faulty<BatchingQueue<SqsQueue>>;

/// Every handler, wired to the real adapters once per process.
pub struct App {
    pub deduct: Deduct<Gate, BuyQueue, Store>,
    pub status: OrderStatusApi<Gate, Store>,
    pub admin: Admin<Gate, Store>,
    pub consumer: Consumer<Gate, Store>,
    pub compensation: Compensation<Gate, Store>,
    pub sweeper: Sweeper<Gate, Queue, Store>,
    pub webhook: Option<Webhook<Store>>,
    pub expirer: Expirer<Gate, Store>,
    pub faults: Arc<FaultPlan>,
    sqs: aws_sdk_sqs::Client,
    orders_queue_url: String,
}

impl App {
    pub fn new(cfg: &RunnerConfig, sdk: &SdkConfig) -> Self {
        let faults = cfg.faults.clone();
        let store = Faulty::new(DynamoStore::new(sdk, &cfg.table), faults.clone());
        let redis = RedisGate::new(cfg.redis.clone());
        redis.count_buckets_with(shared::redis::buckets_from(store.clone()));
        let gate = Faulty::new(redis, faults.clone());
        let queue = Faulty::new(SqsQueue::new(sdk, &cfg.orders_queue_url), faults.clone());
        let (live, refusals) =
            deduct::guards(Arc::new(shared::ports::SystemClock), cfg.live_products);
        Self {
            deduct: Deduct {
                gate: gate.clone(),
                queue: Faulty::new(
                    BatchingQueue::new(SqsQueue::new(sdk, &cfg.orders_queue_url), cfg.send_linger),
                    faults.clone(),
                ),
                store: store.clone(),
                insecure_user_from_body: cfg.insecure_user_from_body,
                sold_out: deduct::SoldOutCache::new(cfg.sold_out_cache),
                kill_switch: deduct::KillSwitchCache::new(cfg.kill_switch_cache),
                ids: shared::domain::RequestIds::Random,
                live,
                refusals,
                room: deduct::RoomCheck::new(cfg.room_keys.clone(), Arc::new(SystemClock)),
            },
            status: OrderStatusApi {
                gate: gate.clone(),
                store: store.clone(),
                insecure_user_from_body: cfg.insecure_user_from_body,
                terms: Terms::system(),
                faults: faults.clone(),
                pages: order_status::ProductPages::new(
                    Arc::new(shared::ports::SystemClock),
                    cfg.live_products,
                ),
            },
            admin: Admin {
                gate: gate.clone(),
                store: store.clone(),
                token: cfg.admin_token.clone(),
                clock: Arc::new(SystemClock),
                room_defaults: cfg.room_defaults,
            },
            consumer: Consumer {
                gate: gate.clone(),
                store: store.clone(),
                concurrency: cfg.consumer_concurrency,
                faults: faults.clone(),
                terms: Terms::system(),
            },
            compensation: Compensation {
                gate: gate.clone(),
                store: store.clone(),
                concurrency: cfg.consumer_concurrency,
            },
            webhook: cfg.webhook_secret.clone().map(|secret| Webhook {
                store: store.clone(),
                clock: Arc::new(SystemClock),
                secret,
            }),
            expirer: Expirer {
                gate: gate.clone(),
                store: store.clone(),
                clock: Arc::new(SystemClock),
                faults: faults.clone(),
                batch: cfg.expiry_batch,
                concurrency: 8,
                budget: cfg.expire_every.max(Duration::from_secs(1)),
            },
            sweeper: Sweeper {
                gate,
                queue,
                store,
                older_than_ms: cfg.sweep_after_ms,
                resend_after_ms: cfg.resend_after_ms,
                max_per_product: 10_000,
            },
            faults,
            sqs: aws_sdk_sqs::Client::new(sdk),
            orders_queue_url: cfg.orders_queue_url.clone(),
        }
    }

    /// Redis, SQS and DynamoDB each answer (faults bypassed): 200, else 503.
    async fn health(&self) -> HttpResponse {
        let verdict = |r: Result<(), String>| match r {
            Ok(()) => "ok".to_owned(),
            Err(e) => e,
        };
        let redis = self
            .sweeper
            .gate
            .inner
            .now_ms()
            .await
            .map(drop)
            .map_err(|e| e.to_string());
        let sqs = self
            .sqs
            .get_queue_attributes()
            .queue_url(&self.orders_queue_url)
            .send()
            .await
            .map(drop)
            .map_err(|e| format!("sqs: {}", aws_sdk_sqs::error::DisplayErrorContext(&e)));
        let store = &self.sweeper.store.inner;
        let dynamodb = store
            .client()
            .describe_table()
            .table_name(store.table())
            .send()
            .await
            .map(drop)
            .map_err(|e| {
                format!(
                    "dynamodb: {}",
                    aws_sdk_dynamodb::error::DisplayErrorContext(&e)
                )
            });
        let healthy = redis.is_ok() && sqs.is_ok() && dynamodb.is_ok();
        api::json_response(
            if healthy { 200 } else { 503 },
            &serde_json::json!({
                "status": if healthy { "ok" } else { "degraded" },
                "redis": verdict(redis),
                "sqs": verdict(sqs),
                "dynamodb": verdict(dynamodb),
                "faults_injected": self.faults.injected(),
            }),
        )
    }

    /// What API Gateway's routes do in AWS.
    pub async fn route(&self, req: lambda_http::Request) -> HttpResponse {
        let path = req.uri().path().to_owned();
        if path == deduct::SEEN_PATH {
            self.deduct.handle(req).await
        } else if path == "/api/flash-sale/buy" {
            if req.method() != lambda_http::http::Method::POST {
                return ApiError::new(405, "method_not_allowed").into_response();
            }
            self.deduct.handle(req).await
        } else if path.starts_with("/api/flash-sale/orders/")
            || path.starts_with("/api/flash-sale/products/")
        {
            self.status.handle(req).await
        } else if path == "/api/payments/webhook" {
            match &self.webhook {
                Some(w) => w.handle(req).await,
                None => ApiError::new(503, "webhook_not_configured")
                    .with_message("set FLASHSALE_PAYMENT_WEBHOOK_SECRET")
                    .into_response(),
            }
        } else if path.starts_with("/api/admin/") {
            self.admin.handle(req).await
        } else if path == "/health" {
            self.health().await
        } else if path == "/metrics" {
            prometheus_text()
        } else {
            ApiError::new(404, "not_found").into_response()
        }
    }
}

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process-wide Prometheus recorder behind the `metrics` facade; the
/// first runner of a process installs it.
fn prometheus() -> Option<&'static PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| {
            let buckets = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            Some(handle)
        })
        .as_ref()
}

fn prometheus_text() -> HttpResponse {
    let text = prometheus()
        .map(|h| {
            h.run_upkeep();
            h.render()
        })
        .unwrap_or_default();
    let mut resp = lambda_http::Response::new(Body::Text(text));
    resp.headers_mut().insert(
        lambda_http::http::header::CONTENT_TYPE,
        lambda_http::http::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}

pub struct Running {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    /// The local KeyValueStore and its address, with [`RunnerConfig::edge`].
    pub kvs: Option<(SocketAddr, LocalKvs)>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops accepting work and waits for in-flight batches to finish.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Where the queues' batches and the timers' runs go.
#[derive(Clone)]
enum Target {
    InProcess(Arc<App>),
    Lambda(Invoker),
}

impl Target {
    /// The batch's failed records; None when the function failed as a
    /// whole, and the mapping then redelivers the whole batch.
    async fn batch(&self, f: Function, event: SqsEvent) -> Option<SqsBatchResponse> {
        match self {
            Self::InProcess(app) => Some(match f {
                Function::Compensation => app.compensation.handle(event).await,
                _ => app.consumer.handle(event).await,
            }),
            Self::Lambda(invoker) => invoker
                .sqs(f, &event)
                .await
                .inspect_err(|e| tracing::warn!(error = %e, "batch failed; redelivered after the visibility timeout"))
                .ok(),
        }
    }

    async fn scheduled(&self, f: Function) {
        let result = match self {
            Self::InProcess(app) if f == Function::OutboxSweeper => app
                .sweeper
                .sweep()
                .await
                .map(drop)
                .map_err(anyhow::Error::from),
            Self::InProcess(app) => app
                .expirer
                .run()
                .await
                .map(drop)
                .map_err(anyhow::Error::from),
            Self::Lambda(invoker) => invoker.schedule(f).await,
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, function = f.binary(), "scheduled run failed; next tick retries");
        }
    }
}

pub async fn start(cfg: RunnerConfig, sdk: &SdkConfig) -> Result<Running> {
    prometheus();
    let app = Arc::new(App::new(&cfg, sdk));
    let listener = TcpListener::bind(cfg.http_addr)
        .await
        .with_context(|| format!("binding {} (set FLASHSALE_HTTP_ADDR)", cfg.http_addr))?;
    let addr = listener.local_addr()?;
    let (shutdown, rx) = watch::channel(false);
    let (http, target) = match &cfg.invoke {
        Some(invoke) => (
            tokio::spawn(serve(
                listener,
                Arc::new(HealthOnly(app.clone())),
                rx.clone(),
            )),
            Target::Lambda(Invoker::new(sdk, invoke)),
        ),
        None => (
            tokio::spawn(serve(listener, app.clone(), rx.clone())),
            Target::InProcess(app.clone()),
        ),
    };
    let mut tasks = vec![http];
    let sqs = poller_client(sdk, cfg.wait_time_secs);
    let queues = std::iter::repeat_n(
        (Function::OrderConsumer, &cfg.orders_queue_url),
        cfg.pollers.max(1),
    )
    .chain([(Function::Compensation, &cfg.orders_dlq_url)]);
    for (f, url) in queues {
        let target = target.clone();
        let mapping = Mapping {
            queue_url: url.clone(),
            wait_time_secs: cfg.wait_time_secs,
            // As in template.yaml: the orders queue's mapping has its
            // parameters, the DLQ's batches of 10 without a window.
            batch_size: match f {
                Function::OrderConsumer => cfg.batch_size.clamp(1, 10),
                _ => 10,
            },
            batching_window: match f {
                Function::OrderConsumer => cfg.batching_window,
                _ => Duration::ZERO,
            },
        };
        tasks.push(tokio::spawn(poll(
            sqs.clone(),
            mapping,
            rx.clone(),
            move |event| {
                let target = target.clone();
                async move { target.batch(f, event).await }
            },
        )));
    }
    for (f, period) in [
        (Function::OutboxSweeper, cfg.sweep_every),
        (Function::OrderExpirer, cfg.expire_every),
    ] {
        let target = target.clone();
        tasks.push(tokio::spawn(every(period, rx.clone(), move || {
            let target = target.clone();
            async move { target.scheduled(f).await }
        })));
    }
    let kvs = match &cfg.edge {
        Some(edge) => {
            let (gate, store) = (app.sweeper.gate.clone(), app.sweeper.store.clone());
            let (addr, kvs, edge_tasks) =
                start_edge(edge, sdk, gate, store, cfg.room_keys.clone(), rx.clone()).await?;
            tasks.extend(edge_tasks);
            Some((addr, kvs))
        }
        None => None,
    };
    tracing::info!(%addr, pollers = cfg.pollers, invoke = ?cfg.invoke, "local runner up");
    Ok(Running {
        addr,
        app,
        kvs,
        shutdown,
        tasks,
    })
}

/// Serves the local KeyValueStore and publishes to it every period, with
/// the publisher's own code and its AWS adapter (by endpoint override),
/// reading the sales from `gate` and `store`. Its tasks stop with
/// `shutdown`.
pub async fn start_edge<G, S>(
    edge: &EdgeConfig,
    sdk: &SdkConfig,
    gate: G,
    store: S,
    room_keys: Vec<shared::room::Key>,
    shutdown: watch::Receiver<bool>,
) -> Result<(SocketAddr, LocalKvs, Vec<JoinHandle<()>>)>
where
    G: SaleGate + AdmissionGate + RoomGate + 'static,
    S: Catalogue + 'static,
{
    let kvs = LocalKvs::new(edge.propagation);
    let (kvs_addr, serving) = kvs.clone().serve(edge.kvs_addr, shutdown.clone()).await?;
    let publisher = Arc::new(
        Publisher::new(
            gate,
            store,
            KvsStore::new(sdk, LOCAL_ARN, Some(&format!("http://{kvs_addr}"))),
            Arc::new(SystemClock),
        )
        .with_rooms(room_keys, edge.room_capacity),
    );
    let publishing = tokio::spawn(every(edge.publish_every, shutdown, move || {
        let publisher = publisher.clone();
        async move {
            if let Err(e) = publisher.publish().await {
                tracing::warn!(error = %e, "edge publish failed; the next pass retries");
            }
        }
    }));
    tracing::info!(%kvs_addr, propagation = ?edge.propagation, "local KeyValueStore up");
    Ok((kvs_addr, kvs, vec![serving, publishing]))
}

/// What serves the HTTP side: the full [`App`], or a part of it (benches).
pub trait Routes: Send + Sync + 'static {
    fn route(&self, req: lambda_http::Request) -> impl Future<Output = HttpResponse> + Send;
}

impl Routes for App {
    fn route(&self, req: lambda_http::Request) -> impl Future<Output = HttpResponse> + Send {
        App::route(self, req)
    }
}

/// With `--invoke` the functions serve the API (sam local start-api); the
/// runner answers only for itself.
struct HealthOnly(Arc<App>);

impl Routes for HealthOnly {
    async fn route(&self, req: lambda_http::Request) -> HttpResponse {
        match req.uri().path() {
            "/health" | "/metrics" => self.0.route(req).await,
            _ => ApiError::new(404, "not_here")
                .with_message("this runner invokes the functions (--invoke); the API is served by sam local start-api")
                .into_response(),
        }
    }
}

/// Headers (also between keep-alive requests) and bodies must arrive in time.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `routes` over HTTP/1 until `shutdown` changes.
pub async fn serve<R: Routes>(
    listener: TcpListener,
    app: Arc<R>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let app = app.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(serve_one(app.as_ref(), req).await) }
            });
            // Slow or half-open clients must not hold connections forever.
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn serve_one<R: Routes>(
    app: &R,
    req: hyper::Request<Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    // Read a little past the handlers' limit so they can name the problem.
    let read = tokio::time::timeout(
        BODY_READ_TIMEOUT,
        Limited::new(body, api::MAX_BODY_BYTES + 1).collect(),
    );
    let resp = match read.await {
        Err(_) => ApiError::new(408, "request_timeout")
            .with_message(format!(
                "the body did not arrive within {BODY_READ_TIMEOUT:?}"
            ))
            .into_response(),
        Ok(Ok(collected)) => {
            let bytes = collected.to_bytes();
            let body = if bytes.is_empty() {
                Body::Empty
            } else {
                Body::Binary(bytes.to_vec())
            };
            app.route(lambda_http::Request::from_parts(parts, body))
                .await
        }
        Ok(Err(_)) => {
            ApiError::invalid(format!("body is larger than {} bytes", api::MAX_BODY_BYTES))
                .into_response()
        }
    };
    let (parts, body) = resp.into_parts();
    let bytes = match body {
        Body::Text(s) => Bytes::from(s),
        Body::Binary(b) => Bytes::from(b),
        _ => Bytes::new(),
    };
    hyper::Response::from_parts(parts, Full::new(bytes))
}

/// An SQS API message as Lambda's event source mapping would deliver it
/// from the queue `queue_arn`.
pub fn to_record(m: Message, queue_arn: &str, region: &str) -> SqsMessage {
    let mut r = SqsMessage::default();
    r.message_id = m.message_id;
    r.receipt_handle = m.receipt_handle;
    r.body = m.body;
    r.md5_of_body = m.md5_of_body;
    r.md5_of_message_attributes = m.md5_of_message_attributes;
    r.attributes = m
        .attributes
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k.as_str().to_owned(), v))
        .collect();
    r.message_attributes = m
        .message_attributes
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| {
            let mut a = SqsMessageAttribute::default();
            a.data_type = Some(v.data_type);
            a.string_value = v.string_value;
            a.binary_value = v.binary_value.map(|b| {
                // The type is non_exhaustive: filled through DerefMut.
                let mut data = Base64Data::default();
                *data = b.into_inner();
                data
            });
            (k, a)
        })
        .collect();
    r.event_source = Some("aws:sqs".into());
    r.event_source_arn = Some(queue_arn.to_owned());
    r.aws_region = Some(region.to_owned());
    r
}

/// A queue's ARN from its URL (`<endpoint>/<account>/<name>`, on AWS and
/// LocalStack alike), so that records name their queue without a call.
fn queue_arn_from_url(queue_url: &str, region: &str) -> String {
    let mut path = queue_url.trim_end_matches('/').rsplit('/');
    let name = path.next().unwrap_or_default();
    let account = path.next().unwrap_or_default();
    let partition = if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else {
        "aws"
    };
    format!("arn:{partition}:sqs:{region}:{account}:{name}")
}

/// The pollers' SQS client. A long poll must not outlast the SDK's attempt
/// timeout: an abandoned ReceiveMessage still takes messages off the queue
/// (invisible for the visibility timeout, one receive spent each), so idle
/// queues would quietly push orders towards the DLQ.
fn poller_client(sdk: &SdkConfig, wait_time_secs: i32) -> aws_sdk_sqs::Client {
    let wait = Duration::from_secs(u64::try_from(wait_time_secs).unwrap_or(0));
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(2))
        .operation_attempt_timeout(wait + Duration::from_secs(5))
        .operation_timeout(wait + Duration::from_secs(15))
        .build();
    aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::config::Builder::from(sdk)
            .timeout_config(timeouts)
            .build(),
    )
}

/// A schedule (EventBridge's in AWS): runs `job` every `period`, one run
/// at a time, until shutdown.
async fn every<F, Fut>(period: Duration, mut shutdown: watch::Receiver<bool>, job: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        job().await;
    }
}

/// The receipt handles of the records to delete after an invocation, as a
/// mapping with ReportBatchItemFailures decides: none when the function
/// failed as a whole or reported a failure naming no record of the batch,
/// else all but the reported ones.
fn to_delete(
    records: Vec<(Option<String>, Option<String>)>,
    response: Option<SqsBatchResponse>,
) -> Option<Vec<String>> {
    let failed: HashSet<String> = response?
        .batch_item_failures
        .into_iter()
        .map(|f| f.item_identifier)
        .collect();
    let known = |f: &String| records.iter().any(|(id, _)| id.as_ref() == Some(f));
    if !failed.iter().all(known) {
        tracing::warn!(
            ?failed,
            "the batch response names records not in the batch; the whole batch is redelivered"
        );
        return None;
    }
    Some(
        records
            .into_iter()
            .filter(|(id, _)| !id.as_ref().is_some_and(|id| failed.contains(id)))
            .filter_map(|(_, handle)| handle)
            .collect(),
    )
}

/// One queue's event source mapping settings.
struct Mapping {
    queue_url: String,
    wait_time_secs: i32,
    batch_size: i32,
    batching_window: Duration,
}

impl Mapping {
    /// Up to `batch_size` messages: the first receive's, topped up until
    /// the batching window (from the first message on) closes.
    async fn receive(
        &self,
        sqs: &aws_sdk_sqs::Client,
    ) -> Result<Vec<Message>, aws_sdk_sqs::error::SdkError<ReceiveMessageError>> {
        let mut batch: Vec<Message> = Vec::new();
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let wait = match deadline {
                None => self.wait_time_secs,
                // Whole seconds, as SQS takes them, never past the window:
                // its last fraction is slept, then polled once.
                Some(d) => {
                    let left = d.saturating_duration_since(tokio::time::Instant::now());
                    if left < Duration::from_secs(1) {
                        tokio::time::sleep(left).await;
                    }
                    i32::try_from(left.as_secs())
                        .map_or(self.wait_time_secs, |s| s.min(self.wait_time_secs))
                }
            };
            let got = sqs
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(self.batch_size - batch.len() as i32)
                .wait_time_seconds(wait)
                .message_attribute_names("All")
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .send()
                .await;
            match got {
                Ok(out) => {
                    for m in out.messages.unwrap_or_default() {
                        if !batch.iter().any(|b| b.message_id == m.message_id) {
                            batch.push(m);
                        }
                    }
                }
                // What was received is in flight: hand it over rather than
                // let it wait out its visibility timeout.
                Err(_) if !batch.is_empty() => return Ok(batch),
                Err(e) => return Err(e),
            }
            if batch.is_empty() {
                return Ok(batch);
            }
            let closes =
                *deadline.get_or_insert(tokio::time::Instant::now() + self.batching_window);
            if batch.len() as i32 >= self.batch_size || tokio::time::Instant::now() >= closes {
                return Ok(batch);
            }
        }
    }
}

/// One queue's event source mapping: receive, hand the batch to `handler`,
/// delete what it did not report failed (nothing when it failed as a whole).
async fn poll<F, Fut>(
    sqs: aws_sdk_sqs::Client,
    mapping: Mapping,
    mut shutdown: watch::Receiver<bool>,
    handler: F,
) where
    F: Fn(SqsEvent) -> Fut,
    Fut: Future<Output = Option<SqsBatchResponse>>,
{
    let region = sqs
        .config()
        .region()
        .map(|r| r.to_string())
        .unwrap_or_default();
    let queue_url = &mapping.queue_url;
    let arn = queue_arn_from_url(queue_url, &region);
    loop {
        let received = tokio::select! {
            r = mapping.receive(&sqs) => r,
            _ = shutdown.changed() => return,
        };
        let messages = match received {
            Ok(messages) => messages,
            Err(e) => {
                tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "receive failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if messages.is_empty() {
            continue;
        }
        let mut event = SqsEvent::default();
        event.records = messages
            .into_iter()
            .map(|m| to_record(m, &arn, &region))
            .collect();
        let handles: Vec<(Option<String>, Option<String>)> = event
            .records
            .iter()
            .map(|r| (r.message_id.clone(), r.receipt_handle.clone()))
            .collect();
        let response = handler(event).await;
        let Some(handles) = to_delete(handles, response) else {
            continue;
        };
        let entries: Vec<DeleteMessageBatchRequestEntry> = handles
            .into_iter()
            .enumerate()
            .filter_map(|(i, handle)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(handle)
                    .build()
                    .ok()
            })
            .collect();
        if entries.is_empty() {
            continue;
        }
        // A failed delete only means a redelivery, which the consumer absorbs.
        if let Err(e) = sqs
            .delete_message_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await
        {
            tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "delete failed; messages will be redelivered");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lambda_events::event::sqs::BatchItemFailure;

    fn records() -> Vec<(Option<String>, Option<String>)> {
        ["a", "b", "c"]
            .iter()
            .map(|id| (Some(id.to_string()), Some(format!("h-{id}"))))
            .collect()
    }

    fn failing(ids: &[&str]) -> Option<SqsBatchResponse> {
        let mut r = SqsBatchResponse::default();
        r.batch_item_failures = ids
            .iter()
            .map(|id| {
                let mut f = BatchItemFailure::default();
                f.item_identifier = id.to_string();
                f
            })
            .collect();
        Some(r)
    }

    #[test]
    fn a_record_names_its_queue_as_lambda_does() {
        for url in [
            "https://sqs.eu-west-1.amazonaws.com/123456789012/flashsale-orders",
            "http://sqs.eu-west-1.localhost.localstack.cloud:4566/000000000000/flashsale-orders/",
        ] {
            let account = if url.contains("amazonaws") {
                "123456789012"
            } else {
                "000000000000"
            };
            assert_eq!(
                queue_arn_from_url(url, "eu-west-1"),
                format!("arn:aws:sqs:eu-west-1:{account}:flashsale-orders")
            );
        }
        assert_eq!(
            queue_arn_from_url(
                "https://sqs.cn-north-1.amazonaws.com.cn/123456789012/q",
                "cn-north-1"
            ),
            "arn:aws-cn:sqs:cn-north-1:123456789012:q"
        );
    }

    #[test]
    fn only_records_not_reported_failed_are_deleted() {
        assert_eq!(
            to_delete(records(), failing(&[])).unwrap(),
            ["h-a", "h-b", "h-c"]
        );
        assert_eq!(
            to_delete(records(), failing(&["b"])).unwrap(),
            ["h-a", "h-c"]
        );
    }

    #[test]
    fn a_failed_invocation_or_a_failure_naming_no_record_redelivers_the_batch() {
        assert_eq!(to_delete(records(), None), None);
        assert_eq!(to_delete(records(), failing(&["b", "nope"])), None);
        assert_eq!(to_delete(records(), failing(&[""])), None);
    }
}
