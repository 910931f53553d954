#!/usr/bin/env bash
# A Python virtualenv with the Dapr SDK for Python and grpcio, pinned, for the tests that use
# real Dapr clients (`make interop`). Kept in ${FERRY_CACHE:-~/.cache/ferry}/python-clients and
# reused; prints the path of its python3 on stdout.
set -euo pipefail

DAPR_SDK=${DAPR_PYTHON_SDK:-1.19.0}
GRPCIO=${GRPCIO_VERSION:-1.85.4}
CACHE="${FERRY_CACHE:-$HOME/.cache/ferry}"
venv="$CACHE/python-clients/dapr-$DAPR_SDK-grpcio-$GRPCIO"

if [[ ! -x "$venv/bin/python3" ]] || ! "$venv/bin/python3" -c 'import dapr.clients, grpc' 2>/dev/null; then
  printf '[python-clients] dapr %s, grpcio %s into %s\n' "$DAPR_SDK" "$GRPCIO" "$venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "dapr==$DAPR_SDK" "grpcio==$GRPCIO" >&2
fi
echo "$venv/bin/python3"
