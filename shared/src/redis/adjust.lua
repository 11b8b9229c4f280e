-- The resync's correction of one stock bucket of a bucketed product
-- (RedisGate::resync with buckets): the product's shelf is checked against
-- the ledger as the sum of its buckets, read one by one, so the correction
-- comes as a number of units to add to (or take from) this bucket's shelf,
-- not as a shelf to set: units admitted, settled or released here since
-- the read stay counted.
--
-- KEYS[1] stock  KEYS[2] stats
-- ARGV[1] units to add (negative: to take; never below an empty shelf)
-- ARGV[2] this bucket's fence (placed_units + withdrawn_units) as read
-- ARGV[3] units to adopt (see resync.lua's adopted_units), 0 mostly
-- ARGV[4] this bucket's moves (lent_units + received_units) as read last
-- ARGV[5] this bucket's shelf_version as read before its shelf
-- Returns {"synced", units added (negative: taken)} | {"busy", 0} when this
-- bucket went back in time since the read (a failover), lent or received
-- units since (the correction was planned from shelves that moved), or had
-- its shelf set or corrected since (a warm-up, a restore, or a concurrent
-- resync that may have applied, and adopted, what this one would again):
-- nothing changed.

local delta = tonumber(ARGV[1])
local seen = tonumber(ARGV[2])
local adopt = tonumber(ARGV[3])
local moved = tonumber(ARGV[4])
local version = tonumber(ARGV[5])
if not delta or not seen or not adopt or adopt < 0 or not moved or not version then
  return redis.error_reply("adjust.lua: bad arguments: numeric units, fence, units to adopt (>= 0), moves and shelf version")
end
local s = redis.call("HMGET", KEYS[2], "placed_units", "withdrawn_units", "lent_units", "received_units",
  "shelf_version")
if tonumber(s[1] or "0") + tonumber(s[2] or "0") < seen
    or tonumber(s[3] or "0") + tonumber(s[4] or "0") ~= moved
    or tonumber(s[5] or "0") ~= version then
  return {"busy", 0}
end
local old = tonumber(redis.call("GET", KEYS[1]) or "0")
local new = old + delta
if new < 0 then
  new = 0
end
if new ~= old then
  redis.call("SET", KEYS[1], new)
  redis.call("HINCRBY", KEYS[2], "resync_drift", new - old)
  if new > old then
    redis.call("HINCRBY", KEYS[2], "arrived_units", new - old)
  end
end
if adopt > 0 then
  redis.call("HINCRBY", KEYS[2], "adopted_units", adopt)
end
redis.call("HINCRBY", KEYS[2], "shelf_version", 1)
return {"synced", new - old}
