"""The read-only commands: `check` (tools, proxy and paths on every host) and `status`
(live colour, proxy answer and slots on every host). Unreachable hosts are reported,
not raised."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from bluegreen import supervisors
from bluegreen.config import Colour, Config, HostConfig
from bluegreen.errors import SplitBrain
from bluegreen.fleet import Node, open_fleet
from bluegreen.output import Reporter
from bluegreen.plan import check as checkplan, sudoers
from bluegreen.proxies import Proxy
from bluegreen.switch import split_brain
from bluegreen.topology import AppHost, build


@dataclass
class CheckItem:
    host: str
    item: str
    ok: bool | None  # None: a note (advice), which does not fail the check
    detail: str


async def check(cfg: Config, hosts: list[HostConfig], out: Reporter) -> list[CheckItem]:
    """Connect to every host and verify tools, proxy and paths; changes nothing."""
    async with open_fleet(cfg, hosts, out, strict=False) as fleet:
        topo = build(fleet)
        own = not cfg.load_balancers
        rows = [*(_check_host(a.node, a.proxies[0] if own else None, app=True)
                  for a in topo.apps),
                *(_check_host(p.node, p, app=False) for p in ([] if own else topo.proxies))]
        found = {items[0].host: items for items in await asyncio.gather(*rows)}
    failed = {name: [CheckItem(name, "connect", False, exc.message)]
              for name, exc in fleet.unreachable.items()}
    return [item for hc in [*hosts, *cfg.load_balancers]
            for item in found.get(hc.label) or failed.get(hc.label, [])]


async def _check_host(node: Node, proxy: Proxy | None, *, app: bool) -> list[CheckItem]:
    """Tools, deploy_to (``app`` hosts), and the proxy's directories and test."""
    out: list[CheckItem] = [CheckItem(node.name, "connect", True, "connected")]
    result = await node.run(checkplan.host_probe(proxy.directories if proxy else [],
                                                 node.layout.root if app else None))
    report = checkplan.parse_host_probe(result.stdout)
    for path, state in report.dirs.items():
        ok = state == "ok" or (state == "not-writable" and (node.cfg.proxy.sudo or node.hc.sudo))
        out.append(CheckItem(node.name, f"directory {path}", ok,
                             "present" if ok else state.replace("-", " ")))
    if report.deploy_to:
        detail = {"exists": "present", "creatable": "setup will create it",
                  "blocked": f"cannot create it ({report.blocked_by} is not writable)"}
        out.append(CheckItem(node.name, f"deploy_to {node.layout.root}",
                             report.deploy_to != "blocked", detail[report.deploy_to]))
    missing = report.missing_tools
    out.append(CheckItem(node.name, "tools", not missing, "missing: " + " ".join(missing)
                         if missing else "sh tar sha256sum ss setsid ps found"))
    if app:
        supervisor, why = await supervisors.choose(node)
        out.append(CheckItem(node.name, f"slots run under {supervisor.mode}",
                             True if supervisor.mode == "systemd" else None, why))
    if node.hc.sudo or node.cfg.proxy.sudo:
        out.append(await _sudo_row(node, app))
    if proxy is not None:
        out.extend(CheckItem(node.name, item, ok, detail)
                   for item, ok, detail in await proxy.checks())
    return out


async def _sudo_row(node: Node, app: bool) -> CheckItem:
    """Whether sudo lets the SSH user run what bluegreen needs, without a password."""
    systemd_slots = app and (await supervisors.choose(node))[0].mode == "systemd"
    commands = sudoers.privileged(node.cfg, systemd_slots)
    result = await node.run(sudoers.may_run(commands[-1]), check=False)
    if result.ok:
        return CheckItem(node.name, "sudo", True, f"allows `{' '.join(commands[-1])}` "
                         "without a password")
    why = (result.stderr.strip() or result.stdout.strip()).splitlines()
    return CheckItem(node.name, "sudo", False,
                     f"`sudo -n` cannot run `{' '.join(commands[-1])}`"
                     + (f" ({why[-1]})" if why else "")
                     + "; install the drop-in `bluegreen setup --print-sudoers` prints")


async def status(cfg: Config, hosts: list[HostConfig], out: Reporter) -> dict[str, Any]:
    """Per host: live colour, proxy answer, and each slot's release, pid and health; with
    load balancers, each balancer's link and answer too. Unreachable hosts are listed."""
    async with open_fleet(cfg, hosts, out, strict=False) as fleet:
        topo = build(fleet)
        lb_rows: dict[str, dict[str, Any]] = {}
        if cfg.load_balancers:
            for p in topo.proxies:
                live = await p.live_colour()
                lb_rows[p.name] = {"host": p.name, "reachable": True,
                                   "live": live.value if live else None,
                                   "proxy_answer": await p.answer()}
        rows = dict(zip([a.name for a in topo.apps],
                        await asyncio.gather(*(_status_host(a) for a in topo.apps))))
    down: dict[str, dict[str, Any]] = {name: {"host": name, "reachable": False, "error": exc.message}
            for name, exc in fleet.unreachable.items()}
    host_rows = [rows.get(h.label) or down[h.label] for h in hosts]
    balancer_rows = [lb_rows.get(h.label) or down[h.label] for h in cfg.load_balancers]
    reachable = [h for h in host_rows if h["reachable"]]
    problems = []
    split = split_brain({h["host"]: h["live"] for h in [*reachable, *balancer_rows]
                         if h.get("reachable")})
    if split:
        problems.append(f"split brain: {split}; fix: `bluegreen promote blue` (or green) puts "
                        "every host on one colour")
    releases = {h["host"]: h["slots"][h["live"]]["release"] for h in reachable if h["live"]}
    if len(set(releases.values())) > 1:
        problems.append("live releases differ: " + ", ".join(
            f"{host} serves {rel or 'nothing'}" for host, rel in releases.items())
            + "; fix: deploy one release to every host")
    data: dict[str, Any] = {"app": cfg.app, "hosts": host_rows,
                            "split_brain": bool(problems), "problems": problems}
    if cfg.load_balancers:
        data["load_balancers"] = balancer_rows
    return data


async def _status_host(a: AppHost) -> dict[str, Any]:
    try:
        live = await a.live_colour()
    except SplitBrain:  # balancers that disagree: reported as split brain by the caller
        live = None
    answer = await a.proxy_answer()
    slots: dict[str, Any] = {}
    for c in Colour:
        state = await a.slots.state(c)
        probe = await a.slots.probe(c)
        pid = next(iter(probe.listeners), None)
        resp = await a.slots.health(c) if probe.listening else None
        slots[c.value] = {
            "release": state.release if state else None,
            "version": state.version if state else None,
            "port": a.node.cfg.slots.port(c),
            "pid": pid,
            "running": probe.listening,
            "healthy": bool(resp and resp.ok),
            "connections": await a.slots.connections(c, probe=probe),
            "own": a.slots.owns(c, state, probe) if probe.listening else None,
        }
        unit = await supervisors.of_state(a.node, state).details(c) if state else None
        if unit is not None:
            slots[c.value]["unit"] = unit
    return {"host": a.name, "reachable": True, "live": live.value if live else None,
            "proxy_answer": answer, "slots": slots}
