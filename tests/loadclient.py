"""An independent load client, in a process of its own: GETs through one or more proxies
until told to stop, half on keep-alive connections and half on fresh ones, and a JSON
report of what it saw. A request that fails is a failure, with one exception: a reused
keep-alive connection that the proxy had closed while idle (the error comes before any
byte of a response), which every HTTP client retries; those are counted apart.

    python tests/loadclient.py OUT.json HOST_HEADER [https://]ADDRESS:PORT [...]

With LOADCLIENT_CLIENTS=N the requests take turns among N clients, each keeping the
cookies the proxy sets (a canary's stickiness); the report lists, per client, the colours
it was served in order, repeats collapsed ("clients").

An https:// target is asked over TLS, trusting only the certificate file named by
LOADCLIENT_CA (no name check: targets are addresses); the report counts the certificates
served, by SHA-256, so a test sees a renewal take effect. SIGTERM ends it; it writes
OUT.json then."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import ssl
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def run(out: Path, host_header: str, targets: list[str]) -> None:
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    report: dict[str, Any] = {"requests": 0, "failures": [], "idle_closed": 0,
                              "versions": {}, "colours": {}, "certificates": {}}
    jars: list[dict[str, str]] = [{} for _ in range(int(os.environ.get("LOADCLIENT_CLIENTS",
                                                                         "0")))]
    seen: list[list[str]] = [[] for _ in jars]
    context = None
    if os.environ.get("LOADCLIENT_CA"):
        context = ssl.create_default_context(cafile=os.environ["LOADCLIENT_CA"])
        context.check_hostname = False
    kept: dict[str, http.client.HTTPConnection] = {}
    turn = 0
    parent = os.getppid()
    while not stop:
        if turn % 200 == 0 and os.getppid() != parent:
            break  # the test that started it is gone (it failed before stop()): no orphan
        if len(report["failures"]) > 100_000:  # a proxy that is gone: keep memory bounded
            report["failures"] = report["failures"][:100_000]
        for target in targets:
            turn += 1
            address, port = target.removeprefix("https://").rsplit(":", 1)
            reuse = turn % 2 == 0 and target in kept
            conn = kept.get(target) if reuse else (
                http.client.HTTPSConnection(address, int(port), timeout=10, context=context)
                if target.startswith("https://") else
                http.client.HTTPConnection(address, int(port), timeout=10))
            assert conn is not None
            jar = jars[turn % len(jars)] if jars else None
            headers = {"Host": host_header}
            if jar:
                headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in jar.items())
            try:
                conn.request("GET", "/", headers=headers)
                resp = conn.getresponse()
                resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError,
                    BrokenPipeError) as exc:
                conn.close()
                kept.pop(target, None)
                if reuse:  # closed by the proxy while idle: a client retries it
                    report["idle_closed"] += 1
                else:
                    report["failures"].append(f"{time.time():.3f} {target}: {exc!r}")
                continue
            except OSError as exc:
                conn.close()
                kept.pop(target, None)
                report["failures"].append(f"{time.time():.3f} {target}: {exc!r}")
                continue
            report["requests"] += 1
            if not reuse and isinstance(conn.sock, ssl.SSLSocket):
                der = conn.sock.getpeercert(binary_form=True) or b""
                digest = hashlib.sha256(der).hexdigest()[:16]
                report["certificates"][digest] = report["certificates"].get(digest, 0) + 1
            if resp.status != 200:
                report["failures"].append(f"{time.time():.3f} {target}: HTTP {resp.status}")
            version = resp.getheader("X-App-Version") or "?"
            colour = resp.getheader("X-Deployment-Id") or "?"
            if jar is not None:
                for cookie in resp.headers.get_all("Set-Cookie") or []:
                    name, _, value = cookie.split(";", 1)[0].partition("=")
                    jar[name.strip()] = value.strip()
                runs = seen[turn % len(jars)]
                if not runs or runs[-1] != colour:
                    runs.append(colour)
            report["versions"][version] = report["versions"].get(version, 0) + 1
            report["colours"][colour] = report["colours"].get(colour, 0) + 1
            if resp.getheader("Connection", "").lower() == "close":
                conn.close()
                kept.pop(target, None)
            elif not reuse:
                old = kept.pop(target, None)
                if old is not None:
                    old.close()
                kept[target] = conn
    report["clients"] = seen
    out.write_text(json.dumps(report))


class LoadClient:
    """Start the client; ``stop()`` returns its report."""

    def __init__(self, out: Path, host_header: str, targets: list[str],
                 ca: Path | None = None, clients: int = 0) -> None:
        self.out = out
        env = {**os.environ, **({"LOADCLIENT_CA": str(ca)} if ca else {}),
               "LOADCLIENT_CLIENTS": str(clients)}
        self.proc = subprocess.Popen([sys.executable, __file__, str(out), host_header,
                                      *targets], env=env)
        time.sleep(0.3)  # under way before the command under test starts
        assert self.proc.poll() is None, "the load client died at start"

    def stop(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        report: dict[str, Any] = json.loads(self.out.read_text())
        return report


if __name__ == "__main__":
    run(Path(sys.argv[1]), sys.argv[2], sys.argv[3:])
