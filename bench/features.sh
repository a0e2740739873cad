#!/usr/bin/env bash
# Feature-store enrichment's cost, in one run: /v1/predict with the 30 features in the request
# (plain), by entity with the cache hot (one entity, always cached), and by entity with the cache
# cold (a random one of ENTITIES customers, cache of 1 entry: every request goes to Redis).
# The server is pinned to CPU 1; wrk and redis-server share CPU 0.
#
# Usage: bench/features.sh     (DURATION=15 per point; CONCURRENCY="1 8 32"; ENTITIES=100000)
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${DURATION:-15}"
entities="${ENTITIES:-100000}"
work=$(mktemp -d)
trap 'kill $server $redis 2>/dev/null || true; rm -rf "$work"' EXIT
scripts/setup.sh
command -v redis-server >/dev/null || { echo "features: apt-get install redis-server" >&2; exit 1; }
cargo build --release --locked -p modelship >&2
bin=target/release/modelship
port=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
taskset -c 0 redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
redis=$!
python3 - "$work" "$entities" "$port" <<'PY'
import sys
work, n, port = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(f"{work}/customers.csv", "w") as f:
    f.write("customer_id," + ",".join(f"f{i:02d}" for i in range(2, 30)) + "\n")
    for c in range(n):
        f.write(f"c{c}," + ",".join(str(((c * 31 + i * 7) % 23) / 4 - 2.5) for i in range(2, 30)) + "\n")
for name, extra in (("hot", "  cache_ttl: 300\n"), ("cold", "  cache_ttl: 300\n  cache_max_entries: 1\n")):
    feats = "".join(f"    - {{name: f{i:02d}, source: {'request' if i < 2 else 'store'}, position: {i}}}\n" for i in range(30))
    open(f"{work}/{name}.yaml", "w").write(
        f"model: {{path: examples/models/fraud.onnx, name: fraud}}\nserver: {{host: 127.0.0.1, port: 0}}\n"
        f"logging: {{level: WARN}}\nfeatures:\n  store_url: redis://127.0.0.1:{port}\n"
        f"  key: 'features:customer:{{customer_id}}'\n  timeout_ms: 100\n{extra}  features:\n{feats}")
body = {"features": [[((i % 17) - 8) / 4 for i in range(30)]]}
import json; open(f"{work}/plain.json", "w").write(json.dumps(body))
PY
sleep 0.5
load_out=$($bin features load "$work/customers.csv" --config "$work/hot.yaml" --output json)
echo "loaded: $load_out" >&2
serve() {  # serve CONFIG: starts the server pinned to CPU 1, sets $server and $http
  taskset -c 1 $bin serve --config "$1" > "$work/ready" 2>/dev/null &
  server=$!
  for _ in $(seq 100); do [ -s "$work/ready" ] && break; sleep 0.1; done
  http=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['http'])" "$work/ready")
}
run() {  # run C SCRIPT ENV... -> "p50_us p99_us requests"
  local c=$1 script=$2; shift 2
  env "$@" taskset -c 0 wrk -t1 -c"$c" -d2s -s "$script" "http://$http/v1/predict" >/dev/null
  env "$@" taskset -c 0 wrk -t1 -c"$c" -d"${duration}s" -s "$script" "http://$http/v1/predict" | awk '/LATENCY_US/ {print $2, $3, $4}'
}
echo "| concurrency | request | req/s | p50 µs | p99 µs | vs plain |"
echo "|---:|---|---:|---:|---:|---:|"
row() {  # row C NAME "p50 p99 requests" PLAIN_RPS
  set -- "$1" "$2" $3 "$4"
  local rps=$(( $5 / duration ))
  echo "| $1 | $2 | $rps | $3 | $4 | $(python3 -c "print(f'{$rps / $6:.2f}x')") |"
}
for c in ${CONCURRENCY:-1 8 32}; do
  serve "$work/hot.yaml"
  plain=$(run "$c" bench/post.lua BODY_FILE="$work/plain.json")
  hot=$(run "$c" bench/entities.lua ENTITIES=1)
  kill $server; wait $server 2>/dev/null || true
  serve "$work/cold.yaml"
  cold=$(run "$c" bench/entities.lua ENTITIES="$entities")
  misses=$(curl -s "http://$http/metrics" | awk '/^modelship_feature_cache_requests_total\{result="miss"\}/ {print $2}')
  trips=$(curl -s "http://$http/metrics" | awk '/^modelship_feature_store_duration_seconds_count/ {print $2}')
  kill $server; wait $server 2>/dev/null || true
  plain_rps=$(( $(echo "$plain" | awk '{print $3}') / duration ))
  row "$c" "plain (30 features in the body)" "$plain" "$plain_rps"
  row "$c" "entity, cache hot" "$hot" "$plain_rps"
  row "$c" "entity, cache cold (Redis every request)" "$cold" "$plain_rps"
  echo "cold run: $misses cache misses, $trips store round trips" >&2
done
