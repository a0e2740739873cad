#!/usr/bin/env bash
# What the fleet costs per request: one replica with the embedded control store, the same with a
# Redis control store, and each with a rollout in progress (a 50 % canary of an identical version,
# observations recorded, a beat every 250 ms sending evidence to the store), measured alternately
# in one run.
# Server CPU is the process's utime+stime over the run (/proc/PID/stat) divided by the requests
# wrk completed; the server is pinned to CPU 1, wrk to CPU 0 (wrk -c32, single-row V2 JSON).
#
# Usage: bench/fleet.sh   (DURATION=10, ROUNDS=2, BIN_DIR=target/release); needs redis-server and wrk.
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${DURATION:-10}"
rounds="${ROUNDS:-2}"
bin="${BIN_DIR:-target/release}"
command -v wrk >/dev/null || { echo "fleet: wrk is missing: apt-get install wrk" >&2; exit 1; }
command -v redis-server >/dev/null || { echo "fleet: redis-server is missing: apt-get install redis-server" >&2; exit 1; }
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
body="$work/body.json"
python3 -c "import json; print(json.dumps({'inputs': [{'name': 'input', 'shape': [1, 30], 'datatype': 'FP32', 'data': [((i % 17) - 8) / 4 for i in range(30)]}]}))" > "$body"
ticks=$(getconf CLK_TCK)
cpu_us() { awk -v t="$ticks" '{print ($14 + $15) * 1000000 / t}' "/proc/$1/stat"; }

redis-server --port 18399 --bind 127.0.0.1 --save "" --appendonly no > /dev/null &
"$bin/modelship" models push fraud examples/models/fraud.onnx --version 1 --registry "$work/registry" > /dev/null
"$bin/modelship" models push fraud examples/models/fraud.onnx --version 2 --registry "$work/registry" > /dev/null
printf 'to: "2"\nsteps:\n  - weight: {weight: 50%%, hold: 1h}\nchecks: [{error_rate: {}}, {latency: {max_ratio: 3}}]\ninterval: 500ms\nfailure: {deadline: 2h}\n' > "$work/rollout.yaml"

# One configuration: $1 = name, $2 = control store, $3 = "rollout" to start one. Prints a JSON line.
run() {
  local name=$1 store=$2 state="$work/state-$RANDOM" db=$((RANDOM % 15 + 1))
  [ "$store" = redis ] && store="redis://127.0.0.1:18399/$db"
  mkdir -p "$state"
  MODELSHIP_STATE_DIR="$state" MODELSHIP_ADMIN_TOKEN=bench-token-0123456789abcdef taskset -c 1 "$bin/modelship" serve fraud:1 \
    --registry "$work/registry" --control-store "$store" --port 18301 --admin-port 18302 --grpc-port 18303 \
    --workers 1 --log-level warn > "$state/ready" 2> "$state/stderr" &
  local pid=$!
  for _ in $(seq 100); do [ -s "$state/ready" ] && break; sleep 0.1; done
  if [ "${3:-}" = rollout ]; then
    MODELSHIP_ADMIN_TOKEN=bench-token-0123456789abcdef "$bin/modelship" rollout start fraud --spec "$work/rollout.yaml" --admin http://127.0.0.1:18302 > /dev/null
  fi
  BODY_FILE="$body" taskset -c 0 wrk -t1 -c32 -d3s -s bench/post.lua http://127.0.0.1:18301/v2/models/fraud/infer > /dev/null
  local before after out
  before=$(cpu_us "$pid")
  out=$(BODY_FILE="$body" taskset -c 0 wrk -t1 -c32 -d"${duration}s" -s bench/post.lua http://127.0.0.1:18301/v2/models/fraud/infer | grep LATENCY_US)
  after=$(cpu_us "$pid")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  redis-cli -p 18399 -n "$db" FLUSHDB > /dev/null
  python3 -c "
import json, sys
p50, p99, n = map(int, sys.argv[4].split()[1:])
print(json.dumps({'config': sys.argv[1], 'cpu_us_per_request': round((float(sys.argv[3]) - float(sys.argv[2])) / n, 2), 'rps': round(n / $duration), 'p50_us': p50, 'p99_us': p99}))
" "$name" "$before" "$after" "$out"
}

for _ in $(seq "$rounds"); do
  run embedded embedded
  run redis redis
  run embedded+rollout embedded rollout
  run redis+rollout redis rollout
done
