"""LocalHost: this machine, through asyncio subprocesses (commands) and the agent's own
functions in a thread (exchanges, watches)."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path, PurePosixPath
from typing import Any, AsyncIterator, Sequence

from bluegreen.errors import CommandFailed
from bluegreen.hosts import agent
from bluegreen.hosts.base import Op
from bluegreen.plan.layout import UMASK


class LocalHost:
    def __init__(self, name: str = "local") -> None:
        self.name = name

    async def batch(self, ops: Sequence[Op]) -> list[dict[str, Any]]:
        """Commands as asyncio subprocesses, the other operations with the agent's own
        functions in a thread (the same code as on a remote host)."""
        results: list[dict[str, Any]] = []
        for op in ops:
            if op.name == "run":
                result = await self._run(**op.args)
            else:
                result = await asyncio.to_thread(agent.OPERATIONS[op.name], **op.args)
            results.append(result)
            if op.stop and agent.failed(op.name, result):
                break
        return results

    async def _run(self, argv: Sequence[str], input: str | None, timeout: float
                   ) -> dict[str, Any]:
        # Under bluegreen's umask, as the agent runs commands on a remote host.
        proc = await asyncio.create_subprocess_exec(
            "sh", "-c", f'umask {UMASK:03o} && exec "$@"', "sh", *argv,
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
            return {"status": None, "timed_out": True, "stdout": "", "stderr": ""}
        return {"status": proc.returncode or 0, "stdout": out.decode(errors="replace"),
                "stderr": err.decode(errors="replace")}

    async def put(self, local: Path, remote: PurePosixPath) -> None:
        try:
            await asyncio.to_thread(os.makedirs, str(remote.parent), exist_ok=True)
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

    async def close(self) -> None:
        return None
