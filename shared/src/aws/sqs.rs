//! The SQS adapter of [`OrderQueue`].

use aws_config::SdkConfig;
use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};

use crate::domain::{OrderMessage, RequestId};
use crate::error::InfraError;
use crate::ports::{OrderQueue, PortResult};

use super::classify;

#[derive(Clone)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

impl SqsQueue {
    /// One cheap call at init: resolves credentials and opens the pooled
    /// HTTPS connection, which the first buyer would otherwise wait for.
    pub async fn prepare(&self) -> PortResult<()> {
        self.client
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| classify("sqs", e))?;
        Ok(())
    }

    pub fn new(config: &SdkConfig, queue_url: impl Into<String>) -> Self {
        Self {
            client: aws_sdk_sqs::Client::new(config),
            queue_url: queue_url.into(),
        }
    }
}

impl OrderQueue for SqsQueue {
    async fn send(&self, msg: &OrderMessage, traceparent: &str) -> PortResult<()> {
        let body = serde_json::to_string(msg)
            .map_err(|e| InfraError::permanent("sqs", format!("cannot encode message: {e}")))?;
        let tp = MessageAttributeValue::builder()
            .data_type("String")
            .string_value(traceparent)
            .build()
            .map_err(|e| InfraError::permanent("sqs", e.to_string()))?;
        self.client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .message_attributes("traceparent", tp)
            .send()
            .await
            .map_err(|e| classify("sqs", e))?;
        Ok(())
    }

    async fn send_batch(
        &self,
        msgs: &[OrderMessage],
        traceparents: Option<&[String]>,
    ) -> PortResult<Vec<RequestId>> {
        let mut entries = Vec::with_capacity(msgs.len());
        for (i, msg) in msgs.iter().enumerate() {
            let body = serde_json::to_string(msg)
                .map_err(|e| InfraError::permanent("sqs", format!("cannot encode message: {e}")))?;
            let tp = match traceparents.and_then(|t| t.get(i)) {
                Some(tp) => tp.clone(),
                None => crate::telemetry::traceparent(None),
            };
            let tp = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(tp)
                .build()
                .map_err(|e| InfraError::permanent("sqs", e.to_string()))?;
            entries.push(
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(body)
                    .message_attributes("traceparent", tp)
                    .build()
                    .map_err(|e| InfraError::permanent("sqs", e.to_string()))?,
            );
        }
        let out = self
            .client
            .send_message_batch()
            .queue_url(&self.queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| classify("sqs", e))?;
        Ok(out
            .failed
            .iter()
            .filter_map(|f| msgs.get(f.id.parse::<usize>().ok()?))
            .map(|m| m.request_id.clone())
            .collect())
    }
}
