"""Round trips to a host, counted: every request that waits for the host's answer (a
command or a batch of them, a check such as a health GET or a watch that repeats one on the
host, the HAProxy runtime API), and every upload; for a server, also the SSH sessions it
opened (what the server's log shows: one for the agent, one per upload, stream or terminal)
and how many requests the agent says it answered. `-v` and `--json` show them per host."""

from __future__ import annotations

from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Any, AsyncIterator, Sequence

from bluegreen.hosts.base import Host, Op


class CountingHost:
    """A Host that counts what goes through it, and passes everything on unchanged."""

    def __init__(self, inner: Host) -> None:
        self.inner = inner
        self.name = inner.name
        self.counts: Counter[str] = Counter()

    async def batch(self, ops: Sequence[Op]) -> list[dict[str, Any]]:
        """One round trip: a command when it runs one, else a check."""
        self.counts["commands" if any(op.name == "run" for op in ops) else "checks"] += 1
        return await self.inner.batch(ops)

    async def put(self, local: Path, remote: PurePosixPath) -> None:
        self.counts["uploads"] += 1
        await self.inner.put(local, remote)

    def stream(self, argv: Sequence[str]) -> AsyncIterator[str]:
        self.counts["commands"] += 1
        return self.inner.stream(argv)

    async def interactive(self, argv: Sequence[str], *, pty: bool) -> int:
        self.counts["commands"] += 1
        return await self.inner.interactive(argv, pty=pty)

    async def close(self) -> None:
        await self.inner.close()

    def round_trips(self) -> dict[str, int]:
        """``{"commands", "checks", "uploads", "total"}``, and for a server ``sessions`` and
        ``seen_by_host`` (after ``close``)."""
        out = {k: self.counts[k] for k in ("commands", "checks", "uploads")}
        out["total"] = sum(out.values())
        sessions = getattr(self.inner, "sessions", None)
        seen = getattr(self.inner, "seen", None)
        if sessions is not None:
            out["sessions"] = sessions
        if seen is not None:
            out["seen_by_host"] = seen
        return out
