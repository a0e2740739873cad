#!/usr/bin/env bash
# The edge build's figures: a release cross build for aarch64 (--no-default-features --features s3), run under
# qemu-aarch64 serving the NEPSE-style 4-feature XGBoost model: binary size (as built and with
# its debug information stripped), time to ready, idle RSS and threads, single-row /v1/predict
# latency (p50, p99) under emulation, and the same on the native x86_64 server for scale.
# Needs scripts/setup.sh --test (the cross toolchain, qemu-user, .cache/ort-aarch64).
#
#   bench/edge.sh              # REQUESTS=500 per server; NATIVE=path/to/x86_64/modelship for scale
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS="${REQUESTS:-500}"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
ORT_LIB=.cache/ort-aarch64/libonnxruntime.so.1.31.1
MODEL=testdata/models/nepse_xgboost.onnx
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

started=$(date +%s)
cargo build --release --locked -p modelship --no-default-features --features s3 --target aarch64-unknown-linux-gnu --target-dir "$TARGET_DIR" >&2
echo "release cross build: $(( $(date +%s) - started )) s (incremental when nothing changed)" >&2
binary="$TARGET_DIR/aarch64-unknown-linux-gnu/release/modelship"
aarch64-linux-gnu-strip --strip-debug -o "$work/modelship" "$binary"

# qemu 7.2 passes the host's x86 /proc/cpuinfo through; ONNX Runtime's cpuinfo needs an ARM one.
mkdir -p "$work/root/proc" && ln -s /usr/aarch64-linux-gnu/lib "$work/root/lib"
for i in $(seq 0 $(($(nproc) - 1))); do
  printf 'processor\t: %d\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n' "$i"
done > "$work/root/proc/cpuinfo"

# Starts a server (the command line in "$@"), prints its PID and address once it is ready.
serve() {
  local out="$work/ready-$1"; shift
  MODELSHIP_STATE_DIR="$work/state-$RANDOM" "$@" serve "$MODEL" --name nepse --workers 1 --host 127.0.0.1 --port 0 --log-level warn > "$out" 2>/dev/null &
  local pid=$!
  for _ in $(seq 1 600); do
    if [ -s "$out" ]; then break; fi
    sleep 0.05
  done
  echo "$pid $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["http"])' "$out")"
}

measure() {
  python3 - "$1" "$REQUESTS" <<'PY'
import http.client, json, sys, time
host, port = sys.argv[1].split(":")
n = int(sys.argv[2])
body = json.dumps({"features": [[0.004, -0.012, 1.3, 0.017]]})
conn = http.client.HTTPConnection(host, int(port))
def call():
    conn.request("POST", "/v1/predict", body, {"content-type": "application/json"})
    r = conn.getresponse(); r.read(); assert r.status == 200
for _ in range(50): call()
times = []
for _ in range(n):
    t = time.perf_counter(); call(); times.append((time.perf_counter() - t) * 1000)
times.sort()
print(f"p50 {times[len(times)//2]:.2f} ms, p99 {times[int(len(times)*0.99)]:.2f} ms over {n} requests")
PY
}

t0=$(date +%s.%N)
read -r edge_pid edge_addr < <(ORT_DYLIB_PATH="$ORT_LIB" serve edge qemu-aarch64 -L "$work/root" "$work/modelship")
ready=$(python3 -c "print(f'{$(date +%s.%N) - $t0:.2f}')")
sleep 2
idle_rss=$(awk '/VmRSS/ {print $2, $3}' "/proc/$edge_pid/status")
threads=$(awk '/Threads/ {print $2}' "/proc/$edge_pid/status")
edge_latency=$(measure "$edge_addr")
size() { python3 -c "import os,sys; print(f'{os.path.getsize(sys.argv[1]) / 1e6:.1f}')" "$1"; }
echo "binary: $(size "$binary") MB as built (line tables), $(size "$work/modelship") MB stripped of debug information; libonnxruntime.so (aarch64) $(size "$ORT_LIB") MB"
echo "under qemu-aarch64: ready in ${ready} s, idle RSS ${idle_rss} (qemu included), ${threads} threads; single-row /v1/predict ${edge_latency}"
kill "$edge_pid" 2>/dev/null || true
native="${NATIVE:-$TARGET_DIR/release/modelship}"
if [ -x "$native" ]; then
  read -r native_pid native_addr < <(serve native "$native")
  sleep 1
  echo "native x86_64 ($native): idle RSS $(awk '/VmRSS/ {print $2, $3}' "/proc/$native_pid/status"), $(awk '/Threads/ {print $2}' "/proc/$native_pid/status") threads; single-row /v1/predict $(measure "$native_addr")"
  kill "$native_pid" 2>/dev/null || true
fi
