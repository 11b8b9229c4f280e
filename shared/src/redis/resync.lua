-- Brings the Redis shelf back in line with the DynamoDB stock ledger, the
-- source of truth for units left. Runs only when nothing is in flight: no
-- request pending, and no order placed since the caller read the ledger
-- (every ledger decrement is followed by a `placed` count here before its
-- request leaves the pending index). Otherwise it changes nothing.
--
-- KEYS[1] stock  KEYS[2] pending  KEYS[3] stats  KEYS[4] meta
-- ARGV[1] ledger units remaining  ARGV[2] `placed` count seen before reading the ledger
-- Returns {"synced", drift} (drift = ledger - old stock) | {"busy", 0}

if redis.call("ZCARD", KEYS[2]) > 0 then
  return {"busy", 0}
end
if tonumber(redis.call("HGET", KEYS[3], "placed") or "0") ~= tonumber(ARGV[2]) then
  return {"busy", 0}
end
local old = tonumber(redis.call("GET", KEYS[1]) or "0")
local target = tonumber(ARGV[1])
if old ~= target then
  redis.call("SET", KEYS[1], target)
  local total = tonumber(redis.call("HGET", KEYS[4], "stock_total") or target)
  redis.call("HSET", KEYS[3], "units_out", total - target)
  redis.call("HINCRBY", KEYS[3], "resync_drift", target - old)
end
return {"synced", target - old}
