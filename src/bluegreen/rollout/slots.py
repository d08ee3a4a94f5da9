"""What an app host's slots hold and how busy they are: state files, probes, health,
logs, connections, and the drain before a stop. The lifecycle that changes them is in
``boot``."""

from __future__ import annotations

import asyncio
from pathlib import PurePosixPath
from datetime import datetime, timezone
from typing import Any

from bluegreen import supervisors

from bluegreen.hosts import health
from bluegreen.config import Colour, render
from bluegreen.config.models import status_ranges
from bluegreen.hosts.fleet import Node
from bluegreen.hosts.health import Response
from bluegreen.hosts.base import Op, exchange_op
from bluegreen.plan import files
from bluegreen.plan import slot as slotplan
from bluegreen.plan.slot import Probe, Slot, SlotState
from bluegreen.proxies import Proxy
from bluegreen.supervisors.base import probe, probe_query

LOG_TAIL = 20
# What the proxy adds to every request when it terminates TLS; health requests carry it
# too, so an app that redirects plain HTTP to https answers them 200.
FORWARDED_HTTPS = {"X-Forwarded-Proto": "https"}


def now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="milliseconds")


def moment(text: object) -> datetime | None:
    """A time ``now_iso`` wrote (a slot's start, a history event), comparable with any other
    whatever UTC offset each machine wrote it with; None when ``text`` is not one."""
    try:
        when = datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


class Slots:
    """The two slots of one app host; ``proxies`` are those that send it traffic."""

    def __init__(self, node: Node, proxies: list[Proxy]) -> None:
        self.node = node
        self.cfg = node.cfg
        self.layout = node.layout
        self.proxies = proxies
        # Each slot's state as read or written during this command (the lock keeps other
        # runs from writing it meanwhile): read once, not at every step that needs it.
        self._states: dict[Colour, SlotState | None] = {}
        # The probe of a slot `stop` found idle, for the `start` that follows.
        self.idle_probe: dict[Colour, Probe] = {}

    def slot(self, colour: Colour, release_id: str, version: str) -> Slot:
        return Slot(colour, self.cfg.slots.port(colour), self.layout, release_id, version,
                    self.node.bind)

    async def state(self, colour: Colour) -> SlotState | None:
        if colour not in self._states:
            result = await self.node.run(files.read_file(self.layout.state(colour)))
            self._states[colour] = (SlotState.from_json(result.stdout) if result.stdout.strip()
                                    else None)
        return self._states[colour]

    async def write_state(self, colour: Colour, state: SlotState) -> None:
        """Write the slot's state with the next round trip (in order with every other step
        on the host; a failed write raises there, and nothing after it runs)."""
        self.node.later(files.write_file(self.layout.state(colour)), input=state.to_json(),
                        then=self.node.check)
        self.remember(colour, state)

    def remember(self, colour: Colour, state: SlotState) -> None:
        """The state a command wrote another way (e.g. in the start's one script)."""
        self._states[colour] = state

    async def probe(self, colour: Colour, sid: int | PurePosixPath | None = None,
                    pids: list[int] | None = None) -> Probe:
        return await probe(self.node, colour, sid, pids)

    def probe_ahead(self, colour: Colour, sid: int | PurePosixPath | None = None) -> None:
        """Probe the slot with the next round trip (after it): ``probe`` then answers from
        that."""
        self.node.ahead(probe_query(self.node, colour, sid))

    def _health_request(self) -> dict[str, Any]:
        """Where and how a slot's health is asked: ``run.health_host`` as Host, and, with
        TLS on the proxy, ``X-Forwarded-Proto: https`` as the proxy sends; ``ok`` when
        the status is one of ``run.health_status``."""
        run = self.cfg.run
        host_header = run.health_host or render(self.cfg.proxy.server_name,
                                                app=self.cfg.app).split()[0]
        return {"host_header": host_header, "accept": status_ranges(run.health_status),
                "headers": FORWARDED_HTTPS if self.cfg.proxy.tls else None}

    def health_op(self, colour: Colour) -> Op:
        """``health(colour)`` as the operation it sends (to read it ahead)."""
        request = self._health_request()
        port = self.cfg.slots.port(colour)
        return exchange_op((self.node.bind, port), health.request(
            self.node.bind, port, self.cfg.run.health_path, request["host_header"],
            request["headers"]), timeout=3)

    async def health(self, colour: Colour) -> health.Response | None:
        """GET the slot's health path (see ``_health_request``); None when nothing
        answers."""
        try:
            return await health.get(self.node, self.node.bind, self.cfg.slots.port(colour),
                                    self.cfg.run.health_path, timeout=3,
                                    **self._health_request())
        except (OSError, asyncio.TimeoutError):
            return None

    async def watch_health(self, colour: Colour, timeout: float,
                           interval: float) -> tuple[bool, Response | None]:
        """The slot's health asked on the host every ``interval`` until ``ok`` or
        ``timeout`` passes (one round trip): whether it was, and the last answer."""
        try:
            met, last = await health.watch(
                self.node, self.node.bind, self.cfg.slots.port(colour),
                self.cfg.run.health_path, timeout=timeout, interval=interval,
                **self._health_request())
        except (OSError, asyncio.TimeoutError):
            return False, None
        return met, None if isinstance(last, OSError) else last

    def owns(self, colour: Colour, state: SlotState | None, probe: Probe) -> bool:
        """Whether every process listening on the slot's port is the slot's own: the pid or
        session on record, or a process bluegreen started for this slot (its environment
        names the colour and a release dir of this app), e.g. after a run that was killed
        before it could record the pid."""
        if not probe.listening:
            return False
        own_ids = {i for i in (state.pid, state.sid) if i is not None} if state else set()
        releases = str(self.layout.releases) + "/"
        return all(
            pid in own_ids or lst.sid in own_ids
            or (lst.colour == colour.value and (lst.release_dir or "").startswith(releases))
            for pid, lst in probe.listeners.items())

    def strangers(self, probe: Probe) -> str:
        """Who holds the slot's port, for messages: each pid, and for another bluegreen
        app's slot (its environment names a release dir) that app's ``deploy_to``."""
        words = []
        for pid, lst in probe.listeners.items():
            release = PurePosixPath(lst.release_dir) if lst.release_dir else None
            words.append(f"pid {pid}" if release is None or release.parent.name != "releases"
                         else f"pid {pid}, the {lst.colour} slot of the app deployed at "
                         f"{release.parent.parent}")
        return "; ".join(words)

    def logs_argv(self, colour: Colour, state: SlotState | None, lines: int,
                  follow: bool) -> list[str]:
        """Tail the slot's log, and the release's own (a daemon release writes its own)."""
        supervisor = supervisors.of_state(self.node, state)
        slot = self.slot(colour, state.release, state.version) if state else None
        return supervisor.logs(colour, slot, lines, follow)

    async def log_tail(self, colour: Colour, lines: int = LOG_TAIL,
                       state: SlotState | None = None) -> str:
        """The last lines of the slot's logs, secrets masked (also ones the slots were
        given before a rotation)."""
        state = state or await self.state(colour)
        await self.mask_given_secrets()
        result = await self.node.run(self.logs_argv(colour, state, lines, False), check=False)
        return self.node.out.mask(result.stdout.rstrip())

    async def mask_given_secrets(self) -> None:
        """Mask, in all output from now on, every secret the host's slots were given: a
        log holds what its app printed, also with secrets rotated since."""
        result = await self.node.run(slotplan.given_envs(self.layout), check=False)
        self.node.out.add_secrets(slotplan.given_secrets(self.cfg, result.stdout))

    async def connections(self, colour: Colour, sid: int | None = None,
                          probe: Probe | None = None) -> int:
        """Connections open to the slot: as HAProxy counts them (requests in flight and
        tunnels, not its idle pool), else the established TCP connections on the port."""
        counts = [await p.sessions(colour, self.node.name) for p in self.proxies]
        if all(c is not None for c in counts):
            return sum(c or 0 for c in counts)
        return (probe or await self.probe(colour, sid)).established

    async def drain(self, colour: Colour, sid: int | None, probe: Probe | None = None) -> int:
        """Wait up to drain_timeout until no proxy can still send the slot a request and
        no connection to it is open; returns how many were still open when the wait ended.

        nginx opens a fresh upstream connection per request, so a port with no connection
        is not enough: after a reload, old workers keep serving their clients' keep-alive
        connections (and websockets) with the previous config, i.e. towards this slot,
        until they exit. HAProxy keeps idle connections to servers for reuse, so there the
        count is its own: requests in flight and tunnels (websockets) on this slot."""
        open_now = 0
        old_workers = 0
        if self.node.dry:
            self.node.say(f"would wait up to drain_timeout={self.cfg.run.drain_timeout:g}s "
                          f"until no connection to {colour} is open")
            return 0

        first = probe  # the caller's, just made: the first look needs no new one

        async def idle() -> bool | None:
            nonlocal open_now, old_workers, first
            open_now = await self.connections(colour, sid, first)
            first = None
            old_workers = sum([await p.old_workers() for p in self.proxies])
            return True if open_now == 0 and old_workers == 0 else None

        if await health.poll(idle, timeout=self.cfg.run.drain_timeout, interval=0.2):
            return 0
        self.node.warn(f"{colour}: {open_now} connection(s) still open"
                       + (f", {old_workers} old proxy worker(s) still running" if old_workers
                          else "")
                       + f" after drain_timeout={self.cfg.run.drain_timeout:g}s; stopping anyway")
        return open_now
