"""A real Debian server with systemd as its PID 1, in namespaces on this machine, after
shared/recipes/systemd-host.md: an overlay of / (so systemd never touches this machine's
/tmp or cgroup roots), a network namespace with its own address (no default route), fresh
cgroup mounts, nginx.service and ssh.service running. Boots in ~2 s; `power_cut()` kills
every process at once and `boot()` starts it again on the same disk."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import (SERVER_NAME, Answer, get, log_tail, private_subnet, run_cli,
                      sample_artifact, to_toml)

HIERARCHIES = ("systemd", "unified", "cpu", "cpuacct", "cpuset", "memory", "devices",
               "freezer", "blkio", "pids")
# Units of this machine a test server must not run (they would be its own copies, but
# cost time and memory, or are what a test starts itself). epmd.service stays: an Erlang
# server runs the port mapper as a service of its own (see docs/phoenix.md).
MASKED = ("postgresql.service", "postgresql@.service", "haproxy.service", "e2scrub_reap.service", "apt-daily-upgrade.timer", "apt-daily.timer",
          "dpkg-db-backup.timer", "e2scrub_all.timer", "fstrim.timer", "man-db.timer")

INNER = r"""
set -e
state="$1"; name="$2"; m="$state/merged"
mount --make-rprivate /
mount -t overlay overlay -o "lowerdir=/,upperdir=$state/upper,workdir=$state/work" "$m"
mount -t proc proc "$m/proc"
mount -t sysfs -o ro sysfs "$m/sys"
mount -t tmpfs -o mode=755 tmpfs "$m/sys/fs/cgroup"
for h in systemd unified cpu cpuacct cpuset memory devices freezer blkio pids; do
  mkdir -p "$m/sys/fs/cgroup/$h"
done
mount -t cgroup -o none,name=systemd cgroup "$m/sys/fs/cgroup/systemd"
mount -t cgroup2 cgroup2 "$m/sys/fs/cgroup/unified"
for c in cpu cpuacct cpuset memory devices freezer blkio pids; do
  mount -t cgroup -o "$c" cgroup "$m/sys/fs/cgroup/$c"
done
mount -t tmpfs -o mode=755 tmpfs "$m/dev"
for d in null zero full random urandom tty; do
  touch "$m/dev/$d"; mount --bind "/dev/$d" "$m/dev/$d"
done
mkdir -p "$m/dev/pts" "$m/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666 devpts "$m/dev/pts"
ln -s pts/ptmx "$m/dev/ptmx"
mount -t tmpfs tmpfs "$m/dev/shm"
mount -t tmpfs -o mode=755 tmpfs "$m/run"
mount -t tmpfs -o mode=1777 tmpfs "$m/tmp"
hostname "$name"
mkdir -p "$m/.oldroot"
cd "$m"
pivot_root . .oldroot
cd /
umount -l /.oldroot
export container=bluegreen-test
exec /lib/systemd/systemd --system
"""

LAUNCH = r"""
name="$1"; ns="$2"; state="$3"; inner="$4"
for h in /sys/fs/cgroup/*/; do
  d="$h$name"
  mkdir -p "$d"
  if [ -f "${h}cpuset.cpus" ]; then
    cat "${h}cpuset.cpus" > "$d/cpuset.cpus"; cat "${h}cpuset.mems" > "$d/cpuset.mems"
  fi
  echo $$ > "$d/cgroup.procs"
done
exec nsenter --net="/run/netns/$ns" unshare --pid --fork --kill-child --mount --uts --ipc \
  --cgroup /bin/sh "$inner" "$state" "$name"
"""


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check)


@dataclass
class SystemdHost:
    """One server. ``address`` is reachable from this machine over the bridge."""

    name: str
    base: Path
    index: int
    subnet: int
    client_key: Path
    known_hosts: Path
    proc: subprocess.Popen[bytes] | None = None
    boots: int = 0
    booted_at: float = 0.0
    _up: bool = field(default=False, repr=False)

    @property
    def ns(self) -> str:
        return f"{self.name}ns"

    @property
    def address(self) -> str:
        return f"10.214.{self.subnet}.{self.index + 1}"

    @property
    def state(self) -> Path:
        return self.base / "disk"

    @property
    def upper(self) -> Path:
        return self.state / "upper"

    # ---- the machine room -----------------------------------------------------------

    def install(self, bridge: str) -> None:
        """The disk (a tmpfs of its own), the first boot's files, and the network."""
        self.state.mkdir(parents=True)
        sh("mount", "-t", "tmpfs", "-o", "size=2g", "tmpfs", str(self.state))
        for sub in ("upper", "work", "merged"):
            (self.state / sub).mkdir()
        ssh_dir = self.upper / "root" / ".ssh"
        ssh_dir.mkdir(parents=True, mode=0o700)
        (ssh_dir / "authorized_keys").write_text(Path(f"{self.client_key}.pub").read_text())
        (self.upper / "etc" / "systemd" / "system").mkdir(parents=True)
        (self.upper / "etc" / "hostname").write_text(self.name + "\n")
        for unit in MASKED:
            os.symlink("/dev/null", self.upper / "etc" / "systemd" / "system" / unit)
        # Root's .bashrc here runs `pyenv init`, whose rehash takes a lock file at each
        # login; a power cut during a login leaves it, and every later login then waits
        # for it. A server with such an rc file needs the stale lock removed at boot.
        (self.upper / "etc" / "tmpfiles.d").mkdir(parents=True)
        (self.upper / "etc" / "tmpfiles.d" / "pyenv-lock.conf").write_text(
            "r /root/.pyenv/shims/.pyenv-shim\n")
        sh("ip", "netns", "add", self.ns)
        veth = f"{self.name[:10]}v"
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", self.ns)
        sh("ip", "link", "set", veth, "master", bridge, "up")
        sh("ip", "-n", self.ns, "addr", "add", f"{self.address}/24", "dev", "eth0")
        sh("ip", "-n", self.ns, "link", "set", "eth0", "up")
        sh("ip", "-n", self.ns, "link", "set", "lo", "up")

    def boot(self, timeout: float = 30) -> float:
        """Power on and wait until systemd says the system is up; seconds it took."""
        inner = self.base / "inner.sh"
        inner.write_text(INNER)
        log = self.base / f"boot{self.boots}.log"
        started = time.monotonic()
        self.proc = subprocess.Popen(
            ["/bin/sh", "-c", LAUNCH, "sh", self.name, self.ns, str(self.state), str(inner)],
            stdout=open(log, "wb"), stderr=subprocess.STDOUT, cwd="/", start_new_session=True)
        self.boots += 1
        self.booted_at = started
        self._up = True
        self._wait_port(22, timeout, log)
        # Asked over SSH as the recipe does: a login also waits for logind and root's
        # user manager, which the first login after a boot starts.
        proc = subprocess.run([*self.ssh, "systemctl", "is-system-running", "--wait"],
                              capture_output=True, text=True, timeout=timeout)
        if proc.stdout.strip() not in ("running", "degraded"):
            raise TimeoutError(f"{self.name}: systemd says {proc.stdout.strip()!r} "
                               f"({proc.stderr.strip()}); boot log:\n{log_tail(log)}")
        return time.monotonic() - started

    @property
    def ssh(self) -> list[str]:
        """An ssh command line to the server as root, with strict host-key checking."""
        return ["ssh", "-i", str(self.client_key), "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "BatchMode=yes",
                "-o", "ConnectTimeout=10", f"root@{self.address}"]

    def _wait_port(self, port: int, timeout: float, log: Path) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                sock.settimeout(0.3)
                if sock.connect_ex((self.address, port)) == 0:
                    return
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise TimeoutError(f"{self.name}: port {port} did not open; boot log:\n{log_tail(log)}")

    def pid1(self) -> int:
        assert self.proc is not None
        out = sh("pgrep", "-P", str(self.proc.pid), check=False).stdout.split()
        if not out:
            raise RuntimeError(f"{self.name} is not running")
        return int(out[0])

    def exec(self, *argv: str, check: bool = True, timeout: float = 60,
             input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command inside the server (all its namespaces), as root."""
        return subprocess.run(["nsenter", "-t", str(self.pid1()), "-a", *argv],
                              capture_output=True, text=True, check=check, timeout=timeout,
                              input=input)

    def shell(self, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.exec("/bin/sh", "-c", script, check=check)

    def power_cut(self) -> None:
        """Every process of the server dies at once, as on a power loss."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.kill(self.pid1(), signal.SIGKILL)
        except (RuntimeError, ProcessLookupError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._up = False

    def remove(self) -> None:
        self.power_cut()
        sh("umount", "-l", str(self.state), check=False)
        for h in HIERARCHIES:
            _rmdir_tree(Path("/sys/fs/cgroup") / h / self.name)
        sh("ip", "netns", "del", self.ns, check=False)
        sh("ip", "link", "del", f"{self.name[:10]}v", check=False)


def _rmdir_tree(root: Path) -> None:
    """Remove a cgroup and its children, depth first (dying tasks keep one busy briefly)."""
    if not root.exists():
        return
    dirs = sorted((Path(d) for d, _, _ in os.walk(root)), key=lambda p: len(p.parts),
                  reverse=True)
    deadline = time.monotonic() + 5
    for d in dirs:
        while True:
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SystemdLab]:
    """The servers of one test module (import it into the module to use it)."""
    lab = SystemdLab(tmp_path_factory.mktemp("systemd"))
    try:
        yield lab
    finally:
        lab.down()


class SystemdLab:
    """A bridge and the servers on it, with one client key and a known_hosts file."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.tag = f"{os.getpid() % 100000:05d}"
        self.subnet = private_subnet()
        self.bridge = f"bgsd{self.tag}"
        self.hosts: list[SystemdHost] = []
        self.client_key = base / "id_ed25519"
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.client_key))
        self.known_hosts = base / "known_hosts"
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"10.214.{self.subnet}.1/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")

    def add(self) -> SystemdHost:
        i = len(self.hosts) + 1
        host = SystemdHost(f"sd{self.tag}h{i}", self.base / f"h{i}", i, self.subnet,
                           self.client_key, self.known_hosts)
        host.install(self.bridge)
        self.hosts.append(host)
        # Every server shares this machine's host key (the overlay's /etc/ssh).
        pub = Path("/etc/ssh/ssh_host_ed25519_key.pub").read_text().split()
        with self.known_hosts.open("a") as f:
            f.write(f"{host.address} {pub[0]} {pub[1]}\n")
        return host

    def down(self) -> None:
        for host in self.hosts:
            host.remove()
        sh("ip", "link", "del", self.bridge, check=False)


APP = "testapp"
UNIT = f"/etc/systemd/system/bluegreen-{APP}@.service"


class Site:
    """A user's project deploying to one systemd server, as root over SSH."""

    def __init__(self, lab: SystemdLab, host: SystemdHost, dir: Path,
                 user: str = "root") -> None:
        self.lab, self.host, self.dir, self.user = lab, host, dir, user
        self.home = dir / "home"
        self.home.mkdir(parents=True)
        self.run: dict[str, Any] = {}
        self.proxy: dict[str, Any] = {"listen": "80", "reload": "systemctl reload nginx"}
        self.write_config()

    def write_config(self) -> None:
        data: dict[str, Any] = {
            "app": APP,
            "release": {"version": "1.0.0", "artifact": "artifacts/sample-{version}.tar.gz"},
            "run": {"command": "exec python3 app.py", "health_timeout": 15, "stop_timeout": 5,
                    "drain_timeout": 2, **self.run},
            "slots": {"blue": 4000, "green": 5000},
            "proxy": {"server_name": SERVER_NAME, **self.proxy},
            "hosts": [{"address": f"{self.user}@{self.host.address}", "name": "web1",
                       "deploy_to": f"/srv/{APP}", "identity_file": str(self.lab.client_key),
                       "known_hosts": str(self.lab.known_hosts),
                       **({"sudo": True} if self.user != "root" else {})}],
        }
        (self.dir / "bluegreen.toml").write_text(to_toml(data))

    def bg(self, *args: str, check: int | bool = True) -> subprocess.CompletedProcess[str]:
        return run_cli(self.dir, self.home, args, check=check, timeout=180)

    def artifact(self, version: str, mode: str | None = None) -> None:
        sample_artifact(self.dir, version, mode)

    def deploy(self, version: str, *args: str, mode: str | None = None,
               check: int | bool = True) -> subprocess.CompletedProcess[str]:
        self.artifact(version, mode)
        return self.bg("deploy", "--version", version, *args, check=check)

    def answer(self) -> Answer:
        return get(80, address=self.host.address, timeout=2)

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.bg("status", "--json").stdout)["hosts"][0]
        return data

    def unit(self, colour: str, prop: str) -> str:
        return self.host.exec("systemctl", "show", "-p", prop, "--value",
                              f"bluegreen-{APP}@{colour}.service").stdout.strip()


