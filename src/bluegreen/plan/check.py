"""The read-only probe `bluegreen check` runs on each host, and its parser."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from bluegreen.plan.files import Argv, reading, sh

# python3: the agent on a server, and the history's appends (`files.append_file`) on any host.
TOOLS = ("sh", "tar", "sha256sum", "ss", "setsid", "ps", "kill", "mkdir", "mv", "ln",
         "readlink", "tail", "python3")


@reading
def host_probe(dirs: list[PurePosixPath], deploy_to: PurePosixPath | None) -> Argv:
    """Which tools exist, whether up to two directories exist and are writable, and
    whether ``deploy_to`` exists or can be created (by whom it is blocked)."""
    two = [*dict.fromkeys(str(d) for d in dirs), "", ""][:2]
    return sh(
        'tools="$1"; shift\n'
        'for tool in $tools; do\n'
        '  if command -v "$tool" >/dev/null 2>&1; then echo "tool $tool ok"; '
        'else echo "tool $tool missing"; fi\n'
        "done\n"
        'for d in "$1" "$2"; do\n'
        '  [ -n "$d" ] || continue\n'
        '  if [ -d "$d" ] && [ -w "$d" ]; then echo "dir $d ok"; elif [ -d "$d" ]; then '
        'echo "dir $d not-writable"; else echo "dir $d missing"; fi\n'
        "done\n"
        'if [ -n "$3" ]; then\n'
        '  d="$3"\n'
        '  while [ ! -e "$d" ]; do d=$(dirname "$d"); done\n'
        '  if [ -d "$3" ]; then echo "deploy_to exists"; elif [ -w "$d" ]; then '
        'echo "deploy_to creatable $d"; else echo "deploy_to blocked $d"; fi\n'
        "fi\n",
        " ".join(TOOLS), *two, str(deploy_to) if deploy_to else "")


@dataclass
class HostReport:
    missing_tools: list[str] = field(default_factory=list)
    dirs: dict[str, str] = field(default_factory=dict)  # path -> ok | not-writable | missing
    deploy_to: str | None = None  # exists | creatable | blocked
    blocked_by: str = ""


def parse_host_probe(output: str) -> HostReport:
    report = HostReport()
    for line in output.splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        if parts[0] == "tool" and len(parts) == 3 and parts[2] != "ok":
            report.missing_tools.append(parts[1])
        elif parts[0] == "dir" and len(parts) == 3:
            report.dirs[parts[1]] = parts[2]
        elif parts[0] == "deploy_to":
            report.deploy_to = parts[1]
            report.blocked_by = parts[-1]
    return report


@reading
def listeners(port: int) -> Argv:
    """`ss`'s lines for the TCP sockets listening on ``port`` (with their processes where
    the SSH user may see them)."""
    return sh('ss -Htlnp "sport = :$1" 2>/dev/null; exit 0', str(port))


def parse_listeners(output: str) -> list[list[tuple[str, int]]]:
    """Per listening socket, its processes as (name, pid); empty when not visible."""
    return [[(name, int(pid)) for name, pid in re.findall(r'\("([^"]*)",pid=(\d+)', line)]
            for line in output.splitlines() if line.strip()]
