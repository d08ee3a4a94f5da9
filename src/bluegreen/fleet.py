"""A thin per-host context (``Node``: run, say, cfg, layout) and the one fleet opener every
command uses: one connection per host and per load balancer, opened in parallel."""

from __future__ import annotations

import asyncio
import shlex
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import AsyncIterator, Awaitable, Callable, Iterable, Sequence, TypeVar

from bluegreen.config import Config, HostConfig
from bluegreen.errors import BlueGreenError, ConnectError
from bluegreen.hosts import CountingHost, Host, Result, connect
from bluegreen.hosts.base import describe
from bluegreen.plan.files import Query
from bluegreen.output import Reporter
from bluegreen.plan.layout import Layout

T = TypeVar("T")
U = TypeVar("U")


class Node:
    """One connected host for the length of one command: what a proxy, a supervisor or a
    step needs of it, and nothing else."""

    def __init__(self, cfg: Config, hc: HostConfig, host: Host, out: Reporter) -> None:
        self.cfg = cfg
        self.hc = hc
        self.host = host
        self.out = out
        self.layout = Layout.of(cfg, hc)
        self.bind = cfg.bind_address(hc)  # the address its slots listen on
        self.facts: dict[str, bool] = {}  # what was learnt of the host, e.g. "systemd"

    @property
    def name(self) -> str:
        return self.hc.label

    def say(self, message: str) -> None:
        self.out.step(self.name, message)

    def warn(self, message: str) -> None:
        self.out.warn(self.name, message)

    @property
    def dry(self) -> bool:
        """`--dry-run`: only commands that read (`plan.files.Query`) run."""
        return self.out.dry_run

    async def run(self, argv: Sequence[str], *, input: str | None = None, timeout: float = 60,
                  check: bool = True) -> Result:
        """Run ``argv`` on the host (shown with -v). In a dry run, a command that changes
        the host is printed (in full, secrets masked; its stdin only counted) and taken as
        done."""
        if self.dry and not isinstance(argv, Query):
            stdin = f"  < {len(input.encode())} bytes on stdin" if input else ""
            self.out.step(self.name, "would run: " + self.out.mask(shlex.join(argv)) + stdin)
            return Result(tuple(argv), 0, "", "")
        self.out.debug(self.name, "$ " + describe(argv)[:300])
        return await self.host.run(argv, input=input, timeout=timeout, check=check)

    async def run_steps(self, steps: list[list[str]], *, input: str | None = None,
                        timeout: float = 60, check: bool = True) -> Result:
        """Run ``steps`` in order, ``input`` to the first; stop at the first that fails
        (its result, or CommandFailed with ``check``)."""
        result: Result | None = None
        for i, argv in enumerate(steps):
            result = await self.run(argv, input=input if i == 0 else None, timeout=timeout,
                                    check=check)
            if not result.ok:
                break
        assert result is not None, "no steps"
        return result


@dataclass
class Fleet:
    """The connected app hosts and load balancers, and those that could not be reached."""

    apps: list[Node]
    balancers: list[Node]
    unreachable: dict[str, ConnectError] = field(default_factory=dict)


@asynccontextmanager
async def open_fleet(cfg: Config, hosts: list[HostConfig], out: Reporter, *,
                     strict: bool = True) -> AsyncIterator[Fleet]:
    """Connect to ``hosts`` and every load balancer at once; close them all at the end.
    ``strict``: any host that cannot be reached is an error (every one is reported);
    otherwise it is listed in ``unreachable`` and the others are used."""
    entries = [*hosts, *cfg.load_balancers]
    if strict:
        out.expect_hosts([h.label for h in entries])
    opened = await asyncio.gather(*(connect(h) for h in entries), return_exceptions=True)
    nodes = {hc.label: Node(cfg, hc, h, out) for hc, h in zip(entries, opened)
             if not isinstance(h, BaseException)}
    failed = [(hc, e) for hc, e in zip(entries, opened) if isinstance(e, BaseException)]
    try:
        if failed and (strict or any(not isinstance(e, ConnectError) for _, e in failed)):
            for _, extra in failed[1:]:
                if isinstance(extra, ConnectError):
                    out.error(extra.message)
            raise failed[0][1]
        yield Fleet([nodes[h.label] for h in hosts if h.label in nodes],
                    [nodes[h.label] for h in cfg.load_balancers if h.label in nodes],
                    {hc.label: e for hc, e in failed if isinstance(e, ConnectError)})
    finally:
        for name, node in nodes.items():
            if isinstance(node.host, CountingHost):
                out.count_round_trips(name, node.host.round_trips())
        await asyncio.gather(*(n.host.close() for n in nodes.values()), return_exceptions=True)


async def gather_all(aws: list[Awaitable[T]], out: Reporter) -> list[T]:
    """Await all at once; if any failed, report every failure and raise the first."""
    results = await asyncio.gather(*aws, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        for extra in errors[1:]:
            if isinstance(extra, BlueGreenError):
                out.error(extra.message)
        for err in errors:
            if not isinstance(err, Exception):
                raise err
        raise errors[0]
    return [r for r in results if not isinstance(r, BaseException)]


async def each(items: Iterable[U], fn: Callable[[U], Awaitable[T]], out: Reporter) -> list[T]:
    """``fn`` on every item (host) at once, results in order; see ``gather_all``."""
    return await gather_all([fn(i) for i in items], out)
