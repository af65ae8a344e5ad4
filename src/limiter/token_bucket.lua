-- Token bucket as GCRA (see `limiter::token_bucket`). KEYS[1]: hash {ts, tn = the
-- theoretical arrival time in s and ns, i = the refill interval it was computed with};
-- KEYS[2..]: other algorithms. ARGV[5]: burst, ARGV[6]: refill interval in ns.
-- Exact while the bucket's capacity in time (burst × interval) is below 2^53 ns (104
-- days), within one part in 2^53 beyond.
local burst, t = tonumber(ARGV[5]), tonumber(ARGV[6])
local cap = burst * t
local st = redis.call('HMGET', KEYS[1], 'ts', 'tn', 'i')
local fresh = not st[1]
if refund and st[1] then
  -- The debt the check added (in the interval it was recorded with), less what has
  -- dripped back in since (which a check since may have taken), never back before
  -- now; nothing else is written (as in memory).
  local old = tonumber(st[3])
  if old == 0 then old = t end
  local raw = (tonumber(st[1]) - now_s) * 1000000000 + (tonumber(st[2]) - now_ns)
  -- (Never less than nothing elapsed: a clock stepped back gives back no more.)
  local back = cost * old - math.max((now_s - at_s) * 1000000000 + (now_ns - at_ns), 0)
  if raw > 0 and back > 0 then
    local ts, tn = split(now_ns + math.max(raw - back, 0))
    st[1], st[2] = string.format('%d', now_s + ts), string.format('%d', tn)
    redis.call('HSET', KEYS[1], 'ts', st[1], 'tn', st[2])
  end
end
local debt = 0
if st[1] then
  debt = (tonumber(st[1]) - now_s) * 1000000000 + (tonumber(st[2]) - now_ns)
  if debt < 0 then debt = 0 end
  local old = tonumber(st[3])
  if old ~= 0 and old ~= t then debt = math.floor(debt * t / old) end
end
-- A debt past the capacity (an overdrawn bucket, or a lowered capacity) is kept.
local allowed = charge or debt + need * t <= cap
if takes(allowed) then debt = debt + cost * t end
-- A debt is kept up to 2^52 ns, or a whole bucket if that is longer (see
-- `limiter::token_bucket::MAX_DEBT`).
local most = math.max(cap, 4503599627370496)
if debt > most then debt = most end
local remaining = math.max(math.floor((cap - debt) / t), 0)
local rt_s, rt_ns = 0, 0
if debt + need * t > cap and need * t > cap then
  -- Never fits: the best it gets is a full bucket.
  rt_s, rt_ns = split(debt)
elseif debt + need * t > cap then
  rt_s, rt_ns = split(debt + need * t - cap)
end
local rs_s, rs_ns = split(debt)
-- Written on a peek too, as in memory: a rescaled or capped debt stays so. A peek of a
-- bucket with no state writes none (an absent bucket is a full one): only a consuming
-- check makes a state, which keeps `forget_others` exact.
if not refund and (consume or charge or not fresh) then
  local ts, tn = split(now_ns + debt)
  redis.call('HSET', KEYS[1], 'ts', string.format('%d', now_s + ts), 'tn', string.format('%d', tn), 'i', string.format('%d', t))
  expire_in({KEYS[1]}, rs_s, rs_ns)
  forget_others(2, fresh)
end
-- Tokens owed past an empty bucket, rounded up.
local owed = 0
if debt > cap then owed = math.ceil((debt - cap) / t) end
return {allowed and 1 or 0, remaining, rt_s, rt_ns, rs_s, rs_ns, owed, now_s, now_ns}
