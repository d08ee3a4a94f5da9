"""Round trips to a host, counted: every remote command (an SSH exec channel), upload, and
connection opened through the host (a health check, a proxy question, the HAProxy runtime
API), so that `-v` and `--json` say what a command cost per host."""

from __future__ import annotations

from collections import Counter
from pathlib import Path, PurePosixPath
from typing import AsyncIterator, Sequence

from bluegreen.hosts.base import Host, Result, Stream


class CountingHost:
    """A Host that counts what goes through it, and passes everything on unchanged."""

    def __init__(self, inner: Host) -> None:
        self.inner = inner
        self.name = inner.name
        self.counts: Counter[str] = Counter()

    async def run(self, argv: Sequence[str], *, input: str | None = None,
                  timeout: float = 60, check: bool = True) -> Result:
        self.counts["commands"] += 1
        return await self.inner.run(argv, input=input, timeout=timeout, check=check)

    async def put(self, local: Path, remote: PurePosixPath) -> None:
        self.counts["uploads"] += 1
        await self.inner.put(local, remote)

    def stream(self, argv: Sequence[str]) -> AsyncIterator[str]:
        self.counts["commands"] += 1
        return self.inner.stream(argv)

    async def interactive(self, argv: Sequence[str], *, pty: bool) -> int:
        self.counts["commands"] += 1
        return await self.inner.interactive(argv, pty=pty)

    async def open_connection(self, address: str, port: int) -> Stream:
        self.counts["connections"] += 1
        return await self.inner.open_connection(address, port)

    async def open_unix_connection(self, path: str) -> Stream:
        self.counts["connections"] += 1
        return await self.inner.open_unix_connection(path)

    async def close(self) -> None:
        await self.inner.close()

    def round_trips(self) -> dict[str, int]:
        """``{"commands", "uploads", "connections", "total"}``."""
        out = {k: self.counts[k] for k in ("commands", "uploads", "connections")}
        return {**out, "total": sum(out.values())}
