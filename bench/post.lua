-- wrk script: POST the file named by $BODY_FILE and print one line "LATENCY_US p50 p99 requests".
local file = assert(io.open(os.getenv("BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json"

function done(summary, latency, requests)
  io.write(string.format("LATENCY_US %d %d %d\n", latency:percentile(50), latency:percentile(99), summary.requests))
end
