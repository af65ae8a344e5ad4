-- The limits of a config of several, all or nothing: `algorithms` (written before this
-- by `store::redis::several_script`) holds each algorithm's script as a function of its
-- own KEYS and ARGV, in the order of `limiter::Algorithm::ALL`.
-- ARGV[1], ARGV[2]: the time (or '' for Redis `TIME`); ARGV[3]: '1' to consume, '0' to
-- peek, '2:<s>:<ns>' to give back, '3' to charge (see `prelude.lua`); ARGV[4]: the cost; ARGV[5]: the
-- number of limits. Then per limit: its
-- algorithm's index (from 1), its number of keys, its number of own arguments, and
-- those arguments. KEYS: each limit's keys in turn.
-- Every limit is first asked with consume '0'; only if all admit is each asked again
-- with consume '1'; a refund gives back to each at once. Answers (see `answer.lua`)
-- each limit's seven numbers in turn, then the time it decided at (s, ns).
local now_s, now_ns = ARGV[1], ARGV[2]
if now_s == '' then
  local t = redis.call('TIME')
  now_s = t[1]; now_ns = tostring(tonumber(t[2]) * 1000)
end
local calls = {}
local k, a = 1, 6
for j = 1, tonumber(ARGV[5]) do
  local algorithm, nkeys, nargs = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  a = a + 3
  -- A refund or a charge is made to each at once; a consuming check peeks first.
  local kind = string.sub(ARGV[3], 1, 1)
  local first = (kind == '2' or kind == '3') and ARGV[3] or '0'
  local keys, args = {}, {now_s, now_ns, first, ARGV[4]}
  for i = 1, nkeys do keys[i] = KEYS[k]; k = k + 1 end
  for i = 1, nargs do args[4 + i] = ARGV[a]; a = a + 1 end
  calls[j] = {algorithms[algorithm], keys, args}
end
local out, all = {}, true
for j, c in ipairs(calls) do
  out[j] = c[1](c[2], c[3])
  if out[j][1] ~= 1 then all = false end
end
if all and ARGV[3] == '1' then
  for j, c in ipairs(calls) do
    c[3][3] = '1'
    out[j] = c[1](c[2], c[3])
  end
end
local flat = {}
for _, r in ipairs(out) do
  for i = 1, 7 do flat[#flat + 1] = r[i] end
end
flat[#flat + 1] = tonumber(now_s)
flat[#flat + 1] = tonumber(now_ns)
return answer(flat)
