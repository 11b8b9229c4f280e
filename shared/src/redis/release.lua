-- The Redis step of a release: DynamoDB already moved the order from placed
-- to cancelled or expired and gave its units back to the ledger (counted as
-- `releasing` there until this step is confirmed). Puts the units back on
-- the shelf once per request id: the request's own state is the marker, so
-- a retry after a crash finds it released and does nothing. A Redis that
-- forgot this step in a failover forgot its INCRBY with it, so running it
-- again is right. The resync subtracts `releasing`, so it never counts a
-- unit this script is still to add.
--
-- KEYS[1] stock  KEYS[2] buyers  KEYS[3] req  KEYS[4] pending  KEYS[5] stats
-- ARGV[1] request_id  ARGV[2] user  ARGV[3] qty  ARGV[4] "cancelled"|"expired"
-- ARGV[5] free the buyer ("1"|"0")  ARGV[6] request ttl (s)
-- Returns 1 when it put the units back now, 0 when this was done before.

local qty = tonumber(ARGV[3])
if (ARGV[4] ~= "cancelled" and ARGV[4] ~= "expired") or not qty or qty < 1
    or not tonumber(ARGV[6]) then
  return redis.error_reply("release.lua: bad arguments: numeric qty and ttl, status cancelled|expired")
end
local cur = redis.call("HGET", KEYS[3], "status")
if cur == "cancelled" or cur == "expired" then
  return 0
end
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if cur == "pending" then
  -- Placed in DynamoDB but never settled here: settle it on the way, so
  -- the fence counters stay what settle.lua would have made them.
  local held = tonumber(redis.call("HGET", KEYS[3], "qty") or ARGV[3])
  redis.call("ZREM", KEYS[4], ARGV[1])
  redis.call("HINCRBY", KEYS[5], "pending_units", -held)
  redis.call("HINCRBY", KEYS[5], "placed", 1)
  redis.call("HINCRBY", KEYS[5], "placed_units", held)
end
redis.call("INCRBY", KEYS[1], qty)
if ARGV[5] == "1" and redis.call("HGET", KEYS[2], ARGV[2]) == ARGV[1] then
  redis.call("HDEL", KEYS[2], ARGV[2])
end
redis.call("HSET", KEYS[3], "user", ARGV[2], "qty", qty, "status", ARGV[4], "updated_at", now)
if not redis.call("HGET", KEYS[3], "admitted_at") then
  redis.call("HSET", KEYS[3], "admitted_at", now)
end
redis.call("EXPIRE", KEYS[3], ARGV[6])
redis.call("HINCRBY", KEYS[5], ARGV[4], 1)
redis.call("HINCRBY", KEYS[5], "released_units", qty)
redis.call("HINCRBY", KEYS[5], "arrived_units", qty)
return 1
