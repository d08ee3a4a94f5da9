"""The kind-free slot lifecycle on one app host, as one step object: refuse a foreign
listener, drain, stop, start, wait until healthy; on failure stop what was started,
show the log tail, and raise Unhealthy (exit 5). How the process is run is the
supervisor's business."""

from __future__ import annotations

import asyncio
import time
from pathlib import PurePosixPath
from typing import Callable, NoReturn

from bluegreen import supervisors
from bluegreen.config import Colour
from bluegreen.errors import BlueGreenError, CommandFailed, Unhealthy
from bluegreen.plan import slot as slotplan
from bluegreen.plan.slot import Probe, Slot, SlotState
from bluegreen.rollout.slots import Slots, now_iso
from bluegreen.supervisors import StartFailed, Supervisor

# How long one health watch on the host lasts before a probe looks at the process.
WATCH_SPAN = 0.5
ERLANG_NODE_HINT = ("\nhint: both colours use the same Erlang node name. Set in bluegreen.toml:\n"
                    '  [run.env]\n  RELEASE_NODE = "{app}_{color}"\n'
                    '  RELEASE_TMP = "{slot_dir}/tmp"')


class StopTimedOut(BlueGreenError):
    """A stop sent with the start that follows it (`Boot.stop` ``then_start``) saw the
    slot's processes still there after ``run.stop_timeout``: nothing was started."""

    def __init__(self, colour: Colour, state: SlotState, probe: Probe,
                 supervisor: Supervisor, host: str) -> None:
        super().__init__(f"{colour} did not exit after SIGTERM", host=host)
        self.colour, self.state, self.probe, self.supervisor = colour, state, probe, supervisor


class Boot:
    """Stops and starts the slots of one app host."""

    def __init__(self, slots: Slots) -> None:
        self.slots = slots
        self.node = slots.node
        self.cfg = slots.cfg
        self._stopping: dict[Colour, str] = {}  # colour: the release a stop put off stops
        self.left: str | None = None  # what an interrupted start left (`_stop_interrupted`)

    async def stop(self, colour: Colour, *, then_start: bool = False) -> SlotState | None:
        """Drain the slot, stop its process and wait until it has exited and the port is
        free. A listener that is not the slot's own is left alone and reported (exit 5).
        ``then_start``: `start` follows at once; where the supervisor can, the stop goes
        with its round trip (SIGTERM, the wait, then the launch: nothing is launched
        unless the old process is gone)."""
        state = await self.slots.state(colour)
        supervisor = supervisors.of_state(self.node, state)
        if state is not None:
            state = await supervisor.recover(colour, state)
        sid = supervisor.session(state)
        probe = await self.slots.probe(colour, sid)
        owned = self.slots.owns(colour, state, probe)
        if probe.listening and not owned:
            self._foreign(colour, probe)
        if state is None or not (probe.session_alive or owned):
            if state is not None and state.status != "stopped":
                await self.slots.write_state(colour, state.replace(status="stopped"))
            self.slots.idle_probe[colour] = probe  # what `start` looks at next
            return state
        self.node.say(f"draining {colour} ({state.release})")
        await self.slots.drain(colour, sid, probe)
        self.node.say(f"stopping {colour} ({state.release})")
        stopped = state.replace(status="stopped")
        if then_start and not self.node.dry:
            old = state

            def gone(ok: bool) -> None:
                if not ok:
                    raise StopTimedOut(colour, old, probe, supervisor, self.node.name)
                self._say_stopped(colour)

            if supervisor.halt_later(colour, state, probe, gone):
                self.slots.idle_probe[colour] = Probe()  # once gone, nothing listens
                self._stopping[colour] = state.release
                await self.slots.write_state(colour, stopped)
                return stopped
        if await supervisor.halt(colour, state, probe) and not self.node.dry:
            self.slots.idle_probe[colour] = Probe()  # it saw the port free, all gone
        elif not await supervisor.wait_stopped(colour, sid, list(probe.listeners), 10):
            raise CommandFailed(f"{colour} slot's processes did not exit even after SIGKILL",
                                host=self.node.name)
        await self.slots.write_state(colour, stopped)
        if self.node.dry:
            self.node.say(f"{colour} would be stopped")
        else:
            self._say_stopped(colour)
        return stopped

    def _say_stopped(self, colour: Colour) -> None:
        self.node.say(f"{colour} stopped; port {self.cfg.slots.port(colour)} is free")

    async def start(self, slot: Slot, secrets: dict[str, str]) -> SlotState:
        """Start ``slot``'s release on its port and wait until the new process answers
        its health path with 2xx. On failure the new process is stopped (exit 5). A stop
        sent with it that timed out: SIGKILL, wait, and start then."""
        try:
            try:
                return await self._start(slot, secrets)
            except StopTimedOut as exc:
                timeout = self.cfg.run.stop_timeout
                self.node.warn(f"{exc.colour} did not exit {timeout:g}s after SIGTERM; "
                               "sending SIGKILL")
                sid = exc.supervisor.session(exc.state)
                assert sid is not None, "only a known session is stopped with the start"
                await self.node.run(slotplan.signal_session("KILL", sid))
                if not await exc.supervisor.wait_stopped(exc.colour, sid,
                                                         list(exc.probe.listeners), 10):
                    raise CommandFailed(f"{exc.colour} slot's processes did not exit even "
                                        "after SIGKILL", host=self.node.name) from None
                await self.slots.write_state(exc.colour, exc.state.replace(status="stopped"))
                self._say_stopped(exc.colour)
                return await self._start(slot, secrets)
        except asyncio.CancelledError:  # Ctrl-C (asyncio.run cancels the command's task)
            await self._stop_interrupted(slot)
            raise

    async def _stop_interrupted(self, slot: Slot) -> None:
        """Stop what an interrupted start launched, as after a failed health check: the
        release that was idle there is stopped already, so nothing else would; ``left``
        says what is left."""
        colour = slot.colour
        self.node.warn(f"interrupted: stopping {slot.release_id} on {colour}")
        try:
            await self.stop(colour)
        except BlueGreenError as exc:
            self.left = (f"{colour} may still run {slot.release_id} ({exc.reason}): "
                         f"`bluegreen stop {colour}` stops it")
            return
        self.left = f"{slot.release_id} was stopped again on {colour}, which now runs nothing"

    async def _start(self, slot: Slot, secrets: dict[str, str]) -> SlotState:
        colour, layout = slot.colour, self.node.layout
        # The probe `stop` just made when it found the slot idle (nothing of this command
        # ran there since), else a new one.
        probe = self.slots.idle_probe.pop(colour, None) or await self.slots.probe(colour)
        if probe.listening and not self.node.dry:  # a dry run stopped nothing
            if not self.slots.owns(colour, await self.slots.state(colour), probe):
                self._foreign(colour, probe)
            # A start interrupted earlier (e.g. a lost connection) came up after `stop`
            # looked at the port: it is this slot's own, so it is stopped, not reported.
            self.node.say(f"{colour}: a process of an interrupted start is listening now; "
                          "stopping it")
            await self.stop(colour)
            probe = await self.slots.probe(colour)
            if probe.listening:  # no state on record (the start died before writing it)
                await supervisors.of_state(self.node, None).stop_listeners(
                    colour, list(probe.listeners))
        env_text = slotplan.env_script(slotplan.slot_env(self.cfg, slot, secrets))
        supervisor, _ = await supervisors.choose(self.node)
        state = SlotState(release=slot.release_id, version=slot.version, mode=supervisor.mode,
                          pid=None, sid=None, cwd=slot.cwd(self.cfg), status="starting",
                          started=now_iso())
        # With the launch, in one round trip (a failure raises there; nothing is launched).
        self.node.later(slotplan.ready_slot(
            [slot.dir, slot.dir / "tmp"], layout.slot_env(colour), layout.state(colour),
            state.to_json(), layout.log(colour), slot.release_id, state.started),
            input=env_text, then=self.node.check)
        self.slots.remember(colour, state)
        going = self._stopping.pop(colour, None)  # a stop sent with this start
        self.node.say(f"starting {slot.release_id} on {colour} (port {slot.port})"
                      + (f" as soon as {going} is gone" if going else ""))
        started = time.monotonic()
        # Launched with the first health watch where the kind can (one round trip).
        deferred = None if self.node.dry else supervisor.launch_later(slot, state)
        try:
            if deferred is None:
                state = await supervisor.launch(slot, state)
                if state.pid is not None:
                    await self.slots.write_state(colour, state)
            if self.node.dry:
                self.node.say(f"would wait up to health_timeout="
                              f"{self.cfg.run.health_timeout:g}s for {colour} to answer "
                              f"{self.cfg.run.health_path}")
                return state.replace(status="running")
            state, pid, sid = await self._wait_healthy(slot, state, supervisor, deferred)
        except StartFailed as exc:
            if deferred is not None:  # the launch's answer came before any StartFailed
                state = deferred[1]()
            await self._fail(slot, state, supervisor, str(exc))
        state = state.replace(pid=state.pid or pid, sid=state.sid or sid, status="running")
        await self.slots.write_state(colour, state)
        self.node.say(f"{colour} is healthy ({time.monotonic() - started:.2f}s after "
                      + ("the old copy's stop and the start were sent)" if going else "start)"))
        return state

    async def _wait_healthy(self, slot: Slot, state: SlotState, supervisor: Supervisor,
                            deferred: tuple[PurePosixPath, Callable[[], SlotState]] | None
                            ) -> tuple[SlotState, int, int | None]:
        """Poll the health path until it answers 2xx from the new process: every answer is
        confirmed by a probe that the port's listener is the slot's own. The polls run on
        the host, a round trip per ~0.5 s at most (WATCH_SPAN), and a probe after each
        notices a process that exited (probes fork several tools, so not at every poll:
        with many hosts on one machine that adds up). ``deferred``: the launch goes with
        the first round trip (`Supervisor.launch_later`); its probe reads the session from
        the file the launch writes. Returns the state with the launch's answer."""
        colour = slot.colour
        sid: int | PurePosixPath | None = (deferred[0] if deferred is not None
                                           else supervisor.session(state))
        run = self.cfg.run
        deadline = time.monotonic() + run.health_timeout
        last = "it never answered"
        while True:
            span = max(0.0, min(WATCH_SPAN, deadline - time.monotonic()))
            self.slots.probe_ahead(colour, sid)  # in the same round trip, once it answers
            answered, resp = await self.slots.watch_health(colour, span, run.health_interval)
            probe = await self.slots.probe(colour, sid)
            if deferred is not None:  # launched with that round trip: its pid is known
                state = deferred[1]()
                await self.slots.write_state(colour, state)
                sid, deferred = supervisor.session(state), None
            why = await supervisor.exited(colour, state, probe)
            if why:
                raise StartFailed(why)
            if probe.listening and answered:
                pid, listener = next(iter(probe.listeners.items()))
                return state, pid, listener.sid
            if resp is not None and not resp.ok:
                last = (f"{run.health_path} answered HTTP {resp.status}, not one of "
                        f"health_status={run.health_status}")
            if time.monotonic() >= deadline:
                raise StartFailed(f"not healthy within health_timeout="
                                  f"{run.health_timeout:g}s ({last})")
            if answered:  # an answer, but from a process that is not listening any more
                await asyncio.sleep(run.health_interval)
        raise AssertionError("unreachable")

    async def _fail(self, slot: Slot, state: SlotState, supervisor: Supervisor,
                    why: str) -> NoReturn:
        colour = slot.colour
        tail = await self.slots.log_tail(colour, state=state)
        # Stop whatever the failed start left behind, so the idle port is free again.
        probe = await self.slots.probe(colour, state.pid)
        await supervisor.clean_up(slot, state, probe)
        if probe.listening:
            await self.node.run(slotplan.signal_pids("KILL", list(probe.listeners)))
        await self.slots.write_state(colour, state.replace(status="failed"))
        hint = ERLANG_NODE_HINT if "seems to be in use by another Erlang node" in tail else ""
        raise Unhealthy(
            f"{slot.release_id} on {colour} did not become healthy: {why}; it was not promoted "
            f"and live traffic was not touched.\n--- last lines of the {colour} slot's logs ---\n"
            f"{tail or '(empty)'}{hint}",
            host=self.node.name, detail=tail,
        )

    def _foreign(self, colour: Colour, probe: Probe) -> NoReturn:
        pids = ", ".join(str(p) for p in probe.listeners)
        raise Unhealthy(
            f"port {self.cfg.slots.port(colour)} of the {colour} slot is held by a process that "
            f"is not the slot's own (pid {pids}); stop it or change slots.{colour}",
            host=self.node.name,
        )
