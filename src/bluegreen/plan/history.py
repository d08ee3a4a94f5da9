"""Builders for ``history.jsonl``: one JSON object per event per host, append-only."""

from __future__ import annotations

import json
import re
from typing import Any

from bluegreen.plan.files import Argv, append_file, read_file, reading
from bluegreen.plan.layout import Layout

EVENTS = ("deploy", "promote", "rollback", "stop", "prune", "failed", "maintenance",
          "interrupted")


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


def parse(text: str) -> tuple[list[dict[str, Any]], list[int]]:
    """The events in a history file, oldest first, and the numbers (from 1) of the torn
    lines skipped: an append cut short (a crash, a power cut). Before appends were one
    write, the next event continued such a line: it is read from where it starts."""
    events: list[dict[str, Any]] = []
    torn: list[int] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        obj = _event(raw)
        if obj is None:
            torn.append(number)
            # Every event starts with this key, which a JSON string cannot hold unescaped.
            starts = [m.start() for m in re.finditer(r'\{"time":', raw) if m.start() > 0]
            obj = next((e for e in map(_event, (raw[i:] for i in starts)) if e), None)
        if obj is not None:
            events.append(obj)
    return events, torn


def _event(raw: str) -> dict[str, Any] | None:
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None
