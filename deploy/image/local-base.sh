#!/usr/bin/env bash
# A local stand-in for the official python:3.11-slim-bookworm, for machines that reach package registries but no
# container registry (the tests, CI): Debian bookworm by debootstrap with Debian's Python 3.11 (python3, venv and
# `python`), imported into buildah's storage. Needs root, debootstrap and buildah (make tools).
# The root filesystem is cached as a tarball outside the repository; the image is made only when missing. Both stay
# as they are (no security updates) until removed: rm -r /var/cache/titok-serve && buildah rmi <the image below>
# Prints the image's name, for: buildah bud --build-arg PYTHON_IMAGE="$(deploy/image/local-base.sh)" .
set -euo pipefail
IMAGE=${TITOK_BASE_IMAGE:-localhost/titok-serve/python:3.11-bookworm-local}
CACHE=${TITOK_CACHE_DIR:-/var/cache/titok-serve}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
TARBALL=$CACHE/bookworm-python3.tar

if buildah inspect --type image "$IMAGE" >/dev/null 2>&1; then
  echo "$IMAGE"
  exit 0
fi
if [ ! -s "$TARBALL" ]; then
  mkdir -p "$CACHE"
  root=$(mktemp -d "$CACHE/rootfs.XXXXXX")
  debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3 bookworm "$root" "$MIRROR" >&2
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*  # the image needs no apt caches
  tar --numeric-owner -C "$root" -cf "$TARBALL.part" . && mv "$TARBALL.part" "$TARBALL"
  rm -rf --one-file-system "$root"
fi
ctr=$(buildah from scratch)
buildah add "$ctr" "$TARBALL" / >/dev/null
buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
  --cmd python3 --label org.opencontainers.image.title="Debian bookworm + python3 (debootstrap)" "$ctr"
buildah commit --rm --quiet "$ctr" "$IMAGE" >/dev/null
echo "$IMAGE"
