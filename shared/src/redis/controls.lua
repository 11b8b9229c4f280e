-- An operator's controls, as DynamoDB's product item records them: pause
-- and the sale's end. Only on a warmed product (a warm-up copies them).
-- Idempotent: the sweeper applies them again every run, so a failover that
-- forgot them does not resume or prolong a sale. In DynamoDB's order only:
-- a copy read before a newer control (a slow sweep) changes nothing.
--
-- KEYS[1] meta
-- ARGV[1] "1" paused | "0"  ARGV[2] ends_at (ms)  ARGV[3] control_seq
-- Returns 1 when the sale has these controls, 0 when the product is not
-- warmed here, -1 when a newer control is already applied.

if not tonumber(ARGV[2]) or not tonumber(ARGV[3]) or (ARGV[1] ~= "1" and ARGV[1] ~= "0") then
  return redis.error_reply("controls.lua: bad arguments: paused 1|0, numeric ends_at and control_seq")
end
if redis.call("EXISTS", KEYS[1]) == 0 then
  return 0
end
if tonumber(redis.call("HGET", KEYS[1], "control_seq") or "0") > tonumber(ARGV[3]) then
  return -1
end
redis.call("HSET", KEYS[1], "paused", ARGV[1], "ends_at", ARGV[2], "control_seq", ARGV[3])
return 1
