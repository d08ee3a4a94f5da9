"""A WSGI app served by gunicorn in the python preset's test: / and /health."""

import os
from pathlib import Path

VERSION = (Path(__file__).resolve().parent.parent / "VERSION").read_text().strip()
COLOUR = os.environ.get("BLUEGREEN_COLOR", "none")


def application(environ, start_response):
    if environ.get("PATH_INFO") == "/health":
        body = b"ok\n"
    else:
        body = f"hello from {VERSION} ({COLOUR}) pid {os.getpid()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body))),
                              ("X-App-Version", VERSION)])
    return [body]
