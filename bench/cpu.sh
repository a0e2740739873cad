#!/usr/bin/env bash
# Server CPU per request of one binary at c=32, split into user and system time, with the
# scheduler's view (context switches, sched_yield, eventfd writes) when `perf` can count them: the
# measurement behind the step-by-step table of BENCHMARKS.md ("Request overhead against the
# floor"). Alternate two binaries by calling it several times; one call is one JSON line.
#
# Usage: bench/cpu.sh BINARY [serve args...]   (DURATION=8, MODEL=examples/models/fraud.onnx)
#   BINARY is a modelship binary, or crates/server/examples/loopback (the bare HTTP floor).
# Needs: wrk (apt-get install wrk); perf for the counts (apt-get install linux-perf), optional.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:?usage: bench/cpu.sh BINARY [serve args...]}"
shift
duration="${DURATION:-8}"
model="${MODEL:-examples/models/fraud.onnx}"
command -v wrk >/dev/null || { echo "cpu: wrk is missing: apt-get install wrk" >&2; exit 1; }
body="$(mktemp)"
state="$(mktemp -d)"
python3 -c "import json; print(json.dumps({'inputs': [{'name': 'input', 'shape': [1, 30], 'datatype': 'FP32', 'data': [((i % 17) - 8) / 4 for i in range(30)]}]}))" > "$body"
if [ "$(basename "$bin")" = loopback ]; then
  taskset -c 1 "$bin" 18310 > "$state/ready" &
  url=http://127.0.0.1:18310/
else
  MODELSHIP_STATE_DIR="$state" taskset -c 1 "$bin" serve "$model" --name fraud --port 18310 --admin-port 18311 --grpc-port 18312 \
    --workers 1 --log-level warn "$@" > "$state/ready" 2> "$state/stderr" &
  url=http://127.0.0.1:18310/v2/models/fraud/infer
fi
pid=$!
trap 'kill $pid 2>/dev/null; rm -rf "$state" "$body"' EXIT
for _ in $(seq 300); do [ -s "$state/ready" ] && break; sleep 0.1; done
if ! [ -s "$state/ready" ]; then
  echo "cpu: the server did not start within 30 s:" >&2
  cat "$state/stderr" >&2 2>/dev/null || true
  exit 1
fi
BODY_FILE="$body" taskset -c 0 wrk -t1 -c32 -d3s -s bench/post.lua "$url" > /dev/null   # warm-up
read -r utime_before stime_before < <(awk '{print $14, $15}' "/proc/$pid/stat")
counts="$state/counts"
perf_pid=""
if command -v perf >/dev/null && perf stat -e context-switches true >/dev/null 2>&1; then
  perf stat -x, -o "$counts" -e 'context-switches,syscalls:sys_enter_sched_yield,syscalls:sys_enter_write,syscalls:sys_enter_epoll_wait' \
    -p "$pid" -- sleep "$duration" 2>/dev/null &
  perf_pid=$!
fi
out=$(BODY_FILE="$body" taskset -c 0 wrk -t1 -c32 -d"${duration}s" -s bench/post.lua "$url" | grep LATENCY_US)
[ -z "$perf_pid" ] || wait "$perf_pid" || true
read -r utime_after stime_after < <(awk '{print $14, $15}' "/proc/$pid/stat")
python3 - "$utime_before" "$stime_before" "$utime_after" "$stime_after" "$out" "$duration" "$counts" <<'EOF'
import json, os, sys
ub, sb, ua, sa = map(int, sys.argv[1:5])
_, p50, p99, n = sys.argv[5].split()
n, duration, tick = int(n), float(sys.argv[6]), os.sysconf("SC_CLK_TCK")
line = {"requests": n, "rps": round(n / duration), "p50_us": int(p50), "p99_us": int(p99),
        "user_us": round((ua - ub) * 1e6 / tick / n, 2), "system_us": round((sa - sb) * 1e6 / tick / n, 2)}
line["cpu_us"] = round(line["user_us"] + line["system_us"], 2)
if os.path.exists(sys.argv[7]):
    for row in open(sys.argv[7]):
        parts = row.strip().split(",")
        if len(parts) > 2 and parts[0].isdigit():
            line[parts[2].replace("syscalls:sys_enter_", "")] = int(parts[0])
print(json.dumps(line))
EOF
