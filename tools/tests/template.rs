//! What the code relies on in template.yaml, which cfn-lint and
//! `sam validate --lint` do not check: binaries, environment variables,
//! partial batch failures, visibility timeouts, DLQ wiring, IAM scoping,
//! table layout and route authorisation.

use std::collections::BTreeSet;

use serde_yaml::Value;
use shared::aws::table;
use tools::provision::MAX_RECEIVE_COUNT;

fn root() -> String {
    format!("{}/..", env!("CARGO_MANIFEST_DIR"))
}

fn template() -> Value {
    let text = std::fs::read_to_string(format!("{}/template.yaml", root())).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

fn resources(t: &Value) -> &serde_yaml::Mapping {
    t["Resources"].as_mapping().unwrap()
}

fn functions(t: &Value) -> Vec<(String, &Value)> {
    resources(t)
        .iter()
        .filter(|(_, r)| r["Type"] == "AWS::Serverless::Function")
        .map(|(k, r)| (k.as_str().unwrap().to_owned(), r))
        .collect()
}

fn function<'a>(t: &'a Value, binary: &str) -> &'a Value {
    functions(t)
        .into_iter()
        .find(|(_, f)| f["Metadata"]["BuildProperties"]["Binary"] == binary)
        .unwrap_or_else(|| panic!("no function builds {binary}"))
        .1
}

/// `!Tag value` as (tag, value).
fn tagged(v: &Value) -> Option<(String, &Value)> {
    match v {
        Value::Tagged(t) => Some((
            t.tag.to_string().trim_start_matches('!').to_owned(),
            &t.value,
        )),
        _ => None,
    }
}

fn get_att(v: &Value) -> String {
    let (tag, value) = tagged(v).unwrap_or_else(|| panic!("{v:?} is not a !GetAtt"));
    assert_eq!(tag, "GetAtt");
    value.as_str().unwrap().to_owned()
}

fn is_ref(v: &Value, target: &str) -> bool {
    matches!(tagged(v), Some((tag, value)) if tag == "Ref" && value == target)
}

fn number(t: &Value, v: &Value) -> i64 {
    if let Some(n) = v.as_i64() {
        return n;
    }
    let (_, name) = tagged(v).unwrap();
    t["Parameters"][name.as_str().unwrap()]["Default"]
        .as_i64()
        .unwrap()
}

/// The largest value a literal or a `!Ref` to a parameter can take.
fn max_of(t: &Value, v: &Value) -> i64 {
    match tagged(v) {
        Some((_, name)) => t["Parameters"][name.as_str().unwrap()]["MaxValue"]
            .as_i64()
            .unwrap(),
        None => v.as_i64().unwrap(),
    }
}

fn env_of<'a>(t: &'a Value, f: &'a Value) -> BTreeSet<String> {
    let global = t["Globals"]["Function"]["Environment"]["Variables"].as_mapping();
    let own = f["Properties"]["Environment"]["Variables"].as_mapping();
    global
        .into_iter()
        .chain(own)
        .flat_map(|m| m.keys())
        .map(|k| k.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn every_function_crate_is_deployed_on_al2023_with_cargo_lambda_arm64_by_default() {
    let t = template();
    let crates: BTreeSet<String> = std::fs::read_dir(format!("{}/functions", root()))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let built: BTreeSet<String> = functions(&t)
        .iter()
        .map(|(_, f)| {
            assert_eq!(f["Metadata"]["BuildMethod"], "rust-cargolambda");
            f["Metadata"]["BuildProperties"]["Binary"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(crates, built);
    let g = &t["Globals"]["Function"];
    assert_eq!(g["Runtime"], "provided.al2023");
    // arm64 unless the Architecture parameter says x86_64 (sam local).
    assert!(is_ref(&g["Architectures"][0], "Architecture"));
    let arch = &t["Parameters"]["Architecture"];
    assert_eq!(arch["Default"], "arm64");
    assert_eq!(arch["AllowedValues"][1], "x86_64");
    assert_eq!(g["Handler"], "bootstrap");
}

#[test]
fn functions_get_the_environment_the_code_reads() {
    let t = template();
    let config = std::fs::read_to_string(format!("{}/shared/src/config.rs", root())).unwrap();
    let known: BTreeSet<&str> = config
        .split('"')
        .filter(|s| s.starts_with("FLASHSALE_"))
        .collect();
    let needs: &[(&str, &[&str])] = &[
        (
            "deduct",
            &[
                "FLASHSALE_REDIS_URL",
                "FLASHSALE_ORDERS_QUEUE_URL",
                "FLASHSALE_TABLE",
                "FLASHSALE_ROOM_KEYS_PARAM",
            ],
        ),
        ("order-status", &["FLASHSALE_REDIS_URL", "FLASHSALE_TABLE"]),
        (
            "payment-webhook",
            &["FLASHSALE_TABLE", "FLASHSALE_PAYMENT_WEBHOOK_SECRET_PARAM"],
        ),
        (
            "order-expirer",
            &[
                "FLASHSALE_REDIS_URL",
                "FLASHSALE_TABLE",
                "FLASHSALE_EXPIRY_BATCH",
            ],
        ),
        (
            "admin",
            &[
                "FLASHSALE_REDIS_URL",
                "FLASHSALE_TABLE",
                "FLASHSALE_ADMIN_TOKEN_PARAM",
                "FLASHSALE_ROOM_START_RATE",
                "FLASHSALE_ROOM_CEILING",
                "FLASHSALE_ROOM_ADMISSION_SECS",
                "FLASHSALE_ROOM_EARLY_WINDOW_SECS",
            ],
        ),
        (
            "order-consumer",
            &["FLASHSALE_REDIS_URL", "FLASHSALE_TABLE"],
        ),
        ("compensation", &["FLASHSALE_REDIS_URL", "FLASHSALE_TABLE"]),
        (
            "outbox-sweeper",
            &[
                "FLASHSALE_REDIS_URL",
                "FLASHSALE_TABLE",
                "FLASHSALE_ORDERS_QUEUE_URL",
                "FLASHSALE_RESEND_AFTER_MS",
            ],
        ),
        (
            "edge-publisher",
            &[
                "FLASHSALE_REDIS_URL",
                "FLASHSALE_TABLE",
                "FLASHSALE_KVS_ARN",
                "FLASHSALE_ROOM_KEYS_PARAM",
                "FLASHSALE_ROOM_CAPACITY",
            ],
        ),
    ];
    for (binary, vars) in needs {
        let env = env_of(&t, function(&t, binary));
        for v in *vars {
            assert!(env.contains(*v), "{binary} lacks {v}");
        }
        // Secrets travel as SSM parameter names, never as values.
        for secret in shared::config::Secret::ALL {
            assert!(
                !env.contains(secret.var()),
                "{binary} gets {} as a plain environment value",
                secret.var()
            );
        }
        for v in env.iter().filter(|v| v.starts_with("FLASHSALE_")) {
            assert!(
                known.contains(v.as_str()),
                "{binary}: {v} is read nowhere (typo?)"
            );
        }
    }
}

#[test]
fn sqs_mappings_report_partial_failures_and_queues_outlast_retries() {
    let t = template();
    let r = resources(&t);
    for (binary, queue, dlq) in [
        ("order-consumer", "OrdersQueue", "OrdersDLQ"),
        ("compensation", "OrdersDLQ", "CompensationDLQ"),
    ] {
        let f = function(&t, binary);
        let events = f["Properties"]["Events"].as_mapping().unwrap();
        let sqs: Vec<&Value> = events.values().filter(|e| e["Type"] == "SQS").collect();
        assert_eq!(sqs.len(), 1, "{binary}");
        let p = &sqs[0]["Properties"];
        assert_eq!(get_att(&p["Queue"]), format!("{queue}.Arn"));
        let types: Vec<&str> = p["FunctionResponseTypes"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(types, vec!["ReportBatchItemFailures"], "{binary}");
        assert!(
            max_of(&t, &p["BatchSize"]) <= 10,
            "{binary}: batches above 10 need a batching window"
        );
        assert!(number(&t, &p["ScalingConfig"]["MaximumConcurrency"]) >= 2);
        // AWS: visibility timeout >= 6 x the function timeout (+ batching window).
        let timeout = number(&t, &f["Properties"]["Timeout"]);
        let window = p
            .get("MaximumBatchingWindowInSeconds")
            .map_or(0, |w| max_of(&t, w));
        let visibility = r[queue]["Properties"]["VisibilityTimeout"]
            .as_i64()
            .unwrap();
        assert!(
            visibility >= 6 * timeout + window,
            "{queue}: {visibility} s < 6 x {timeout} s + {window} s"
        );
        // Redrive to the next queue after as many receives as provisioning uses.
        let redrive = &r[queue]["Properties"]["RedrivePolicy"];
        assert_eq!(
            get_att(&redrive["deadLetterTargetArn"]),
            format!("{dlq}.Arn")
        );
        assert_eq!(
            redrive["maxReceiveCount"].as_u64(),
            Some(u64::from(MAX_RECEIVE_COUNT))
        );
    }
    assert!(
        r["CompensationDLQ"]["Properties"]
            .get("RedrivePolicy")
            .is_none()
    );
}

/// Hole 7: Redis request state makes settle and restock idempotent, so it
/// must outlive the oldest message that can still arrive: orders queue, then
/// DLQ, then parking lot, each up to its retention.
#[test]
fn request_state_outlives_every_message_and_resends_wait_for_redeliveries() {
    let t = template();
    let r = resources(&t);
    let retention = |q: &str| {
        r[q]["Properties"]["MessageRetentionPeriod"]
            .as_u64()
            .unwrap()
    };
    let oldest = retention("OrdersQueue") + retention("OrdersDLQ") + retention("CompensationDLQ");
    assert!(
        shared::redis::STATE_TTL_SECS > oldest,
        "state TTL {} s <= {oldest} s of queue retention",
        shared::redis::STATE_TTL_SECS
    );
    let orders = &r["OrdersQueue"]["Properties"];
    let in_flight_ms = 1000
        * orders["VisibilityTimeout"].as_i64().unwrap()
        * orders["RedrivePolicy"]["maxReceiveCount"].as_i64().unwrap();
    let sweeper = &function(&t, "outbox-sweeper")["Properties"];
    assert_eq!(
        sweeper["ReservedConcurrentExecutions"].as_i64(),
        Some(1),
        "overlapping sweeps would re-send the same requests"
    );
    let resend = &t["Parameters"]["ResendAfterMs"];
    assert!(resend["MinValue"].as_i64().unwrap() >= in_flight_ms);
    assert!(resend["Default"].as_i64().unwrap() > in_flight_ms);
}

/// A function's DynamoDB rights: each action, the key prefixes it may
/// touch (`LeadingKeys`), or the index it may query.
fn dynamodb_rights(t: &Value, binary: &str) -> BTreeSet<(String, String)> {
    let mut rights = BTreeSet::new();
    for p in function(t, binary)["Properties"]["Policies"]
        .as_sequence()
        .unwrap()
    {
        let Some(statements) = p.get("Statement").and_then(Value::as_sequence) else {
            continue;
        };
        for st in statements {
            let actions: Vec<&str> = match &st["Action"] {
                Value::String(a) => vec![a.as_str()],
                v => v
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap())
                    .collect(),
            };
            for action in actions.iter().filter_map(|a| a.strip_prefix("dynamodb:")) {
                match tagged(&st["Resource"]) {
                    Some((tag, index)) if tag == "Sub" => {
                        let index = index.as_str().unwrap();
                        let name = index
                            .strip_prefix("arn:${AWS::Partition}:dynamodb:${AWS::Region}:${AWS::AccountId}:table/${FlashSaleTable}/index/")
                            .unwrap_or_else(|| panic!("{binary}: {action} on {index}"));
                        rights.insert((action.to_owned(), format!("index {name}")));
                    }
                    _ => {
                        assert_eq!(get_att(&st["Resource"]), "FlashSaleTable.Arn", "{binary}");
                        let keys =
                            st["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"]
                                .as_sequence()
                                .unwrap_or_else(|| panic!("{binary}: {action} on any key"));
                        for k in keys {
                            rights.insert((action.to_owned(), k.as_str().unwrap().to_owned()));
                        }
                    }
                }
            }
        }
    }
    rights
}

/// Issue 31, item 3: least privilege. No function holds a SAM DynamoDB
/// policy template (Scan, batch writes, deletes on every key and index) or
/// any right on `Resource: "*"`; each holds the DynamoDB actions its code
/// issues on the key prefixes it touches (a transaction's items are
/// checked one by one against PutItem / UpdateItem / DeleteItem /
/// GetItem), and Query only on the index it reads.
#[test]
fn each_function_gets_only_the_access_it_needs() {
    let t = template();
    let policies = |binary: &str| -> Vec<Value> {
        function(&t, binary)["Properties"]["Policies"]
            .as_sequence()
            .unwrap()
            .clone()
    };
    // Every statement a function may hold: its own and its managed ones.
    let mut all_statements = Vec::new();
    for (_, f) in functions(&t) {
        let binary = f["Metadata"]["BuildProperties"]["Binary"].as_str().unwrap();
        for p in policies(binary) {
            if let Some((k, _)) = p.as_mapping().and_then(|m| m.iter().next()) {
                let k = k.as_str().unwrap();
                assert!(!k.starts_with("DynamoDB"), "{binary} holds {k}");
            }
            all_statements.extend(p["Statement"].as_sequence().cloned().unwrap_or_default());
        }
    }
    for (_, r) in resources(&t) {
        if r["Type"] == "AWS::IAM::ManagedPolicy" {
            for st in r["Properties"]["PolicyDocument"]["Statement"]
                .as_sequence()
                .unwrap()
            {
                // A conditional statement: `!If [cond, statement, NoValue]`.
                let st = tagged(st).map_or(st, |(_, v)| &v[1]);
                all_statements.push(st.clone());
            }
        }
    }
    for st in &all_statements {
        assert_ne!(st["Resource"], "*", "{st:?}");
    }
    let prefix = |key: String| format!("{}#*", key.split('#').next().unwrap());
    let (order, product, ledger, purchase) = (
        prefix(table::order("r")),
        prefix(table::product("p")),
        prefix(table::ledger_shard("p", 1)),
        prefix(table::purchase("p", "u")),
    );
    let (payment, switch, deny, stock, audit) = (
        prefix(table::payment("e")),
        prefix(table::KILL_SWITCH.into()),
        prefix(table::denial("u")),
        prefix(table::stock_change("p", "k")),
        prefix(table::audit(Some("p"))),
    );
    let gsi1 = format!("index {}", table::GSI1);
    let gsi2 = format!("index {}", table::GSI2);
    let rights = |spec: &[(&str, &[&String])]| -> BTreeSet<(String, String)> {
        spec.iter()
            .flat_map(|(action, keys)| keys.iter().map(|k| (action.to_string(), k.to_string())))
            .collect()
    };
    // What each function's code issues (helper-3's reading of
    // shared/src/aws/dynamodb, issue 31): every function that talks to
    // Redis reads the product, which the gate falls back to when Redis
    // lost a product's routing.
    let expected: [(&str, BTreeSet<(String, String)>); 9] = [
        (
            "deduct",
            rights(&[
                ("Query", &[&gsi1]),
                ("GetItem", &[&order, &product]),
                ("PutItem", &[&order]),
            ]),
        ),
        (
            "order-status",
            rights(&[
                ("Query", &[&gsi1]),
                ("GetItem", &[&order, &product, &ledger]),
                ("UpdateItem", &[&order, &product, &ledger]),
                ("DeleteItem", &[&purchase]),
            ]),
        ),
        (
            "payment-webhook",
            rights(&[
                ("GetItem", &[&payment, &order]),
                ("PutItem", &[&payment]),
                ("UpdateItem", &[&order, &product, &ledger, &payment]),
            ]),
        ),
        (
            "order-expirer",
            rights(&[
                ("Query", &[&gsi2]),
                ("GetItem", &[&order, &product, &ledger]),
                ("UpdateItem", &[&order, &product, &ledger]),
                ("DeleteItem", &[&purchase]),
            ]),
        ),
        (
            "admin",
            rights(&[
                ("Query", &[&gsi1]),
                ("GetItem", &[&product, &ledger, &switch, &deny, &stock]),
                ("PutItem", &[&product, &ledger, &audit, &deny, &stock]),
                ("UpdateItem", &[&product, &ledger, &switch, &stock]),
                ("DeleteItem", &[&deny]),
            ]),
        ),
        (
            "order-consumer",
            rights(&[
                ("GetItem", &[&order, &product, &ledger]),
                ("PutItem", &[&order, &purchase]),
                ("UpdateItem", &[&product, &ledger]),
            ]),
        ),
        (
            "compensation",
            rights(&[("GetItem", &[&order, &product]), ("PutItem", &[&order])]),
        ),
        // The live sales and each product; its shelves are Redis'.
        (
            "edge-publisher",
            rights(&[("Query", &[&gsi1]), ("GetItem", &[&product])]),
        ),
        (
            "outbox-sweeper",
            rights(&[
                ("Query", &[&gsi1]),
                (
                    "GetItem",
                    &[&switch, &deny, &product, &ledger, &stock, &order],
                ),
                ("PutItem", &[&stock, &audit]),
                ("UpdateItem", &[&product, &ledger, &stock]),
            ]),
        ),
    ];
    assert_eq!(
        expected.len(),
        functions(&t).len(),
        "every function's rights are listed"
    );
    for (binary, rights) in expected {
        assert_eq!(dynamodb_rights(&t, binary), rights, "{binary}");
    }
    // SQS: deduct and the sweeper send to the orders queue, deduct's init
    // warm-up reads its attributes.
    for binary in ["deduct", "outbox-sweeper"] {
        let send = &policies(binary)[0]["SQSSendMessagePolicy"];
        assert_eq!(
            get_att(&send["QueueName"]),
            "OrdersQueue.QueueName",
            "{binary}"
        );
    }
    let warm_up = &policies("deduct")[1]["Statement"][0];
    assert_eq!(warm_up["Action"].as_str(), Some("sqs:GetQueueAttributes"));
    assert_eq!(get_att(&warm_up["Resource"]), "OrdersQueue.Arn");
    // Each secret is readable only by the function that needs it; a
    // customer managed key only when one is given.
    let reads_parameter = |binary: &str, parameter: &str| {
        let ps = policies(binary);
        let statement = ps
            .iter()
            .filter_map(|p| p["Statement"].as_sequence())
            .flatten()
            .find(|st| st["Action"] == "ssm:GetParameter")
            .unwrap_or_else(|| panic!("{binary} reads no parameter"));
        let (tag, arn) = tagged(&statement["Resource"]).unwrap();
        assert_eq!(tag, "Sub");
        assert!(
            arn.as_str()
                .unwrap()
                .ends_with(&format!(":parameter${{{parameter}}}")),
            "{binary}: {arn:?}"
        );
        let decrypt = ps
            .iter()
            .filter_map(|p| tagged(p))
            .find(|(_, v)| is_ref(&v[1], "SecretsDecryptPolicy"))
            .unwrap_or_else(|| panic!("{binary} cannot decrypt under a customer key"));
        assert_eq!(decrypt.1[0], "HasSecretsKey", "{binary}");
    };
    reads_parameter("admin", "AdminTokenParameter");
    reads_parameter("payment-webhook", "PaymentWebhookSecretParameter");
    let decrypt = &t["Resources"]["SecretsDecryptPolicy"];
    assert_eq!(decrypt["Condition"], "HasSecretsKey");
    assert!(is_ref(
        &decrypt["Properties"]["PolicyDocument"]["Statement"][0]["Resource"],
        "SecretsKmsKeyArn"
    ));
    // Redis AUTH is required whenever TLS is on (ElastiCache takes a token
    // only then); the local stack passes RedisTls=false.
    let rule = &t["Rules"]["RedisAuthWithTls"];
    assert_eq!(
        tagged(&rule["RuleCondition"]).unwrap().1[0],
        tagged(&t["Conditions"]["UseTls"]).unwrap().1[0]
    );
}

#[test]
fn table_matches_the_key_layout_the_code_uses() {
    let t = template();
    let table_props = &resources(&t)["FlashSaleTable"]["Properties"];
    assert_eq!(table_props["KeySchema"][0]["AttributeName"], table::PK);
    assert_eq!(table_props["KeySchema"][0]["KeyType"], "HASH");
    for (i, (name, pk, sk)) in [
        (table::GSI1, table::GSI1_PK, table::GSI1_SK),
        (table::GSI2, table::GSI2_PK, table::GSI2_SK),
    ]
    .into_iter()
    .enumerate()
    {
        let gsi = &table_props["GlobalSecondaryIndexes"][i];
        assert_eq!(gsi["IndexName"], name);
        assert_eq!(gsi["KeySchema"][0]["AttributeName"], pk);
        assert_eq!(gsi["KeySchema"][1]["AttributeName"], sk);
        assert_eq!(gsi["Projection"]["ProjectionType"], "ALL");
    }
    assert_eq!(
        table_props["TimeToLiveSpecification"]["AttributeName"],
        table::TTL
    );
    assert_eq!(table_props["TimeToLiveSpecification"]["Enabled"], true);
}

#[test]
fn buyer_routes_use_the_jwt_authorizer_and_admin_routes_iam() {
    let t = template();
    let api = &resources(&t)["FlashSaleApi"]["Properties"];
    assert_eq!(api["Auth"]["DefaultAuthorizer"], "BuyerJwt");
    assert_eq!(api["Auth"]["EnableIamAuthorizer"], true);
    assert!(tagged(&api["DefaultRouteSettings"]["ThrottlingRateLimit"]).is_some());
    assert!(tagged(&api["DefaultRouteSettings"]["ThrottlingBurstLimit"]).is_some());
    let routes = |binary: &str| -> Vec<(String, String, Option<String>)> {
        function(&t, binary)["Properties"]["Events"]
            .as_mapping()
            .unwrap()
            .values()
            .filter(|e| e["Type"] == "HttpApi")
            .map(|e| {
                let p = &e["Properties"];
                (
                    p["Method"].as_str().unwrap().to_owned(),
                    p["Path"].as_str().unwrap().to_owned(),
                    p["Auth"]["Authorizer"].as_str().map(str::to_owned),
                )
            })
            .collect()
    };
    // The waiting room's sampled first visits come from an image: no JWT.
    assert_eq!(
        routes("deduct"),
        vec![
            ("POST".into(), "/api/flash-sale/buy".into(), None),
            (
                "GET".into(),
                "/api/flash-sale/room/seen".into(),
                Some("NONE".into())
            )
        ]
    );
    // Buyer routes take the default JWT authorizer; only the public
    // product page and the provider's (signed) webhook opt out.
    assert_eq!(
        routes("order-status"),
        vec![
            (
                "GET".into(),
                "/api/flash-sale/orders/{request_id}".into(),
                None
            ),
            (
                "POST".into(),
                "/api/flash-sale/orders/{request_id}/cancel".into(),
                None
            ),
            (
                "GET".into(),
                "/api/flash-sale/products/{product_id}".into(),
                Some("NONE".into())
            ),
        ]
    );
    assert_eq!(
        routes("payment-webhook"),
        vec![(
            "POST".into(),
            "/api/payments/webhook".into(),
            Some("NONE".into())
        )]
    );
    let admin = routes("admin");
    // create, warm, stats, the live controls (pause/resume/end/stock), a
    // sale's audit, its waiting room's tuning; the kill switch (read,
    // throw), the audit of every sale; the deny list (read, add, remove).
    assert_eq!(admin.len(), 12);
    assert!(admin.contains(&(
        "PATCH".into(),
        "/api/admin/products/{product_id}/waiting-room".into(),
        Some("AWS_IAM".into())
    )));
    assert!(admin.iter().all(
        |(_, path, auth)| path.starts_with("/api/admin/") && auth.as_deref() == Some("AWS_IAM")
    ));
}

/// Every function's errors and throttles, the API, both queues' age, the
/// sweeper's gauges, DynamoDB and the cache are alarmed, each alarm
/// notifies the topic, and the dashboard charts only metrics the code
/// emits.
#[test]
fn alarms_cover_every_signal_and_the_dashboard_charts_real_metrics() {
    let t = template();
    let r = resources(&t);
    let alarms: Vec<(&str, &Value)> = r
        .iter()
        .filter(|(_, v)| v["Type"] == "AWS::CloudWatch::Alarm")
        .map(|(k, v)| (k.as_str().unwrap(), &v["Properties"]))
        .collect();
    let watches = |namespace: &str, metric: &str, target: &str| {
        alarms.iter().any(|(_, p)| {
            p["Namespace"] == namespace
                && p["MetricName"] == metric
                && p["Dimensions"][0]["Value"] != Value::Null
                && format!("{:?}", p["Dimensions"][0]["Value"]).contains(target)
        })
    };
    for (name, _) in functions(&t) {
        for metric in ["Errors", "Throttles"] {
            assert!(watches("AWS/Lambda", metric, &name), "{name}: {metric}");
        }
    }
    for queue in ["OrdersQueue", "OrdersDLQ", "CompensationDLQ"] {
        assert!(
            watches("AWS/SQS", "ApproximateAgeOfOldestMessage", queue),
            "{queue}"
        );
    }
    assert!(watches(
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
        "CompensationDLQ"
    ));
    assert!(watches("AWS/ApiGateway", "Latency", "FlashSaleApi"));
    for metric in [
        "flashsale_outbox_pending",
        "flashsale_outbox_republished_total",
        "flashsale_stock_buckets_restored_total",
    ] {
        assert!(
            watches("flashsale", metric, "OutboxSweeperFunction"),
            "{metric}"
        );
    }
    assert!(watches(
        "flashsale",
        "flashsale_placements_stalled_total",
        "OrderConsumerFunction"
    ));
    for metric in ["EngineCPUUtilization", "EvalBasedCmdsLatency"] {
        assert!(
            watches("AWS/ElastiCache", metric, "CacheNodeId"),
            "{metric}"
        );
    }
    let math = |id: &str| {
        alarms
            .iter()
            .find(|(name, _)| *name == id)
            .map(|(_, p)| format!("{:?}", p["Metrics"]))
            .unwrap_or_default()
    };
    assert!(math("Api5xxRateAlarm").contains("5xx"));
    assert!(math("DynamoThrottlesAlarm").contains("WriteThrottleEvents"));
    for (name, p) in &alarms {
        let actions = format!("{:?}", p["AlarmActions"]);
        assert!(
            actions.contains("HasAlarmTopic") && actions.contains("AlarmTopicArn"),
            "{name} notifies nobody"
        );
    }

    // Every flashsale_* metric the template names is emitted by the code.
    let text = std::fs::read_to_string(format!("{}/template.yaml", root())).unwrap();
    let mut sources = String::new();
    for dir in ["shared/src", "functions"] {
        let mut stack = vec![std::path::PathBuf::from(format!("{}/{dir}", root()))];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(d).unwrap().flatten() {
                let path = e.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|x| x == "rs") {
                    sources.push_str(&std::fs::read_to_string(path).unwrap());
                }
            }
        }
    }
    let named: BTreeSet<&str> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("flashsale_"))
        .collect();
    assert!(named.len() >= 8, "{named:?}");
    for metric in named {
        assert!(
            sources.contains(&format!("\"{metric}\"")),
            "the template charts or alarms on {metric}, which no code emits"
        );
    }
}

/// The edge is optional and whole: off by default, everything of it
/// conditional, its header the one the functions check, and required by
/// exactly the buyer functions.
#[test]
fn the_edge_is_optional_and_only_buyer_functions_require_it() {
    let t = template();
    assert_eq!(t["Parameters"]["EdgeEnabled"]["Default"], "false");
    let r = resources(&t);
    for (id, res) in r
        .iter()
        .filter(|(k, _)| k.as_str().unwrap().starts_with("Edge"))
    {
        let condition = res["Condition"].as_str().unwrap_or("");
        assert!(
            ["HasEdge", "CreateEdgeAcl"].contains(&condition),
            "{id:?} is not conditional on the edge"
        );
    }
    let origin = &r["EdgeDistribution"]["Properties"]["DistributionConfig"]["Origins"][0];
    assert_eq!(
        origin["OriginCustomHeaders"][0]["HeaderName"]
            .as_str()
            .unwrap()
            .to_ascii_lowercase(),
        shared::http::EDGE_HEADER
    );
    let param = shared::config::Secret::EdgeOriginSecret.param_var();
    let requiring: Vec<String> = functions(&t)
        .into_iter()
        .filter(|(_, f)| !f["Properties"]["Environment"]["Variables"][param].is_null())
        .map(|(_, f)| {
            f["Metadata"]["BuildProperties"]["Binary"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(requiring, ["deduct", "order-status"]);
}

/// Issue 31, item 6: the HTTP API writes one JSON line per request (who,
/// which route, the answer, how long) to a log group that expires, and
/// nothing a request carries: no header (the Authorization one), no query
/// string, no body.
#[test]
fn the_api_logs_every_request_as_json_without_secrets_or_bodies() {
    let t = template();
    let logs = &t["Resources"]["FlashSaleApi"]["Properties"]["AccessLogSettings"];
    assert_eq!(get_att(&logs["DestinationArn"]), "ApiAccessLogs.Arn");
    let group = &t["Resources"]["ApiAccessLogs"];
    assert_eq!(group["Type"], "AWS::Logs::LogGroup");
    assert!(is_ref(
        &group["Properties"]["RetentionInDays"],
        "AccessLogRetentionDays"
    ));
    let format = logs["Format"].as_str().expect("a format string");
    let line: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(format).expect("the format is one JSON object");
    for (field, variable) in [
        ("requestId", "$context.requestId"),
        ("routeKey", "$context.routeKey"),
        ("status", "$context.status"),
        ("responseLatencyMs", "$context.responseLatency"),
        ("buyer", "$context.authorizer.claims.sub"),
        ("iamCaller", "$context.identity.userArn"),
        ("sourceIp", "$context.identity.sourceIp"),
    ] {
        assert_eq!(
            line.get(field).and_then(|v| v.as_str()),
            Some(variable),
            "{field}"
        );
    }
    for v in line.values() {
        let v = v.as_str().expect("string fields");
        assert!(v.starts_with("$context."), "{v}: only context variables");
        for secret in [
            "header",
            "request.",
            "body",
            "querystring",
            "stageVariables",
        ] {
            assert!(
                !v.to_lowercase().contains(&secret.to_lowercase()),
                "{v} logs what a request carries"
            );
        }
    }
}

/// Issue 31, item 2: a flood of a public route neither takes the buy
/// route's budget nor deduct's concurrency, and cannot miss the edge's
/// cache of the product page by varying a query string or a header.
#[test]
fn public_routes_have_their_own_budgets_and_deduct_keeps_its_concurrency() {
    let t = template();
    let r = &t["Resources"];
    let routes = &r["FlashSaleApi"]["Properties"]["RouteSettings"];
    for (route, parameter) in [
        ("GET /api/flash-sale/products/{product_id}", "ProductPage"),
        ("POST /api/payments/webhook", "Webhook"),
    ] {
        for limit in ["Rate", "Burst"] {
            let setting = &routes[route][format!("Throttling{limit}Limit").as_str()];
            assert!(
                is_ref(setting, &format!("{parameter}{limit}Limit")),
                "{route}"
            );
        }
    }
    // Every route in RouteSettings is one a function serves.
    let served: BTreeSet<String> = functions(&t)
        .into_iter()
        .flat_map(|(_, f)| {
            f["Properties"]["Events"]
                .as_mapping()
                .map(|e| e.values().cloned().collect::<Vec<_>>())
                .unwrap_or_default()
        })
        .filter(|e| e["Type"] == "HttpApi")
        .map(|e| {
            format!(
                "{} {}",
                e["Properties"]["Method"].as_str().unwrap(),
                e["Properties"]["Path"].as_str().unwrap()
            )
        })
        .collect();
    for route in routes.as_mapping().unwrap().keys() {
        assert!(served.contains(route.as_str().unwrap()), "{route:?}");
    }
    for (binary, parameter, condition) in [
        ("deduct", "DeductReservedConcurrency", "ReservesDeduct"),
        (
            "order-status",
            "OrderStatusMaxConcurrency",
            "CapsOrderStatus",
        ),
        (
            "payment-webhook",
            "PaymentWebhookMaxConcurrency",
            "CapsPaymentWebhook",
        ),
    ] {
        let reserved = &function(&t, binary)["Properties"]["ReservedConcurrentExecutions"];
        let (tag, args) = tagged(reserved).expect("an !If");
        assert_eq!(tag, "If", "{binary}");
        assert_eq!(args[0], condition, "{binary}");
        assert!(is_ref(&args[1], parameter), "{binary}");
        assert!(
            t["Parameters"][parameter]["Default"].as_i64().unwrap() > 0,
            "{parameter} is on by default"
        );
    }
    // The edge: no query string in any cache key; the product page's key
    // holds no header either.
    let key = |policy: &str| &r[policy]["Properties"]["CachePolicyConfig"]["ParametersInCacheKeyAndForwardedToOrigin"];
    for policy in ["EdgeCachePolicy", "EdgePublicCachePolicy"] {
        assert_eq!(
            key(policy)["QueryStringsConfig"]["QueryStringBehavior"],
            "none",
            "{policy}"
        );
    }
    assert_eq!(
        key("EdgePublicCachePolicy")["HeadersConfig"]["HeaderBehavior"],
        "none"
    );
    let behaviors = &r["EdgeDistribution"]["Properties"]["DistributionConfig"]["CacheBehaviors"];
    let page = behaviors
        .as_sequence()
        .unwrap()
        .iter()
        .find(|b| b["PathPattern"] == "/api/flash-sale/products/*")
        .expect("a behaviour for the product page");
    assert!(is_ref(&page["CachePolicyId"], "EdgePublicCachePolicy"));
    assert_eq!(
        page["AllowedMethods"].as_sequence().unwrap().len(),
        2,
        "GET and HEAD only"
    );
}

/// CloudFront takes the edge function inline: the template's code is the
/// very file the local edge and the function's tests run (edge/dist, the
/// source less its comments: edge/local/deployable.mjs), byte for byte,
/// associated with the sale states and on the buy's viewer requests.
#[test]
fn the_edge_function_in_the_template_is_edge_viewer_request_js() {
    let t = template();
    let r = resources(&t);
    let f = &r["EdgeBuyFunction"]["Properties"];
    let file = std::fs::read_to_string(format!("{}/edge/dist/viewer-request.js", root())).unwrap();
    assert_eq!(
        f["FunctionCode"].as_str(),
        Some(file.as_str()),
        "template.yaml's EdgeBuyFunction code differs from edge/dist/viewer-request.js: run node edge/local/deployable.mjs"
    );
    assert_eq!(f["FunctionConfig"]["Runtime"], "cloudfront-js-2.0");
    assert!(
        file.len() <= 10 * 1024,
        "CloudFront Functions take at most 10 KB"
    );
    let behaviours = r["EdgeDistribution"]["Properties"]["DistributionConfig"]["CacheBehaviors"]
        .as_sequence()
        .unwrap();
    let buy = behaviours
        .iter()
        .find(|b| b["PathPattern"] == "/api/flash-sale/buy")
        .expect("a cache behaviour for the buy");
    assert_eq!(
        buy["FunctionAssociations"][0]["EventType"],
        "viewer-request"
    );
    // The waiting room's page runs the same function, and a buy's
    // admission (header or cookie) reaches deduct.
    let room = behaviours
        .iter()
        .find(|b| b["PathPattern"] == "/room")
        .expect("a cache behaviour for the waiting room's page");
    assert!(is_ref(&room["CachePolicyId"], "EdgeCachePolicy"));
    assert_eq!(
        room["FunctionAssociations"][0]["FunctionARN"],
        buy["FunctionAssociations"][0]["FunctionARN"]
    );
    let forwarded = &r["EdgeOriginRequestPolicy"]["Properties"]["OriginRequestPolicyConfig"];
    assert!(
        forwarded["HeadersConfig"]["Headers"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|h| h == "X-Flashsale-Admission")
    );
    assert_eq!(forwarded["CookiesConfig"]["CookieBehavior"], "all");
}
