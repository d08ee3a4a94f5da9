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
                    await sftp_put(conn, cfg, Path(request["local"]),
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
