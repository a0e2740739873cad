#!/usr/bin/env bash
# The peer table of BENCHMARKS.md, in one run (one RUN_ID) on this machine, through the team's
# peer harness (../shared/bench, or $SHARED_BENCH; its setup.sh installs the peers once):
#   fraud (gradient-boosted trees), single rows, concurrency 1, 8, 32:
#     modelship over REST JSON (wrk), REST binary tensors (perf_analyzer -i http), gRPC (h2load,
#     perf_analyzer -i grpc), beside every peer the harness runs; and modelship serving the
#     harness's fraud.joblib itself (target `modelship-joblib`: converted, then cached), the
#     file MLServer's scikit-learn runtime loads;
#   mlp (3 x 256 dense layers), single rows, concurrency 32: modelship with dynamic batching off
#     (target `modelship`) and on (target `modelship-batched`), beside the peers.
# Every server is pinned to CPU 1 and every load generator to CPU 0 (the harness's defaults).
#
# Usage: bench/peers.sh     Environment: DURATION (10 s per point), COLD_STARTS (3), TARGETS
#   (peers, default all), OUT (bench/results), BATCH (32), BATCH_DELAY_US (1000)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
shared="${SHARED_BENCH:-$root/../shared/bench}"
export BENCH_HOME="${BENCH_HOME:-${TMPDIR:-/tmp}/model-bench}"
[ -x "$shared/run.sh" ] || { echo "peers: the harness is not at $shared (set SHARED_BENCH)" >&2; exit 1; }
[ -f "$BENCH_HOME/models/expected.json" ] || { echo "peers: run $shared/setup.sh first (BENCH_HOME=$BENCH_HOME)" >&2; exit 1; }
out="${OUT:-$root/bench/results}"
mkdir -p "$out"
export RUN_ID="$(date -u +%Y%m%dT%H%M%SZ)"
export CSV="$out/peers-$RUN_ID.csv"
export DURATION="${DURATION:-10}" COLD_STARTS="${COLD_STARTS:-3}"

scripts/setup.sh
cargo build --release --locked -p modelship >&2

# A private copy of the harness, with one more target: modelship with dynamic batching.
harness="$BENCH_HOME/harness"
rm -rf "$harness"
cp -r "$shared" "$harness"
cat > "$harness/peers/modelship-batched.sh" <<PEER
#!/usr/bin/env bash
# modelship with dynamic batching (bench/peers.sh writes this file).
export MODELSHIP_ARGS="--grpc-port \\\$GRPC_PORT --max-batch-size ${BATCH:-32} --max-queue-delay-us ${BATCH_DELAY_US:-1000}"
exec "\$(dirname "\$0")/modelship.sh" "\$@"
PEER
chmod +x "$harness/peers/modelship-batched.sh"
# And modelship serving the harness's joblib file itself (converted once, in the sandbox, then
# from the cache), the file MLServer's scikit-learn runtime loads.
cat > "$harness/peers/modelship-joblib.sh" <<'PEER'
#!/usr/bin/env bash
# modelship serving $MODEL.joblib, converted to ONNX (bench/peers.sh writes this file).
set -euo pipefail
case "${1:-}" in
info) printf 'ready_path=/v2/health/ready\ninfer_path=/v2/models/%s/infer\nbody=payload-v2.json\ngrpc=no\n' "$MODEL" ;;
serve) exec "$MODELSHIP_BIN" serve "$MODEL_DIR/$MODEL.joblib" --host 127.0.0.1 --port "$PORT" --admin-port $((PORT + 2)) --grpc-port "$GRPC_PORT" --log-level warn ;;
*) echo "usage: $0 info|serve" >&2; exit 2 ;;
esac
PEER
chmod +x "$harness/peers/modelship-joblib.sh"
export MODELSHIP_BIN="$root/target/release/modelship" MODELSHIP_GRPC=yes MODELSHIP_ARGS='--grpc-port $GRPC_PORT'

port=18000
run() {  # run TARGET MODEL TOOL...
  port=$((port + 10))
  local cold="$COLD_STARTS"
  [ "$1" = kserve-v1 ] && cold=0  # the same server as kserve
  PORT=$port COLD_STARTS=$cold "$harness/run.sh" "$@" || echo "peers: $* failed" >&2
}
peers="${TARGETS:-seed seed-2w mlserver kserve kserve-v1 pytriton litserve bentoml}"
grpc_tools() {
  case "$1" in mlserver|kserve) echo h2load-grpc ;; pytriton) echo "h2load-grpc pa-http pa-grpc" ;; esac
}

for model in fraud mlp; do
  taskset -c 1 "$BENCH_HOME/venv/bin/python" "$harness/floor.py" --model "$model" --seconds 5 --csv "$CSV"
done

export CONCURRENCY="1 8 32"
run modelship fraud wrk h2load-grpc pa-http pa-grpc
run modelship-joblib fraud wrk
for peer in $peers; do
  # shellcheck disable=SC2046
  run "$peer" fraud wrk $(grpc_tools "$peer")
done

export CONCURRENCY="32"
run modelship mlp wrk h2load-grpc
run modelship-batched mlp wrk h2load-grpc
for peer in $peers; do
  # shellcheck disable=SC2046
  run "$peer" mlp wrk $( [ "$peer" = pytriton ] && echo h2load-grpc )
done

python3 "$harness/report.py" "$CSV" > "$out/peers-$RUN_ID.md"
echo "peers: $CSV and $out/peers-$RUN_ID.md" >&2
