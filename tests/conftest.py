"""Real parts for the tests: a private nginx, a real sshd on 127.0.0.1, real app processes
from real tarballs, and the `bluegreen` command run as a user would run it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

from bluegreen.demo.haproxy import PrivateHAProxy
# Parallel workers (pytest-xdist) take their ports from ranges of their own, below the
# kernel's ephemeral ports (32768-60999): two workers' apps never get the same port.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if _WORKER.startswith("gw") and _WORKER[2:].isdigit():
    _LOW = 20000 + 2000 * int(_WORKER[2:])
    os.environ["BLUEGREEN_PORT_RANGE"] = f"{_LOW}-{_LOW + 2000}"

from bluegreen.demo.nginx import PrivateNginx, build_sample, free_port  # noqa: E402

BLUEGREEN = [sys.executable, "-m", "bluegreen"]
SERVER_NAME = "testapp.test"


@contextmanager
def squatter(port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A process that is not a slot's (another app, say) listening on ``port``."""
    proc = subprocess.Popen(["python3", "-m", "http.server", "--bind", "127.0.0.1", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield proc
    finally:
        proc.kill()
        proc.wait()


def private_subnet() -> int:
    """The third octet of a /24 for this test process's bridges: distinct for each
    pytest-xdist worker of a run (up to 5 workers), and most likely from other runs."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    return 20 + (os.getpid() % 40) * 5 + worker % 5


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def with_home(home: Path, argv: list[str]) -> list[str]:
    """``argv`` run in a private mount namespace where root's home directory (as
    /etc/passwd says, which sshd reads) is ``home``. Only /etc/passwd is replaced, so
    every other path, the checkout and its virtualenv included, stays visible."""
    passwd = home.parent / f"{home.name}.passwd"
    lines = Path("/etc/passwd").read_text().splitlines()
    passwd.write_text("".join(
        (":".join([*f[:5], str(home), *f[6:]]) if (f := line.split(":"))[0] == "root"
         else line) + "\n" for line in lines))
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount --bind "$1" /etc/passwd && shift && exec "$@"', "sh", str(passwd), *argv]


def log_tail(path: Path, lines: int = 30) -> str:
    """The last lines of a helper process's log, for a test failure message."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"({path}: {exc.strerror})"
    return "\n".join(text.splitlines()[-lines:]) or f"({path} is empty)"


@dataclass
class Sshd:
    port: int
    dir: Path
    client_key: Path
    known_hosts: Path
    proc: subprocess.Popen[bytes]
    host_pub: str

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def sshd_config(listen: str, host_key: Path, pid_file: Path, authorized: Path,
                log_level: str = "INFO") -> str:
    """A test sshd's config: keys only, root allowed, sftp, forwarding for health checks."""
    return listen + "\n" + f"LogLevel {log_level}\n" + textwrap.dedent(f"""\
        HostKey {host_key}
        PidFile {pid_file}
        AuthorizedKeysFile {authorized}
        PasswordAuthentication no
        KbdInteractiveAuthentication no
        PubkeyAuthentication yes
        PermitRootLogin prohibit-password
        UsePAM no
        StrictModes no
        AllowTcpForwarding yes
        AllowStreamLocalForwarding yes
        MaxSessions 100
        MaxStartups 100
        Subsystem sftp internal-sftp
        """)


def start_sshd(base: Path, log_level: str = "INFO") -> Sshd:
    """sshd with its own config, host key and authorized key, on a free loopback port;
    its log (``log_level``, e.g. DEBUG1 to see each request) in ``base/sshd.log``."""
    base.mkdir(parents=True, exist_ok=True)
    host_key = base / "ssh_host_ed25519_key"
    client_key = base / "id_ed25519"
    for key in (host_key, client_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    authorized = base / "authorized_keys"
    authorized.write_text((base / "id_ed25519.pub").read_text())
    authorized.chmod(0o644)
    port = free_port()
    conf = base / "sshd_config"
    conf.write_text(sshd_config(f"Port {port}\nListenAddress 127.0.0.1", host_key,
                                base / "sshd.pid", authorized, log_level))
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation dir; never removed
    # The test user is root; this machine's /root/.bashrc runs `pyenv init`, which costs
    # ~100 ms per SSH command. A server's login user has no such rc file, so root gets a
    # home of its own here (nothing is mounted over /root, where the checkout may live).
    home = base / "root-home"
    home.mkdir(exist_ok=True)
    log = base / "sshd.log"
    proc = subprocess.Popen(with_home(home, ["/usr/sbin/sshd", "-D", "-e", "-f", str(conf)]),
                            stdout=subprocess.DEVNULL, stderr=open(log, "wb"), cwd="/")
    try:
        wait_port(port)
    except TimeoutError as exc:
        proc.kill()
        raise TimeoutError(f"{exc}; the sshd's output:\n{log_tail(log)}") from None
    host_pub = (base / "ssh_host_ed25519_key.pub").read_text().split()
    known_hosts = base / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    return Sshd(port, base, client_key, known_hosts, proc, f"{host_pub[0]} {host_pub[1]}")


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[PrivateNginx]:
    server = PrivateNginx(tmp_path / "nginx", free_port())
    server.write_config(workers=1)
    server.start()
    yield server
    server.stop()


def run_cli(cwd: Path, home: Path, args: tuple[str, ...] | list[str], *,
            check: bool | int = True, timeout: float = 120, input: str | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`bluegreen ARGS` in ``cwd`` with its own HOME (and ``env`` added), as a user would
    run it; ``check``: the exit code expected (True: 0, False: any)."""
    env = {**os.environ, "HOME": str(home), "COLUMNS": "200", "NO_COLOR": "1", **(env or {})}
    proc = subprocess.run([*BLUEGREEN, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, input=input)
    expected = 0 if check is True else check
    if check is not False and proc.returncode != expected:
        raise AssertionError(
            f"bluegreen {' '.join(args)} exited {proc.returncode}, expected {expected}\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}")
    return proc


def sample_artifact(project_dir: Path, version: str, mode: str | None = None) -> Path:
    """The sample app at ``version`` (a broken one with ``mode``) where the test configs'
    `release.artifact` points: artifacts/sample-VERSION.tar.gz."""
    built = build_sample(project_dir / "build", version, mode)
    dest = project_dir / "artifacts" / f"sample-{version}.tar.gz"
    dest.parent.mkdir(exist_ok=True)
    shutil.copyfile(built, dest)
    return dest


@dataclass
class Answer:
    status: int
    body: str
    colour: str | None
    version: str | None


def get(port: int, path: str = "/", host: str = SERVER_NAME, timeout: float = 5,
        address: str = "127.0.0.1") -> Answer:
    req = urllib.request.Request(f"http://{address}:{port}{path}", headers={"Host": host})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Answer(resp.status, resp.read().decode(), resp.headers.get("X-Deployment-Id"),
                          resp.headers.get("X-App-Version"))
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, exc.read().decode(errors="replace"),
                      exc.headers.get("X-Deployment-Id"), exc.headers.get("X-App-Version"))
    except (urllib.error.URLError, OSError) as exc:
        return Answer(0, str(exc), None, None)


@dataclass
class Project:
    """A user's project dir: bluegreen.toml, artifacts, and a HOME of its own."""

    dir: Path
    nginx: PrivateNginx | PrivateHAProxy  # the project's proxy, of either kind
    kind: str  # "local" or "ssh"
    blue: int
    green: int
    sshd: Sshd | None
    home: Path
    extra_run: dict[str, Any] = field(default_factory=dict)
    extra_proxy: dict[str, Any] = field(default_factory=dict)
    host_override: dict[str, Any] = field(default_factory=dict)

    @property
    def deploy_to(self) -> Path:
        """The host's deploy_to (a test may set another in ``host_override``: `cleanup`
        then still finds the slots' processes)."""
        return Path(self.host_override.get("deploy_to", self.dir / "srv"))

    def host_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": "web1", "deploy_to": str(self.deploy_to)}
        if self.kind == "local":
            entry["address"] = "local"
        else:
            assert self.sshd is not None
            entry.update(address="root@127.0.0.1", port=self.sshd.port,
                         identity_file=str(self.sshd.client_key),
                         known_hosts=str(self.sshd.known_hosts))
        entry.update(self.host_override)
        return {k: v for k, v in entry.items() if v is not None}  # None: leave the key out

    def write_config(self, **sections: Any) -> Path:
        run = {"command": "exec python3 app.py", "health_timeout": 8, "stop_timeout": 5,
               "drain_timeout": 2}
        for key, value in self.extra_run.items():
            if value is None:
                run.pop(key, None)
            else:
                run[key] = value
        proxy = {"server_name": SERVER_NAME, **self.nginx.proxy_settings()}
        proxy.update(self.extra_proxy)
        data: dict[str, Any] = {
            "app": "testapp",
            "release": {"version": "1.0.0", "artifact": "artifacts/sample-{version}.tar.gz"},
            "run": run,
            "slots": {"blue": self.blue, "green": self.green},
            "proxy": proxy,
            "hosts": [self.host_entry()],
        }
        data.update(sections)
        path = self.dir / "bluegreen.toml"
        path.write_text(to_toml(data))
        return path

    def artifact(self, version: str, mode: str | None = None) -> Path:
        """Build the sample app at ``version`` (a broken one with ``mode``)."""
        return sample_artifact(self.dir, version, mode)

    def bg(self, *args: str, check: bool | int = True, timeout: float = 120,
           input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run `bluegreen ARGS` in the project dir, as a user would."""
        return run_cli(self.dir, self.home, args, check=check, timeout=timeout, input=input)

    def deploy(self, version: str, *extra: str, check: bool | int = True,
               mode: str | None = None) -> subprocess.CompletedProcess[str]:
        self.artifact(version, mode)
        return self.bg("deploy", "--version", version, *extra, check=check)

    def answer(self) -> Answer:
        return get(self.nginx.port)

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.bg("status", "--json").stdout)
        return data["hosts"][0]

    def history(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = json.loads(self.bg("history", "--json").stdout)["events"]
        return events

    def link_target(self) -> str:
        return os.readlink(self.nginx.sites_enabled / "testapp")

    def cleanup(self) -> None:
        """Kill every process the slots started (by session id, then by their environment,
        which names this project's releases: never another test's process)."""
        for colour in ("blue", "green"):
            pid_file = self.deploy_to / "slots" / colour / "pid"
            if pid_file.exists():
                try:
                    os.killpg(int(pid_file.read_text().strip()), signal.SIGKILL)
                except (ProcessLookupError, ValueError, PermissionError):
                    pass
        for pid in app_pids(self):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@dataclass(frozen=True)
class LiveSlot:
    """Everything about the live slot that no deploy may touch (invariants 1 and 2), and
    the proxy's state: compared before and after a command."""

    colour: str
    pid: int | None  # the process listening on the live port
    state: str  # slots/<colour>/state.json
    env: str  # slots/<colour>/env
    release: str  # sha256 over the live release dir's paths and contents
    link: str  # the nginx link's target (haproxy: the map file's text)
    proxy_workers: tuple[int, ...]  # nginx's worker pids (haproxy: its pids): a reload replaces them
    # haproxy: what its runtime API says serves (the live backend's servers, state and
    # weights; the map's entries in memory, which `set map` changes without the file)
    proxy_state: str = ""


def live_slot(p: Project) -> LiveSlot:
    """A snapshot of ``p``'s live slot and proxy, read directly from disk and /proc."""
    import hashlib

    if isinstance(p.nginx, PrivateNginx):
        link = os.readlink(p.nginx.sites_enabled / "testapp")
        colour = link.rsplit("-", 1)[1]
    else:
        link = (p.nginx.conf_d / "testapp.map").read_text()
        colour = next(line.split()[1] for line in link.splitlines() if line.startswith("live "))
    slot = p.deploy_to / "slots" / colour
    state = (slot / "state.json").read_text()
    release = Path(json.loads(state)["cwd"])
    digest = hashlib.sha256()
    for path in sorted(release.rglob("*")):
        digest.update(str(path.relative_to(release)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    port = p.blue if colour == "blue" else p.green
    out = subprocess.run(["ss", "-Htlnp", f"sport = :{port}"], capture_output=True,
                         text=True).stdout
    import re

    pids = sorted({int(x) for x in re.findall(r"pid=(\d+)", out)})
    proxy_state = ""
    if isinstance(p.nginx, PrivateNginx):
        master = p.nginx.pid()
        workers = subprocess.run(["pgrep", "-P", str(master)], capture_output=True,
                                 text=True).stdout.split() if master else []
    else:
        workers = [str(pid) for pid in p.nginx.pids()]
        proxy_state = haproxy_state(p.nginx, colour)
    return LiveSlot(colour, pids[0] if pids else None, state, (slot / "env").read_text(),
                    digest.hexdigest(), link, tuple(sorted(int(w) for w in workers)), proxy_state)


def haproxy_state(server: PrivateHAProxy, colour: str) -> str:
    """The live backend's rows of `show servers state` (address, port, operational and
    admin state, weights, checks; without the seconds since the last change) and the
    entries of the map in HAProxy's memory (without their addresses)."""
    backend = f"bluegreen_testapp_{colour}"
    rows = [line.split() for line in server.api("show servers state").splitlines()]
    servers = [" ".join(r[:9] + r[10:]) for r in rows if len(r) > 10 and r[1] == backend]
    assert servers, f"no server of {backend} in `show servers state`"
    entries = [line.split(None, 1)[1] for line in server.api(
        f"show map {server.conf_d / 'testapp.map'}").splitlines() if line.strip()]
    return "\n".join(servers + entries)


def app_pids(p: Project) -> set[int]:
    """Every live process started for this project's slots (found by its environment)."""
    marker = f"BLUEGREEN_RELEASE_DIR={p.deploy_to}/releases/".encode()
    pids = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker in (proc / "environ").read_bytes():
                    stat = (proc / "stat").read_text()
                    if stat.rsplit(")", 1)[1].split()[0] != "Z":
                        pids.add(int(proc.name))
            except OSError:
                continue
    return pids


def plain_result(text: str) -> dict[str, Any]:
    """A --json result with each host's `round_trips` checked (a count per kind and their
    total) and left out, for comparing the rest exactly."""
    data: dict[str, Any] = json.loads(text)
    for host in data.get("hosts", []):
        trips = host.pop("round_trips", None)
        if trips is not None:
            assert trips["total"] == trips["commands"] + trips["checks"] + trips["uploads"]
    return data


def to_toml(data: dict[str, Any]) -> str:
    """A tiny TOML writer for the shapes tests use (tables, arrays of tables, scalars)."""
    lines: list[str] = []
    scalars = {k: v for k, v in data.items() if not isinstance(v, (dict, list))}
    for k, v in scalars.items():
        lines.append(f"{k} = {toml_value(v)}")
    for k, v in data.items():
        if isinstance(v, dict):
            lines.append(f"\n[{k}]")
            sub = {kk: vv for kk, vv in v.items() if not isinstance(vv, dict)}
            for kk, vv in sub.items():
                lines.append(f"{kk} = {toml_value(vv)}")
            for kk, vv in v.items():
                if isinstance(vv, dict):
                    lines.append(f"\n[{k}.{kk}]")
                    for k3, v3 in vv.items():
                        lines.append(f"{toml_value(k3)} = {toml_value(v3)}")
        elif isinstance(v, list):
            for item in v:
                lines.append(f"\n[[{k}]]")
                for kk, vv in item.items():
                    lines.append(f"{kk} = {toml_value(vv)}")
    return "\n".join(lines) + "\n"


def toml_value(v: Any) -> str:
    if isinstance(v, dict):  # an inline table
        return "{ " + ", ".join(f"{toml_value(k)} = {toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    return json.dumps(str(v))


def make_project(tmp_path: Path, nginx: PrivateNginx | PrivateHAProxy,
                 sshd: Sshd | None) -> Project:
    home = tmp_path / "home"
    home.mkdir()
    proj_dir = tmp_path / "project"
    proj_dir.mkdir()
    proj = Project(proj_dir, nginx, "ssh" if sshd else "local", free_port(), free_port(), sshd,
                   home)
    proj.write_config()
    return proj


@pytest.fixture(params=["local", "ssh"])
def project(request: pytest.FixtureRequest, tmp_path: Path, nginx: PrivateNginx) -> Iterator[Project]:
    """The same test on `local` and over a real sshd."""
    server = request.getfixturevalue("sshd") if request.param == "ssh" else None
    proj = make_project(tmp_path, nginx, server)
    yield proj
    proj.cleanup()


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[PrivateHAProxy]:
    server = PrivateHAProxy(tmp_path / "haproxy", free_port())
    server.write_config()
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["local", "ssh"])
def hx_project(request: pytest.FixtureRequest, tmp_path: Path,
               haproxy: PrivateHAProxy) -> Iterator[Project]:
    """A project whose proxy is a private HAProxy, on `local` and over a real sshd."""
    server = request.getfixturevalue("sshd") if request.param == "ssh" else None
    proj = make_project(tmp_path, haproxy, server)
    yield proj
    proj.cleanup()


@pytest.fixture
def local_project_hx(tmp_path: Path, haproxy: PrivateHAProxy) -> Iterator[Project]:
    proj = make_project(tmp_path, haproxy, None)
    yield proj
    proj.cleanup()


@pytest.fixture
def local_project(tmp_path: Path, nginx: PrivateNginx) -> Iterator[Project]:
    proj = make_project(tmp_path, nginx, None)
    yield proj
    proj.cleanup()


@pytest.fixture
def ssh_project(tmp_path: Path, nginx: PrivateNginx, sshd: Sshd) -> Iterator[Project]:
    proj = make_project(tmp_path, nginx, sshd)
    yield proj
    proj.cleanup()
