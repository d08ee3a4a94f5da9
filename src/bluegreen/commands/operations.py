"""Day-two commands: a slot's one-off commands (`migrate`, `console`, `exec`) and logs,
maintenance mode, `remove`, `unlock` and `history`. Built on the same connection, lock
and records as the deploy steps in ``workflow``."""

from __future__ import annotations

import html
import json
import shlex
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from bluegreen import supervisors

from bluegreen.rollout import records
from bluegreen.config import Colour
from bluegreen.errors import BlueGreenError, ConfigError, LockHeld
from bluegreen.hosts.fleet import each
from bluegreen.proxies import maintenance as proven
from bluegreen.plan import files, history, layout, systemd as systemdplan
from bluegreen.plan.slot import SlotState, slot_command
from bluegreen.rollout.releases import migrate_on
from bluegreen.rollout.topology import AppHost, Topology
from bluegreen.commands.context import Context, connected, locked


async def _mask_host_secrets(ctx: Context, a: AppHost) -> None:
    """Mask the secrets the host's slots were given (their local sources, e.g. a CI
    variable, may not be there now, and may have been rotated since)."""
    await a.slots.mask_given_secrets()


MAINTENANCE_MESSAGE = "Down for maintenance; back shortly."


def maintenance_page(message: str) -> str:
    """The page `maintenance on` serves when `proxy.maintenance_page` is not set."""
    text = html.escape(message)
    return ("<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Maintenance</title>"
            "<style>body{font-family:sans-serif;margin:15vh auto;max-width:36em;"
            "text-align:center}</style></head>\n"
            f"<body><h1>{text}</h1></body></html>\n")


async def maintenance(ctx: Context, on: bool, message: str | None) -> list[str]:
    """Make every proxy answer this app's requests (except /deployment_id) with 503 and a
    page, or serve it again, proven through each proxy (else ProxyError, exit 1, with the
    reason); the slots keep running. Recorded in each host's history."""
    text = message or MAINTENANCE_MESSAGE
    page = maintenance_page(text)
    if ctx.cfg.proxy.maintenance_page:
        path = ctx.cfg.local_path(ctx.cfg.proxy.maintenance_page)
        try:
            page = path.read_text()
        except OSError as exc:
            raise ConfigError(f"proxy.maintenance_page: cannot read {path}: {exc.strerror}"
                              ) from None
    async with connected(ctx) as topo, locked(ctx, topo):
        # The text a served page holds: a custom page whole, else the message.
        marker = page if ctx.cfg.proxy.maintenance_page else html.escape(text)
        await each(topo.proxies, lambda p: proven.switch(p, on, html.escape(text), page, marker),
                   ctx.out)
        for a in topo.apps:
            await records.record(a.node, "maintenance", None, None, ctx.user,
                                 f"on: {text}" if on else "off")
        return [p.name for p in topo.proxies]


@dataclass
class Removed:
    """What `remove` left on a host: root-owned files for an admin (with sudo); on an app
    host, ``deploy_to`` and what else was in it, which kept it (empty: it was removed)."""

    left_for_admin: list[str] = field(default_factory=list)
    deploy_to: str | None = None
    kept: list[str] = field(default_factory=list)


async def remove(ctx: Context) -> dict[str, Removed]:
    """Tear the app down everywhere: each proxy stops sending it traffic (site or config
    removed, reloaded), then on each app host both slots are drained and stopped (their
    units disabled, the unit file removed) and bluegreen's layout under ``deploy_to`` is
    deleted, then ``deploy_to`` itself unless other files are in it."""
    async with connected(ctx) as topo, locked(ctx, topo):
        done = {p.name: Removed([str(path) for path in paths]) for p, paths in zip(
            topo.proxies, await each(topo.proxies, lambda p: p.remove(), ctx.out))}

        async def teardown(a: AppHost) -> tuple[list[PurePosixPath], list[str]]:
            for colour in Colour:
                state = await a.boot.stop(colour)
                if state is not None:
                    await supervisors.of_state(a.node, state).retire(colour)
            unit = systemdplan.unit_path(ctx.cfg)
            kept: list[PurePosixPath] = []
            if (await a.node.run(files.exists(unit), check=False)).ok:
                if a.node.hc.sudo:
                    kept.append(unit)
                else:
                    await a.node.run(files.remove_file(unit))
                    await a.node.run(systemdplan.systemctl(False, "daemon-reload"))
            root = a.node.layout.root
            a.node.say(f"removing {', '.join(e.name for e in a.node.layout.entries())} "
                       f"from {root}")
            others = layout.parse_remove(
                (await a.node.run(layout.remove(a.node.layout), timeout=600)).stdout) or []
            if others:
                a.node.say(f"kept {root}: it holds files bluegreen did not make "
                           f"({', '.join(others)})")
            return kept, others

        for a, (kept, others) in zip(topo.apps, await each(topo.apps, teardown, ctx.out)):
            row = done.setdefault(a.name, Removed())
            row.left_for_admin += [str(p) for p in kept]
            row.deploy_to, row.kept = str(a.node.layout.root), others
    return done


async def unlock(ctx: Context, force: bool = False) -> list[tuple[str, str]]:
    """Remove each host's lock; returns (host, what was removed). A fresh lock whose run
    may still be going on is refused on every host (exit 4, nothing removed), unless
    ``force``: removing it would let a second run interleave with that one."""
    out: list[tuple[str, str]] = []
    async with connected(ctx) as topo:
        locks = [(a, *await records.read_lock(a.node)) for a in topo.apps]
        for a, held, holder in locks:
            why = records.may_still_run(holder) if held and not force else None
            if why:
                raise LockHeld(f"{records.describe_holder(a.node, holder)} ({why}): a run "
                               "that may still be going on; nothing was unlocked. Wait for "
                               "it, or if you know it died, `bluegreen unlock --force`",
                               host=a.name)
        for a, held, holder in locks:
            if not held:
                out.append((a.name, "no lock"))
                continue
            await records.release(a.node)
            out.append((a.name, "removed: " + records.describe_holder(a.node, holder)))
    return out


# ---- one slot: migrate, console, logs -------------------------------------------------


async def _slot_state(a: AppHost, colour: Colour) -> SlotState:
    state = await a.slots.state(colour)
    if state is None:
        raise BlueGreenError(f"the {colour} slot has never run a release", host=a.name)
    return state


def _one_host(ctx: Context, topo: Topology, what: str) -> AppHost:
    if len(topo.apps) > 1:
        ctx.out.warn(None, f"{what} runs on one host: {topo.apps[0].name} (choose with --host)")
    return topo.apps[0]


async def migrate(ctx: Context, colour: Colour | None) -> None:
    """Run ``run.migrate`` in a slot (default: the idle one) with its release and env."""
    if not ctx.cfg.run.migrate:
        raise ConfigError("run.migrate is not set")
    async with connected(ctx) as topo, locked(ctx, topo):
        a = _one_host(ctx, topo, "migrate")
        await _mask_host_secrets(ctx, a)
        target = colour or (await a.require_live()).other
        await migrate_on(a, target, await _slot_state(a, target))


async def console(ctx: Context, colour: Colour | None) -> int:
    """Run ``run.console`` in a pty on the host, in a slot (default: the live one)."""
    if not ctx.cfg.run.console:
        raise ConfigError("run.console is not set")
    async with connected(ctx) as topo:
        a = _one_host(ctx, topo, "console")
        target = colour or await a.require_live()
        state = await _slot_state(a, target)
        slot = a.slots.slot(target, state.release, state.version)
        a.node.say(f"console on {target} ({state.release}): {ctx.cfg.run.console}")
        return await a.node.host.interactive(
            slot_command(state.cwd, a.node.layout.slot_env(target),
                         slot.render(ctx.cfg, ctx.cfg.run.console)), pty=True)


async def exec_command(ctx: Context, colour: Colour | None, argv: list[str], *,
                       all_hosts: bool, pty: bool) -> int:
    """Run ``argv`` in a slot's release dir (default: the live slot) with the slot's
    environment and secrets, on one host (or each in turn); its exit status (with
    ``all_hosts``: the first host's that is not 0). Standard input and output are the
    caller's; ``pty``: a terminal on the host, as `console`."""
    command = shlex.join(argv)
    async with connected(ctx) as topo:
        apps = topo.apps if all_hosts else [_one_host(ctx, topo, "exec")]
        if pty and len(apps) > 1:
            raise ConfigError("exec -i runs on one host: choose it with --host")
        status = 0
        for a in apps:
            target = colour or await a.require_live()
            state = await _slot_state(a, target)
            a.node.say(f"exec on {target} ({state.release}): {command}")
            code = await a.node.host.interactive(
                slot_command(state.cwd, a.node.layout.slot_env(target), command), pty=pty)
            if code != 0:
                a.node.warn(f"exited {code}")
            status = status or code
        return status


async def logs(ctx: Context, colour: Colour | None, lines: int, follow: bool,
               json_lines: bool = False) -> None:
    """Print (or follow) a slot's logs (default: the live one) on each selected host;
    ``json_lines``: one ``{"host", "color", "release", "line"}`` object per line."""
    async with connected(ctx) as topo:
        apps = [_one_host(ctx, topo, "logs -f")] if follow else topo.apps
        for a in apps:
            await _mask_host_secrets(ctx, a)
            target = colour or await a.require_live()
            state = await a.slots.state(target)
            release = state.release if state else None
            argv = a.slots.logs_argv(target, state, lines, follow)

            def show(text: str) -> None:
                text = ctx.out.mask(text)
                if json_lines:
                    for line in text.splitlines():
                        print(json.dumps({"host": a.name, "color": target.value,
                                          "release": release, "line": line}), flush=True)
                else:
                    print(text, end="", flush=True)

            if len(apps) > 1 and not json_lines:
                print(f"==> [{a.name}] {target} ({release or 'no release'}) <==")
            if follow:
                async for line in a.node.host.stream(argv):
                    show(line)
            else:
                show((await a.node.run(argv, check=False)).stdout)


async def read_history(ctx: Context, limit: int | None
                       ) -> tuple[list[dict[str, Any]], dict[str, list[int]]]:
    """Every host's history, merged, newest first; and per host, the torn lines skipped
    (each a warning)."""
    async with connected(ctx) as topo:
        texts = await each(topo.apps, lambda a: a.node.run(history.read(a.node.layout)),
                           ctx.out)
    indexed: list[tuple[str, int, dict[str, Any]]] = []
    torn: dict[str, list[int]] = {}
    for a, r in zip(topo.apps, texts):
        events, skipped = history.parse(r.stdout)
        indexed.extend((str(e.get("time", "")), i, e) for i, e in enumerate(events))
        if skipped:
            torn[a.name] = skipped
            ctx.out.warn(a.name, f"{a.node.layout.history}: skipped torn line(s) "
                         f"{', '.join(map(str, skipped))} (an append cut short by a crash)")
    indexed.sort(key=lambda t: (t[0], t[1]), reverse=True)
    merged = [e for _, _, e in indexed]
    return (merged[:limit] if limit else merged), torn
