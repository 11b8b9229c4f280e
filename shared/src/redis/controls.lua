-- An operator's controls, as DynamoDB's product item records them: pause
-- and the sale's end. Only on a warmed product (a warm-up copies them).
-- Idempotent: the sweeper applies them again every run, so a failover that
-- forgot them does not resume or prolong a sale.
--
-- KEYS[1] meta
-- ARGV[1] "1" paused | "0"  ARGV[2] ends_at (ms)
-- Returns 1 when applied, 0 when the product is not warmed here.

if not tonumber(ARGV[2]) or (ARGV[1] ~= "1" and ARGV[1] ~= "0") then
  return redis.error_reply("controls.lua: bad arguments: paused 1|0 and a numeric ends_at")
end
if redis.call("EXISTS", KEYS[1]) == 0 then
  return 0
end
redis.call("HSET", KEYS[1], "paused", ARGV[1], "ends_at", ARGV[2])
return 1
