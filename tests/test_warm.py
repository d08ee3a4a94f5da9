"""The warm process (`bluegreen warm`, bluegreen.warm): commands run in a
fork of a real warm process, with the client's environment, directory, umask, terminal and
signals, against a real nginx, sshd and app; and it refuses or goes away when it should."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

import bluegreen

from conftest import BLUEGREEN, PrivateNginx, Project, make_project, run_cli, start_sshd


def _parent(pid: int) -> int:
    """The parent pid of ``pid`` (from /proc)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_for(predicate: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g}s: {what}")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def socket_dir() -> Iterator[Path]:
    # Short: an AF_UNIX path is at most 107 bytes (pytest's tmp_path can be longer).
    base = Path(tempfile.mkdtemp(prefix="bgwarm-"))
    yield base
    shutil.rmtree(base, ignore_errors=True)


class Warm:
    def __init__(self, sock: Path) -> None:
        self.sock = sock

    def bg(self, *args: str, check: bool | int = True, env_age: str = ""
           ) -> subprocess.CompletedProcess[str]:
        """`bluegreen ARGS` with this warm process's socket (``env_age``: the maximum age
        of its kept SSH connections, for a warm process it starts)."""
        age = {"BLUEGREEN_WARM_MAX_AGE": env_age} if env_age else {}
        return run_cli(Path.cwd(), Path.home(), args, check=check,
                       env={"BLUEGREEN_WARM_SOCKET": str(self.sock), **age})

    def pid(self) -> int:
        out = self.bg("warm", "--status").stdout
        return int(out.split("pid ")[1].split(",")[0])


@pytest.fixture
def warm(socket_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Warm]:
    """A warm process of its own; every `bluegreen` the test runs goes to it."""
    sock = socket_dir / "w" / "warm.sock"
    monkeypatch.setenv("BLUEGREEN_WARM_SOCKET", str(sock))
    w = Warm(sock)
    started = w.bg("warm", "--idle", "120").stderr
    assert "started the warm process" in started, started
    yield w
    w.bg("warm", "--stop")


def test_commands_run_in_a_fork_of_the_warm_process_as_the_user_runs_them(
        warm: Warm, project: Project) -> None:
    warm_pid = warm.pid()
    sock_dir = warm.sock.parent
    assert stat.S_IMODE(sock_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(warm.sock.stat().st_mode) == 0o600
    # A local hook shows what the command process is: its grandparent, umask, env, cwd.
    report = project.dir / "hook.txt"
    project.bg("setup")
    project.write_config(hooks={"pre_deploy": (
        "k=$(awk '{{print $4}}' /proc/$PPID/stat); w=$(awk '{{print $4}}' /proc/$k/stat); "
        f"(echo $w; umask; echo \"$MARKER\"; pwd) > {report}")})
    project.artifact("1.0.0")
    cmd = [*BLUEGREEN, "deploy", "--version", "1.0.0"]
    env = {**os.environ, "HOME": str(project.home), "NO_COLOR": "1", "MARKER": "from-the-client"}
    proc = subprocess.run(["sh", "-c", 'umask 027; exec "$@"', "sh", *cmd], cwd=project.dir,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    grandparent, umask, marker, cwd = report.read_text().split()
    assert int(grandparent) == warm_pid  # forked by the warm process (through its keeper)
    assert umask == "0027" and marker == "from-the-client" and cwd == str(project.dir)
    assert "live is blue" in proc.stdout + proc.stderr
    # The same results as without it: a promote switches traffic, exit codes pass through.
    project.deploy("2.0.0", "--no-promote")
    project.bg("promote", "green")
    assert project.answer().version == "2.0.0"
    bad = project.bg("deploy", "--version", "9.9.9", check=1)
    assert "error:" in bad.stderr
    assert project.bg("check", "-c", "nothing.toml", check=2).stderr.startswith("error: ")
    assert project.answer().version == "2.0.0"
    # Another installation's client (here: a copy of the package) is not served by this
    # warm process: its command runs in its own process.
    other = project.dir / "other"
    shutil.copytree(Path(bluegreen.__file__).parent, other / "bluegreen",
                    ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([*BLUEGREEN, "deploy", "--version", "2.0.0", "--no-promote"],
                          cwd=project.dir, env={**env, "PYTHONPATH": str(other)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert int(report.read_text().split()[0]) != warm_pid


def _ran_in(p: Project, report: Path, env: dict[str, str], prefix: tuple[str, ...] = ()
            ) -> int:
    """Run `bluegreen build` (release.build writes where the command ran: the grandparent of
    the build's shell's parent) with ``env``, under ``prefix``; that pid."""
    report.unlink(missing_ok=True)
    proc = subprocess.run([*prefix, *BLUEGREEN, "build", "--version", "1.0.0", "--json"],
                          cwd=p.dir, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return int(report.read_text().split()[0])


def test_only_a_shell_that_asked_uses_it_and_what_does_not_travel_is_carried_or_refused(
        socket_dir: Path, local_project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    """`eval "$(bluegreen warm)"` opts a shell in; a command without BLUEGREEN_WARM_SOCKET
    (another terminal, cron, CI) runs on its own even with a warm process at the default
    path; the client's TZ and open-files limit are taken on; another network namespace is
    refused (the command runs on its own, in its own namespace)."""
    p = local_project
    report = p.dir / "where.txt"
    p.artifact("1.0.0")
    p.write_config(release={
        "version": "1.0.0", "artifact": "artifacts/sample-{version}.tar.gz",
        "build": ("k=$(awk '{{print $4}}' /proc/$PPID/stat); w=$(awk '{{print $4}}' "
                  f"/proc/$k/stat); (echo $w; date +%z; ulimit -n) > {report}")})
    monkeypatch.delenv("BLUEGREEN_WARM_SOCKET", raising=False)
    runtime = socket_dir / "rt"
    runtime.mkdir(mode=0o700)
    env = {**os.environ, "HOME": str(p.home), "XDG_RUNTIME_DIR": str(runtime)}
    started = subprocess.run([*BLUEGREEN, "warm", "--idle", "60"], env=env, capture_output=True,
                             text=True, timeout=30, check=True)
    sock = runtime / "bluegreen" / "warm.sock"
    assert started.stdout == f"export BLUEGREEN_WARM_SOCKET={sock};\n", started.stdout
    warm_pid = int(started.stderr.split("pid ")[1].split(",")[0])
    asked = {**env, "BLUEGREEN_WARM_SOCKET": str(sock)}
    try:
        # Not asked: runs on its own, though a warm process listens at the default path.
        assert _ran_in(p, report, env) != warm_pid
        # Asked (what the eval exported), with the client's time zone and files limit.
        assert _ran_in(p, report, {**asked, "TZ": "JST-9"}, ("prlimit", "--nofile=333:4096")
                       ) == warm_pid
        _, zone, nofile = report.read_text().split()
        assert (zone, nofile) == ("+0900", "333")
        progress = subprocess.run([*BLUEGREEN, "setup", "--json"],
                                  cwd=p.dir, env={**asked, "TZ": "JST-9"},
                                  capture_output=True, text=True, timeout=60)
        assert progress.stderr and all('+09:00", "elapsed"' in line
                                       for line in progress.stderr.splitlines())
        # Another network namespace: the warm process's would be the wrong one.
        assert _ran_in(p, report, asked, ("unshare", "--net")) != warm_pid
        # `--stop` prints the line that opts the shell out again.
        stopped = subprocess.run([*BLUEGREEN, "warm", "--stop"], env=asked,
                                 capture_output=True, text=True, timeout=30, check=True)
        assert stopped.stdout == "unset BLUEGREEN_WARM_SOCKET;\n"
    finally:
        subprocess.run([*BLUEGREEN, "warm", "--stop"], env=asked, capture_output=True)


def test_ctrl_c_reaches_the_command_and_a_killed_client_takes_its_command_along(
        warm: Warm, local_project: Project) -> None:
    project = local_project
    report = project.dir / "hook.txt"
    project.bg("setup")
    project.write_config(hooks={"pre_deploy": f"echo $PPID $$ > {report}; exec sleep 30"})
    project.artifact("1.0.0")
    env = {**os.environ, "HOME": str(project.home), "NO_COLOR": "1"}

    sleeps: list[int] = []

    def start() -> tuple[subprocess.Popen[str], int]:
        report.unlink(missing_ok=True)
        client = subprocess.Popen([*BLUEGREEN, "deploy", "--version", "1.0.0"],
                                  cwd=project.dir, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        _wait_for(lambda: report.exists() and len(report.read_text().split()) == 2,
                  "the hook ran")
        command, hook = map(int, report.read_text().split())
        sleeps.append(hook)
        return client, command

    # Ctrl-C: the terminal signals the client; the command gets it as without a warm process.
    client, command = start()
    assert _parent(_parent(command)) == warm.pid()
    client.send_signal(signal.SIGINT)
    _, err = client.communicate(timeout=30)
    assert client.returncode == 130, err
    assert "interrupted" in err
    _wait_for(lambda: not _alive(command), "the command ended")
    project.bg("unlock")
    # SIGKILL of the client: nobody is left to report to, so the command is killed too.
    client, command = start()
    client.kill()
    client.wait(10)
    _wait_for(lambda: not _alive(command), "the command was killed with its client")
    # SIGTERM: the command ends by it, and so does the client (as the shell expects).
    project.bg("unlock")
    client, command = start()
    client.terminate()
    client.communicate(timeout=30)
    assert client.returncode == -signal.SIGTERM
    _wait_for(lambda: not _alive(command), "the command ended")
    for pid in sleeps:  # the hook outlives a SIGKILLed command (as it would without warm)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_changed_installation_is_refused_and_the_warm_process_restarts(
        warm: Warm, socket_dir: Path) -> None:
    first = warm.pid()
    # What `pip install -U` of a library does to the environment's site-packages.
    os.utime(sysconfig.get_paths()["purelib"])
    out = warm.bg("--version").stdout  # runs here, not in the stale warm process
    assert "version" in out
    _wait_for(lambda: not _alive(first), "the stale warm process exited")
    _wait_for(lambda: warm.bg("warm", "--status", check=False).returncode == 0,
              "a fresh warm process listens")
    second = warm.pid()
    assert second != first
    # A warm process still starting (here: as a client starts one after an upgrade) is
    # stopped too, and a second one for the same socket does not start beside it.
    warm.bg("warm", "--stop")
    env = {**os.environ, "BLUEGREEN_WARM_SOCKET": str(warm.sock)}
    starting = subprocess.Popen([sys.executable, "-m", "bluegreen.warm", str(warm.sock), "60"],
                                env=env, stderr=subprocess.DEVNULL)
    _wait_for(lambda: (warm.sock.parent / "warm.lock").exists()
              and (warm.sock.parent / "warm.lock").read_text() == str(starting.pid),
              "the starting warm process holds its lock")
    rival = subprocess.run([sys.executable, "-m", "bluegreen.warm", str(warm.sock), "60"],
                            env=env, capture_output=True, text=True, timeout=30)
    assert "another warm process holds" in rival.stderr
    assert warm.bg("warm", "--stop").stderr == f"stopped the warm process (pid {starting.pid})\n"
    assert starting.wait(10) is not None
    assert warm.bg("warm", "--status", check=1).stdout.startswith("no warm process")
    warm.bg("warm")
    second = warm.pid()
    # Asked to stop when it is stale, it stops (and is not started again).
    os.utime(sysconfig.get_paths()["purelib"])
    assert warm.bg("warm", "--stop").stderr == f"stopped the warm process (pid {second})\n"
    _wait_for(lambda: not _alive(second), "the stale warm process exited")
    time.sleep(0.5)
    assert warm.bg("warm", "--status", check=1).stdout.startswith("no warm process")


def test_idle_exit_stop_and_a_directory_open_to_others(socket_dir: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    sock = socket_dir / "idle" / "warm.sock"
    monkeypatch.setenv("BLUEGREEN_WARM_SOCKET", str(sock))
    w = Warm(sock)
    # (its pid from what it printed: a second command may come after its idle second)
    pid = int(w.bg("warm", "--idle", "1").stderr.split("pid ")[1].split(",")[0])
    _wait_for(lambda: not _alive(pid) and not sock.exists(), "the idle warm process exited")
    assert w.bg("warm", "--status", check=1).stdout.startswith("no warm process")
    assert w.bg("--version").returncode == 0  # no warm process: runs as before
    w.bg("warm")
    pid = w.pid()
    assert w.bg("warm").stderr.startswith("the warm process runs already")
    assert w.bg("warm", "--stop").stderr == f"stopped the warm process (pid {pid})\n"
    _wait_for(lambda: not _alive(pid), "the stopped warm process exited")
    w.bg("warm")
    pid = w.pid()
    sock.unlink()  # e.g. its directory was cleaned: nobody can reach it, so it goes
    _wait_for(lambda: not _alive(pid), "the warm process whose socket was removed exited")
    open_dir = socket_dir / "open"
    open_dir.mkdir(mode=0o755)
    open_dir.chmod(0o755)
    err = Warm(open_dir / "warm.sock").bg("warm", check=2).stderr
    assert "closed to others" in err
    assert not (open_dir / "warm.sock").exists()


def _children(pid: int) -> list[int]:
    return [int(c) for t in Path(f"/proc/{pid}/task").iterdir()
            for c in (t / "children").read_text().split()]


def _agents_under(pid: int) -> list[int]:
    """The bluegreen agents running below process ``pid`` (a test sshd)."""
    found, todo = [], [pid]
    while todo:
        for child in _children(todo.pop()):
            todo.append(child)
            try:
                if Path(f"/proc/{child}/cmdline").read_bytes().startswith(b"python3\0-I\0-S"):
                    found.append(child)
            except OSError:
                pass
    return found


def test_the_warm_process_keeps_ssh_connections_and_verifies_again_after_any_change(
        warm: Warm, tmp_path: Path, nginx: PrivateNginx) -> None:
    sshd = start_sshd(tmp_path / "sshd")
    p = make_project(tmp_path, nginx, sshd)
    log = sshd.dir / "sshd.log"

    def logins() -> int:
        return log.read_text(errors="replace").count("Accepted publickey")

    try:
        p.bg("setup")
        p.deploy("1.0.0")
        p.deploy("2.0.0")  # an upload, through the kept connection too
        p.bg("promote", "blue")
        assert p.answer().version == "1.0.0"
        assert logins() == 1  # four commands, one SSH login
        # Between commands only the connection is kept: no agent waits on the server (a
        # login made ahead would miss what changed on the server since: its rc files, PATH).
        _wait_for(lambda: not _agents_under(sshd.proc.pid), "no agent between commands")
        # Each command's session is a new login on the kept connection: a changed rc file
        # counts at once (here: a PATH without python3).
        rc = sshd.dir / "root-home" / ".bashrc"
        rc.write_text("PATH=/nonexistent\n")
        try:
            assert "has no python3" in p.bg("promote", "green", check=3).stderr
        finally:
            rc.unlink()
        assert logins() == 1
        p.bg("check")  # is there to show that a login works: logs in anew
        assert logins() == 2
        # A changed known_hosts (here: the host's key is not the one listed) is verified
        # again on a new connection, and refused: the kept one is not used.
        good = sshd.known_hosts.read_text()
        other = tmp_path / "other"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)],
                       check=True)
        sshd.known_hosts.write_text(f"[127.0.0.1]:{sshd.port} "
                                    + " ".join(Path(f"{other}.pub").read_text().split()[:2])
                                    + "\n")
        err = p.bg("promote", "green", check=3).stderr
        assert "host key" in err and "not" in err and "accepted" in err, err
        assert p.answer().version == "1.0.0"
        sshd.known_hosts.write_text(good)
        p.bg("promote", "green")
        assert p.answer().version == "2.0.0" and logins() == 3
        # The kept connection dies (its sshd process killed): the next command logs in again.
        for child in _children(sshd.proc.pid):
            os.kill(child, signal.SIGKILL)
        p.bg("promote", "blue")
        assert p.answer().version == "1.0.0" and logins() == 4
        # Stopped, the warm process closes its connections: nothing of it stays on the server.
        warm.bg("warm", "--stop")
        _wait_for(lambda: not _agents_under(sshd.proc.pid), "no agent left on the server")
    finally:
        p.cleanup()
        sshd.stop()


# A client that says what it likes: the warm process's groups (argv[3]) whatever its own.
_SNEAK = r'''
import json, os, socket, sys
path, kind, groups = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.settimeout(30)
sock.connect(path)
try:
    if kind == "warm":
        body = json.dumps({"argv": ["--version"], "cwd": "/", "env": dict(os.environ),
                           "umask": 18, "python": sys.argv[4], "package": sys.argv[5],
                           "netns": os.readlink("/proc/self/ns/net"), "groups": groups,
                           "nofile": [1024, 1024]}).encode()
        socket.send_fds(sock, [len(body).to_bytes(4, "big") + body], [0, 1, 2])
    else:
        sock.sendall(json.dumps({"op": "put", "host": {"address": "127.0.0.1", "port": 1},
                                 "env": {}, "stamp": [], "local": "/nonexistent",
                                 "remote": "/tmp/x"}).encode() + b"\n")
    answer = sock.makefile("rb").readline().decode().strip()
except OSError:
    answer = ""
print("answer:", answer or "none (closed)")
'''


def test_a_client_under_another_uid_or_other_groups_is_refused_whatever_it_claims(
        warm: Warm, socket_dir: Path) -> None:
    """Both sockets (the warm process's and its SSH pool's) serve only this uid with this
    process's groups: a client's groups are read from the kernel, not taken from its request;
    another uid is refused by SO_PEERCRED even where the socket is open to it."""
    pool = warm.sock.parent / "ssh.sock"
    own = json.dumps(sorted(os.getgroups()))

    def sneak(path: Path, kind: str, *prefix: str) -> str:
        proc = subprocess.run([*prefix, sys.executable, "-c", _SNEAK, str(path), kind, own,
                               sys.executable, str(Path(bluegreen.__file__).parent)],
                              cwd="/", capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    # This user, these groups: served (the warm process runs it; the pool tries the host).
    assert '"pid"' in sneak(warm.sock, "warm")
    assert '"error"' in sneak(pool, "pool")
    # Other supplementary groups, though the request claims the warm process's: refused.
    other_groups = ("setpriv", "--groups=4242")
    assert sneak(warm.sock, "warm", *other_groups) == "answer: none (closed)\n"
    assert sneak(pool, "pool", *other_groups) == "answer: none (closed)\n"
    # An honest client with other groups runs its command on its own.
    honest = subprocess.run(["setpriv", "--groups=4242", *BLUEGREEN, "--version"],
                            env={**os.environ, "BLUEGREEN_WARM_SOCKET": str(warm.sock)},
                            capture_output=True, text=True, timeout=60)
    assert honest.returncode == 0 and "version" in honest.stdout
    # Another uid, with both sockets made reachable for it: refused by SO_PEERCRED.
    opened = [socket_dir, warm.sock.parent, warm.sock, pool]
    modes = [p.stat().st_mode for p in opened]
    try:
        for p, mode in zip(opened, (0o711, 0o711, 0o666, 0o666)):
            p.chmod(mode)
        nobody = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
        assert sneak(warm.sock, "warm", *nobody) == "answer: none (closed)\n"
        assert sneak(pool, "pool", *nobody) == "answer: none (closed)\n"
    finally:
        for p, mode in zip(opened, modes):
            p.chmod(stat.S_IMODE(mode))


def test_kept_connections_close_when_superseded_and_log_in_anew_after_their_maximum_age(
        socket_dir: Path, tmp_path: Path, nginx: PrivateNginx,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A kept connection whose key changed (here: known_hosts rewritten) is closed, not left
    open on the server; one older than the maximum age (BLUEGREEN_WARM_MAX_AGE, for tests;
    MAX_AGE else) is closed and the next command logs in anew (a key revoked on the server
    stops working within it)."""
    sock = socket_dir / "aged" / "warm.sock"
    monkeypatch.setenv("BLUEGREEN_WARM_SOCKET", str(sock))
    w = Warm(sock)
    w.bg("warm", "--idle", "120", env_age="12")
    sshd = start_sshd(tmp_path / "sshd")
    p = make_project(tmp_path, nginx, sshd)
    log = sshd.dir / "sshd.log"

    def logins() -> int:
        return log.read_text(errors="replace").count("Accepted publickey")

    def connections() -> int:  # (sshd forks one process per connection)
        return len(_children(sshd.proc.pid))

    try:
        p.bg("setup")
        assert logins() == 1 and connections() == 1
        sshd.known_hosts.write_text(sshd.known_hosts.read_text())  # the same keys, rewritten
        p.bg("status")
        p.bg("status")
        assert logins() == 2
        _wait_for(lambda: connections() == 1, "the superseded connection closed")
        _wait_for(lambda: connections() == 0, "the connection past its age closed", 40)
        p.bg("status")
        assert logins() == 3
    finally:
        w.bg("warm", "--stop")
        p.cleanup()
        sshd.stop()
