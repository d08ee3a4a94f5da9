"""bluegreen's sample app: stdlib only. Listens on $BLUEGREEN_BIND (127.0.0.1):$PORT.

GET /health -> 200 "ok"; GET / -> "hello from <version> (<colour>)"; GET /ws: a
websocket echo that names the version and colour it runs on. The version comes
from the VERSION file next to this script. A MODE file, if present, makes a deliberately
broken release: "exit" (exits at start), "unhealthy" (/health answers 500), "slow-stop"
(keeps serving for 1.5 s after SIGTERM, like a node that takes its time to shut down),
"https-only" (not a broken one: 301 to https unless X-Forwarded-Proto is https). Words
of the form NAME=VALUE shape GET / (for canaries): "fail=0.05" answers 500 to that share
of requests (every 20th, not at random), "delay=0.02" sleeps that many seconds first;
"exit_after=2" exits (status 4) that many seconds after it starts listening.
SIGTERM stops accepting, finishes requests in flight, then exits.
"""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from io import BufferedIOBase

HERE = Path(__file__).resolve().parent


def read(name: str, default: str) -> str:
    try:
        return (HERE / name).read_text().strip()
    except OSError:
        return default


VERSION = read("VERSION", "0.0.0")
MODE = read("MODE", "")
KNOBS = dict(w.split("=", 1) for w in MODE.split() if "=" in w)
FAIL_EVERY = round(1 / float(KNOBS["fail"])) if float(KNOBS.get("fail", 0)) > 0 else 0
DELAY = float(KNOBS.get("delay", 0))
_served = 0
_served_lock = threading.Lock()
COLOUR = os.environ.get("BLUEGREEN_COLOR", "none")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the stdlib's 5 drops SYNs under load (1 s retransmits)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "bluegreen-sample"
    # Headers and body go out in two writes; on a kept-alive upstream connection (HAProxy
    # reuses them) Nagle's algorithm holds the body until the proxy's delayed ACK, ~40 ms.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        if MODE == "https-only" and self.headers.get("X-Forwarded-Proto") != "https":
            # as Django's SECURE_SSL_REDIRECT behind a proxy that sets X-Forwarded-Proto
            self.send_response(301)
            self.send_header("Location", f"https://{self.headers.get('Host')}{self.path}")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/ws" and self.headers.get("Upgrade", "").lower() == "websocket":
            self.websocket()
        elif self.path == "/health":
            if MODE == "unhealthy":
                self.reply(500, "unhealthy on purpose\n")
            else:
                self.reply(200, "ok\n")
        else:
            self.hello()

    def hello(self) -> None:
        global _served
        if DELAY:
            time.sleep(DELAY)
        with _served_lock:
            _served += 1
            failing = FAIL_EVERY and _served % FAIL_EVERY == 0
        if failing:
            self.reply(500, f"failing on purpose ({VERSION})\n")
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

    def websocket(self) -> None:
        """A websocket echo (RFC 6455, text frames): each message comes back as
        "<message> from <version> (<colour>)", so a client sees which colour it talks to."""
        key = self.headers.get("Sec-WebSocket-Key", "")
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        while True:
            frame = read_frame(self.rfile)
            if frame is None or frame[0] == 0x8:  # closed, or a close frame
                write_frame(self.wfile, 0x8, b"\x03\xe8")
                return
            opcode, payload = frame
            if opcode == 0x9:  # ping
                write_frame(self.wfile, 0xA, payload)
            elif opcode == 0x1:
                reply = f"{payload.decode(errors='replace')} from {VERSION} ({COLOUR})"
                write_frame(self.wfile, 0x1, reply.encode())

    def log_message(self, format: str, *args: object) -> None:
        pass


WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def read_frame(rfile: BufferedIOBase) -> tuple[int, bytes] | None:
    head = rfile.read(2)
    if len(head) < 2:
        return None
    opcode, length = head[0] & 0x0F, head[1] & 0x7F
    if length == 126:
        length = struct.unpack("!H", rfile.read(2))[0]
    elif length == 127:
        length = struct.unpack("!Q", rfile.read(8))[0]
    mask = rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
    data = rfile.read(length)
    return opcode, bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def write_frame(wfile: BufferedIOBase, opcode: int, payload: bytes) -> None:
    head = bytes([0x80 | opcode])
    if len(payload) < 126:
        head += bytes([len(payload)])
    elif len(payload) < 65536:
        head += bytes([126]) + struct.pack("!H", len(payload))
    else:
        head += bytes([127]) + struct.pack("!Q", len(payload))
    try:
        wfile.write(head + payload)
        wfile.flush()
    except OSError:
        pass


def main() -> None:
    if MODE == "exit":
        print(f"sample app {VERSION}: exiting at start on purpose", flush=True)
        sys.exit(3)
    port = int(os.environ["PORT"])
    bind = os.environ.get("BLUEGREEN_BIND", "127.0.0.1")
    server = Server((bind, port), Handler)

    def shutdown() -> None:
        if MODE == "slow-stop":
            time.sleep(1.5)
        server.shutdown()

    def stop(signum: int, frame: object) -> None:
        threading.Thread(target=shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    if "exit_after" in KNOBS:
        def crash() -> None:
            time.sleep(float(KNOBS["exit_after"]))
            print(f"sample app {VERSION}: exiting on purpose (exit_after)", flush=True)
            os._exit(4)

        threading.Thread(target=crash, daemon=True).start()
    print(f"sample app {VERSION} ({COLOUR}) listening on {bind}:{port}", flush=True)
    server.serve_forever(poll_interval=0.1)
    server.server_close()
    print(f"sample app {VERSION} ({COLOUR}) stopped", flush=True)


if __name__ == "__main__":
    main()
