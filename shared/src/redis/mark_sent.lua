-- Records where a pending request's message stands, for the outbox sweeper
-- and for replays:
--   "sent":      it reached the queue, so its fate will be decided in
--                DynamoDB whatever Redis forgets (deduct, sweeper);
--   "claimed":   the sweeper is about to re-send it, so an overlapping or
--                later run leaves it alone;
--   "unclaimed": that re-send failed.
--
-- KEYS[1] req
-- ARGV[1] "sent" | "claimed" | "unclaimed"
-- Returns 1 when recorded, 0 when the request is not (or no longer) pending.

if redis.call("HGET", KEYS[1], "status") ~= "pending" then
  return 0
end
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[1] == "sent" then
  redis.call("HSET", KEYS[1], "sent_at", now)
elseif ARGV[1] == "claimed" then
  redis.call("HSET", KEYS[1], "claimed_at", now)
elseif ARGV[1] == "unclaimed" then
  redis.call("HDEL", KEYS[1], "claimed_at")
else
  return redis.error_reply("mark_sent.lua: bad argument: sent, claimed or unclaimed")
end
return 1
