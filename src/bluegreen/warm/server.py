"""The warm process (`bluegreen warm`): one long-lived process per user that has imported
everything a command needs (click, pydantic and the config models, rich, Jinja2, asyncssh:
~0.3 s that every command otherwise spends before it does anything) and runs each command
in a fork of itself, so a command starts in milliseconds.

It also forks the SSH pool (``warm.pool.serve_pool``): the SSH connections its commands
opened, kept for the next ones. The client end is ``warm.client`` (used by the `bluegreen`
entry point, ``bluegreen.__main__``, when $BLUEGREEN_WARM_SOCKET is set). Per command:

    client --(argv, cwd, env, umask + its stdin/stdout/stderr)--> socket
    warm process: fork a *keeper* for the connection (the warm process only accepts)
    keeper: fork the *command* (its own process group, the client's fds as 0/1/2, the
            client's environment, directory and umask; then `bluegreen.cli`), answer its pid,
            wait for it (or for the client to go away: then SIGKILL, as for a killed
            command), answer its exit status.

Safety: the socket is in a directory only this user can enter (0700) and is 0600; both
ends check the other's uid (SO_PEERCRED), and the warm process (and its pool) also the
client's gid and supplementary groups, as the kernel has them (``pool.same_user``).
Nothing of a request is logged. A command runs
with the client's environment, never the warm process's. When bluegreen's code (or the
Python packages beside it) changed on disk after the warm process started, it refuses the
command (the client runs it itself, and starts a fresh warm process) and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib
import json
import os
import resource
import select
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

from bluegreen.errors import BlueGreenError
from bluegreen.hosts import relay
from bluegreen.warm.pool import inode, same_user, serve_pool
from bluegreen.warm.client import connect, context, package_dir, socket_path

# A request is small (argv, environment); bigger is not a bluegreen client.
MAX_REQUEST = 4 << 20
# AF_UNIX paths are at most 107 bytes on Linux.
MAX_PATH = 107
READY_TIMEOUT = 30.0


class WarmError(BlueGreenError):
    exit_code = 2


def fingerprint() -> list[Any]:
    """What the running code is: its Python, its package directory, the newest change to
    bluegreen's source and to the directory its libraries are installed in."""
    newest = 0
    for root, dirs, files in os.walk(package_dir()):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith((".py", ".j2", ".toml")):
                newest = max(newest, os.stat(os.path.join(root, name)).st_mtime_ns)
    libraries = sysconfig.get_paths()["purelib"]
    try:
        installed = os.stat(libraries).st_mtime_ns
    except OSError:
        installed = 0
    return [sys.executable, package_dir(), newest, installed]


# What commands import, imported once in the warm process (with the lazily imported pieces
# a first command would otherwise import: asyncio's executor for name lookups, the IDNA codec
# for host names, rich's emoji table for the first line printed).
WARM_MODULES = ("asyncio", "concurrent.futures.thread", "encodings.idna", "tomllib",
                "rich._emoji_codes", "bluegreen.cli", "bluegreen.hosts.local",
                "bluegreen.hosts.ssh", "bluegreen.commands.operations", "bluegreen.commands.reports",
                "bluegreen.cli.views", "bluegreen.commands.workflow", "bluegreen.commands.setup")


def _warm_up() -> None:
    """Import what commands use, build the config models and compile the templates once
    (in the warm process, so that no fork does it again)."""
    import tomllib

    from bluegreen.config import presets
    from bluegreen.config import parse_config
    from bluegreen.output import Reporter
    from bluegreen.plan.template import compile_builtin

    for name in WARM_MODULES:
        importlib.import_module(name)
    parse_config(tomllib.loads(presets.render("generic", "warm")), Path("/"))
    Reporter(verbose=False)
    compile_builtin()


def _recv_request(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    data, fds, _, _ = socket.recv_fds(conn, 65536, 3)
    if len(data) < 4:
        raise ValueError("short request")
    size = int.from_bytes(data[:4], "big")
    if size > MAX_REQUEST:
        raise ValueError("request too big")
    body = bytearray(data[4:])
    while len(body) < size:
        chunk = conn.recv(min(65536, size - len(body)))
        if not chunk:
            raise ValueError("request cut short")
        body += chunk
    return json.loads(body), list(fds)


def _send(conn: socket.socket, message: dict[str, Any]) -> None:
    conn.sendall(json.dumps(message).encode() + b"\n")


def _run_command(request: dict[str, Any], fds: list[int], pool: str) -> None:
    """In the forked command process: become the client's command (its SSH connections
    lent by the pool listening on ``pool``), run it, exit."""
    os.setpgid(0, 0)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in fds:
        if fd > 2:
            os.close(fd)
    os.umask(int(request["umask"]))
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ[relay.ENV] = pool  # (the commands layer hands it to hosts.connect)
    time.tzset()  # the client's TZ: history and JSON times in its zone, not this process's
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, tuple(request["nofile"]))
    except (KeyError, ValueError, OSError):  # above this process's hard limit: keep its own
        pass
    os.chdir(request["cwd"])
    encodings = request.get("encoding") or ["utf-8"] * 3
    sys.stdin = os.fdopen(0, "r", encoding=encodings[0], closefd=False)
    sys.stdout = os.fdopen(1, "w", encoding=encodings[1], closefd=False,
                           buffering=1 if os.isatty(1) else -1)
    sys.stderr = os.fdopen(2, "w", encoding=encodings[2], errors="backslashreplace",
                           closefd=False, buffering=1)
    for name in ("stdin", "stdout", "stderr"):  # what terminal-size lookups use
        setattr(sys, f"__{name}__", getattr(sys, name))
    sys.argv = ["bluegreen", *request["argv"]]
    from bluegreen.cli import main

    code = 1
    try:
        main(args=list(request["argv"]), prog_name="bluegreen")
        code = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
    except BaseException:  # what Python would print before exiting 1
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except OSError:
                pass
    os._exit(code)


def _keep(conn: socket.socket, started: list[Any], restart: list[str], pool: str) -> None:
    """In the forked keeper: take one request, run it in a child, report how it ended."""
    try:
        request, fds = _recv_request(conn)
    except (OSError, ValueError):
        os._exit(0)
    if request.get("stop"):
        _send(conn, {"stopping": os.getppid()})
        os.kill(os.getppid(), signal.SIGTERM)
        os._exit(0)
    if request.get("status"):
        _send(conn, {"pid": os.getppid(), "fingerprint": started})
        os._exit(0)
    if [request.get("python"), request.get("package")] != started[:2]:
        _send(conn, {"refused": "another installation of bluegreen"})
        os._exit(0)
    own = context()
    for key, what in (("netns", "another network namespace"), ("groups", "other groups")):
        if request.get(key) != own[key]:  # it would run with this process's: run it there
            _send(conn, {"refused": f"the command runs in {what}"})
            os._exit(0)
    if fingerprint() != started:
        _send(conn, {"refused": "bluegreen changed on disk", "restart": restart})
        os.kill(os.getppid(), signal.SIGTERM)
        os._exit(0)
    pid = os.fork()
    if pid == 0:
        conn.close()
        _run_command(request, fds, pool)
    for fd in fds:
        os.close(fd)
    try:
        os.setpgid(pid, pid)  # (the child does too: whichever runs first)
    except OSError:
        pass
    pidfd = os.pidfd_open(pid)
    try:
        _send(conn, {"pid": pid})
        while pidfd not in select.select([pidfd, conn.fileno()], [], [])[0]:
            if conn.recv(1, socket.MSG_PEEK) == b"":  # the client went away (killed)
                raise ConnectionResetError
    except OSError:  # so does its command, with what it started (its process group)
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    try:
        if os.WIFSIGNALED(status):
            _send(conn, {"signal": os.WTERMSIG(status)})
        else:
            _send(conn, {"exit": os.waitstatus_to_exitcode(status)})
    except OSError:
        pass
    os._exit(0)


def serve(path: str, idle: float) -> None:
    """The warm process's life: take the lock, warm up, listen, fork a keeper per
    connection; exit after ``idle`` seconds without one (or on SIGTERM)."""
    _usable(path)
    lock = os.open(_lock_path(path), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # another one runs or starts (e.g. two restarts at once)
        print(f"another warm process holds {_lock_path(path)}", file=sys.stderr)
        return
    os.ftruncate(lock, 0)
    os.write(lock, str(os.getpid()).encode())
    _warm_up()
    started = fingerprint()
    restart = [sys.executable, "-m", "bluegreen.warm", path, str(idle)]
    listener = _listen(path)
    ours = inode(path)
    pool_path = os.path.join(os.path.dirname(path), "ssh.sock")
    pool = _start_pool(pool_path, listener, lock)
    for name in ("SIGTERM", "SIGHUP", "SIGINT"):
        signal.signal(getattr(signal, name), _stop)
    keepers: set[int] = set()
    last = time.monotonic()
    listener.settimeout(1.0)
    try:
        while True:
            for pid in [*keepers, pool]:  # (the pool too, should it end: no zombie)
                try:
                    ended = os.waitpid(pid, os.WNOHANG)[0]
                except ChildProcessError:
                    ended = pid
                if ended:
                    keepers.discard(pid)
            if keepers:  # a command runs: idle counts from its end
                last = time.monotonic()
            elif time.monotonic() - last > idle:
                break
            if inode(path) != ours:  # removed (or replaced): nobody can reach this one
                break
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            if not same_user(conn):  # (another uid or group set: the client runs its own)
                conn.close()
                continue
            last = time.monotonic()
            conn.settimeout(None)
            pid = os.fork()
            if pid == 0:
                listener.close()
                os.close(lock)  # (held by the warm process alone)
                for name in ("SIGTERM", "SIGHUP"):
                    signal.signal(getattr(signal, name), signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.default_int_handler)
                _keep(conn, started, restart, pool_path)
            keepers.add(pid)
            conn.close()
    except _Stopped:
        pass
    finally:
        listener.close()
        if inode(path) == ours:
            with contextlib.suppress(OSError):
                os.unlink(path)


def _start_pool(path: str, listener: socket.socket, lock: int) -> int:
    """Fork the SSH pool (``pool.serve_pool``): before any command, so that it has no
    event loop of anyone's; the commands forked later are given its socket in their
    environment ($BLUEGREEN_SSH_POOL, ``hosts.relay``)."""
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        listener.close()
        os.close(lock)
        for name in ("SIGTERM", "SIGHUP", "SIGINT"):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
        os.setpgid(0, 0)
        try:
            asyncio.run(serve_pool(path, parent))
        finally:
            os._exit(0)
    return pid


class _Stopped(Exception):
    pass


def _stop(signum: int, frame: Any) -> None:
    raise _Stopped


def _usable(path: str) -> None:
    """The socket's directory, made 0700 if it is not there; refused when someone else owns
    it or others can enter it, or when the path is too long for a socket."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    st = os.stat(directory)
    if st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) & 0o077:
        raise WarmError(f"{directory} must be this user's own and closed to others (chmod 700) "
                        "to hold the warm process's socket")
    if len(os.fsencode(path)) > MAX_PATH:
        raise WarmError(f"the socket path {path} is longer than {MAX_PATH} bytes; set "
                        "BLUEGREEN_WARM_SOCKET to a shorter one")


def _listen(path: str) -> socket.socket:
    _usable(path)
    if _running(path) is not None:
        raise WarmError(f"a warm process already listens on {path}")
    with contextlib.suppress(OSError):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        listener.bind(path)
    finally:
        os.umask(old)
    listener.listen(64)
    return listener


def _ask(path: str, request: dict[str, Any]) -> dict[str, Any] | None:
    """One administrative request (stop, status) to the warm process at ``path``."""
    sock = connect(path)
    if sock is None:
        return None
    with sock:
        sock.settimeout(10)
        body = json.dumps(request).encode()
        try:
            sock.sendall(len(body).to_bytes(4, "big") + body)
            answer: dict[str, Any] = json.loads(sock.makefile("rb").readline() or b"{}")
        except (OSError, ValueError):
            return None
    return answer


def _lock_path(path: str) -> str:
    return os.path.join(os.path.dirname(path), "warm.lock")


def _starting(path: str) -> int | None:
    """The pid of a warm process for ``path`` that holds its lock (it runs, or it is still
    starting: importing, not listening yet), if one does."""
    try:
        fd = os.open(_lock_path(path), os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.read(fd, 32).decode(errors="replace").strip()
        return int(text) if text.isdigit() else None
    finally:
        os.close(fd)
    return None


def _running(path: str) -> int | None:
    """The pid of the warm process listening on ``path``, if one does."""
    answer = _ask(path, {"status": True})
    return int(answer["pid"]) if answer and "pid" in answer else None


def start(idle: float, path: str | None = None) -> tuple[str, int, bool]:
    """Start this user's warm process (detached) unless one runs: (socket, pid, started)."""
    path = path or socket_path()
    pid = _running(path)
    if pid is not None:
        return path, pid, False
    _usable(path)
    log = os.path.join(os.path.dirname(path), "warm.log")
    proc = None
    if _starting(path) is None:  # (else one is starting already: wait for it)
        with open(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as err:
            proc = subprocess.Popen([sys.executable, "-m", "bluegreen.warm", path, str(idle)],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=err, start_new_session=True, cwd="/")
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        pid = _running(path)
        if pid is not None:
            return path, pid, proc is not None
        if proc is not None and proc.poll() is not None and _starting(path) is None:
            text = Path(log).read_text().strip()
            raise WarmError(f"the warm process exited at start ({proc.returncode}): "
                            f"{text.splitlines()[-1] if text else 'no output'} (log: {log})")
        time.sleep(0.02)
    if proc is not None:
        proc.kill()
    raise WarmError(f"the warm process did not listen on {path} within {READY_TIMEOUT:g}s")


def stop(path: str | None = None) -> int | None:
    """Stop this user's warm process; its pid, or None when none ran. Commands it is
    running go on to their end."""
    path = path or socket_path()
    answer = _ask(path, {"stop": True})
    if not answer or "stopping" not in answer:
        starting = _starting(path)  # not listening yet (e.g. restarted after an upgrade)
        if starting is not None:
            with contextlib.suppress(OSError):
                os.kill(starting, signal.SIGTERM)
        return starting
    pid = int(answer["stopping"])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and os.path.exists(path):
        time.sleep(0.01)
    return pid


def status(path: str | None = None) -> int | None:
    """The pid of this user's warm process, or None."""
    return _running(path or socket_path())
