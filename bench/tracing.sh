#!/usr/bin/env bash
# What OpenTelemetry tracing costs per request: server CPU per request (bench/cpu.sh, c=32, the
# fraud model over V2 REST) with tracing off, on with 1 % of new traces sampled, and on with every
# trace sampled, exported over OTLP/gRPC to the test's Python receiver (otel.py). Rounds alternate
# so drift hits every setting alike. Prints one JSON line per run, then the medians.
#
# BASELINE=OTHER_BINARY adds a fourth setting: that binary (say, a build from before tracing
# existed), to show what tracing off costs against not having it.
#
# Usage: bench/tracing.sh [BINARY]   (ROUNDS=3, DURATION=8, BASELINE=; needs scripts/setup.sh --test and wrk)
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-target/release/modelship}"
rounds="${ROUNDS:-3}"
spans="$(mktemp)"
port=14317
.cache/otel-venv/bin/python crates/modelship/tests/e2e/otel.py receive --grpc "$port" --http 14318 --out "$spans" > /dev/null 2>&1 &
receiver=$!
trap 'kill $receiver 2>/dev/null; rm -f "$spans"' EXIT
sleep 2
out="$(mktemp)"
for _ in $(seq "$rounds"); do
  for setting in ${BASELINE:+baseline} off 0.01 1; do
    if [ "$setting" = baseline ]; then
      line=$(bench/cpu.sh "$BASELINE")
    elif [ "$setting" = off ]; then
      line=$(bench/cpu.sh "$bin")
    else
      line=$(OTEL_TRACES_EXPORTER=otlp OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$port" OTEL_TRACES_SAMPLER_ARG="$setting" bench/cpu.sh "$bin")
    fi
    echo "{\"tracing\": \"$setting\", \"run\": $line}" | tee -a "$out"
  done
done
python3 - "$out" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
median = {}
for setting in ("baseline", "off", "0.01", "1"):
    us = [r["run"]["cpu_us"] for r in runs if r["tracing"] == setting]
    if us:
        median[setting] = statistics.median(us)
for setting, us in median.items():
    print(json.dumps({"tracing": setting, "cpu_us": round(us, 2), "vs_off": round(us / median["off"], 3)}))
PY
echo "spans received: $(wc -l < "$spans")" >&2
