#!/usr/bin/env bash
# Many models, few in memory, in one run: N copies of one ONNX file served with at most LIMIT
# loaded. Requests go to every model in turn (the least-recently-used worst case: after the
# first LIMIT, every request finds its model resting and loads it again), then to one loaded
# model. Reports the latency of a request that loads its model (client side, and the server's
# modelship_model_lazy_load_seconds), of a request to a loaded model, and the resident memory:
# bounded after the churn, a server of LIMIT models, and a server of all N.
#
# Usage: bench/lazy.sh   (N=50, LIMIT=10, REQUESTS=200, MODEL=examples/models/fraud.onnx, BIN_DIR=target/release)
set -euo pipefail
cd "$(dirname "$0")/.."
n="${N:-50}"
limit="${LIMIT:-10}"
requests="${REQUESTS:-200}"
model="${MODEL:-examples/models/fraud.onnx}"
bin="${BIN_DIR:-target/release}"
work="$(mktemp -d)"
# The servers' PIDs, in a file: `start` runs in a subshell.
trap 'xargs -r kill < "$work/pids" 2>/dev/null || true; rm -rf "$work"' EXIT
: > "$work/pids"
for i in $(seq -w 1 "$n"); do cp "$model" "$work/m$i.onnx"; done

# Starts a server of the first $1 models with extra arguments; prints "PID HTTP_ADDRESS".
start() {
  local count=$1 state
  shift
  state="$(mktemp -d -p "$work")"
  # shellcheck disable=SC2046
  MODELSHIP_STATE_DIR="$state" "$bin/modelship" serve $(find "$work" -maxdepth 1 -name 'm*.onnx' | sort | head -n "$count") \
    --port 0 --admin-port 0 --grpc-port 0 --workers 1 --log-level warn "$@" > "$state/ready" 2> "$state/stderr" &
  local pid=$!
  echo "$pid" >> "$work/pids"
  for _ in $(seq 600); do [ -s "$state/ready" ] && break; sleep 0.1; done
  [ -s "$state/ready" ] || { echo "lazy: the server of $count models did not start:" >&2; cat "$state/stderr" >&2; exit 1; }
  echo "$pid $(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['http'])" "$state/ready")"
}
rss_mib() { awk '/^VmRSS:/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }

read -r bounded address < <(start "$n" --max-loaded-models "$limit")
python3 - "$address" "$n" "$requests" <<'EOF'
import json, statistics, sys, time, urllib.request
address, n, requests = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
body = json.dumps({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": [((i % 17) - 8) / 4 for i in range(30)]}]}).encode()
width = len(str(n))
def call(model):
    started = time.perf_counter()
    request = urllib.request.Request(f"http://{address}/v2/models/{model}/infer", data=body, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request) as r:
        assert r.status == 200
    return (time.perf_counter() - started) * 1000
names = [f"m{i:0{width}d}" for i in range(1, n + 1)]
# Every model in turn: with fewer loaded than asked for in a cycle, each request loads its model.
loading = [call(names[i % n]) for i in range(requests)]
# One model again and again: it stays loaded.
loaded = [call(names[(requests - 1) % n]) for _ in range(requests)]
metrics = urllib.request.urlopen(f"http://{address}/metrics").read().decode()
def total(prefix):
    return sum(float(l.rsplit(" ", 1)[1]) for l in metrics.splitlines() if l.startswith(prefix))
loads, seconds = total("modelship_model_lazy_load_seconds_count"), total("modelship_model_lazy_load_seconds_sum")
q = lambda xs, p: statistics.quantiles(xs, n=100)[p - 1]
print(json.dumps({
    "models": n, "requests_cycling": requests, "lazy_loads": int(loads),
    "evictions": int(total("modelship_model_evictions_total")),
    "lazy_load_ms_server_mean": round(seconds / loads * 1000, 2) if loads else None,
    "request_ms_loading_p50": round(q(loading[n:], 50), 2), "request_ms_loading_p95": round(q(loading[n:], 95), 2),
    "request_ms_loaded_p50": round(q(loaded, 50), 2), "request_ms_loaded_p95": round(q(loaded, 95), 2),
}))
EOF
bounded_rss=$(rss_mib "$bounded")
read -r few _ < <(start "$limit")
read -r all _ < <(start "$n")
sleep 1
echo "{\"rss_mib_bounded_after_churn\": $bounded_rss, \"rss_mib_${limit}_models\": $(rss_mib "$few"), \"rss_mib_${n}_models\": $(rss_mib "$all")}"
