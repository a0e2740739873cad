#!/usr/bin/env bash
# Dynamic batching's gain, in one run: single-row V2 JSON requests at concurrency 32 (wrk), the
# server pinned to CPU 1 with one inference worker, batching off and on alternated ROUNDS times per
# model (medians). Models: the harness's MLP (3 x 256, when ../shared/bench's setup has built it)
# and a wider dense network (3 x WIDTH, made by bench/dense_model.py).
#
# Usage: bench/batching.sh    (DURATION=10 per point; ROUNDS=3; WIDTH=1024; BATCH=32; DELAY_US=1000)
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${DURATION:-10}"; rounds="${ROUNDS:-3}"
work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
scripts/setup.sh --test >/dev/null 2>&1 || scripts/setup.sh
cargo build --release --locked -p modelship >&2
bin=target/release/modelship
.venv/bin/python bench/dense_model.py "$work/dense.onnx" "${WIDTH:-1024}"
models="dense=$work/dense.onnx"
home="${BENCH_HOME:-${TMPDIR:-/tmp}/model-bench}"
[ -f "$home/models/mlp.onnx" ] && models="mlp=$home/models/mlp.onnx $models"
python3 -c "import json; print(json.dumps({'inputs': [{'name': 'input', 'shape': [1, 30], 'datatype': 'FP32', 'data': [((i % 17) - 8) / 4 for i in range(30)]}]}))" > "$work/body.json"
point() {  # point MODEL_FILE ARGS... -> "rps p50_us p99_us rows_per_call"
  local file=$1; shift
  taskset -c 1 $bin serve "$file" --name m --host 127.0.0.1 --port 0 --workers 1 --log-level warn \
    --state-dir "$work/state" "$@" > "$work/ready" 2>/dev/null &
  server=$!
  for _ in $(seq 100); do [ -s "$work/ready" ] && break; sleep 0.1; done
  local http; http=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['http'])" "$work/ready")
  BODY_FILE="$work/body.json" taskset -c 0 wrk -t1 -c32 -d2s -s bench/post.lua "http://$http/v2/models/m/infer" >/dev/null
  local out; out=$(BODY_FILE="$work/body.json" taskset -c 0 wrk -t1 -c32 -d"${duration}s" -s bench/post.lua "http://$http/v2/models/m/infer" | awk '/LATENCY_US/ {print $2, $3, $4}')
  local rows; rows=$(curl -s "http://$http/metrics" | awk '/^modelship_batch_size_sum/ {s=$2} /^modelship_batch_size_count/ {c=$2} END {printf "%.1f", s / c}')
  kill $server; wait $server 2>/dev/null || true
  set -- $out
  echo "$(( $3 / duration )) $1 $2 $rows"
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "| model | batching | req/s (median of $rounds) | p50 µs | p99 µs | rows per runtime call | gain |"
echo "|---|---|---:|---:|---:|---:|---:|"
for entry in $models; do
  name=${entry%%=*}; file=${entry#*=}
  : > "$work/off"; : > "$work/on"
  for _ in $(seq "$rounds"); do
    point "$file" >> "$work/off"
    point "$file" --max-batch-size "${BATCH:-32}" --max-queue-delay-us "${DELAY_US:-1000}" >> "$work/on"
  done
  for mode in off on; do
    rps=$(awk '{print $1}' "$work/$mode" | median); p50=$(awk '{print $2}' "$work/$mode" | median)
    p99=$(awk '{print $3}' "$work/$mode" | median); rows=$(awk '{print $4}' "$work/$mode" | median)
    [ "$mode" = off ] && base=$rps
    echo "| $name | $mode | $rps | $p50 | $p99 | $rows | $(python3 -c "print(f'{$rps / $base:.2f}x')") |"
  done
done
