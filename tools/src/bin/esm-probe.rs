//! A function bootstrap for comparing event source mappings
//! (tools/tests/event_source_mapping.rs): it hands each event to
//! `$FLASHSALE_PROBE_URL/<function name>` and answers what that returns,
//! byte for byte: a 200 body as the function's response, anything else as
//! its error. The Runtime API is spoken directly rather than through
//! lambda_runtime, which would serialise the answer and so could not send
//! the malformed responses the comparison needs.

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

type Http = Client<HttpConnector, Full<Bytes>>;

async fn call(
    http: &Http,
    method: Method,
    url: &str,
    body: Bytes,
) -> Result<(StatusCode, hyper::HeaderMap, Bytes)> {
    let req = Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(body))
        .with_context(|| format!("building a request to {url}"))?;
    let resp = http
        .request(req)
        .await
        .with_context(|| format!("calling {url}"))?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok((parts.status, parts.headers, body))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let var = |name: &str| {
        std::env::var(name).with_context(|| {
            format!("{name} is not set: esm-probe runs as a Lambda function's bootstrap, deployed by the comparison test")
        })
    };
    let runtime = format!(
        "http://{}/2018-06-01/runtime",
        var("AWS_LAMBDA_RUNTIME_API")?
    );
    let probe = format!(
        "{}/{}",
        var("FLASHSALE_PROBE_URL")?,
        var("AWS_LAMBDA_FUNCTION_NAME")?
    );
    let http: Http = Client::builder(TokioExecutor::new()).build_http();
    loop {
        let (_, headers, event) = call(
            &http,
            Method::GET,
            &format!("{runtime}/invocation/next"),
            Bytes::new(),
        )
        .await?;
        let id = headers
            .get("lambda-runtime-aws-request-id")
            .and_then(|v| v.to_str().ok())
            .context("the Runtime API sent an invocation without Lambda-Runtime-Aws-Request-Id")?
            .to_owned();
        let (outcome, answer) = match call(&http, Method::POST, &probe, event).await {
            Ok((StatusCode::OK, _, body)) => ("response", body),
            Ok((status, _, body)) => {
                eprintln!("[esm-probe] the probe answered {status}: an error");
                ("error", body)
            }
            Err(e) => (
                "error",
                Bytes::from(serde_json::json!({ "errorMessage": format!("{e:#}") }).to_string()),
            ),
        };
        call(
            &http,
            Method::POST,
            &format!("{runtime}/invocation/{id}/{outcome}"),
            answer,
        )
        .await?;
    }
}
