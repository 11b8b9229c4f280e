//! Creates the queues and the table, idempotently: the docker-less
//! equivalent of what `template.yaml` declares for AWS.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use aws_config::SdkConfig;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, TableStatus,
};
use aws_sdk_sqs::types::QueueAttributeName;
use shared::aws::table;

/// Deliveries before a message moves to the orders DLQ.
pub const MAX_RECEIVE_COUNT: u32 = 5;

#[derive(Debug, Clone)]
pub struct Names {
    pub orders_queue: String,
    pub orders_dlq: String,
    pub table: String,
}

impl Names {
    /// `flashsale` gives `flashsale-orders`, `flashsale-orders-dlq` and the
    /// table `flashsale`; tests use a unique prefix each.
    pub fn with_prefix(prefix: &str) -> Self {
        Self {
            orders_queue: format!("{prefix}-orders"),
            orders_dlq: format!("{prefix}-orders-dlq"),
            table: prefix.to_owned(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Provisioned {
    pub orders_queue_url: String,
    pub orders_dlq_url: String,
    pub table: String,
}

pub async fn provision(
    sdk: &SdkConfig,
    names: &Names,
    visibility_timeout_secs: u32,
) -> Result<Provisioned> {
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let dlq_url = sqs
        .create_queue()
        .queue_name(&names.orders_dlq)
        .attributes(QueueAttributeName::MessageRetentionPeriod, "1209600")
        .send()
        .await
        .with_context(|| format!("creating queue {}", names.orders_dlq))?
        .queue_url
        .context("CreateQueue returned no URL")?;
    let dlq_arn = sqs
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .context("reading the DLQ's ARN")?
        .attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
        .context("the DLQ has no QueueArn attribute")?;
    let redrive = serde_json::json!({
        "deadLetterTargetArn": dlq_arn,
        "maxReceiveCount": MAX_RECEIVE_COUNT.to_string(),
    });
    let orders_url = sqs
        .create_queue()
        .queue_name(&names.orders_queue)
        .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
        .attributes(
            QueueAttributeName::VisibilityTimeout,
            visibility_timeout_secs.to_string(),
        )
        .send()
        .await
        .with_context(|| format!("creating queue {}", names.orders_queue))?
        .queue_url
        .context("CreateQueue returned no URL")?;
    create_table(sdk, &names.table).await?;
    Ok(Provisioned {
        orders_queue_url: orders_url,
        orders_dlq_url: dlq_url,
        table: names.table.clone(),
    })
}

async fn create_table(sdk: &SdkConfig, name: &str) -> Result<()> {
    let ddb = aws_sdk_dynamodb::Client::new(sdk);
    let attr = |n: &str| {
        AttributeDefinition::builder()
            .attribute_name(n)
            .attribute_type(ScalarAttributeType::S)
            .build()
    };
    let key = |n: &str, t: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(n)
            .key_type(t)
            .build()
    };
    let gsi = GlobalSecondaryIndex::builder()
        .index_name(table::GSI1)
        .key_schema(key(table::GSI1_PK, KeyType::Hash)?)
        .key_schema(key(table::GSI1_SK, KeyType::Range)?)
        .projection(
            Projection::builder()
                .projection_type(ProjectionType::All)
                .build(),
        )
        .build()?;
    let created = ddb
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attr(table::PK)?)
        .attribute_definitions(attr(table::GSI1_PK)?)
        .attribute_definitions(attr(table::GSI1_SK)?)
        .key_schema(key(table::PK, KeyType::Hash)?)
        .global_secondary_indexes(gsi)
        .send()
        .await;
    if let Err(e) = created {
        let exists = e
            .as_service_error()
            .is_some_and(|s| s.is_resource_in_use_exception());
        if !exists {
            return Err(e).with_context(|| format!("creating table {name}"));
        }
    }
    for _ in 0..120 {
        let status = ddb
            .describe_table()
            .table_name(name)
            .send()
            .await
            .with_context(|| format!("describing table {name}"))?
            .table
            .and_then(|t| t.table_status);
        if status == Some(TableStatus::Active) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bail!("table {name} did not become ACTIVE in 30 s")
}
