#!/usr/bin/env bash
# Shadow traffic's cost to the client: the same load with and without a 100% shadow, in one run.
# The server is pinned to CPU 1 (so the shadow competes with the served version for that core),
# the load generator to CPU 0. Serves fraud:1 (gradient boosting) and shadows fraud:2 (XGBoost).
#
# Usage: bench/shadow.sh      (DURATION=15 per point; CONCURRENCY="1 8")
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${DURATION:-15}"
work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
scripts/setup.sh
cargo build --release --locked -p modelship >&2
bin=target/release/modelship
export MODELSHIP_REGISTRY="$work/registry" MODELSHIP_STATE_DIR="$work/state"
$bin models push fraud examples/models/fraud.onnx --version 1 >/dev/null
$bin models push fraud testdata/models/xgboost.onnx --version 2 >/dev/null
python3 -c "import json; print(json.dumps({'inputs': [{'name': 'input', 'shape': [1, 30], 'datatype': 'FP32', 'data': [((i % 17) - 8) / 4 for i in range(30)]}]}))" > "$work/body.json"
taskset -c 1 $bin serve fraud:1 --host 127.0.0.1 --port 0 --log-level warn > "$work/ready" &
server=$!
for _ in $(seq 100); do [ -s "$work/ready" ] && break; sleep 0.1; done
http=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['http'])" "$work/ready")
admin=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['admin'])" "$work/ready")
load() {  # load C -> "p50_us p99_us requests"
  BODY_FILE="$work/body.json" taskset -c 0 wrk -t1 -c"$1" -d2s -s bench/post.lua "http://$http/v2/models/fraud/infer" >/dev/null
  BODY_FILE="$work/body.json" taskset -c 0 wrk -t1 -c"$1" -d"${duration}s" -s bench/post.lua "http://$http/v2/models/fraud/infer" | awk '/LATENCY_US/ {print $2, $3, $4}'
}
shadow() { $bin traffic shadow fraud "$@" --admin "http://$admin" >/dev/null; }
# Alternate without and with the shadow, ROUNDS times per concurrency, and keep the median p99 of
# each: the machine is shared, so one pass of each would mostly measure drift.
rounds="${ROUNDS:-3}"
echo "| concurrency | shadow | req/s (median) | p50 µs (median) | p99 µs (median) | p99 added |"
echo "|---:|---|---:|---:|---:|---:|"
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for c in ${CONCURRENCY:-1 8 32}; do
  : > "$work/none"; : > "$work/with"
  for _ in $(seq "$rounds"); do
    shadow --off; load "$c" >> "$work/none"
    shadow --version 2 --percent 100; load "$c" >> "$work/with"
  done
  for kind in none with; do
    p50=$(awk '{print $1}' "$work/$kind" | median); p99=$(awk '{print $2}' "$work/$kind" | median)
    rps=$(awk -v d="$duration" '{print int($3 / d)}' "$work/$kind" | median)
    eval "${kind}_p99=$p99"
    label=$([ "$kind" = none ] && echo "none" || echo "100% to fraud:2")
    added=$([ "$kind" = none ] && echo "" || echo "$(( (p99 - none_p99) * 100 / none_p99 ))%")
    echo "| $c | $label | $rps | $p50 | $p99 | $added |"
  done
done
$bin traffic status fraud --admin "http://$admin" | tail -1
