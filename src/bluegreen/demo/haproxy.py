"""A private HAProxy: its own main config, conf.d, runtime socket and pid file, on a
loopback port. Used by the test suite and the benchmarks; never touches the system one.

It runs in daemon mode and reloads the classic way (a new process that takes the
listening sockets over the runtime socket, ``-x``, and tells the old one to finish,
``-sf``), as a user's ``systemctl reload haproxy`` does in master-worker mode."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from bluegreen.errors import BlueGreenError


def haproxy_binary() -> str:
    for candidate in (shutil.which("haproxy"), "/usr/sbin/haproxy"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise BlueGreenError("haproxy is not installed (Debian: apt-get install haproxy)")


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, which nobody may reap here, does not count)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


class PrivateHAProxy:
    kind = "haproxy"

    def __init__(self, prefix: Path, port: int) -> None:
        self.prefix = prefix
        self.port = port
        self.main = prefix / "haproxy.cfg"
        self.conf_d = prefix / "conf.d"
        self.socket = prefix / "admin.sock"
        self.pid_file = prefix / "haproxy.pid"

    def command(self, *extra: str) -> list[str]:
        return [haproxy_binary(), "-f", str(self.main), "-f", str(self.conf_d), *extra]

    @property
    def test_command(self) -> str:
        return shlex.join(self.command("-c", "-q"))

    @property
    def reload_command(self) -> str:
        start = shlex.join(self.command("-D", "-p", str(self.pid_file), "-x", str(self.socket)))
        return f'{start} -sf $(cat {shlex.quote(str(self.pid_file))})'

    def proxy_settings(self, app: str = "{app}") -> dict[str, Any]:
        """The ``[proxy]`` keys of a bluegreen.toml that uses this HAProxy."""
        return {"kind": "haproxy", "listen": f"127.0.0.1:{self.port}",
                "config_file": f"{self.conf_d}/{app}.cfg", "map_file": f"{self.conf_d}/{app}.map",
                "socket": str(self.socket), "test": self.test_command,
                "reload": self.reload_command}

    def write_config(self) -> None:
        self.conf_d.mkdir(parents=True, exist_ok=True)
        self.main.write_text(self.config_text())

    def config_text(self) -> str:
        # The placeholder frontend on a unix socket lets HAProxy start before bluegreen
        # has written any config (it refuses to run with no listener at all).
        return (
            "global\n"
            f"    stats socket {self.socket} mode 600 level admin expose-fd listeners\n"
            "    stats timeout 30s\n"
            "    maxconn 4096\n"
            "defaults\n"
            "    mode http\n"
            "    timeout connect 5s\n"
            "    timeout client 1m\n"
            "    timeout server 1m\n"
            "frontend private_placeholder\n"
            f"    bind unix@{self.prefix}/placeholder.sock\n"
            "    http-request return status 200\n"
        )

    def start(self) -> None:
        proc = subprocess.run(self.command("-D", "-p", str(self.pid_file)), capture_output=True,
                              text=True)
        if proc.returncode != 0:
            raise BlueGreenError(f"private haproxy failed to start: {proc.stderr.strip()}")

    def pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def pids(self) -> list[int]:
        """Every process of this HAProxy (old ones still finishing after a reload too)."""
        out = subprocess.run(["pgrep", "-f", "--", f"-f {self.main} "], capture_output=True,
                             text=True).stdout
        return [int(p) for p in out.split() if alive(int(p))]

    def api(self, command: str, timeout: float = 5) -> str:
        """One command on the runtime API (its socket), and HAProxy's answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.socket))
            sock.sendall(command.encode() + b"\n")
            answer = b""
            while chunk := sock.recv(65536):  # HAProxy closes the connection once it answered
                answer += chunk
        return answer.decode()

    def stop(self) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, 15)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in self.pids():
            os.kill(pid, 9)
