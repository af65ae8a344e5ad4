-- Fixed window. KEYS[1]: hash {s = window start (s), c = count}; KEYS[2..]: the keys of
-- the other algorithms. ARGV[5]: limit, ARGV[6]: window in seconds.
local limit, w = tonumber(ARGV[5]), tonumber(ARGV[6])
local start = now_s - (now_s % w)
local st = redis.call('HMGET', KEYS[1], 's', 'c')
local rs, count = tonumber(st[1]), 0
if rs and rs >= start and rs < start + w then count = tonumber(st[2]) end
local allowed = count + cost <= limit
if allowed and consume then count = count + cost end
local remaining = math.max(limit - count, 0)
local ue_s, ue_ns = until_(start + w, 0)
local rt_s, rt_ns, rs_s, rs_ns = 0, 0, 0, 0
-- The count starts again at the end of the window.
if count + need > limit then rt_s, rt_ns = ue_s, ue_ns end
if count > 0 then rs_s, rs_ns = ue_s, ue_ns end
if consume then
  redis.call('HSET', KEYS[1], 's', start, 'c', count)
  expire_in({KEYS[1]}, ue_s, ue_ns)
  forget_others(2)
end
return {allowed and 1 or 0, remaining, rt_s, rt_ns, rs_s, rs_ns}
