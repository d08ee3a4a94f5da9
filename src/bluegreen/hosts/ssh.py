"""SSHHost: a server over one asyncssh connection per command. The only asyncssh import.

Host keys are always verified against ``known_hosts`` (the host's own setting, else
``~/.ssh/known_hosts``); an unknown or changed key is exit 3, never accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from bluegreen.hosts.base import Result, check_result, describe

CONNECT_TIMEOUT = 15.0


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


class _SSHStream:
    def __init__(self, reader: Any, writer: Any) -> None:
        self._reader, self._writer = reader, writer

    async def read(self, n: int) -> bytes:
        try:
            data: bytes = await self._reader.read(n)
        except asyncssh.Error as exc:
            raise OSError(str(exc)) from None
        return data

    async def write(self, data: bytes) -> None:
        try:
            self._writer.write(data)
            await self._writer.drain()
        except asyncssh.Error as exc:
            raise OSError(str(exc)) from None

    async def close(self) -> None:
        self._writer.close()


class SSHHost:
    def __init__(self, cfg: HostConfig, conn: Any) -> None:
        self.name = cfg.label
        self._cfg = cfg
        self._conn = conn

    @classmethod
    async def open(cls, cfg: HostConfig) -> SSHHost:
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
        return cls(cfg, conn)

    def _lost(self, exc: BaseException) -> ConnectError:
        reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
        return ConnectError(f"lost the SSH connection to {self._cfg.address}: {reason}",
                            host=self.name)

    async def run(self, argv: Sequence[str], *, input: str | None = None,
                  timeout: float = 60, check: bool = True) -> Result:
        command = shlex.join(argv)
        try:
            process = await self._conn.create_process(command)
            try:
                if input is not None:
                    process.stdin.write(input)
                process.stdin.write_eof()
            except (BrokenPipeError, ConnectionError):
                # The command ended before reading its input (e.g. the lock is held: exit
                # 73 at once); its exit status, not this write, says what happened.
                pass
            proc = await process.wait(check=False, timeout=timeout)
        except asyncssh.TimeoutError:
            raise CommandFailed(f"{describe(argv)} timed out after {timeout:g}s",
                                host=self.name) from None
        except (asyncssh.Error, OSError) as exc:
            raise self._lost(exc) from None
        status = proc.exit_status
        if status is None:
            if not proc.exit_signal:
                # The channel closed with neither a status nor a signal: the connection died.
                raise self._lost(ConnectionError("the command ended without an exit status"))
            status = 128 + 9
        result = Result(tuple(argv), status, _text(proc.stdout), _text(proc.stderr))
        return check_result(self.name, result) if check else result

    async def put(self, local: Path, remote: PurePosixPath) -> None:
        try:
            async with self._conn.start_sftp_client() as sftp:
                await sftp.put(str(local), str(remote))
        except asyncssh.SFTPError as exc:
            raise CommandFailed(f"upload of {local.name} to {remote} failed: {exc.reason} "
                                "(is the disk full?)", host=self.name) from None
        except (asyncssh.Error, OSError) as exc:
            raise self._lost(exc) from None

    async def stream(self, argv: Sequence[str]) -> AsyncIterator[str]:
        try:
            proc = await self._conn.create_process(shlex.join(argv), stderr=asyncssh.STDOUT)
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
        with _raw_terminal(pty):
            try:
                proc = await self._conn.create_process(command, **options)
                await proc.wait()
            except (asyncssh.Error, OSError) as exc:
                raise self._lost(exc) from None
        status = proc.exit_status
        return status if status is not None else 255

    async def open_connection(self, address: str, port: int) -> _SSHStream:
        try:
            reader, writer = await self._conn.open_connection(address, port)
        except asyncssh.ChannelOpenError as exc:
            raise ConnectionRefusedError(f"{address}:{port}: {exc.reason}") from None
        except asyncssh.Error as exc:
            raise self._lost(exc) from None
        return _SSHStream(reader, writer)

    async def open_unix_connection(self, path: str) -> _SSHStream:
        try:
            reader, writer = await self._conn.open_unix_connection(path)
        except asyncssh.ChannelOpenError as exc:
            # sshd says only "open failed"; the usual causes are the two below.
            raise ConnectionRefusedError(f"{path}: {exc.reason} (no such socket, or the SSH "
                                         "user may not open it)") from None
        except asyncssh.Error as exc:
            raise self._lost(exc) from None
        return _SSHStream(reader, writer)

    async def close(self) -> None:
        self._conn.close()
        try:
            await asyncio.wait_for(self._conn.wait_closed(), 5)
        except (asyncio.TimeoutError, asyncssh.Error, OSError):
            pass


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
