-- Loads a product's stock, per-buyer limit and sale window.
-- Refuses to touch a product whose sale has started unless forced. The shelf
-- comes from the DynamoDB ledger (units not yet placed) minus the units of
-- requests pending here, never from Redis' own counters: after a failover
-- those may have forgotten sold units, and a re-warm must not sell them again.
--
-- KEYS[1] meta  KEYS[2] stock  KEYS[3] stats
-- ARGV[1] stock_total  ARGV[2] limit  ARGV[3] starts_at (ms)  ARGV[4] ends_at (ms)
-- ARGV[5] "1" = force  ARGV[6] ledger units remaining
-- Returns {"warmed", stock_left} | {"started", stock_left}

for i = 1, 4 do
  if not tonumber(ARGV[i]) then
    return redis.error_reply("warm.lua: bad arguments: stock_total, limit, starts_at, ends_at must be numbers")
  end
end
local ledger = tonumber(ARGV[6])
if not ledger then
  return redis.error_reply("warm.lua: bad arguments: the ledger's remaining units must be a number")
end
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local started = redis.call("HGET", KEYS[1], "starts_at")
if started and now >= tonumber(started) and ARGV[5] ~= "1" then
  return {"started", tonumber(redis.call("GET", KEYS[2]) or "0")}
end
local pending_units = tonumber(redis.call("HGET", KEYS[3], "pending_units") or "0")
local left = ledger - pending_units
if left < 0 then
  left = 0
end
redis.call("HSET", KEYS[1], "stock_total", ARGV[1], "limit", ARGV[2],
  "starts_at", ARGV[3], "ends_at", ARGV[4])
redis.call("SET", KEYS[2], left)
return {"warmed", left}
