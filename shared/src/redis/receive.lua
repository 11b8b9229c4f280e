-- The second step of moving units between two stock buckets (lend.lua was
-- the first): adds the lent units to this bucket's shelf, once per
-- transfer id, remembered by a marker in this slot for as long as the
-- lender may still list the transfer.
--
-- KEYS[1] stock  KEYS[2] the transfer's marker (string)  KEYS[3] stats
-- ARGV[1] units  ARGV[2] the marker's ttl (s)
-- Returns 1 when this call added the units, 0 when an earlier one had.

local units = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
if not units or units < 1 or units ~= math.floor(units) or not ttl or ttl < 1 then
  return redis.error_reply("receive.lua: bad arguments: a positive number of units and a ttl in seconds")
end
if redis.call("EXISTS", KEYS[2]) == 1 then
  return 0
end
redis.call("INCRBY", KEYS[1], units)
redis.call("SET", KEYS[2], units, "EX", ttl)
redis.call("HINCRBY", KEYS[3], "received_units", units)
redis.call("HINCRBY", KEYS[3], "arrived_units", units)
return 1
