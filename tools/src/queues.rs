//! Operator tools for the dead-letter queues: list what is parked and why,
//! move it back with SQS `StartMessageMoveTask`, and read queue depths.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use aws_config::SdkConfig;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, MessageSystemAttributeName, QueueAttributeName,
};
use indicatif::{ProgressBar, ProgressStyle};

use shared::domain::OrderMessage;
use shared::ports::prelude::*;

use crate::provision::queue_arn;

/// Messages visible or in flight.
pub async fn depth(sqs: &aws_sdk_sqs::Client, url: &str) -> Result<i64> {
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .with_context(|| format!("reading the depth of {url}"))?
        .attributes
        .unwrap_or_default();
    Ok(attrs.values().filter_map(|v| v.parse::<i64>().ok()).sum())
}

#[derive(Debug, Clone)]
pub struct Parked {
    pub message_id: String,
    pub receive_count: String,
    pub request_id: Option<String>,
    pub reason: String,
}

/// Lists parked messages with why they are there. Each message is hidden
/// while listed and made visible again at once, so nothing is consumed.
pub async fn parked<S: OrderStore>(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    store: &S,
    max: usize,
) -> Result<Vec<Parked>> {
    let mut out: Vec<Parked> = Vec::new();
    let mut handles: Vec<String> = Vec::new();
    while out.len() < max {
        let received = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .visibility_timeout(60)
            .wait_time_seconds(1)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .with_context(|| format!("receiving from {url}"))?
            .messages
            .unwrap_or_default();
        if received.is_empty() {
            break;
        }
        for m in &received {
            let receive_count = m
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                .cloned()
                .unwrap_or_default();
            let (request_id, reason) = match OrderMessage::from_json(m.body().unwrap_or("")) {
                Err(e) => (None, format!("poison: {e}")),
                Ok(msg) => {
                    let reason = match store.order(&msg.request_id).await {
                        Ok(Some(o)) => format!(
                            "order already {}: a redrive only brings Redis in line",
                            o.status.as_str()
                        ),
                        Ok(None) => "no order decided yet: compensation kept failing (Redis or DynamoDB); see the logs for this request id".into(),
                        Err(e) => format!("order state unreadable: {e}"),
                    };
                    (Some(msg.request_id.to_string()), reason)
                }
            };
            out.push(Parked {
                message_id: m.message_id().unwrap_or_default().to_owned(),
                receive_count,
                request_id,
                reason,
            });
            handles.extend(m.receipt_handle().map(str::to_owned));
        }
    }
    // Hidden while listing so no message shows twice; visible again now.
    for chunk in handles.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, handle)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(handle)
                    .visibility_timeout(0)
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        sqs.change_message_visibility_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
            .context("making listed messages visible again")?;
    }
    Ok(out)
}

/// Moves every message of `from` to `to` with a message move task and
/// shows its progress until it ends.
pub async fn redrive(sdk: &SdkConfig, from: &str, to: &str, show_progress: bool) -> Result<u64> {
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let source = queue_arn(&sqs, from).await?;
    let destination = queue_arn(&sqs, to).await?;
    let to_move = depth(&sqs, from).await?;
    sqs.start_message_move_task()
        .source_arn(&source)
        .destination_arn(&destination)
        .send()
        .await
        .context("starting the message move task")?;
    let bar = if show_progress {
        ProgressBar::new(to_move.max(0) as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} moved {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    loop {
        let tasks = sqs
            .list_message_move_tasks()
            .source_arn(&source)
            .max_results(1)
            .send()
            .await
            .context("reading the move task's progress")?;
        let Some(task) = tasks.results().first() else {
            bail!("the move task disappeared");
        };
        let moved = task.approximate_number_of_messages_moved().max(0) as u64;
        if let Some(total) = task.approximate_number_of_messages_to_move() {
            bar.set_length(total.max(0) as u64);
        }
        bar.set_position(moved);
        match task.status().unwrap_or_default() {
            "COMPLETED" => {
                bar.finish_with_message("completed");
                return Ok(moved);
            }
            "FAILED" | "CANCELLED" => {
                bar.abandon_with_message("failed");
                bail!(
                    "move task {}: {}",
                    task.status().unwrap_or_default(),
                    task.failure_reason().unwrap_or("no reason given")
                );
            }
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}
