#!/usr/bin/env bash
# Builds Dapr's own sidecar and CA, daprd and sentry, from the Go module proxy into a cache
# outside the repo: ${FERRY_CACHE:-~/.cache/ferry}/dapr/<version>/bin. They are the reference
# Ferry is checked against (Sentry interop in `make test`, the daprd pair in `make bench`).
# Prints the bin directory on stdout; binaries already built are reused.
#
# github.com/dapr/dapr cannot be `go install`ed: its go.mod has replace directives. It is built
# as the main module from its own published source (the module zip, go.sum included).
set -euo pipefail

DAPR_VERSION=${DAPR_VERSION:-v1.16.0}
CACHE="${FERRY_CACHE:-$HOME/.cache/ferry}"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-buildvcs=false -mod=mod"

log() { printf '[dapr] %s\n' "$*" >&2; }

command -v go >/dev/null || { log "go is not installed; building Dapr needs it"; exit 1; }

want=("$@")
((${#want[@]})) || want=(sentry daprd)
out="$CACHE/dapr/$DAPR_VERSION/bin"
missing=()
for b in "${want[@]}"; do
  case $b in sentry | daprd) ;; *) log "unknown binary '$b' (sentry or daprd)"; exit 2 ;; esac
  [[ -x "$out/$b" ]] || missing+=("$b")
done
if ((${#missing[@]} == 0)); then
  log "${want[*]} $DAPR_VERSION: cached in $out"
  echo "$out"
  exit 0
fi

src="$CACHE/dapr/$DAPR_VERSION/src"
if [[ ! -f "$src/go.mod" ]]; then
  log "dapr $DAPR_VERSION: fetching the module source"
  dir=$(go mod download -json "github.com/dapr/dapr@$DAPR_VERSION" |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("Dir") or sys.exit(d.get("Error","no Dir")))')
  mkdir -p "$(dirname "$src")"
  rm -rf "$src.tmp"
  cp -r "$dir" "$src.tmp"
  chmod -R u+w "$src.tmp"
  rm -rf "$src"
  mv "$src.tmp" "$src"
fi
mkdir -p "$out"
for b in "${missing[@]}"; do
  log "$b $DAPR_VERSION: building (minutes the first time)"
  (cd "$src" && go build -trimpath -ldflags "-s -w -X github.com/dapr/dapr/pkg/buildinfo.version=${DAPR_VERSION#v}" -tags stablecomponents -o "$out/$b.tmp" "./cmd/$b")
  mv "$out/$b.tmp" "$out/$b"
  log "$b $DAPR_VERSION: built into $out"
done
echo "$out"
