#!/usr/bin/env bash
# Soak: moderate load for SOAK_SECONDS (default 1800) while the routing changes every 10 s
# (candidate weight), versions hot-swap (the followed alias moves every 60 s) and a 100 % shadow
# runs. Reports every non-200 answer and the server's RSS over time; the pass criteria of
# BENCHMARKS.md are zero 5xx and RSS growth after warm-up under 5 %.
#
# Usage: bench/soak.sh                 (SOAK_SECONDS=1800 CONNECTIONS=8 OUT=bench/results)
# Needs: wrk (apt-get install wrk), a built modelship (MODELSHIP_BIN, default target/release).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
seconds="${SOAK_SECONDS:-1800}"
connections="${CONNECTIONS:-8}"
bin="${MODELSHIP_BIN:-$root/target/release/modelship}"
out="${OUT:-$root/bench/results}"
mkdir -p "$out"
run_id="$(date -u +%Y%m%dT%H%M%SZ)"
log="$out/soak-$run_id"
command -v wrk >/dev/null || { echo "soak: wrk is missing: apt-get install wrk" >&2; exit 1; }
[ -x "$bin" ] || { echo "soak: no modelship binary at $bin (cargo build --release, or set MODELSHIP_BIN)" >&2; exit 1; }

work="$(mktemp -d)"
export MODELSHIP_REGISTRY="$work/registry" MODELSHIP_STATE_DIR="$work/state"
"$bin" models push fraud examples/models/fraud.onnx --version 1 >/dev/null
"$bin" models push fraud testdata/models/xgboost.onnx --version 2 >/dev/null
"$bin" models push fraud testdata/models/random_forest.onnx --version 3 >/dev/null
"$bin" models alias fraud production 1 >/dev/null

taskset -c 1 "$bin" serve fraud@production --port 18200 --admin-port 18201 --grpc-port 18202 --workers 2 \
  --keep-warm 30 --log-level warn > "$log.ready" 2> "$log.stderr" &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
for _ in $(seq 100); do [ -s "$log.ready" ] && break; sleep 0.1; done
[ -s "$log.ready" ] || { echo "soak: the server did not start" >&2; cat "$log.stderr" >&2; exit 1; }
export MODELSHIP_ADMIN_URL=http://127.0.0.1:18201

python3 -c "import json; print(json.dumps({'inputs': [{'name': 'input', 'shape': [1, 30], 'datatype': 'FP32', 'data': [((i % 17) - 8) / 4 for i in range(30)]}]}))" > "$work/body.json"
rss() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }
echo "t_s rss_kb" > "$log.rss"

BODY_FILE="$work/body.json" taskset -c 0 wrk -t1 -c"$connections" -d"${seconds}s" --timeout 10s -s bench/soak.lua \
  http://127.0.0.1:18200/v2/models/fraud/infer > "$log.wrk" &
load=$!

started=$(date +%s)
changes=0 failed_changes=0 tick=0
while kill -0 "$load" 2>/dev/null; do
  sleep 10
  tick=$((tick + 1))
  now=$(( $(date +%s) - started ))
  echo "$now $(rss)" >> "$log.rss"
  stable=$("$bin" traffic status fraud --output json 2>/dev/null | python3 -c "import json,sys; print(json.load(sys.stdin)['traffic']['stable'])" || echo 1)
  # Another version as the candidate (its weight changing every tick) and a 100 % shadow.
  other=$(( stable % 3 + 1 ))
  shadow=$(( other % 3 + 1 ))
  [ "$shadow" = "$stable" ] && shadow=$(( shadow % 3 + 1 ))
  weight=$(( (tick * 7) % 50 ))
  if "$bin" traffic set fraud --candidate "$other" --weight "$weight%" >/dev/null 2>>"$log.changes" \
     && "$bin" traffic shadow fraud --version "$shadow" --percent 100 >/dev/null 2>>"$log.changes"; then
    changes=$((changes + 2))
  else
    failed_changes=$((failed_changes + 1))
  fi
  # Every 60 s the followed alias moves: a hot swap of the stable version.
  if [ $((tick % 6)) -eq 0 ]; then
    "$bin" traffic abort fraud >/dev/null 2>>"$log.changes" || true
    "$bin" models alias fraud production "$other" >/dev/null
  fi
done
wait "$load" || true
cat "$log.wrk"
python3 - "$log.rss" "$log.wrk" "$changes" "$failed_changes" <<'PY'
import re, sys
rows = [l.split() for l in open(sys.argv[1]).read().splitlines()[1:] if len(l.split()) == 2]
rss = [(int(t), int(k)) for t, k in rows]
line = next((l for l in open(sys.argv[2]) if l.startswith("SOAK")), "")
statuses = dict(kv.split("=") for kv in re.search(r"statuses=(\S*)", line).group(1).split(",") if kv) if line else {}
five = sum(int(v) for k, v in statuses.items() if k.startswith("5"))
warm = next((k for t, k in rss if t >= 120), rss[0][1] if rss else 0)
end = rss[-1][1] if rss else 0
growth = (end - warm) / warm * 100 if warm else float("nan")
print(f"soak: {line.strip()}")
print(f"soak: traffic changes applied {sys.argv[3]}, refused {sys.argv[4]}; 5xx {five}; RSS after warm-up {warm} kB, at the end {end} kB, growth {growth:+.2f}%")
PY
