#!/usr/bin/env bash
# Serves the example fraud model (examples/models/fraud.onnx) on port ${PORT:-8000}, from a
# release build. Extra arguments go to `modelship serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec cargo run --release --locked -p modelship -- serve examples/models/fraud.onnx --port "${PORT:-8000}" "$@"
