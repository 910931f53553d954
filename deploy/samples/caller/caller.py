#!/usr/bin/env python3
"""caller: invokes cart and mathService through its own Ferry sidecar.

Run it under a sidecar, e.g.:
    ferry run --app-id caller -- python3 caller/caller.py
It uses http://localhost:$DAPR_HTTP_PORT/v1.0/invoke/<app-id>/method/<method>,
prints what came back, and exits 0 only if both calls answered as expected.
Standard library only.
"""
import json
import os
import sys
import urllib.error
import urllib.request


def invoke(port, app_id, method, body=b"", headers=None):
    url = "http://localhost:%s/v1.0/invoke/%s/method/%s" % (port, app_id, method)
    req = urllib.request.Request(url, data=body, method="POST", headers=headers or {})
    print("caller: POST %s" % url, flush=True)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            text = resp.read().decode("utf-8", "replace")
            print("caller: <- %d %s" % (resp.status, text), flush=True)
            return text
    except urllib.error.HTTPError as e:
        text = e.read().decode("utf-8", "replace")
        raise RuntimeError("%s/%s answered %d: %s" % (app_id, method, e.code, text))


def invoke_when_up(port, app_id, method, body=b"", headers=None, wait=None):
    """invoke(), retried while the target is not up yet (started next to this app by
    `ferry run -f`, it may still be starting): CALLER_WAIT_SECONDS, default 0 (no retry)."""
    import time

    wait = float(os.environ.get("CALLER_WAIT_SECONDS", "0")) if wait is None else wait
    deadline = time.monotonic() + wait
    while True:
        try:
            return invoke(port, app_id, method, body, headers)
        except (OSError, RuntimeError) as e:
            if time.monotonic() >= deadline:
                raise
            print("caller: %s/%s not up yet (%s); retrying" % (app_id, method, e), flush=True)
            time.sleep(0.5)


def main():
    port = os.environ.get("DAPR_HTTP_PORT")
    if not port:
        print("caller: DAPR_HTTP_PORT is not set; run me under `ferry run`", file=sys.stderr)
        return 2
    try:
        cart = invoke_when_up(port, "cart", "add")
        if cart != "Added!":
            raise RuntimeError("cart/add: expected 'Added!', got %r" % cart)
        total = invoke_when_up(
            port,
            "mathService",
            "add",
            body=json.dumps({"arg1": 2, "arg2": 3}).encode(),
            headers={"Content-Type": "application/json"},
        )
        if json.loads(total) != 5:
            raise RuntimeError("mathService/add: expected 5, got %r" % total)
    except (OSError, RuntimeError, ValueError) as e:
        print("caller: FAILED: %s" % e, file=sys.stderr, flush=True)
        return 1
    print("caller: OK", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
