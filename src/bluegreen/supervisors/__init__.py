"""The ways a slot's process is run, chosen by name from one registry. The name is
recorded in each slot's state (``mode``), so a slot is stopped by the one that started it."""

from __future__ import annotations

from bluegreen.config import Config
from bluegreen.fleet import Node
from bluegreen.plan.slot import SlotState
from bluegreen.supervisors.base import StartFailed, Supervisor
from bluegreen.supervisors.daemon import DaemonSupervisor
from bluegreen.supervisors.process import ProcessSupervisor

KINDS: dict[str, type[Supervisor]] = {"command": ProcessSupervisor, "start": DaemonSupervisor}

__all__ = ["KINDS", "StartFailed", "Supervisor", "configured", "of_state"]


def configured(cfg: Config) -> str:
    """The supervisor the config asks for: `run.command` or `run.start`/`run.stop`."""
    return ProcessSupervisor.mode if cfg.run.command else DaemonSupervisor.mode


def of_state(node: Node, state: SlotState | None) -> Supervisor:
    """The supervisor that started the slot (the configured one when none did)."""
    mode = state.mode if state and state.mode in KINDS else configured(node.cfg)
    return KINDS[mode](node)
