#!/usr/bin/env bash
# The serving benchmark of BENCHMARKS.md, in one run on this machine:
#   1. floor: in-process inference time through modelship's ONNX backend (no server);
#   2. loopback: a bare HTTP round trip on the same stack (tokio/hyper/axum, no decode, no model);
#   3. modelship and the seed's FastAPI + onnxruntime server side by side, single-row V2 JSON
#      (seed: its /v1/predict), concurrency 1, 8 and 32, cold start and memory, through the team's
#      peer harness when it is present (../shared/bench, or $SHARED_BENCH).
# The server is pinned to CPU 1 and the load generator to CPU 0, as the harness does.
#
# Usage: bench/run.sh            (DURATION=15 per point; OUT=bench/results)
# Needs: wrk (apt-get install wrk), cargo, python3; the harness's own setup for the seed peer.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out="${OUT:-$root/bench/results}"
duration="${DURATION:-15}"
shared="${SHARED_BENCH:-$root/../shared/bench}"
export BENCH_HOME="${BENCH_HOME:-${TMPDIR:-/tmp}/model-bench}"
mkdir -p "$out"
run_id="$(date -u +%Y%m%dT%H%M%SZ)"
csv="$out/$run_id.csv"

scripts/setup.sh
command -v wrk >/dev/null || { echo "bench: wrk is missing: apt-get install wrk" >&2; exit 1; }
cargo build --release --locked -p modelship -p modelship-onnx -p modelship-server --examples --bins >&2

# The same model for every row: the harness's fraud model when present, else the example model.
model="$root/examples/models/fraud.onnx"
payload="$out/payload-v2.json"
if [ -f "$BENCH_HOME/models/fraud.onnx" ]; then
  model="$BENCH_HOME/models/fraud.onnx"
  cp "$BENCH_HOME/models/payload-v2.json" "$payload"
else
  python3 -c "import json; print(json.dumps({'inputs': [{'name': 'input', 'shape': [1, 30], 'datatype': 'FP32', 'data': [((i % 17) - 8) / 4 for i in range(30)]}]}))" > "$payload"
fi

echo "bench: floor (in-process inference)" >&2
taskset -c 1 target/release/examples/floor "$model" 50000 > "$out/$run_id-floor.json"
cat "$out/$run_id-floor.json" >&2

echo "bench: loopback HTTP round trip" >&2
port=18100
taskset -c 1 target/release/examples/loopback "$port" > /dev/null &
loop_pid=$!
trap 'kill $loop_pid 2>/dev/null || true' EXIT
sleep 0.5
BODY_FILE="$payload" taskset -c 0 wrk -t1 -c1 -d"${duration}s" -s bench/post.lua "http://127.0.0.1:$port/" \
  | grep LATENCY_US > "$out/$run_id-loopback.txt"
kill $loop_pid; trap - EXIT
cat "$out/$run_id-loopback.txt" >&2

if [ -x "$shared/run.sh" ] && [ -x "$BENCH_HOME/venv/bin/uvicorn" ]; then
  export CSV="$csv" RUN_ID="$run_id" DURATION="$duration" MODELSHIP_BIN="$root/target/release/modelship"
  "$shared/run.sh" seed fraud
  MODELSHIP_ARGS="${MODELSHIP_ARGS:-}" "$shared/run.sh" modelship fraud
else
  echo "bench: the peer harness ($shared) or its seed venv is missing; run its setup.sh for the side-by-side rows" >&2
fi
python3 bench/summary.py "$out/$run_id"
