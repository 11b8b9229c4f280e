//! template.yaml as LocalStack's CloudFormation deploys it (with the SAM
//! transform), and what the local deploy does beside it
//! (localstack/deploy.sh). Each edit fills a gap, named where it is made:
//!
//! - code: each function's `CodeUri` becomes its zip in LocalStack's S3, as
//!   `sam package` would do;
//! - the table: LocalStack's DynamoDB downloads Java and DynamoDB Local at
//!   first use (offline it fails), so the docker-less stack keeps it in
//!   DynamoDB Local. It is dropped; its name becomes the parameter
//!   `FlashSaleTableName`, its definition [`Local::table`] (created by the
//!   deploy, in DynamoDB Local or LocalStack's), and the functions get
//!   `AWS_ENDPOINT_URL_DYNAMODB` from the parameter `DynamoDbEndpoint` when
//!   it is set (LocalStack points every SDK at itself otherwise);
//! - schedules: LocalStack Community's EventBridge Scheduler stores
//!   schedules but never runs them, so `ScheduleV2` events become
//!   `Schedule` events (EventBridge rules, which it runs);
//! - VPC: the functions' `VpcConfig` goes (no subnets locally);
//! - what LocalStack Community has no provider for: the HTTP API (with its
//!   JWT authorizer and throttling), CloudWatch alarms and dashboard,
//!   CloudFront and WAF. The HTTP routes are served by `flashsale gateway`
//!   (tools::gateway, from [`Local::routes`]); without the authorizer,
//!   buyers come from the body (`FLASHSALE_INSECURE_USER_FROM_BODY`), as
//!   under sam local.

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::samlocal::to_json;

const TABLE: &str = "FlashSaleTable";
const TABLE_PARAM: &str = "FlashSaleTableName";
/// Resource types LocalStack Community cannot create (prefixes).
const UNSUPPORTED: [&str; 5] = [
    "AWS::Serverless::HttpApi",
    "AWS::CloudWatch::Alarm",
    "AWS::CloudWatch::Dashboard",
    "AWS::CloudFront::",
    "AWS::WAFv2::",
];

/// One HTTP API route of the template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub method: String,
    /// With `{name}` segments, as API Gateway writes them.
    pub path: String,
    /// The function's logical id.
    pub function: String,
}

/// What the local deploy needs.
#[derive(Debug)]
pub struct Local {
    /// The template for CloudFormation (JSON; over CreateStack's 51,200-byte
    /// body limit, so it goes through S3 as on AWS).
    pub template: Value,
    /// The table, as `aws dynamodb create-table --cli-input-json` takes it
    /// (without its name).
    pub table: Value,
    /// The attribute the table's TTL reads.
    pub ttl_attribute: Option<String>,
    pub routes: Vec<Route>,
    pub functions: Vec<Function>,
}

/// One function of the template.
#[derive(Debug)]
pub struct Function {
    pub logical_id: String,
    pub binary: String,
    /// LocalStack's CloudFormation ignores `ReservedConcurrentExecutions`
    /// (the singletons: the sweeper and the expirer); the deploy sets it.
    pub reserved_concurrency: Option<u64>,
}

/// Rewrites `template` (template.yaml's text) for LocalStack, code from
/// `s3://<bucket>/<binary>.zip`.
pub fn local_template(template: &str, bucket: &str) -> Result<Local> {
    let yaml: serde_yaml::Value =
        serde_yaml::from_str(template).context("template.yaml is not YAML")?;
    let mut t = to_json(yaml)?;

    let resources = t["Resources"]
        .as_object_mut()
        .ok_or_else(|| anyhow!("template.yaml has no Resources"))?;
    let table = resources
        .remove(TABLE)
        .ok_or_else(|| anyhow!("template.yaml has no {TABLE}"))?;
    let props = &table["Properties"];
    let mut table_input = Map::new();
    for key in [
        "BillingMode",
        "AttributeDefinitions",
        "KeySchema",
        "GlobalSecondaryIndexes",
    ] {
        if !props[key].is_null() {
            table_input.insert(key.to_owned(), props[key].clone());
        }
    }
    let ttl_attribute = props["TimeToLiveSpecification"]["AttributeName"]
        .as_str()
        .map(str::to_owned);
    let mut dropped: Vec<String> = resources
        .iter()
        .filter(|(_, r)| {
            r["Type"]
                .as_str()
                .is_some_and(|ty| UNSUPPORTED.iter().any(|u| ty.starts_with(u)))
        })
        .map(|(id, _)| id.clone())
        .collect();
    for id in &dropped {
        resources.remove(id);
    }
    // A conditional resource that needs one of them (the edge publisher
    // needs the edge's KeyValueStore) goes too: its condition is off
    // locally anyway. An unconditional one fails below.
    loop {
        let needing: Vec<String> = resources
            .iter()
            .filter(|(_, r)| !r["Condition"].is_null() && mentions(r, &dropped))
            .map(|(id, _)| id.clone())
            .collect();
        if needing.is_empty() {
            break;
        }
        for id in needing {
            resources.remove(&id);
            dropped.push(id);
        }
    }

    let mut routes = Vec::new();
    let mut functions = Vec::new();
    for (id, r) in resources.iter_mut() {
        if r["Type"] != "AWS::Serverless::Function" {
            continue;
        }
        let binary = r["Metadata"]["BuildProperties"]["Binary"]
            .as_str()
            .ok_or_else(|| anyhow!("{id} has no Metadata.BuildProperties.Binary"))?
            .to_owned();
        let p = r["Properties"]
            .as_object_mut()
            .ok_or_else(|| anyhow!("{id} has no Properties"))?;
        p.insert(
            "CodeUri".into(),
            format!("s3://{bucket}/{binary}.zip").into(),
        );
        functions.push(Function {
            logical_id: id.clone(),
            binary,
            reserved_concurrency: p
                .get("ReservedConcurrentExecutions")
                .and_then(Value::as_u64),
        });
        let Some(events) = p.get_mut("Events").and_then(Value::as_object_mut) else {
            continue;
        };
        let mut kept = Map::new();
        for (name, mut e) in std::mem::take(events) {
            match e["Type"].as_str() {
                Some("HttpApi") => routes.push(Route {
                    method: e["Properties"]["Method"]
                        .as_str()
                        .unwrap_or("ANY")
                        .to_uppercase(),
                    path: e["Properties"]["Path"]
                        .as_str()
                        .ok_or_else(|| anyhow!("{id}.{name} has no Path"))?
                        .to_owned(),
                    function: id.clone(),
                }),
                Some("ScheduleV2") => {
                    let ep = e["Properties"]
                        .as_object_mut()
                        .ok_or_else(|| anyhow!("{id}.{name} has no Properties"))?;
                    if let Some(other) = ep.keys().find(|k| {
                        !["ScheduleExpression", "Input", "Description"].contains(&k.as_str())
                    }) {
                        bail!("{id}.{name}: ScheduleV2's {other} has no twin in a Schedule event");
                    }
                    let expr = ep.remove("ScheduleExpression").unwrap_or_default();
                    ep.insert("Schedule".into(), expr);
                    e["Type"] = "Schedule".into();
                    kept.insert(name, e);
                }
                _ => {
                    kept.insert(name, e);
                }
            }
        }
        if kept.is_empty() {
            p.remove("Events");
        } else {
            *events = kept;
        }
    }

    let params = t["Parameters"]
        .as_object_mut()
        .ok_or_else(|| anyhow!("template.yaml has no Parameters"))?;
    params.insert(
        TABLE_PARAM.into(),
        json!({"Type": "String", "Default": "flashsale"}),
    );
    params.insert(
        "DynamoDbEndpoint".into(),
        json!({"Type": "String", "Default": ""}),
    );
    for p in ["SubnetIds", "SecurityGroupIds"] {
        params.insert(p.into(), json!({"Type": "String", "Default": ""}));
    }
    t["Conditions"]["HasDynamoDbEndpoint"] =
        json!({"Fn::Not": [{"Fn::Equals": [{"Ref": "DynamoDbEndpoint"}, ""]}]});
    let globals = t["Globals"]["Function"]
        .as_object_mut()
        .ok_or_else(|| anyhow!("template.yaml has no Globals.Function"))?;
    globals.remove("VpcConfig");
    let vars = globals
        .get_mut("Environment")
        .and_then(|e| e.get_mut("Variables"))
        .and_then(Value::as_object_mut)
        .ok_or_else(|| anyhow!("template.yaml has no Globals.Function.Environment.Variables"))?;
    // An empty endpoint would be an invalid one: no variable instead.
    vars.insert(
        "AWS_ENDPOINT_URL_DYNAMODB".into(),
        json!({"Fn::If": ["HasDynamoDbEndpoint", {"Ref": "DynamoDbEndpoint"}, {"Ref": "AWS::NoValue"}]}),
    );
    vars.insert("FLASHSALE_INSECURE_USER_FROM_BODY".into(), "1".into());

    if let Some(outputs) = t.get_mut("Outputs").and_then(Value::as_object_mut) {
        outputs.retain(|_, o| !mentions(o, &dropped));
    }
    let t = swap_table(t);
    // What swap_table does not know (`${FlashSaleTable.Arn}`, DependsOn)
    // must fail here, not in LocalStack.
    let mut gone = dropped.clone();
    gone.push(TABLE.to_owned());
    let left: Vec<&String> = t["Resources"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, r)| mentions(r, &gone) || depends_on(r, &gone))
        .map(|(id, _)| id)
        .collect();
    if !left.is_empty() {
        bail!(
            "{left:?} refer to resources LocalStack cannot create ({dropped:?}): drop them here too"
        );
    }
    Ok(Local {
        template: t,
        table: Value::Object(table_input),
        ttl_attribute,
        routes,
        functions,
    })
}

/// The table's references become the parameter's.
fn swap_table(v: Value) -> Value {
    match v {
        Value::Object(o) => {
            if o.get("Ref").and_then(Value::as_str) == Some(TABLE) {
                return json!({"Ref": TABLE_PARAM});
            }
            if o.get("Fn::GetAtt") == Some(&json!([TABLE, "Arn"])) {
                return json!({"Fn::Sub": format!("arn:${{AWS::Partition}}:dynamodb:${{AWS::Region}}:${{AWS::AccountId}}:table/${{{TABLE_PARAM}}}")});
            }
            Value::Object(o.into_iter().map(|(k, x)| (k, swap_table(x))).collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(swap_table).collect()),
        Value::String(s) => {
            Value::String(s.replace(&format!("${{{TABLE}}}"), &format!("${{{TABLE_PARAM}}}")))
        }
        other => other,
    }
}

/// Whether resource `r` names one of `ids` in its `DependsOn`.
fn depends_on(r: &Value, ids: &[String]) -> bool {
    let named = |v: &Value| v.as_str().is_some_and(|s| ids.iter().any(|i| i == s));
    match &r["DependsOn"] {
        Value::Array(a) => a.iter().any(named),
        other => named(other),
    }
}

/// Whether `v` refers to one of `ids` (Ref, GetAtt, or `${Id}`/`${Id.Attr}`
/// in a Sub).
fn mentions(v: &Value, ids: &[String]) -> bool {
    match v {
        Value::Object(o) => {
            let named = |x: Option<&Value>| {
                x.and_then(Value::as_str)
                    .is_some_and(|s| ids.iter().any(|i| i == s))
            };
            named(o.get("Ref"))
                || named(o.get("Fn::GetAtt").and_then(|g| g.get(0)))
                || o.values().any(|x| mentions(x, ids))
        }
        Value::Array(a) => a.iter().any(|x| mentions(x, ids)),
        Value::String(s) => ids
            .iter()
            .any(|i| s.contains(&format!("${{{i}}}")) || s.contains(&format!("${{{i}."))),
        _ => false,
    }
}

impl Route {
    /// Whether `method path` is this route; `{name}` matches one segment.
    pub fn matches(&self, method: &str, path: &str) -> bool {
        if self.method != "ANY" && !self.method.eq_ignore_ascii_case(method) {
            return false;
        }
        let mut want = self.path.trim_matches('/').split('/');
        let mut got = path.trim_matches('/').split('/');
        loop {
            match (want.next(), got.next()) {
                (None, None) => return true,
                (Some(w), Some(g))
                    if (w.starts_with('{') && w.ends_with('}') && !g.is_empty()) || w == g => {}
                _ => return false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE: &str = include_str!("../../template.yaml");

    fn local() -> Local {
        local_template(TEMPLATE, "bucket").unwrap()
    }

    #[test]
    fn every_function_comes_from_its_zip_and_nothing_refers_to_what_was_dropped() {
        let l = local();
        assert_eq!(l.functions.len(), 8);
        for f in &l.functions {
            assert_eq!(
                l.template["Resources"][&f.logical_id]["Properties"]["CodeUri"],
                format!("s3://bucket/{}.zip", f.binary)
            );
        }
        let singletons: Vec<&str> = l
            .functions
            .iter()
            .filter(|f| f.reserved_concurrency == Some(1))
            .map(|f| f.binary.as_str())
            .collect();
        assert_eq!(singletons.len(), 2, "{singletons:?}");
        let text = l.template.to_string();
        for gone in [
            "FlashSaleApi",
            "\"FlashSaleTable\"",
            "${FlashSaleTable}",
            "AWS::CloudWatch::",
            "AWS::WAFv2::",
            "ScheduleV2",
            "VpcConfig",
        ] {
            assert!(
                !text.contains(gone),
                "{gone} is still in the local template"
            );
        }
        assert!(l.template["Outputs"]["OrdersQueueUrl"].is_object());
        assert_eq!(
            l.template["Outputs"]["TableName"]["Value"],
            json!({"Ref": TABLE_PARAM})
        );
    }

    #[test]
    fn queues_mappings_and_schedules_stay_as_the_template_says() {
        let l = local();
        let r = &l.template["Resources"];
        assert_eq!(r["OrdersQueue"], {
            let yaml: serde_yaml::Value = serde_yaml::from_str(TEMPLATE).unwrap();
            to_json(yaml).unwrap()["Resources"]["OrdersQueue"].clone()
        });
        let orders = &r["OrderConsumerFunction"]["Properties"]["Events"]["Orders"];
        assert_eq!(orders["Type"], "SQS");
        assert_eq!(
            orders["Properties"]["FunctionResponseTypes"],
            json!(["ReportBatchItemFailures"])
        );
        let schedules: Vec<&Value> = r
            .as_object()
            .unwrap()
            .values()
            .filter_map(|f| f["Properties"]["Events"].as_object())
            .flat_map(|e| e.values())
            .filter(|e| e["Type"] == "Schedule")
            .collect();
        assert_eq!(schedules.len(), 2, "the sweeper's and the expirer's");
        assert!(
            schedules
                .iter()
                .all(|s| s["Properties"]["Schedule"] == "rate(1 minute)")
        );
    }

    #[test]
    fn the_table_is_defined_for_dynamodb_local_as_the_template_defines_it() {
        let l = local();
        assert_eq!(
            l.table["KeySchema"],
            json!([{"AttributeName": "pk", "KeyType": "HASH"}])
        );
        assert_eq!(
            l.table["GlobalSecondaryIndexes"].as_array().unwrap().len(),
            2
        );
        assert_eq!(l.ttl_attribute.as_deref(), Some("expires_at"));
    }

    #[test]
    fn the_http_routes_are_kept_for_the_gateway() {
        let l = local();
        let buy = l
            .routes
            .iter()
            .find(|r| r.path == "/api/flash-sale/buy")
            .unwrap();
        assert_eq!(
            (buy.method.as_str(), buy.function.as_str()),
            ("POST", "DeductFunction")
        );
        let route = |m: &str, p: &str| {
            l.routes
                .iter()
                .find(|r| r.matches(m, p))
                .map(|r| r.function.as_str())
        };
        assert_eq!(
            route("GET", "/api/flash-sale/orders/abc"),
            Some("OrderStatusFunction")
        );
        assert_eq!(
            route("POST", "/api/admin/products/p1/pause"),
            Some("AdminFunction")
        );
        assert_eq!(
            route("GET", "/api/admin/products/p1/audit"),
            Some("AdminFunction")
        );
        assert_eq!(route("GET", "/api/flash-sale/orders/"), None);
        assert_eq!(route("DELETE", "/api/flash-sale/buy"), None);
    }
}
