"""HTTP GETs made from the host itself (through ``Host.open_connection``), so servers
need no curl, and polling them until an answer is right or a deadline passes."""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

from bluegreen.hosts.base import Host, Stream

T = TypeVar("T")


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: str
    # The certificate the server presented (DER), when asked over TLS.
    certificate: bytes | None = None
    # The status codes that count as healthy (``run.health_status``), as ranges.
    accept: tuple[tuple[int, int], ...] = ((200, 299),)

    @property
    def ok(self) -> bool:
        return any(low <= self.status <= high for low, high in self.accept)


async def get(host: Host, address: str, port: int, path: str, *, host_header: str | None = None,
              timeout: float = 3.0, accept: tuple[tuple[int, int], ...] = ((200, 299),),
              headers: dict[str, str] | None = None, tls_name: str | None = None) -> Response:
    """One ``GET`` to address:port as seen from ``host``; raises OSError or TimeoutError.
    ``accept``: the status ranges the response's ``ok`` accepts. ``tls_name``: speak TLS,
    with that SNI name (the response then carries the server's certificate)."""
    resp = await asyncio.wait_for(
        _get(host, address, port, path, host_header, headers or {}, tls_name), timeout)
    return Response(resp.status, resp.headers, resp.body, resp.certificate, accept)


async def _get(host: Host, address: str, port: int, path: str, host_header: str | None,
               headers: dict[str, str], tls_name: str | None) -> Response:
    stream: Stream = await host.open_connection(address, port)
    certificate = None
    try:
        if tls_name is not None:
            stream = await TLSStream.wrap(stream, tls_name)
            certificate = stream.certificate
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host_header or f'{address}:{port}'}\r\n"
            f"User-Agent: bluegreen\r\n{extra}Connection: close\r\n\r\n"
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
    resp = parse_response(raw)
    return Response(resp.status, resp.headers, resp.body, certificate)


class TLSStream:
    """TLS over any ``Stream`` (a local socket or an SSH tunnel), with ``ssl.MemoryBIO``.

    It is used to ask the host's own proxy which colour it serves, through its TLS
    listener, over a channel that SSH has already authenticated (or on this machine); the
    certificate is not what is being checked there, so it is not verified here: it is
    returned (``certificate``), and `bluegreen check` judges its names and expiry."""

    def __init__(self, raw: Stream, tls: ssl.SSLObject, incoming: ssl.MemoryBIO,
                 outgoing: ssl.MemoryBIO) -> None:
        self.raw, self.tls, self.incoming, self.outgoing = raw, tls, incoming, outgoing
        self.certificate: bytes | None = None

    @classmethod
    async def wrap(cls, raw: Stream, server_name: str) -> TLSStream:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # see the class docstring
        context.set_alpn_protocols(["http/1.1"])
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self = cls(raw, context.wrap_bio(incoming, outgoing, server_hostname=server_name),
                   incoming, outgoing)
        try:
            await self._call(self.tls.do_handshake)
        except ssl.SSLError as exc:
            raise OSError(f"TLS handshake with {server_name!r} failed: {exc}") from None
        self.certificate = self.tls.getpeercert(binary_form=True)
        return self

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        """Run an SSLObject call, moving bytes between it and the raw stream until it is
        done."""
        while True:
            try:
                result = fn(*args)
            except ssl.SSLWantReadError:
                await self._flush()
                chunk = await self.raw.read(65536)
                if chunk:
                    self.incoming.write(chunk)
                else:
                    self.incoming.write_eof()
                continue
            await self._flush()
            return result

    async def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            await self.raw.write(data)

    async def read(self, n: int) -> bytes:
        try:
            return await self._call(self.tls.read, n)
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return b""

    async def write(self, data: bytes) -> None:
        await self._call(self.tls.write, data)

    async def close(self) -> None:
        await self.raw.close()


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
