-- Counts a sampled first visit of a waiting room (issue 33): once per
-- place (its nonce), in the second of arrival time the place stands at,
-- so the inlet controller sees how dense the line is ahead of the frontier.
--
-- KEYS[1] string: the place's nonce, seen  KEYS[2] hash: second -> places
-- ARGV[1] the place's second (ms / 1000)  ARGV[2] how long to remember it (ms)
--
-- Returns 1 when counted, 0 when the place was counted already.

local ms = tonumber(ARGV[2])
if not tonumber(ARGV[1]) or not ms or ms < 1 or ms ~= math.floor(ms) then
  return redis.error_reply("seen.lua: bad arguments: a second and a positive whole ms")
end
if not redis.call("SET", KEYS[1], "1", "NX", "PX", ms) then
  return 0
end
redis.call("HINCRBY", KEYS[2], ARGV[1], 1)
redis.call("EXPIRE", KEYS[2], 604800)
return 1
