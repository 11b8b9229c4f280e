-- Restores the meta of one stock bucket a failover forgot (its warm-up
-- lost with the writes after it), copied from a sibling bucket's meta: the
-- sale's terms are the same in every bucket (warm.lua writes them all, and
-- controls.lua applies pause and end to each). The shelf starts empty; the
-- resync fills it from the ledger. Fields the bucket holds already (a
-- control applied after the loss) are kept: they are at least as new.
--
-- KEYS[1] meta  KEYS[2] stock  KEYS[3] stats
-- ARGV: the sibling's meta as field, value, field, value, ...
-- Returns 1 when it restored the meta, 0 when the bucket has one (nothing
-- changed).

if #ARGV < 2 or #ARGV % 2 ~= 0 then
  return redis.error_reply("restore.lua: bad arguments: a sibling's meta as field/value pairs")
end
if redis.call("HEXISTS", KEYS[1], "limit") == 1 then
  return 0
end
for i = 1, #ARGV, 2 do
  redis.call("HSETNX", KEYS[1], ARGV[i], ARGV[i + 1])
end
if redis.call("EXISTS", KEYS[2]) == 0 then
  redis.call("SET", KEYS[2], 0)
end
redis.call("HINCRBY", KEYS[3], "shelf_version", 1)
return 1
