"""A canary: after the new colour is healthy, send it a share of requests, judge it on the
proxies' own numbers against the old colour over the same window, step up, and switch
fully at the last step; a bad verdict sends every request back to the old colour in one
step. A watch judges the new colour for a while after a full switch and rolls back on a
bad verdict. See docs/canary.md."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

from bluegreen.config import Colour, Config
from bluegreen.errors import BlueGreenError, CanaryFailed, ConfigError, ProxyError
from bluegreen.hosts.fleet import each
from bluegreen.output import Reporter
from bluegreen.proxies import Proxy
from bluegreen.proxies.base import Meter
from bluegreen.rollout.switch import prove_ready
from bluegreen.rollout.topology import Topology
from bluegreen.traffic import Sample, Traffic, Verdict, judge
from bluegreen.values import percent_steps, seconds

POLL = 0.5  # seconds between reads of the proxies' numbers during a step
MAX_WAIT = 3  # a step waits up to this many times its length for min_requests
Hook = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Plan:
    """What `--canary`, `--step`, `--watch` and `--no-sticky` (over `[canary]`) ask for."""

    steps: tuple[int, ...]  # the shares before the full switch, e.g. (10, 50); () none
    step: float
    watch: float | None
    sticky: bool
    max_error_rate: float
    max_latency_ratio: float
    min_requests: int

    @classmethod
    def of(cls, cfg: Config, canary: str | None, step: str | None, watch: str | None,
           sticky: bool) -> Plan | None:
        """None when neither a canary nor a watch is asked for. ``canary`` "" (the flag
        without steps) means `[canary] steps`."""
        if canary is None and watch is None:
            return None
        c = cfg.canary
        try:
            steps = percent_steps(canary or c.steps) if canary is not None else (100,)
            length = seconds(step) if step is not None else c.step_seconds
            watching = seconds(watch) if watch is not None else None
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return cls(steps[:-1], length, watching, sticky and c.sticky, c.max_error_rate,
                   c.max_latency_ratio, c.min_requests)

    def verdict(self, old: Sample, new: Sample, baseline: float | None) -> Verdict:
        return judge(old, new, max_error_rate=self.max_error_rate,
                     max_latency_ratio=self.max_latency_ratio,
                     min_requests=self.min_requests, baseline_p99=baseline)

    def describe(self) -> str:
        steps = ", ".join(f"{p}%" for p in (*self.steps, 100))
        return (f"canary {steps}, {self.step:g}s a step"
                + ("" if self.sticky else ", not sticky")
                + (f", then a {self.watch:g}s watch" if self.watch else ""))


async def set_everywhere(proxies: list[Proxy], traffic: Traffic, out: Reporter) -> None:
    """``traffic`` on every proxy, all or nothing: if one fails, every proxy goes back to
    the stable colour and the error says so (exit 1)."""
    results = await asyncio.gather(*(p.set_traffic(traffic) for p in proxies),
                                   return_exceptions=True)
    failed = [(p, r) for p, r in zip(proxies, results) if isinstance(r, BaseException)]
    if not failed:
        return
    for p, r in failed:
        if not isinstance(r, Exception):
            raise r
    back = await back_to(proxies, traffic.stable, out)
    p, err = failed[0]
    reason = err.reason if isinstance(err, BlueGreenError) else str(err)
    raise ProxyError(f"setting {traffic.text()} failed: {reason}; "
                     f"{went_back(back, traffic.stable)}", host=p.name)


async def back_to(proxies: list[Proxy], colour: Colour, out: Reporter) -> list[str]:
    """Every request to ``colour`` on every proxy, each in one step; errors are reported,
    not raised (this is the way out). Returns the proxies where it failed."""
    results = await asyncio.gather(*(p.end_split(colour) for p in proxies),
                                   return_exceptions=True)
    failed = []
    for p, r in zip(proxies, results):
        if isinstance(r, BaseException):
            failed.append(p.name)
            out.error(f"[{p.name}] could not send every request back to {colour}: "
                      f"{r.reason if isinstance(r, BlueGreenError) else r!r}")
    return failed


def went_back(failed: list[str], colour: Colour) -> str:
    """How a `back_to` went, for messages."""
    if not failed:
        return f"every request goes to {colour} again"
    return (f"NOT every request goes to {colour}: {', '.join(failed)} could not be set back "
            "(the next bluegreen command on these hosts undoes the split)")


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


async def totals(meters: list[Meter]) -> dict[Colour, Sample]:
    """What every proxy saw, summed (the judge sees the fleet as one)."""
    out = {c: Sample() for c in Colour}
    for read in await asyncio.gather(*(m.read() for m in meters)):
        for colour, sample in read.items():
            out[colour].add(sample)
    return out


async def judge_window(meters: list[Meter], plan: Plan, old: Colour, new: Colour,
                       length: float, label: str, out: Reporter,
                       baseline: float | None = None, need_requests: bool = True
                       ) -> tuple[Verdict, dict[Colour, Sample]]:
    """Read the meters every POLL seconds for ``length`` seconds and judge: a bad verdict
    ends it at once; without ``min_requests`` by then, it waits up to MAX_WAIT times
    ``length`` (``need_requests``: then the verdict is None, not enough traffic to say)."""
    started = time.monotonic()
    said = started
    while True:
        await asyncio.sleep(POLL)
        seen = await totals(meters)
        verdict = plan.verdict(seen[old], seen[new], baseline)
        elapsed = time.monotonic() - started
        if verdict.good is False:
            return verdict, seen
        if elapsed >= length and verdict.good:
            return verdict, seen
        if elapsed >= length * MAX_WAIT or (elapsed >= length and not need_requests):
            if not need_requests:
                return Verdict(True, f"only {seen[new].requests} requests: {verdict.reason}"), seen
            return Verdict(None, too_little_traffic(seen, plan, old, new, elapsed)), seen
        if time.monotonic() - said >= max(5.0, length / 4):
            said = time.monotonic()
            out.step(None, f"{label}: {elapsed:.0f}/{length:g}s; {new} "
                     f"{seen[new].describe()}; {old} {seen[old].describe()}")


def too_little_traffic(seen: dict[Colour, Sample], plan: Plan, old: Colour, new: Colour,
                       elapsed: float) -> str:
    """Why a step could not be judged, said once."""
    got = seen[new].requests
    if not got and not seen[old].requests:
        return (f"no requests reached the proxy during the step ({elapsed:.0f}s), so there "
                f"was nothing to judge {new} on")
    return (f"only {got} of the {plan.min_requests} requests a verdict needs "
            f"(canary.min_requests) reached {new} in {elapsed:.0f}s ({old} got "
            f"{seen[old].requests})")


def _abort_advice(verdict: Verdict, new: Colour) -> str:
    """What to do next: inspect a bad release; send traffic (or judge after the switch)
    when there was too little to judge."""
    if verdict.good is None:
        return (f"{new} is left running: send traffic to the site while the canary runs, "
                "lower canary.min_requests, or switch now and judge after the switch "
                f"(`bluegreen promote {new} --watch 60s`)")
    return (f"{new} is left running for inspection (`bluegreen logs --color {new}`)")


async def run_steps(topo: Topology, targets: dict[str, Colour], plan: Plan, out: Reporter,
                    before: Hook | None) -> float | None:
    """The canary's steps before the full switch. Returns the old colour's last p99 (the
    watch's reference), or raises CanaryFailed (exit 5) with every request back on the
    old colour and the new slots left running."""
    proxies = topo.proxies
    new = next(iter(targets.values()))
    stable = new.other
    wanted, lives = await prove_ready(topo, targets, out)
    if all(wanted[p.name] is lives[p.name] for p in proxies):
        out.step(None, f"{new} is already live: no canary")
        return None
    if any(lives[p.name] is not stable for p in proxies):
        raise BlueGreenError(f"a canary towards {new} needs every proxy on {stable} first ("
                             + ", ".join(f"{p.name} is on {lives[p.name]}" for p in proxies)
                             + f"): `bluegreen promote {stable}`, then the canary")
    if any(p.node.dry for p in proxies):
        out.step(None, f"would run a {plan.describe()} from {stable} to {new}")
        return None
    if before is not None:
        await before()
    baseline: float | None = None
    count = len(plan.steps) + 1
    try:
        for index, percent in enumerate(plan.steps, start=1):
            traffic = Traffic(stable, percent, plan.sticky)
            label = f"canary step {index}/{count} ({percent}% to {new})"
            out.step(None, f"{label}: {traffic.text()}" + (", sticky" if plan.sticky else ""))
            if index > 1:  # (the first step's health was just proven)
                await _still_healthy(topo, new, stable, proxies, out, label)
            await set_everywhere(proxies, traffic, out)
            meters = await each(proxies, lambda p: p.meter(), out)
            verdict, seen = await judge_window(meters, plan, stable, new, plan.step, label,
                                               out)
            if not verdict.good:
                back = await back_to(proxies, stable, out)
                raise CanaryFailed(
                    f"canary aborted at {percent}% (step {index} of {count}): {verdict.reason}."
                    f" {_sentence(went_back(back, stable))}; {_abort_advice(verdict, new)}")
            out.step(None, f"{label}: good ({verdict.reason})")
            baseline = seen[stable].p99 or baseline
    except (asyncio.CancelledError, KeyboardInterrupt):
        out.warn(None, f"canary interrupted: every request goes back to {stable}")
        await asyncio.shield(back_to(proxies, stable, out))
        raise
    return baseline


async def _still_healthy(topo: Topology, new: Colour, stable: Colour, proxies: list[Proxy],
                         out: Reporter, label: str) -> None:
    """Before a step sends more requests to ``new``: it still answers its health check on
    every host (invariant 6), else every request goes back to ``stable`` (exit 5)."""
    answers = await each(topo.apps, lambda a: a.slots.health(new), out)
    sick = [a.name for a, r in zip(topo.apps, answers) if r is None or not r.ok]
    if sick:
        back = await back_to(proxies, stable, out)
        raise CanaryFailed(f"{label}: {new} no longer answers its health check on "
                           f"{', '.join(sick)}; {went_back(back, stable)}")


async def watch(topo: Topology, new: Colour, plan: Plan, out: Reporter,
                baseline: float | None, roll_back: Callable[[str], Awaitable[object]]) -> None:
    """After a full switch to ``new``: judge it for ``plan.watch`` seconds; on a bad
    verdict ``roll_back`` (a switch to the old colour, health-checked) and raise
    CanaryFailed (exit 5)."""
    assert plan.watch is not None
    proxies = topo.proxies
    if any(p.node.dry for p in proxies):
        out.step(None, f"would watch {new} for {plan.watch:g}s")
        return
    await each(proxies, lambda p: p.observe(new), out)
    meters = await each(proxies, lambda p: p.meter(), out)
    label = f"watching {new} ({plan.watch:g}s)"
    out.step(None, label)
    try:
        verdict, _ = await judge_window(meters, plan, new.other, new, plan.watch, label, out,
                                   baseline=baseline, need_requests=False)
    except (asyncio.CancelledError, KeyboardInterrupt):
        await asyncio.shield(_stop_observing(proxies, new, out))
        raise
    if verdict.good:
        await _stop_observing(proxies, new, out)
        out.step(None, f"{label}: good ({verdict.reason})")
        return
    out.warn(None, f"{label}: bad: {verdict.reason}; rolling back to {new.other}")
    await roll_back(verdict.reason)
    raise CanaryFailed(f"the watch found {new} bad: {verdict.reason}. Rolled back: every "
                       f"request goes to {new.other} again; {new} is left running for "
                       f"inspection (`bluegreen logs --color {new}`)")


async def _stop_observing(proxies: list[Proxy], new: Colour, out: Reporter) -> None:
    splits = await asyncio.gather(*(p.split() for p in proxies))
    await back_to([p for p, s in zip(proxies, splits) if s is not None], new, out)
