#!/usr/bin/env bash
# Deploys the built functions (make build) to LocalStack in Docker with
# awslocal: the eight functions, their SQS event source mappings (partial
# batch failures), the sweeper's and expirer's schedules, and function URLs
# for the HTTP ones
# (API Gateway HTTP APIs are not in LocalStack Community). Names come from
# resources.env, like the init hook's.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=localstack/resources.env
. "$here/resources.env"
: "${LAMBDA_DIR:?set LAMBDA_DIR to the x86_64 output of make build}"
: "${FLASHSALE_ADMIN_TOKEN:=local-admin-token-change-me}"
: "${FLASHSALE_PAYMENT_WEBHOOK_SECRET:=local-webhook-secret-change-me}"
command -v awslocal >/dev/null || { echo "awslocal is needed: pip install awscli-local" >&2; exit 1; }

url_of() { awslocal sqs get-queue-url --queue-name "$1" --query QueueUrl --output text; }
arn_of() { awslocal sqs get-queue-attributes --queue-url "$(url_of "$1")" --attribute-names QueueArn --query Attributes.QueueArn --output text; }
orders_url=$(url_of "$ORDERS_QUEUE")
role=arn:aws:iam::000000000000:role/flashsale-lambda
env="Variables={FLASHSALE_REDIS_URL=redis://redis:6379,FLASHSALE_TABLE=$TABLE,FLASHSALE_ORDERS_QUEUE_URL=$orders_url,FLASHSALE_ADMIN_TOKEN=$FLASHSALE_ADMIN_TOKEN,FLASHSALE_PAYMENT_WEBHOOK_SECRET=$FLASHSALE_PAYMENT_WEBHOOK_SECRET,FLASHSALE_INSECURE_USER_FROM_BODY=1,RUST_LOG=info}"

for fn in deduct order-status admin order-consumer compensation outbox-sweeper payment-webhook order-expirer; do
  zip="$LAMBDA_DIR/$fn/bootstrap.zip"
  [ -f "$zip" ] || (cd "$LAMBDA_DIR/$fn" && zip -q bootstrap.zip bootstrap)
  awslocal lambda delete-function --function-name "flashsale-$fn" >/dev/null 2>&1 || true
  awslocal lambda create-function --function-name "flashsale-$fn" --runtime provided.al2023 \
    --handler bootstrap --architectures x86_64 --role "$role" --timeout 30 \
    --zip-file "fileb://$zip" --environment "$env" >/dev/null
  awslocal lambda wait function-active-v2 --function-name "flashsale-$fn"
done

map() { # queue, function
  awslocal lambda create-event-source-mapping --function-name "flashsale-$2" \
    --event-source-arn "$(arn_of "$1")" --batch-size 10 \
    --function-response-types ReportBatchItemFailures >/dev/null
}
map "$ORDERS_QUEUE" order-consumer
map "$ORDERS_DLQ" compensation

every_minute() { # function
  local rule
  rule=$(awslocal events put-rule --name "flashsale-$1" \
    --schedule-expression 'rate(1 minute)' --query RuleArn --output text)
  awslocal lambda add-permission --function-name "flashsale-$1" --statement-id schedule \
    --action lambda:InvokeFunction --principal events.amazonaws.com --source-arn "$rule" >/dev/null 2>&1 || true
  awslocal events put-targets --rule "flashsale-$1" \
    --targets "Id=$1,Arn=$(awslocal lambda get-function --function-name "flashsale-$1" --query Configuration.FunctionArn --output text)" >/dev/null
}
every_minute outbox-sweeper
every_minute order-expirer

for fn in deduct order-status admin payment-webhook; do
  awslocal lambda create-function-url-config --function-name "flashsale-$fn" --auth-type NONE \
    --query FunctionUrl --output text 2>/dev/null \
    || awslocal lambda get-function-url-config --function-name "flashsale-$fn" --query FunctionUrl --output text
done
echo "deployed: the URLs above serve buy, orders and products, admin and the payment webhook (local only: buyers come from the body user_id)"
