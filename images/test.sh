#!/usr/bin/env bash
# `make images-test` (part of `make test`): the images/*.Dockerfile build offline here, with no
# Docker engine, and what they build is right.
#
#  1. cargo builds the static binaries (images/build.sh --binaries; cargo may fetch crates).
#  2. images/build.sh builds the three images with buildah inside a network
#     namespace of its own, with no route anywhere: a pull would fail, so none happens.
#  3. Each image: runs as 65532:65532, its entrypoint is its binary, its files are exactly the
#     binary and the CA bundle, and the binary starts as user 65532 in a chroot of the image's
#     root filesystem, where there is no dynamic loader (so it is static).
#  4. ferryd from its image, with the image's environment, as user 65532, inside a network
#     namespace of its own: URL calls resolve a name through /etc/hosts and one through DNS
#     (static glibc resolves with no NSS modules to load), and an https:// call verifies the
#     server against the image's CA bundle: refused with the bundle as built, accepted once a
#     test CA is appended to it.
#
# Installs buildah with apt when it is missing. Everything else lives in a temporary directory
# (the image store included) that is removed on exit. Needs root.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
binaries=(ferryd ferry-operator ferry-injector)
registry=ghcr.io/ferry-dev
tag=offline-test

say() { echo "images-test: $*" >&2; }
die() { say "FAILED: $*"; exit 1; }

[[ $EUID -eq 0 ]] || die "needs root (apt-get, network namespaces, chroot)"
for tool in curl openssl python3 unshare chroot ip; do
  command -v "$tool" >/dev/null || die "$tool is missing"
done
# buildah, not podman: the checks below use its `from`/`mount` and its image inspection.
if ! command -v buildah >/dev/null; then
  say "installing buildah (Debian package)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends buildah >/dev/null
fi
builder=buildah

work="$(mktemp -d "${TMPDIR:-/tmp}/ferry-images-test.XXXXXX")"
# The image store is in $work too, and the vfs driver mounts nothing: removing $work is enough.
trap 'rm -rf "$work"' EXIT
# A private image store: vfs works on any file system, and nothing outside $work is touched.
cat >"$work/storage.conf" <<EOF
[storage]
driver = "vfs"
graphroot = "$work/storage"
runroot = "$work/run"
EOF
export CONTAINERS_STORAGE_CONF="$work/storage.conf"

# 1. Binaries (the only step that may use the network).
started=$SECONDS
bash images/build.sh --binaries >/dev/null
say "static binaries built in $((SECONDS - started)) s"

# 2. The images, with no network at all.
started=$SECONDS
unshare --net env CARGO_NET_OFFLINE=true IMAGE_BUILDER="$builder" IMAGE_REGISTRY="$registry" \
  IMAGE_TAG="$tag" bash images/build.sh >"$work/build.log" 2>&1 ||
  { cat "$work/build.log" >&2; die "images/build.sh failed offline (log above)"; }
say "three images built offline with $builder in $((SECONDS - started)) s"

# 3. Each image's config, files, and a start of its binary as its user.
rootfs() { # IMAGE DIR: copies the image's root filesystem into DIR
  local ctr
  ctr="$("$builder" from --pull=never "$1")"
  mkdir -p "$2"
  cp -a "$("$builder" mount "$ctr")/." "$2/"
  "$builder" umount "$ctr" >/dev/null
  "$builder" rm "$ctr" >/dev/null
}
for bin in "${binaries[@]}"; do
  image="$registry/$bin:$tag"
  config="$("$builder" inspect --type image --format '{{.OCIv1.Config.User}}|{{.OCIv1.Config.Entrypoint}}' "$image")"
  [[ $config == "65532:65532|[/$bin]" ]] || die "$image: user|entrypoint is '$config', want '65532:65532|[/$bin]'"
  rootfs "$image" "$work/$bin"
  files="$(cd "$work/$bin" && find . -mindepth 1 \( -type f -o -type l \) -printf '%P\n' | sort | tr '\n' ' ')"
  want="$(printf '%s\n' "$bin" etc/ssl/certs/ca-certificates.crt | sort | tr '\n' ' ')"
  [[ $files == "$want" ]] || die "$image holds '$files', want only $bin and the CA bundle"
  certs="$(grep -c 'BEGIN CERTIFICATE' "$work/$bin/etc/ssl/certs/ca-certificates.crt")"
  ((certs > 50)) || die "$image: the CA bundle has $certs certificates"
  help="$(chroot --userspec=65532:65532 "$work/$bin" "/$bin" --help 2>&1)" ||
    die "$image: /$bin --help as 65532 in the image's root failed: $help"
  grep -q "^Usage: $bin" <<<"$help" || die "$image: unexpected --help output: $help"
  size="$("$builder" images --format '{{.Size}}' "$image")"
  say "$image: $size, user 65532:65532, files: $files(CA bundle: $certs certificates), starts"
done

# 4. ferryd's name resolution and TLS trust inside its image.
fs="$work/ferryd"
mkdir -m 1777 "$fs/tmp" # ferryd's standalone registry (--ferry-home), as a volume would be
printf '127.0.0.1 localhost\n127.0.0.1 upstream.hosts.test\n' >"$fs/etc/hosts"
printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' >"$fs/etc/resolv.conf"
pki="$work/pki"
mkdir "$pki"
(
  cd "$pki"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=ferry-images-test-ca -keyout ca.key -out ca.crt
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj /CN=upstream.hosts.test -keyout server.key -out server.csr
  printf 'subjectAltName=DNS:upstream.hosts.test\nextendedKeyUsage=serverAuth\n' >server.ext
  openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
    -extfile server.ext -out server.crt
) >"$work/pki.log" 2>&1 || { cat "$work/pki.log" >&2; die "openssl could not make the test certificates"; }
"$builder" inspect --type image --format '{{range .OCIv1.Config.Env}}{{.}}{{"\n"}}{{end}}' \
  "$registry/ferryd:$tag" | sed '/^$/d' >"$work/image.env"
# In a network namespace of its own, the test's ports and its DNS server collide with nothing.
unshare --net bash images/test-ferryd.sh "$fs" "$pki" "$work" >"$work/run.log" 2>&1 || {
  cat "$work/run.log" "$work/upstreams.log" >&2
  die "ferryd in its image (logs above)"
}
sed 's/^/images-test: /' "$work/run.log" >&2
say "ferryd in its image, as 65532: names through /etc/hosts and DNS, TLS trust from its CA bundle"
