-- Loads a product's stock, per-buyer limit and sale window.
-- Refuses to touch a product whose sale has started unless forced. The shelf
-- comes from the DynamoDB ledger (units not yet placed) minus the units of
-- requests pending here, never from Redis' own counters: after a failover
-- those may have forgotten sold units, and a re-warm must not sell them again.
--
-- KEYS[1] meta  KEYS[2] stock  KEYS[3] stats
-- ARGV[1] stock_total  ARGV[2] limit  ARGV[3] starts_at (ms)  ARGV[4] ends_at (ms)
-- ARGV[5] "1" = force  ARGV[6] ledger units remaining
-- ARGV[7] the fence (placed_units + withdrawn_units) read before the ledger
--   (see resync.lua; 0 before any sale)
-- ARGV[8] / ARGV[9] the sale's own buyer / IP rate limit ("<ms>:<burst>", "" = the default)
-- ARGV[10] "1" when an operator paused the sale  ARGV[11] its control_seq: the
--   pause and the end are taken only over older controls (see controls.lua)
-- ARGV[12] the product's stock buckets (crate::buckets; written above 1 only,
--   so an unbucketed product's meta is as it always was)
-- ARGV[13] this bucket's moves (lent_units + received_units) as the caller
--   read them, or "" (one bucket): units lent since are in transit to a
--   shelf the caller did not count them on, so they are held back here
--   (units received since are lost to this shelf: undersold until a resync)
-- Returns {"warmed", stock_left, shortfall} | {"started", stock_left, 0};
--   shortfall: units this shelf would need below empty to hold back all it
--   must (admitted, settled or lent here since the caller's read), which a
--   bucketed caller takes from the buckets it warms next.

for i = 1, 4 do
  if not tonumber(ARGV[i]) then
    return redis.error_reply("warm.lua: bad arguments: stock_total, limit, starts_at, ends_at must be numbers")
  end
end
local ledger = tonumber(ARGV[6])
local seen = tonumber(ARGV[7])
if not ledger or not seen then
  return redis.error_reply("warm.lua: bad arguments: the ledger's remaining units and placed_units must be numbers")
end
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local started = redis.call("HGET", KEYS[1], "starts_at")
if started and now >= tonumber(started) and ARGV[5] ~= "1" then
  return {"started", tonumber(redis.call("GET", KEYS[2]) or "0"), 0}
end
local s = redis.call("HMGET", KEYS[3], "pending_units", "placed_units", "withdrawn_units", "withdrawing")
local pending_units = tonumber(s[1] or "0") + tonumber(s[4] or "0")
-- Orders settled since the caller read the ledger may be in the read or not:
-- counted as sold (undersell until the next sweep, never oversell). A Redis
-- that went back in time (failover) holds those as pending again.
local placed_since = tonumber(s[2] or "0") + tonumber(s[3] or "0") - seen
if placed_since < 0 then
  placed_since = 0
end
local left = ledger - pending_units - placed_since
local moves_read = tonumber(ARGV[13] or "")
if moves_read then
  local m = redis.call("HMGET", KEYS[3], "lent_units", "received_units")
  local since = tonumber(m[1] or "0") + tonumber(m[2] or "0") - moves_read
  if since > 0 then
    left = left - since
  end
end
local shortfall = 0
if left < 0 then
  shortfall = -left
  left = 0
end
redis.call("HSET", KEYS[1], "stock_total", ARGV[1], "limit", ARGV[2], "starts_at", ARGV[3])
if (tonumber(ARGV[12] or "1") or 1) > 1 then
  redis.call("HSET", KEYS[1], "buckets", ARGV[12])
end
local seq = tonumber(ARGV[11] or "0") or 0
if tonumber(redis.call("HGET", KEYS[1], "control_seq") or "0") <= seq then
  redis.call("HSET", KEYS[1], "ends_at", ARGV[4], "paused", ARGV[10] == "1" and "1" or "0",
    "control_seq", seq)
end
for i, field in ipairs({"rl_buyer", "rl_ip"}) do
  local spec = ARGV[7 + i] or ""
  if spec == "" then
    redis.call("HDEL", KEYS[1], field)
  else
    redis.call("HSET", KEYS[1], field, spec)
  end
end
local old = tonumber(redis.call("GET", KEYS[2]) or "0")
redis.call("SET", KEYS[2], left)
if left > old then
  redis.call("HINCRBY", KEYS[3], "arrived_units", left - old)
end
redis.call("HINCRBY", KEYS[3], "shelf_version", 1)
return {"warmed", left, shortfall}
