"""Builders for ``history.jsonl``: one JSON object per event per host, append-only."""

from __future__ import annotations

import json
from typing import Any

from bluegreen.plan.files import Argv, append_file, read_file, reading
from bluegreen.plan.layout import Layout

EVENTS = ("deploy", "promote", "rollback", "stop", "prune", "failed", "maintenance")


def entry(*, time: str, event: str, host: str, color: str | None, release: str | None,
          version: str | None, user: str, detail: str = "") -> dict[str, Any]:
    assert event in EVENTS, event
    return {"time": time, "event": event, "host": host, "color": color, "release": release,
            "version": version, "user": user, "detail": detail}


def append(layout: Layout) -> Argv:
    return append_file(layout.history)


def line(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":")) + "\n"


@reading
def read(layout: Layout) -> Argv:
    return read_file(layout.history)


def parse(text: str) -> list[dict[str, Any]]:
    """The events in a history file, oldest first; a torn last line is skipped."""
    events = []
    for raw in text.splitlines():
        try:
            obj = json.loads(raw)
        except ValueError:
            continue
        if isinstance(obj, dict):
            events.append(obj)
    return events
