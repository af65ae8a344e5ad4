-- Rotates through 10,000 client ids (each wrk thread walks its own offset).
local counter = 0
local clients = tonumber(os.getenv("BENCH_CLIENTS") or "10000")
request = function()
  counter = counter + 1
  return wrk.format(nil, nil, { ["X-Client-ID"] = "c" .. (counter % clients) })
end
