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

#[test]
fn each_function_gets_only_the_access_it_needs() {
    let t = template();
    // A policy template or statement by its key; a managed policy by
    // `!Ref <name>`; a conditional one by `!If <condition>`.
    let policies = |binary: &str| -> Vec<(String, Value)> {
        function(&t, binary)["Properties"]["Policies"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|p| match tagged(p) {
                Some((tag, v)) if tag == "Ref" => {
                    (format!("!Ref {}", v.as_str().unwrap()), v.clone())
                }
                Some((tag, v)) => (format!("!{tag} {}", v[0].as_str().unwrap()), v.clone()),
                None => {
                    let (k, v) = p.as_mapping().unwrap().iter().next().unwrap();
                    (k.as_str().unwrap().to_owned(), v.clone())
                }
            })
            .collect()
    };
    let names =
        |binary: &str| -> Vec<String> { policies(binary).into_iter().map(|(k, _)| k).collect() };
    let redis_auth = "!If HasRedisAuth";
    let edge = "!If HasEdge";
    assert_eq!(
        names("deduct"),
        vec![
            "SQSSendMessagePolicy",
            "Statement",
            "Statement",
            redis_auth,
            edge
        ]
    );
    // The init warm-up's one SQS call, on the orders queue only.
    let warm_up = &policies("deduct")[1].1[0];
    assert_eq!(warm_up["Action"].as_str(), Some("sqs:GetQueueAttributes"));
    assert_eq!(get_att(&warm_up["Resource"]), "OrdersQueue.Arn");
    // Deduct may only write and read order items.
    let statement = &policies("deduct")[2].1[0];
    let mut actions: Vec<&str> = statement["Action"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    actions.sort();
    assert_eq!(actions, vec!["dynamodb:GetItem", "dynamodb:PutItem"]);
    assert_eq!(get_att(&statement["Resource"]), "FlashSaleTable.Arn");
    assert_eq!(
        statement["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"][0],
        "ORDER#*"
    );
    assert_eq!(
        names("outbox-sweeper"),
        vec![
            "SQSSendMessagePolicy",
            "DynamoDBReadPolicy",
            "Statement",
            redis_auth
        ]
    );
    // The sweeper writes only what finishing a stock change writes.
    let statement = &policies("outbox-sweeper")[2].1[0];
    let keys: Vec<&str> = statement["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(keys, ["STOCK#*", "PRODUCT#*", "LEDGER#*", "AUDIT#*"]);
    for (prefix, item) in [
        ("STOCK#", table::stock_change("p", "k")),
        ("PRODUCT#", table::product("p")),
        ("AUDIT#", table::audit(Some("p"))),
    ] {
        assert!(item.starts_with(prefix), "{item}");
    }
    for binary in ["order-consumer", "compensation", "order-expirer"] {
        assert_eq!(
            names(binary),
            vec!["DynamoDBCrudPolicy", redis_auth],
            "{binary}"
        );
    }
    assert_eq!(
        names("order-status"),
        vec!["DynamoDBCrudPolicy", redis_auth, edge]
    );
    // Each secret is readable only by the function that needs it.
    let reads_parameter = |binary: &str, parameter: &str| {
        let statement = &policies(binary)[1].1[0];
        assert_eq!(statement["Action"], "ssm:GetParameter", "{binary}");
        let (tag, arn) = tagged(&statement["Resource"]).unwrap();
        assert_eq!(tag, "Sub");
        assert!(
            arn.as_str()
                .unwrap()
                .ends_with(&format!(":parameter${{{parameter}}}")),
            "{binary}: {arn:?}"
        );
    };
    assert_eq!(
        names("admin"),
        vec![
            "DynamoDBCrudPolicy",
            "Statement",
            "!Ref SecretsDecryptPolicy",
            redis_auth
        ]
    );
    reads_parameter("admin", "AdminTokenParameter");
    assert_eq!(
        names("payment-webhook"),
        vec![
            "DynamoDBCrudPolicy",
            "Statement",
            "!Ref SecretsDecryptPolicy"
        ]
    );
    reads_parameter("payment-webhook", "PaymentWebhookSecretParameter");
    for (_, f) in functions(&t) {
        let binary = f["Metadata"]["BuildProperties"]["Binary"].as_str().unwrap();
        for (name, args) in policies(binary) {
            if name == "Statement" || name.starts_with('!') {
                continue;
            }
            if name.starts_with("DynamoDB") {
                assert!(
                    is_ref(&args["TableName"], "FlashSaleTable"),
                    "{binary}: {name}"
                );
            } else {
                assert_eq!(
                    get_att(&args["QueueName"]),
                    "OrdersQueue.QueueName",
                    "{binary}"
                );
            }
        }
    }
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
    assert_eq!(
        routes("deduct"),
        vec![("POST".into(), "/api/flash-sale/buy".into(), None)]
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
    // sale's audit; the kill switch (read, throw), the audit of every sale;
    // the deny list (read, add, remove).
    assert_eq!(admin.len(), 11);
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
