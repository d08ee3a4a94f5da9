"""Several real hosts on one machine: one network namespace each, joined by a bridge, each
with its own sshd, nginx, HAProxy, hostname, /srv and root's home. Traffic stays on the bridge:
no default route is ever added inside a namespace. Nothing is mounted over a directory that may
hold the checkout: root's home is changed through a private /etc/passwd, and a checkout (or
virtualenv) under /srv is bound through into each host's own /srv."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bluegreen.demo.haproxy import PrivateHAProxy
from conftest import log_tail, private_subnet, sshd_config, with_home

NGINX_PREFIX = "/srv/nginx"  # the same path on every host (each has its own /srv)
# Every host also runs a HAProxy (its frontend exists only once bluegreen writes one).
HAPROXY = PrivateHAProxy(Path("/srv/haproxy"), 80)


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check)


@dataclass
class NsHost:
    name: str
    ns: str
    address: str
    dir: Path
    proc: subprocess.Popen[bytes] | None = None

    def exec(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command inside this host (its namespaces, its /srv)."""
        return sh("nsenter", "-t", str(self.init_pid()), "-a", *argv, check=check)

    def init_pid(self) -> int:
        """The host's `sh` (pid 1 of its pid namespace)."""
        assert self.proc is not None
        out = sh("pgrep", "-P", str(self.proc.pid)).stdout.split()
        return int(out[0])

    def pids(self) -> list[int]:
        return [int(p) for p in sh("ip", "netns", "pids", self.ns, check=False).stdout.split()]

    def kill_sshd(self) -> None:
        """Kill every sshd of this host, so existing SSH sessions die too."""
        for pid in self.pids():
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "sshd":
                    os.kill(pid, signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass


@dataclass
class Cluster:
    base: Path
    count: int
    tag: str = field(default_factory=lambda: f"{os.getpid() % 100000:05d}")
    hosts: list[NsHost] = field(default_factory=list)
    boot_script: str = "true"  # run first in each host (a test makes it fail)
    ssh_timeout: float = 15

    @property
    def subnet(self) -> int:
        return private_subnet()

    @property
    def bridge(self) -> str:
        return f"bgbr{self.tag}"

    def up(self) -> Cluster:
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"10.213.{self.subnet}.1/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        self.client_key = self.base / "id_ed25519"
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.client_key))
        (self.base / "authorized_keys").write_text((self.base / "id_ed25519.pub").read_text())
        known = []
        for i in range(1, self.count + 1):
            host = self._add_host(i)
            pub = (host.dir / "ssh_host_ed25519_key.pub").read_text().split()
            known.append(f"{host.address} {pub[0]} {pub[1]}")
            self.hosts.append(host)
        self.known_hosts = self.base / "known_hosts"
        self.known_hosts.write_text("\n".join(known) + "\n")
        (self.base / "ssh_config").write_text(
            f"StrictHostKeyChecking yes\nUserKnownHostsFile {self.known_hosts}\n"
            f"IdentityFile {self.client_key}\n")
        for host in self.hosts:
            self._wait_ssh(host)
        return self

    def _add_host(self, i: int) -> NsHost:
        ns = f"bg{self.tag}h{i}"
        veth = f"bv{self.tag}{i}"
        address = f"10.213.{self.subnet}.{i + 1}"
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "link", "set", veth, "master", self.bridge, "up")
        sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        hdir = self.base / f"h{i}"
        for sub in ("srv", "root"):
            (hdir / sub).mkdir(parents=True)
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(hdir / "ssh_host_ed25519_key"))
        (hdir / "sshd_config").write_text(sshd_config(
            f"Port 22\nListenAddress {address}", hdir / "ssh_host_ed25519_key",
            hdir / "sshd.pid", self.base / "authorized_keys"))
        _write_nginx_conf(hdir / "srv" / "nginx")
        (hdir / "srv" / "haproxy" / "conf.d").mkdir(parents=True)
        (hdir / "srv" / "haproxy" / "haproxy.cfg").write_text(HAPROXY.config_text())
        script = (
            f'{self.boot_script} && hostname h{i} && {_srv_mounts(hdir / "srv")} && '
            'mkdir -p /run/sshd && '
            f'nginx -p {NGINX_PREFIX} -c {NGINX_PREFIX}/nginx.conf -e {NGINX_PREFIX}/error.log && '
            f'{shlex.join(HAPROXY.command("-D", "-p", str(HAPROXY.pid_file)))} && '
            f'/usr/sbin/sshd -D -e -f {hdir}/sshd_config 2>>{hdir}/sshd.log; '
            "sleep infinity"  # the host stays up if its sshd is killed (a test does that)
        )
        # Started from / (the caller's working directory may not exist inside), with the
        # start script's own errors kept for the test to show.
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *with_home(hdir / "root", [
                "unshare", "--uts", "--pid", "--fork", "--kill-child", "--mount-proc",
                "/bin/sh", "-c", script])],
            stdout=subprocess.DEVNULL, stderr=open(hdir / "host.log", "wb"), cwd="/")
        return NsHost(f"h{i}", ns, address, hdir, proc)

    def _wait_ssh(self, host: NsHost) -> None:
        import socket

        deadline = time.monotonic() + self.ssh_timeout
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                sock.settimeout(0.5)
                if sock.connect_ex((host.address, 22)) == 0:
                    return
            time.sleep(0.02)
        raise TimeoutError(f"sshd of {host.name} did not come up; its start script said:\n"
                           f"{log_tail(host.dir / 'host.log')}\n--- sshd.log ---\n"
                           f"{log_tail(host.dir / 'sshd.log')}")

    def nginx_commands(self) -> dict[str, str]:
        base = f"nginx -p {NGINX_PREFIX} -c {NGINX_PREFIX}/nginx.conf -e {NGINX_PREFIX}/error.log"
        return {"test": f"{base} -q -t", "reload": f"{base} -s reload",
                "sites_available": f"{NGINX_PREFIX}/sites-available",
                "sites_enabled": f"{NGINX_PREFIX}/sites-enabled"}

    def haproxy_settings(self) -> dict[str, Any]:
        """[proxy] keys for the HAProxy every host runs (at /srv/haproxy, port 80)."""
        return HAPROXY.proxy_settings()

    def down(self) -> None:
        for host in self.hosts:
            if host.proc is not None and host.proc.poll() is None:
                host.proc.send_signal(signal.SIGKILL)  # unshare ignores SIGTERM
                host.proc.wait()
            for pid in host.pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            sh("ip", "netns", "del", host.ns, check=False)
            sh("ip", "link", "del", f"bv{self.tag}{host.name[1:]}", check=False)
        sh("ip", "link", "del", self.bridge, check=False)


def _srv_mounts(srv: Path) -> str:
    """Shell commands giving the host its own /srv, with any of this machine's paths the
    tests need (the checkout, the virtualenv, Python) that live under /srv bound through."""
    keep = {Path(p).resolve() for p in (Path(__file__).parent.parent, sys.prefix,
                                         sys.base_prefix)}
    steps = []
    for path in sorted(keep):
        if path.is_relative_to("/srv"):
            inner = srv / path.relative_to("/srv")
            inner.mkdir(parents=True, exist_ok=True)
            steps.append(f"mount --bind {shlex.quote(str(path))} {shlex.quote(str(inner))}")
    return " && ".join([*steps, f"mount --rbind {shlex.quote(str(srv))} /srv"])


def _write_nginx_conf(prefix: Path) -> None:
    for sub in ("sites-available", "sites-enabled", "temp"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    temp = f"{NGINX_PREFIX}/temp"
    (prefix / "nginx.conf").write_text(
        "user root root;\nworker_processes 1;\n"
        f"pid {NGINX_PREFIX}/nginx.pid;\nerror_log {NGINX_PREFIX}/error.log warn;\n"
        "events { worker_connections 1024; }\n"
        "http {\n    access_log off;\n"
        f"    client_body_temp_path {temp}/client_body;\n    proxy_temp_path {temp}/proxy;\n"
        f"    fastcgi_temp_path {temp}/fastcgi;\n    uwsgi_temp_path {temp}/uwsgi;\n"
        f"    scgi_temp_path {temp}/scgi;\n"
        f"    include {NGINX_PREFIX}/sites-enabled/*;\n}}\n")
