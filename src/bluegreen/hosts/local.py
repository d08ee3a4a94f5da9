"""LocalHost: this machine, through asyncio subprocesses."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path, PurePosixPath
from typing import AsyncIterator, Sequence

from bluegreen.errors import CommandFailed
from bluegreen.hosts.base import Result, check_result, describe


class _LocalStream:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer

    async def read(self, n: int) -> bytes:
        return await self._reader.read(n)

    async def write(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def close(self) -> None:
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except OSError:
            pass


class LocalHost:
    def __init__(self, name: str = "local") -> None:
        self.name = name

    async def run(self, argv: Sequence[str], *, input: str | None = None,
                  timeout: float = 60, check: bool = True) -> Result:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(input.encode() if input is not None else None), timeout
            )
        except asyncio.TimeoutError:
            try:
                os.killpg(proc.pid, 9)
            except ProcessLookupError:
                pass
            await proc.wait()
            raise CommandFailed(f"{describe(argv)} timed out after {timeout:g}s",
                                host=self.name) from None
        result = Result(tuple(argv), proc.returncode or 0, out.decode(errors="replace"),
                        err.decode(errors="replace"))
        return check_result(self.name, result) if check else result

    async def put(self, local: Path, remote: PurePosixPath) -> None:
        try:
            await asyncio.to_thread(shutil.copyfile, local, str(remote))
        except OSError as exc:
            raise CommandFailed(f"copy of {local.name} to {remote} failed: {exc.strerror}",
                                host=self.name) from None

    async def stream(self, argv: Sequence[str]) -> AsyncIterator[str]:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        assert proc.stdout is not None
        try:
            async for line in proc.stdout:
                yield line.decode(errors="replace")
        finally:
            if proc.returncode is None:
                os.killpg(proc.pid, 9)
                await proc.wait()

    async def interactive(self, argv: Sequence[str], *, pty: bool) -> int:
        # Local: the command inherits this terminal, which is already a pty when one is
        # needed.
        proc = await asyncio.create_subprocess_exec(*argv)
        return await proc.wait()

    async def open_connection(self, address: str, port: int) -> _LocalStream:
        reader, writer = await asyncio.open_connection(address, port)
        return _LocalStream(reader, writer)

    async def open_unix_connection(self, path: str) -> _LocalStream:
        reader, writer = await asyncio.open_unix_connection(path)
        return _LocalStream(reader, writer)

    async def close(self) -> None:
        return None
