-- Moves a request to its terminal status once DynamoDB has decided it
-- (placed, or rejected without restock). Forward-only and idempotent:
-- a request already terminal is left alone, and counters move once.
--
-- KEYS[1] req  KEYS[2] pending  KEYS[3] stats
-- ARGV[1] request_id  ARGV[2] status  ARGV[3] user  ARGV[4] qty
-- ARGV[5] admitted_at (ms)  ARGV[6] request ttl (s)
-- Returns 1 when the status changed, 0 when it was already terminal.

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call("ZREM", KEYS[2], ARGV[1])
local cur = redis.call("HGET", KEYS[1], "status")
if cur and cur ~= "pending" then
  return 0
end
-- A missing state (expired, or lost with a Redis failover) is rebuilt from
-- the message so the status endpoint keeps answering from Redis.
redis.call("HSET", KEYS[1], "user", ARGV[3], "qty", ARGV[4], "status", ARGV[2], "updated_at", now)
if not cur then
  redis.call("HSET", KEYS[1], "admitted_at", ARGV[5])
end
redis.call("EXPIRE", KEYS[1], ARGV[6])
redis.call("HINCRBY", KEYS[3], ARGV[2], 1)
return 1
