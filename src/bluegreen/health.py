"""HTTP GETs made from the host itself (through ``Host.open_connection``), so servers
need no curl, and polling them until an answer is right or a deadline passes."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

from bluegreen.hosts.base import Host

T = TypeVar("T")


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: str
    # The status codes that count as healthy (``run.health_status``), as ranges.
    accept: tuple[tuple[int, int], ...] = ((200, 299),)

    @property
    def ok(self) -> bool:
        return any(low <= self.status <= high for low, high in self.accept)


async def get(host: Host, address: str, port: int, path: str, *, host_header: str | None = None,
              timeout: float = 3.0,
              accept: tuple[tuple[int, int], ...] = ((200, 299),)) -> Response:
    """One ``GET`` to address:port as seen from ``host``; raises OSError or TimeoutError.
    ``accept``: the status ranges the response's ``ok`` accepts."""
    resp = await asyncio.wait_for(_get(host, address, port, path, host_header), timeout)
    return Response(resp.status, resp.headers, resp.body, accept)


async def _get(host: Host, address: str, port: int, path: str, host_header: str | None) -> Response:
    stream = await host.open_connection(address, port)
    try:
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host_header or f'{address}:{port}'}\r\n"
            "User-Agent: bluegreen\r\nConnection: close\r\n\r\n"
        )
        await stream.write(request.encode())
        raw = b""
        while len(raw) < 1_000_000:
            chunk = await stream.read(65536)
            if not chunk:
                break
            raw += chunk
    finally:
        await stream.close()
    return parse_response(raw)


def parse_response(raw: bytes) -> Response:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise OSError(f"not an HTTP response: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    return Response(int(parts[1]), headers, body.decode(errors="replace"))


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            break
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2:]
    return out


async def poll(check: Callable[[], Awaitable[T | None]], *, timeout: float,
               interval: float = 0.1) -> T | None:
    """Call ``check`` until it returns something other than None or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value is not None:
            return value
        if time.monotonic() >= deadline:
            return None
        await asyncio.sleep(min(interval, max(0.0, deadline - time.monotonic())))
