#!/usr/bin/env bash
# What one call costs each ferryd of a pair, in CPU, writes, reads, epoll waits and context
# switches: the figures behind "Where ferryd's time goes" in BENCHMARKS.md.
#
#   bash bench/percall.sh [FERRYD_DIR]    # default: target/release (make bench builds it)
#
# Starts the benchmark app and two ferryd (caller and callee) pinned to CPU 1, drives the caller
# with oha at 1000 rps, 16 connections, 1 KiB POST from CPU 0, and counts with `perf stat` over
# 5 s on each ferryd. Needs root (tracepoints); installs perf (Debian: linux-perf) when missing;
# oha comes from make bench's cache. Prints one line per ferryd, each figure per call.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${1:-$root/target/release}"
oha="${FERRY_CACHE:-$HOME/.cache/ferry}/oha/1.16.0/bin/oha"
command -v perf >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null; }
for tool in perf taskset "$oha" "$bin/ferryd" "$bin/ferry-bench"; do
  command -v "$tool" >/dev/null || { echo "percall: $tool is missing (make bench installs oha and builds the rest)" >&2; exit 1; }
done

work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
app_port=$(free_port); callee_http=$(free_port); caller_http=$(free_port)
export FERRY_HOME="$work/home"
mkdir -p "$FERRY_HOME/registry"
head -c 1024 /dev/zero | tr '\0' x > "$work/body"

taskset -c 1 "$bin/ferry-bench" app --port "$app_port" > "$work/app.log" 2>&1 & pids+=($!)
taskset -c 1 "$bin/ferryd" --app-id percall-callee --app-port "$app_port" \
  --dapr-http-port "$callee_http" --dapr-grpc-port 0 --dapr-listen-addresses 127.0.0.1 > "$work/callee.log" 2>&1 &
callee=$!; pids+=("$callee")
taskset -c 1 "$bin/ferryd" --app-id percall-caller \
  --dapr-http-port "$caller_http" --dapr-grpc-port 0 --dapr-listen-addresses 127.0.0.1 > "$work/caller.log" 2>&1 &
caller=$!; pids+=("$caller")

url="http://127.0.0.1:$caller_http/v1.0/invoke/percall-callee/method/echo"
for _ in $(seq 100); do
  [[ "$(curl -s -o /dev/null -w '%{http_code}' -X POST -d x "$url")" == 200 ]] && break
  sleep 0.1
done
[[ "$(curl -s -o /dev/null -w '%{http_code}' -X POST -d x "$url")" == 200 ]] \
  || { echo "percall: the pair did not come up; logs in $work" >&2; trap - EXIT; exit 1; }

taskset -c 0 "$oha" --no-tui -z 9s -q 1000 -c 16 -m POST -D "$work/body" "$url" > /dev/null &
load=$!
sleep 2
events=task-clock,context-switches,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_writev,syscalls:sys_enter_recvfrom
stats=()
for p in "$caller" "$callee"; do
  perf stat -x, -e "$events" -p "$p" -o "$work/stat.$p" -- sleep 5 &
  stats+=($!)
done
wait "${stats[@]}" "$load"
for p in "$caller" "$callee"; do
  printf '%s per call (1000 rps x 5 s):' "$([[ $p == "$caller" ]] && echo caller || echo callee)"
  awk -F, '$1 ~ /^[0-9.]+$/ { n = $3; sub("syscalls:sys_enter_", "", n);
    if (n == "task-clock") printf " cpu=%.1fus", $1 * 1000 / 5000; else printf " %s=%.2f", n, $1 / 5000 }' "$work/stat.$p"
  echo
done
