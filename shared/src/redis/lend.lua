-- The first step of moving units between two stock buckets of a product
-- (crate::buckets): takes up to ARGV[3] units off this bucket's shelf and
-- records the transfer here, in the lender's slot, until the borrower's
-- receive.lua has added them and the transfer is finished (HDEL). A
-- transfer left here (its mover died) is completed by the sweeper.
-- Once per transfer id: a call run twice answers what the first lent.
--
-- KEYS[1] stock  KEYS[2] transfers (hash: id -> "<to bucket>:<units>:<lent_at ms>")
-- KEYS[3] stats
-- ARGV[1] transfer id (fresh per move)  ARGV[2] the borrowing bucket  ARGV[3] units wanted
-- Returns the units lent (0 when this bucket has none).

local want = tonumber(ARGV[3])
if ARGV[1] == "" or not tonumber(ARGV[2]) or not want or want < 1 or want ~= math.floor(want) then
  return redis.error_reply("lend.lua: bad arguments: a transfer id, the borrowing bucket and a positive number of units")
end
local earlier = redis.call("HGET", KEYS[2], ARGV[1])
if earlier then
  return tonumber(string.match(earlier, "^%d+:(%d+):"))
end
local left = tonumber(redis.call("GET", KEYS[1]) or "0")
local n = math.min(left, want)
if n < 1 then
  return 0
end
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call("DECRBY", KEYS[1], n)
redis.call("HSET", KEYS[2], ARGV[1], ARGV[2] .. ":" .. n .. ":" .. now)
redis.call("HINCRBY", KEYS[3], "lent_units", n)
return n
