-- wrk script for bench/soak.sh: POSTs $BODY_FILE and reports every status that is not 200.
local file = assert(io.open(os.getenv("BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json"

local counts = {}
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    local s = t:get("statuses")
    for k, v in pairs(s) do total[k] = (total[k] or 0) + v end
  end
  local parts = {}
  for k, v in pairs(total) do table.insert(parts, string.format("%d=%d", k, v)) end
  io.write(string.format("SOAK requests=%d errors_connect=%d errors_read=%d errors_timeout=%d p50_us=%d p99_us=%d p999_us=%d max_us=%d statuses=%s\n",
    summary.requests, summary.errors.connect, summary.errors.read, summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max, table.concat(parts, ",")))
end
