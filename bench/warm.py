"""Benchmark: a promote with the warm process (`bluegreen warm`) against one without, in
one run: the start-up share of a command.

    .venv/bin/python bench/warm.py [--rounds 7]

For a local host and a private sshd on 127.0.0.1: the median wall time of `bluegreen
promote` as a new process with no warm process, then the same with a warm process running
(the `bluegreen` command is then only the client: the promote runs in a fork of the warm
process, which still opens its own SSH connection and agent). Prints a Markdown table.
Needs root (the sshd).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import Project, start_sshd  # noqa: E402

from bluegreen.demo.nginx import PrivateNginx, free_port  # noqa: E402


def measure(kind: str, base: Path, rounds: int) -> tuple[float, float]:
    sshd = start_sshd(base / kind / "sshd") if kind == "ssh" else None
    nginx = PrivateNginx(base / kind / "nginx", free_port())
    nginx.write_config(workers=2)
    nginx.start()
    home, project = base / kind / "home", base / kind / "project"
    home.mkdir(parents=True)
    project.mkdir()
    p = Project(project, nginx, kind, free_port(), free_port(), sshd, home)  # type: ignore[arg-type]
    p.write_config()
    env = dict(os.environ)
    try:
        p.bg("setup")
        p.deploy("1.0.0")
        p.deploy("2.0.0")  # green is live
        colour, cold, warm = "green", [], []
        os.environ["BLUEGREEN_WARM"] = "0"  # (not a warm process the user may have running)
        for _ in range(rounds):
            colour = "blue" if colour == "green" else "green"
            t0 = time.perf_counter()
            p.bg("promote", colour)
            cold.append(time.perf_counter() - t0)
        del os.environ["BLUEGREEN_WARM"]
        os.environ["BLUEGREEN_WARM_SOCKET"] = str(base / kind / "warm" / "warm.sock")
        p.bg("warm", "--idle", "60")
        try:
            for _ in range(rounds):
                colour = "blue" if colour == "green" else "green"
                t0 = time.perf_counter()
                p.bg("promote", colour)
                warm.append(time.perf_counter() - t0)
        finally:
            p.bg("warm", "--stop")
        if p.answer().colour != colour:
            raise AssertionError(f"the proxy does not answer {colour} after the warm runs")
        return statistics.median(cold), statistics.median(warm)
    finally:
        os.environ.clear()
        os.environ.update(env)
        p.cleanup()
        nginx.stop()
        if sshd is not None:
            sshd.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bluegreen-bench-") as tmp:
        rows = [(kind, *measure(kind, Path(tmp), args.rounds)) for kind in ("local", "ssh")]
    print(f"medians of {args.rounds}")
    print("| host | `bluegreen promote` | with `bluegreen warm` | saved |")
    print("|---|---|---|---|")
    for kind, cold, warm in rows:
        print(f"| {kind} | {cold:.3f} s | {warm:.3f} s | {cold - warm:.3f} s |")


if __name__ == "__main__":
    main()
