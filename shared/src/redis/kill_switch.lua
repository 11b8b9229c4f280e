-- The global kill switch, as deduct instances read it (each caches it for
-- well under a second). Taken only over an older copy: the sweeper
-- re-asserts DynamoDB's record every run, and a slow sweep must not undo a
-- newer change.
--
-- KEYS[1] switch  hash: engaged ("1" | "0"), seq
-- ARGV[1] "1" engaged | "0"  ARGV[2] seq (DynamoDB's count of changes)
-- Returns 1 when Redis now holds this copy, 0 when it holds a newer one.

if (ARGV[1] ~= "1" and ARGV[1] ~= "0") or not tonumber(ARGV[2]) then
  return redis.error_reply("kill_switch.lua: bad arguments: engaged 1|0 and a numeric seq")
end
if tonumber(redis.call("HGET", KEYS[1], "seq") or "0") > tonumber(ARGV[2]) then
  return 0
end
redis.call("HSET", KEYS[1], "engaged", ARGV[1], "seq", ARGV[2])
return 1
