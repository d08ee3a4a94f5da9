"""SSHHost: a server over one asyncssh connection per command, and on it one session
running bluegreen's agent (``hosts.agent``) for every command and check. The only asyncssh
import.

Host keys are always verified against ``known_hosts`` (the host's own setting, else
``~/.ssh/known_hosts``); an unknown or changed key is exit 3, never accepted.

In a fork of the warm process (`bluegreen warm`), the connection is the warm process's SSH
pool's (``serve_pool``): one kept connection per host and way of reaching it, on which each
command opens its own agent session and uploads (a relay over a Unix socket), so a command
does not pay the SSH handshake again. A kept connection is used only while everything its
verification and login depended on is unchanged (the known_hosts file, the identity file,
~/.ssh and its config, HOME, the user, the ssh-agent socket): any change, and the command
gets a new connection, verified again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import shutil
import socket
import stat
import struct
import sys
import termios
import tty
from pathlib import Path, PurePosixPath
from typing import Any, AsyncIterator, Iterator, Sequence

import asyncssh

from bluegreen.config import HostConfig
from bluegreen.errors import BlueGreenError, CommandFailed, ConnectError
from bluegreen.hosts import agent as agent_program
from bluegreen.hosts.base import Op

CONNECT_TIMEOUT = 15.0
AGENT_START_TIMEOUT = 20.0
# How long past a request's own timeout its answer may take (the network, a busy host).
ANSWER_MARGIN = 30.0
# The agent, run by the login shell like any command: its source is the argument; -I -S:
# the standard library only (no site-packages, no PYTHON* variables; ~30 ms less).
AGENT_COMMAND = "exec python3 -I -S -c " + shlex.quote(Path(agent_program.__file__).read_text())
# The socket of the warm process's SSH pool, in a fork of it (set by bluegreen.warm).
POOL: str | None = None
# What a connection's login reads from the environment (asyncssh: ~/.ssh, the user name,
# the ssh-agent): the pool connects with the command's values of these.
POOL_ENV = ("HOME", "USER", "LOGNAME", "SSH_AUTH_SOCK")
# How long a kept connection may take to open a session before it is taken for dead.
SESSION_TIMEOUT = 10.0
# How long the pool waits for a command to close its end after its agent ended.
HANG_UP_TIMEOUT = 30.0
# The longest line of an answer the relay passes (an agent's answer is one JSON line).
LINE_LIMIT = 1 << 28


def _stdin() -> Any:
    """This process's stdin as asyncssh can read it: a character device that is not a
    terminal (/dev/null, as under cron or CI) cannot be polled, so it is sent as empty."""
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError):
        return asyncssh.DEVNULL
    if stat.S_ISCHR(mode) and not os.isatty(sys.stdin.fileno()):
        return asyncssh.DEVNULL
    return _copy(sys.stdin, "rb")


def _copy(stream: Any, mode: str) -> Any:
    """An unbuffered file on a duplicate of ``stream``'s descriptor."""
    return os.fdopen(os.dup(stream.fileno()), mode, buffering=0)


class _Agent:
    """The client end of one host's agent (``hosts.agent``): requests written as JSON
    lines, answers matched to them by id, as they come."""

    def __init__(self, process: Any) -> None:
        self.process = process
        self.next_id = 0
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.hello: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.ended: BaseException | None = None
        self.served = 0  # requests the agent says it took, as of its latest answer
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for line in self.process.stdout:
                if not self.hello.done():  # what the login's rc files print comes first
                    with contextlib.suppress(ValueError):
                        hello = json.loads(line)
                        if isinstance(hello, dict) and "agent" in hello:
                            self.hello.set_result(hello)
                    continue
                message = json.loads(line)
                self.served = max(self.served, int(message.pop("served", 0)))
                future = self.pending.pop(message.pop("id", -1), None)
                if future is not None and not future.done():
                    future.set_result(message)
            self.ended = ConnectionError("the agent ended")
        except (asyncssh.Error, OSError, ValueError) as exc:
            self.ended = exc
        for future in [self.hello, *self.pending.values()]:
            if not future.done():
                future.set_exception(self.ended)
        self.pending.clear()

    @property
    def started(self) -> bool:
        """Whether the agent said hello."""
        return (self.hello.done() and not self.hello.cancelled()
                and self.hello.exception() is None)

    async def call(self, request: dict[str, Any], wait: float) -> dict[str, Any]:
        if self.ended is not None:
            raise self.ended
        self.next_id += 1
        ident = self.next_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[ident] = future
        self.process.stdin.write(json.dumps({**request, "id": ident}) + "\n")
        try:
            return await asyncio.wait_for(future, wait)
        finally:
            self.pending.pop(ident, None)


async def _dial(cfg: HostConfig) -> Any:
    """A new asyncssh connection to ``cfg``'s host, its key verified; ConnectError (exit 3)
    with what to do when it cannot be made."""
    user, _, hostname = cfg.address.rpartition("@")
    known_hosts = Path(cfg.known_hosts or "~/.ssh/known_hosts").expanduser()
    where = cfg.address + (f" port {cfg.port}" if cfg.port else "")
    # Without the file, connect anyway trusting no key at all: a closed port or a
    # wrong address is then reported as what it is, and no key is ever accepted.
    missing = not known_hosts.is_file()
    options: dict[str, Any] = {
        "known_hosts": asyncssh.import_known_hosts("") if missing else str(known_hosts),
        "connect_timeout": CONNECT_TIMEOUT,
        "keepalive_interval": 15,
    }
    if cfg.port:  # else ~/.ssh/config's Port for the host, else 22 (as ssh does)
        options["port"] = cfg.port
    if user:
        options["username"] = user
    if cfg.identity_file:
        options["client_keys"] = [str(Path(cfg.identity_file).expanduser())]
    try:
        conn = await asyncssh.connect(hostname, **options)
    except asyncssh.HostKeyNotVerifiable as exc:
        if missing:
            port = f"-p {cfg.port} " if cfg.port else ""
            raise ConnectError(
                f"cannot verify {where}: no known_hosts file at {known_hosts} (the host "
                f"answered; its key was not accepted). Add the host's key after checking "
                f"its fingerprint, e.g. `ssh {port}{cfg.address}` once, or set "
                "hosts[].known_hosts", host=cfg.label) from None
        raise ConnectError(
            f"host key of {where} is unknown or has changed ({exc.reason}); it was not "
            f"accepted. If the server was re-installed, check its fingerprint and update "
            f"{known_hosts} (ssh-keygen -R '[{hostname}]:{cfg.port or 22}', then connect once "
            f"with ssh)",
            host=cfg.label,
        ) from None
    except asyncssh.PermissionDenied:
        raise ConnectError(
            f"authentication to {where} was refused: check the user, identity_file or "
            f"ssh-agent",
            host=cfg.label,
        ) from None
    except (OSError, asyncssh.Error, asyncio.TimeoutError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
        raise ConnectError(
            f"cannot connect to {where}: {reason or type(exc).__name__}", host=cfg.label
        ) from None
    return conn


class SSHHost:
    def __init__(self, cfg: HostConfig, conn: Any, relay: _PoolProcess | None = None) -> None:
        self.name = cfg.label
        self._cfg = cfg
        self._conn = conn  # an asyncssh connection; None while only the pool's is used
        self._relay = relay  # the agent's session on the pool's connection
        self._agent: asyncio.Task[_Agent] | None = None
        self.sessions = 0  # SSH sessions opened (exec and sftp), as the server counts them
        self.seen: int | None = None  # requests the agent took, told at close

    @classmethod
    async def open(cls, cfg: HostConfig, *, fresh: bool = False) -> SSHHost:
        """Connected to ``cfg``'s host: through the warm process's pool when there is one,
        unless ``fresh`` (a login of its own)."""
        if POOL is not None and not fresh:
            relay = await _PoolProcess.start(POOL, cfg)
            if relay is not None:
                return cls(cfg, None, relay)
        return cls(cfg, await _dial(cfg))

    def _lost(self, exc: BaseException) -> ConnectError:
        return _lost(self._cfg, exc)

    async def _start_agent(self) -> _Agent:
        self.sessions += 1
        if self._relay is not None:
            return _Agent(self._relay)
        try:
            process = await self._conn.create_process(AGENT_COMMAND)
        except (asyncssh.Error, OSError) as exc:
            raise self._lost(exc) from None
        # The first request is written at once, not after the agent's hello: it waits in
        # the pipe while python3 starts (one round trip less).
        return _Agent(process)

    async def _not_started(self, agent: _Agent) -> ConnectError:
        """Why the agent never said hello: no python3, or what it printed."""
        process = agent.process
        if agent.hello.done() and not agent.hello.cancelled():
            agent.hello.exception()  # retrieved: it is reported here
        with contextlib.suppress(asyncssh.Error, OSError, asyncio.TimeoutError):
            await asyncio.wait_for(process.wait(check=False), 2)
        process.close()
        status = process.exit_status
        if status == 127:
            return ConnectError(f"{self._cfg.address} has no python3: bluegreen runs a small "
                                "agent on each host with it (any Python 3.6 or later; on "
                                "Debian: apt install python3-minimal)", host=self.name)
        stderr = ""
        with contextlib.suppress(Exception):
            stderr = str(await asyncio.wait_for(process.stderr.read(), 1))
        return ConnectError(f"the bluegreen agent did not start on {self._cfg.address} "
                            f"(exit {status}): {stderr.strip()[-500:] or 'no output'}",
                            host=self.name)

    async def call(self, request: dict[str, Any], wait: float) -> dict[str, Any]:
        """One request to the host's agent (started with the first one), its answer within
        ``wait`` seconds (and AGENT_START_TIMEOUT more while the agent starts)."""
        if self._agent is None:
            self._agent = asyncio.create_task(self._start_agent())
        agent = await self._agent
        starting = not agent.started
        try:
            return await agent.call(request, wait + (AGENT_START_TIMEOUT if starting else 0))
        except asyncio.TimeoutError:
            if not agent.started:
                raise await self._not_started(agent) from None
            raise
        except (asyncssh.Error, OSError) as exc:
            if not agent.started:
                raise await self._not_started(agent) from None
            raise self._lost(exc) from None

    async def batch(self, ops: Sequence[Op]) -> list[dict[str, Any]]:
        wait = sum(op.wait for op in ops) + ANSWER_MARGIN
        request = {"ops": [{"name": op.name, "args": op.args, "stop": op.stop} for op in ops]}
        try:
            answer = await self.call(request, wait)
        except asyncio.TimeoutError:
            raise CommandFailed(f"no answer from the host within {wait:g}s",
                                host=self.name) from None
        results: list[dict[str, Any]] = answer["results"]
        return results

    async def _direct(self) -> Any:
        """This command's own connection (opened now when the pool's was used so far)."""
        if self._conn is None:
            self._conn = await _dial(self._cfg)
        return self._conn

    async def put(self, local: Path, remote: PurePosixPath) -> None:
        self.sessions += 1
        if self._relay is not None and POOL is not None:
            answer = await _pool_call(POOL, {"op": "put", "local": str(local.absolute()),
                                             "remote": str(remote)}, self._cfg)
            if answer is not None:
                return
        await _sftp_put(await self._direct(), self._cfg, local, remote)

    async def stream(self, argv: Sequence[str]) -> AsyncIterator[str]:
        self.sessions += 1
        try:
            proc = await (await self._direct()).create_process(shlex.join(argv),
                                                               stderr=asyncssh.STDOUT)
        except (asyncssh.Error, OSError) as exc:
            raise self._lost(exc) from None
        try:
            async for line in proc.stdout:
                yield str(line)
        except (asyncssh.Error, OSError) as exc:
            raise self._lost(exc) from None
        finally:
            proc.close()

    async def interactive(self, argv: Sequence[str], *, pty: bool) -> int:
        command = shlex.join(argv)
        sys.stdout.flush()
        sys.stderr.flush()
        # asyncssh closes the files it was given when the command ends: give it copies,
        # so that this process can still write (a second host, the error message).
        options: dict[str, Any] = {"stdin": _stdin(), "stdout": _copy(sys.stdout, "wb"),
                                   "stderr": _copy(sys.stderr, "wb"), "encoding": None}
        if pty:
            cols, rows = shutil.get_terminal_size()
            options.update(term_type=os.environ.get("TERM", "xterm"), term_size=(cols, rows))
        self.sessions += 1
        with _raw_terminal(pty):
            try:
                proc = await (await self._direct()).create_process(command, **options)
                await proc.wait()
            except (asyncssh.Error, OSError) as exc:
                raise self._lost(exc) from None
        status = proc.exit_status
        return status if status is not None else 255

    async def close(self) -> None:
        if self._agent is not None and self._agent.done() and not self._agent.exception():
            # Every request was answered: the agent ends at EOF, no goodbye to wait for.
            self.seen = self._agent.result().served
        if self._relay is not None:
            self._relay.close()  # the pool keeps the connection
        if self._conn is None:
            return
        self._conn.close()
        try:
            await asyncio.wait_for(self._conn.wait_closed(), 5)
        except (asyncio.TimeoutError, asyncssh.Error, OSError):
            pass


def _lost(cfg: HostConfig, exc: BaseException) -> ConnectError:
    reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
    return ConnectError(f"lost the SSH connection to {cfg.address}: {reason}", host=cfg.label)


async def _sftp_put(conn: Any, cfg: HostConfig, local: Path, remote: PurePosixPath) -> None:
    """Upload ``local`` to ``remote`` over ``conn`` (one SFTP session)."""
    try:
        async with conn.start_sftp_client() as sftp:
            await sftp.makedirs(str(remote.parent), exist_ok=True)
            await sftp.put(str(local), str(remote))
    except asyncssh.SFTPError as exc:
        raise CommandFailed(f"upload of {local.name} to {remote} failed: {exc.reason} "
                            "(is the disk full?)", host=cfg.label) from None
    except (asyncssh.Error, OSError) as exc:
        raise _lost(cfg, exc) from None


@contextlib.contextmanager
def _raw_terminal(enabled: bool) -> Iterator[None]:
    """Put this terminal in raw mode (the remote pty does echo and line editing)."""
    if not enabled or not sys.stdin.isatty():
        yield
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _text(data: Any) -> str:
    if data is None:
        return ""
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return str(data)


# The warm process's SSH pool: the command's end (_PoolProcess, _pool_call), then the pool.

_ENDED = b'{"pool_ended":'


def _stat(path: Path | None) -> list[int] | None:
    try:
        st = path.stat() if path is not None else None
    except OSError:
        return None
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns] if st else None


def _envelope(cfg: HostConfig) -> dict[str, Any]:
    """What the pool needs to reach ``cfg``'s host as this command would: the host with its
    paths made absolute here, this command's login environment, and the state of every
    file its verification and login read (a change: a new connection, verified again)."""
    known_hosts = Path(cfg.known_hosts or "~/.ssh/known_hosts").expanduser().absolute()
    identity = Path(cfg.identity_file).expanduser().absolute() if cfg.identity_file else None
    ssh_dir = Path("~/.ssh").expanduser()
    host = {**cfg.model_dump(mode="json"), "known_hosts": str(known_hosts),
            "identity_file": str(identity) if identity else None}
    return {"host": host, "env": {k: os.environ.get(k) for k in POOL_ENV},
            "stamp": [_stat(p) for p in (known_hosts, identity, ssh_dir, ssh_dir / "config")]}


def _pool_error(answer: dict[str, Any], cfg: HostConfig) -> BlueGreenError:
    kinds: dict[str, type[BlueGreenError]] = {"ConnectError": ConnectError,
                                               "CommandFailed": CommandFailed}
    return kinds.get(str(answer.get("kind")), BlueGreenError)(str(answer["error"]),
                                                             host=cfg.label)


async def _pool_open(path: str, request: dict[str, Any], cfg: HostConfig
                     ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """Send ``request`` to the pool; its stream once the pool said ok, None when the pool
    is not there (the caller connects itself: nothing was done), or its error raised."""
    try:
        reader, writer = await asyncio.open_unix_connection(path, limit=LINE_LIMIT)
    except OSError:
        return None
    try:
        writer.write(json.dumps({**_envelope(cfg), **request}).encode() + b"\n")
        answer = json.loads(await reader.readline() or b"{}")
    except (OSError, ValueError):
        answer = {}
    if answer.get("ok"):
        return reader, writer
    writer.close()
    if "error" in answer:
        raise _pool_error(answer, cfg)
    return None


async def _pool_call(path: str, request: dict[str, Any], cfg: HostConfig) -> bool | None:
    """One request the pool answers at once (an upload): True, or None without a pool."""
    stream = await _pool_open(path, request, cfg)
    if stream is None:
        return None
    stream[1].close()
    return True


class _PoolProcess:
    """An agent's session on the pool's connection, as ``_Agent`` uses a process: lines on
    ``stdout``, ``stdin.write``; its exit status and stderr when it ended."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self.stdin = self.stderr = self
        self.stdout = self._lines()
        self.exit_status: int | None = None
        self._stderr = ""
        self._ended = asyncio.Event()

    @classmethod
    async def start(cls, path: str, cfg: HostConfig) -> _PoolProcess | None:
        """An agent session from the pool; None when there is no pool to ask."""
        stream = await _pool_open(path, {"op": "agent"}, cfg)
        return cls(*stream) if stream is not None else None

    def write(self, text: str) -> None:
        self._writer.write(text.encode())

    async def _lines(self) -> AsyncIterator[str]:
        try:
            async for raw in self._reader:
                if raw.startswith(_ENDED):
                    ended = json.loads(raw)["pool_ended"]
                    self.exit_status, self._stderr = ended["exit"], ended["stderr"]
                    break
                yield raw.decode(errors="replace")
        finally:
            self._ended.set()

    async def wait(self, check: bool = False) -> None:
        await self._ended.wait()

    async def read(self) -> str:
        await self._ended.wait()
        return self._stderr

    def close(self) -> None:
        self._writer.close()


class _Pool:
    """The warm process's SSH connections, kept between commands: per host and everything
    its login depended on (``_envelope``), one connection, on which each command opens its
    own agent session (relayed over its Unix socket connection) and uploads."""

    def __init__(self) -> None:
        self.conns: dict[str, asyncio.Task[Any]] = {}
        self.active = 0
        # Logins read HOME, USER, SSH_AUTH_SOCK from the environment: a login runs with the
        # command's values; logins with other values wait for their turn.
        self._login_env: tuple[str | None, ...] | None = None
        self._logins = 0
        self._turn = asyncio.Condition()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.active += 1
        try:
            creds = writer.get_extra_info("socket").getsockopt(
                socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            if struct.unpack("3i", creds)[1] != os.getuid():
                return
            request = json.loads(await reader.readline())
            cfg = HostConfig.model_validate(request["host"])
            key = json.dumps([[request["host"].get(k) for k in
                               ("address", "port", "identity_file", "known_hosts")],
                              request["env"], request["stamp"]])
            try:
                if request["op"] == "agent":
                    proc = await self._session(key, cfg, request["env"])
                    writer.write(b'{"ok": true}\n')
                    await self._relay(reader, writer, proc)
                elif request["op"] == "put":
                    conn = await self._connection(key, cfg, request["env"])
                    await _sftp_put(conn, cfg, Path(request["local"]),
                                    PurePosixPath(request["remote"]))
                    writer.write(b'{"ok": true}\n')
            except BlueGreenError as exc:
                writer.write(json.dumps({"error": exc.reason, "kind": type(exc).__name__})
                             .encode() + b"\n")
            await writer.drain()
        except (OSError, ValueError, KeyError):
            pass
        finally:
            self.active -= 1
            writer.close()

    async def _connection(self, key: str, cfg: HostConfig, env: dict[str, str | None]) -> Any:
        task = self.conns.get(key)
        if task is not None and task.done() and (
                task.cancelled() or task.exception() is not None or task.result().is_closed()):
            task = None
        if task is None:
            task = self.conns[key] = asyncio.create_task(self._login(cfg, env))
        try:
            return await asyncio.shield(task)
        except BlueGreenError:
            if self.conns.get(key) is task:
                del self.conns[key]
            raise

    async def _login(self, cfg: HostConfig, env: dict[str, str | None]) -> Any:
        wanted = tuple(env.get(k) for k in POOL_ENV)
        async with self._turn:
            await self._turn.wait_for(lambda: not self._logins or self._login_env == wanted)
            if not self._logins:
                for name, value in zip(POOL_ENV, wanted):
                    if value is None:
                        os.environ.pop(name, None)
                    else:
                        os.environ[name] = value
                self._login_env = wanted
            self._logins += 1
        try:
            return await _dial(cfg)
        finally:
            async with self._turn:
                self._logins -= 1
                self._turn.notify_all()

    async def _session(self, key: str, cfg: HostConfig, env: dict[str, str | None]) -> Any:
        """An agent session; a kept connection that died meanwhile is replaced once."""
        for attempt in (1, 2):
            conn = await self._connection(key, cfg, env)
            try:
                # (a connection whose peer vanished without a word answers nothing)
                return await asyncio.wait_for(conn.create_process(AGENT_COMMAND, encoding=None),
                                              SESSION_TIMEOUT)
            except (asyncssh.Error, OSError, asyncio.TimeoutError) as exc:
                # Not used again: dead, or refusing sessions (sshd's MaxSessions); closed
                # only when dead (a refusing one still serves other commands' sessions).
                self.conns.pop(key, None)
                if isinstance(exc, asyncio.TimeoutError):
                    conn.close()
                if attempt == 2:
                    raise _lost(cfg, exc) from None
        raise AssertionError("unreachable")

    @staticmethod
    async def _relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     proc: Any) -> None:
        """Pass bytes both ways until the agent ends; then its exit status and stderr, and
        the connection stays open until the command closed its end (closed under a command
        still writing, its reads would fail before the exit status: no python3 at all)."""
        async def inbound() -> None:
            agent = True
            try:
                while data := await reader.read(65536):
                    if agent:
                        try:
                            proc.stdin.write(data)
                        except (OSError, asyncssh.Error):  # the agent ended: dropped
                            agent = False
            except OSError:
                pass
            finally:  # the command closed its end: the agent reads EOF and ends
                with contextlib.suppress(Exception):
                    proc.stdin.write_eof()

        feeding = asyncio.create_task(inbound())
        last = b"\n"
        try:
            while chunk := await proc.stdout.read(65536):
                writer.write(chunk)
                last = chunk[-1:]
                await writer.drain()
            done = await proc.wait(check=False)
            stderr = (done.stderr or b"").decode(errors="replace")[-4000:]
            ended = json.dumps({"pool_ended": {"exit": done.exit_status, "stderr": stderr}},
                               separators=(",", ":")).encode()
            writer.write((b"" if last == b"\n" else b"\n") + ended + b"\n")
            await writer.drain()
            await asyncio.wait_for(asyncio.shield(feeding), HANG_UP_TIMEOUT)
        except (OSError, asyncssh.Error, asyncio.TimeoutError):
            pass
        finally:
            feeding.cancel()
            proc.close()


async def serve_pool(path: str, parent: int) -> None:
    """The warm process's SSH pool, listening on ``path`` (0600) until the warm process
    ``parent`` is gone or the socket removed; commands using it then still go on to their
    end, then its connections are closed."""
    pool = _Pool()
    old = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(pool.handle, path, limit=LINE_LIMIT)
    finally:
        os.umask(old)
    ours = os.stat(path).st_ino
    try:
        while os.getppid() == parent and inode(path) == ours:
            await asyncio.sleep(1)
    finally:
        server.close()
        if inode(path) == ours:
            with contextlib.suppress(OSError):
                os.unlink(path)
        while pool.active:
            await asyncio.sleep(0.1)
        for task in pool.conns.values():
            if task.done() and not task.cancelled() and task.exception() is None:
                task.result().close()


def inode(path: str) -> int | None:
    """The inode of the file at ``path`` (None if there is none): whether a socket is
    still the one a process bound."""
    try:
        return os.stat(path).st_ino
    except OSError:
        return None
