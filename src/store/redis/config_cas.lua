-- Compare-and-set of the shared configs as a whole: KEYS[1] the configs hash, KEYS[2]
-- the version. ARGV: the version the writer read, the channel, then endpoint / JSON
-- pairs ('' deletes). Written, with the version bumped and announced, only if the
-- version is still the one read. Answers {1, new version} or {0, current version}.
local v = redis.call('GET', KEYS[2]) or ''
if v ~= ARGV[1] then return {0, v} end
for i = 3, #ARGV, 2 do
  if ARGV[i + 1] == '' then redis.call('HDEL', KEYS[1], ARGV[i])
  else redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
local new = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[2], new)
return {1, tostring(new)}
