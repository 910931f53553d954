#!/usr/bin/env bash
# Part of images/test.sh, run by it inside a fresh network namespace (unshare --net): ferryd from
# its image's root filesystem ROOTFS, with the image's environment (WORK/image.env), as user
# 65532, calls URLs on loopback upstreams (images/test-upstreams.py, certificates in PKI).
# Usage: test-ferryd.sh ROOTFS PKI WORK
set -euo pipefail

fs="$1" pki="$2" work="$3"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mapfile -t image_env <"$work/image.env"

ip link set lo up
python3 "$here/test-upstreams.py" "$pki" upstream.dns.test >"$work/upstreams.log" 2>&1 &
upstreams=$!
ferryd=
trap 'kill $upstreams $ferryd 2>/dev/null || true' EXIT

start_ferryd() {
  env -i "${image_env[@]}" chroot --userspec=65532:65532 "$fs" \
    /ferryd --app-id images-test --ferry-home /tmp/ferry --dapr-listen-addresses 127.0.0.1 \
    >>"$work/ferryd.log" 2>&1 &
  ferryd=$!
  for _ in $(seq 100); do
    curl -fsS -o /dev/null http://127.0.0.1:3500/v1.0/healthz 2>/dev/null && return 0
    sleep 0.1
  done
  echo "ferryd did not become healthy:"
  cat "$work/ferryd.log"
  exit 1
}

stop_ferryd() {
  kill "$ferryd"
  wait "$ferryd" || true
  ferryd=
}

call() { # TARGET_URL WANT_STATUS [WANT_IN_BODY]
  local got
  got="$(curl -sS -m 10 -o "$work/body" -w '%{http_code}' -X POST \
    "http://127.0.0.1:3500/v1.0/invoke/$1/method/echo")"
  if [[ $got != "$2" ]] || ! grep -qF -- "${3:-}" "$work/body"; then
    echo "$1 through ferryd: HTTP $got, want $2${3:+ with "$3"}: $(cat "$work/body")"
    exit 1
  fi
  echo "$1 -> $got $(head -c 160 "$work/body")"
}

# The upstreams are up when their HTTP port answers.
for _ in $(seq 100); do
  curl -fsS -o /dev/null -X POST http://127.0.0.1:8080/ 2>/dev/null && break
  sleep 0.1
done

start_ferryd
user="$(ps -o user= -p "$ferryd")"
[[ $user == 65532 ]] || { echo "ferryd runs as '$user', want 65532"; exit 1; }
echo "ferryd runs as user $user"
call http://upstream.hosts.test:8080 200 "upstream ok"
call http://upstream.dns.test:8080 200 "upstream ok"
call http://nosuch.dns.test:8080 500 nosuch.dns.test
# Verification is on: the test CA is not in the image's bundle yet.
call https://upstream.hosts.test:8443 500 certificate
cat "$pki/ca.crt" >>"$fs/etc/ssl/certs/ca-certificates.crt"
stop_ferryd
start_ferryd
call https://upstream.hosts.test:8443 200 "upstream ok"
