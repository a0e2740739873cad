-- wrk script: /v1/predict by entity. ENTITIES=N picks a random customer c0..c(N-1) per request
-- (with a cache that cannot hold them, every request misses); ENTITIES=1 asks for c0 every time
-- (every request after the first hits the cache). Prints "LATENCY_US p50 p99 requests".
local n = tonumber(os.getenv("ENTITIES") or "1")
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
math.randomseed(os.time())

function request()
  local id = 0
  if n > 1 then id = math.random(0, n - 1) end
  local body = string.format('{"entities":[{"customer_id":"c%d","f00":0.5,"f01":-0.5}]}', id)
  return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
  io.write(string.format("LATENCY_US %d %d %d\n", latency:percentile(50), latency:percentile(99), summary.requests))
end
