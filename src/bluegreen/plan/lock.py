"""Builders for the host lock: an atomic ``mkdir`` of ``deploy_to/lock``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from bluegreen.plan.files import Argv, reading, sh
from bluegreen.plan.layout import Layout

HELD = 73  # exit status of acquire() when the lock already exists
STALE_AFTER = 3600.0  # seconds after which a lock is reported as probably stale
NOT_SET_UP = 74  # exit status of acquire() when deploy_to does not exist


@dataclass(frozen=True)
class LockInfo:
    user: str
    host: str
    pid: int
    command: str
    started: str

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> LockInfo | None:
        try:
            data = json.loads(text)
            return cls(**{k: data[k] for k in ("user", "host", "pid", "command", "started")})
        except (ValueError, KeyError, TypeError):
            return None

    def describe(self) -> str:
        return f"{self.user}@{self.host} pid {self.pid} running `{self.command}` since {self.started}"


def age_seconds(started: str) -> float | None:
    """How long ago an ISO-8601 time with offset was; None if it does not parse."""
    try:
        then = datetime.fromisoformat(started)
    except ValueError:
        return None
    if then.tzinfo is None:
        return None
    return (datetime.now(timezone.utc) - then).total_seconds()


def acquire(layout: Layout) -> Argv:
    """Create the lock dir and write stdin (the holder's info) into it."""
    return sh(
        f'[ -d "$(dirname "$1")" ] || exit {NOT_SET_UP}; '
        f'mkdir "$1" 2>/dev/null || exit {HELD}; cat > "$1/info.json"',
        layout.lock,
    )


@reading
def read(layout: Layout) -> Argv:
    """Print "held" and the holder's info when locked (the info may be missing: a run
    killed between `mkdir` and writing it, or a full disk); nothing when not."""
    return sh('if [ -d "$1" ]; then echo held; cat "$1/info.json" 2>/dev/null; fi; true',
              layout.lock)


def release(layout: Layout) -> Argv:
    return ["rm", "-rf", "--", str(layout.lock)]
