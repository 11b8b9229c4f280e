#!/usr/bin/env bash
# LocalStack (Docker) ready hook: creates the queues and the table from
# resources.env, exactly as `flashsale provision` does on the docker-less stack.
set -euo pipefail
# shellcheck disable=SC1091
. /etc/flashsale/resources.env

arn_of() { awslocal sqs get-queue-attributes --queue-url "$1" --attribute-names QueueArn --query Attributes.QueueArn --output text; }
redrive_to() { printf '{"RedrivePolicy":"{\\"deadLetterTargetArn\\":\\"%s\\",\\"maxReceiveCount\\":\\"%s\\"}","VisibilityTimeout":"%s"}' "$1" "$MAX_RECEIVE_COUNT" "$VISIBILITY_TIMEOUT"; }

parking=$(awslocal sqs create-queue --queue-name "$COMPENSATION_DLQ" \
  --attributes "MessageRetentionPeriod=$DLQ_RETENTION_SECONDS" --query QueueUrl --output text)
dlq=$(awslocal sqs create-queue --queue-name "$ORDERS_DLQ" \
  --attributes "$(redrive_to "$(arn_of "$parking")" | sed "s/}\$/,\"MessageRetentionPeriod\":\"$DLQ_RETENTION_SECONDS\"}/")" \
  --query QueueUrl --output text)
awslocal sqs create-queue --queue-name "$ORDERS_QUEUE" \
  --attributes "$(redrive_to "$(arn_of "$dlq")")" >/dev/null

gsi() { printf '{"IndexName":"%s","KeySchema":[{"AttributeName":"%s","KeyType":"HASH"},{"AttributeName":"%s","KeyType":"RANGE"}],"Projection":{"ProjectionType":"ALL"}}' "$1" "$2" "$3"; }
if ! awslocal dynamodb describe-table --table-name "$TABLE" >/dev/null 2>&1; then
  awslocal dynamodb create-table --table-name "$TABLE" --billing-mode PAY_PER_REQUEST \
    --attribute-definitions "AttributeName=$TABLE_PK,AttributeType=S" \
      "AttributeName=$TABLE_GSI_PK,AttributeType=S" "AttributeName=$TABLE_GSI_SK,AttributeType=S" \
      "AttributeName=$TABLE_DUE_GSI_PK,AttributeType=S" "AttributeName=$TABLE_DUE_GSI_SK,AttributeType=S" \
    --key-schema "AttributeName=$TABLE_PK,KeyType=HASH" \
    --global-secondary-indexes "[$(gsi "$TABLE_GSI" "$TABLE_GSI_PK" "$TABLE_GSI_SK"),$(gsi "$TABLE_DUE_GSI" "$TABLE_DUE_GSI_PK" "$TABLE_DUE_GSI_SK")]" >/dev/null
  awslocal dynamodb update-time-to-live --table-name "$TABLE" \
    --time-to-live-specification "Enabled=true,AttributeName=$TABLE_TTL" >/dev/null
fi
echo "flashsale: queues $ORDERS_QUEUE, $ORDERS_DLQ, $COMPENSATION_DLQ and table $TABLE ready"
