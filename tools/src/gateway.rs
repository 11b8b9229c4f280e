//! The HTTP API in front of functions deployed into LocalStack, which has no
//! API Gateway v2: template.yaml's routes (tools::cfnlocal), each request
//! sent to its function through the Lambda Invoke API as the payload 2.0
//! event API Gateway would build (route key, path parameters, headers as
//! sent). What API Gateway adds and this does not: the JWT and IAM
//! authorizers and throttling.
//!
//! At most `concurrency` invocations per function run at once, the rest
//! wait: LocalStack starts a container per concurrent invocation, and under
//! Docker's vfs storage driver each one is a full copy of the image (a
//! demo's rush once took 60 GB).
//!
//! Not LocalStack's function URLs: they re-encode form bodies and overwrite
//! `X-Forwarded-For` with the caller's address, and the handlers' URI
//! parsing refuses their host names (`<id>.lambda-url.<region>.127.0.0.1`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use anyhow::Context;
use aws_config::SdkConfig;
use aws_sdk_lambda::primitives::Blob;
use aws_smithy_types::base64;
use lambda_http::Body;
use serde::Deserialize;
use serde_json::{Value, json};
use shared::http::{ApiError, HttpResponse};
use tokio::sync::Semaphore;

use crate::cfnlocal::Route;
use crate::runner::Routes;

/// A route and the deployed function behind it.
#[derive(Debug, Clone, Deserialize)]
pub struct Target {
    #[serde(flatten)]
    pub route: Route,
    /// The function's name in LocalStack.
    pub name: String,
}

pub struct Gateway {
    targets: Vec<Target>,
    /// One per function name.
    slots: HashMap<String, Arc<Semaphore>>,
    lambda: aws_sdk_lambda::Client,
}

impl Gateway {
    pub fn new(sdk: &SdkConfig, targets: Vec<Target>, concurrency: usize) -> Self {
        let conf = aws_sdk_lambda::config::Builder::from(sdk)
            .timeout_config(crate::invoke::invoke_timeouts())
            // API Gateway does not retry an integration: the client decides.
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .build();
        let slots = targets
            .iter()
            .map(|t| (t.name.clone(), Arc::new(Semaphore::new(concurrency))))
            .collect();
        Self {
            targets,
            slots,
            lambda: aws_sdk_lambda::Client::from_conf(conf),
        }
    }

    async fn invoke(&self, target: &Target, event: &Value) -> anyhow::Result<HttpResponse> {
        let _slot = match self.slots.get(&target.name) {
            Some(s) => Some(s.acquire().await?),
            None => None,
        };
        let out = self
            .lambda
            .invoke()
            .function_name(&target.name)
            .payload(Blob::new(serde_json::to_vec(event)?))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{}", aws_sdk_lambda::error::DisplayErrorContext(&e)))?;
        let payload = out.payload.map(Blob::into_inner).unwrap_or_default();
        if let Some(kind) = out.function_error {
            anyhow::bail!(
                "the function failed ({kind}): {}",
                String::from_utf8_lossy(&payload)
            );
        }
        response(&payload)
    }
}

/// The payload 2.0 event API Gateway sends for `req` on `route`.
pub fn event(route: &Route, req: &lambda_http::Request) -> Value {
    let uri = req.uri();
    let mut headers = BTreeMap::<String, String>::new();
    let mut cookies = Vec::new();
    for (name, value) in req.headers() {
        // Payload 2.0 carries cookies in their own list.
        if name == hyper::header::COOKIE {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            cookies.extend(
                value
                    .split(';')
                    .map(|c| c.trim().to_owned())
                    .filter(|c| !c.is_empty()),
            );
            continue;
        }
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        // Repeated headers arrive comma-joined, as API Gateway joins them.
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push(',');
                v.push_str(&value);
            })
            .or_insert(value);
    }
    // Decoded, a repeated key's values comma-joined, as API Gateway does.
    let mut query = BTreeMap::<String, String>::new();
    for (k, v) in form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()) {
        query
            .entry(k.into_owned())
            .and_modify(|joined| {
                joined.push(',');
                joined.push_str(&v);
            })
            .or_insert_with(|| v.into_owned());
    }
    let path_parameters: BTreeMap<&str, &str> = route
        .path
        .trim_matches('/')
        .split('/')
        .zip(uri.path().trim_matches('/').split('/'))
        .filter_map(|(want, got)| Some((want.strip_prefix('{')?.strip_suffix('}')?, got)))
        .collect();
    let route_key = format!("{} {}", route.method, route.path);
    let (body, encoded) = match req.body() {
        Body::Empty => (None, false),
        Body::Text(s) => (Some(s.clone()), false),
        Body::Binary(b) => match std::str::from_utf8(b) {
            Ok(s) => (Some(s.to_owned()), false),
            Err(_) => (Some(base64::encode(b)), true),
        },
        _ => (None, false),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    let mut event = json!({
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": uri.path(),
        "rawQueryString": uri.query().unwrap_or_default(),
        "headers": headers,
        "requestContext": {
            "accountId": "000000000000",
            "apiId": "local",
            "domainName": headers.get("host").cloned().unwrap_or_else(|| "localhost".into()),
            "domainPrefix": "local",
            "http": {
                "method": req.method().as_str(),
                "path": uri.path(),
                "protocol": "HTTP/1.1",
                // The gateway's callers are on this machine.
                "sourceIp": "127.0.0.1",
                "userAgent": headers.get("user-agent").cloned().unwrap_or_default(),
            },
            "requestId": uuid::Uuid::new_v4().to_string(),
            "routeKey": route_key,
            "stage": "$default",
            "timeEpoch": now,
        },
        "isBase64Encoded": encoded,
    });
    if !query.is_empty() {
        event["queryStringParameters"] = json!(query);
    }
    if !cookies.is_empty() {
        event["cookies"] = json!(cookies);
    }
    if !path_parameters.is_empty() {
        event["pathParameters"] = json!(path_parameters);
    }
    if let Some(body) = body {
        event["body"] = body.into();
    }
    event
}

/// A function's answer as API Gateway turns it into HTTP (payload 2.0: an
/// answer without `statusCode` is a 200 with the answer as its body).
fn response(payload: &[u8]) -> anyhow::Result<HttpResponse> {
    let v: Value = serde_json::from_slice(payload).context("the function's answer is not JSON")?;
    let Some(status) = v.get("statusCode").and_then(Value::as_u64) else {
        return Ok(lambda_http::Response::builder()
            .header("content-type", "application/json")
            .body(Body::Text(v.to_string()))?);
    };
    let mut resp = lambda_http::Response::builder().status(status as u16);
    for (name, value) in v["headers"].as_object().into_iter().flatten() {
        resp = resp.header(name, value.as_str().unwrap_or_default());
    }
    for cookie in v["cookies"].as_array().into_iter().flatten() {
        resp = resp.header("set-cookie", cookie.as_str().unwrap_or_default());
    }
    let body = v["body"].as_str().unwrap_or_default();
    let body = if v["isBase64Encoded"] == true {
        Body::Binary(base64::decode(body).context("the function's base64 body does not decode")?)
    } else {
        Body::Text(body.to_owned())
    };
    Ok(resp.body(body)?)
}

impl Routes for Gateway {
    async fn route(&self, req: lambda_http::Request) -> HttpResponse {
        let method = req.method().as_str().to_owned();
        let path = req.uri().path().to_owned();
        let Some(target) = self
            .targets
            .iter()
            .find(|t| t.route.matches(&method, &path))
        else {
            return ApiError::new(404, "not_found")
                .with_message(format!("no route of template.yaml serves {method} {path}"))
                .into_response();
        };
        let event = event(&target.route, &req);
        match self.invoke(target, &event).await {
            Ok(resp) => resp,
            // As API Gateway answers a failed integration.
            Err(e) => ApiError::new(500, "internal_error")
                .with_message(format!("invoking {} in LocalStack: {e}", target.name))
                .into_response(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_becomes_the_event_api_gateway_would_send() {
        let route = Route {
            method: "POST".into(),
            path: "/api/flash-sale/orders/{request_id}/cancel".into(),
            function: "OrderStatusFunction".into(),
        };
        let req = lambda_http::http::Request::builder()
            .method("POST")
            .uri("/api/flash-sale/orders/r1/cancel?user_id=u1&tag=a%20b&tag=c")
            .header("x-forwarded-for", "10.1.2.3")
            .header("cookie", "a=1; b=2")
            .header("host", "127.0.0.1:3000")
            .body(Body::Binary(b"{}".to_vec()))
            .unwrap();
        let e = event(&route, &req);
        assert_eq!(
            e["routeKey"],
            "POST /api/flash-sale/orders/{request_id}/cancel"
        );
        assert_eq!(e["pathParameters"], json!({"request_id": "r1"}));
        assert_eq!(
            e["queryStringParameters"],
            json!({"user_id": "u1", "tag": "a b,c"})
        );
        assert_eq!(e["rawQueryString"], "user_id=u1&tag=a%20b&tag=c");
        assert_eq!(e["cookies"], json!(["a=1", "b=2"]));
        assert!(e["headers"].get("cookie").is_none());
        assert_eq!(e["headers"]["x-forwarded-for"], "10.1.2.3");
        assert_eq!(
            (e["body"].as_str(), e["isBase64Encoded"].as_bool()),
            (Some("{}"), Some(false))
        );
        let parsed: lambda_http::aws_lambda_events::apigw::ApiGatewayV2httpRequest =
            serde_json::from_value(e).unwrap();
        assert_eq!(parsed.request_context.http.method, "POST");
    }

    #[test]
    fn an_answer_becomes_the_http_response_api_gateway_would_send() {
        let r = response(br#"{"statusCode":410,"headers":{"content-type":"application/json"},"body":"{\"error\":\"sold_out\"}","isBase64Encoded":false,"cookies":[]}"#).unwrap();
        assert_eq!(r.status(), 410);
        assert_eq!(r.headers()["content-type"], "application/json");
        assert_eq!(r.body(), &Body::Text(r#"{"error":"sold_out"}"#.into()));
        let plain = response(br#"{"ok":true}"#).unwrap();
        assert_eq!(plain.status(), 200);
        assert_eq!(plain.headers()["content-type"], "application/json");
    }
}
