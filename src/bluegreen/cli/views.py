"""How `check`, `status` and `history` look on a terminal (rich tables); `--json` prints
the data itself. Imported only by those commands."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bluegreen.config import Colour
from bluegreen.commands.reports import CheckItem
from bluegreen.traffic import Traffic


def console() -> Console:
    """On a terminal, its width; off one (`| cat`, a file), wide enough that no value is
    cut (rich would assume 80 columns)."""
    return Console(highlight=False, width=None if sys.stdout.isatty() else 10_000)


def show(out: Console, table: Table) -> None:
    """Print ``table``; off a terminal without the padding rich puts after each row's last
    cell (rows as wide as the widest, hundreds of spaces in a log)."""
    if out.is_terminal:
        out.print(table)
        return
    with out.capture() as captured:
        out.print(table)
    out.file.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))


def print_check(items: list[CheckItem]) -> None:
    table = Table("host", "check", "result", box=None, pad_edge=False)
    for item in items:
        mark = {True: "[green]ok[/]", False: "[red]FAIL[/]", None: "[yellow]note[/]"}[item.ok]
        table.add_row(escape(item.host), escape(item.item), f"{mark} {escape(item.detail)}")
    show(console(), table)


def print_history(events: list[dict[str, Any]]) -> None:
    table = Table("time", "host", "event", "color", "release", "user", "detail", box=None)
    for e in events:
        table.add_row(*(escape(str(e.get(k) or "-")) for k in
                        ("time", "host", "event", "color", "release", "user", "detail")))
    show(console(), table)


def print_status(data: dict[str, Any]) -> None:
    out = console()
    for lb in data.get("load_balancers", []):
        if lb["reachable"]:
            out.print(f"[bold]{escape(lb['host'])}[/] (load balancer): live "
                      f"[bold]{lb['live']}[/], answers {escape(str(lb['proxy_answer']))}")
        else:
            out.print(f"[bold]{escape(lb['host'])}[/] (load balancer): [red]unreachable[/] "
                      f"({escape(lb['error'])})")
    for h in data["hosts"]:
        if not h["reachable"]:
            out.print(f"[bold]{escape(h['host'])}[/]: [red]unreachable[/] ({escape(h['error'])})")
            continue
        agree = "" if h["proxy_answer"] == h["live"] or h.get("canary") or \
            (h["live"] and h["proxy_answer"] == Traffic(Colour(h["live"]), 0).text()) else \
            " [red](proxy disagrees!)[/]"  # (the last: a watch logging every request)
        maintenance = " [yellow](maintenance on: 503 for every request)[/]" \
            if h.get("maintenance") else ""
        out.print(f"[bold]{escape(h['host'])}[/]: live [bold]{h['live']}[/], proxy answers "
                  f"{escape(str(h['proxy_answer']))}{agree}{maintenance}")
        if h.get("canary"):
            c = h["canary"]
            out.print(f"[yellow]canary: {c['percent']}% of requests to {c['new']}"
                      f"{' (sticky)' if c['sticky'] else ''}[/]; traffic "
                      + ", ".join(f"{k} {v}%" for k, v in h["traffic"].items())
                      + ("; held by " + escape(h["lock"]) if h.get("lock") else
                         "; no run holds the lock: the next command (or `rollback`) ends it"))
        table = Table("slot", "release", "port", "pid", "running", "healthy", "conns", box=None)
        for colour, s in h["slots"].items():
            mark = " (live)" if colour == h["live"] else ""
            table.add_row(colour + mark, str(s["release"] or "-"), str(s["port"]),
                          str(s["pid"] or "-"), yes(s["running"]), yes(s["healthy"]),
                          str(s["connections"]))
        show(out, table)
        if h.get("lock"):
            out.print(f"[yellow]{escape(h['lock'])}[/]; if no bluegreen command is running, "
                      "`bluegreen unlock` clears it")
    for problem in data.get("problems", []):
        out.print(f"[bold red]{escape(problem)}[/]")


def print_releases(hosts: dict[str, list[dict[str, Any]]], picks: list[str] | None = None
                   ) -> None:
    """`rollback --list`: each host's kept releases, newest first, the plain rollback's
    target marked; with ``picks``, those releases numbered for `--pick` to choose from."""
    table = Table("host", "#" if picks is not None else "", "release", "version", "where",
                  "age", "", box=None, pad_edge=False)
    where = {"live": "live", "idle": "idle", "disk": "on disk only"}
    for host, rows in hosts.items():
        for r in rows:
            number = (str(picks.index(r["release"]) + 1) if picks is not None
                      and r["release"] in picks else "")
            table.add_row(escape(host), number, escape(r["release"]), escape(r["version"]),
                          where[r["where"]], age(r["age_seconds"]),
                          "<- rollback" if r["rollback_target"] else "")
    show(console(), table)


def age(seconds: float | None) -> str:
    """``seconds`` ago, in its largest whole unit: 40s, 5m, 3h, 2d."""
    if seconds is None:
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{max(0, int(seconds))}s ago"


def yes(value: bool) -> str:
    return "yes" if value else "no"
