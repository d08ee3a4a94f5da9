"""Where things live on a host, under ``deploy_to``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from bluegreen.config import Colour, Config, HostConfig, render
from bluegreen.plan.files import Argv, sh


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

    def entries(self) -> list[PurePosixPath]:
        """What bluegreen makes directly under ``deploy_to`` (`directories`, the history,
        the lock): all that `remove` deletes there. The lock last: it is `remove`'s own."""
        return [self.releases, self.root / "slots", self.shared_env.parent, self.history,
                self.lock]


# What bluegreen creates on a host is closed to other users (sshd's usual umask, 022,
# left the slots' logs, which hold what apps print, and the state readable by anyone):
# every command runs under this umask (`hosts.agent` has its own copy, `hosts.local`).
UMASK = 0o027


def close(layout: Layout) -> Argv:
    """``deploy_to`` 0750, and nothing of bluegreen's layout under it open to other users
    (what a version before the umask left 0755/0644); `setup` runs it. While the
    maintenance page is there, the proxy's way to it stays open (`open_page`)."""
    page = layout.maintenance_page
    return sh('root="$1"; page="$2"; shift 2; chmod 0750 "$root" || exit 1\n'
              'for e; do if [ -e "$e" ]; then chmod -R o-rwx -- "$e" || exit 1; fi; done\n'
              'if [ -e "$page" ]; then chmod o+x -- "$root" "$(dirname "$page")" && '
              'chmod 0644 -- "$page"; fi',
              layout.root, page, *layout.entries())


def open_page(layout: Layout) -> Argv:
    """The one opening, for the proxy (`maintenance on`): nginx's workers (www-data, not
    the deploy user) may pass through ``deploy_to`` and ``shared/`` (o+x: not list them
    nor read what else is in them) to the maintenance page, written 0644 next."""
    page = layout.maintenance_page
    return sh('mkdir -p -- "$2" && chmod o+x -- "$1" "$2"', layout.root, page.parent)


def close_page(layout: Layout) -> Argv:
    """`maintenance off`: remove the page and close the way to it again."""
    page = layout.maintenance_page
    return sh('rm -f -- "$3" && if [ -d "$2" ]; then chmod o-x -- "$1" "$2"; fi',
              layout.root, page.parent, page)

def remove(layout: Layout) -> Argv:
    """Delete bluegreen's entries under ``deploy_to``, then ``deploy_to`` itself if that
    left it empty. Prints ``removed``, or ``kept`` and what else is in it (a home dir's
    ``.ssh``, another app): ``deploy_to`` may be a dir bluegreen did not make."""
    return sh('root="$1"; shift; rm -rf -- "$@" || exit 1\n'
              'if rmdir -- "$root" 2>/dev/null || [ ! -e "$root" ]; then echo removed; '
              'else echo kept; ls -A -- "$root" | head -n 20; fi',
              layout.root, *layout.entries())


def parse_remove(output: str) -> list[str] | None:
    """From `remove`'s output: None when ``deploy_to`` was removed, else what kept it."""
    lines = output.splitlines()
    return lines[1:] if lines[:1] == ["kept"] else None
