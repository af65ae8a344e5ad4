-- Reads the time: Redis `TIME`, unless the caller passed seconds and nanoseconds.
local now_s, now_ns
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now_s = tonumber(t[1]); now_ns = tonumber(t[2]) * 1000
else
  now_s = tonumber(ARGV[1]); now_ns = tonumber(ARGV[2])
end
local consume = ARGV[3] == '1'
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
local function forget_others(first)
  if consume and #KEYS >= first then redis.call('DEL', unpack(KEYS, first)) end
end
