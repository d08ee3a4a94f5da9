"""``run.start``/``run.stop``: the app daemonises itself (e.g. an Elixir release's
``bin/app daemon``); stopped by ``run.stop``, else by signalling the port's listeners."""

from __future__ import annotations

from bluegreen.config import Colour
from bluegreen.plan import slot as slotplan
from bluegreen.plan.slot import Probe, Slot, SlotState
from bluegreen.supervisors.base import StartFailed, Supervisor


class DaemonSupervisor(Supervisor):
    mode = "start"
    title = "the app's own daemon (run.start)"

    async def launch(self, slot: Slot, state: SlotState) -> SlotState:
        assert self.cfg.run.start is not None
        status = await self.run_slot_command(slot.colour, state, self.cfg.run.start,
                                             self.cfg.run.health_timeout)
        if status != 0:
            raise StartFailed(f"start command exited {status}")
        return state

    async def halt(self, colour: Colour, state: SlotState, probe: Probe) -> bool:
        pids = list(probe.listeners)
        timeout = self.cfg.run.stop_timeout
        if self.cfg.run.stop:
            status = await self.run_slot_command(colour, state, self.cfg.run.stop, timeout)
            if status == 0:
                if not await self.wait_stopped(colour, None, pids, timeout):
                    self.node.warn(f"{colour} still running {timeout:g}s after stop; "
                                   "sending SIGKILL")
                    await self.node.run(slotplan.signal_pids("KILL", pids))
                    return False
                return True
            self.node.warn(f"stop command exited {status}; signalling the slot's processes")
        return await self.stop_listeners(colour, pids)

    async def clean_up(self, slot: Slot, state: SlotState, probe: Probe) -> None:
        if probe.listening and self.cfg.run.stop:
            await self.run_slot_command(slot.colour, state, self.cfg.run.stop,
                                        self.cfg.run.stop_timeout)

    def release_tmp(self, slot: Slot) -> str | None:
        """$RELEASE_TMP, by default <release_dir>/tmp, as Elixir releases do."""
        value = self.cfg.run.env.get("RELEASE_TMP")
        return slot.render(self.cfg, value) if value else str(slot.release_dir / "tmp")
