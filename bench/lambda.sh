#!/usr/bin/env bash
# The Lambda function's figures under AWS's Runtime Interface Emulator: a release bootstrap
# (--no-default-features --features lambda, as the generated Makefile builds it) packaged by
# `modelship deploy lambda`'s Makefile with the NEPSE-style model; the package's size unzipped and
# zipped (Lambda's limits: 250 MB and, uploaded directly, 50 MB); the init duration of COLD fresh
# starts (the emulator's INIT REPORT); warm single-row invocations (end to end through the
# emulator's Invoke API, and the REPORT duration); the bootstrap's RSS once warm.
# Needs scripts/setup.sh --test (.cache/lambda-rie, ./.venv's ONNX Runtime).
#
#   bench/lambda.sh            # COLD=5 REQUESTS=500
set -euo pipefail
cd "$(dirname "$0")/.."
COLD="${COLD:-5}"
REQUESTS="${REQUESTS:-500}"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
RIE=.cache/lambda-rie/aws-lambda-rie
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

cargo build --release --locked -p modelship --no-default-features --features lambda --target-dir "$TARGET_DIR" >&2
binary="$TARGET_DIR/release/modelship"
ort_lib=$(ls .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -n 1)
"$binary" deploy lambda --name nepse --model testdata/models/nepse_xgboost.onnx --out "$work/deploy" >&2
make -s -f "$work/deploy/Makefile" package BOOTSTRAP="$binary" ORT_LIB="$ort_lib" >&2
package="$work/deploy/package"
python3 - "$package" "$work/package.zip" <<'PY'
import os, sys, zipfile
package, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
    for name in sorted(os.listdir(package)):
        z.write(os.path.join(package, name), name)
unzipped = sum(os.path.getsize(os.path.join(package, n)) for n in os.listdir(package))
sizes = ", ".join(f"{n} {os.path.getsize(os.path.join(package, n)) / 1e6:.1f} MB" for n in sorted(os.listdir(package)))
print(f"package: {unzipped / 1e6:.1f} MB unzipped ({sizes}), {os.path.getsize(out) / 1e6:.1f} MB zipped")
PY

# Starts the emulator on free ports; prints its PID and invoke URL.
start() {
  local port api
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  api=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  LAMBDA_TASK_ROOT="$package" MODEL_NAME=nepse AWS_LAMBDA_FUNCTION_MEMORY_SIZE=1024 \
    "$RIE" --runtime-interface-emulator-address "127.0.0.1:$port" --runtime-api-address "127.0.0.1:$api" "$package/bootstrap" > "$work/rie-$port.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 100); do
    python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $port), 0.1)" 2>/dev/null && break
    sleep 0.05
  done
  echo "$pid http://127.0.0.1:$port/2015-03-31/functions/function/invocations $work/rie-$port.log"
}

event='{"resource": "/predict", "path": "/predict", "httpMethod": "POST", "headers": {"content-type": "application/json"}, "body": "{\"features\": [[0.004, -0.012, 1.3, 0.017]]}", "isBase64Encoded": false}'
inits=()
for _ in $(seq 1 "$COLD"); do
  read -r pid url log < <(start)
  curl -s -X POST "$url" -d "$event" > /dev/null
  sleep 0.2
  inits+=("$(grep -o 'INIT REPORT(durationMs: [0-9.]*' "$log" | grep -o '[0-9.]*$')")
  kill "$pid"; wait "$pid" 2>/dev/null || true
done
echo "init duration (INIT REPORT, ms) of $COLD cold starts: ${inits[*]}"

read -r pid url log < <(start)
python3 - "$url" "$REQUESTS" "$event" <<'PY'
import http.client, sys, time, urllib.parse
url, n, event = urllib.parse.urlparse(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
conn = http.client.HTTPConnection(url.hostname, url.port)
def call():
    conn.request("POST", url.path, event)
    r = conn.getresponse(); body = r.read(); assert r.status == 200 and b'"statusCode":200' in body, body
for _ in range(50): call()
times = []
for _ in range(n):
    t = time.perf_counter(); call(); times.append((time.perf_counter() - t) * 1000)
times.sort()
print(f"warm invoke, end to end through the emulator: p50 {times[len(times)//2]:.2f} ms, p99 {times[int(len(times)*0.99)]:.2f} ms over {n}")
PY
sleep 0.3
python3 - "$log" <<'PY'
import re, sys
durations = sorted(float(m) for m in re.findall(r"\tDuration: ([0-9.]+) ms", open(sys.argv[1]).read())[1:])
print(f"warm invoke, REPORT duration: p50 {durations[len(durations)//2]:.2f} ms, p99 {durations[int(len(durations)*0.99)]:.2f} ms over {len(durations)}")
PY
bootstrap_pid=$(pgrep -f "^$package/bootstrap" | head -n 1)
echo "bootstrap RSS once warm: $(awk '/VmRSS/ {print $2, $3}' "/proc/$bootstrap_pid/status"), $(awk '/Threads/ {print $2}' "/proc/$bootstrap_pid/status") threads"
