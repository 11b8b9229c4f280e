-- The admission rule: the only place a unit of stock is taken.
-- Every check runs before the first write, so a refused request changes nothing.
-- All keys share the product's hash tag {<product>} (Redis Cluster safe).
--
-- KEYS[1] meta     hash: stock_total, limit, starts_at, ends_at (ms)
-- KEYS[2] stock    string: units left
-- KEYS[3] buyers   hash: user -> request_id (one admitted request per buyer)
-- KEYS[4] req      hash: the new request's state
-- KEYS[5] pending  zset: request_id scored by admission time (the outbox index)
-- KEYS[6] stats    hash: admitted, placed, rejected, compensated, units_out
-- KEYS[7] idem     string: this buyer's Idempotency-Key -> request_id
-- ARGV[1] request_id  ARGV[2] user  ARGV[3] quantity
-- ARGV[4] "1" when an Idempotency-Key was sent  ARGV[5] request ttl (s)  ARGV[6] idempotency ttl (s)
--
-- Returns {"admitted", now_ms} | {"replay", earlier_request_id} | {refusal_code, ""}

local user = ARGV[2]
local qty = tonumber(ARGV[3])
local has_idem = ARGV[4] == "1"

if has_idem then
  local earlier = redis.call("GET", KEYS[7])
  if earlier then
    return {"replay", earlier}
  end
end

local meta = redis.call("HMGET", KEYS[1], "limit", "starts_at", "ends_at")
if not meta[1] then
  return {"unknown_product", ""}
end

-- Server time, never the client's clock.
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now < tonumber(meta[2]) then
  return {"sale_not_started", ""}
end
if now >= tonumber(meta[3]) then
  return {"sale_ended", ""}
end
if qty > tonumber(meta[1]) then
  return {"limit_exceeded", ""}
end
if redis.call("HEXISTS", KEYS[3], user) == 1 then
  return {"already_purchased", ""}
end
if tonumber(redis.call("GET", KEYS[2]) or "0") < qty then
  return {"sold_out", ""}
end

-- Admitted: writes only from here on.
redis.call("DECRBY", KEYS[2], qty)
redis.call("HSET", KEYS[3], user, ARGV[1])
redis.call("HSET", KEYS[4], "user", user, "qty", qty, "status", "pending",
  "admitted_at", now, "updated_at", now)
redis.call("EXPIRE", KEYS[4], ARGV[5])
redis.call("ZADD", KEYS[5], now, ARGV[1])
redis.call("HINCRBY", KEYS[6], "admitted", 1)
redis.call("HINCRBY", KEYS[6], "units_out", qty)
if has_idem then
  redis.call("SET", KEYS[7], ARGV[1], "EX", ARGV[6])
end
return {"admitted", tostring(now)}
