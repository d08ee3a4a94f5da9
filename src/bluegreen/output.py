"""Progress on stderr, secret values masked, in one of three forms:

- ``plain``: timestamped ``[host] what`` lines (when stderr is not a terminal);
- ``live``: a per-host table that updates in place (rich), when stderr is a terminal;
- ``json``: one JSON object per line, for CI (``--json`` on commands that change things).

stdout is left for data.
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Iterator, TextIO

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table


class Reporter:
    def __init__(self, *, verbose: bool = False, quiet: bool = False,
                 stream: TextIO | None = None, mode: str | None = None) -> None:
        self.verbose = verbose
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.console = Console(file=self.stream, highlight=False, soft_wrap=True)
        self.mode = mode or ("live" if self.console.is_terminal and not verbose else "plain")
        self._secrets: list[str] = []
        self._start = time.monotonic()
        self._hosts: dict[str, tuple[str, float]] = {}
        self._live: Live | None = None
        # Per host: the round trips this command made (hosts.counting).
        self.round_trips: dict[str, dict[str, int]] = {}
        # `--dry-run`: hosts are only read; every other command is printed, not run.
        self.dry_run = False

    def count_round_trips(self, host: str, counts: dict[str, int]) -> None:
        """Add a host's round trips (a command may connect more than once); shown with -v."""
        total = self.round_trips.setdefault(host, {k: 0 for k in counts})
        for key, value in counts.items():
            total[key] = total.get(key, 0) + value
        ssh = (f"; {total['sessions']} SSH sessions" if "sessions" in total else "")
        self.debug(host, f"round trips: {total['total']} ({total['commands']} commands, "
                         f"{total['checks']} checks, {total['uploads']} uploads{ssh})")

    def add_secrets(self, values: list[str]) -> None:
        """Values that must never be printed (env_file values)."""
        self._secrets.extend(v for v in values if len(v) >= 3)
        self._secrets.sort(key=len, reverse=True)

    def mask(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "********")
        return text

    @contextmanager
    def session(self) -> Iterator[None]:
        """While a command runs: the live per-host table, if that is the mode."""
        if self.mode != "live" or self.quiet:
            yield
            return
        self._live = Live(self._table(), console=self.console, refresh_per_second=8,
                          transient=False)
        with self._live:
            try:
                yield
            finally:
                self._live.update(self._table())
                self._live = None

    def expect_hosts(self, names: list[str]) -> None:
        """The hosts of this command, so the live table lists them in config order."""
        for name in names:
            self._hosts.setdefault(name, ("connecting", time.monotonic() - self._start))

    def _table(self) -> Table:
        table = Table(box=None, show_header=False, pad_edge=False)
        table.add_column("host", style="bold cyan")
        table.add_column("time", style="dim", justify="right")
        table.add_column("what")
        for host, (message, at) in self._hosts.items():
            table.add_row(host, f"{at:6.2f}s", escape(message))
        return table

    def _emit(self, level: str, host: str | None, message: str) -> None:
        elapsed = time.monotonic() - self._start
        message = self.mask(message)
        if self.mode == "json":
            self.stream.write(json.dumps({
                "time": datetime.now(timezone.utc).astimezone().isoformat(timespec="milliseconds"),
                "elapsed": round(elapsed, 3), "level": level, "host": host,
                "message": message}) + "\n")
            self.stream.flush()
            return
        if self._live is not None and host is not None and level == "info":
            # The host's step before this one is done: it stays, as a line above the
            # table (which shows each host's current step only).
            done = self._hosts.get(host)
            if done is not None and done[0] != "connecting":
                self._line(done[1], host, done[0])
            self._hosts[host] = (message, elapsed)
            self._live.update(self._table())
            return
        where = f"[bold cyan]\\[{escape(host)}][/] " if host else ""
        if level == "info":
            self._line(elapsed, host, message)
        elif level == "warn":
            self.console.print(f"[yellow]warning:[/] {where}{escape(message)}")
        else:
            self.console.print(f"[bold red]error:[/] {where}{escape(message)}")

    def _line(self, elapsed: float, host: str | None, message: str) -> None:
        where = f"[bold cyan]\\[{escape(host)}][/] " if host else ""
        self.console.print(f"[dim]{elapsed:6.2f}s[/] {where}{escape(message)}")

    def step(self, host: str | None, message: str) -> None:
        if not self.quiet:
            self._emit("info", host, message)

    def debug(self, host: str | None, message: str) -> None:
        if self.verbose:
            self.step(host, message)

    def warn(self, host: str | None, message: str) -> None:
        self._emit("warn", host, message)

    def error(self, message: str) -> None:
        self._emit("error", None, message)
