"""The all-or-nothing switch across proxies, the repair of a switch a killed run left half
done, and the refusal to act on a split brain."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

from bluegreen.rollout import records
from bluegreen.config import Colour
from bluegreen.errors import BlueGreenError, ConnectError, ProxyError, SplitBrain
from bluegreen.hosts.fleet import each
from bluegreen.output import Reporter
from bluegreen.plan.files import Query
from bluegreen.proxies import Proxy
from bluegreen.rollout.topology import AppHost, Topology

Hook = Callable[[], Awaitable[None]]


def split_brain(lives: dict[str, str | None]) -> str | None:
    """How hosts disagree on the live colour, or None when they agree."""
    if len(set(lives.values())) <= 1:
        return None
    return ", ".join(f"{host} is on {colour or 'nothing'}" for host, colour in lives.items())


async def finish_interrupted(topo: Topology, out: Reporter, *,
                             silent_ok: bool = False) -> None:
    """A run killed between replacing a link (or map file) and reloading (or setting the
    running HAProxy's map) leaves a proxy whose persisted state names one colour while it
    serves the other. Finish that switch when the named colour is healthy on every host
    behind the proxy; otherwise put the link (map file) back. A canary killed mid-way
    (requests split) goes back to its stable colour, the one it started from.
    ``silent_ok`` (setup): a proxy that does not answer at all is left to the caller (a
    first setup killed after the link, before the reload: nothing serves the app yet)."""

    async def one(p: Proxy) -> None:
        link = await p.live_colour()
        if link is None:
            return
        answer = await p.answer()
        if answer == link.value and not p.persisted_split or answer is None and silent_ok:
            return
        if answer not in (Colour.BLUE.value, Colour.GREEN.value) or p.persisted_split:
            split = await p.split()
            if split is not None:  # a canary (or a watch) that did not finish
                p.node.say(f"undoing an interrupted canary ({split.percent}% to "
                           f"{split.new}): every request goes to {split.stable} again"
                           if split.percent else f"ending an interrupted watch of "
                           f"{split.stable} (it stays live)")
                await p.end_split(split.stable)
                return
        if answer not in (Colour.BLUE.value, Colour.GREEN.value):
            raise ProxyError(f"the proxy does not answer on /deployment_id ({answer!r}): is "
                             f"{p.kind} running?", host=p.name)
        healthy = [await a.slots.health(link) for a in topo.served_by(p)]
        if all(r is not None and r.ok for r in healthy):
            p.node.say(f"finishing an interrupted switch: the {p.source} says {link}, the "
                       f"proxy still serves {answer}")
            await p.apply()
            await p.verify(link)
        else:
            p.node.say(f"undoing an interrupted switch: the {p.source} says {link} (not "
                       f"healthy), the proxy serves {answer}")
            await p.restore(Colour(answer))

    await each(topo.proxies, one, out)


async def refuse_split(topo: Topology, what: str, out: Reporter,
                       finishing: str | None = None) -> dict[str, Colour | None]:
    """Each host's live colour, once any interrupted switch is settled; refuses (exit 1)
    when the hosts disagree, unless ``finishing`` (a deploy's release) runs on every host:
    a deploy of it was killed while it switched the hosts one after the other, and this
    one finishes that switch (each host's target is the colour running it)."""
    await finish_interrupted(topo, out)
    lives = dict(zip([a.name for a in topo.apps],
                     await each(topo.apps, lambda a: a.live_colour(), out)))
    split = split_brain({name: c.value if c else None for name, c in lives.items()})
    if split and finishing is not None and all(
            any(st is not None and st.release == finishing and st.status == "running"
                for st in states) for states in [
                    [await a.slots.state(c) for c in Colour] for a in topo.apps]):
        out.step(None, f"the hosts disagree on the live colour ({split}), and every one "
                 f"runs {finishing}: finishing the switch of a deploy that was interrupted")
        return lives
    if split:
        raise SplitBrain(
            f"split brain: the hosts disagree on the live colour ({split}); {what} refused. "
            "Put every host on one colour first: `bluegreen promote blue` (or green)")
    return lives


async def prove_ready(topo: Topology, targets: dict[str, Colour], out: Reporter
                      ) -> tuple[dict[str, Colour], dict[str, Colour]]:
    """Step (1) of a switch (and of a canary's first step): every host's target slot
    answers its health check and every proxy is ready, else nothing changes (exit 1).
    Returns each proxy's target and live colour."""
    proxies = topo.proxies
    wanted: dict[str, Colour] = {}
    for a in topo.apps:
        for p in a.proxies:
            if wanted.setdefault(p.name, targets[a.name]) is not targets[a.name]:
                raise BlueGreenError(f"{p.name} serves hosts that would need different colours")
    for p in proxies:  # with the first read below: one round trip
        p.node.ahead(*p.prepare_reads())
    lives = dict(zip([p.name for p in proxies],
                     await each(proxies, lambda p: _require_live(p), out)))

    async def healthy(a: AppHost) -> None:
        target = targets[a.name]
        resp = await a.slots.health(target)
        if a.node.dry and (resp is None or not resp.ok):
            a.node.say(f"would refuse unless {target} answers its health check (now: "
                       f"{'no answer' if resp is None else resp.status})")
            return
        if resp is None or not resp.ok:
            state = await a.slots.state(target)
            what = f"its release {state.release} is {state.status}" if state else "it is empty"
            raise BlueGreenError(
                f"{target} is not healthy ({'no answer' if resp is None else resp.status} on "
                f"{a.node.cfg.run.health_path}; {what}); nothing was switched", host=a.name)

    async def ready(p: Proxy) -> None:
        try:
            await p.prepare(wanted[p.name], lives[p.name])
        except ProxyError as exc:
            raise ProxyError(exc.reason + "; nothing was switched", host=p.name,
                             detail=exc.detail) from None

    # The proxies' trials first: nginx's is sent with the health check of its own host
    # (one round trip), the others' now (flush), all before anything is switched.
    await each(proxies, ready, out)
    try:
        await each(topo.apps, healthy, out)
        await each(proxies, lambda p: p.node.flush(), out)
    except ProxyError as exc:
        raise ProxyError(exc.reason + "; nothing was switched", host=exc.host,
                         detail=exc.detail) from None
    return wanted, lives


async def switch_all(topo: Topology, targets: dict[str, Colour], event: str, user: str,
                     out: Reporter, before_switch: Hook | None = None,
                     reads_after: Callable[[AppHost], list[Query]] | None = None,
                     ends: bool = False,
                     last_steps: Callable[[AppHost], Awaitable[object]] | None = None) -> bool:
    """Switch every proxy (each host's own, or the load balancers) to the target colour,
    all or nothing:
    (1) every host's target slot answers its health check, and every proxy is ready:
        nginx: the new site link passes the test (``plan.nginx.trial``: the live link does
        not move); haproxy: the runtime API answers and has the target backend;
    (2) every proxy switches (nginx: link and reload; haproxy: map file and runtime API);
    (3) every proxy answers the target colour.
    If any proxy fails in (2) or (3), those already switched are switched back, and the
    error names the host and the step (exit 1). ``reads_after``: what each app host reads
    next, read with the verify (one round trip). ``ends``: nothing follows on the hosts
    under the lock but ``last_steps`` (which puts its steps off with ``Node.if_done``);
    with one host (its own proxy), the history line, those steps and the lock's release go
    with the verify, to run if it passes (one round trip less): returns whether they did."""
    proxies = topo.proxies
    wanted, lives = await prove_ready(topo, targets, out)
    if before_switch is not None:
        await before_switch()
    moving = [p for p in proxies if wanted[p.name] is not lives[p.name]]
    for p in proxies:
        if p not in moving:
            p.node.say(f"{wanted[p.name]} is already live")
            if p.stale:
                p.node.say("reloading: the live colour's file was rewritten")
                await p.apply()
                p.stale = False
    switched: list[Proxy] = []

    carried: list[Proxy] = []  # those whose switch goes with their verify

    async def flip(p: Proxy) -> None:
        p.node.say(f"switching {lives[p.name]} -> {wanted[p.name]}")
        # Sent with the verify (one round trip) where the kind can: a failed switch then
        # raises from the verify, with its step named.
        await p.switch(wanted[p.name], lives[p.name], defer=True)
        switched.append(p)
        if p.node.pending:
            carried.append(p)

    step = "switch and reload"
    failures = await _gather_failures(moving, flip)
    if reads_after is not None and not failures:
        for a in topo.apps:
            a.node.ahead(*reads_after(a))
    recorded = False
    if not failures and ends and len(topo.apps) == 1 and not topo.apps[0].node.dry \
            and all(p.node is topo.apps[0].node for p in proxies):
        a = topo.apps[0]
        if _moves(a, lives, targets):
            await records.record(a.node, event, targets[a.name],
                                 await a.slots.state(targets[a.name]), user,
                                 f"{lives[a.proxies[0].name]} -> {targets[a.name]}",
                                 if_done=True)
        if last_steps is not None:
            await last_steps(a)
        records.release_if_done(a.node)
        a.node.arm_if_done()  # with the verify's round trip, the next one
        recorded = True
    if not failures:
        step = "verify through the proxy"
        failures = await _gather_failures(proxies, lambda p: p.verify(wanted[p.name]))
        # A switch that failed, or whose round trip lost its connection, in the verify's.
        not_switched = [p for p, e in failures if (isinstance(e, ProxyError) and e.step)
                        or (p in carried and isinstance(e, ConnectError))]
        if not_switched:
            step = "switch and reload"
            switched = [p for p in switched if p not in not_switched]
    if failures:
        for p in switched:
            out.warn(p.name, f"switching back to {lives[p.name]}")
            try:
                await p.switch(lives[p.name], wanted[p.name])
                await p.verify(lives[p.name])
            except BlueGreenError as exc:
                out.error(f"could not switch back: {exc.message}")
        first, first_err = failures[0]
        for p, err in failures[1:]:
            out.error(f"[{p.name}] {step} failed too: {_reason(err)}")
        lost = [p.name for p, e in failures if isinstance(e, ConnectError)]
        raise ProxyError(
            f"{event} failed at step '{step}': {_reason(first_err)}"
            + (f"; switched back: {', '.join(p.name for p in switched)}" if switched else "")
            # A connection lost mid-step: whether that proxy switched is unknown here.
            + (f"; the switch may be half done on {', '.join(lost)} (the connection was "
               "lost): the next setup, deploy, promote, rollback or stop finishes it (the "
               "target is healthy) or puts it back" if lost else
               "" if switched else "; no host was switched"),
            host=first.name)
    for a in topo.apps:
        state = await a.slots.state(targets[a.name])
        before = lives[a.proxies[0].name]
        if not recorded and _moves(a, lives, targets):
            await records.record(a.node, event, targets[a.name], state, user,
                                 f"{before} -> {targets[a.name]}")
        if a.node.dry:
            a.node.say(f"{targets[a.name]} would be live")
            continue
        a.node.say(f"live is {targets[a.name]} ({state.release if state else '?'}); proxy "
                   f"answers {targets[a.name]}")
    return recorded


def _moves(a: AppHost, lives: dict[str, Colour], targets: dict[str, Colour]) -> bool:
    """Whether the switch moved this host's traffic: a proxy of it was on another colour.
    One that moved nothing (the first deploy, on the live colour; `promote` of the live
    colour) is not recorded: history holds what changed."""
    return any(lives[p.name] is not targets[a.name] for p in a.proxies)


async def _require_live(p: Proxy) -> Colour:
    live = await p.live_colour()
    if live is None:
        raise BlueGreenError(f"no live colour yet ({p.source} does not exist): run "
                             "`bluegreen setup` first", host=p.name)
    return live


def _reason(err: BaseException) -> str:
    return err.reason if isinstance(err, BlueGreenError) else str(err)


async def _gather_failures(proxies: list[Proxy], fn: Callable[[Proxy], Awaitable[None]]
                           ) -> list[tuple[Proxy, BaseException]]:
    """Run ``fn`` on every proxy at once; the (proxy, error) pairs of those that failed."""
    results = await asyncio.gather(*(fn(p) for p in proxies), return_exceptions=True)
    out: list[tuple[Proxy, BaseException]] = []
    for p, r in zip(proxies, results):
        if isinstance(r, BaseException):
            if not isinstance(r, Exception):
                raise r
            out.append((p, r))
    return out


async def warn_if_maintenance(topo: Topology, out: Reporter) -> None:
    """A deploy or promote during maintenance keeps it on: say so."""
    if any(await asyncio.gather(*(p.in_maintenance() for p in topo.proxies))):
        out.warn(None, "maintenance is on: the site keeps answering 503 until `bluegreen "
                 "maintenance off`")
