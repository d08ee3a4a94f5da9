"""The warm process's SSH pool (``relay``'s other end): per host and everything its login
depended on (``relay.envelope``), one kept connection, on which each command of the warm
process opens its own agent session (relayed over its Unix socket connection) and uploads,
without a new handshake and login."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import asyncssh

from bluegreen.config import HostConfig
from bluegreen.errors import BlueGreenError
from bluegreen.hosts.relay import LINE_LIMIT, LOGIN_ENV
from bluegreen.hosts.ssh import AGENT_COMMAND, dial, lost, sftp_put

# How long a kept connection may take to open a session before it is taken for dead.
SESSION_TIMEOUT = 10.0
# How long the pool waits for a command to close its end after its agent ended.
HANG_UP_TIMEOUT = 30.0
# The longest a kept connection is used after its login: a key taken out of the server's
# authorized_keys (or out of the ssh-agent) stops working within it, as the next command
# after it logs in anew. $BLUEGREEN_WARM_MAX_AGE (seconds) sets another, for tests.
MAX_AGE = 600.0
MAX_AGE_ENV = "BLUEGREEN_WARM_MAX_AGE"


@dataclass
class _Kept:
    """One kept connection (its login, done or under way): when its login began, which
    host it reaches (a connection to it with another key supersedes it), how many
    commands use it now, and whether it is retired (closed once none does)."""

    task: asyncio.Task[Any]
    host: str
    born: float
    users: int = 0
    retired: bool = False

    def close(self) -> None:
        if self.task.done() and not self.task.cancelled() and self.task.exception() is None:
            self.task.result().close()


def same_user(sock: socket.socket) -> bool:
    """Whether the process at the other end of ``sock`` is this user with this process's
    groups: its uid and gid (SO_PEERCRED) and its supplementary groups as the kernel has
    them (/proc/PID/status: what a client says of itself is not taken)."""
    pid, uid, gid = struct.unpack("3i", sock.getsockopt(
        socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    if uid != os.getuid() or gid != os.getgid():
        return False
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    groups = next((line.split()[1:] for line in status.splitlines()
                   if line.startswith("Groups:")), None)
    return groups is not None and sorted(map(int, groups)) == sorted(os.getgroups())


class _Pool:
    """The warm process's SSH connections, kept between commands: per host and everything
    its login depended on (``_envelope``), one connection, on which each command opens its
    own agent session (relayed over its Unix socket connection) and uploads."""

    def __init__(self, max_age: float = MAX_AGE) -> None:
        self.conns: dict[str, _Kept] = {}
        self.active = 0
        self.max_age = max_age
        # Logins read HOME, USER, SSH_AUTH_SOCK from the environment: a login runs with the
        # command's values; logins with other values wait for their turn.
        self._login_env: tuple[str | None, ...] | None = None
        self._logins = 0
        self._turn = asyncio.Condition()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.active += 1
        try:
            if not same_user(writer.get_extra_info("socket")):
                return
            request = json.loads(await reader.readline())
            cfg = HostConfig.model_validate(request["host"])
            host = json.dumps([request["host"].get(k) for k in
                               ("address", "port", "identity_file", "known_hosts")])
            key = json.dumps([host, request["env"], request["stamp"]])
            try:
                if request["op"] == "agent":
                    kept, proc = await self._session(key, host, cfg, request["env"])
                    try:
                        writer.write(b'{"ok": true}\n')
                        await self._relay(reader, writer, proc)
                    finally:
                        self._release(kept)
                elif request["op"] == "put":
                    kept = await self._connection(key, host, cfg, request["env"])
                    try:
                        await sftp_put(kept.task.result(), cfg, Path(request["local"]),
                                        PurePosixPath(request["remote"]))
                    finally:
                        self._release(kept)
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

    def sweep(self, key: str | None = None, host: str | None = None) -> None:
        """Retire the connections past their maximum age, and those to ``host`` kept under
        another key than ``key`` (what their login read changed: never used again)."""
        now = time.monotonic()
        for other, kept in list(self.conns.items()):
            if now - kept.born > self.max_age or (kept.host == host and other != key):
                self._retire(other)

    def _retire(self, key: str) -> None:
        kept = self.conns.pop(key, None)
        if kept is not None:
            kept.retired = True
            if not kept.users:
                kept.close()

    def _release(self, kept: _Kept) -> None:
        kept.users -= 1
        if kept.retired and not kept.users:
            kept.close()

    async def _connection(self, key: str, host: str, cfg: HostConfig,
                          env: dict[str, str | None]) -> _Kept:
        """The kept connection for ``key`` (logged in anew when there is none), taken into
        use: ``_release`` it."""
        self.sweep(key, host)
        kept = self.conns.get(key)
        if kept is not None and kept.task.done() and (
                kept.task.cancelled() or kept.task.exception() is not None
                or kept.task.result().is_closed()):
            self._retire(key)
            kept = None
        if kept is None:
            kept = self.conns[key] = _Kept(asyncio.create_task(self._login(cfg, env)), host,
                                           time.monotonic())
        kept.users += 1
        try:
            await asyncio.shield(kept.task)
        except BlueGreenError:
            self._release(kept)
            if self.conns.get(key) is kept:
                del self.conns[key]
            raise
        return kept

    async def _login(self, cfg: HostConfig, env: dict[str, str | None]) -> Any:
        wanted = tuple(env.get(k) for k in LOGIN_ENV)
        async with self._turn:
            await self._turn.wait_for(lambda: not self._logins or self._login_env == wanted)
            if not self._logins:
                for name, value in zip(LOGIN_ENV, wanted):
                    if value is None:
                        os.environ.pop(name, None)
                    else:
                        os.environ[name] = value
                self._login_env = wanted
            self._logins += 1
        try:
            return await dial(cfg)
        finally:
            async with self._turn:
                self._logins -= 1
                self._turn.notify_all()

    async def _session(self, key: str, host: str, cfg: HostConfig,
                       env: dict[str, str | None]) -> tuple[_Kept, Any]:
        """An agent session on a kept connection taken into use (``_release`` it); a kept
        connection that died meanwhile is replaced once."""
        for attempt in (1, 2):
            kept = await self._connection(key, host, cfg, env)
            conn = kept.task.result()
            try:
                # (a connection whose peer vanished without a word answers nothing)
                return kept, await asyncio.wait_for(
                    conn.create_process(AGENT_COMMAND, encoding=None), SESSION_TIMEOUT)
            except (asyncssh.Error, OSError, asyncio.TimeoutError) as exc:
                # Not used again: dead, or refusing sessions (sshd's MaxSessions); closed
                # at once when dead, else once the other commands' sessions on it ended.
                if self.conns.get(key) is kept:
                    self._retire(key)
                if isinstance(exc, asyncio.TimeoutError):
                    conn.close()
                self._release(kept)
                if attempt == 2:
                    raise lost(cfg, exc) from None
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
    pool = _Pool(float(os.environ.get(MAX_AGE_ENV) or MAX_AGE))
    old = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(pool.handle, path, limit=LINE_LIMIT)
    finally:
        os.umask(old)
    ours = os.stat(path).st_ino
    try:
        while os.getppid() == parent and inode(path) == ours:
            pool.sweep()
            await asyncio.sleep(1)
    finally:
        server.close()
        if inode(path) == ours:
            with contextlib.suppress(OSError):
                os.unlink(path)
        while pool.active:
            await asyncio.sleep(0.1)
        for kept in pool.conns.values():
            kept.close()


def inode(path: str) -> int | None:
    """The inode of the file at ``path`` (None if there is none): whether a socket is
    still the one a process bound."""
    try:
        return os.stat(path).st_ino
    except OSError:
        return None
