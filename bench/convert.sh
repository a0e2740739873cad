#!/usr/bin/env bash
# Conversions (modelship convert, the path serve and models push take): for each model of
# testdata/convert/train.py, the conversion's own time (the record's `seconds`: inspection,
# loading, converting, the original's answers, the proof in ONNX Runtime) and the command's wall
# time, in a conversion home with an empty cache and the shared environments; then the time from
# `serve` to its ready line for a pickle the first time (converted), again (from the cache, 3
# times), and for the same model as ONNX (3 times). Prints Markdown tables (BENCHMARKS.md's
# "Conversions" section).
#
# Usage: bench/convert.sh   (BIN_DIR=target/release; the environments under .cache/convert-envs,
# created by `modelship convert setup` when missing)
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$(realpath "${BIN_DIR:-target/release}/modelship")"
[ -x "$bin" ] || { echo "convert: $bin is missing: cargo build --release -p modelship (or BIN_DIR=...)" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p .cache/convert-envs "$work/home"
ln -s "$PWD/.cache/convert-envs" "$work/home/envs"
export MODELSHIP_CONVERT_HOME="$work/home"
"$bin" convert setup >/dev/null
.cache/convert-envs/default/bin/python testdata/convert/train.py "$work/models"

echo "| model | format | estimator | conversion | command wall | rows | largest difference |"
echo "|---|---|---|---:|---:|---:|---:|"
for m in lr.pkl rf.joblib hgb.pkl ct.pkl xgb.pkl xgb_booster.json xgb_booster.ubj xgb_reg.pkl lgbm.joblib lgbm_booster.txt lgbm_reg.pkl; do
  start=$(date +%s.%N)
  "$bin" convert "$work/models/$m" --output json > "$work/record.json" 2>/dev/null
  end=$(date +%s.%N)
  python3 - "$m" "$start" "$end" "$work/record.json" <<'PY'
import json, sys
m, start, end, path = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
r = json.load(open(path))
print("| %s | %s | %s | %.2f s | %.2f s | %d | %.2e |" % (m, r["format"], r["estimator"].rsplit(".", 1)[-1], r["seconds"], end - start,
      r["verdict"]["rows"], r["verdict"]["max_abs_diff"]))
PY
done

# Seconds from launch to the ready line on standard output, then SIGTERM.
ready_after() {
  python3 - "$@" <<'PY'
import subprocess, sys, time
start = time.monotonic()
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
line = p.stdout.readline()
took = time.monotonic() - start
p.terminate(); p.wait(timeout=60)
assert '"ready"' in line, line
print("%.2f" % took)
PY
}
serve=(serve --host 127.0.0.1 --port 0 --admin-port 0 --grpc-port 0 --workers 1)
"$bin" convert "$work/models/xgb.pkl" -o "$work/xgb.onnx" >/dev/null 2>&1
rm -rf "$work/home/cache"
first=$(MODELSHIP_STATE_DIR="$work/s1" ready_after "$bin" "${serve[@]}" "$work/models/xgb.pkl")
cached=(); onnx=()
for i in 1 2 3; do
  cached+=("$(MODELSHIP_STATE_DIR="$work/s2$i" ready_after "$bin" "${serve[@]}" "$work/models/xgb.pkl")")
  onnx+=("$(MODELSHIP_STATE_DIR="$work/s3$i" ready_after "$bin" "${serve[@]}" "$work/xgb.onnx")")
done
echo
echo "| serve, to the ready line | seconds |"
echo "|---|---|"
echo "| xgb.pkl, first start (converted) | $first |"
echo "| xgb.pkl, cached (3 starts) | ${cached[*]} |"
echo "| xgb.onnx, the same model as ONNX (3 starts) | ${onnx[*]} |"
