"""A small keep-alive HTTP load generator (asyncio), counting answers by version/colour."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Counts:
    sent: int = 0
    ok: int = 0
    failed: int = 0
    retried: int = 0
    answers: Counter[str] = field(default_factory=Counter)

    def copy(self) -> Counts:
        return Counts(self.sent, self.ok, self.failed, self.retried, Counter(self.answers))

    def since(self, earlier: Counts) -> Counts:
        return Counts(self.sent - earlier.sent, self.ok - earlier.ok,
                      self.failed - earlier.failed, self.retried - earlier.retried,
                      self.answers - earlier.answers)


class Load:
    """``connections`` clients sending ``GET /`` in a loop through the proxy. Like browsers,
    a request on a reused keep-alive connection that the server closed before answering is
    retried once on a new connection (and counted as retried)."""

    def __init__(self, port: int, host_header: str, connections: int = 4,
                 max_seconds: float = 300) -> None:
        self.port, self.host_header = port, host_header
        self.connections = connections
        self.max_seconds = max_seconds
        self.counts = Counts()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._deadline = time.monotonic() + self.max_seconds
        self._tasks = [asyncio.create_task(self._client()) for _ in range(self.connections)]

    async def stop(self) -> Counts:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        return self.counts

    async def _client(self) -> None:
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        request = (f"GET / HTTP/1.1\r\nHost: {self.host_header}\r\n\r\n").encode()
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            self.counts.sent += 1
            for attempt in (1, 2):
                reused = conn is not None
                try:
                    if conn is None:
                        conn = await asyncio.open_connection("127.0.0.1", self.port)
                    status, answer, keep = await asyncio.wait_for(exchange(conn, request), 10)
                except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
                    if conn is not None:
                        conn[1].close()
                    conn = None
                    if reused and attempt == 1:
                        self.counts.retried += 1
                        continue
                    self.counts.failed += 1
                    await asyncio.sleep(0.01)
                    break
                if 200 <= status < 300:
                    self.counts.ok += 1
                    self.counts.answers[answer] += 1
                else:
                    self.counts.failed += 1
                if not keep:
                    conn[1].close()
                    conn = None
                break
        if conn is not None:
            conn[1].close()


async def exchange(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                    request: bytes) -> tuple[int, str, bool]:
    reader, writer = conn
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    del body
    answer = f"{headers.get('x-app-version', '?')} ({headers.get('x-deployment-id', '?')})"
    return status, answer, headers.get("connection", "").lower() != "close"
