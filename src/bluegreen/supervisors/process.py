"""``run.command``: a foreground process bluegreen detaches in a session of its own
(``setsid``), with a pid file; stopped by signalling the whole session."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Callable

from bluegreen.config import Colour
from bluegreen.hosts import Result
from bluegreen.plan import files, slot as slotplan
from bluegreen.plan.slot import Probe, Slot, SlotState
from bluegreen.supervisors.base import Supervisor


class ProcessSupervisor(Supervisor):
    mode = "command"
    title = "bluegreen's own detached process"

    async def launch(self, slot: Slot, state: SlotState) -> SlotState:
        result = await self.node.run(self._spawn(slot, state))
        if self.node.dry:  # nothing was started: no pid to read
            return state
        sid = slotplan.parse_pid(result.stdout)
        return state.replace(pid=sid, sid=sid)

    def launch_later(self, slot: Slot, state: SlotState
                     ) -> tuple[PurePosixPath, Callable[[], SlotState]]:
        launched: list[SlotState] = []

        def spawned(result: Result) -> None:
            self.node.check(result)
            sid = slotplan.parse_pid(result.stdout)
            launched.append(state.replace(pid=sid, sid=sid))

        self.node.later(self._spawn(slot, state), then=spawned)
        return self.node.layout.pid(slot.colour), lambda: launched[0]

    def _spawn(self, slot: Slot, state: SlotState) -> list[str]:
        assert self.cfg.run.command is not None
        layout = self.node.layout
        return slotplan.spawn(
            state.cwd, layout.slot_env(slot.colour), slot.render(self.cfg, self.cfg.run.command),
            layout.log(slot.colour), layout.pid(slot.colour))

    async def exited(self, colour: Colour, state: SlotState, probe: Probe) -> str | None:
        sid = self.session(state)
        if sid is None:
            return None
        if not probe.session_alive:
            return "the process exited"
        strangers = [pid for pid, lst in probe.listeners.items() if lst.sid != sid]
        if strangers:
            return (f"port {self.cfg.slots.port(colour)} is held by pid {strangers[0]}, which "
                    "is not the slot's own process")
        return None

    def session(self, state: SlotState | None) -> int | None:
        return state.pid if state else None

    async def recover(self, colour: Colour, state: SlotState) -> SlotState:
        if state.pid is not None:
            return state
        # A run killed between spawning and recording: the spawn wrote the pid file.
        text = (await self.node.run(files.read_file(self.node.layout.pid(colour)))).stdout.strip()
        return state.replace(pid=int(text), sid=int(text)) if text.isdigit() else state

    async def halt(self, colour: Colour, state: SlotState, probe: Probe) -> bool:
        sid = self.session(state)
        if sid is None:  # no pid on record, but its own listeners (by their environment)
            return await self.stop_listeners(colour, list(probe.listeners))
        timeout = self.cfg.run.stop_timeout
        pids = list(probe.listeners)
        if not await self.signal_and_wait(colour, slotplan.signal_session("TERM", sid), sid,
                                          pids, timeout):
            self.node.warn(f"{colour} did not exit {timeout:g}s after SIGTERM; sending SIGKILL")
            await self.node.run(slotplan.signal_session("KILL", sid))
            return False
        return True

    def halt_later(self, colour: Colour, state: SlotState, probe: Probe,
                   gone: Callable[[bool], None]) -> bool:
        sid = self.session(state)
        if sid is None:
            return False
        timeout = self.cfg.run.stop_timeout
        self.node.later(slotplan.signal_session("TERM", sid), then=self.node.check)
        self.node.later(slotplan.wait_gone(self.cfg.slots.port(colour), sid,
                                           list(probe.listeners), timeout),
                        timeout=timeout + 30, then=lambda result: gone(result.ok))
        return True

    async def clean_up(self, slot: Slot, state: SlotState, probe: Probe) -> None:
        if state.pid is not None:
            await self.node.run(slotplan.signal_session("KILL", state.pid))
