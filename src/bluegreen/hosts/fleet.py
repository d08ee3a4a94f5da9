"""A thin per-host context (``Node``: run, say, cfg, layout) and the one fleet opener every
command uses: one connection per host and per load balancer, opened in parallel."""

from __future__ import annotations

import asyncio
import json
import shlex
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Sequence, TypeVar

from bluegreen.config import Config, HostConfig
from bluegreen.errors import BlueGreenError, CommandFailed, ConnectError
from bluegreen.hosts import CountingHost, Host, Result, connect
from bluegreen.hosts.relay import Relay
from bluegreen.hosts.base import (Endpoint, Exchanged, Op, Ranges, Watched, check_result,
                                  describe, exchange_op, exchanged, ran, run_op, watch_op,
                                  watched)
from bluegreen.plan.files import FileRead, Query
from bluegreen.output import Reporter
from bluegreen.plan.layout import Layout

T = TypeVar("T")
U = TypeVar("U")
# How long an answer read ahead stays good (it is used once, soon, or read again).
READ_AHEAD_FOR = 5.0


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
        # What ``later`` put off: each operation and what handles its answer.
        self._later: list[tuple[Op, Callable[[dict[str, Any]], None]]] = []
        self._if_done: list[tuple[Op, Callable[[Result], None]]] = []
        self._if_done_armed = False  # they go with the next round trip (``arm_if_done``)
        self._ahead: list[Op] = []
        self.released = False  # the lock was released already (`records.release_if_done`)
        self._known: dict[str, tuple[float, dict[str, Any]]] = {}
        # Files read during this command (``FileRead``), until something is written.
        self._files: dict[str, dict[str, Any]] = {}

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

    # ---- round trips: every operation goes in a batch, with what waits for the next one

    async def _batch(self, ops: list[Op], *, last: bool = False) -> list[dict[str, Any]]:
        """``ops`` in one round trip, after the writes put off with ``later``, followed by
        the steps ``if_done`` put off (run only when every one before succeeded: ``ops``
        then stop at a failure) and the reads announced with ``ahead`` (kept for ``run``);
        ``ops``' answers. ``last``: ``ops`` run even when a write put off fails (its error
        is raised after)."""
        later, self._later = self._later, []
        if_done: list[tuple[Op, Callable[[Result], None]]] = []
        if self._if_done_armed:
            if_done, self._if_done, self._if_done_armed = self._if_done, [], False
        ahead, self._ahead = self._ahead, []
        for op in ahead:  # answered anew, or not at all when the batch stops early
            self._known.pop(_key(op), None)
        sent = [Op(op.name, op.args, op.stop and not last) for op, _ in later]
        if if_done:
            ops = [Op(op.name, op.args, stop=True) for op in ops]
        answers = await self.host.batch([*sent, *ops, *[op for op, _ in if_done], *ahead])
        error: BaseException | None = None
        for (op, handle), answer in zip(later, answers):
            try:
                handle(answer)  # may raise: the step that was put off failed
            except BlueGreenError as exc:
                error = error or exc
        if error is None and len(answers) < len(later):
            error = CommandFailed("a step put off to the next round trip failed",
                                  host=self.name)
        if error is not None and not last:
            raise error
        mine = answers[len(later):len(later) + len(ops)]
        done = answers[len(later) + len(ops):len(later) + len(ops) + len(if_done)]
        for (op, then), answer in zip(if_done, done):
            then(ran(self.name, op.args["argv"], answer, op.wait))
        if len(done) == len(if_done):
            for op, answer in zip(ahead, answers[len(later) + len(ops) + len(if_done):]):
                self._known[_key(op)] = (time.monotonic(), answer)
        if error is not None:
            raise error
        return mine

    def if_done(self, argv: Sequence[str], *, input: str | None = None,
                then: Callable[[Result], None]) -> None:
        """Put ``argv`` off to the round trip after ``arm_if_done``, after its own steps, to
        run only if every one of them succeeds (a watch: is met), e.g. the history line and
        the lock's release after the verify that ends a command. ``then`` is called with
        its result, if it ran (it must not raise: the steps before it succeeded)."""
        assert not self.dry, "a dry run changes nothing"
        self.out.debug(self.name, "$ " + describe(argv)[:300] + "  (after the verify, if it "
                                  "passes)")
        self._if_done.append((run_op(argv, input, 60), then))

    def arm_if_done(self) -> None:
        """Send what ``if_done`` put off with the next round trip (the round trips made
        while they were put off, e.g. reads, went without them)."""
        self._if_done_armed = bool(self._if_done)

    async def lost(self) -> bool:
        """Whether the host stopped answering: round trips that ask nothing, 0.25 s apart
        (a host losing its power answers the command that failed, and then nothing)."""
        for _ in range(2):
            await asyncio.sleep(0.25)
            try:
                await asyncio.wait_for(self.host.batch([]), 10)
            except ConnectError:
                return True
            except (BlueGreenError, OSError, asyncio.TimeoutError):
                return False
        return False

    async def finish(self, argv: Sequence[str]) -> None:
        """Run ``argv`` (the lock's release) with what was put off, in one round trip,
        even when one of those fails: that failure is raised after."""
        if self.dry:
            await self.run(argv, check=False)
            return
        self.out.debug(self.name, "$ " + describe(argv)[:300])
        await self._batch([run_op(argv)], last=True)

    async def run(self, argv: Sequence[str], *, input: str | None = None, timeout: float = 60,
                  check: bool = True) -> Result:
        """Run ``argv`` on the host (shown with -v). In a dry run, a command that changes
        the host is printed (in full, secrets masked; its stdin only counted) and taken as
        done. A read announced with ``ahead`` is answered from what it read then, a file
        read (``FileRead``) from the last time it was read (nothing was written since)."""
        if self.dry and not isinstance(argv, Query):
            stdin = f"  < {len(input.encode())} bytes on stdin" if input else ""
            self.out.step(self.name, "would run: " + self.out.mask(shlex.join(argv)) + stdin)
            return Result(tuple(argv), 0, "", "")
        op = run_op(argv, input, timeout)
        key = _key(op)
        known = self._read_ahead(op) if isinstance(argv, Query) and input is None else None
        if isinstance(argv, FileRead) and key in self._files:
            self.out.debug(self.name, "$ " + describe(argv)[:300] + "  (read before)")
            answer = self._files[key]
        elif known is not None:
            self.out.debug(self.name, "$ " + describe(argv)[:300] + "  (read ahead)")
            answer = known
        else:
            if not isinstance(argv, Query):
                self._forget()
            self.out.debug(self.name, "$ " + describe(argv)[:300])
            answer = (await self._batch([op]))[0]
        if isinstance(argv, FileRead):
            self._files[key] = answer
        result = ran(self.name, argv, answer, timeout)
        return check_result(self.name, result) if check else result

    def changed(self) -> None:
        """Something was changed on the host other than by ``run`` (e.g. HAProxy's runtime
        API): answers read before may be out of date."""
        self._forget()

    def _forget(self) -> None:
        """Something is written: what was read may have changed."""
        self._known.clear()
        self._files.clear()

    async def run_steps(self, steps: list[list[str]], *, input: str | None = None,
                        timeout: float = 60, check: bool = True) -> Result:
        """Run ``steps`` in order, ``input`` to the first, in one round trip; stop at the
        first that fails (its result, or CommandFailed with ``check``)."""
        assert steps, "no steps"
        if self.dry and not all(isinstance(argv, Query) for argv in steps):
            for i, argv in enumerate(steps):
                await self.run(argv, input=input if i == 0 else None)
            return Result(tuple(steps[-1]), 0, "", "")
        self._forget()
        for argv in steps:
            self.out.debug(self.name, "$ " + describe(argv)[:300])
        answers = await self._batch([run_op(argv, input if i == 0 else None, timeout)
                                     for i, argv in enumerate(steps)])
        result = ran(self.name, steps[len(answers) - 1], answers[-1], timeout)
        return check_result(self.name, result) if check else result

    def later(self, argv: Sequence[str], *, input: str | None = None, timeout: float = 60,
              then: Callable[[Result], None] | None = None, keep_reads: bool = False) -> None:
        """Send ``argv`` with the next round trip (or at the end of the command), not in
        one of its own. ``then``: called with its result, and may raise (the batch stops
        when it failed: nothing after it runs); without it, a failure is a warning.
        ``keep_reads``: it changes nothing a read ahead looks at (a history line)."""
        if self.dry:
            stdin = f"  < {len(input.encode())} bytes on stdin" if input else ""
            self.out.step(self.name, "would run: " + self.out.mask(shlex.join(argv)) + stdin)
            return
        if not keep_reads:
            self._forget()
        self.out.debug(self.name, "$ " + describe(argv)[:300] + "  (with the next round trip)")

        def handle(answer: dict[str, Any]) -> None:
            result = ran(self.name, argv, answer, timeout)
            if then is not None:
                then(result)
            elif not result.ok:
                self.warn(f"{describe(result.argv)} failed (exit {result.exit_status}): "
                          f"{(result.stderr.strip() or result.stdout.strip())[-300:]}")

        self._later.append((run_op(argv, input, timeout, stop=then is not None), handle))

    def later_exchange(self, endpoint: Endpoint, data: bytes, *, timeout: float = 3,
                       then: Callable[[Callable[[], Exchanged]], None]) -> None:
        """``exchange`` with the next round trip, like ``later`` (a failure to connect
        stops that round trip there). ``then`` gets what returns the answer (or raises the
        OSError of the failed exchange) and may raise."""
        self._forget()
        self.out.debug(self.name, f"> {_first_line(data)} to {_where(endpoint)}  (with the "
                                  "next round trip)")
        op = exchange_op(endpoint, data, None, timeout)
        self._later.append((Op(op.name, op.args, stop=True),
                            lambda answer: then(lambda: exchanged(answer))))

    def _read_ahead(self, op: Op) -> dict[str, Any] | None:
        """The answer ``ahead`` got for ``op``, once, if nothing was written since and it
        is at most READ_AHEAD_FOR seconds old."""
        at, answer = self._known.pop(_key(op), (0.0, None))
        return answer if time.monotonic() - at <= READ_AHEAD_FOR else None

    @property
    def pending(self) -> bool:
        """Whether steps put off with ``later`` wait for the next round trip."""
        return bool(self._later)

    def check(self, result: Result) -> None:
        """CommandFailed when ``result`` failed (a ``then`` for ``later``)."""
        check_result(self.name, result)

    def ahead(self, *reads: Query | Op) -> None:
        """Send ``reads`` (commands that only read, exchanges) with the next round trip,
        after it (not when it failed); the next ``run`` or ``exchange`` of the same then
        answers from that, unless something was written in between."""
        self._ahead.extend(run_op(r, None, 60, stop=False) if isinstance(r, Query)
                           else Op(r.name, r.args, stop=False) for r in reads)

    async def flush(self) -> None:
        """Send what ``later`` put off, if anything: one round trip."""
        if self._later:
            await self._batch([])

    async def exchange(self, endpoint: Endpoint, data: bytes, *, tls_name: str | None = None,
                       timeout: float = 3) -> Exchanged:
        op = exchange_op(endpoint, data, tls_name, timeout)
        known = self._read_ahead(op)
        if known is not None:
            self.out.debug(self.name, f"> {_first_line(data)} to {_where(endpoint)}  (asked "
                                      "ahead)")
            return exchanged(known)
        self.out.debug(self.name, f"> {_first_line(data)} to {_where(endpoint)}")
        [answer] = await self._batch([op])
        return exchanged(answer)

    async def watch(self, endpoint: Endpoint, data: bytes, *, status: Ranges,
                    body: str | None = None, streak: int = 1, interval: float = 0.1,
                    timeout: float = 10, tls_name: str | None = None,
                    each: float = 3) -> Watched:
        self.out.debug(self.name, f"> {_first_line(data)} to {_where(endpoint)} until "
                                  f"{body or 'ok'} x{streak} (up to {timeout:g}s, on the host)")
        op = watch_op(endpoint, data, status=status, body=body, streak=streak,
                      interval=interval, timeout=timeout, tls_name=tls_name, each=each)
        # Not met is an answer, not a failure: what was read ahead still comes with it.
        [answer] = await self._batch([Op(op.name, op.args, stop=False)])
        return watched(answer)


def _key(op: Op) -> str:
    """What identifies a read's answer (``ahead``)."""
    return json.dumps([op.name, {k: v for k, v in op.args.items() if k != "timeout"}],
                      sort_keys=True)


def _first_line(data: bytes) -> str:
    return data.split(b"\r\n", 1)[0].split(b"\n", 1)[0].decode(errors="replace")[:80]


def _where(endpoint: Endpoint) -> str:
    return endpoint if isinstance(endpoint, str) else f"{endpoint[0]}:{endpoint[1]}"


@dataclass
class Fleet:
    """The connected app hosts and load balancers, and those that could not be reached."""

    apps: list[Node]
    balancers: list[Node]
    unreachable: dict[str, ConnectError] = field(default_factory=dict)


@asynccontextmanager
async def open_fleet(cfg: Config, hosts: list[HostConfig], out: Reporter, *,
                     strict: bool = True, via: Relay | None = None) -> AsyncIterator[Fleet]:
    """Connect to ``hosts`` and every load balancer at once; close them all at the end.
    ``strict``: any host that cannot be reached is an error (every one is reported);
    otherwise it is listed in ``unreachable`` and the others are used. ``via``: a relay
    that may lend kept SSH connections (none: a new login to each)."""
    entries = [*hosts, *cfg.load_balancers]
    if strict:
        out.expect_hosts([h.label for h in entries])
    opened = await asyncio.gather(*(connect(h, via=via) for h in entries),
                                  return_exceptions=True)
    nodes = {hc.label: Node(cfg, hc, h, out) for hc, h in zip(entries, opened)
             if not isinstance(h, BaseException)}
    failed = [(hc, e) for hc, e in zip(entries, opened) if isinstance(e, BaseException)]
    try:
        if failed and (strict or any(not isinstance(e, ConnectError) for _, e in failed)):
            for _, extra in failed[1:]:
                if isinstance(extra, ConnectError):
                    out.error(extra.message)
            raise failed[0][1]
        try:
            yield Fleet([nodes[h.label] for h in hosts if h.label in nodes],
                        [nodes[h.label] for h in cfg.load_balancers if h.label in nodes],
                        {hc.label: e for hc, e in failed if isinstance(e, ConnectError)})
        except CommandFailed as err:
            # A command that failed as its host went away (it lost its D-Bus, its file
            # system, as the power was cut): the host going away is what happened.
            failing = nodes.get(err.host or "")
            if failing and await failing.lost():
                raise ConnectError(f"lost the connection to {failing.hc.address} (the host "
                                   f"went away as this failed: {err.reason})",
                                   host=err.host) from None
            raise
    finally:
        flushed = await asyncio.gather(*(n.flush() for n in nodes.values()),
                                       return_exceptions=True)
        for name, problem in zip(nodes, flushed):
            if isinstance(problem, BaseException):
                out.error(f"[{name}] the last steps put off to the end failed: {problem}")
        await asyncio.gather(*(n.host.close() for n in nodes.values()), return_exceptions=True)
        for name, node in nodes.items():
            if isinstance(node.host, CountingHost):
                out.count_round_trips(name, node.host.round_trips())


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
