#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what the tests need (ONNX Runtime, and
# the real S3 and MLflow servers they start on loopback), then cargo test with every feature.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
# Tests that use a tool setup.sh installs fail, rather than skip, when it is missing.
export MODELSHIP_REQUIRE_TOOLS=1
cargo test --workspace --all-features --locked "$@"
