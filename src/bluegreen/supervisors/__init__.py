"""The ways a slot's process is run, chosen by name from one registry. The name is
recorded in each slot's state (``mode``), so a slot is stopped by the one that started it."""

from __future__ import annotations

from bluegreen.errors import BlueGreenError
from bluegreen.hosts.fleet import Node
from bluegreen.plan import systemd as systemdplan
from bluegreen.plan.slot import SlotState
from bluegreen.supervisors.base import StartFailed, Supervisor
from bluegreen.supervisors.daemon import DaemonSupervisor
from bluegreen.supervisors.process import ProcessSupervisor
from bluegreen.supervisors.systemd import SystemdSupervisor

KINDS: dict[str, type[Supervisor]] = {"command": ProcessSupervisor, "start": DaemonSupervisor,
                                      "systemd": SystemdSupervisor}

__all__ = ["KINDS", "StartFailed", "Supervisor", "choose", "has_systemd", "of_state"]


async def choose(node: Node) -> tuple[Supervisor, str]:
    """The supervisor that starts releases on this host, and why (for `check`)."""
    run = node.cfg.run
    if run.command is None:
        return DaemonSupervisor(node), ("run.start: the app daemonises itself; nothing "
                                        "restarts the slots after a reboot")
    if run.supervisor == "process":
        return ProcessSupervisor(node), ("run.supervisor = \"process\": nothing restarts the "
                                         "slots after a reboot")
    if await has_systemd(node):
        return SystemdSupervisor(node), ("systemd runs on the host (/run/systemd/system): a "
                                         "unit per colour, enabled, restarted after a reboot")
    if run.supervisor == "systemd":
        raise BlueGreenError("run.supervisor = \"systemd\", but the host does not run systemd "
                             "(no /run/systemd/system); use \"auto\" or \"process\"",
                             host=node.name)
    return ProcessSupervisor(node), ("no systemd on the host: bluegreen's own detached "
                                     "process; nothing restarts the slots after a reboot")


async def has_systemd(node: Node) -> bool:
    """Whether systemd runs the host (asked once per command)."""
    if "systemd" not in node.facts:
        node.facts["systemd"] = (await node.run(systemdplan.DETECT, check=False)).ok
    return node.facts["systemd"]


def of_state(node: Node, state: SlotState | None) -> Supervisor:
    """The supervisor that started the slot (the process one when none did)."""
    if state is not None and state.mode in KINDS:
        return KINDS[state.mode](node)
    return (ProcessSupervisor if node.cfg.run.command else DaemonSupervisor)(node)
