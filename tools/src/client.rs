//! A small HTTP client for the API (demo and tests), on hyper.

use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

#[derive(Clone)]
pub struct Api {
    base: String,
    admin_token: String,
    http: Client<HttpConnector, Full<Bytes>>,
}

/// A page as a browser gets it.
pub struct Page {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: String,
}

impl Page {
    /// The value of the cookie `name` the answer sets.
    pub fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(hyper::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|c| {
                let (pair, _) = c.split_once(';').unwrap_or((c, ""));
                let (k, v) = pair.split_once('=')?;
                (k.trim() == name).then(|| v.trim().to_owned())
            })
    }
}

pub struct Answer {
    pub status: u16,
    pub body: Value,
    /// The local edge answered it itself (`x-flashsale-edge: refused`).
    pub at_edge: bool,
}

impl Api {
    pub fn new(base: impl Into<String>, admin_token: impl Into<String>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self {
            base: base.into().trim_end_matches('/').to_owned(),
            admin_token: admin_token.into(),
            http: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
        }
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Answer> {
        let (status, headers, raw) = self.raw(method, path, headers, body).await?;
        let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        Ok(Answer {
            status,
            body,
            at_edge: headers.contains_key("x-flashsale-edge"),
        })
    }

    /// The answer with its headers and its body as text (the waiting
    /// room's pages).
    pub async fn page(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Page> {
        let (status, headers, raw) = self.raw(method, path, headers, body).await?;
        Ok(Page {
            status,
            headers,
            body: String::from_utf8_lossy(&raw).into_owned(),
        })
    }

    /// `GET path` as text (the runner's `/metrics`).
    pub async fn text(&self, path: &str) -> Result<String> {
        let (status, _, raw) = self.raw("GET", path, &[], None).await?;
        anyhow::ensure!(status == 200, "GET {path} answered {status}");
        Ok(String::from_utf8_lossy(&raw).into_owned())
    }

    async fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<(u16, hyper::HeaderMap, Bytes)> {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let req = req.body(Full::new(Bytes::from(bytes)))?;
        let resp = tokio::time::timeout(Duration::from_secs(30), self.http.request(req))
            .await
            .context("request timed out after 30 s")?
            .with_context(|| format!("{method} {path}: is the runner up at {}?", self.base))?;
        let status = resp.status().as_u16();
        let (parts, body) = resp.into_parts();
        Ok((status, parts.headers, body.collect().await?.to_bytes()))
    }

    /// A buy from the body's `user_id`, sent from that buyer's own address
    /// (see [`address_of`]).
    pub async fn buy(&self, body: &Value, idempotency_key: Option<&str>) -> Result<Answer> {
        let address = address_of(body["user_id"].as_str().unwrap_or_default());
        // The product in the header too, as clients send it: the edge
        // cannot read a body (docs/api.md).
        let product = body["product_id"].as_str().unwrap_or_default();
        let mut headers = vec![
            ("X-Forwarded-For", address.as_str()),
            ("X-Flashsale-Product", product),
        ];
        headers.extend(idempotency_key.map(|k| ("Idempotency-Key", k)));
        self.call("POST", "/api/flash-sale/buy", &headers, Some(body))
            .await
    }

    /// Delivers a payment provider's event, signed with `secret` at unix
    /// time `t` as the provider would.
    pub async fn webhook(&self, secret: &[u8], t: i64, event: &Value) -> Result<Answer> {
        let signature = shared::payment::sign(secret, t, event.to_string().as_bytes());
        self.call(
            "POST",
            "/api/payments/webhook",
            &[("Flashsale-Signature", &signature)],
            Some(event),
        )
        .await
    }

    /// `POST /api/flash-sale/orders/{id}/cancel` as `user` (local runner).
    pub async fn cancel(&self, request_id: &str, user: &str) -> Result<Answer> {
        let path = format!("/api/flash-sale/orders/{request_id}/cancel?user_id={user}");
        self.call("POST", &path, &[], None).await
    }

    /// `GET /api/flash-sale/orders/{id}` as `user` (local runner).
    pub async fn order(&self, request_id: &str, user: &str) -> Result<Answer> {
        let path = format!("/api/flash-sale/orders/{request_id}?user_id={user}");
        self.call("GET", &path, &[], None).await
    }

    pub async fn admin(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Answer> {
        let auth = format!("Bearer {}", self.admin_token);
        self.call(method, path, &[("Authorization", &auth)], body)
            .await
    }
}

/// A buyer's own client address, stable per buyer: the local API takes the
/// buyer from the body and the address from `X-Forwarded-For`, so a load
/// of many buyers looks like many clients to the per-IP limit, as it would
/// in AWS.
pub fn address_of(user: &str) -> String {
    let h = user.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let [a, b, c, ..] = h.to_be_bytes();
    format!("10.{a}.{b}.{}", c.max(1))
}
