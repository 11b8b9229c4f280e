//! A test's own slice of the local stack: its own queues and table on the
//! shared emulators, and an in-process local runner on a free port.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use aws_config::SdkConfig;
use shared::aws::{DynamoStore, SqsQueue};
use shared::faults::FaultPlan;
use shared::redis::{RedisGate, RedisSettings};
use tools::client::Api;
use tools::invoke::InvokeConfig;
use tools::provision::{self, Names, Provisioned};
use tools::runner::{self, App, RunnerConfig, Running};

pub const ADMIN_TOKEN: &str = "test-admin-token";
pub const WEBHOOK_SECRET: &[u8] = b"whsec_test_0123456789abcdef";

pub fn require_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run the stack tests through `make test` \
             (or localstack/with-stack.sh cargo test), which starts Redis, LocalStack and DynamoDB Local"
        )
    })
}

pub struct TestStack {
    pub sdk: SdkConfig,
    pub names: Provisioned,
    pub config: RunnerConfig,
    pub running: Running,
    pub api: Api,
    pub gate: RedisGate,
    pub store: DynamoStore,
    pub queue: SqsQueue,
    /// What the capacity decorator refused, when the runner has one.
    #[allow(dead_code)]
    pub capacity_refusals: Option<Arc<tools::capacity::Refusals>>,
}

/// Each test stack is its own deployment: its own queues, table and Redis
/// namespace (otherwise one runner's sweeper would publish another's requests).
pub fn redis_settings(url: String, namespace: &str) -> RedisSettings {
    RedisSettings {
        url,
        cluster: false,
        namespace: namespace.to_owned(),
        auth_token: None,
        response_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(2),
        rate_limits: Default::default(),
    }
}

/// `FLASHSALE_TEST_DYNAMODB=embedded`: the stack tests run on dynoxide in
/// this process (tools::embedded) instead of DynamoDB Local.
pub fn embedded_dynamodb() -> bool {
    std::env::var("FLASHSALE_TEST_DYNAMODB").as_deref() == Ok("embedded")
}

pub fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &id[..10])
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Short in tests that watch redeliveries.
    pub visibility_timeout: u32,
    pub sweep_after_ms: i64,
    pub resend_after_ms: i64,
    pub faults: Arc<FaultPlan>,
    pub pollers: usize,
    /// A Redis Cluster's seed list instead of the stack's single node.
    pub cluster_url: Option<String>,
    /// The pollers' long-poll wait (the runner's own default is 5 s).
    pub wait_time_secs: i32,
    pub batching_window: Duration,
    /// Queues and schedules invoke functions at this Lambda endpoint.
    pub invoke: Option<InvokeConfig>,
    /// The runner's DynamoDB calls go through the capacity decorator.
    pub capacity: Option<tools::capacity::Capacity>,
    /// The sweeper's and expirer's timers (off: once at start, then daily).
    pub schedules: bool,
    /// The local KeyValueStore and the edge publisher.
    pub edge: Option<tools::runner::EdgeConfig>,
    /// The waiting rooms' signing keys (deduct's and the publisher's).
    pub room_keys: Vec<shared::room::Key>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            visibility_timeout: 30,
            sweep_after_ms: 60_000,
            resend_after_ms: 600_000,
            faults: FaultPlan::none(),
            pollers: 3,
            cluster_url: None,
            wait_time_secs: 1,
            batching_window: Duration::ZERO,
            invoke: None,
            capacity: None,
            schedules: true,
            edge: None,
            room_keys: Vec::new(),
        }
    }
}

impl TestStack {
    pub async fn start(hint: &str, visibility_timeout: u32) -> Self {
        Self::start_with(
            hint,
            Options {
                visibility_timeout,
                ..Options::default()
            },
        )
        .await
    }

    pub async fn start_with(hint: &str, opts: Options) -> Self {
        let redis_url = require_env("FLASHSALE_REDIS_URL");
        require_env("AWS_ENDPOINT_URL_SQS");
        // FLASHSALE_TEST_DYNAMODB=embedded: the same tests on dynoxide in
        // process instead of DynamoDB Local (tools::embedded).
        let sdk = shared::aws::load_sdk_config().await;
        let sdk = if embedded_dynamodb() {
            let embedded = tools::embedded::Embedded::new().expect("an embedded DynamoDB");
            tools::embedded::over(&embedded, &sdk)
        } else {
            require_env("AWS_ENDPOINT_URL_DYNAMODB");
            sdk
        };
        let prefix = unique(hint);
        let names =
            provision::provision(&sdk, &Names::with_prefix(&prefix), opts.visibility_timeout)
                .await
                .expect("provisioning queues and table on the emulators");
        let redis = match &opts.cluster_url {
            Some(url) => RedisSettings {
                cluster: true,
                ..redis_settings(url.clone(), &prefix)
            },
            None => redis_settings(redis_url, &prefix),
        };
        let config = RunnerConfig {
            pollers: opts.pollers,
            wait_time_secs: opts.wait_time_secs,
            sweep_after_ms: opts.sweep_after_ms,
            resend_after_ms: opts.resend_after_ms,
            faults: opts.faults,
            batching_window: opts.batching_window,
            invoke: opts.invoke,
            edge: opts.edge,
            room_keys: opts.room_keys,
            ..RunnerConfig::local(redis, &names, ADMIN_TOKEN, WEBHOOK_SECRET)
        };
        let config = if opts.schedules {
            config
        } else {
            let day = Duration::from_secs(86_400);
            RunnerConfig {
                sweep_every: day,
                expire_every: day,
                ..config
            }
        };
        let (runner_sdk, capacity_refusals) = match opts.capacity {
            Some(c) => {
                let (sdk, refusals) = tools::capacity::limited(&sdk, c);
                (sdk, Some(refusals))
            }
            None => (sdk.clone(), None),
        };
        let running = runner::start(config.clone(), &runner_sdk)
            .await
            .expect("starting the runner");
        let api = Api::new(format!("http://{}", running.addr), ADMIN_TOKEN);
        Self {
            gate: RedisGate::new(config.redis.clone()),
            store: DynamoStore::new(&sdk, &names.table),
            queue: SqsQueue::new(&sdk, &names.orders_queue_url),
            sdk,
            names,
            config,
            running,
            api,
            capacity_refusals,
        }
    }

    /// Creates a product on sale from a second ago for an hour (price 100
    /// EUR cents, one per buyer; `extra` fields override or add to the
    /// admin body) and warms it; the create's answer.
    pub async fn on_sale(
        &self,
        product: &str,
        stock: u32,
        extra: serde_json::Value,
    ) -> tools::client::Answer {
        use time::format_description::well_known::Rfc3339;
        let now = time::OffsetDateTime::now_utc();
        let mut body = serde_json::json!({
            "product_id": product, "name": "Test item", "stock": stock, "per_buyer_limit": 1,
            "price": 100, "currency": "EUR",
            "starts_at": (now - time::Duration::seconds(1)).format(&Rfc3339).unwrap(),
            "ends_at": (now + time::Duration::hours(1)).format(&Rfc3339).unwrap(),
        });
        for (k, v) in extra.as_object().into_iter().flatten() {
            body[k] = v.clone();
        }
        let created = self
            .api
            .admin("POST", "/api/admin/products", Some(&body))
            .await
            .unwrap();
        assert_eq!(created.status, 201, "{}", created.body);
        let warm = format!("/api/admin/products/{product}/warm");
        assert_eq!(
            self.api.admin("POST", &warm, None).await.unwrap().status,
            200
        );
        created
    }

    /// The same handlers with other settings, called without HTTP.
    pub fn app_with(&self, edit: impl FnOnce(&mut RunnerConfig)) -> App {
        let mut cfg = self.config.clone();
        edit(&mut cfg);
        App::new(&cfg, &self.sdk)
    }

    /// Messages visible or in flight on a queue.
    pub async fn queue_depth(&self, url: &str) -> i64 {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let attrs = aws_sdk_sqs::Client::new(&self.sdk)
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(A::ApproximateNumberOfMessages)
            .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .expect("reading queue attributes")
            .attributes
            .unwrap_or_default();
        [
            A::ApproximateNumberOfMessages,
            A::ApproximateNumberOfMessagesNotVisible,
        ]
        .iter()
        .filter_map(|k| attrs.get(k)?.parse::<i64>().ok())
        .sum()
    }

    pub async fn wait_queue_empty(&self, url: &str, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        while self.queue_depth(url).await > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "queue {url} not drained in {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A request as the runner hands it to the handlers (no HTTP involved).
pub fn request(method: &str, path: &str, body: Option<String>) -> lambda_http::Request {
    lambda_http::http::Request::builder()
        .method(method)
        .uri(path)
        .body(body.map_or(lambda_http::Body::Empty, lambda_http::Body::from))
        .unwrap()
}

impl TestStack {
    /// The same handlers pointed at a Redis that is not there.
    pub fn app_without_redis(&self) -> App {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        self.app_with(|c| c.redis = redis_settings(format!("redis://127.0.0.1:{port}"), "down"))
    }
}

/// A stored order as the queue message that placed it: for redeliveries.
pub fn message_of(o: &shared::domain::RequestView) -> shared::domain::OrderMessage {
    shared::domain::OrderMessage {
        v: shared::domain::OrderMessage::VERSION,
        request_id: o.request_id.clone(),
        product_id: o.product_id.clone(),
        user_id: o.user_id.clone(),
        quantity: o.quantity,
        admitted_at: 0,
        sale_ends_at: 0,
    }
}

/// A product of `stock` units over `shards` ledger shards, five per buyer.
pub fn product(id: &str, stock: u32, shards: u16) -> shared::domain::Product {
    let mut p = shared::fakes::product(id);
    p.stock = stock;
    p.per_buyer_limit = 5;
    p.ledger_shards = shards;
    p
}

/// An order message of `user` for `quantity` units of `p`.
pub fn order(
    p: &shared::domain::Product,
    user: &str,
    quantity: u32,
) -> shared::domain::OrderMessage {
    use shared::domain::{OrderMessage, Quantity, RequestId, UserId};
    OrderMessage {
        v: OrderMessage::VERSION,
        request_id: RequestId::new(&p.product_id),
        product_id: p.product_id.clone(),
        user_id: UserId::parse(user).unwrap(),
        quantity: Quantity::new(quantity).unwrap(),
        admitted_at: 0,
        sale_ends_at: 0,
    }
}

/// A succeeded payment of 100 (the helpers' price) for `order`.
pub fn payment(
    order: &shared::domain::RequestView,
    event_id: &str,
) -> shared::payment::PaymentEvent {
    shared::payment::PaymentEvent {
        event_id: shared::payment::EventId::parse(event_id).unwrap(),
        request_id: order.request_id.clone(),
        amount: 100,
        currency: shared::domain::Currency::parse("EUR").unwrap(),
        status: "succeeded".into(),
        payment_event_id: None,
    }
}

/// An operator's stock change of `delta` under `key`, with its audit entry.
pub fn stock_change(
    p: &shared::domain::Product,
    key: &str,
    delta: i64,
) -> (shared::domain::StockChange, shared::domain::AuditEntry) {
    let change = shared::domain::StockChange::new(
        p.product_id.clone(),
        shared::domain::IdempotencyKey::parse(key).unwrap(),
        delta,
    )
    .unwrap();
    let entry = shared::domain::AuditEntry {
        at: time::OffsetDateTime::now_utc(),
        actor: "test".into(),
        product_id: Some(p.product_id.clone()),
        action: if delta < 0 {
            "withdraw_stock"
        } else {
            "add_stock"
        }
        .into(),
        reason: "test".into(),
    };
    (change, entry)
}

/// An HTTP/1 server on a free loopback port that answers every request
/// with `answer(path, body)`: a stand-in for an AWS or LocalStack endpoint.
pub async fn http_stub<F>(answer: F) -> std::net::SocketAddr
where
    F: Fn(String, bytes::Bytes) -> hyper::Response<http_body_util::Full<bytes::Bytes>>
        + Send
        + Sync
        + 'static,
{
    http_stub_on(std::net::Ipv4Addr::LOCALHOST.into(), answer).await
}

/// [`http_stub`] on a free port of `ip` (the Docker bridge's gateway, for
/// stubs that containers call).
pub async fn http_stub_on<F>(ip: std::net::IpAddr, answer: F) -> std::net::SocketAddr
where
    F: Fn(String, bytes::Bytes) -> hyper::Response<http_body_util::Full<bytes::Bytes>>
        + Send
        + Sync
        + 'static,
{
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let answer = answer.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let answer = answer.clone();
                        async move {
                            let path = req.uri().path().to_owned();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            Ok::<_, std::convert::Infallible>(answer(path, body))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}
