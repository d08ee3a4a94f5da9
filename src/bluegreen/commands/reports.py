"""The read-only commands: `check` (tools, proxy and paths on every host) and `status`
(live colour, proxy answer and slots on every host). Unreachable hosts are reported,
not raised."""

from __future__ import annotations

import asyncio
from typing import Any

from bluegreen import supervisors

from bluegreen.rollout import records
from bluegreen.config import Colour, Config, HostConfig
from bluegreen.errors import SplitBrain
from bluegreen.hosts.fleet import Node, open_fleet
from bluegreen.hosts.relay import Relay
from bluegreen.output import Reporter
from bluegreen.plan import check as checkplan, lock, sudoers
from bluegreen.proxies import Proxy, maintenance
from bluegreen.proxies.base import listen_finding
from bluegreen.supervisors.base import probe_query
from bluegreen.rollout.switch import split_brain
from bluegreen.traffic import whole
from bluegreen.rollout.topology import AppHost, build
from bluegreen.commands.preflight import LOCAL, CheckItem, check_local

__all__ = ["LOCAL", "CheckItem", "check", "check_local", "status"]


async def check(cfg: Config, hosts: list[HostConfig], out: Reporter) -> list[CheckItem]:
    """Connect to every host and verify tools, proxy and paths; changes nothing. Each host
    gets a new SSH login (a kept connection would not show that one still works)."""
    local = check_local(cfg)
    async with open_fleet(cfg, hosts, out, strict=False) as fleet:
        topo = build(fleet)
        own = not cfg.load_balancers
        rows = [*(_check_app(a, own) for a in topo.apps),
                *(_check_host(p.node, p, app=False) for p in ([] if own else topo.proxies))]
        found = {items[0].host: items for items in await asyncio.gather(*rows)}
    failed = {name: [CheckItem(name, "connect", False, exc.message)]
              for name, exc in fleet.unreachable.items()}
    return local + [item for hc in [*hosts, *cfg.load_balancers]
                    for item in found.get(hc.label) or failed.get(hc.label, [])]


async def _check_app(a: AppHost, own_proxy: bool) -> list[CheckItem]:
    """An app host: its tools, deploy_to, proxy (its own), and whether the slot ports are
    free or held by this app's own slots (not another app's)."""
    items = await _check_host(a.node, a.proxies[0] if own_proxy else None, app=True)
    for colour in Colour:
        port = a.node.cfg.slots.port(colour)
        probe = await a.slots.probe(colour)
        if not probe.listening:
            items.append(CheckItem(a.name, f"port {port} ({colour})", True, "free"))
        elif a.slots.owns(colour, await a.slots.state(colour), probe):
            items.append(CheckItem(a.name, f"port {port} ({colour})", True,
                                   "held by this app's own slot"))
        else:
            items.append(CheckItem(a.name, f"port {port} ({colour})", False,
                                   f"held by {a.slots.strangers(probe)}, not this app's "
                                   f"slot: stop it or change slots.{colour}"))
    return items


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
        out.append(CheckItem(node.name, f"slots run under {supervisor.title}",
                             True if supervisor.runs_units else None, why))
    if node.hc.sudo or node.cfg.proxy.sudo:
        out.append(await _sudo_row(node, app))
        out.append(await _sudo_directories_row(node, app))
    if proxy is not None:
        out.extend(CheckItem(node.name, item, ok, detail)
                   for item, ok, detail in [*await proxy.checks(), await listen_finding(proxy),
                                            *await maintenance.page_row(proxy)])
    return out


async def _sudo_row(node: Node, app: bool) -> CheckItem:
    """Whether sudo lets the SSH user run what bluegreen needs, without a password."""
    systemd_slots = app and (await supervisors.choose(node))[0].runs_units
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


async def _sudo_directories_row(node: Node, app: bool) -> CheckItem:
    """Whether every directory sudo writes in is root's alone (else a symlink the SSH user
    plants there has root write elsewhere)."""
    systemd_slots = app and (await supervisors.choose(node))[0].runs_units
    dirs = sudoers.directories(node.cfg, systemd_slots)
    result = await node.run(sudoers.owners(sorted(dirs)))
    bad = sudoers.unsafe_directories(dirs, result.stdout)
    return CheckItem(node.name, "sudo writes in root's directories", not bad,
                     sudoers.refusal(bad) if bad else
                     "every directory it writes in is root's, closed to others")


async def status(cfg: Config, hosts: list[HostConfig], out: Reporter,
                 via: Relay | None = None) -> dict[str, Any]:
    """Per host: live colour, proxy answer, and each slot's release, pid and health; with
    load balancers, each balancer's link and answer too. Unreachable hosts are listed.
    ``via``: a relay that may lend kept SSH connections."""
    async with open_fleet(cfg, hosts, out, strict=False, via=via) as fleet:
        topo = build(fleet)
        lb_rows: dict[str, dict[str, Any]] = {}
        if cfg.load_balancers:
            for p in topo.proxies:
                live = await p.live_colour()
                lb_rows[p.name] = {"name": p.name, "host": p.name, "reachable": True,
                                   "live": live.value if live else None,
                                   "proxy_answer": await p.answer(),
                                   **await _traffic([p], live)}
        rows = dict(zip([a.name for a in topo.apps],
                        await asyncio.gather(*(_status_host(a) for a in topo.apps))))
    down: dict[str, dict[str, Any]] = {name: {"name": name, "host": name, "reachable": False,
                                              "error": exc.message}
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
    split_brain_found = bool(problems)
    problems.extend(_live_slot_problem(h) for h in live_slots_down(host_rows))
    data: dict[str, Any] = {"app": cfg.app, "hosts": host_rows,
                            "split_brain": split_brain_found, "problems": problems}
    if cfg.load_balancers:
        data["load_balancers"] = balancer_rows
    return data


def live_slots_down(host_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The reachable hosts (`status` rows) whose live slot holds a release but is not
    running or not healthy: the proxy sends users there, and they get errors (502). A live
    slot that never held a release (after `setup`, before the first deploy) is not one."""
    down = []
    for h in host_rows:
        live = h.get("live") if h.get("reachable") else None
        slot = h["slots"].get(live) if live else None
        if slot and slot["release"] and not (slot["running"] and slot["healthy"]):
            down.append(h)
    return down


def _live_slot_problem(h: dict[str, Any]) -> str:
    """One sentence on a host's live slot that does not serve, with the fix."""
    live = Colour(h["live"])
    slot, idle = h["slots"][live.value], h["slots"][live.other.value]
    what = ("is running but not healthy" if slot["running"] else
            f"is not running (nothing listens on port {slot['port']})")
    if idle["running"] and idle["healthy"] and idle["release"]:
        fix = (f"`bluegreen rollback` switches to {live.other} ({idle['release']}), which is "
               "healthy")
    else:
        fix = (f"redeploy (`bluegreen deploy`), since {live.other} is not healthy either")
    return (f"{h['host']}: the live slot {live} ({slot['release']}) {what}, so users get "
            f"errors through the proxy; fix: {fix}")


async def _status_host(a: AppHost) -> dict[str, Any]:
    # Everything below that does not depend on an earlier answer, in one round trip.
    a.node.ahead(*a.first_reads(), *[probe_query(a.node, c) for c in Colour],
                 *[a.slots.health_op(c) for c in Colour], lock.read(a.node.layout))
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
    held, holder = await records.read_lock(a.node)
    maintenance = any([await p.in_maintenance() for p in a.proxies])
    return {"name": a.name, "host": a.name, "reachable": True,
            "live": live.value if live else None,
            "proxy_answer": answer, "slots": slots,
            "lock": records.describe_holder(a.node, holder) if held else None,
            "maintenance": maintenance, **await _traffic(a.proxies, live)}


async def _traffic(proxies: list[Proxy], live: Colour | None) -> dict[str, Any]:
    """``traffic``: each colour's share of requests in percent (a canary's split, else
    100 for the live colour); ``canary``: the split's new colour, share and stickiness
    while one is in effect (a canary's step, or a watch), else None."""
    split = next((s for s in [await p.split() for p in proxies] if s), None)
    if split is None or split.percent == 0:  # nothing, or a watch (all on the live one)
        return {"traffic": whole(live) if live else None, "canary": None}
    return {"traffic": split.shares,
            "canary": {"new": split.new.value, "percent": split.percent,
                       "sticky": split.sticky}}
