"""Benchmark: how long `bluegreen` takes to start, before it does any work.

    .venv/bin/python bench/startup.py [--rounds 10]

The wall time of `bluegreen --help` and `bluegreen docs hooks` (median of ROUNDS, each a new
process); the import time of `bluegreen.cli` (python -X importtime); and, for a command that
deploys or switches over SSH, the wall time of a process that only imports what it runs
(bluegreen's modules and the libraries) against one that imports only those libraries
(asyncio, pydantic, click, rich, jinja2, asyncssh): the floor any Python tool built on them
pays before its first byte goes out. Then the same commands with a warm process running
(`bluegreen warm`: the `bluegreen` process is then only the client, the command runs in a
fork of the warm process), and `bluegreen --version` through it: the start-up share of any
command. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).with_name("bluegreen")
# What `deploy`, `promote` and `rollback` import over SSH (the agent is sent as text).
COMMAND = ("import bluegreen.cli, bluegreen.commands.workflow, bluegreen.config, bluegreen.hosts.ssh, "
           "bluegreen.proxies.nginx, bluegreen.proxies.haproxy")
COLD = {k: v for k, v in os.environ.items() if k != "BLUEGREEN_WARM_SOCKET"}  # (no warm process)
LIBRARIES = ("import asyncio, click, pydantic, rich.console, rich.table, rich.live, jinja2, "
             "asyncssh")


def wall(argv: list[str], rounds: int, env: dict[str, str] | None = None) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True, env=env or COLD)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    imports = subprocess.run([sys.executable, "-X", "importtime", "-c", "import bluegreen.cli"],
                             capture_output=True, text=True, check=True).stderr
    total_us = int(imports.strip().splitlines()[-1].split("|")[1])
    n = args.rounds
    rows = [
        (f"`bluegreen --help` (median of {n})", wall([str(BIN), "--help"], n)),
        (f"`bluegreen docs hooks` (median of {n})", wall([str(BIN), "docs", "hooks"], n)),
        ("import of `bluegreen.cli`", total_us / 1e6),
        (f"python, nothing imported (median of {n})", wall([sys.executable, "-c", "pass"], n)),
        (f"python importing what a deploy/promote over SSH imports (median of {n})",
         wall([sys.executable, "-c", COMMAND], n)),
        (f"python importing only its libraries (median of {n})",
         wall([sys.executable, "-c", LIBRARIES], n)),
    ]
    with tempfile.TemporaryDirectory(prefix="bluegreen-bench-") as tmp:
        env = {**os.environ, "BLUEGREEN_WARM_SOCKET": f"{tmp}/warm.sock"}
        subprocess.run([str(BIN), "warm", "--idle", "60"], env=env, check=True,
                       capture_output=True)
        try:
            rows += [
                (f"with `bluegreen warm`: `bluegreen --help` (median of {n})",
                 wall([str(BIN), "--help"], n, env)),
                (f"with `bluegreen warm`: `bluegreen docs hooks` (median of {n})",
                 wall([str(BIN), "docs", "hooks"], n, env)),
                (f"with `bluegreen warm`: `bluegreen --version`, any command's start-up "
                 f"(median of {n})", wall([str(BIN), "--version"], n, env)),
            ]
        finally:
            subprocess.run([str(BIN), "warm", "--stop"], env=env, capture_output=True)
    print("| what | seconds |\n|---|---|")
    for what, seconds in rows:
        print(f"| {what} | {seconds:.3f} |")


if __name__ == "__main__":
    main()
