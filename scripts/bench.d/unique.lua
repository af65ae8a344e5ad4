-- Each request names a new client: "u<thread>-<n>", until BENCH_TOTAL requests were
-- sent over all threads; then the thread stops (wrk ends by itself).
local total = tonumber(os.getenv("BENCH_TOTAL") or "1000000")
local threads = tonumber(os.getenv("BENCH_THREADS") or "1")
local id, sent, limit = 0, 0, 0
setup = function(thread)
  thread:set("id", id)
  id = id + 1
end
init = function()
  limit = math.floor(total / threads)
end
request = function()
  sent = sent + 1
  return wrk.format(nil, nil, { ["X-Client-ID"] = "u" .. id .. "-" .. sent })
end
response = function()
  if sent >= limit then
    wrk.thread:stop()
  end
end
