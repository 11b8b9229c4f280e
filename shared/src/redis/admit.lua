-- The admission rule: the only place a unit of stock is taken.
-- Every check runs before the first write, so a refused request changes
-- nothing but the rate limiters it passed.
-- All keys share the product's hash tag {<product>} (Redis Cluster safe).
--
-- KEYS[1] meta     hash: stock_total, limit, starts_at, ends_at (ms)
-- KEYS[2] stock    string: units left
-- KEYS[3] buyers   hash: user -> request_id (one admitted request per buyer)
-- KEYS[4] req      hash: this request's state (user, qty, status, admitted_at, ...)
-- KEYS[5] pending  zset: request_id scored by admission time (the outbox index)
-- KEYS[6] stats    hash: admitted, placed, ..., pending_units, placed_units
-- KEYS[7] the buyer's rate limiter, KEYS[8] the client IP's (string: GCRA's
--         theoretical arrival time, ms)
-- KEYS[9] deny     hash: user -> blocked until (ms; "0" = until removed), the
--         operators' deny list as this sale holds it
-- KEYS[10] an IPv6 client's /48 limiter (KEYS[8] counts its /64): a site's
--         prefix, so that the 65,536 /64s a free /48 holds share one budget
-- ARGV[1] request_id  ARGV[2] user  ARGV[3] quantity
-- ARGV[4] "1" when the id was derived from an Idempotency-Key  ARGV[5] request ttl (s)
-- ARGV[6] the default buyer limit, ARGV[7] the default IP limit:
--         "<ms between requests>:<burst>" or "" for none; meta's rl_buyer /
--         rl_ip (the sale's own) win. ARGV[8] "1" when the client IP is known.
-- ARGV[9] "1" when this request's limiters were charged already: a run after
--         its stock bucket borrowed from a sibling (crate::buckets); every
--         stock answer (sold_out, short) comes after the charge.
-- ARGV[10] "1" when the client is IPv6: its /48 is limited too, at
--         WIDE_FACTOR times its address's rate and burst.
--
-- Returns {"admitted", admitted_at_ms, ends_at_ms}
--       | {"replay", admitted_at_ms, ends_at_ms, status, "1" when its message was sent}
--       | {"short", stock_left, ""} | {"throttled", retry_after_ms, ""}
--       | {refusal_code, "", ""}

local user = ARGV[2]
local qty = tonumber(ARGV[3])
local ttl = tonumber(ARGV[5])
if user == "" or not qty or qty < 1 or qty ~= math.floor(qty) or not ttl or ttl < 1 then
  return redis.error_reply("admit.lua: bad arguments: user must be non-empty, quantity and ttl positive integers")
end

-- The request exists: a replay of its Idempotency-Key (a keyed id is derived
-- from the key), or the same call run twice (a client re-sending after a
-- dropped connection). Answered from the first admission, never admitted twice.
local earlier = redis.call("HMGET", KEYS[4], "user", "qty", "admitted_at", "status", "sent_at")
if earlier[1] then
  if earlier[1] ~= user or tonumber(earlier[2]) ~= qty then
    return {"idempotency_key_reused", "", ""}
  end
  local ends_at = redis.call("HGET", KEYS[1], "ends_at") or "0"
  if ARGV[4] == "1" then
    return {"replay", earlier[3], ends_at, earlier[4], earlier[5] and "1" or "0"}
  end
  return {"admitted", earlier[3], ends_at}
end

local meta = redis.call("HMGET", KEYS[1], "limit", "starts_at", "ends_at", "rl_buyer", "rl_ip", "paused")
if not meta[1] then
  return {"unknown_product", "", ""}
end
-- Server time, never the client's clock.
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- Every refusal that does not depend on stock comes before the shelf is
-- looked at: with stock buckets a buyer refused anyway must not send their
-- bucket borrowing from its siblings (RedisGate::admit borrows on
-- sold_out / short only). An ended sale is final and costs no token.
if now >= tonumber(meta[3]) then
  return {"sale_ended", "", ""}
end
-- An operator's pause: nothing else is looked at or moved.
if meta[6] == "1" then
  return {"sale_paused", "", ""}
end
-- A denied buyer costs no limiter either: they are refused outright.
local blocked = redis.call("HGET", KEYS[9], user)
if blocked and (blocked == "0" or now < tonumber(blocked)) then
  return {"buyer_blocked", "", ""}
end

-- Rate limits (GCRA), before the sale's own checks: the countdown's
-- hammering is limited too. A request may run `burst - 1` intervals ahead of
-- its limiter's schedule; a limited request moves no limiter.
local function schedule(key, spec)
  local interval, burst = string.match(spec or "", "^(%d+):(%d+)$")
  if not interval then
    return nil
  end
  interval, burst = tonumber(interval), tonumber(burst)
  local tat = tonumber(redis.call("GET", key) or "0")
  if tat < now then
    tat = now
  end
  return {key = key, next = tat + interval, wait = tat - now - (burst - 1) * interval}
end
local limiters = {}
if ARGV[9] ~= "1" then
  limiters[1] = schedule(KEYS[7], meta[4] or ARGV[6])
end
if ARGV[8] == "1" and ARGV[9] ~= "1" then
  limiters[#limiters + 1] = schedule(KEYS[8], meta[5] or ARGV[7])
end
if ARGV[10] == "1" and ARGV[9] ~= "1" then
  local interval, burst = string.match(meta[5] or ARGV[7] or "", "^(%d+):(%d+)$")
  if interval then
    local WIDE_FACTOR = 16
    local wide = math.max(1, math.floor(tonumber(interval) / WIDE_FACTOR)) .. ":" .. tonumber(burst) * WIDE_FACTOR
    limiters[#limiters + 1] = schedule(KEYS[10], wide)
  end
end
local wait = 0
for _, l in pairs(limiters) do
  if l.wait > wait then
    wait = l.wait
  end
end
if wait > 0 then
  return {"throttled", tostring(wait), ""}
end
for _, l in pairs(limiters) do
  redis.call("SET", l.key, l.next, "PX", l.next - now)
end

if now < tonumber(meta[2]) then
  return {"sale_not_started", meta[2], ""}
end
if qty > tonumber(meta[1]) then
  return {"limit_exceeded", "", ""}
end
if redis.call("HEXISTS", KEYS[3], user) == 1 then
  return {"already_purchased", "", ""}
end
-- Sold out in this bucket (with several, the gate asks the siblings).
local left = tonumber(redis.call("GET", KEYS[2]) or "0")
if left < 1 then
  return {"sold_out", "", ""}
end
-- Some left, not enough: only this request is refused, the product is not sold out.
if left < qty then
  return {"short", tostring(left), ""}
end

-- Admitted: writes only from here on.
redis.call("DECRBY", KEYS[2], qty)
redis.call("HSET", KEYS[3], user, ARGV[1])
redis.call("HSET", KEYS[4], "user", user, "qty", qty, "status", "pending",
  "admitted_at", now, "updated_at", now)
redis.call("EXPIRE", KEYS[4], ttl)
redis.call("ZADD", KEYS[5], now, ARGV[1])
redis.call("HINCRBY", KEYS[6], "admitted", 1)
redis.call("HINCRBY", KEYS[6], "pending_units", qty)
return {"admitted", tostring(now), meta[3]}
