#!/usr/bin/env bash
# Many models in one server, in one run: server CPU per request to one model with 1 model loaded
# and with N loaded (the same ONNX file copied under N names), alternated for ROUNDS rounds; the
# memory each loaded model takes (what `models ls --admin` reports per version, and the growth of
# the process's resident memory from 1 to N models); and the startup time with N models.
# The server is pinned to CPU 1, wrk to CPU 0; CPU time is the server's utime+stime over the run
# (/proc/PID/stat) divided by the requests wrk completed.
#
# Usage: bench/models.sh   (N=50, DURATION=15, ROUNDS=3, MODEL=examples/models/fraud.onnx, BIN_DIR=target/release)
set -euo pipefail
cd "$(dirname "$0")/.."
n="${N:-50}"
duration="${DURATION:-15}"
rounds="${ROUNDS:-3}"
model="${MODEL:-examples/models/fraud.onnx}"
bin="${BIN_DIR:-target/release}"
command -v wrk >/dev/null || { echo "models: wrk is missing: apt-get install wrk" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for i in $(seq -w 1 "$n"); do cp "$model" "$work/m$i.onnx"; done
first="$work/m$(printf "%0${#n}d" 1).onnx"
python3 -c "import json; print(json.dumps({'inputs': [{'name': 'input', 'shape': [1, 30], 'datatype': 'FP32', 'data': [((i % 17) - 8) / 4 for i in range(30)]}]}))" > "$work/body.json"
ticks=$(getconf CLK_TCK)
cpu_us() { awk -v t="$ticks" '{print ($14 + $15) * 1000000 / t}' "/proc/$1/stat"; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
token=bench-token-0123456789abcdef

# Serves the first $1 models; prints "cpu_us_per_request req_per_s p99_us rss_kb startup_s mean_model_memory_bytes".
measure() {
  local count=$1 state models pid before after out
  state="$(mktemp -d)"
  models=$(find "$work" -name 'm*.onnx' | sort | head -n "$count" | tail -n +2 | paste -sd, -)
  # shellcheck disable=SC2086
  MODELSHIP_STATE_DIR="$state" MODELSHIP_ADMIN_TOKEN=$token taskset -c 1 "$bin/modelship" serve "$first" ${models:+--models "$models"} \
    --port 18401 --admin-port 18402 --grpc-port 18403 --workers 1 --log-level warn > "$state/ready" 2> "$state/stderr" &
  pid=$!
  for _ in $(seq 600); do [ -s "$state/ready" ] && break; sleep 0.1; done
  [ -s "$state/ready" ] || { echo "models: the server with $count models did not start:" >&2; cat "$state/stderr" >&2; exit 1; }
  local url
  url="http://127.0.0.1:18401/v2/models/$(basename "$first" .onnx)/infer"
  BODY_FILE="$work/body.json" taskset -c 0 wrk -t1 -c32 -d3s -s bench/post.lua "$url" > /dev/null   # warm-up
  before=$(cpu_us "$pid")
  out=$(BODY_FILE="$work/body.json" taskset -c 0 wrk -t1 -c32 -d"${duration}s" -s bench/post.lua "$url" | grep LATENCY_US)
  after=$(cpu_us "$pid")
  local rss memory startup
  rss=$(rss_kb "$pid")
  memory=$(MODELSHIP_ADMIN_TOKEN=$token "$bin/modelship" models ls --admin http://127.0.0.1:18402 --output json \
    | python3 -c "import json, sys; v = [x['memory_bytes'] for m in json.load(sys.stdin)['models'] for x in m['versions'] if x['memory_bytes'] is not None]; print(sum(v) / len(v))")
  startup=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['startup_seconds'])" "$state/ready")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$state"
  python3 -c "import sys; p50, p99, req = map(int, sys.argv[3].split()[1:]); print((float(sys.argv[2]) - float(sys.argv[1])) / req, req / $duration, p99)" "$before" "$after" "$out" \
    | tr '\n' ' '
  echo "$rss $startup $memory"
}

for round in $(seq "$rounds"); do
  read -r one_cpu one_rps one_p99 one_rss one_start one_mem < <(measure 1)
  read -r many_cpu many_rps many_p99 many_rss many_start many_mem < <(measure "$n")
  python3 -c "
import json, sys
a = sys.argv[1:]
one_cpu, one_rps, one_p99, one_rss, one_start, one_mem = float(a[0]), float(a[1]), int(a[2]), int(a[3]), float(a[4]), float(a[5])
many_cpu, many_rps, many_p99, many_rss, many_start, many_mem = float(a[6]), float(a[7]), int(a[8]), int(a[9]), float(a[10]), float(a[11])
n = int(a[12])
print(json.dumps({'round': int(a[13]), 'models': n,
  'cpu_us_1': round(one_cpu, 2), 'cpu_us_n': round(many_cpu, 2), 'cpu_ratio_n_to_1': round(many_cpu / one_cpu, 3),
  'rps_1': round(one_rps), 'rps_n': round(many_rps), 'p99_us_1': one_p99, 'p99_us_n': many_p99,
  'rss_mib_1': round(one_rss / 1024, 1), 'rss_mib_n': round(many_rss / 1024, 1),
  'rss_growth_per_model_mib': round((many_rss - one_rss) / 1024 / (n - 1), 2),
  'reported_memory_per_model_mib': round(many_mem / 1048576, 2),
  'startup_s_1': round(one_start, 3), 'startup_s_n': round(many_start, 3)}))
" "$one_cpu" "$one_rps" "$one_p99" "$one_rss" "$one_start" "$one_mem" "$many_cpu" "$many_rps" "$many_p99" "$many_rss" "$many_start" "$many_mem" "$n" "$round"
done
