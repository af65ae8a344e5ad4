-- POST /v1/check for 10,000 rotating client ids, each one check of /api/data.
local counter = 0
local clients = tonumber(os.getenv("BENCH_CLIENTS") or "10000")
request = function()
  counter = counter + 1
  local body = '{"client_id": "c' .. (counter % clients) .. '", "path": "/api/data"}'
  return wrk.format("POST", "/v1/check", { ["Content-Type"] = "application/json" }, body)
end
