-- The Redis steps of an operator's stock change, once per change key (the
-- `changes` hash holds each change's state, so a retry or a second runner
-- does nothing twice; a failover that forgets a step forgets its writes
-- with it, so running it again is right).
--
-- A withdrawal starts here, since only the shelf knows which units nobody
-- was admitted to: "take" moves n units from the shelf to `withdrawing`;
-- once DynamoDB recorded the withdrawal, "settle" moves them on to
-- `withdrawn_units` (the resync's fence, with placed_units); if DynamoDB
-- refused it, "undo" puts them back on the shelf. The resync subtracts
-- `withdrawing`, so it never offers a unit being withdrawn.
-- An addition claims its key here first ("claim": nothing moves, but a key
-- a withdrawal holds is refused), is recorded in DynamoDB (its units
-- `releasing` there), then "add" puts them on the shelf.
--
-- KEYS[1] meta  KEYS[2] stock  KEYS[3] stats  KEYS[4] changes (hash: key ->
--   "taken:<n>" | "withdrawn:<n>" | "refused:<n>" | "adding:<n>" | "added:<n>";
--   key|audit ->
--   the change's audit entry, for a sweeper that finishes it)
-- ARGV[1] take | settle | undo | claim | add  ARGV[2] change key  ARGV[3] n (> 0)
-- ARGV[4] the audit entry (JSON; take only)  ARGV[5] ttl of the record (s)
-- Returns {"cold"} when the sale is not warmed here (nothing changed),
--   {"short", units on the shelf} (take: fewer than n; nothing changed),
--   {"done", <state before>} when this call moved units,
--   {"seen", <state>} when it did nothing.

local step, key, n, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[5])
if not n or n < 1 or n ~= math.floor(n) or not ttl or ttl < 1 or key == "" then
  return redis.error_reply("stock_change.lua: bad arguments: a change key, a positive whole n and ttl")
end
if redis.call("EXISTS", KEYS[1]) == 0 then
  return {"cold", ""}
end
local state = redis.call("HGET", KEYS[4], key)
local taken = "taken:" .. n
local function record(to)
  redis.call("HSET", KEYS[4], key, to .. ":" .. n)
  redis.call("EXPIRE", KEYS[4], ttl)
end

if step == "take" then
  if state then
    return {"seen", state}
  end
  local left = tonumber(redis.call("GET", KEYS[2]) or "0")
  if left < n then
    return {"short", tostring(left)}
  end
  redis.call("DECRBY", KEYS[2], n)
  redis.call("HINCRBY", KEYS[1], "stock_total", -n)
  redis.call("HINCRBY", KEYS[3], "withdrawing", n)
  redis.call("HSET", KEYS[4], key .. "|audit", ARGV[4])
  record("taken")
  return {"done", ""}
elseif step == "settle" or step == "undo" then
  if state ~= taken then
    return {"seen", state or ""}
  end
  redis.call("HINCRBY", KEYS[3], "withdrawing", -n)
  redis.call("HDEL", KEYS[4], key .. "|audit")
  if step == "settle" then
    redis.call("HINCRBY", KEYS[3], "withdrawn_units", n)
    record("withdrawn")
  else
    redis.call("INCRBY", KEYS[2], n)
    redis.call("HINCRBY", KEYS[3], "arrived_units", n)
    redis.call("HINCRBY", KEYS[1], "stock_total", n)
    record("refused")
  end
  return {"done", taken}
elseif step == "claim" then
  if state then
    return {"seen", state}
  end
  record("adding")
  return {"done", ""}
elseif step == "add" then
  -- No state: the claim was forgotten in a failover, with nothing else.
  if state and state ~= "adding:" .. n then
    return {"seen", state}
  end
  redis.call("INCRBY", KEYS[2], n)
  redis.call("HINCRBY", KEYS[1], "stock_total", n)
  redis.call("HINCRBY", KEYS[3], "added_units", n)
  redis.call("HINCRBY", KEYS[3], "arrived_units", n)
  record("added")
  return {"done", ""}
end
return redis.error_reply("stock_change.lua: bad step: take | settle | undo | claim | add")
