-- Sliding window, as runs of admissions per granule (see `limiter::sliding_window`).
-- KEYS[1]: list of "ms:count", oldest first; KEYS[2]: the sum of the counts; KEYS[3..]:
-- other algorithms. ARGV[5]: limit, ARGV[6]: window (s), ARGV[7]: granule (ms).
local limit, w, g = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local function parse(v)
  local ms, c = string.match(v, '^(%d+):(%d+)$')
  return tonumber(ms), tonumber(c)
end
local function expiry(ms)
  local r = ms % 1000
  return (ms - r) / 1000 + w, r * 1000000
end
local function expired(ms)
  local s, ns = expiry(ms)
  return s < now_s or (s == now_s and ns <= now_ns)
end
if refund and cost > 0 then
  -- The check recorded its units in the run of its granule: take them from that run
  -- only (see `limiter::sliding_window`'s refund).
  local from = at_s * 1000 + math.ceil(at_ns / 1000000)
  local r = from % g
  if r > 0 then from = from + g - r end
  for i, v in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
    local ms, c = parse(v)
    if ms == from then
      local take = math.min(cost, c)
      if take == c then
        redis.call('LSET', KEYS[1], i - 1, '-')
        redis.call('LREM', KEYS[1], 1, '-')
      else
        redis.call('LSET', KEYS[1], i - 1, string.format('%d:%d', ms, c - take))
      end
      if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('DECRBY', KEYS[2], take) end
      break
    end
    if ms > from then break end
  end
end
local total = tonumber(redis.call('GET', KEYS[2]) or '-1')
local fresh = total < 0
local front = redis.call('LINDEX', KEYS[1], 0)
-- A sum without its runs (the list alone was evicted) counts nothing that could expire.
if total > 0 and not front then total = 0 end
if total < 0 then
  -- No sum (a fresh key, or the sum alone was evicted): count the runs themselves.
  total = 0
  for _, v in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
    local _, c = parse(v)
    total = total + c
  end
end
local popped = false
while front do
  local ms, c = parse(front)
  if not expired(ms) then break end
  redis.call('LPOP', KEYS[1])
  total = total - c
  popped = true
  front = redis.call('LINDEX', KEYS[1], 0)
end
local allowed = charge or total + need <= limit
-- The newest run once this check is done, when it wrote it (else read below).
local back
-- A charge of more than 2^32 - 1 units counts as that many (see `limiter::sliding_window`).
local n = math.min(cost, 4294967295)
if takes(allowed) and n > 0 then
  local at = now_s * 1000 + math.ceil(now_ns / 1000000)
  local r = at % g
  if r > 0 then at = at + g - r end
  local last = redis.call('LINDEX', KEYS[1], -1)
  local bms, bc
  if last then bms, bc = parse(last) end
  if bms and bms >= at and (bc + n <= 4294967295 or charge) then
    -- A charge fills a run up to 2^32 - 1 (see `limiter::sliding_window`).
    n = math.min(n, 4294967295 - bc)
    back = string.format('%d:%d', bms, bc + n)
    redis.call('LSET', KEYS[1], -1, back)
  else
    -- A full run goes on at the next millisecond, counted longer, never shorter.
    if bms and bms >= at then at = bms + 1 end
    back = string.format('%d:%d', at, n)
    redis.call('RPUSH', KEYS[1], back)
  end
  total = total + n
end
local remaining = math.max(limit - total, 0)
local rt_s, rt_ns, rs_s, rs_ns = 0, 0, 0, 0
if not back then back = redis.call('LINDEX', KEYS[1], -1) end
if back then rs_s, rs_ns = until_(expiry(parse(back))) end
if total + need > limit and need > limit then
  -- Never fits: the best it gets is the whole quota back.
  rt_s, rt_ns = rs_s, rs_ns
elseif total + need > limit then
  -- A request of `need` fits once `total + need - limit` admissions have expired.
  local to_expire = total + need - limit
  local e_s, e_ns = now_s, now_ns
  local i, done = 0, false
  while not done do
    local chunk = redis.call('LRANGE', KEYS[1], i, i + 63)
    if #chunk == 0 then break end
    for _, v in ipairs(chunk) do
      local ms, c = parse(v)
      e_s, e_ns = expiry(ms)
      if c >= to_expire then done = true; break end
      to_expire = to_expire - c
    end
    i = i + 64
  end
  rt_s, rt_ns = until_(e_s, e_ns)
end
-- A peek that dropped expired runs must keep the sum in step with them.
if consume or charge or popped then
  if total > 0 then
    -- The expiry follows the newest run under this check's window (which a changed
    -- config may have lengthened), so every consuming check sets it; a peek that only
    -- dropped expired runs keeps it (KEEPTTL), unless it made the sum.
    redis.call('SET', KEYS[2], total, 'KEEPTTL')
    if consume or charge or fresh then expire_in({KEYS[1], KEYS[2]}, rs_s, rs_ns) end
  else
    redis.call('DEL', KEYS[1], KEYS[2])
  end
  forget_others(3, fresh)
end
return {allowed and 1 or 0, remaining, rt_s, rt_ns, rs_s, rs_ns, math.max(total - limit, 0), now_s, now_ns}
