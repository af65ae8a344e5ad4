-- Fixed window. KEYS[1]: hash {s = window start (s), c = count, f = the end of the window
-- its expiry was set for (a window's state expires one second after it ends; set once
-- per window)}; KEYS[2..]: the keys of
-- the other algorithms. ARGV[5]: limit, ARGV[6]: window in seconds, ARGV[7]: calendar
-- windows instead (0 none, 1 a UTC day, 2 an ISO week from Monday, 3 a month from the
-- 1st; see `limiter::fixed_window::Calendar::bounds`, whose arithmetic this repeats).
local limit, w, calendar = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local start, finish
if calendar == 0 then
  start = now_s - (now_s % w)
  finish = start + w
else
  local day = math.floor(now_s / 86400)
  local first, next_ = day, day + 1
  if calendar == 2 then
    -- 1970-01-01 was a Thursday: Monday is 3 days before it.
    first = math.max(day - ((day + 3) % 7), 0)
    next_ = day - ((day + 3) % 7) + 7
  elseif calendar == 3 then
    -- Howard Hinnant's civil_from_days, then days_from_civil of the next month's 1st.
    local z = day + 719468
    local era = math.floor(z / 146097)
    local doe = z - era * 146097
    local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
      - math.floor(doe / 146096)) / 365)
    local y = yoe + era * 400
    local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
    local mp = math.floor((5 * doy + 2) / 153)
    local d = doy - math.floor((153 * mp + 2) / 5) + 1
    local m = mp < 10 and mp + 3 or mp - 9
    if m <= 2 then y = y + 1 end
    first = day - (d - 1)
    local ny, nm = y, m + 1
    if m == 12 then ny, nm = y + 1, 1 end
    if nm <= 2 then ny = ny - 1 end
    local nera = math.floor(ny / 400)
    local nyoe = ny - nera * 400
    local ndoy = math.floor((153 * (nm > 2 and nm - 3 or nm + 9) + 2) / 5)
    next_ = nera * 146097 + nyoe * 365 + math.floor(nyoe / 4) - math.floor(nyoe / 100)
      + ndoy - 719468
  end
  start, finish = first * 86400, next_ * 86400
end
local st = redis.call('HMGET', KEYS[1], 's', 'c', 'f')
local fresh = not st[1]
if refund and at_s >= start and tonumber(st[1]) == start then
  -- Only while the window of that time is still the one counted.
  st[2] = math.max(tonumber(st[2]) - cost, 0)
  redis.call('HSET', KEYS[1], 'c', st[2])
end
local rs, count = tonumber(st[1]), 0
if rs and rs >= start and rs < finish then count = tonumber(st[2]) end
local allowed = charge or count + need <= limit
-- A charge past the limit overdraws the window; its debt ends with it.
if takes(allowed) then count = math.min(count + cost, 9007199254740991) end
local remaining = math.max(limit - count, 0)
local ue_s, ue_ns = until_(finish, 0)
local rt_s, rt_ns, rs_s, rs_ns = 0, 0, 0, 0
-- The count starts again at the end of the window.
if count + need > limit then rt_s, rt_ns = ue_s, ue_ns end
if count > 0 then rs_s, rs_ns = ue_s, ue_ns end
if consume or charge then
  if tonumber(st[3]) == finish then
    redis.call('HSET', KEYS[1], 's', start, 'c', count)
  else
    redis.call('HSET', KEYS[1], 's', start, 'c', count, 'f', finish)
    expire_in({KEYS[1]}, ue_s, ue_ns)
  end
  forget_others(2, fresh)
end
return {allowed and 1 or 0, remaining, rt_s, rt_ns, rs_s, rs_ns, math.max(count - limit, 0), now_s, now_ns}
