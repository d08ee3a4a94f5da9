"""`bluegreen demo`: the whole cycle on this machine, with a private nginx (or HAProxy),
under load."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

from rich.console import Console
from rich.table import Table

from bluegreen.commands import workflow
from bluegreen.commands.context import make_context
from bluegreen.commands.setup import setup

from bluegreen.rollout import artifact
from bluegreen.config import Colour, Config, parse_config
from bluegreen.demo.load import Counts, Load, exchange
from bluegreen.demo.haproxy import PrivateHAProxy
from bluegreen.demo.nginx import PrivateNginx, build_sample, free_port
from bluegreen.hosts.local import LocalHost
from bluegreen.output import Reporter
from bluegreen.rollout.boot import Boot
from bluegreen.hosts.fleet import Node
from bluegreen.rollout.slots import Slots
from bluegreen.proxies import for_node

SERVER_NAME = "demo.bluegreen.test"


@dataclass
class Step:
    name: str
    seconds: float
    live: str
    answer: str
    counts: Counts


def demo_settings(base: Path, nginx: PrivateNginx | PrivateHAProxy, blue: int,
                  green: int) -> dict[str, Any]:
    """The config a user would write for this demo (written to bluegreen.toml with
    --keep, so the kept demo can be driven with bluegreen's own commands)."""
    return {
        "app": "demo",
        "release": {"artifact": "artifacts/sample-{version}.tar.gz"},
        "run": {"command": "exec python3 app.py", "health_timeout": 20, "stop_timeout": 10,
                "drain_timeout": 5},
        "slots": {"blue": blue, "green": green},
        "proxy": {"server_name": SERVER_NAME, **nginx.proxy_settings()},
        "hosts": [{"address": "local", "name": "this-machine", "deploy_to": str(base / "srv")}],
    }


def demo_config(base: Path, nginx: PrivateNginx | PrivateHAProxy, blue: int,
                green: int) -> Config:
    return parse_config(demo_settings(base, nginx, blue, green), base)


def to_toml(data: dict[str, Any]) -> str:
    """``data`` (tables of strings and numbers, one array of tables) as TOML."""
    def value(v: Any) -> str:
        return json.dumps(v) if isinstance(v, str) else str(v).lower() \
            if isinstance(v, bool) else str(v)

    top = [f"{k} = {value(v)}" for k, v in data.items() if not isinstance(v, (dict, list))]
    tables = [f"\n[{k}]\n" + "\n".join(f"{kk} = {value(vv)}" for kk, vv in v.items())
              for k, v in data.items() if isinstance(v, dict)]
    arrays = [f"\n[[{k}]]\n" + "\n".join(f"{kk} = {value(vv)}" for kk, vv in item.items())
              for k, v in data.items() if isinstance(v, list) for item in v]
    return "\n".join([*top, *tables, *arrays]) + "\n"


async def run_demo(out: Reporter, *, keep: bool = False, duration: float = 2.0,
                   kind: str = "nginx") -> None:
    base = Path(tempfile.mkdtemp(prefix="bluegreen-demo-"))
    base.chmod(0o755)
    nginx: PrivateNginx | PrivateHAProxy
    if kind == "haproxy":
        nginx = PrivateHAProxy(base / "haproxy", free_port())
        stop_hint = f"kill $(cat {nginx.pid_file})"
    else:
        nginx = PrivateNginx(base / "nginx", free_port())
        stop_hint = nginx.reload_command.replace("reload", "quit")
    nginx.write_config()
    settings = demo_settings(base, nginx, free_port(), free_port())
    cfg = parse_config(settings, base)
    ctx = make_context(cfg, out)
    ctx.command = "bluegreen demo"
    art_dir = base / "artifacts"
    art_dir.mkdir()
    arts = {v: build_sample(art_dir, v) for v in ("1.0.0", "2.0.0")}
    out.step(None, f"private {kind} on 127.0.0.1:{nginx.port} (prefix {nginx.prefix})")
    nginx.start()
    load = Load(nginx.port, SERVER_NAME, connections=4)
    steps: list[Step] = []
    node = Node(cfg, cfg.hosts[0], LocalHost("this-machine"), out)
    proxy = for_node(node, [(node.name, node.bind)])
    cleaned = False

    async def step(name: str, action: Callable[[], Awaitable[object]]) -> None:
        before = load.counts.copy()
        started = time.monotonic()
        await action()
        await asyncio.sleep(duration)  # traffic after the step, on the colour it left live
        seconds = time.monotonic() - started
        live = await _live_now(cfg, out)
        answer = await _answer(nginx.port)
        steps.append(Step(name, seconds, live.value if live else "-", answer,
                          load.counts.since(before)))

    def deploy(version: str, promote: bool) -> Callable[[], Awaitable[object]]:
        async def go() -> object:
            art = artifact.prepare(cfg, version=version, artifact=str(arts[version]),
                                   skip_build=True)
            return await workflow.deploy(ctx, art, promote=promote)
        return go

    try:
        await step("setup (blue live, reload)", lambda: setup(ctx))
        await step("deploy 1.0.0 (first: to blue)", deploy("1.0.0", True))
        load.start()
        await step("load starts (4 clients)", lambda: asyncio.sleep(0))
        await step("deploy 2.0.0 --no-promote (green)", deploy("2.0.0", False))
        await step("promote green", lambda: workflow.promote(ctx, Colour.GREEN))
        await step("rollback (to blue)", lambda: workflow.rollback(ctx))
        total = await load.stop()
        _print(steps, total, kind, nginx.port)
        if keep:
            (base / "bluegreen.toml").write_text(to_toml(settings))
            Console().print(
                f"\nLeft running (--keep), with its config in {base}/bluegreen.toml. Try:\n"
                f"  curl -H 'Host: {SERVER_NAME}' http://127.0.0.1:{nginx.port}/\n"
                f"  cd {base}\n"
                f"  bluegreen status\n"
                f"  bluegreen deploy --version 2.0.0 --canary 50 --step 5s   "
                f"# artifacts/sample-2.0.0.tar.gz\n"
                f"  bluegreen rollback --list\n"
                f"To clean up: `bluegreen remove --yes` (slots, site files, releases), "
                f"then {stop_hint}, and remove {base}", soft_wrap=True)
            cleaned = True
    finally:
        if not load._stop.is_set():
            await load.stop()
        if not cleaned:
            out.step(None, f"cleaning up: stopping both slots and {kind}, removing files")
            for colour in Colour:
                try:
                    await Boot(Slots(node, [proxy])).stop(colour)
                except Exception as exc:  # cleanup must go on whatever failed
                    out.warn(None, f"could not stop {colour}: {exc}")
            nginx.stop()
            shutil.rmtree(base, ignore_errors=True)


async def _live_now(cfg: Config, out: Reporter) -> Colour | None:
    """The live colour as the link (map file) names it now: read through a node of its
    own, since a node keeps what it read first and the workflow moves the link through
    another one (the table said blue on the "promote green" row)."""
    node = Node(cfg, cfg.hosts[0], LocalHost("this-machine"), out)
    try:
        return await for_node(node, [(node.name, node.bind)]).live_colour()
    finally:
        await node.host.close()


async def _answer(port: int) -> str:
    """What a client gets on / through the proxy right now."""
    request = f"GET / HTTP/1.1\r\nHost: {SERVER_NAME}\r\nConnection: close\r\n\r\n".encode()
    try:
        conn = await asyncio.open_connection("127.0.0.1", port)
        try:
            status, answer, _ = await asyncio.wait_for(exchange(conn, request), 5)
        finally:
            conn[1].close()
    except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
        return "no answer"
    return answer if 200 <= status < 300 else f"HTTP {status}"


def _print(steps: list[Step], total: Counts, kind: str, port: int) -> None:
    table = Table(title=f"bluegreen demo: {kind} on 127.0.0.1:{port}, 4 keep-alive clients",
                  title_justify="left")
    for col in ("step", "seconds", "live", "answered by", "requests", "failed", "retried"):
        table.add_column(col, justify="right" if col in ("seconds", "requests", "failed",
                                                          "retried") else "left")
    for s in steps:
        table.add_row(s.name, f"{s.seconds:.2f}", s.live, ", ".join(
            f"{k} x{v}" for k, v in s.counts.answers.most_common()) or s.answer,
            str(s.counts.sent), str(s.counts.failed), str(s.counts.retried))
    console = Console(width=max(Console().width, 110))
    console.print(table)
    console.print(f"total: {total.sent} requests, {total.failed} failed, {total.retried} retried "
                  "once on a fresh connection after the proxy closed an idle keep-alive "
                  "connection during a reload")
