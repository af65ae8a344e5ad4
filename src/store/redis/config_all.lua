-- The version and every shared config, read atomically.
return {redis.call('GET', KEYS[2]) or '', redis.call('HGETALL', KEYS[1])}
