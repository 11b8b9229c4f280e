-- Compensation: after DynamoDB recorded a request as COMPENSATED (never
-- placed), puts its units back on the shelf and releases its buyer.
-- Idempotent by the request's own state: only a request Redis still holds
-- as pending has a decrement to undo. One Redis has forgotten (failover) lost
-- its decrement with it, so nothing goes back; its state is rebuilt as
-- compensated for the status endpoint.
--
-- KEYS[1] stock  KEYS[2] buyers  KEYS[3] req  KEYS[4] pending  KEYS[5] stats
-- ARGV[1] request_id  ARGV[2] user  ARGV[3] qty  ARGV[4] request ttl (s)  ARGV[5] admitted_at (ms)
-- Returns 1 when it restocked now, 0 otherwise.

local qty = tonumber(ARGV[3])
if not qty or qty < 1 or not tonumber(ARGV[4]) or not tonumber(ARGV[5]) then
  return redis.error_reply("restock.lua: bad arguments: numeric qty, ttl and admitted_at")
end
redis.call("ZREM", KEYS[4], ARGV[1])
local cur = redis.call("HGET", KEYS[3], "status")
if cur and cur ~= "pending" then
  return 0
end
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- What this Redis took back at admission (see settle.lua).
local held = tonumber(redis.call("HGET", KEYS[3], "qty") or ARGV[3])
if redis.call("HGET", KEYS[2], ARGV[2]) == ARGV[1] then
  redis.call("HDEL", KEYS[2], ARGV[2])
end
if not cur then
  redis.call("HSET", KEYS[3], "admitted_at", ARGV[5])
end
redis.call("HSET", KEYS[3], "user", ARGV[2], "qty", qty, "status", "compensated", "updated_at", now)
redis.call("EXPIRE", KEYS[3], ARGV[4])
redis.call("HINCRBY", KEYS[5], "compensated", 1)
if not cur then
  return 0
end
redis.call("INCRBY", KEYS[1], held)
redis.call("HINCRBY", KEYS[5], "arrived_units", held)
redis.call("HINCRBY", KEYS[5], "pending_units", -held)
redis.call("HINCRBY", KEYS[5], "restocked", 1)
return 1
