-- Compare-and-set of one config: KEYS[1] the configs hash, KEYS[2] the version.
-- ARGV: endpoint, the JSON expected now ('' for none), the new JSON ('' to delete), the
-- channel. Answers {1, version} when written, {0, current JSON} when it had changed.
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if (cur or '') ~= ARGV[2] then return {0, cur or ''} end
if ARGV[3] == '' then redis.call('HDEL', KEYS[1], ARGV[1])
else redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) end
local v = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[4], v)
return {1, v}
