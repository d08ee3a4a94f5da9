"""The agent: what runs on a host for the length of one bluegreen command, so that a host
costs one SSH session per command instead of one per step (each session runs the login
shell, and with it the user's ``.bashrc``: on servers with a version manager that is
~0.1 s every time), and so that checks that repeat (health polls, the proxy's answer three
times in a row) repeat on the host, not across the network.

It reads one JSON request per line on stdin, ``{"id", "ops"}`` (a ``batch``), and writes
one JSON answer per line, with the request's ``id`` and ``served`` (how many requests it
took so far: the client's count of round trips is checked against it), on stdout; requests
run at once, each in its own thread (a batch's operations one after the other). It ends at
EOF on stdin (the client closes it once every answer came). Operations:

- ``run``: a command (argv, stdin text, timeout) -> its exit status, stdout, stderr.
- ``exchange``: connect to a TCP port or a unix socket as seen from the host (TLS with
  SNI when asked, certificate not verified: the channel is SSH's, the certificate is
  returned to be judged), send bytes, read until the peer closes.
- ``watch``: an HTTP ``exchange`` repeated every ``interval`` until its answer is right
  ``streak`` times in a row (a status range, a body) or ``timeout`` passes.
- ``batch``: any of these in order, stopping at the first that fails and says so (one
  round trip for a whole step: e.g. take the lock and read what the command needs next).

This file is sent as it is to ``python3 -c`` on the host (SSHHost) and imported here for
this machine (LocalHost): one implementation of each operation. Standard library only,
Python 3.6 or later (old servers' python3).
"""

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

VERSION = 1
READ_LIMIT = 1000000


def run(argv: List[str], input: Optional[str] = None, timeout: float = 60) -> Dict[str, Any]:
    """Run ``argv`` (its own session: a timeout kills everything it started in it)."""
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
    except OSError as exc:
        return {"status": 127, "stdout": "", "stderr": "%s: %s" % (argv[0], exc.strerror)}
    try:
        out, err = proc.communicate((input or "").encode(), timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.communicate()
        return {"status": None, "timed_out": True, "stdout": "", "stderr": ""}
    return {"status": proc.returncode, "stdout": out.decode(errors="replace"),
            "stderr": err.decode(errors="replace")}


def batch(ops: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Each of ``ops`` (``{"name", "args", "stop"}``) in order, until one with ``stop``
    fails: ``{"results": [...]}``, the answers so far."""
    results: List[Dict[str, Any]] = []
    for op in ops:
        try:
            result = OPERATIONS[op["name"]](**op["args"])
        except Exception as exc:  # an answer, whatever happens (see main)
            result = {"failed": "%s: %s" % (type(exc).__name__, exc)}
        results.append(result)
        if op.get("stop", True) and failed(op["name"], result):
            break
    return {"results": results}


def failed(name: str, result: Dict[str, Any]) -> bool:
    """Whether an operation's answer is a failure: a command's non-zero exit (or
    timeout), an exchange's error, a watch not met."""
    if "failed" in result:
        return True
    if name == "run":
        return result.get("status") != 0
    if name == "exchange":
        return "error" in result
    return not result.get("met")


def exchange(address: Optional[str] = None, port: Optional[int] = None,
             path: Optional[str] = None, data: str = "", tls_name: Optional[str] = None,
             timeout: float = 3) -> Dict[str, Any]:
    """Send ``data`` (base64) to address:port or the unix socket ``path``, and read the
    answer until the peer closes: ``{"data": base64, "certificate": base64 DER or None}``,
    or ``{"error": why}``."""
    deadline = time.monotonic() + timeout
    try:
        if path is not None:
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(timeout)
            sock.connect(path)
        else:
            sock = socket.create_connection((address, port), timeout=timeout)
    except socket.timeout:
        return {"error": "timed out", "timeout": True}
    except OSError as exc:
        return {"error": exc.strerror or str(exc), "errno": exc.errno}
    certificate = None
    try:
        if tls_name is not None:
            import ssl  # only here: ~20 ms of the agent's start

            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE  # returned to be judged, see above
            context.set_alpn_protocols(["http/1.1"])
            try:
                sock = context.wrap_socket(sock, server_hostname=tls_name)
            except ssl.SSLError as exc:
                return {"error": "TLS handshake with %r failed: %s" % (tls_name, exc)}
            der = sock.getpeercert(binary_form=True)
            certificate = base64.b64encode(der).decode() if der else None
        sock.sendall(base64.b64decode(data))
        chunks: List[bytes] = []
        size = 0
        while size < READ_LIMIT:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except OSError as exc:  # a TLS peer that closes without close_notify
                if type(exc).__name__ in ("SSLZeroReturnError", "SSLEOFError"):
                    break
                raise
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except socket.timeout:
        return {"error": "timed out", "timeout": True}
    except OSError as exc:
        return {"error": exc.strerror or str(exc), "errno": exc.errno}
    finally:
        sock.close()
    return {"data": base64.b64encode(b"".join(chunks)).decode(), "certificate": certificate}


def http_answer(raw: bytes) -> Tuple[int, Dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of a raw HTTP/1.1 response; ValueError
    when it is not one."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ValueError("not an HTTP response: %r" % lines[0][:80])
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    return int(parts[1]), headers, body


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            break
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2:]
    return out


def watch(request: Dict[str, Any], status: List[List[int]], body: Optional[str] = None,
          streak: int = 1, interval: float = 0.1, timeout: float = 10) -> Dict[str, Any]:
    """``exchange(**request)`` every ``interval`` until the HTTP answer's status is in one
    of the ``status`` ranges (and its body, stripped, is ``body`` when given) ``streak``
    times in a row, or ``timeout`` passes: ``{"met", "tries", "last"}`` (the last
    exchange's result)."""
    deadline = time.monotonic() + timeout
    row = tries = 0
    while True:
        last = exchange(**request)
        tries += 1
        good = False
        if "data" in last:
            try:
                code, _, content = http_answer(base64.b64decode(last["data"]))
                good = any(low <= code <= high for low, high in status) and (
                    body is None or content.decode(errors="replace").strip() == body)
            except ValueError:
                pass
        row = row + 1 if good else 0
        if row >= streak:
            return {"met": True, "tries": tries, "last": last}
        left = deadline - time.monotonic()
        if left <= 0:
            return {"met": False, "tries": tries, "last": last}
        time.sleep(min(interval, left))


# Everything the agent's commands create is closed to other users (plan.layout.UMASK):
# sshd's usual 022 left the slots' logs, which hold what apps print, readable by anyone.
UMASK = 0o027

OPERATIONS: Dict[str, Callable[..., Dict[str, Any]]] = {
    "run": run, "exchange": exchange, "watch": watch}


def main() -> None:
    os.umask(UMASK)
    out = sys.stdout.buffer
    lock = threading.Lock()
    served = [0]

    def answer(message: Dict[str, Any]) -> None:
        line = json.dumps(message).encode() + b"\n"
        with lock:
            out.write(line)
            out.flush()

    def serve(request: Dict[str, Any]) -> None:
        result = batch(request["ops"])
        result["id"] = request["id"]
        result["served"] = served[0]  # requests taken so far (the client's cross-check)
        answer(result)

    answer({"agent": VERSION, "python": sys.version.split()[0], "pid": os.getpid()})
    for line in sys.stdin.buffer:
        request = json.loads(line.decode())
        served[0] += 1
        threading.Thread(target=serve, args=(request,), daemon=True).start()


if __name__ == "__main__":
    main()
