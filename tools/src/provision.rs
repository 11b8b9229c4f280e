//! Creates the queues and the table, idempotently: the docker-less
//! equivalent of what `template.yaml` declares for AWS.

use anyhow::{Context, Result};
use aws_config::SdkConfig;
use aws_sdk_sqs::types::QueueAttributeName;

/// Deliveries before a message moves on to the next queue.
pub const MAX_RECEIVE_COUNT: u32 = 5;
/// `flashsale provision`'s default retry delay, in seconds.
pub const DEFAULT_VISIBILITY_TIMEOUT: u32 = 30;
/// Dead letters are kept for SQS's maximum, 14 days.
pub const DLQ_RETENTION_SECONDS: u32 = 1_209_600;

#[derive(Debug, Clone)]
pub struct Names {
    pub orders_queue: String,
    /// The compensation function's queue.
    pub orders_dlq: String,
    /// The parking lot: compensations that failed too often.
    pub compensation_dlq: String,
    pub table: String,
}

impl Names {
    /// `flashsale` gives `flashsale-orders`, `flashsale-orders-dlq` and the
    /// table `flashsale`; tests use a unique prefix each.
    pub fn with_prefix(prefix: &str) -> Self {
        Self {
            orders_queue: format!("{prefix}-orders"),
            orders_dlq: format!("{prefix}-orders-dlq"),
            compensation_dlq: format!("{prefix}-compensation-dlq"),
            table: prefix.to_owned(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Provisioned {
    pub orders_queue_url: String,
    pub orders_dlq_url: String,
    pub compensation_dlq_url: String,
    pub table: String,
}

pub async fn provision(
    sdk: &SdkConfig,
    names: &Names,
    visibility_timeout_secs: u32,
) -> Result<Provisioned> {
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let retention = || {
        vec![(
            QueueAttributeName::MessageRetentionPeriod,
            "1209600".to_owned(),
        )]
    };
    let parking = create_queue(&sqs, &names.compensation_dlq, retention()).await?;
    let mut dlq_attrs = retention();
    dlq_attrs.push(redrive_to(&sqs, &parking).await?);
    dlq_attrs.push(visibility(visibility_timeout_secs));
    let dlq = create_queue(&sqs, &names.orders_dlq, dlq_attrs).await?;
    let orders_attrs = vec![
        redrive_to(&sqs, &dlq).await?,
        visibility(visibility_timeout_secs),
    ];
    let orders = create_queue(&sqs, &names.orders_queue, orders_attrs).await?;
    create_table(sdk, &names.table).await?;
    Ok(Provisioned {
        orders_queue_url: orders,
        orders_dlq_url: dlq,
        compensation_dlq_url: parking,
        table: names.table.clone(),
    })
}

fn visibility(secs: u32) -> (QueueAttributeName, String) {
    (QueueAttributeName::VisibilityTimeout, secs.to_string())
}

async fn create_queue(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    attributes: Vec<(QueueAttributeName, String)>,
) -> Result<String> {
    sqs.create_queue()
        .queue_name(name)
        .set_attributes(Some(attributes.into_iter().collect()))
        .send()
        .await
        .with_context(|| format!("creating queue {name}"))?
        .queue_url
        .context("CreateQueue returned no URL")
}

pub async fn queue_arn(sqs: &aws_sdk_sqs::Client, url: &str) -> Result<String> {
    sqs.get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .with_context(|| format!("reading the ARN of {url}"))?
        .attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
        .with_context(|| format!("{url} has no QueueArn attribute"))
}

/// A RedrivePolicy moving messages to `dlq_url` after MAX_RECEIVE_COUNT receives.
async fn redrive_to(
    sqs: &aws_sdk_sqs::Client,
    dlq_url: &str,
) -> Result<(QueueAttributeName, String)> {
    let policy = serde_json::json!({
        "deadLetterTargetArn": queue_arn(sqs, dlq_url).await?,
        "maxReceiveCount": MAX_RECEIVE_COUNT.to_string(),
    });
    Ok((QueueAttributeName::RedrivePolicy, policy.to_string()))
}

pub async fn create_table(sdk: &SdkConfig, name: &str) -> Result<()> {
    shared::aws::create_table(sdk, name)
        .await
        .with_context(|| format!("creating table {name}"))
}
