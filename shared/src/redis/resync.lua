-- Heals the Redis shelf from the DynamoDB stock ledger while the sale runs.
-- The shelf should be: what the ledger allows this shelf (below) - units
-- still pending here - units being withdrawn here - those of the units that
-- left this Redis' accounting for the ledger's (settled as placed,
-- withdrawals confirmed: the fence `placed_units + withdrawn_units`) since
-- the caller's fence read that the ledger read did not see yet. Which of
-- them it saw is unknown, so the truth lies between `low` (none seen) and
-- `high` (all seen). A shelf in that range is left as Redis' own arithmetic
-- made it (during a burst, setting `low` would hide units from buyers until
-- the next run); one outside is wrong for sure and set to `low`, which never
-- oversells.
--
-- Releases and additions have an exact fence: the ledger counts the units it
-- got back (released + added, read with `remaining` in one snapshot), this
-- Redis the units it put back on the shelf (released_units + added_units,
-- release.lua and stock_change.lua). Recorded there but not put back here:
-- not the shelf's yet (at most the ledger's `releasing`: one confirmed
-- there and missing here was forgotten in a failover, and is offered
-- again, and adopted into this count, `adopted_units`, so that it cannot
-- hide a later release in flight; so is a return added while the sale was
-- cold, which the warm-up offered). Put back here after the ledger read:
-- the shelf's.
-- Units being withdrawn (`withdrawing`) are never offered. (Counting them
-- against the ledger's `withdrawn` cannot tell a take in flight from a
-- withdrawal made while the sale was cold; a settle a failover forgot is
-- instead redone by the sweeper before its resync.)
--
-- KEYS[1] stock  KEYS[2] stats
-- ARGV[1] ledger units remaining  ARGV[2] the fence, read before the ledger
-- ARGV[3] the ledger's released + added units  ARGV[4] the ledger's releasing
-- Returns {"synced", drift} (drift = new - old shelf) | {"busy", 0} when this
-- Redis went back in time since the read (a failover): nothing changed.

local ledger = tonumber(ARGV[1])
local seen = tonumber(ARGV[2])
local returned = tonumber(ARGV[3])
local releasing = tonumber(ARGV[4])
if not ledger or not seen or not returned or not releasing then
  return redis.error_reply("resync.lua: bad arguments: numeric remaining, fence, returned and releasing units")
end
local s = redis.call("HMGET", KEYS[2], "pending_units", "placed_units", "withdrawn_units", "withdrawing",
  "released_units", "added_units", "adopted_units")
local pending_units = tonumber(s[1] or "0")
local fence = tonumber(s[2] or "0") + tonumber(s[3] or "0")
if fence < seen then
  return {"busy", 0}
end
local put_back = tonumber(s[5] or "0") + tonumber(s[6] or "0") + tonumber(s[7] or "0")
local unapplied = returned - put_back
if unapplied > releasing then
  unapplied = releasing
end
if unapplied < 0 then
  unapplied = 0
end
local since_read = put_back - returned
if since_read < 0 then
  since_read = 0
end
local high = ledger - unapplied + since_read - pending_units - tonumber(s[4] or "0")
local low = high - (fence - seen)
if low < 0 then
  low = 0
end
local old = tonumber(redis.call("GET", KEYS[1]) or "0")
local target = low
if old >= low and old <= high then
  target = old
end
if old ~= target then
  redis.call("SET", KEYS[1], target)
  redis.call("HINCRBY", KEYS[2], "resync_drift", target - old)
  if target > old then
    redis.call("HINCRBY", KEYS[2], "arrived_units", target - old)
  end
end
if returned - put_back > releasing then
  redis.call("HINCRBY", KEYS[2], "adopted_units", returned - put_back - releasing)
end
return {"synced", target - old}
