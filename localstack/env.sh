# Shared settings for the local stack scripts (sourced, not executed).
# Ports are overridable; state lives outside the clone so it survives re-clones.
: "${FLASHSALE_HOME:=$HOME/.cache/flashsale}"
: "${LOCALSTACK_VERSION:=2026.3.0}"
: "${LOCALSTACK_VENV:=$FLASHSALE_HOME/localstack-venv}"
: "${DDB_LOCAL_VERSION:=11.1.0}"
: "${DDB_LOCAL_DIR:=$FLASHSALE_HOME/dynamodb-local}"
: "${TOOLS_VENV:=$FLASHSALE_HOME/tools-venv}"
# The browser tests: Debian's chromium driven by playwright-core.
: "${PLAYWRIGHT_VERSION:=1.65.2}"
: "${PLAYWRIGHT_DIR:=$FLASHSALE_HOME/playwright}"
export FLASHSALE_HOME LOCALSTACK_VERSION LOCALSTACK_VENV DDB_LOCAL_VERSION DDB_LOCAL_DIR TOOLS_VENV \
  PLAYWRIGHT_VERSION PLAYWRIGHT_DIR
