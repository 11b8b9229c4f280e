-- Compensation: puts a request's units back on the shelf, once per request
-- id, after DynamoDB recorded the request as COMPENSATED (never placed), and
-- releases the buyer so they may buy again.
--
-- KEYS[1] marker (restocked:<request_id>)  KEYS[2] stock  KEYS[3] buyers
-- KEYS[4] req  KEYS[5] pending  KEYS[6] stats
-- ARGV[1] request_id  ARGV[2] user  ARGV[3] qty
-- ARGV[4] ttl (s) for marker and request state  ARGV[5] admitted_at (ms)
-- Returns 1 when it restocked now, 0 when an earlier call already did.

if not redis.call("SET", KEYS[1], "1", "NX", "EX", ARGV[4]) then
  return 0
end
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local qty = tonumber(ARGV[3])
redis.call("INCRBY", KEYS[2], qty)
redis.call("HINCRBY", KEYS[6], "units_out", -qty)
redis.call("HINCRBY", KEYS[6], "restocked", 1)
if redis.call("HGET", KEYS[3], ARGV[2]) == ARGV[1] then
  redis.call("HDEL", KEYS[3], ARGV[2])
end
local cur = redis.call("HGET", KEYS[4], "status")
redis.call("HSET", KEYS[4], "user", ARGV[2], "qty", qty, "status", "compensated", "updated_at", now)
if not cur then
  redis.call("HSET", KEYS[4], "admitted_at", ARGV[5])
end
redis.call("EXPIRE", KEYS[4], ARGV[4])
redis.call("ZREM", KEYS[5], ARGV[1])
if cur ~= "compensated" then
  redis.call("HINCRBY", KEYS[6], "compensated", 1)
end
return 1
