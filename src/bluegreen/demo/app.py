"""bluegreen's sample app: stdlib only. Listens on $BLUEGREEN_BIND (127.0.0.1):$PORT.

GET /health -> 200 "ok"; GET / -> "hello from <version> (<colour>)". The version comes
from the VERSION file next to this script. A MODE file, if present, makes a deliberately
broken release: "exit" (exits at start), "unhealthy" (/health answers 500), "slow-stop"
(keeps serving for 1.5 s after SIGTERM, like a node that takes its time to shut down).
SIGTERM stops accepting, finishes requests in flight, then exits.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent


def read(name: str, default: str) -> str:
    try:
        return (HERE / name).read_text().strip()
    except OSError:
        return default


VERSION = read("VERSION", "0.0.0")
MODE = read("MODE", "")
COLOUR = os.environ.get("BLUEGREEN_COLOR", "none")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "bluegreen-sample"

    def do_GET(self) -> None:
        if self.path == "/health":
            if MODE == "unhealthy":
                self.reply(500, "unhealthy on purpose\n")
            else:
                self.reply(200, "ok\n")
        else:
            self.reply(200, f"hello from {VERSION} ({COLOUR})\n")

    def reply(self, status: int, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-App-Version", VERSION)
        self.send_header("X-App-Color", COLOUR)
        self.send_header("X-App-Host", socket.gethostname())
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    if MODE == "exit":
        print(f"sample app {VERSION}: exiting at start on purpose", flush=True)
        sys.exit(3)
    port = int(os.environ["PORT"])
    bind = os.environ.get("BLUEGREEN_BIND", "127.0.0.1")
    server = ThreadingHTTPServer((bind, port), Handler)
    server.daemon_threads = True

    def shutdown() -> None:
        if MODE == "slow-stop":
            time.sleep(1.5)
        server.shutdown()

    def stop(signum: int, frame: object) -> None:
        threading.Thread(target=shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    print(f"sample app {VERSION} ({COLOUR}) listening on {bind}:{port}", flush=True)
    server.serve_forever(poll_interval=0.1)
    server.server_close()
    print(f"sample app {VERSION} ({COLOUR}) stopped", flush=True)


if __name__ == "__main__":
    main()
