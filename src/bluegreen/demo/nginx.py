"""A private nginx: its own prefix, config, pid, logs and temp paths, on a loopback port.
Used by `bluegreen demo` and by the test suite; never touches the system nginx."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import tarfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

from bluegreen.errors import BlueGreenError


# Ports handed out by this process (a port is free until its user binds it: never twice).
_HANDED: set[int] = set()


def free_port() -> int:
    """A free port on 127.0.0.1, never one this process handed out before (nothing listens
    on it yet: the kernel could pick it again). With BLUEGREEN_PORT_RANGE ("LOW-HIGH", set
    per test worker by the suite) one from that range, so that parallel workers never pick
    the same one; else one the kernel picks."""
    span = os.environ.get("BLUEGREEN_PORT_RANGE", "")
    if not span:
        while True:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
            if port not in _HANDED:
                _HANDED.add(port)
                return port
    low, high = (int(x) for x in span.split("-"))
    start = low + (os.getpid() + len(_HANDED)) % (high - low)
    for i in range(high - low):
        port = low + (start - low + i) % (high - low)
        if port in _HANDED:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED.add(port)
        return port
    raise BlueGreenError(f"no free port left in BLUEGREEN_PORT_RANGE={span}")


def nginx_binary() -> str:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise BlueGreenError("nginx is not installed (Debian: apt-get install nginx-light)")


class PrivateNginx:
    kind = "nginx"

    def __init__(self, prefix: Path, port: int) -> None:
        self.prefix = prefix
        self.port = port
        self.conf = prefix / "nginx.conf"
        self.sites_available = prefix / "sites-available"
        self.sites_enabled = prefix / "sites-enabled"
        self.error_log = prefix / "logs" / "error.log"

    def command(self, *extra: str) -> list[str]:
        return [nginx_binary(), "-p", str(self.prefix), "-c", str(self.conf),
                "-e", str(self.error_log), *extra]

    @property
    def test_command(self) -> str:
        return shlex.join(self.command("-q", "-t"))

    @property
    def reload_command(self) -> str:
        return shlex.join(self.command("-s", "reload"))

    def proxy_settings(self) -> dict[str, Any]:
        """The ``[proxy]`` keys of a bluegreen.toml that uses this nginx."""
        return {"listen": f"127.0.0.1:{self.port}", "sites_available": str(self.sites_available),
                "sites_enabled": str(self.sites_enabled), "test": self.test_command,
                "reload": self.reload_command}

    def write_config(self, workers: int = 2, main: str = "", user: str | None = None) -> None:
        """nginx.conf; ``main``: extra directives for the main context; ``user``: the
        workers' (as root; default: root's own)."""
        for d in (self.sites_available, self.sites_enabled, self.prefix / "logs",
                  self.prefix / "temp"):
            d.mkdir(parents=True, exist_ok=True)
        user = f"user {user or 'root root'};\n" if os.geteuid() == 0 else ""
        temp = self.prefix / "temp"
        self.conf.write_text(
            f"{user}worker_processes {workers};\n{main}"
            f"pid {self.prefix}/nginx.pid;\n"
            f"error_log {self.error_log} warn;\n"
            "events { worker_connections 4096; }\n"
            "http {\n"
            "    access_log off;\n"
            f"    client_body_temp_path {temp}/client_body;\n"
            f"    proxy_temp_path {temp}/proxy;\n"
            f"    fastcgi_temp_path {temp}/fastcgi;\n"
            f"    uwsgi_temp_path {temp}/uwsgi;\n"
            f"    scgi_temp_path {temp}/scgi;\n"
            f"    include {self.sites_enabled}/*;\n"
            "}\n"
        )

    def start(self) -> None:
        """Start nginx (with no site linked yet, it listens on nothing of ours)."""
        proc = subprocess.run(self.command(), capture_output=True, text=True)
        if proc.returncode != 0:
            raise BlueGreenError(f"private nginx failed to start: {proc.stderr.strip()}")

    def pid(self) -> int | None:
        try:
            return int((self.prefix / "nginx.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        pid = self.pid()
        if pid is None:
            return
        subprocess.run(self.command("-s", "quit"), capture_output=True)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


def build_sample(dest: Path, version: str, mode: str | None = None) -> Path:
    """A release tarball of the bundled sample app at ``version``."""
    src = dest / f"sample-{version}-{mode or 'ok'}"
    src.mkdir(parents=True, exist_ok=True)
    (src / "app.py").write_text(resources.files("bluegreen.demo").joinpath("app.py").read_text())
    (src / "VERSION").write_text(version + "\n")
    if mode:
        (src / "MODE").write_text(mode + "\n")
    out = dest / f"sample-{version}{'-' + mode if mode else ''}.tar.gz"
    with tarfile.open(out, "w:gz") as tar:
        for name in sorted(p.name for p in src.iterdir()):
            tar.add(src / name, arcname=name)
    return out
