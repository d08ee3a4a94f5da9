"""SSHHost: a server over one asyncssh connection per command, and on it one session
running bluegreen's agent (``hosts.agent``) for every command and check. The only asyncssh
import.

Host keys are always verified against ``known_hosts`` (the host's own setting, else
``~/.ssh/known_hosts``); an unknown or changed key is exit 3, never accepted.

Given a relay (``hosts.relay``: a process that keeps SSH connections, e.g. the warm
process's pool), the agent session and uploads go through it when it has the host, so a
command does not pay the SSH handshake again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import shutil
import stat
import sys
import termios
import tty
from pathlib import Path, PurePosixPath
from typing import Any, AsyncIterator, Iterator, Sequence

import asyncssh

from bluegreen.config import HostConfig
from bluegreen.errors import CommandFailed, ConnectError
from bluegreen.hosts import agent as agent_program
from bluegreen.hosts.base import Op
from bluegreen.hosts.relay import Relay, RelayedProcess

CONNECT_TIMEOUT = 15.0
AGENT_START_TIMEOUT = 20.0
# How long past a request's own timeout its answer may take (the network, a busy host).
ANSWER_MARGIN = 30.0
# The agent, run by the login shell like any command: a short bootstrap (what `ps` shows
# on the server) that reads the agent's source from stdin, its length first, then runs
# it on the same stdin (its requests follow). -I -S: the standard library only (no
# site-packages, no PYTHON* variables; ~30 ms less).
AGENT_COMMAND = "exec python3 -I -S -c " + shlex.quote(
    'import sys; i = sys.stdin.buffer; '
    'exec(compile(i.read(int(i.readline())), "bluegreen-agent", "exec"))')
_SOURCE = Path(agent_program.__file__).read_text()
AGENT_SOURCE = f"{len(_SOURCE.encode())}\n{_SOURCE}"


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


async def dial(cfg: HostConfig) -> Any:
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
    def __init__(self, cfg: HostConfig, conn: Any, via: Relay | None = None,
                 relayed: RelayedProcess | None = None) -> None:
        self.name = cfg.label
        self._cfg = cfg
        self._conn = conn  # an asyncssh connection; None while only the relay's is used
        self._via = via  # the relay that lends this host's connection, if it does
        self._relay = relayed  # the agent's session on the relay's connection
        self._agent: asyncio.Task[_Agent] | None = None
        self.sessions = 0  # SSH sessions opened (exec and sftp), as the server counts them
        self.seen: int | None = None  # requests the agent took, told at close

    @classmethod
    async def open(cls, cfg: HostConfig, *, via: Relay | None = None) -> SSHHost:
        """Connected to ``cfg``'s host: through the relay ``via`` when it has the host
        (a connection it keeps), else a login of its own."""
        if via is not None:
            relayed = await via.agent(cfg)
            if relayed is not None:
                return cls(cfg, None, via, relayed)
        return cls(cfg, await dial(cfg))

    def _lost(self, exc: BaseException) -> ConnectError:
        return lost(self._cfg, exc)

    async def _start_agent(self) -> _Agent:
        self.sessions += 1
        process: Any = self._relay
        if process is None:
            try:
                process = await self._conn.create_process(AGENT_COMMAND)
            except (asyncssh.Error, OSError) as exc:
                raise self._lost(exc) from None
        # The source, then the first request, are written at once, not after the agent's
        # hello: they wait in the pipe while python3 starts (one round trip less).
        process.stdin.write(AGENT_SOURCE)
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
        """This command's own connection (opened now when the relay's was used so far)."""
        if self._conn is None:
            self._conn = await dial(self._cfg)
        return self._conn

    async def put(self, local: Path, remote: PurePosixPath) -> None:
        self.sessions += 1
        if self._via is not None and self._relay is not None:
            if await self._via.put(self._cfg, local, remote):
                return
        await sftp_put(await self._direct(), self._cfg, local, remote)

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
            self._relay.close()  # the relay keeps the connection
        if self._conn is None:
            return
        self._conn.close()
        try:
            await asyncio.wait_for(self._conn.wait_closed(), 5)
        except (asyncio.TimeoutError, asyncssh.Error, OSError):
            pass


def lost(cfg: HostConfig, exc: BaseException) -> ConnectError:
    reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
    return ConnectError(f"lost the SSH connection to {cfg.address}: {reason}", host=cfg.label)


async def sftp_put(conn: Any, cfg: HostConfig, local: Path, remote: PurePosixPath) -> None:
    """Upload ``local`` to ``remote`` over ``conn`` (one SFTP session)."""
    try:
        async with conn.start_sftp_client() as sftp:
            await sftp.makedirs(str(remote.parent), exist_ok=True)
            await sftp.put(str(local), str(remote))
    except asyncssh.SFTPError as exc:
        raise CommandFailed(f"upload of {local.name} to {remote} failed: {exc.reason} "
                            "(is the disk full?)", host=cfg.label) from None
    except (asyncssh.Error, OSError) as exc:
        raise lost(cfg, exc) from None


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
