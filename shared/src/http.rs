//! HTTP helpers shared by the API functions: JSON answers, the caller's
//! identity, query parameters. The same code serves API Gateway events and
//! the local runner, which both hand us a `lambda_http::Request`.

use lambda_http::{Body, Request, RequestExt, Response};
use lambda_http::request::RequestContext;
use serde::Serialize;
use serde_json::json;

use crate::error::InfraError;

pub type HttpResponse = Response<Body>;

/// Bodies larger than this are refused before parsing.
pub const MAX_BODY_BYTES: usize = 4096;

pub fn json_response<T: Serialize>(status: u16, body: &T) -> HttpResponse {
    let text = serde_json::to_string(body).unwrap_or_else(|_| "{}".into());
    let mut resp = Response::new(Body::Text(text));
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

pub fn error(status: u16, code: &str) -> HttpResponse {
    json_response(status, &json!({ "error": code }))
}

pub fn invalid(message: impl std::fmt::Display) -> HttpResponse {
    json_response(
        400,
        &json!({ "error": "invalid_request", "message": message.to_string() }),
    )
}

/// Redis or AWS failed: transient means 503 (fail closed, the client may
/// retry), permanent means our configuration is broken (500).
pub fn infra_failure(err: &InfraError) -> HttpResponse {
    tracing::error!(error = %err, service = err.service, "dependency failed");
    if err.is_transient() {
        error(503, "unavailable")
    } else {
        error(500, "internal_error")
    }
}

/// The raw body, or a 400 answer when it is too large.
pub fn body_bytes(req: &Request) -> Result<&[u8], HttpResponse> {
    let bytes: &[u8] = req.body().as_ref();
    if bytes.len() > MAX_BODY_BYTES {
        return Err(invalid(format!("body is larger than {MAX_BODY_BYTES} bytes")));
    }
    Ok(bytes)
}

/// The `sub` claim of API Gateway's JWT authorizer: the only identity we
/// trust outside insecure mode.
pub fn jwt_subject(req: &Request) -> Option<String> {
    match req.request_context_ref()? {
        RequestContext::ApiGatewayV2(ctx) => ctx
            .authorizer
            .as_ref()?
            .jwt
            .as_ref()?
            .claims
            .get("sub")
            .cloned(),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

pub fn header<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// A query parameter from API Gateway's parsed map, or from the URI.
pub fn query_param(req: &Request, name: &str) -> Option<String> {
    if let Some(v) = req
        .query_string_parameters_ref()
        .and_then(|q| q.first(name))
    {
        return Some(v.to_owned());
    }
    req.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| v.to_owned())
    })
}

/// Path segments after `prefix`, e.g. `/api/admin/products/p1/warm` with
/// prefix `/api/admin/products` gives `["p1", "warm"]`. API Gateway stage
/// prefixes before `/api` are tolerated.
pub fn segments_after<'a>(req: &'a Request, prefix: &str) -> Option<Vec<&'a str>> {
    let path = req.uri().path();
    let start = path.find(prefix)?;
    let rest = &path[start + prefix.len()..];
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    Some(rest.split('/').filter(|s| !s.is_empty()).collect())
}
