-- Seeds the shared configs from the first instance's own, unless some exist already.
-- KEYS: configs, version, next id. ARGV: the highest id, then endpoint/JSON pairs.
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
local id = tonumber(redis.call('GET', KEYS[3]) or '0')
if id < tonumber(ARGV[1]) then redis.call('SET', KEYS[3], ARGV[1]) end
redis.call('SET', KEYS[2], 1)
return 1
