-- Mixed soak load: each request names the next of SOAK_CLIENTS rotating client ids
-- ("c0" .. "c<n-1>") and picks a path at random: out of 20 requests, about 14 GET
-- /api/data, 3 GET /, 2 POST /api/submit (a small JSON body) and 1 GET /api/missing (404).
local counter = 0
local clients = tonumber(os.getenv("SOAK_CLIENTS") or "4000")
local body = '{"soak": true, "note": "mixed load"}'
request = function()
  counter = counter + 1
  local headers = { ["X-Client-ID"] = "c" .. (counter % clients) }
  local pick = math.random(20)
  if pick <= 3 then
    return wrk.format("GET", "/", headers)
  elseif pick <= 5 then
    headers["Content-Type"] = "application/json"
    return wrk.format("POST", "/api/submit", headers, body)
  elseif pick == 6 then
    return wrk.format("GET", "/api/missing", headers)
  end
  return wrk.format("GET", "/api/data", headers)
end
