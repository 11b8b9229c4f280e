#!/usr/bin/env bash
# Deploys template.yaml into the stack's LocalStack (localstack/start.sh with
# LOCALSTACK_LAMBDA=1): through its CloudFormation with the SAM transform,
# the template rewritten only where LocalStack falls short
# (`flashsale localstack-template`, tools::cfnlocal says what and why). Beside
# the stack, what the template cannot say here:
# - the bootstraps zipped into LocalStack's S3 (what `sam package` does);
# - the table in DynamoDB Local, from the template's definition;
# - the secrets in LocalStack's SSM, read by the functions as on AWS
#   (the admin token, the webhook secret and Redis' password);
# - reserved concurrency, which LocalStack's CloudFormation ignores;
# - the HTTP routes with their functions' names, for `flashsale gateway`
#   (LocalStack has no API Gateway v2);
# - VISIBILITY_TIMEOUT=<s>, when set: the orders queue's and its DLQ's, so
#   a failing message reaches the next queue in 5 x that instead of 5 x
#   200 s (the demo; the template's values are for the functions'
#   timeouts on AWS).
#
# Expects the stack's env (or localstack/compose.env for LocalStack in
# Docker: FLASHSALE_REDIS_ENDPOINT, FLASHSALE_REDIS_PASSWORD and
# FLASHSALE_FUNCTIONS_DYNAMODB say where the functions find Redis and
# DynamoDB), FLASHSALE_ADMIN_TOKEN and FLASHSALE_PAYMENT_WEBHOOK_SECRET. BOOTSTRAPS=host (this machine's debug
# build; the default on the Debian stand-in image) or lambda (cargo-lambda's
# x86_64/arm64 release builds, for the real image). Writes
# $STACK_DIR/deployed.env (queue URLs, table, function names) and
# $STACK_DIR/deploy/targets.json (the gateway's routes).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
# shellcheck source=localstack/env.sh
. "$here/env.sh"
: "${STACK_DIR:?run through localstack/with-stack.sh or set STACK_DIR}"
: "${FLASHSALE_ADMIN_TOKEN:?}" "${FLASHSALE_PAYMENT_WEBHOOK_SECRET:?}"
log() { printf '[deploy] %s\n' "$*" >&2; }
aws() { AWS_DEFAULT_REGION="${AWS_REGION:-us-east-1}" "$LOCALSTACK_VENV/bin/aws" "$@"; }
target="${CARGO_TARGET_DIR:-$HOME/.cache/flashsale-target}"
stack=flashsale
bucket=flashsale-code
# Where the functions' containers find Redis and DynamoDB: by default the
# docker-less stack's, at the Docker bridge.
if [ -z "${FLASHSALE_REDIS_ENDPOINT:-}" ]; then
  : "${FLASHSALE_BRIDGE_GATEWAY:?the stack runs without Lambda in LocalStack: start it with LOCALSTACK_LAMBDA=1}"
  gw="$FLASHSALE_BRIDGE_GATEWAY"
  FLASHSALE_REDIS_ENDPOINT="$gw:$REDIS_PORT"
  FLASHSALE_FUNCTIONS_DYNAMODB="${FLASHSALE_FUNCTIONS_DYNAMODB-http://$gw:${AWS_ENDPOINT_URL_DYNAMODB##*:}}"
fi
redis_password="${FLASHSALE_REDIS_PASSWORD:-${REDISCLI_AUTH:?no Redis password: the stack has one in REDISCLI_AUTH, Docker needs FLASHSALE_REDIS_PASSWORD}}"
arch="$(uname -m | sed 's/aarch64/arm64/')"
work="$STACK_DIR/deploy"
rm -rf "$work" && mkdir -p "$work"
started=$(date +%s)

"$target/debug/flashsale" localstack-template --template "$root/template.yaml" --bucket "$bucket" --out "$work"

# The code.
mode="${BOOTSTRAPS:-$([ "${FLASHSALE_LAMBDA_BASE:-}" = real ] && echo lambda || echo host)}"
aws s3api head-bucket --bucket "$bucket" >/dev/null 2>&1 || aws s3 mb "s3://$bucket" >/dev/null
while read -r _ binary _; do
  case "$mode" in
    host) src="$target/debug/$binary" ;;
    lambda) src="$target/lambda/$arch/$binary/bootstrap" ;;
    *) log "BOOTSTRAPS must be host or lambda, not $mode"; exit 1 ;;
  esac
  [ -x "$src" ] || { log "$src is missing: make $([ "$mode" = host ] && echo dev-build || echo "build-$arch")"; exit 1; }
  # Stored, not deflated: the upload is local, the compression was most of
  # the deploy's time.
  python3 -c 'import sys, zipfile
with zipfile.ZipFile(sys.argv[1], "w", zipfile.ZIP_STORED) as z: z.write(sys.argv[2], "bootstrap")' \
    "$work/$binary.zip" "$src"
  aws s3 cp --quiet "$work/$binary.zip" "s3://$bucket/$binary.zip"
  rm -f "$work/$binary.zip"
done <"$work/functions"
# Over CreateStack's 51,200-byte body limit, as on AWS: through S3.
aws s3 cp --quiet "$work/template.json" "s3://$bucket/template.json"

# The table, in DynamoDB Local.
table="$stack"
ddb=(--endpoint-url "$AWS_ENDPOINT_URL_DYNAMODB")
if ! aws dynamodb describe-table "${ddb[@]}" --table-name "$table" >/dev/null 2>&1; then
  aws dynamodb create-table "${ddb[@]}" --table-name "$table" --cli-input-json "file://$work/table.json" >/dev/null
  ttl="$(cat "$work/ttl")"
  [ -z "$ttl" ] || aws dynamodb update-time-to-live "${ddb[@]}" --table-name "$table" \
    --time-to-live-specification "Enabled=true,AttributeName=$ttl" >/dev/null
fi

# The secrets.
secret() { aws ssm put-parameter --name "/$stack/$1" --type SecureString --value "$2" --overwrite >/dev/null; }
secret admin-token "$FLASHSALE_ADMIN_TOKEN"
secret payment-webhook-secret "$FLASHSALE_PAYMENT_WEBHOOK_SECRET"
secret redis-auth "$redis_password"

# The stack, anew (a deploy again replaces it).
stack_status() {
  aws cloudformation describe-stacks --stack-name "$stack" --query 'Stacks[0].StackStatus' --output text 2>/dev/null
}
if [ -n "$(stack_status)" ]; then
  log "replacing the stack deployed before"
  aws cloudformation delete-stack --stack-name "$stack"
  for _ in $(seq 1 120); do [ -n "$(stack_status)" ] || break; sleep 1; done
fi
param() { printf 'ParameterKey=%s,ParameterValue=%s ' "$1" "$2"; }
# shellcheck disable=SC2046
aws cloudformation create-stack --stack-name "$stack" \
  --template-url "$AWS_ENDPOINT_URL/$bucket/template.json" \
  --capabilities CAPABILITY_IAM CAPABILITY_NAMED_IAM CAPABILITY_AUTO_EXPAND \
  --parameters $(param RedisEndpoint "$FLASHSALE_REDIS_ENDPOINT") $(param RedisTls false) \
    $(param RedisAuthTokenParameter "/$stack/redis-auth") \
    $(param AdminTokenParameter "/$stack/admin-token") \
    $(param PaymentWebhookSecretParameter "/$stack/payment-webhook-secret") \
    $(param JwtIssuer "http://localhost/no-authorizer-locally") $(param JwtAudience flashsale) \
    $(param Architecture "$arch") $(param FlashSaleTableName "$table") \
    $(param DynamoDbEndpoint "${FLASHSALE_FUNCTIONS_DYNAMODB:-}") \
    ${FLASHSALE_STACK_PARAMETERS:-} >/dev/null
status=CREATE_IN_PROGRESS
for _ in $(seq 1 300); do
  status="$(stack_status)"
  case "$status" in *IN_PROGRESS) sleep 1 ;; *) break ;; esac
done
if [ "$status" != CREATE_COMPLETE ]; then
  log "the stack is $status:"
  aws cloudformation describe-stack-events --stack-name "$stack" --output text \
    --query 'StackEvents[?ResourceStatus==`CREATE_FAILED`].[LogicalResourceId,ResourceStatusReason]' >&2
  exit 1
fi
# LocalStack mocks resource types it does not know (physical id "unknown")
# instead of failing: the rewrite must have dropped them all.
mocked="$(aws cloudformation describe-stack-resources --stack-name "$stack" --output text \
  --query 'StackResources[?PhysicalResourceId==`unknown`].LogicalResourceId')"
[ -z "$mocked" ] || { log "LocalStack only mocked $mocked: drop them in tools::cfnlocal"; exit 1; }

physical() {
  aws cloudformation describe-stack-resource --stack-name "$stack" --logical-resource-id "$1" \
    --query StackResourceDetail.PhysicalResourceId --output text
}
output() {
  aws cloudformation describe-stacks --stack-name "$stack" --output text \
    --query "Stacks[0].Outputs[?OutputKey=='$1'].OutputValue"
}
if [ -n "${VISIBILITY_TIMEOUT:-}" ]; then
  for q in OrdersQueueUrl OrdersDlqUrl; do
    aws sqs set-queue-attributes --endpoint-url "${AWS_ENDPOINT_URL_SQS:-$AWS_ENDPOINT_URL}" --queue-url "$(output "$q")" \
      --attributes "VisibilityTimeout=$VISIBILITY_TIMEOUT"
  done
fi
{
  echo "export FLASHSALE_ORDERS_QUEUE_URL=$(output OrdersQueueUrl)"
  echo "export FLASHSALE_ORDERS_DLQ_URL=$(output OrdersDlqUrl)"
  echo "export FLASHSALE_COMPENSATION_DLQ_URL=$(output CompensationDlqUrl)"
  echo "export FLASHSALE_TABLE=$table"
} >"$STACK_DIR/deployed.env"
names=()
while read -r id binary reserved; do
  fn="$(physical "$id")"
  echo "export FLASHSALE_FUNCTION_$(echo "$binary" | tr 'a-z-' 'A-Z_')=$fn" >>"$STACK_DIR/deployed.env"
  [ "$reserved" = - ] || aws lambda put-function-concurrency --function-name "$fn" \
    --reserved-concurrent-executions "$reserved" >/dev/null
  names+=("$id=$fn")
done <"$work/functions"
python3 - "$work/routes.json" "${names[@]}" >"$work/targets.json" <<'PY'
import json, sys
names = dict(a.split("=", 1) for a in sys.argv[2:])
routes = json.load(open(sys.argv[1]))
json.dump([dict(r, name=names[r["function"]]) for r in routes], sys.stdout, indent=1)
PY
log "stack $stack deployed in $(( $(date +%s) - started )) s ($(wc -l <"$work/functions") functions; $STACK_DIR/deployed.env)"
