#!/usr/bin/env bash
# Builds the base images the Docker tests need, on a machine whose engine cannot pull any image:
#
#   modelship-test/bookworm:12   a Debian 12 root filesystem made by debootstrap (minbase, plus
#                                Debian's redis-server and prometheus) and `docker import`ed;
#                                the tools stage of the generated Dockerfile (bash, ldd, cp)
#   modelship-test/redis:7       that root filesystem running Debian's redis-server as `redis`
#   modelship-test/prometheus:2  that root filesystem running Debian's prometheus as `nobody`
#
# Idempotent: an image already present is kept; the root filesystem's tarball is cached under
# .cache/docker so a pruned engine re-imports it in seconds. Needs root (debootstrap) and a
# Debian mirror (MIRROR, default deb.debian.org). Called by scripts/setup.sh --test.
set -euo pipefail
cd "$(dirname "$0")/.."

MIRROR="${MIRROR:-http://deb.debian.org/debian}"
BASE=modelship-test/bookworm:12
CACHE=.cache/docker
TARBALL="$CACHE/bookworm-rootfs.tar"

if ! docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
  echo "docker-test-images: no Docker engine answers; skipping the test images (the Docker tests will say so)" >&2
  exit 0
fi

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
  if [ ! -s "$TARBALL" ]; then
    command -v debootstrap >/dev/null 2>&1 || {
      echo "docker-test-images: apt-get install debootstrap" >&2
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
    }
    mkdir -p "$CACHE"
    rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    echo "docker-test-images: debootstrap bookworm into $rootfs (a few minutes)" >&2
    debootstrap --variant=minbase --include=redis-server,prometheus bookworm "$rootfs" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
      || { tail -20 "$CACHE/debootstrap.log" >&2; exit 1; }
    # Nothing of the build machine's state goes into the image.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log
    tar -C "$rootfs" -cf "$TARBALL.tmp" . && mv "$TARBALL.tmp" "$TARBALL"
    rm -rf "$rootfs"
  fi
  echo "docker-test-images: docker import $TARBALL as $BASE" >&2
  docker import --change 'CMD ["/bin/bash"]' "$TARBALL" "$BASE" >/dev/null
fi

build() {
  local tag=$1 dockerfile=$2
  if ! docker image inspect "$tag" >/dev/null 2>&1; then
    echo "docker-test-images: docker build $tag" >&2
    printf '%s\n' "$dockerfile" | docker build -q -t "$tag" - >/dev/null
  fi
}
build modelship-test/redis:7 "FROM $BASE
USER redis
EXPOSE 6379
HEALTHCHECK --interval=2s --timeout=2s --retries=15 CMD [\"redis-cli\", \"ping\"]
CMD [\"redis-server\", \"--bind\", \"0.0.0.0\", \"--protected-mode\", \"no\", \"--save\", \"\", \"--appendonly\", \"no\"]"
build modelship-test/prometheus:2 "FROM $BASE
USER nobody
EXPOSE 9090
ENTRYPOINT [\"/usr/bin/prometheus\"]
CMD [\"--config.file=/etc/prometheus/prometheus.yml\", \"--storage.tsdb.path=/tmp/prometheus\"]"
echo "docker-test-images: $BASE, modelship-test/redis:7, modelship-test/prometheus:2" >&2
