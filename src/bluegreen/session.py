"""One connected host for the length of one command: reads its state and runs the
plan's steps on it. Every wait here has a deadline."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from dotenv import dotenv_values

from bluegreen import health, proxies
from bluegreen.config import ENV_KEY_RE, Colour, Config, HostConfig, parse_listen
from bluegreen.errors import BlueGreenError, CommandFailed, ConfigError, LockHeld, ProxyError, Unhealthy
from bluegreen.hosts.base import Host, describe
from bluegreen.output import Reporter
from bluegreen.plan import files, history, lock, nginx, slot as slotplan
from bluegreen.plan.layout import Layout
from bluegreen.plan.slot import Probe, Slot

LOG_TAIL = 20
VERIFY_TIMEOUT = 10.0
VERIFY_STREAK = 3  # old nginx workers answer the previous colour for ~100 ms after a reload


def now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class SlotState:
    """What ``slots/<colour>/state.json`` records about the release a slot runs."""

    release: str
    version: str
    mode: str  # "command" (bluegreen's own detached process) or "start" (start/stop commands)
    pid: int | None  # command: the session id; start: the listener pid once healthy
    sid: int | None  # session id of the listener, to recognise the slot's own processes
    cwd: str
    status: str  # starting | running | failed | stopped
    started: str

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> SlotState | None:
        try:
            data = json.loads(text)
            return cls(**{k: data[k] for k in cls.__dataclass_fields__})
        except (ValueError, KeyError, TypeError):
            return None

    def replace(self, **changes: Any) -> SlotState:
        return SlotState(**{**self.__dict__, **changes})


def load_secrets(cfg: Config) -> dict[str, str]:
    """The env_file's variables (parsed locally, never by a shell)."""
    if not cfg.run.env_file:
        return {}
    path = cfg.local_path(cfg.run.env_file)
    if not path.is_file():
        raise ConfigError(f"run.env_file: {path} does not exist")
    values = dotenv_values(path, interpolate=False)
    bad = [k for k in values if not ENV_KEY_RE.match(k)]
    if bad:
        raise ConfigError(f"run.env_file: {bad[0]!r} is not a valid variable name")
    return {k: v or "" for k, v in values.items()}


class HostSession:
    def __init__(self, cfg: Config, hc: HostConfig, host: Host, reporter: Reporter,
                 *, balancer: bool = False) -> None:
        self.cfg = cfg
        self.hc = hc
        self.host = host
        self.layout = Layout.of(cfg, hc)
        self.out = reporter
        self.bind = cfg.bind_address(hc)
        # Who holds the proxy link for this host: itself, or the load balancers.
        self.proxies: list[HostSession] = [self]
        # What this host's proxy sends traffic to: its own slots, or (a load balancer)
        # every app host's.
        self.upstream_servers = ([(h.label, cfg.bind_address(h)) for h in cfg.hosts]
                                 if balancer else [(hc.label, self.bind)])
        self.upstreams = [address for _, address in self.upstream_servers]
        self.proxy = proxies.for_session(self)

    def slot(self, colour: Colour, release_id: str, version: str) -> Slot:
        return Slot(colour, self.cfg.slots.port(colour), self.layout, release_id, version,
                    self.bind)

    @property
    def name(self) -> str:
        return self.hc.label

    def say(self, message: str) -> None:
        self.out.step(self.name, message)

    async def run(self, argv: list[str], **kw: Any) -> Any:
        self.out.debug(self.name, "$ " + describe(argv)[:300])
        return await self.host.run(argv, **kw)

    # ---- reading state -------------------------------------------------------------

    async def live_colour(self) -> Colour | None:
        """The colour this host's traffic goes to: its proxy's link (its own, or the load
        balancers', which must agree). None before setup."""
        if self.proxies == [self]:
            return await self.link_colour()
        colours = [await p.link_colour() for p in self.proxies]
        if len(set(colours)) > 1:
            raise ProxyError("split brain: the load balancers disagree on the live colour ("
                             + ", ".join(f"{p.name} is on {c}" for p, c in
                                         zip(self.proxies, colours))
                             + "); put them on one colour with `bluegreen promote blue` "
                             "(or green)", host=self.name)
        return colours[0]

    async def link_colour(self) -> Colour | None:
        """The colour this host's own proxy is set to (its link or map file; None before
        setup)."""
        return await self.proxy.live_colour()

    async def require_live(self) -> Colour:
        live = await self.live_colour()
        if live is None:
            raise BlueGreenError(f"no live colour yet ({self.proxies[0].proxy.source} does not "
                                 "exist): run `bluegreen setup` first", host=self.name)
        return live

    async def state(self, colour: Colour) -> SlotState | None:
        result = await self.run(files.read_file(self.layout.state(colour)))
        return SlotState.from_json(result.stdout) if result.stdout.strip() else None

    async def write_state(self, colour: Colour, state: SlotState) -> None:
        await self.run(files.write_file(self.layout.state(colour)), input=state.to_json())

    async def probe(self, colour: Colour, sid: int | None = None,
                    pids: list[int] | None = None) -> Probe:
        result = await self.run(slotplan.probe(self.cfg.slots.port(colour), sid, pids))
        return slotplan.parse_probe(result.stdout)

    async def health(self, colour: Colour) -> health.Response | None:
        """GET the slot's health path; None when nothing answers."""
        port = self.cfg.slots.port(colour)
        try:
            return await health.get(self.host, self.bind, port, self.cfg.run.health_path,
                                    timeout=3)
        except (OSError, asyncio.TimeoutError):
            return None

    async def proxy_answer(self) -> str | None:
        """What this host's traffic gets on /deployment_id: from its own proxy, or from
        each load balancer (joined with '/' when they differ)."""
        if self.proxies == [self]:
            return await self.own_proxy_answer()
        answers = [await p.own_proxy_answer() for p in self.proxies]
        return answers[0] if len(set(answers)) == 1 else "/".join(str(a) for a in answers)

    async def own_proxy_answer(self) -> str | None:
        """What this host's proxy answers on /deployment_id, asked from the host itself."""
        address, port = parse_listen(self.cfg.proxy.listen)
        path, host_header = nginx.deployment_id_request(self.cfg)
        try:
            resp = await health.get(self.host, address, port, path, host_header=host_header,
                                    timeout=3)
        except (OSError, asyncio.TimeoutError):
            return None
        return resp.body.strip() if resp.ok else f"HTTP {resp.status}"

    def release_tmp(self, colour: Colour, state: SlotState | None) -> str | None:
        """Where a ``run.start`` (daemon) release writes its own logs: $RELEASE_TMP, by
        default <release_dir>/tmp, as Elixir releases do. None for ``run.command`` apps,
        whose output bluegreen itself writes to the slot log."""
        if state is None or state.mode != "start":
            return None
        slot = self.slot(colour, state.release, state.version)
        value = self.cfg.run.env.get("RELEASE_TMP")
        return slot.render(self.cfg, value) if value else str(slot.release_dir / "tmp")

    def logs_argv(self, colour: Colour, state: SlotState | None, lines: int,
                  follow: bool) -> list[str]:
        return slotplan.logs([self.layout.log(colour)], self.release_tmp(colour, state),
                             lines, follow)

    async def log_tail(self, colour: Colour, lines: int = LOG_TAIL,
                       state: SlotState | None = None) -> str:
        """The last lines of the slot's logs, secrets masked."""
        state = state or await self.state(colour)
        result = await self.run(self.logs_argv(colour, state, lines, False), check=False)
        return self.out.mask(result.stdout.rstrip())

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

    # ---- lock and history ----------------------------------------------------------

    async def acquire_lock(self, info: lock.LockInfo) -> None:
        result = await self.run(lock.acquire(self.layout), input=info.to_json(), check=False)
        if result.exit_status == lock.HELD:
            holder = await self.lock_holder()
            raise LockHeld(self.describe_holder(holder) + "; wait for it, or if it is gone, run "
                           "`bluegreen unlock`", host=self.name)
        if result.exit_status == lock.NOT_SET_UP:
            raise BlueGreenError(f"{self.layout.root} does not exist: run `bluegreen setup` first",
                                 host=self.name)
        if not result.ok:
            raise CommandFailed(f"cannot take the lock {self.layout.lock}: {result.stderr.strip()}",
                                host=self.name)

    async def lock_holder(self) -> lock.LockInfo | None | bool:
        """The holder's info; False when there is no lock; None when it is unreadable."""
        result = await self.run(lock.read(self.layout))
        if not result.stdout.startswith("held"):
            return False
        return lock.LockInfo.from_json(result.stdout.removeprefix("held"))

    def describe_holder(self, holder: lock.LockInfo | None | bool) -> str:
        if not isinstance(holder, lock.LockInfo):
            return f"{self.layout.lock} is held (no readable holder info)"
        text = f"locked by {holder.describe()}"
        if holder.host == socket.gethostname() and not _pid_alive(holder.pid):
            text += f" (pid {holder.pid} is gone: that run died)"
        else:
            age = lock.age_seconds(holder.started)
            if age is not None and age > lock.STALE_AFTER:
                # A run on another machine cannot be checked from here; a lock this old
                # is most likely left by one that died.
                text += f" ({age / 3600:.1f} h ago: probably a run that died)"
        return text

    async def release_lock(self) -> None:
        await self.run(lock.release(self.layout), check=False)

    async def record(self, event: str, colour: Colour | None, state: SlotState | None,
                     user: str, detail: str = "") -> None:
        entry = history.entry(
            time=now_iso(), event=event, host=self.name, color=colour.value if colour else None,
            release=state.release if state else None, version=state.version if state else None,
            user=user, detail=self.out.mask(detail)[:2000],
        )
        await self.run(history.append(self.layout), input=history.line(entry), check=False)

    # ---- slots ---------------------------------------------------------------------

    async def drain(self, colour: Colour, sid: int | None) -> int:
        """Wait up to drain_timeout until no proxy can still send the slot a request and
        no connection to it is open; returns how many were still open when the wait ended.

        nginx opens a fresh upstream connection per request, so a port with no connection
        is not enough: after a reload, old workers keep serving their clients' keep-alive
        connections (and websockets) with the previous config, i.e. towards this slot,
        until they exit. HAProxy keeps idle connections to servers for reuse, so there the
        count is its own: requests in flight and tunnels (websockets) on this slot."""
        open_now = 0
        old_workers = 0

        async def idle() -> bool | None:
            nonlocal open_now, old_workers
            open_now = await self.connections(colour, sid)
            old_workers = sum([await p.proxy.old_workers() for p in self.proxies])
            return True if open_now == 0 and old_workers == 0 else None

        if await health.poll(idle, timeout=self.cfg.run.drain_timeout, interval=0.2):
            return 0
        self.out.warn(self.name, f"{colour}: {open_now} connection(s) still open"
                      + (f", {old_workers} old proxy worker(s) still running" if old_workers
                         else "")
                      + f" after drain_timeout={self.cfg.run.drain_timeout:g}s; stopping anyway")
        return open_now

    async def connections(self, colour: Colour, sid: int | None = None,
                          probe: Probe | None = None) -> int:
        """Connections open to the slot: as HAProxy counts them (requests in flight and
        tunnels, not its idle pool), else the established TCP connections on the port."""
        counts = [await p.proxy.sessions(colour, self.name) for p in self.proxies]
        if all(c is not None for c in counts):
            return sum(c or 0 for c in counts)
        return (probe or await self.probe(colour, sid)).established

    async def stop_slot(self, colour: Colour) -> SlotState | None:
        """Drain the slot, stop its process and wait until it has exited and the port is free.
        A listener that is not the slot's own is left alone and reported (exit 5)."""
        state = await self.state(colour)
        if state and state.mode == "command" and state.pid is None:
            # A run killed between spawning and recording: the spawn wrote the pid file.
            text = (await self.run(files.read_file(self.layout.pid(colour)))).stdout.strip()
            if text.isdigit():
                state = state.replace(pid=int(text), sid=int(text))
        sid = state.pid if state and state.mode == "command" else None
        probe = await self.probe(colour, sid)
        running = probe.session_alive or self.owns(colour, state, probe)
        if probe.listening and not self.owns(colour, state, probe):
            self._foreign(colour, probe)
        if state is None or not running:
            if state is not None and state.status != "stopped":
                await self.write_state(colour, state.replace(status="stopped"))
            return state
        self.say(f"draining {colour} ({state.release})")
        await self.drain(colour, sid)
        self.say(f"stopping {colour} ({state.release})")
        timeout = self.cfg.run.stop_timeout
        if state.mode == "command" and sid is not None:
            await self.run(slotplan.signal_session("TERM", sid))
            if not await self._wait_stopped(colour, sid, [], timeout):
                self.out.warn(self.name, f"{colour} did not exit {timeout:g}s after SIGTERM; "
                              "sending SIGKILL")
                await self.run(slotplan.signal_session("KILL", sid))
        else:
            pids = list(probe.listeners)
            if self.cfg.run.stop:
                stop = self.slot(colour, state.release, state.version)
                cmd = stop.render(self.cfg, self.cfg.run.stop)
                result = await self.run(
                    slotplan.run_in_slot(state.cwd, self.layout.slot_env(colour), cmd,
                                         self.layout.log(colour)),
                    timeout=timeout, check=False)
                if not result.ok:
                    self.out.warn(self.name, f"stop command exited {result.exit_status}; "
                                  "signalling the slot's processes")
                    await self.run(slotplan.signal_pids("TERM", pids))
            else:
                await self.run(slotplan.signal_pids("TERM", pids))
            if not await self._wait_stopped(colour, None, pids, timeout):
                self.out.warn(self.name, f"{colour} still running {timeout:g}s after stop; "
                              "sending SIGKILL")
                await self.run(slotplan.signal_pids("KILL", pids))
        if not await self._wait_stopped(colour, sid, list(probe.listeners), 10):
            raise CommandFailed(f"{colour} slot's processes did not exit even after SIGKILL",
                                host=self.name)
        stopped = state.replace(status="stopped")
        await self.write_state(colour, stopped)
        self.say(f"{colour} stopped; port {self.cfg.slots.port(colour)} is free")
        return stopped

    async def _wait_stopped(self, colour: Colour, sid: int | None, pids: list[int],
                            timeout: float) -> bool:
        async def gone() -> bool | None:
            p = await self.probe(colour, sid, pids)
            return True if not (p.session_alive or p.alive_pids or p.listening) else None

        return bool(await health.poll(gone, timeout=timeout, interval=0.1))

    def _foreign(self, colour: Colour, probe: Probe) -> None:
        pids = ", ".join(str(p) for p in probe.listeners)
        raise Unhealthy(
            f"port {self.cfg.slots.port(colour)} of the {colour} slot is held by a process that "
            f"is not the slot's own (pid {pids}); stop it or change slots.{colour}",
            host=self.name,
        )

    async def start_slot(self, slot: Slot, secrets: dict[str, str]) -> SlotState:
        """Start ``slot``'s release on its port and wait until the new process answers
        its health path with 2xx. On failure the new process is stopped (exit 5)."""
        colour = slot.colour
        probe = await self.probe(colour)
        if probe.listening:
            self._foreign(colour, probe)
        env_text = slotplan.env_script(slotplan.slot_env(self.cfg, slot, secrets))
        await self.run(files.make_dirs([slot.dir, slot.dir / "tmp"]))
        await self.run(files.write_file(self.layout.slot_env(colour), "0600"), input=env_text)
        mode = "command" if self.cfg.run.command else "start"
        state = SlotState(release=slot.release_id, version=slot.version, mode=mode, pid=None,
                          sid=None, cwd=slot.cwd(self.cfg), status="starting", started=now_iso())
        await self.write_state(colour, state)
        await self.run(["sh", "-c", 'echo "--- bluegreen: starting $1 ($2) ---" >> "$3"', "sh",
                        slot.release_id, now_iso(), str(self.layout.log(colour))])
        self.say(f"starting {slot.release_id} on {colour} (port {slot.port})")
        started = time.monotonic()
        sid: int | None = None
        if self.cfg.run.command:
            result = await self.run(slotplan.spawn(
                state.cwd, self.layout.slot_env(colour), slot.render(self.cfg, self.cfg.run.command),
                self.layout.log(colour), self.layout.pid(colour)))
            sid = slotplan.parse_pid(result.stdout)
            state = state.replace(pid=sid, sid=sid)
            await self.write_state(colour, state)
        else:
            assert self.cfg.run.start is not None
            result = await self.run(
                slotplan.run_in_slot(state.cwd, self.layout.slot_env(colour),
                                     slot.render(self.cfg, self.cfg.run.start),
                                     self.layout.log(colour)),
                timeout=self.cfg.run.health_timeout, check=False)
            if not result.ok:
                await self._fail_start(slot, state, f"start command exited {result.exit_status}")
        listener = await self._wait_healthy(slot, state, sid)
        state = state.replace(pid=sid or listener[0], sid=sid or listener[1], status="running")
        await self.write_state(colour, state)
        self.say(f"{colour} is healthy ({time.monotonic() - started:.2f}s after start)")
        return state

    async def _wait_healthy(self, slot: Slot, state: SlotState,
                            sid: int | None) -> tuple[int, int | None]:
        """Poll the health path until it answers 2xx from the new process: every answer is
        confirmed by a probe that the port's listener is the slot's own. Between answers,
        a probe every ~0.5 s notices a process that exited (probes fork several tools, so
        not at every poll: with many hosts on one machine that adds up)."""
        colour = slot.colour
        deadline = time.monotonic() + self.cfg.run.health_timeout
        last = "it never answered"
        for attempt in itertools.count():
            resp = await self.health(colour)
            answered = resp is not None and resp.ok
            if answered or attempt % 5 == 0:
                probe = await self.probe(colour, sid)
                if sid is not None and not probe.session_alive:
                    await self._fail_start(slot, state, "the process exited")
                if probe.listening:
                    pid, listener = next(iter(probe.listeners.items()))
                    if sid is not None and any(lst.sid != sid
                                               for lst in probe.listeners.values()):
                        await self._fail_start(slot, state, f"port {slot.port} is held by pid "
                                               f"{pid}, which is not the slot's own process")
                    if answered:
                        return pid, listener.sid
            if resp is not None and not resp.ok:
                last = f"{self.cfg.run.health_path} answered HTTP {resp.status}"
            if time.monotonic() >= deadline:
                await self._fail_start(slot, state, f"not healthy within health_timeout="
                                       f"{self.cfg.run.health_timeout:g}s ({last})")
            await asyncio.sleep(0.1)
        raise AssertionError("unreachable")

    async def _fail_start(self, slot: Slot, state: SlotState, why: str) -> None:
        colour = slot.colour
        tail = await self.log_tail(colour, state=state)
        # Stop whatever the failed start left behind, so the idle port is free again.
        probe = await self.probe(colour, state.pid)
        if state.pid is not None:
            await self.run(slotplan.signal_session("KILL", state.pid))
        elif probe.listening and self.cfg.run.stop:
            await self.run(slotplan.run_in_slot(state.cwd, self.layout.slot_env(colour),
                                                slot.render(self.cfg, self.cfg.run.stop),
                                                self.layout.log(colour)),
                           timeout=self.cfg.run.stop_timeout, check=False)
        if probe.listening:
            await self.run(slotplan.signal_pids("KILL", list(probe.listeners)))
        await self.write_state(colour, state.replace(status="failed"))
        hint = ""
        if "seems to be in use by another Erlang node" in tail:
            hint = ("\nhint: both colours use the same Erlang node name. Set in bluegreen.toml:\n"
                    '  [run.env]\n  RELEASE_NODE = "{app}_{color}"\n'
                    '  RELEASE_TMP = "{slot_dir}/tmp"')
        raise Unhealthy(
            f"{slot.release_id} on {colour} did not become healthy: {why}; it was not promoted "
            f"and live traffic was not touched.\n--- last lines of the {colour} slot's logs ---\n"
            f"{tail or '(empty)'}{hint}",
            host=self.name, detail=tail,
        )

    # ---- proxy -------------------------------------------------------------------

    async def verify(self, target: Colour, timeout: float = VERIFY_TIMEOUT) -> None:
        """Poll /deployment_id until it answers ``target`` VERIFY_STREAK times in a row."""
        streak = 0
        last: str | None = None

        async def answered() -> bool | None:
            nonlocal streak, last
            last = await self.own_proxy_answer()
            streak = streak + 1 if last == target.value else 0
            return True if streak >= VERIFY_STREAK else None

        if not await health.poll(answered, timeout=timeout, interval=0.05):
            raise ProxyError(f"the proxy did not answer {target} within {timeout:g}s "
                             f"(last answer: {last!r})", host=self.name)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

