-- The last step of moving units between two stock buckets: the borrower
-- has received them (receive.lua), so the lender takes its listing down
-- and remembers the transfer as finished, so that lend.lua never lends
-- again under its id.
--
-- KEYS[1] transfers  KEYS[2] the transfer's finished marker
-- ARGV[1] transfer id  ARGV[2] "<to bucket>:<units>"  ARGV[3] the marker's ttl (s)
-- Returns 1.

local ttl = tonumber(ARGV[3])
if ARGV[1] == "" or not string.match(ARGV[2], "^%d+:%d+$") or not ttl or ttl < 1 then
  return redis.error_reply("finish.lua: bad arguments: a transfer id, <to>:<units> and a ttl in seconds")
end
redis.call("HDEL", KEYS[1], ARGV[1])
redis.call("SET", KEYS[2], ARGV[2], "EX", ttl)
return 1
