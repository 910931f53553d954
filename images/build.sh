#!/usr/bin/env bash
# `make images`: builds the three images, $IMAGE_REGISTRY/{ferryd,ferry-operator,ferry-injector}:$IMAGE_TAG,
# from images/<binary>.Dockerfile.
#
#   IMAGE_BUILDER   docker, podman or buildah. Default: docker when `docker info` answers (a
#                   Docker engine runs), else podman, else buildah.
#   IMAGE_REGISTRY  default ghcr.io/ferry-dev (the injector's default sidecar image lives there)
#   IMAGE_TAG       default dev
#
# docker: each Dockerfile's default target; its `build` stage runs cargo in the Rust image
#   (context: the repository root, trimmed by .dockerignore).
# podman, buildah (offline): cargo builds static binaries here first (glibc linked statically,
#   into target/<host triple>/release), then each image is built from the Dockerfile's
#   `prebuilt` target, with a context of just that binary and the host's CA bundle. Nothing is
#   pulled: the base is `scratch`. `images/build.sh --binaries` stops after cargo.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
CARGO="${CARGO:-cargo}"
registry="${IMAGE_REGISTRY:-ghcr.io/ferry-dev}"
tag="${IMAGE_TAG:-dev}"
binaries=(ferryd ferry-operator ferry-injector)
ca_bundle="${FERRY_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"

die() { echo "images: $*" >&2; exit 1; }

# Static release binaries for the host's triple. An explicit --target keeps RUSTFLAGS off build
# scripts and proc macros, and keeps these artifacts apart from target/release.
build_binaries() {
  local triple
  triple="$(rustc -vV | sed -n 's/^host: //p')"
  [[ -n $triple ]] || die "cannot read the host triple from 'rustc -vV'"
  RUSTFLAGS="-C target-feature=+crt-static" "$CARGO" build --release --locked --target "$triple" \
    "${binaries[@]/#/--bin=}" >&2
  echo "$root/target/$triple/release"
}

pick_builder() {
  if [[ -n ${IMAGE_BUILDER:-} ]]; then
    echo "$IMAGE_BUILDER"
  elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    echo docker
  elif command -v podman >/dev/null; then
    echo podman
  elif command -v buildah >/dev/null; then
    echo buildah
  else
    die "no image builder: start a Docker engine, or install podman or buildah (apt-get install buildah)"
  fi
}

if [[ ${1:-} == --binaries ]]; then
  build_binaries
  exit 0
fi
[[ $# -eq 0 ]] || die "usage: images/build.sh [--binaries]"

builder="$(pick_builder)"
case "$builder" in
  docker)
    docker info >/dev/null 2>&1 || die "IMAGE_BUILDER=docker, but 'docker info' fails: is the Docker engine running?"
    for bin in "${binaries[@]}"; do
      echo "images: docker build $registry/$bin:$tag" >&2
      DOCKER_BUILDKIT=1 docker build -f "images/$bin.Dockerfile" -t "$registry/$bin:$tag" .
    done
    docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -F ":$tag" | grep -F "$registry/" >&2 || true
    ;;
  podman | buildah)
    command -v "$builder" >/dev/null || die "$builder is not installed (apt-get install $builder)"
    [[ -r $ca_bundle ]] || die "no CA bundle at $ca_bundle (apt-get install ca-certificates, or set FERRY_CA_BUNDLE)"
    out="$(build_binaries)"
    context="$(mktemp -d "${TMPDIR:-/tmp}/ferry-images.XXXXXX")"
    trap 'rm -rf "$context"' EXIT
    cp "$ca_bundle" "$context/ca-certificates.crt"
    for bin in "${binaries[@]}"; do
      cp "$out/$bin" "$context/$bin"
      echo "images: $builder build --target prebuilt $registry/$bin:$tag" >&2
      # --pull=never: the offline promise, checked; no RUN step, so no runtime is needed.
      "$builder" build --pull=never --target prebuilt -f "images/$bin.Dockerfile" \
        -t "$registry/$bin:$tag" "$context"
      rm "$context/$bin"
    done
    "$builder" images --format '{{.Name}}:{{.Tag}}  {{.Size}}' | grep -F ":$tag" | grep -F "$registry/" >&2 || true
    ;;
  *) die "IMAGE_BUILDER must be docker, podman or buildah, not '$builder'" ;;
esac
