#!/usr/bin/env bash
# CPU against CUDA on one dense network, in one run: bench/dense_model.py's MLP (30 -> 3 x WIDTH ->
# 2, FP32) served by one modelship with --device cpu, then --device cuda:0, each at concurrency 1
# and 32, requests of ROWS rows, dynamic batching on (the GPU's default workers: 1; the CPU's: one
# per core). Prints a Markdown table: requests/s, p50 and p99 in ms, and the card's name.
#
# Written for the project's lent GPU machines (no package registry reachable there): it needs
#   BIN      a release modelship built here (carried),
#   ORT_GPU  a directory with onnxruntime-gpu's libonnxruntime.so.1.31.1 and its
#            libonnxruntime_providers_{shared,cuda}.so (carried: the CUDA provider is 284 MB,
#            more than one call may carry, so in pieces over back-to-back calls),
#   CUDA 13 and cuDNN 9 on the library path (on those machines: the PyTorch venv's nvidia/*/lib),
#   python3 with numpy and onnx (there: the PyTorch venv's).
# The load generator is Python (threads, keep-alive http.client): wrk is not there.
#
# Usage: BIN=path/modelship ORT_GPU=dir bench/gpu.sh   (WIDTH=4096 ROWS=64 DURATION=15 BATCH=64)
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${BIN:-target/release/modelship}"
ort="${ORT_GPU:?ORT_GPU: the onnxruntime-gpu library directory}"
width="${WIDTH:-4096}"; rows="${ROWS:-64}"; duration="${DURATION:-15}"; batch="${BATCH:-64}"
python="${PYTHON:-python3}"
work=$(mktemp -d)
server=""
trap '[ -n "$server" ] && kill $server 2>/dev/null; rm -rf "$work"' EXIT
if [ -z "${CUDA_LIBS:-}" ]; then
  CUDA_LIBS=$("$python" -c "import glob, os, nvidia; print(':'.join(sorted(glob.glob(os.path.join(os.path.dirname(nvidia.__file__), '*', 'lib')))))" 2>/dev/null || true)
fi
export LD_LIBRARY_PATH="$ort:${CUDA_LIBS}:${LD_LIBRARY_PATH:-}"
"$python" bench/dense_model.py "$work/dense.onnx" "$width" >&2
"$python" - "$rows" > "$work/body.json" <<'PY'
import json, sys
rows = int(sys.argv[1])
print(json.dumps({"inputs": [{"name": "input", "shape": [rows, 30], "datatype": "FP32", "data": [((i % 17) - 8) / 4 for i in range(rows * 30)]}]}))
PY
cat > "$work/load.py" <<'PY'
import http.client, json, sys, threading, time
host, port = sys.argv[1].rsplit(":", 1)
clients, seconds, body = int(sys.argv[2]), float(sys.argv[3]), open(sys.argv[4], "rb").read()
headers = {"content-type": "application/json"}
latencies, failures, lock = [], [0], threading.Lock()
def client(until):
    conn, mine, bad = http.client.HTTPConnection(host, int(port), timeout=30), [], 0
    while time.perf_counter() < until:
        t = time.perf_counter()
        conn.request("POST", "/v2/models/m/infer", body, headers)
        r = conn.getresponse(); r.read()
        if r.status == 200: mine.append(time.perf_counter() - t)
        else: bad += 1
    with lock:
        latencies.extend(mine); failures[0] += bad
for warm in (2.0, seconds):
    latencies.clear(); failures[0] = 0
    until = time.perf_counter() + warm
    threads = [threading.Thread(target=client, args=(until,)) for _ in range(clients)]
    [t.start() for t in threads]; [t.join() for t in threads]
latencies.sort()
q = lambda p: latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000
print(f"{len(latencies) / seconds:.0f} {q(0.5):.2f} {q(0.99):.2f} {failures[0]}")
PY
card=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n 1 || echo "no nvidia-smi")
echo "card: $card; model: dense 30 -> 3 x $width -> 2, $rows rows per request; dynamic batching up to $batch rows"
echo
echo "| device | concurrency | requests/s | p50 ms | p99 ms | failed |"
echo "|---|---:|---:|---:|---:|---:|"
for device in cpu cuda:0; do
  "$bin" serve "$work/dense.onnx" --name m --host 127.0.0.1 --port 0 --grpc-port 0 --admin-port 0 \
    --device "$device" --ort-lib "$ort/libonnxruntime.so.1.31.1" --max-batch-size "$batch" --max-queue-delay-us 500 \
    --state-dir "$work/state-${device%%:*}" --log-level warn > "$work/ready" 2> "$work/server.log" &
  server=$!
  for _ in $(seq 300); do [ -s "$work/ready" ] && break; sleep 0.1; done
  if [ ! -s "$work/ready" ]; then echo "| $device | the server did not start: $(tail -n 3 "$work/server.log" | tr '\n' ' ') | | | | |"; kill $server 2>/dev/null || true; server=""; continue; fi
  http=$("$python" -c "import json,sys; print(json.load(open(sys.argv[1]))['http'])" "$work/ready")
  for c in 1 32; do
    # shellcheck disable=SC2046 # the four figures, split on purpose
    set -- $("$python" "$work/load.py" "$http" "$c" "$duration" "$work/body.json")
    echo "| $device | $c | $1 | $2 | $3 | $4 |"
  done
  curl -s "http://$http/metrics" | grep -E '^modelship_model_info|^modelship_gpu_' >&2 || true
  kill $server; wait $server 2>/dev/null || true; server=""
done
