"""``run.supervisor = "systemd"``: one template unit per app, the colour as instance, both
enabled, so after a reboot the live colour serves again and the idle one is warm. systemd
restarts a crashed slot, stops its whole cgroup, and keeps its output in the journal."""

from __future__ import annotations

from bluegreen.config import Colour
from bluegreen.errors import BlueGreenError, CommandFailed
from bluegreen.plan import files, systemd
from bluegreen.plan.slot import Probe, Slot, SlotState
from bluegreen.supervisors.base import StartFailed, Supervisor


class SystemdSupervisor(Supervisor):
    mode = "systemd"
    title = "systemd"
    runs_units = True

    @property
    def sudo(self) -> bool:
        return self.node.hc.sudo

    async def install(self) -> bool:
        """Write the template unit if it differs, and `daemon-reload` only then. With
        `sudo = true` an admin installs it (writing a system unit is root's power)."""
        text = await self.unit_file()
        path = systemd.unit_path(self.cfg)
        current = (await self.node.run(files.read_file(path))).stdout
        if current == text:
            return False
        if self.sudo:
            raise BlueGreenError(
                f"{path} is {'out of date' if current else 'not installed'}; a user who may "
                "write a system unit may run anything as root, so with `sudo = true` an "
                "admin installs it: `bluegreen setup --print-root-files` prints the script "
                "for that",
                host=self.node.name)
        self.node.say(f"installing {path}")
        await self.node.run(systemd.install_unit(self.cfg), input=text)
        return True

    async def unit_file(self) -> str:
        """The unit, for the SSH user the host names; refused (exit 2) when with `sudo =
        true` it would run the slots as root or as another user."""
        user = (await self.node.run(systemd.WHO)).stdout.strip()
        text = systemd.render_unit(self.cfg, self.node.layout, user)
        systemd.check_unit_user(text, user, self.node.hc)
        return text

    async def launch(self, slot: Slot, state: SlotState) -> SlotState:
        path = systemd.start_script_path(self.node.layout, slot.colour)
        await self.node.run(files.write_file(path, "0750"),
                            input=systemd.start_script(self.cfg, slot))
        await self.node.run(systemd.enable(self.cfg, slot.colour, self.sudo))
        await self.node.run(systemd.reset_failed(self.cfg, slot.colour, self.sudo), check=False)
        result = await self.node.run(systemd.restart(self.cfg, slot.colour, self.sudo),
                                     check=False, timeout=self.cfg.run.health_timeout + 30)
        if not result.ok:
            output = (result.stderr.strip() or result.stdout.strip())[-500:]
            raise StartFailed(f"`systemctl restart {systemd.unit(self.cfg, slot.colour)}` "
                              f"failed: {output}")
        return state

    async def unit_state(self, colour: Colour) -> dict[str, str]:
        result = await self.node.run(systemd.show(self.cfg, colour), check=False)
        return systemd.parse_show(result.stdout)

    async def exited(self, colour: Colour, state: SlotState, probe: Probe) -> str | None:
        unit = await self.unit_state(colour)
        active, restarts = unit.get("ActiveState", "?"), unit.get("NRestarts", "0")
        if active in ("failed", "inactive") or restarts not in ("", "0"):
            return (f"{systemd.unit(self.cfg, colour)} is {active} (exit status "
                    f"{unit.get('ExecMainStatus', '?')}, restarted {restarts} times)")
        return None

    async def halt(self, colour: Colour, state: SlotState, probe: Probe) -> bool:
        result = await self.node.run(systemd.stop(self.cfg, colour, self.sudo), check=False,
                                     timeout=self.cfg.run.stop_timeout + 30)
        if not result.ok:
            raise CommandFailed(f"`systemctl stop {systemd.unit(self.cfg, colour)}` failed: "
                                f"{(result.stderr or result.stdout).strip()[-500:]}",
                                host=self.node.name)
        return False  # systemd waited; the port is checked by the caller

    async def clean_up(self, slot: Slot, state: SlotState, probe: Probe) -> None:
        # A release that never became healthy must not be started again at boot.
        await self.node.run(systemd.disable(self.cfg, slot.colour, self.sudo), check=False,
                            timeout=self.cfg.run.stop_timeout + 30)
        await self.node.run(systemd.reset_failed(self.cfg, slot.colour, self.sudo), check=False)

    async def retire(self, colour: Colour) -> None:
        await self.node.run(systemd.disable(self.cfg, colour, self.sudo),
                            timeout=self.cfg.run.stop_timeout + 30)
        await self.node.run(systemd.reset_failed(self.cfg, colour, self.sudo), check=False)

    async def details(self, colour: Colour) -> dict[str, object] | None:
        unit = await self.unit_state(colour)
        return {"name": systemd.unit(self.cfg, colour),
                "active_state": unit.get("ActiveState"),
                "enabled": unit.get("UnitFileState") == "enabled",
                "main_pid": int(unit["MainPID"]) if unit.get("MainPID", "0") != "0" else None,
                "restarts": int(unit.get("NRestarts") or 0),
                "exit_status": int(unit.get("ExecMainStatus") or 0)}

    def logs(self, colour: Colour, slot: Slot | None, lines: int, follow: bool) -> list[str]:
        return systemd.journal(self.cfg, colour, lines, follow)
