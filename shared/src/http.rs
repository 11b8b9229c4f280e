//! HTTP helpers shared by the API functions: JSON answers, the caller's
//! identity, query parameters. The same code serves API Gateway events and
//! the local runner, which both hand us a `lambda_http::Request`.

use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};
use serde::Serialize;
use serde_json::json;

use crate::error::{InfraError, ValidationError};

pub type HttpResponse = Response<Body>;

/// Bodies larger than this are refused before parsing.
pub const MAX_BODY_BYTES: usize = 4096;

pub fn json_response<T: Serialize>(status: u16, body: &T) -> HttpResponse {
    let text = serde_json::to_string(body).unwrap_or_else(|_| "{}".into());
    let mut resp = Response::new(Body::Text(text));
    *resp.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// A refusal, as the API answers it: `{"error": code, "message"?: ...}`.
/// Handlers return `Result<HttpResponse, ApiError>` and `?` does the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: Option<String>,
    /// The order's status, for refusals that depend on it.
    pub order_status: Option<&'static str>,
    /// The sale's start (ms), for `sale_not_started`.
    pub starts_at_ms: Option<i64>,
    /// The waiting room's page, for `admission_required`.
    pub room: Option<String>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str) -> Self {
        Self {
            status,
            code,
            message: None,
            order_status: None,
            starts_at_ms: None,
            room: None,
        }
    }

    pub fn with_room(mut self, page: String) -> Self {
        self.room = Some(page);
        self
    }

    pub fn with_starts_at(mut self, ms: i64) -> Self {
        self.starts_at_ms = Some(ms);
        self
    }

    pub fn with_order_status(mut self, status: crate::domain::OrderStatus) -> Self {
        self.order_status = Some(status.as_str());
        self
    }

    pub fn with_message(mut self, message: impl std::fmt::Display) -> Self {
        self.message = Some(message.to_string());
        self
    }

    /// 400 `invalid_request` with what is wrong.
    pub fn invalid(message: impl std::fmt::Display) -> Self {
        Self::new(400, "invalid_request").with_message(message)
    }

    /// The answer with `Retry-After: secs`: nothing was done, ask again then.
    pub fn retry_after(self, secs: i64) -> HttpResponse {
        let mut resp = self.into_response();
        resp.headers_mut().insert(
            lambda_http::http::header::RETRY_AFTER,
            lambda_http::http::HeaderValue::from(secs),
        );
        resp
    }

    pub fn into_response(self) -> HttpResponse {
        let mut body = json!({ "error": self.code });
        if let Some(m) = self.message {
            body["message"] = m.into();
        }
        if let Some(s) = self.order_status {
            body["status"] = s.into();
        }
        if let Some(ms) = self.starts_at_ms {
            body["starts_at"] = crate::domain::iso_ms(ms).into();
        }
        if let Some(page) = self.room {
            body["room"] = page.into();
        }
        json_response(self.status, &body)
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        Self::invalid(e)
    }
}

/// Redis or AWS failed: transient means 503 (fail closed, the client may
/// retry), permanent means our configuration is broken (500).
impl From<InfraError> for ApiError {
    fn from(err: InfraError) -> Self {
        tracing::error!(error = %err, service = err.service, "dependency failed");
        if err.is_transient() {
            Self::new(503, "unavailable")
        } else {
            Self::new(500, "internal_error")
        }
    }
}

/// The raw body, refused when it is too large.
pub fn body_bytes(req: &Request) -> Result<&[u8], ApiError> {
    let bytes: &[u8] = req.body().as_ref();
    if bytes.len() > MAX_BODY_BYTES {
        return Err(ApiError::invalid(format!(
            "body is larger than {MAX_BODY_BYTES} bytes"
        )));
    }
    Ok(bytes)
}

/// The request's JSON body as `T`, or a 400 saying what it must be
/// (`shape`) and what was wrong.
pub fn json_body<T: serde::de::DeserializeOwned>(
    req: &Request,
    shape: &str,
) -> Result<T, ApiError> {
    serde_json::from_slice(body_bytes(req)?)
        .map_err(|e| ApiError::invalid(format!("body must be {shape}: {e}")))
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

/// The caller's address, for the per-IP limit: API Gateway's `sourceIp`.
/// `trust_forwarded` (the local runner, where the buyer comes from the body
/// too) takes the first `X-Forwarded-For` entry instead.
pub fn client_ip(req: &Request, trust_forwarded: bool) -> Option<std::net::IpAddr> {
    if trust_forwarded {
        let forwarded = header(req, "x-forwarded-for")
            .and_then(|v| v.split(',').next())
            .and_then(|ip| ip.trim().parse().ok());
        if forwarded.is_some() {
            return forwarded;
        }
    }
    match req.request_context_ref()? {
        RequestContext::ApiGatewayV2(ctx) => ctx.http.source_ip.as_deref()?.parse().ok(),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// The IAM caller API Gateway authorised (admin routes), as its ARN.
pub fn iam_caller(req: &Request) -> Option<String> {
    match req.request_context_ref()? {
        RequestContext::ApiGatewayV2(ctx) => {
            ctx.authorizer.as_ref()?.iam.as_ref()?.user_arn.clone()
        }
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

pub fn header<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// A header that must be visible ASCII when present: anything else is a 400,
/// never silently treated as absent.
pub fn ascii_header<'a>(req: &'a Request, name: &str) -> Result<Option<&'a str>, ApiError> {
    req.headers()
        .get(name)
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::invalid(format!("{name} must be visible ASCII")))
        })
        .transpose()
}

/// The cookie `name`'s value from the Cookie headers (API Gateway's
/// `cookies` arrive as one).
pub fn cookie<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers()
        .get_all(lambda_http::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
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
/// The header the CloudFront edge adds to every request it forwards.
pub const EDGE_HEADER: &str = "x-flashsale-origin-verify";

/// Whether the request came through the edge: it carries the edge's secret
/// (compared in constant time).
pub fn came_through_edge(req: &Request, secret: &str) -> bool {
    use subtle::ConstantTimeEq;
    header(req, EDGE_HEADER)
        .is_some_and(|given| bool::from(given.as_bytes().ct_eq(secret.as_bytes())))
}

/// Behind the edge, API Gateway's `sourceIp` is CloudFront's; the viewer's
/// address is in `CloudFront-Viewer-Address` (`<ip>:<port>`), which CloudFront
/// sets itself. Makes it the request's source, so the per-address limit
/// counts buyers, not edge servers. Only for a request that came through the
/// edge (its secret checked): anyone else could send the header.
pub fn source_is_viewer(req: &mut Request) {
    let viewer = header(req, "cloudfront-viewer-address").and_then(|v| {
        v.rsplit_once(':')
            .and_then(|(ip, _port)| ip.trim_matches(['[', ']']).parse::<std::net::IpAddr>().ok())
            .or_else(|| v.parse().ok())
    });
    let (Some(viewer), Some(RequestContext::ApiGatewayV2(ctx))) =
        (viewer, req.extensions_mut().get_mut::<RequestContext>())
    else {
        return;
    };
    ctx.http.source_ip = Some(viewer.to_string());
}

/// The answer to a request that bypassed the edge.
pub fn not_through_edge() -> HttpResponse {
    ApiError::new(403, "forbidden")
        .with_message("this API is served through its CloudFront distribution; use that address")
        .into_response()
}

pub fn segments_after<'a>(req: &'a Request, prefix: &str) -> Option<Vec<&'a str>> {
    let path = req.uri().path();
    let start = path.find(prefix)?;
    let rest = &path[start + prefix.len()..];
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    Some(rest.split('/').filter(|s| !s.is_empty()).collect())
}

#[cfg(test)]
mod edge_tests {
    use super::*;

    #[test]
    fn only_requests_carrying_the_edge_secret_came_through_it() {
        let req = |value: Option<&str>| {
            let mut b = lambda_http::http::Request::builder().uri("/api/flash-sale/buy");
            if let Some(v) = value {
                b = b.header("X-Flashsale-Origin-Verify", v);
            }
            b.body(lambda_http::Body::Empty).unwrap()
        };
        assert!(came_through_edge(
            &req(Some("s3cret-from-cloudfront")),
            "s3cret-from-cloudfront"
        ));
        assert!(!came_through_edge(
            &req(Some("s3cret")),
            "s3cret-from-cloudfront"
        ));
        assert!(!came_through_edge(&req(Some("")), "s3cret-from-cloudfront"));
        assert!(!came_through_edge(&req(None), "s3cret-from-cloudfront"));
        assert_eq!(not_through_edge().status(), 403);
    }

    #[test]
    fn behind_the_edge_the_viewer_is_the_source() {
        let event = include_str!("../../events/deduct-buy.json");
        for (header, want) in [
            ("198.51.100.10:46532", "198.51.100.10"),
            ("2001:db8::7:46532", "2001:db8::7"),
            ("[2001:db8::7]:46532", "2001:db8::7"),
        ] {
            let mut req = lambda_http::request::from_str(event).unwrap();
            assert_eq!(client_ip(&req, false), Some("203.0.113.7".parse().unwrap()));
            req.headers_mut()
                .insert("cloudfront-viewer-address", header.parse().unwrap());
            source_is_viewer(&mut req);
            assert_eq!(
                client_ip(&req, false),
                Some(want.parse().unwrap()),
                "{header}"
            );
        }
    }
}
