#!/usr/bin/env bash
# Installs what modelship needs at run time and in tests, on a fresh machine. Idempotent.
#
# - ONNX Runtime's shared library, from the `onnxruntime` wheel on PyPI, into ./.venv
#   (modelship finds it there by itself; or point ORT_DYLIB_PATH at it).
set -euo pipefail
cd "$(dirname "$0")/.."

ORT_VERSION="${ORT_VERSION:-1.31.1}"
VENV="${VENV:-.venv}"

have_ort() {
  ls "$VENV"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* >/dev/null 2>&1
}

if ! have_ort; then
  if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV" >&2
    python3 -m venv "$VENV"
  fi
  echo "setup: installing onnxruntime==$ORT_VERSION into $VENV (only its shared library is used)" >&2
  # --no-deps: modelship needs the library inside the wheel, not numpy or protobuf.
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "onnxruntime==$ORT_VERSION"
fi
lib=$(ls "$VENV"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -n 1)
echo "setup: ONNX Runtime library: $lib" >&2
