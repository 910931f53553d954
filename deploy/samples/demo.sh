#!/usr/bin/env bash
# Ferry quick-start demo: the script behind `make demo` (and, with --check, the
# samples part of `make test`).
#
#   bash deploy/samples/demo.sh           # run the demo, print every call and its answer
#   bash deploy/samples/demo.sh --check   # same, but assert every answer; non-zero on mismatch
#   bash deploy/samples/demo.sh --deps    # only step 1 (what the Tier-1 tests' sample images run)
#
# What it does:
#   1. installs the samples' dependencies into git-ignored folders, only when missing or
#      out of date: a venv in cart/.venv (Flask) and `npm ci` in mathService/node_modules;
#   2. builds ferry (`cargo build -p ferry-cli`) unless FERRY_BIN names a ferry binary;
#   3. uses a private, temporary FERRY_HOME (never ~/.ferry);
#   4. starts `cart` (Flask) and `mathService` (Express) under `ferry run` and waits until
#      both sidecars' /v1.0/healthz answer 204;
#   5. performs each way to invoke a service with curl, then `ferry list`, `ferry invoke`
#      and the `caller` app under `ferry run`; then all three as one Multi-App Run
#      (`ferry run -f dapr.yaml`, app ports 5020 and 3020), stopped with Ctrl-C (SIGINT);
#   6. stops every `ferry run` with SIGTERM and removes FERRY_HOME on exit, even on failure
#      or Ctrl-C.
#
# Ports (override through the environment, e.g. when something else already listens):
#   DEMO_CART_APP_PORT     5010  cart app (Flask)
#   DEMO_MATH_APP_PORT     3010  mathService app (Express)
#   DEMO_CART_HTTP_PORT    3510  cart's sidecar HTTP port
#   DEMO_MATH_HTTP_PORT    3511  mathService's sidecar HTTP port
#   DEMO_CALLER_HTTP_PORT  3512  caller's sidecar HTTP port
# The defaults deliberately avoid Dapr's 3500/5000/3000 so the demo does not collide with
# a real Dapr or other dev servers. Internal (sidecar-to-sidecar) ports are picked freely.
# Other knobs: FERRY_BIN (use this ferry binary, skip the build), DEMO_TIMEOUT (seconds to
# wait for the sidecars, default 60).
#
# Needs: bash, curl, python3 with the venv module (Debian: python3-venv), node + npm, and
# cargo unless FERRY_BIN is set. Network access is needed the first time (pip, npm).
set -euo pipefail

SAMPLES="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$SAMPLES/../.." && pwd)"

CHECK=0
DEPS_ONLY=0
case "${1:-}" in
  --check) CHECK=1 ;;
  --deps) DEPS_ONLY=1 ;;
  "") ;;
  -h | --help)
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
    exit 0
    ;;
  *)
    echo "demo.sh: unknown argument '$1' (use --check, --deps or nothing)" >&2
    exit 2
    ;;
esac

CART_APP_PORT="${DEMO_CART_APP_PORT:-5010}"
MATH_APP_PORT="${DEMO_MATH_APP_PORT:-3010}"
CART_HTTP_PORT="${DEMO_CART_HTTP_PORT:-3510}"
MATH_HTTP_PORT="${DEMO_MATH_HTTP_PORT:-3511}"
CALLER_HTTP_PORT="${DEMO_CALLER_HTTP_PORT:-3512}"
TIMEOUT="${DEMO_TIMEOUT:-60}"

# ---------------------------------------------------------------------------- helpers

bold() { if [[ -t 1 ]]; then printf '\033[1m%s\033[0m\n' "$*"; else printf '%s\n' "$*"; fi; }
step() { printf '\n'; bold "== $*"; }
die() {
  printf 'demo.sh: FAILED: %s\n' "$*" >&2
  exit 1
}

# Print a command the way a user would type it: plain words as they are, others in '...'.
show() {
  local out="" arg
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./:@=,+%-]+$ ]]; then
      out+="$arg "
    else
      out+="'${arg//\'/\'\\\'\'}' "
    fi
  done
  printf '$ %s\n' "${out% }"
}

# check WHAT EXPECTED ACTUAL: in --check mode, fail unless EXPECTED == ACTUAL.
check() {
  if [[ "$CHECK" == 1 && "$2" != "$3" ]]; then
    die "$1: expected '$2', got '$3'"
  fi
}

need() {
  command -v "$1" >/dev/null 2>&1 || die "'$1' is not installed ($2)"
}

port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# ---------------------------------------------------------------------------- cleanup

FERRY_HOME=""
PIDS=()   # every background `ferry run`
NAMES=()  # ... and its app ID, for messages and logs

show_logs() {
  local i log
  for i in "${!NAMES[@]}"; do
    log="$FERRY_HOME/${NAMES[$i]}.log"
    [[ -f "$log" ]] || continue
    printf '\n--- last lines of %s (ferry run + app output) ---\n' "${NAMES[$i]}" >&2
    tail -n 25 "$log" >&2
  done
}

cleanup() {
  local status=$? pid i
  trap - EXIT INT TERM
  if ((status != 0 && status < 128)) && [[ -n "$FERRY_HOME" ]]; then
    show_logs
  fi
  if ((${#PIDS[@]})); then
    printf '\n' >&2
    bold "== Stopping: ${NAMES[*]}" >&2
    for pid in "${PIDS[@]}"; do
      kill -TERM "$pid" 2>/dev/null || true
    done
    # Give each sidecar (and its app) up to 10 s to drain and exit, then force it.
    for i in $(seq 1 100); do
      for pid in "${PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
          sleep 0.1
          continue 2
        fi
      done
      break
    done
    for i in "${!PIDS[@]}"; do
      pid="${PIDS[$i]}"
      if kill -0 "$pid" 2>/dev/null; then
        echo "demo.sh: ${NAMES[$i]} (pid $pid) ignored SIGTERM; killing it" >&2
        if command -v pkill >/dev/null 2>&1; then pkill -KILL -P "$pid" 2>/dev/null || true; fi
        kill -KILL "$pid" 2>/dev/null || true
      fi
      wait "$pid" 2>/dev/null || true
    done
  fi
  if [[ -n "$FERRY_HOME" && -d "$FERRY_HOME" ]]; then
    rm -rf "$FERRY_HOME"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------- 1. dependencies

step "Checking prerequisites"
need curl "needed to call the sidecars"
need python3 "needed for the cart and caller samples"
need node "needed for the mathService sample"
need npm "needed to install the mathService sample's dependencies"
for port in "$CART_APP_PORT" "$MATH_APP_PORT" "$CART_HTTP_PORT" "$MATH_HTTP_PORT" "$CALLER_HTTP_PORT"; do
  if [[ $DEPS_ONLY == 0 ]] && port_in_use "$port"; then
    die "port $port is already in use; pick other ports with DEMO_CART_APP_PORT, DEMO_MATH_APP_PORT, DEMO_CART_HTTP_PORT, DEMO_MATH_HTTP_PORT, DEMO_CALLER_HTTP_PORT"
  fi
done
echo "ok: curl, python3, node $(node --version), npm $(npm --version 2>/dev/null)"

# A stamp holding the checksum of the dependency list tells whether an install is current.
fingerprint() { cksum <"$1" | tr -d ' \t'; }

VENV="$SAMPLES/cart/.venv"
VENV_STAMP="$VENV/.ferry-demo-requirements"
want="$(fingerprint "$SAMPLES/cart/requirements.txt")"
if [[ -x "$VENV/bin/python" && -f "$VENV_STAMP" && "$(cat "$VENV_STAMP")" == "$want" ]]; then
  echo "ok: cart/.venv is up to date"
else
  step "Installing cart's dependencies into cart/.venv"
  python3 -m venv --clear "$VENV" ||
    die "could not create a venv with 'python3 -m venv' (on Debian/Ubuntu: apt-get install python3-venv)"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$SAMPLES/cart/requirements.txt" ||
    die "pip install -r cart/requirements.txt failed"
  printf '%s\n' "$want" >"$VENV_STAMP"
fi

MODULES="$SAMPLES/mathService/node_modules"
NODE_STAMP="$MODULES/.ferry-demo-package-lock"
want="$(fingerprint "$SAMPLES/mathService/package-lock.json")"
if [[ -f "$NODE_STAMP" && "$(cat "$NODE_STAMP")" == "$want" ]]; then
  echo "ok: mathService/node_modules is up to date"
else
  step "Installing mathService's dependencies (npm ci)"
  (cd "$SAMPLES/mathService" && npm ci --no-audit --no-fund --loglevel=error) ||
    die "npm ci in deploy/samples/mathService failed"
  printf '%s\n' "$want" >"$NODE_STAMP"
fi

if [[ $DEPS_ONLY == 1 ]]; then
  exit 0
fi

# ---------------------------------------------------------------------------- 2. ferry

if [[ -n "${FERRY_BIN:-}" ]]; then
  FERRY="$(cd "$(dirname "$FERRY_BIN")" && pwd)/$(basename "$FERRY_BIN")"
  [[ -x "$FERRY" ]] || die "FERRY_BIN=$FERRY_BIN is not an executable file"
  echo "ok: using FERRY_BIN=$FERRY"
else
  step "Building ferry (cargo build -p ferry-cli)"
  need cargo "needed to build ferry; or set FERRY_BIN to a built ferry binary"
  (cd "$ROOT" && cargo build --quiet -p ferry-cli) || die "cargo build -p ferry-cli failed"
  FERRY="${CARGO_TARGET_DIR:-$ROOT/target}/debug/ferry"
fi

# ---------------------------------------------------------------------------- 3 + 4. start apps

FERRY_HOME="$(mktemp -d "${TMPDIR:-/tmp}/ferry-demo.XXXXXX")"
export FERRY_HOME

# start NAME DIR ferry-run-args...: run `ferry run` in DIR in the background; its output
# (uncoloured) goes to $FERRY_HOME/NAME.log, shown when something fails.
start() {
  local name="$1" dir="$2"
  shift 2
  show ferry run "$@"
  (cd "$dir" && NO_COLOR=1 exec "$FERRY" run "$@") >"$FERRY_HOME/$name.log" 2>&1 &
  PIDS+=("$!")
  NAMES+=("$name")
}

wait_healthy() {
  local name="$1" port="$2" pid="$3" deadline=$((SECONDS + TIMEOUT)) code
  while :; do
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$port/v1.0/healthz" || true)"
    [[ "$code" == 204 ]] && break
    kill -0 "$pid" 2>/dev/null || die "ferry run for $name exited before its sidecar became healthy"
    ((SECONDS < deadline)) ||
      die "$name's sidecar (http://127.0.0.1:$port/v1.0/healthz) did not answer 204 within ${TIMEOUT}s (last status: ${code:-none})"
    sleep 0.2
  done
  echo "ok: $name's sidecar on port $port is healthy"
}

step "Starting cart and mathService under ferry run (FERRY_HOME=$FERRY_HOME)"
start cart "$SAMPLES/cart" --app-id cart --app-port "$CART_APP_PORT" --dapr-http-port "$CART_HTTP_PORT" \
  -- .venv/bin/python app.py
start mathService "$SAMPLES/mathService" --app-id mathService --app-port "$MATH_APP_PORT" \
  --dapr-http-port "$MATH_HTTP_PORT" -- node app.js
wait_healthy cart "$CART_HTTP_PORT" "${PIDS[0]}"
wait_healthy mathService "$MATH_HTTP_PORT" "${PIDS[1]}"

# ---------------------------------------------------------------------------- 5. calls

BODY="$FERRY_HOME/body"

# call TITLE EXPECTED_STATUS EXPECTED_BODY curl-args...: print and run one curl call.
# EXPECTED_BODY "" means "don't compare the body" (the caller compares it itself).
call() {
  local title="$1" want_status="$2" want_body="$3" status body
  shift 3
  step "$title"
  show curl "$@"
  status="$(curl -sS -o "$BODY" -w '%{http_code}' --max-time 10 "$@")" || die "curl $* failed"
  body="$(cat "$BODY")"
  printf '%s\n(HTTP %s)\n' "$body" "$status"
  check "$title: HTTP status" "$want_status" "$status"
  if [[ -n "$want_body" ]]; then check "$title: body" "$want_body" "$body"; fi
}

# Calls go through the *other* app's sidecar, so they really travel sidecar to sidecar.
call "1. Invoke cart by URL path (via mathService's sidecar)" 200 'Added!' \
  -X POST "localhost:$MATH_HTTP_PORT/v1.0/invoke/cart/method/add"

call "2. Invoke cart with the dapr-app-id header" 200 'Added!' \
  -X POST "localhost:$MATH_HTTP_PORT/add" -H 'dapr-app-id: cart'

call "3. Invoke cart with basic auth (user dapr-app-id)" 200 'Added!' \
  -X POST "http://dapr-app-id:cart@localhost:$MATH_HTTP_PORT/add"

call "4. Invoke cart by app-id.namespace (cart.default)" 200 'Added!' \
  -X POST "localhost:$MATH_HTTP_PORT/v1.0/invoke/cart.default/method/add"

call "5. Invoke mathService with JSON (via cart's sidecar)" 200 '5' \
  -X POST "localhost:$CART_HTTP_PORT/v1.0/invoke/mathService/method/add" \
  -H 'content-type: application/json' -d '{"arg1":2,"arg2":3}'

call "6. Invoke an app that does not exist: Dapr's error JSON" 500 '' \
  -X POST "localhost:$CART_HTTP_PORT/v1.0/invoke/nosuchapp/method/add"
if [[ "$CHECK" == 1 ]]; then
  code="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("errorCode"))' "$BODY" 2>/dev/null || true)"
  check "6. unknown app: errorCode" ERR_DIRECT_INVOKE "$code"
fi

step "7. ferry list"
show ferry list
list="$("$FERRY" list)" || die "ferry list failed"
printf '%s\n' "$list"
for app in cart mathService; do
  if [[ "$CHECK" == 1 ]] && ! awk -v app="$app" '$1 == app { found = 1 } END { exit !found }' <<<"$list"; then
    die "ferry list does not show $app"
  fi
done

step "8. ferry invoke"
show ferry invoke --app-id cart --method add --verb POST
out="$("$FERRY" invoke --app-id cart --method add --verb POST)" || die "ferry invoke exited with status $?"
printf '%s\n' "$out"
check "8. ferry invoke: output" 'Added!' "$out"

step "9. The caller app under ferry run (it calls cart and mathService through its sidecar)"
show ferry run --app-id caller --dapr-http-port "$CALLER_HTTP_PORT" -- python3 caller/caller.py
rc=0
(cd "$SAMPLES" && "$FERRY" run --app-id caller --dapr-http-port "$CALLER_HTTP_PORT" -- python3 caller/caller.py) || rc=$?
echo "(exit code $rc)"
check "9. caller: exit code" 0 "$rc"

step "What cart saw (its log; note dapr-caller-app-id, set by the calling sidecar)"
grep '^cart:' "$FERRY_HOME/cart.log" || true
if [[ "$CHECK" == 1 ]]; then
  grep -q 'dapr-caller-app-id=caller ' "$FERRY_HOME/cart.log" ||
    die "cart's log does not show a request with dapr-caller-app-id=caller"
fi

step "10. The same apps as one Multi-App Run: ferry run -f dapr.yaml (Dapr's run file)"
show ferry run -f dapr.yaml
for port in 5020 3020; do
  port_in_use "$port" && die "port $port (an app port in deploy/samples/dapr.yaml) is already in use"
done
MULTI_LOG="$FERRY_HOME/multi.log"
(cd "$SAMPLES" && NO_COLOR=1 exec "$FERRY" run -f dapr.yaml) >"$MULTI_LOG" 2>&1 &
MULTI_PID=$!
PIDS+=("$MULTI_PID")
NAMES+=("multi")
deadline=$((SECONDS + TIMEOUT))
until grep -q '^ferry: app "caller" exited' "$MULTI_LOG"; do
  kill -0 "$MULTI_PID" 2>/dev/null || die "ferry run -f exited early"
  ((SECONDS < deadline)) || die "the caller did not finish within ${TIMEOUT}s"
  sleep 0.2
done
grep -E '^(== APP - caller ==|ferry: )' "$MULTI_LOG"
check "10. caller in the run file" 'ferry: app "caller" exited (exit code 0)' \
  "$(grep '^ferry: app "caller" exited' "$MULTI_LOG")"
show kill -INT "$MULTI_PID"
kill -INT "$MULTI_PID"
rc=0
wait "$MULTI_PID" || rc=$?
echo "(exit code $rc)"
check "10. ferry run -f after Ctrl-C: exit code" 0 "$rc"
for port in 5020 3020; do
  if [[ "$CHECK" == 1 ]] && port_in_use "$port"; then
    die "after Ctrl-C, something still listens on app port $port"
  fi
done
tail -n 4 "$MULTI_LOG"

printf '\n'
if [[ "$CHECK" == 1 ]]; then
  bold "demo.sh --check: all samples answered as expected"
else
  bold "Done: every call above went through Ferry sidecars."
fi
