#!/usr/bin/env bash
# Server CPU per request against its physical floor, in one run (issue: "speed near the floor").
#   floor    = in-process inference (crates/onnx/examples/floor.rs, mean µs per call)
#            + a bare HTTP round trip on the same stack (crates/server/examples/loopback.rs,
#              server CPU µs per request under wrk at c=32)
#   modelship: server CPU µs per request for single-row V2 JSON at c=32.
# CPU time is the server process's utime+stime over the run (/proc/PID/stat), divided by the
# requests wrk completed. The server is pinned to CPU 1, wrk to CPU 0. The loopback and modelship
# alternate for ROUNDS rounds (this machine's speed drifts by ±20 % within minutes), each round
# giving its own ratio; prints one JSON line per round and a last one with the median ratio
# (target: at most 1.35). EXTRA_ARGS are passed to `modelship serve` (for instance
# --no-opportunistic-batching to measure the server with every request run on its own).
#
# Usage: bench/overhead.sh   (DURATION=15, ROUNDS=3, MODEL=examples/models/fraud.onnx, BIN_DIR=target/release)
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${DURATION:-15}"
rounds="${ROUNDS:-3}"
extra_args="${EXTRA_ARGS:-}"
model="${MODEL:-examples/models/fraud.onnx}"
bin="${BIN_DIR:-target/release}"
command -v wrk >/dev/null || { echo "overhead: wrk is missing: apt-get install wrk" >&2; exit 1; }
body="$(mktemp)"
python3 -c "import json; print(json.dumps({'inputs': [{'name': 'input', 'shape': [1, 30], 'datatype': 'FP32', 'data': [((i % 17) - 8) / 4 for i in range(30)]}]}))" > "$body"
ticks=$(getconf CLK_TCK)
cpu_us() { awk -v t="$ticks" '{print ($14 + $15) * 1000000 / t}' "/proc/$1/stat"; }

# Measures server $1 (pid) at URL $2: prints "cpu_us_per_request req_per_s p99_us".
measure() {
  local pid=$1 url=$2 before after out
  BODY_FILE="$body" taskset -c 0 wrk -t1 -c32 -d3s -s bench/post.lua "$url" > /dev/null   # warm-up
  before=$(cpu_us "$pid")
  out=$(BODY_FILE="$body" taskset -c 0 wrk -t1 -c32 -d"${duration}s" -s bench/post.lua "$url" | grep LATENCY_US)
  after=$(cpu_us "$pid")
  python3 -c "import sys; p50, p99, n = map(int, sys.argv[3].split()[1:]); print((float(sys.argv[2]) - float(sys.argv[1])) / n, n / $duration, p99)" "$before" "$after" "$out"
}

floor_us=$(taskset -c 1 "$bin/examples/floor" "$model" 50000 | python3 -c "import json, sys; print(json.load(sys.stdin)['mean_us'])")

ratios=()
for round in $(seq "$rounds"); do
  taskset -c 1 "$bin/examples/loopback" 18300 > /dev/null &
  loop_pid=$!
  sleep 0.5
  read -r loop_cpu loop_rps loop_p99 < <(measure "$loop_pid" http://127.0.0.1:18300/)
  kill "$loop_pid"; wait "$loop_pid" 2>/dev/null || true

  state="$(mktemp -d)"
  # shellcheck disable=SC2086
  MODELSHIP_STATE_DIR="$state" taskset -c 1 "$bin/modelship" serve "$model" --name fraud --port 18301 --admin-port 18302 --grpc-port 18303 \
    --workers 1 --log-level warn $extra_args > "$state/ready" 2> "$state/stderr" &
  ms_pid=$!
  for _ in $(seq 100); do [ -s "$state/ready" ] && break; sleep 0.1; done
  read -r ms_cpu ms_rps ms_p99 < <(measure "$ms_pid" http://127.0.0.1:18301/v2/models/fraud/infer)
  kill "$ms_pid"; wait "$ms_pid" 2>/dev/null || true
  rm -rf "$state"

  line=$(python3 -c "
import json, sys
floor_us, loop_cpu, ms_cpu = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[5])
print(json.dumps({'round': int(sys.argv[8]), 'floor_inference_us': round(floor_us, 2), 'loopback_cpu_us': round(loop_cpu, 2), 'loopback_rps': round(float(sys.argv[3])), 'loopback_p99_us': int(sys.argv[4]),
  'modelship_cpu_us': round(ms_cpu, 2), 'modelship_rps': round(float(sys.argv[6])), 'modelship_p99_us': int(sys.argv[7]),
  'ratio': round(ms_cpu / (loop_cpu + floor_us), 3), 'target_ratio': 1.35}))
" "$floor_us" "$loop_cpu" "$loop_rps" "$loop_p99" "$ms_cpu" "$ms_rps" "$ms_p99" "$round")
  echo "$line"
  ratios+=("$(python3 -c "import json, sys; print(json.loads(sys.argv[1])['ratio'])" "$line")")
done
rm -f "$body"
python3 -c "
import json, statistics, sys
ratios = [float(r) for r in sys.argv[1:]]
print(json.dumps({'rounds': len(ratios), 'ratios': ratios, 'median_ratio': statistics.median(ratios), 'target_ratio': 1.35, 'met': statistics.median(ratios) <= 1.35}))
" "${ratios[@]}"
