"""The Host seam (only the interface): run a command, copy a file, open a stream, close."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import AsyncIterator, Protocol, Sequence

from bluegreen.errors import CommandFailed


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    exit_status: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


class Stream(Protocol):
    """A byte stream to a TCP port or unix socket as seen from the host."""

    async def read(self, n: int) -> bytes: ...
    async def write(self, data: bytes) -> None: ...
    async def close(self) -> None: ...


class Host(Protocol):
    name: str

    async def run(self, argv: Sequence[str], *, input: str | None = None,
                  timeout: float = 60, check: bool = True) -> Result:
        """Run ``argv`` on the host; raise CommandFailed if ``check`` and it fails."""
        ...

    async def put(self, local: Path, remote: PurePosixPath) -> None:
        """Copy a local file to the host."""
        ...

    def stream(self, argv: Sequence[str]) -> AsyncIterator[str]:
        """Run ``argv`` and yield its output (stdout and stderr) line by line as it comes."""
        ...

    async def interactive(self, argv: Sequence[str], *, pty: bool) -> int:
        """Run ``argv`` attached to this terminal (in a pty on the host if ``pty``);
        returns its exit status."""
        ...

    async def open_connection(self, address: str, port: int) -> Stream:
        """A TCP stream to address:port as seen from the host (an SSH tunnel if remote)."""
        ...

    async def open_unix_connection(self, path: str) -> Stream:
        """A stream to the unix socket ``path`` on the host (SSH stream-local forwarding
        if remote)."""
        ...

    async def close(self) -> None: ...


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
