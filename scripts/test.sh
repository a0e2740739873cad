#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what the tests need (ONNX Runtime, and
# the real S3 and MLflow servers they start on loopback), then cargo test with every feature.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
cargo test --workspace --all-features --locked "$@"
