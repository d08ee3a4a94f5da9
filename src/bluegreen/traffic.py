"""What a proxy does with requests during a canary (``Traffic``), what it saw of them
(``Sample``), and the verdict on the new colour (``judge``). Plain values: the proxies
make a ``Traffic`` effective and count ``Sample``s, ``canary`` runs the steps."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bluegreen.values import Colour

# Response times closer than this are not judged: on a fast app, 1 ms against 3 ms is
# a ratio of 3 that no user notices.
LATENCY_FLOOR = 0.010


@dataclass(frozen=True)
class Traffic:
    """``percent`` of requests to the new colour (``stable.other``), the rest to
    ``stable``. ``sticky``: a client keeps the colour it was given (a cookie)."""

    stable: Colour
    percent: int
    sticky: bool = True

    @property
    def new(self) -> Colour:
        return self.stable.other

    @property
    def shares(self) -> dict[str, int]:
        """``{"blue": 90, "green": 10}``, blue first (what `status --json` shows)."""
        split = {self.stable.value: 100 - self.percent, self.new.value: self.percent}
        return {c.value: split[c.value] for c in Colour}

    def text(self) -> str:
        """What the proxy answers on /deployment_id during the canary (nginx)."""
        return " ".join(f"{name}={share}" for name, share in self.shares.items())

    @classmethod
    def parse(cls, text: str, stable: Colour, sticky: bool = True) -> Traffic | None:
        """The inverse of ``text`` (None when it is not one)."""
        try:
            shares = dict(part.split("=", 1) for part in text.split())
            percent = int(shares[stable.other.value])
        except (KeyError, ValueError):
            return None
        return cls(stable, percent, sticky) if 0 <= percent <= 100 else None


def whole(colour: Colour) -> dict[str, int]:
    """The split when every request goes to ``colour``."""
    return {c.value: 100 if c is colour else 0 for c in Colour}


@dataclass
class Sample:
    """What a proxy saw of one colour's requests over a window: how many, how many failed
    (5xx, or no connection to the slot), and their response times (seconds; HAProxy gives
    an average per server, kept as one value per server)."""

    requests: int = 0
    errors: int = 0
    times: list[float] = field(default_factory=list)

    def add(self, other: Sample) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.times.extend(other.times)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def p99(self) -> float | None:
        """The 99th percentile of ``times`` (nearest rank), None without any."""
        if not self.times:
            return None
        ordered = sorted(self.times)
        return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]

    def describe(self) -> str:
        latency = f", p99 {self.p99 * 1000:.0f} ms" if self.p99 is not None else ""
        return (f"{self.errors}/{self.requests} failed ({self.error_rate:.1%}){latency}")


@dataclass(frozen=True)
class Verdict:
    """``good`` True or False; None: not enough requests yet to say."""

    good: bool | None
    reason: str


def judge(old: Sample, new: Sample, *, max_error_rate: float, max_latency_ratio: float,
          min_requests: int, baseline_p99: float | None = None) -> Verdict:
    """New colour against old over the same window. Bad as soon as the new colour has
    served ``min_requests`` and its error rate is more than ``max_error_rate`` above the
    old colour's, or its p99 more than ``max_latency_ratio`` times the old colour's
    (``baseline_p99`` when the old colour served nothing in the window, e.g. after a full
    switch). A failure count that no later request can bring under the limit is bad even
    before ``min_requests``: it already is more than the step allows."""
    said = f"new {new.describe()}; old {old.describe()}"
    allowed = old.error_rate + max_error_rate
    if new.requests >= min_requests and new.requests and new.error_rate > allowed:
        return Verdict(False, f"error rate {new.error_rate:.1%} is more than {allowed:.1%} "
                       f"(old {old.error_rate:.1%} + max_error_rate {max_error_rate:.1%}): "
                       f"{said}")
    if min_requests and new.errors > allowed * max(min_requests, new.requests) + 0.5:
        return Verdict(False, f"{new.errors} failed requests already, more than "
                       f"{allowed:.1%} of the {max(min_requests, new.requests)} a verdict "
                       f"needs: {said}")
    if new.requests < min_requests:
        return Verdict(None, f"{new.requests} of the {min_requests} requests a verdict needs: "
                       f"{said}")
    reference = old.p99 if old.p99 is not None else baseline_p99
    if new.p99 is not None and reference is not None:
        limit = max_latency_ratio * max(reference, LATENCY_FLOOR)
        if new.p99 > limit:
            return Verdict(False, f"p99 {new.p99 * 1000:.0f} ms is more than "
                           f"{max_latency_ratio:g} x the old colour's {reference * 1000:.0f} "
                           f"ms: {said}")
    return Verdict(True, said)
