-- Moves a request to its terminal status once DynamoDB has decided it
-- (placed, or rejected without restock). Forward-only and idempotent:
-- a request already terminal is left alone, and counters move once.
--
-- KEYS[1] req  KEYS[2] pending  KEYS[3] stats  KEYS[4] buyers
-- ARGV[1] request_id  ARGV[2] status ("placed" | "rejected")  ARGV[3] user  ARGV[4] qty
-- ARGV[5] admitted_at (ms)  ARGV[6] request ttl (s)
-- ARGV[7] "1": rejected because the ledger was out of stock, so DynamoDB
--   holds no order of this buyer and they may buy again (as a compensated
--   buyer may); a buyer rejected for holding another order stays taken
-- Returns 1 when the status changed, 0 when it was already terminal.

local qty = tonumber(ARGV[4])
if (ARGV[2] ~= "placed" and ARGV[2] ~= "rejected") or not qty or qty < 1
    or not tonumber(ARGV[5]) or not tonumber(ARGV[6]) then
  return redis.error_reply("settle.lua: bad arguments: status placed|rejected, numeric qty, admitted_at, ttl")
end
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call("ZREM", KEYS[2], ARGV[1])
local cur = redis.call("HGET", KEYS[1], "status")
if cur and cur ~= "pending" then
  return 0
end
if cur == "pending" then
  -- The units this Redis took, which may differ from the message's after a
  -- failover (the same keyed id admitted again with another quantity).
  redis.call("HINCRBY", KEYS[3], "pending_units", -tonumber(redis.call("HGET", KEYS[1], "qty")))
else
  -- Missing state (Redis forgot the admission in a failover, its decrement
  -- with it) is rebuilt from the message so the status endpoint answers.
  redis.call("HSET", KEYS[1], "admitted_at", ARGV[5])
end
redis.call("HSET", KEYS[1], "user", ARGV[3], "qty", qty, "status", ARGV[2], "updated_at", now)
redis.call("EXPIRE", KEYS[1], ARGV[6])
redis.call("HINCRBY", KEYS[3], ARGV[2], 1)
if ARGV[2] == "placed" then
  redis.call("HINCRBY", KEYS[3], "placed_units", qty)
  -- A failover may have forgotten the buyer with the admission: the order
  -- stands, so the buyer is taken again.
  redis.call("HSETNX", KEYS[4], ARGV[3], ARGV[1])
elseif ARGV[7] == "1" and redis.call("HGET", KEYS[4], ARGV[3]) == ARGV[1] then
  redis.call("HDEL", KEYS[4], ARGV[3])
end
return 1
