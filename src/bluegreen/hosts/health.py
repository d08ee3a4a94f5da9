"""HTTP GETs made from the host itself (``Host.exchange``, by bluegreen's agent there), so
servers need no curl, and polling until an answer is right or a deadline passes."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

from bluegreen.hosts import agent
from bluegreen.hosts.base import Checks, Ranges

T = TypeVar("T")


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: str
    # The certificate the server presented (DER), when asked over TLS.
    certificate: bytes | None = None
    # The status codes that count as healthy (``run.health_status``), as ranges.
    accept: Ranges = ((200, 299),)

    @property
    def ok(self) -> bool:
        return any(low <= self.status <= high for low, high in self.accept)


def request(address: str, port: int, path: str, host_header: str | None = None,
            headers: dict[str, str] | None = None) -> bytes:
    """A ``GET`` of ``path`` as bytes (``Connection: close``: the answer ends when the
    server closes)."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return (f"GET {path} HTTP/1.1\r\nHost: {host_header or f'{address}:{port}'}\r\n"
            f"User-Agent: bluegreen\r\n{extra}Connection: close\r\n\r\n").encode()


async def get(host: Checks, address: str, port: int, path: str, *, host_header: str | None = None,
              timeout: float = 3.0, accept: Ranges = ((200, 299),),
              headers: dict[str, str] | None = None, tls_name: str | None = None) -> Response:
    """One ``GET`` to address:port as seen from ``host``; raises OSError or TimeoutError.
    ``accept``: the status ranges the response's ``ok`` accepts. ``tls_name``: speak TLS,
    with that SNI name (the response then carries the server's certificate)."""
    answer = await host.exchange((address, port),
                                 request(address, port, path, host_header, headers),
                                 tls_name=tls_name, timeout=timeout)
    return parse_response(answer.data, answer.certificate, accept)


async def watch(host: Checks, address: str, port: int, path: str, *, timeout: float,
                host_header: str | None = None, accept: Ranges = ((200, 299),),
                body: str | None = None, streak: int = 1, interval: float = 0.1,
                headers: dict[str, str] | None = None, tls_name: str | None = None,
                each: float = 3.0) -> tuple[bool, Response | OSError]:
    """``get`` repeated on the host every ``interval`` (one round trip) until it is ``ok``
    (and its body, stripped, is ``body``) ``streak`` times in a row, or ``timeout``
    passes: whether it was, and the last answer (or why there was none)."""
    seen = await host.watch((address, port), request(address, port, path, host_header, headers),
                            status=accept, body=body, streak=streak, interval=interval,
                            timeout=timeout, tls_name=tls_name, each=each)
    if isinstance(seen.last, OSError):
        return seen.met, seen.last
    try:
        return seen.met, parse_response(seen.last.data, seen.last.certificate, accept)
    except OSError as exc:
        return seen.met, exc


def parse_response(raw: bytes, certificate: bytes | None = None,
                   accept: Ranges = ((200, 299),)) -> Response:
    try:
        status, headers, body = agent.http_answer(raw)
    except ValueError as exc:
        raise OSError(str(exc)) from None
    return Response(status, headers, body.decode(errors="replace"), certificate, accept)


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
