"""The client end of an SSH relay: a process that keeps SSH connections (the warm
process's pool, ``warm.pool``) and lends a command an agent session and uploads on them,
over the Unix socket that $BLUEGREEN_SSH_POOL names in the command's environment (as
$SSH_AUTH_SOCK names an ssh-agent). A kept connection is used only while everything its
verification and login depended on is unchanged (``envelope``): the known_hosts file, the
identity file, ~/.ssh and its config, HOME, the user, the ssh-agent socket; any change,
and the relay connects anew, verifying the host key again."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path, PurePosixPath
from typing import Any, AsyncIterator

from bluegreen.config import HostConfig
from bluegreen.errors import BlueGreenError, CommandFailed, ConnectError

# The environment variable that names a relay's socket (set for the commands a warm
# process runs).
ENV = "BLUEGREEN_SSH_POOL"
# What a connection's login reads from the environment (asyncssh: ~/.ssh, the user name,
# the ssh-agent): the relay connects with the command's values of these.
LOGIN_ENV = ("HOME", "USER", "LOGNAME", "SSH_AUTH_SOCK")
# The longest line of an answer the relay passes (an agent's answer is one JSON line).
LINE_LIMIT = 1 << 28
# The line that ends a relayed agent session: its exit status and stderr.
ENDED = b'{"pool_ended":'


def from_environment() -> Relay | None:
    """The relay this command's environment names, if any."""
    path = os.environ.get(ENV)
    return Relay(path) if path else None


class Relay:
    """A relay listening on ``path``: each method returns None (or False) when it is not
    there, so the caller connects itself, nothing done; or raises its error."""

    def __init__(self, path: str) -> None:
        self.path = path

    async def agent(self, cfg: HostConfig) -> RelayedProcess | None:
        """An agent session on the relay's connection to ``cfg``'s host."""
        stream = await self._open({"op": "agent"}, cfg)
        return RelayedProcess(*stream) if stream is not None else None

    async def put(self, cfg: HostConfig, local: Path, remote: PurePosixPath) -> bool:
        """Upload ``local`` to ``remote`` on the relay's connection (done once it answers)."""
        stream = await self._open({"op": "put", "local": str(local.absolute()),
                                   "remote": str(remote)}, cfg)
        if stream is None:
            return False
        stream[1].close()
        return True

    async def _open(self, request: dict[str, Any], cfg: HostConfig
                    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """Send ``request``; the stream once the relay said ok, None when it is not there,
        or its error raised."""
        try:  # (this user's socket only: the agent's input carries the slots' secrets)
            st = os.lstat(self.path)
            if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.getuid():
                return None
            reader, writer = await asyncio.open_unix_connection(self.path, limit=LINE_LIMIT)
        except OSError:
            return None
        try:
            writer.write(json.dumps({**envelope(cfg), **request}).encode() + b"\n")
            answer = json.loads(await reader.readline() or b"{}")
        except (OSError, ValueError):
            answer = {}
        if answer.get("ok"):
            return reader, writer
        writer.close()
        if "error" in answer:
            kinds: dict[str, type[BlueGreenError]] = {"ConnectError": ConnectError,
                                                       "CommandFailed": CommandFailed}
            raise kinds.get(str(answer.get("kind")), BlueGreenError)(str(answer["error"]),
                                                                     host=cfg.label)
        return None


def _stat(path: Path | None) -> list[int] | None:
    try:
        st = path.stat() if path is not None else None
    except OSError:
        return None
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns] if st else None


def envelope(cfg: HostConfig) -> dict[str, Any]:
    """What the relay needs to reach ``cfg``'s host as this command would: the host with its
    paths made absolute here, this command's login environment, and the state of every
    file its verification and login read (a change: a new connection, verified again)."""
    known_hosts = Path(cfg.known_hosts or "~/.ssh/known_hosts").expanduser().absolute()
    identity = Path(cfg.identity_file).expanduser().absolute() if cfg.identity_file else None
    ssh_dir = Path("~/.ssh").expanduser()
    host = {**cfg.model_dump(mode="json"), "known_hosts": str(known_hosts),
            "identity_file": str(identity) if identity else None}
    return {"host": host, "env": {k: os.environ.get(k) for k in LOGIN_ENV},
            "stamp": [_stat(p) for p in (known_hosts, identity, ssh_dir, ssh_dir / "config")]}


class RelayedProcess:
    """An agent's session on the relay's connection, as ``ssh._Agent`` uses a process: lines on
    ``stdout``, ``stdin.write``; its exit status and stderr when it ended."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self.stdin = self.stderr = self
        self.stdout = self._lines()
        self.exit_status: int | None = None
        self._stderr = ""
        self._ended = asyncio.Event()

    def write(self, text: str) -> None:
        self._writer.write(text.encode())

    async def _lines(self) -> AsyncIterator[str]:
        try:
            async for raw in self._reader:
                if raw.startswith(ENDED):
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
