"""Where things live on a host, under ``deploy_to``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from bluegreen.config import Colour, Config, HostConfig, render


@dataclass(frozen=True)
class Layout:
    root: PurePosixPath

    @classmethod
    def of(cls, cfg: Config, host: HostConfig) -> Layout:
        return cls(PurePosixPath(render(host.deploy_to, app=cfg.app)))

    @property
    def releases(self) -> PurePosixPath:
        return self.root / "releases"

    def release(self, release_id: str) -> PurePosixPath:
        return self.releases / release_id

    def slot(self, colour: Colour) -> PurePosixPath:
        return self.root / "slots" / colour.value

    def state(self, colour: Colour) -> PurePosixPath:
        return self.slot(colour) / "state.json"

    def slot_env(self, colour: Colour) -> PurePosixPath:
        return self.slot(colour) / "env"

    def log(self, colour: Colour) -> PurePosixPath:
        return self.slot(colour) / "log"

    def pid(self, colour: Colour) -> PurePosixPath:
        return self.slot(colour) / "pid"

    @property
    def maintenance_page(self) -> PurePosixPath:
        """Present while `bluegreen maintenance on`: the page nginx answers (503) with."""
        return self.root / "shared" / "maintenance.html"

    @property
    def traffic_log(self) -> PurePosixPath:
        """nginx logs each request here (JSON lines) during a canary or a watch."""
        return self.root / "shared" / "traffic.log"

    @property
    def shared_env(self) -> PurePosixPath:
        return self.root / "shared" / ".env"

    @property
    def history(self) -> PurePosixPath:
        return self.root / "history.jsonl"

    @property
    def lock(self) -> PurePosixPath:
        return self.root / "lock"

    def directories(self) -> list[PurePosixPath]:
        """Every directory ``setup`` creates."""
        return [
            self.root,
            self.releases,
            self.slot(Colour.BLUE),
            self.slot(Colour.GREEN),
            self.slot(Colour.BLUE) / "tmp",
            self.slot(Colour.GREEN) / "tmp",
            self.shared_env.parent,
        ]
