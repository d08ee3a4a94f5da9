"""The releases kept on each host, for `rollback --list` and `rollback --pick`: each one's
version, age, where it runs, and the one a plain `rollback` would go back to."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from bluegreen.commands.context import Context, connected
from bluegreen.commands.workflow import _forward
from bluegreen.config import Colour
from bluegreen.hosts.fleet import each
from bluegreen.plan import release as releaseplan
from bluegreen.plan.slot import SlotState
from bluegreen.rollout.slots import moment
from bluegreen.rollout.topology import AppHost


@dataclass(frozen=True)
class Kept:
    """One release kept on a host."""

    release: str
    version: str
    age_seconds: float | None  # since its slot started it, else since it was unpacked
    where: str  # "live", "idle" (the idle slot runs it) or "disk" (on disk only)
    rollback_target: bool  # what a plain `rollback` would switch to

    def to_json(self) -> dict[str, Any]:
        return {"release": self.release, "version": self.version,
                "age_seconds": None if self.age_seconds is None else round(self.age_seconds),
                "where": self.where, "rollback_target": self.rollback_target}


async def kept(ctx: Context) -> dict[str, list[Kept]]:
    """Per selected host, its kept releases, newest first. Reads only (no lock)."""
    async with connected(ctx) as topo:
        rows = await each(topo.apps, _kept_on, ctx.out)
    return {a.name: r for a, r in zip(topo.apps, rows)}


def rollback_target(live: Colour | None, states: dict[Colour, SlotState | None]) -> str | None:
    """The release a plain `rollback` would switch to: the idle slot's, when it runs and
    was started before the live one (rollback only goes backward), else None."""
    if live is None:
        return None
    idle, current = states[live.other], states[live]
    if idle is None or idle.status != "running":
        return None
    return None if current is not None and _forward(idle, current) else idle.release


async def _kept_on(a: AppHost) -> list[Kept]:
    lines = (await a.node.run(releaseplan.list_with_times(a.node.layout))).stdout.splitlines()
    host_now = float(lines[0]) if lines and lines[0].strip().isdigit() else None
    unpacked: dict[str, float | None] = {}
    for line in lines[1:]:
        stamp, _, name = line.partition(" ")
        if name and stamp.isdigit():
            unpacked[name] = host_now - float(stamp) if host_now is not None else None
    live = await a.live_colour()
    states = {c: await a.slots.state(c) for c in Colour}
    target = rollback_target(live, states)
    now = datetime.now(timezone.utc)
    rows = []
    for name, age in unpacked.items():
        where, version = "disk", name.rpartition("-")[0]
        for colour, state in states.items():
            if state is None or state.release != name:
                continue
            if colour is live or state.status == "running":
                where, version = ("live" if colour is live else "idle"), state.version
                started = moment(state.started)
                age = (now - started).total_seconds() if started else age
        rows.append(Kept(name, version, age, where, name == target))
    # Newest first; a release whose age cannot be told last.
    return sorted(rows, key=lambda k: (k.age_seconds is None, k.age_seconds or 0.0))
