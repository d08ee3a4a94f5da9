"""Benchmark: how long `bluegreen` takes to start, before it does any work.

    .venv/bin/python bench/startup.py [--rounds 10]

The wall time of `bluegreen --help` and `bluegreen docs hooks` (median of ROUNDS, each a new
process), and the import time of `bluegreen.cli` (python -X importtime). Prints a Markdown
table.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).with_name("bluegreen")


def wall(argv: list[str], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    imports = subprocess.run([sys.executable, "-X", "importtime", "-c", "import bluegreen.cli"],
                             capture_output=True, text=True, check=True).stderr
    total_us = int(imports.strip().splitlines()[-1].split("|")[1])
    print("| what | seconds |\n|---|---|")
    print(f"| `bluegreen --help` (median of {args.rounds}) | {wall([str(BIN), '--help'], args.rounds):.3f} |")
    print(f"| `bluegreen docs hooks` (median of {args.rounds}) | "
          f"{wall([str(BIN), 'docs', 'hooks'], args.rounds):.3f} |")
    print(f"| import of `bluegreen.cli` | {total_us / 1e6:.3f} |")


if __name__ == "__main__":
    main()
