-- Loads a product's stock, per-buyer limit and sale window.
-- Refuses to touch a product whose sale has started unless forced; even when
-- forced, units already admitted stay taken (stock = total - units_out), so a
-- re-warm can never create stock that was already sold.
--
-- KEYS[1] meta  KEYS[2] stock  KEYS[3] stats
-- ARGV[1] stock_total  ARGV[2] limit  ARGV[3] starts_at (ms)  ARGV[4] ends_at (ms)  ARGV[5] "1" = force
-- Returns {"warmed", stock_left} | {"started", stock_left}

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local started = redis.call("HGET", KEYS[1], "starts_at")
if started and now >= tonumber(started) and ARGV[5] ~= "1" then
  return {"started", tonumber(redis.call("GET", KEYS[2]) or "0")}
end
local out = tonumber(redis.call("HGET", KEYS[3], "units_out") or "0")
local left = tonumber(ARGV[1]) - out
if left < 0 then
  left = 0
end
redis.call("HSET", KEYS[1], "stock_total", ARGV[1], "limit", ARGV[2],
  "starts_at", ARGV[3], "ends_at", ARGV[4])
redis.call("SET", KEYS[2], left)
return {"warmed", left}
