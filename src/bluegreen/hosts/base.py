"""The Host seam (only the interface): run a command, copy a file, open a stream, close."""

from __future__ import annotations

import base64
import shlex
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, AsyncIterator, Protocol, Sequence

from bluegreen.errors import CommandFailed


# HTTP status ranges, inclusive: ((200, 299),).
Ranges = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    exit_status: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


# Where an ``exchange`` connects, as seen from the host: (address, port), or a unix socket.
Endpoint = tuple[str, int] | str


@dataclass(frozen=True)
class Exchanged:
    """What a peer answered to an ``exchange``, up to when it closed."""

    data: bytes
    # The certificate the peer presented (DER), over TLS.
    certificate: bytes | None = None


@dataclass(frozen=True)
class Watched:
    """How a ``watch`` ended: ``met`` or not, after ``tries`` exchanges; the last one's
    answer, or why it failed."""

    met: bool
    tries: int
    last: Exchanged | OSError


@dataclass(frozen=True)
class Op:
    """One operation of a batch, as the agent names it (``run``, ``exchange``, ``watch``)
    with its arguments; ``stop``: the batch ends after it when it fails."""

    name: str
    args: dict[str, Any]
    stop: bool = True

    @property
    def wait(self) -> float:
        """How long it may take on the host."""
        return float(self.args.get("timeout", 60)) + (
            float(self.args["request"]["timeout"]) if self.name == "watch" else 0)


def run_op(argv: Sequence[str], input: str | None = None, timeout: float = 60,
           stop: bool = True) -> Op:
    return Op("run", {"argv": list(argv), "input": input, "timeout": timeout}, stop)


class Host(Protocol):
    name: str

    async def batch(self, ops: Sequence[Op]) -> list[dict[str, Any]]:
        """Run ``ops`` in order on the host, in one round trip, until one whose ``stop``
        is set fails: the agent's answers so far (``ran``, ``exchanged``, ``watched``
        read them)."""
        ...

    async def put(self, local: Path, remote: PurePosixPath) -> None:
        """Copy a local file to the host (its folder created when missing)."""
        ...

    def stream(self, argv: Sequence[str]) -> AsyncIterator[str]:
        """Run ``argv`` and yield its output (stdout and stderr) line by line as it comes."""
        ...

    async def interactive(self, argv: Sequence[str], *, pty: bool) -> int:
        """Run ``argv`` attached to this terminal (in a pty on the host if ``pty``);
        returns its exit status."""
        ...

    async def close(self) -> None: ...


class Checks(Protocol):
    """What health checks need of a host (``fleet.Node`` has it: one round trip each, or
    none more when it goes with the next batch)."""

    async def exchange(self, endpoint: Endpoint, data: bytes, *, tls_name: str | None = None,
                       timeout: float = 3) -> Exchanged:
        """Connect to ``endpoint`` as seen from the host (TLS with SNI ``tls_name`` when
        given), send ``data``, read until the peer closes; OSError when it cannot."""
        ...

    async def watch(self, endpoint: Endpoint, data: bytes, *, status: Ranges,
                    body: str | None = None, streak: int = 1, interval: float = 0.1,
                    timeout: float = 10, tls_name: str | None = None,
                    each: float = 3) -> Watched:
        """``exchange`` (an HTTP request, ``each`` seconds at most) every ``interval`` on
        the host until the answer's status is in ``status`` (and its body, stripped, is
        ``body``) ``streak`` times in a row, or ``timeout`` passes."""
        ...


def describe(argv: Sequence[str]) -> str:
    """A short, readable form of a command: for ``sh -c SCRIPT sh ARGS``, the script's
    first line and the arguments."""
    if len(argv) >= 3 and argv[0] == "sh" and argv[1] == "-c":
        first = argv[2].strip().splitlines()[0] if argv[2].strip() else ""
        more = " ..." if "\n" in argv[2].strip() or len(first) > 60 else ""
        return f"sh -c {shlex.quote(first[:60] + more)} {shlex.join(argv[4:])}".rstrip()
    return shlex.join(argv)


def check_result(host: str, result: Result, what: str | None = None) -> Result:
    if result.ok:
        return result
    output = (result.stderr.strip() or result.stdout.strip())[-2000:]
    raise CommandFailed(
        f"{what or describe(result.argv)} failed (exit {result.exit_status})"
        + (f":\n{output}" if output else ""),
        host=host,
        detail=output,
    )


# ---- the agent's answers (hosts.agent), as the types above -------------------------------

def exchange_op(endpoint: Endpoint, data: bytes, tls_name: str | None = None,
                timeout: float = 3) -> Op:
    return Op("exchange", exchange_request(endpoint, data, tls_name, timeout))


def watch_op(endpoint: Endpoint, data: bytes, *, status: Ranges, body: str | None,
             streak: int, interval: float, timeout: float, tls_name: str | None,
             each: float) -> Op:
    return Op("watch", watch_request(endpoint, data, status=status, body=body, streak=streak,
                                     interval=interval, timeout=timeout, tls_name=tls_name,
                                     each=each))


def exchange_request(endpoint: Endpoint, data: bytes, tls_name: str | None,
                     timeout: float) -> dict[str, Any]:
    """The agent's ``exchange`` arguments."""
    where: dict[str, Any] = ({"path": endpoint} if isinstance(endpoint, str)
                                else {"address": endpoint[0], "port": endpoint[1]})
    return {**where, "data": base64.b64encode(data).decode(), "tls_name": tls_name,
            "timeout": timeout}


def watch_request(endpoint: Endpoint, data: bytes, *, status: Ranges, body: str | None,
                  streak: int, interval: float, timeout: float, tls_name: str | None,
                  each: float) -> dict[str, Any]:
    """The agent's ``watch`` arguments."""
    return {"request": exchange_request(endpoint, data, tls_name, each),
            "status": [list(r) for r in status], "body": body, "streak": streak,
            "interval": interval, "timeout": timeout}


def exchanged(answer: dict[str, Any]) -> Exchanged:
    """An ``exchange`` answer; OSError (TimeoutError, ConnectionRefusedError, ...) when it
    says the exchange failed."""
    if "data" in answer:
        cert = answer.get("certificate")
        return Exchanged(base64.b64decode(answer["data"]),
                         base64.b64decode(cert) if cert else None)
    if answer.get("timeout"):
        raise TimeoutError(answer.get("error") or "timed out")
    errno_ = answer.get("errno")
    if errno_ is not None:
        raise OSError(errno_, answer.get("error") or "")
    raise OSError(answer.get("error") or answer.get("failed") or "no answer")


def watched(answer: dict[str, Any]) -> Watched:
    last: Exchanged | OSError
    try:
        last = exchanged(answer["last"])
    except OSError as exc:
        last = exc
    return Watched(bool(answer["met"]), int(answer["tries"]), last)


def ran(host: str, argv: Sequence[str], answer: dict[str, Any], timeout: float) -> Result:
    """A ``run`` answer as a Result (CommandFailed when it timed out)."""
    if answer.get("timed_out"):
        raise CommandFailed(f"{describe(argv)} timed out after {timeout:g}s", host=host)
    if "failed" in answer:
        raise CommandFailed(f"{describe(argv)}: the agent failed: {answer['failed']}",
                            host=host)
    return Result(tuple(argv), int(answer["status"]), answer["stdout"], answer["stderr"])
