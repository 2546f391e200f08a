#!/usr/bin/env bash
# Services the test suite needs that pip cannot bring. SeaweedFS (S3) and every
# loopback server are started by the test session itself.
#
# Docker (for tests/provision/test_docker_image.py): install Debian's docker.io and
# debootstrap, start dockerd in the background, and build a local base image from Debian
# packages once (no registry can be reached from CI). Every step is bounded in time; if
# Docker cannot start, this says why (in $COMFY_WORKER_CI_STATE/docker-unavailable) and
# carries on: the docker tests then fail with that reason under CI=true (skip on a laptop)
# instead of hanging.
set -uo pipefail

BASE_IMAGE=${COMFY_WORKER_BASE_IMAGE:-comfy-worker-base:bookworm}
DOCKERD_LOG=${DOCKERD_LOG:-/tmp/comfy-worker-dockerd.log}
STATE_DIR=${COMFY_WORKER_CI_STATE:-/tmp/comfy-worker-ci}
mkdir -p "$STATE_DIR"
REASON_FILE="$STATE_DIR/docker-unavailable"
rm -f "$REASON_FILE"

say() { echo "services: $*"; }
give_up() {
  say "docker unavailable: $*"
  echo "$*" >"$REASON_FILE"
  exit 0
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else return 1; fi
}

engine_up() { timeout 10 docker info >/dev/null 2>&1; }

# 1. packages
if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
  say "installing docker.io and debootstrap"
  export DEBIAN_FRONTEND=noninteractive
  as_root timeout 300 apt-get update -q >/dev/null || say "apt-get update failed"
  as_root timeout 600 apt-get install -y -q --no-install-recommends docker.io debootstrap >/dev/null \
    || give_up "apt-get install docker.io debootstrap failed"
fi
command -v docker >/dev/null || give_up "no docker client after install"

# 2. engine
if ! engine_up; then
  say "starting dockerd (log: $DOCKERD_LOG)"
  as_root sh -c "nohup dockerd >'$DOCKERD_LOG' 2>&1 &" || give_up "cannot start dockerd (not root, no sudo)"
  for _ in $(seq 1 60); do
    engine_up && break
    sleep 1
  done
  if ! engine_up; then
    tail -n 20 "$DOCKERD_LOG" 2>/dev/null | sed 's/^/  dockerd: /'
    give_up "dockerd did not answer within 60 s (see $DOCKERD_LOG)"
  fi
fi
say "docker engine up"

# 3. base image made with debootstrap (cached: skipped when the image exists)
if timeout 20 docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  say "base image $BASE_IMAGE present"
  exit 0
fi

mirror=""
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] || continue
  case "$f" in
    *.sources) mirror=$(awk '/^URIs:/ {print $2; exit}' "$f") ;;
    *) mirror=$(awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}' "$f") ;;
  esac
  case "$mirror" in *security*) mirror="" ;; esac
  [ -n "$mirror" ] && break
done
mirror=${mirror:-http://deb.debian.org/debian}

root=$(mktemp -d /tmp/comfy-worker-rootfs.XXXXXX)
trap 'as_root rm -rf "$root"' EXIT
say "debootstrap bookworm from $mirror (about a minute)"
as_root timeout 600 debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,git \
  bookworm "$root" "$mirror" >"$STATE_DIR/debootstrap.log" 2>&1 \
  || { tail -n 20 "$STATE_DIR/debootstrap.log"; give_up "debootstrap failed (see $STATE_DIR/debootstrap.log)"; }
# Package downloads here pass a TLS proxy that only the machine's bundle trusts.
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  as_root cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
fi
as_root rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"*
timeout 300 sh -c "tar -C '$root' -c . | docker import - '$BASE_IMAGE'" >/dev/null \
  || give_up "docker import of the base image failed"
say "base image $BASE_IMAGE built"
