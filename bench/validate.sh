#!/usr/bin/env bash
# What `modelship validate`'s latency and resources gates measure on the fixture models: p50 and
# p99 of one in-process run at batch 1 and 32 (RUNS timed runs after 20 untimed ones, one
# thread, pinned to CPU 1), and the memory loaded, per further worker and while running. Prints
# one Markdown table (the rows of BENCHMARKS.md's "Validate's gates" section).
#
# Usage: bench/validate.sh   (RUNS=1000, BIN_DIR=target/release)
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${RUNS:-1000}"
bin="${BIN_DIR:-target/release}/modelship"
[ -x "$bin" ] || { echo "validate: $bin is missing: cargo build --release -p modelship (or BIN_DIR=...)" >&2; exit 1; }
slow_rows="$(mktemp --suffix .csv)"
trap 'rm -f "$slow_rows"' EXIT
printf 'iterations\n50\n' > "$slow_rows"

echo "| model | p50 batch 1 | p99 batch 1 | p50 batch 32 | p99 batch 32 | loaded | per worker | working |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
for model in examples/models/fraud.onnx testdata/models/logistic_regression.onnx testdata/models/random_forest.onnx \
             testdata/models/mlp.onnx testdata/models/xgboost.onnx testdata/models/slow.onnx; do
  if [ "$(basename "$model")" = slow.onnx ]; then
    args=(--data "$slow_rows")          # 50 rounds of a 128x128 matrix product; no batch dimension
  else
    args=(--data testdata/validate/holdout.csv --label is_fraud --batch 32)
  fi
  taskset -c 1 "$bin" validate "$model" "${args[@]}" --runs "$runs" --warmup 20 --gate latency --gate resources --output json |
    python3 -c '
import json, sys
report = json.load(sys.stdin)
checks = {c["id"]: c["value"] for g in report["gates"] for c in g["checks"]}
ms = lambda k: "%.3f ms" % checks[k] if k in checks else "-"
mib = lambda k: "%.1f MiB" % (checks[k] / 2**20)
print("| %s | %s | %s | %s | %s | %s | %s | %s |" % (sys.argv[1], ms("p50_batch_1"), ms("p99_batch_1"), ms("p50_batch_32"), ms("p99_batch_32"),
      mib("memory_loaded"), mib("memory_per_worker"), mib("memory_working")))' "$(basename "$model" .onnx)"
done
