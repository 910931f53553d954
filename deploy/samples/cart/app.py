"""cart: the Flask sample app from Dapr's service invocation docs.

POST /add answers the text "Added!"; GET /healthz answers 200.
Listens on 127.0.0.1:$APP_PORT (default 5000).
"""
import os
import signal
import sys

from flask import Flask, request

app = Flask(__name__)


@app.route("/add", methods=["POST"])
def add():
    print(
        "cart: %s %s from dapr-caller-app-id=%s body=%r"
        % (
            request.method,
            request.full_path.rstrip("?"),
            request.headers.get("dapr-caller-app-id", "-"),
            request.get_data(as_text=True),
        ),
        flush=True,
    )
    return "Added!", 200, {"Content-Type": "text/plain; charset=utf-8"}


@app.route("/healthz", methods=["GET"])
def healthz():
    return "", 200


if __name__ == "__main__":
    # Exit cleanly (status 0) when `ferry run` passes on SIGTERM.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    port = int(os.environ.get("APP_PORT", "5000"))
    print("cart: listening on 127.0.0.1:%d" % port, file=sys.stderr, flush=True)
    app.run(host="127.0.0.1", port=port)
