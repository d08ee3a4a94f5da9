"""Progress lines on stderr (``[host] what``), with secret values masked."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from rich.console import Console
from rich.markup import escape


class Reporter:
    """Prints progress to stderr; stdout is left for data (``--json``)."""

    def __init__(self, *, verbose: bool = False, quiet: bool = False,
                 stream: TextIO | None = None) -> None:
        self.verbose = verbose
        self.quiet = quiet
        self.console = Console(file=stream or sys.stderr, highlight=False, soft_wrap=True)
        self._secrets: list[str] = []
        self._start = time.monotonic()

    def add_secrets(self, values: list[str]) -> None:
        """Values that must never be printed (env_file values)."""
        self._secrets.extend(v for v in values if len(v) >= 3)
        self._secrets.sort(key=len, reverse=True)

    def mask(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "********")
        return text

    def step(self, host: str | None, message: str) -> None:
        if self.quiet:
            return
        elapsed = time.monotonic() - self._start
        where = f"[bold cyan]\\[{escape(host)}][/] " if host else ""
        self.console.print(f"[dim]{elapsed:6.2f}s[/] {where}{escape(self.mask(message))}")

    def debug(self, host: str | None, message: str) -> None:
        if self.verbose:
            self.step(host, message)

    def warn(self, host: str | None, message: str) -> None:
        where = f"[{host}] " if host else ""
        self.console.print(f"[yellow]warning:[/] {escape(where + self.mask(message))}")

    def error(self, message: str) -> None:
        self.console.print(f"[bold red]error:[/] {escape(self.mask(message))}")
