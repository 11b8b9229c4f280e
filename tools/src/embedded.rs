//! The embedded DynamoDB (`shared::embedded`) over another configuration,
//! and [`recording`], which records a real server's answers for the
//! differential test ([`Recording::replay_differences`]).

use std::sync::{Arc, Mutex};

use anyhow::Result;
use aws_config::SdkConfig;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::byte_stream::ByteStream;

pub use shared::embedded::{Embedded, Faults};

/// `base` with its DynamoDB calls landing in `embedded` and every other
/// call (SQS) going where it went.
pub fn over(embedded: &Embedded, base: &SdkConfig) -> SdkConfig {
    base.to_builder()
        .http_client(embedded.http_client(Some(crate::capacity::http_client_of(base))))
        .build()
}

/// One DynamoDB call as the adapter made it and as a server answered it.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub operation: String,
    pub request: Vec<u8>,
    pub status: u16,
    pub response: String,
}

/// The DynamoDB calls made through [`recording`]'s configuration, in order.
#[derive(Debug, Clone, Default)]
pub struct Recording(Arc<Mutex<Vec<Exchange>>>);

impl Recording {
    pub fn exchanges(&self) -> Vec<Exchange> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replays every recorded request, in order, on a fresh embedded store
    /// and lists where its answer differs from the recorded one: the status,
    /// the error's type, each cancellation reason's code, or a success's
    /// body (messages and consumed capacity aside). The differential test of
    /// the embedded store against the server the recording was made on.
    pub fn replay_differences(&self) -> Result<Vec<String>> {
        let embedded = Embedded::new()?;
        let mut differences = Vec::new();
        for (i, x) in self.exchanges().iter().enumerate() {
            let (status, response) = embedded.dispatch(&x.operation, &x.request);
            let (ours, theirs) = (
                answer(&x.operation, status, &response),
                answer(&x.operation, x.status, &x.response),
            );
            if ours != theirs {
                differences.push(format!(
                    "#{i} {}: recorded {theirs}, embedded {ours}; request {}",
                    x.operation,
                    String::from_utf8_lossy(&x.request)
                ));
            }
        }
        Ok(differences)
    }
}

/// What an answer means to the adapter: its status, an error's type and
/// cancellation codes, a success's body without the consumed capacity. A
/// table's description differs by nature (creation time, ARNs, sizes): only
/// its status counts, the one thing provisioning reads.
fn answer(operation: &str, status: u16, body: &str) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    if status != 200 {
        let kind = v["__type"].as_str().unwrap_or_default();
        let kind = kind.rsplit('#').next().unwrap_or_default().to_owned();
        let codes: Vec<serde_json::Value> = v["CancellationReasons"]
            .as_array()
            .map(|r| r.iter().map(|r| r["Code"].clone()).collect())
            .unwrap_or_default();
        return serde_json::json!({ "status": status, "type": kind, "codes": codes });
    }
    // CreateTable: DynamoDB answers CREATING, as dynoxide does; DynamoDB
    // Local answers ACTIVE. Provisioning waits on DescribeTable either way.
    if operation == "CreateTable" {
        return serde_json::json!({ "status": status });
    }
    if operation.ends_with("Table") {
        let table = v.get("Table").or_else(|| v.get("TableDescription"));
        let table_status = table.map(|t| t["TableStatus"].clone());
        return serde_json::json!({ "status": status, "table_status": table_status });
    }
    if let Some(o) = v.as_object_mut() {
        o.remove("ConsumedCapacity");
    }
    serde_json::json!({ "status": status, "body": v })
}

/// `base` with every DynamoDB call and its answer recorded.
pub fn recording(base: &SdkConfig) -> (SdkConfig, Recording) {
    let recording = Recording::default();
    let client = Recorder {
        inner: crate::capacity::http_client_of(base),
        recording: recording.clone(),
    };
    let sdk = base
        .to_builder()
        .http_client(SharedHttpClient::new(client))
        .build();
    (sdk, recording)
}

#[derive(Debug)]
struct Recorder {
    inner: SharedHttpClient,
    recording: Recording,
}

impl HttpClient for Recorder {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(RecordingConnector {
            inner: self.inner.http_connector(settings, components),
            recording: self.recording.clone(),
        })
    }
}

#[derive(Debug)]
struct RecordingConnector {
    inner: SharedHttpConnector,
    recording: Recording,
}

impl HttpConnector for RecordingConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let target = request.headers().get("x-amz-target").unwrap_or_default();
        let Some(operation) = target.strip_prefix("DynamoDB_20120810.") else {
            return self.inner.call(request);
        };
        let operation = operation.to_owned();
        let body = request.body().bytes().unwrap_or_default().to_vec();
        let reply = self.inner.call(request);
        let recording = self.recording.clone();
        HttpConnectorFuture::new(async move {
            let reply = reply.await?;
            let status = reply.status();
            let headers = reply.headers().clone();
            let bytes = ByteStream::new(reply.into_body())
                .collect()
                .await
                .map_err(|e| ConnectorError::io(e.into()))?
                .into_bytes();
            recording
                .0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Exchange {
                    operation,
                    request: body,
                    status: status.as_u16(),
                    response: String::from_utf8_lossy(&bytes).into_owned(),
                });
            let mut response = HttpResponse::new(status, SdkBody::from(bytes));
            *response.headers_mut() = headers;
            Ok(response)
        })
    }
}
