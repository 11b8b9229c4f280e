-- Redeems a waiting-room admission (issue 33) for one buyer account: the
-- first account to buy with an admission holds it while it lives; another
-- account presenting it is refused. Product-wide, in the product's own slot
-- (stock buckets route by buyer, so no bucket's keys could make it so).
--
-- KEYS[1] string: the admission's nonce -> the account holding it
-- KEYS[2] string: admissions redeemed for the product (the inlet
--         controller's count of entries)
-- ARGV[1] the buyer account  ARGV[2] how long to hold it (ms)
--
-- Returns the account holding the admission (ARGV[1] when it is theirs).

local ms = tonumber(ARGV[2])
if ARGV[1] == "" or not ms or ms < 1 or ms ~= math.floor(ms) then
  return redis.error_reply("redeem.lua: bad arguments: an account and a positive whole ms")
end
local holder = redis.call("GET", KEYS[1])
if holder then
  return holder
end
redis.call("SET", KEYS[1], ARGV[1], "PX", ms)
-- Kept a week past the last entry: long after any sale it counts.
redis.call("INCRBY", KEYS[2], 1)
redis.call("EXPIRE", KEYS[2], 604800)
return ARGV[1]
