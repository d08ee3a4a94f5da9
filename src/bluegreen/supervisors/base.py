"""The interface every way of running a slot's process implements, on a thin host context.

A supervisor starts a release in a slot, stops it within ``run.stop_timeout``, cleans up
after a start that failed, and says where the slot's logs are. Which one started a slot is
recorded in its state (``mode``), so a slot is always stopped the way it was started."""

from __future__ import annotations

import abc
from pathlib import PurePosixPath
from typing import Callable, ClassVar

from bluegreen.config import Colour
from bluegreen.hosts.fleet import Node
from bluegreen.plan import slot as slotplan
from bluegreen.plan.files import Query
from bluegreen.plan.slot import Probe, Slot, SlotState


async def probe(node: Node, colour: Colour, sid: int | PurePosixPath | None = None,
                pids: list[int] | None = None) -> Probe:
    """Who listens on the slot's port, its connections, and which of its processes are
    alive (session ``sid``, ``pids``)."""
    result = await node.run(probe_query(node, colour, sid, pids))
    return slotplan.parse_probe(result.stdout)


def probe_query(node: Node, colour: Colour, sid: int | PurePosixPath | None = None,
                pids: list[int] | None = None) -> Query:
    return slotplan.probe(node.cfg.slots.port(colour), sid, pids)


class StartFailed(Exception):
    """The release could not be started; the message says why (for the Unhealthy error)."""


class Supervisor(abc.ABC):
    # The name recorded in a slot's state (``SlotState.mode``): the registry's key.
    mode: ClassVar[str]
    # What runs the slots, in words (`check`: "slots run under ...").
    title: ClassVar[str]
    # Slots are systemd units: sudo lines for systemctl, and a unit file an admin installs.
    runs_units: ClassVar[bool] = False

    def __init__(self, node: Node) -> None:
        self.node = node
        self.cfg = node.cfg

    async def unit_file(self) -> str | None:
        """The unit file an admin installs for this app's slots (``runs_units``), else None."""
        return None

    @abc.abstractmethod
    async def launch(self, slot: Slot, state: SlotState) -> SlotState:
        """Start ``slot``'s release (its env file is written); returns ``state`` with what
        is known of the process. Raises StartFailed when it could not be started."""

    def launch_later(self, slot: Slot, state: SlotState
                     ) -> tuple[PurePosixPath, Callable[[], SlotState]] | None:
        """``launch`` with the next round trip (the first health watch), where the kind can:
        the file the launch writes its session to (for a probe in that round trip), and
        what returns ``state`` with what the launch answered, once it was sent. None: the
        kind launches with ``launch``."""
        return None

    @abc.abstractmethod
    async def halt(self, colour: Colour, state: SlotState, probe: Probe) -> bool:
        """Ask the slot's process to stop; after ``run.stop_timeout`` kill it. True when it
        saw every process of the slot gone and its port free (no SIGKILL was needed)."""

    def halt_later(self, colour: Colour, state: SlotState, probe: Probe,
                   gone: Callable[[bool], None]) -> bool:
        """``halt`` with the next round trip (the start that follows), where the kind can:
        ``gone`` is called with whether every process went and the port is free within
        ``run.stop_timeout`` (when not, that round trip stops there). False: use ``halt``."""
        return False

    @abc.abstractmethod
    async def clean_up(self, slot: Slot, state: SlotState, probe: Probe) -> None:
        """Stop what a failed start left behind (the listeners are killed after this)."""

    async def exited(self, colour: Colour, state: SlotState, probe: Probe) -> str | None:
        """Why a starting release is known to have failed already (None: not known)."""
        return None

    async def install(self) -> bool:
        """Put on the host what this supervisor needs (`setup`); True when it changed."""
        return False

    async def retire(self, colour: Colour) -> None:
        """After `bluegreen stop`: keep the slot stopped (also across reboots)."""

    async def details(self, colour: Colour) -> dict[str, object] | None:
        """Extra facts for `status` (None: nothing more than the probe's)."""
        return None

    def logs(self, colour: Colour, slot: Slot | None, lines: int, follow: bool) -> list[str]:
        """The argv that prints (or follows) the slot's logs; ``slot``: its release."""
        return slotplan.logs([self.node.layout.log(colour)],
                             self.release_tmp(slot) if slot else None, lines, follow)

    def session(self, state: SlotState | None) -> int | None:
        """The session whose processes are the slot's, when the supervisor knows it."""
        return None

    async def recover(self, colour: Colour, state: SlotState) -> SlotState:
        """Fill in what a run killed after starting the slot could not record."""
        return state

    def release_tmp(self, slot: Slot) -> str | None:
        """Where the release writes its own logs, besides the slot's log (None: nowhere)."""
        return None

    # ---- shared ---------------------------------------------------------------------

    async def probe(self, colour: Colour, sid: int | None = None,
                    pids: list[int] | None = None) -> Probe:
        return await probe(self.node, colour, sid, pids)

    async def stop_listeners(self, colour: Colour, pids: list[int]) -> bool:
        """SIGTERM to ``pids``; SIGKILL if they are still there after ``run.stop_timeout``
        (False then)."""
        timeout = self.cfg.run.stop_timeout
        if not await self.signal_and_wait(colour, slotplan.signal_pids("TERM", pids), None,
                                          pids, timeout):
            self.node.warn(f"{colour} still running {timeout:g}s after stop; sending SIGKILL")
            await self.node.run(slotplan.signal_pids("KILL", pids))
            return False
        return True

    async def signal_and_wait(self, colour: Colour, signal: list[str], sid: int | None,
                              pids: list[int], timeout: float) -> bool:
        """``signal``, then ``wait_stopped``: one round trip."""
        if self.node.dry:
            await self.node.run(signal)
            return True
        self.node.later(signal, then=self.node.check)
        return await self.wait_stopped(colour, sid, pids, timeout)

    async def wait_stopped(self, colour: Colour, sid: int | None, pids: list[int],
                           timeout: float) -> bool:
        """Wait until the session, ``pids`` and the port's listener are all gone (a dry
        run stopped nothing: it does not wait)."""
        if self.node.dry:
            return True
        # Polled on the host (one round trip), not from here.
        result = await self.node.run(slotplan.wait_gone(self.cfg.slots.port(colour), sid,
                                                        pids, timeout),
                                     check=False, timeout=timeout + 30)
        return result.ok

    async def run_slot_command(self, colour: Colour, state: SlotState, command: str,
                               timeout: float) -> int:
        """Run a slot command (start, stop) from the slot's release in its env, output to
        its log; its exit status."""
        slot = Slot(colour, self.cfg.slots.port(colour), self.node.layout, state.release,
                    state.version, self.node.bind)
        result = await self.node.run(
            slotplan.run_in_slot(state.cwd, self.node.layout.slot_env(colour),
                                 slot.render(self.cfg, command), self.node.layout.log(colour)),
            timeout=timeout, check=False)
        return result.exit_status
