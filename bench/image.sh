#!/usr/bin/env bash
# The container image: build time, size, and cold start (`docker run` to a ready probe), for the
# release binary packaged by `modelship deploy docker --apply` on the test tools base.
#
#   bench/image.sh [RUNS]      (default 5 cold starts; needs scripts/setup.sh --test for the base)
#
# Prints one line per measure; BENCHMARKS.md ("Container image") records a run.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-5}"
TARGET="${CARGO_TARGET_DIR:-target}"
[ -x "$TARGET/release/modelship" ] || cargo build --release --locked -p modelship
out=$(mktemp -d)
trap 'rm -rf "$out"; docker rm -f ms-bench-image >/dev/null 2>&1 || true' EXIT
cat > "$out/deploy.yaml" <<YAML
name: bench
model: {file: $PWD/examples/models/fraud.onnx, delivery: bake}
image: {name: modelship-bench, tag: release, bases: {tools: "modelship-test/bookworm:12"}}
YAML
docker images -q modelship-bench | xargs -r docker rmi -f >/dev/null 2>&1 || true
"$TARGET/release/modelship" deploy docker --file "$out/deploy.yaml" --out "$out/image" --apply --output json > "$out/summary.json"
python3 - "$out/summary.json" "$TARGET/release/modelship" <<'PY'
import json, os, sys
s = json.load(open(sys.argv[1]))["applied"]
binary = os.path.getsize(os.path.join(os.path.dirname(sys.argv[1]), "image/modelship"))  # as staged (debug info stripped)
lib = os.path.getsize(os.path.join(os.path.dirname(sys.argv[1]), "image/lib/libonnxruntime.so"))
print(f"build_seconds {s['build_seconds']:.1f} (uncached: a fresh tag, the tools base present)")
print(f"image_bytes {s['image_bytes']} ({s['image_bytes']/1e6:.1f} MB): binary {binary/1e6:.1f} MB, libonnxruntime {lib/1e6:.1f} MB, the rest system libraries and the model")
PY
# `deploy docker` tags the image with the build's content digest: release-<digest>.
image=$(docker images --format '{{.Repository}}:{{.Tag}}' modelship-bench | head -1)
for i in $(seq "$RUNS"); do
  start=$(date +%s.%N)
  docker run -d --name ms-bench-image -p 127.0.0.1:18000:8000 "$image" >/dev/null
  until curl -fs -o /dev/null http://127.0.0.1:18000/health/ready; do sleep 0.01; done
  end=$(date +%s.%N)
  echo "cold_start_seconds $(python3 -c "print(f'{$end - $start:.3f}')") (docker run to /health/ready 200, run $i)"
  docker rm -f ms-bench-image >/dev/null
done
