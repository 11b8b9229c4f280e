-- The first step of moving units between two stock buckets of a product
-- (crate::buckets): takes up to ARGV[3] units off this bucket's shelf and
-- lists the transfer in this, the lender's, slot until the borrower's
-- receive.lua has added them and finish.lua has taken the listing down
-- (RedisGate::complete_transfer; a listing whose mover died stays until
-- someone completes it).
-- Once per transfer id: a call run twice, or a retry after the transfer
-- finished, answers what the first lent and lends nothing more.
--
-- KEYS[1] stock  KEYS[2] transfers (hash: id -> "<to bucket>:<units>:<lent_at ms>")
-- KEYS[3] stats  KEYS[4] the transfer's finished marker ("<to bucket>:<units>")
-- ARGV[1] transfer id (fresh per move)  ARGV[2] the borrowing bucket  ARGV[3] units wanted
-- ARGV[4] "half": lend at least half of this shelf (a borrower that ran dry
--   takes a share, not one buyer's units at a time, so shelves even out)
-- Returns {units lent (0 when this bucket has none), the borrowing bucket}.

local want = tonumber(ARGV[3])
if ARGV[1] == "" or not string.match(ARGV[2], "^%d+$") or not string.match(ARGV[3], "^%d+$")
  or want < 1 then
  return redis.error_reply("lend.lua: bad arguments: a transfer id, the borrowing bucket and a positive number of units")
end
local earlier = redis.call("HGET", KEYS[2], ARGV[1]) or redis.call("GET", KEYS[4])
if earlier then
  local to, units = string.match(earlier, "^(%d+):(%d+)")
  return {tonumber(units), tonumber(to)}
end
local left = tonumber(redis.call("GET", KEYS[1]) or "0")
local n = want
if ARGV[4] == "half" and math.floor(left / 2) > n then
  n = math.floor(left / 2)
end
n = math.min(left, n)
if n < 1 then
  return {0, tonumber(ARGV[2])}
end
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call("DECRBY", KEYS[1], n)
redis.call("HSET", KEYS[2], ARGV[1], ARGV[2] .. ":" .. n .. ":" .. now)
redis.call("HINCRBY", KEYS[3], "lent_units", n)
return {n, tonumber(ARGV[2])}
