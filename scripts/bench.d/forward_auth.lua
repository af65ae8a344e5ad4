-- /v1/forward-auth as nginx's auth_request calls it, for 10,000 rotating client ids.
local counter = 0
local clients = tonumber(os.getenv("BENCH_CLIENTS") or "10000")
request = function()
  counter = counter + 1
  return wrk.format("GET", "/v1/forward-auth",
    { ["X-Client-ID"] = "c" .. (counter % clients), ["X-Original-URI"] = "/api/data" })
end
