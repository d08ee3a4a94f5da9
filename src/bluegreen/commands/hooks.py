"""Local hook commands around deploy, promote and rollback (``[hooks]``)."""

from __future__ import annotations

import asyncio
import os

from bluegreen.config import Config, render
from bluegreen.errors import BlueGreenError
from bluegreen.output import Reporter

HOOK_TIMEOUT = 600.0


async def run_hook(cfg: Config, name: str, out: Reporter, *, colour: str | None,
                   version: str | None, hosts: list[str]) -> None:
    """Run ``hooks.<name>`` locally, in the config file's directory. A failing pre_* hook
    raises (exit 1, nothing changed yet); a failing post_* hook is reported."""
    command = getattr(cfg.hooks, name)
    if not command:
        return
    if out.dry_run:
        out.step(None, f"would run hook {name} here: {command}")
        return
    env = {
        **os.environ,
        "BLUEGREEN_APP": cfg.app,
        "BLUEGREEN_COLOR": colour or "",
        "BLUEGREEN_VERSION": version or "",
        "BLUEGREEN_HOSTS": ",".join(hosts),
        "BLUEGREEN_EVENT": name,
    }
    out.step(None, f"hook {name}: {command}")
    proc = await asyncio.create_subprocess_shell(
        render(command, app=cfg.app), cwd=cfg.base_dir, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL)
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), HOOK_TIMEOUT)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        output, status = b"", -1
    else:
        status = proc.returncode or 0
    text = out.mask(output.decode(errors="replace").rstrip())
    for line in text.splitlines():
        out.step(None, f"  {line}")
    if status != 0:
        message = f"hook {name} `{command}` failed (exit {status})"
        if name.startswith("pre_"):
            raise BlueGreenError(message + "; nothing was changed", detail=text)
        out.warn(None, message + "; the operation itself succeeded")
