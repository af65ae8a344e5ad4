-- The prelude of every decision script. ARGV[1], ARGV[2]: the time in seconds and
-- nanoseconds, or '' for Redis `TIME`; ARGV[3]: '1' to consume, '0' to peek,
-- '2:<s>:<ns>' to give back the cost that a check at that earlier time consumed (then
-- answer as a peek), or '3' to charge (take the cost whatever is left, see
-- `limiter::Mode::Charge`); ARGV[4]: the cost. The algorithm's own arguments follow from
-- ARGV[5]. Every script returns its seven numbers (allowed, remaining, retry after in s and ns,
-- reset after in s and ns, debt), then the time it decided at (s, ns),
-- which `answer.lua` packs into one string.
local now_s, now_ns
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now_s = tonumber(t[1]); now_ns = tonumber(t[2]) * 1000
else
  now_s = tonumber(ARGV[1]); now_ns = tonumber(ARGV[2])
end
local consume = ARGV[3] == '1'
local charge = ARGV[3] == '3'
local refund, at_s, at_ns = false, 0, 0
if string.byte(ARGV[3]) == 50 then
  local s, ns = string.match(ARGV[3], '^2:(%d+):(%d+)$')
  if s then refund = true; at_s = tonumber(s); at_ns = tonumber(ns) end
end
-- Units asked for (all or nothing, or a charge), and the units a check needs left to be
-- allowed and a retry estimate is for: at least 1, and 1 for a charge (see
-- `limiter::Take::decide`).
local cost = tonumber(ARGV[4])
local need = math.max(cost, 1)
if charge then need = 1 end
-- Whether the check takes its cost, once `allowed` is known.
local function takes(allowed)
  return charge or (consume and allowed)
end
-- A time after now as whole seconds and nanoseconds: exact for any window.
local function until_(s, ns)
  local ds, dns = s - now_s, ns - now_ns
  if dns < 0 then ds = ds - 1; dns = dns + 1000000000 end
  if ds < 0 then return 0, 0 end
  return ds, dns
end
local function split(n)
  local s = math.floor(n / 1000000000)
  return s, n - s * 1000000000
end
local function expire_in(keys, s, ns)
  local ms = s * 1000 + math.ceil(ns / 1000000) + 1000
  for _, k in ipairs(keys) do redis.call('PEXPIRE', k, ms) end
end
-- Deletes the other algorithms' keys (KEYS[first..]) when a consuming check found no
-- state of its own (`fresh`): a changed algorithm starts afresh. Only keys that a check
-- consumed (or charged) under make a state, and making one deletes the others', so while this
-- algorithm's state lives there is none to delete.
local function forget_others(first, fresh)
  if (consume or charge) and fresh and #KEYS >= first then redis.call('DEL', unpack(KEYS, first)) end
end
