"""Benchmark: what a promote costs once Python's imports are done, against a new
`bluegreen promote` process, in one run: the share of start-up, for planning a long-lived
local process.

    .venv/bin/python bench/warm.py [--rounds 7]

For a local host and a private sshd on 127.0.0.1: the median wall time of `bluegreen
promote` as a new process, and of the same command run again inside one process that has
imported bluegreen already (each run still opens its own SSH connection and agent). Prints
a Markdown table. Needs root (the sshd).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import Project, start_sshd  # noqa: E402

import bluegreen.cli  # noqa: E402
import bluegreen.workflow  # noqa: E402,F401  (what a promote imports: imported here, once)
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
    cwd, env = os.getcwd(), dict(os.environ)
    try:
        p.bg("setup")
        p.deploy("1.0.0")
        p.deploy("2.0.0")  # green is live
        colour, cold, warm = "green", [], []
        for _ in range(rounds):
            colour = "blue" if colour == "green" else "green"
            t0 = time.perf_counter()
            p.bg("promote", colour)
            cold.append(time.perf_counter() - t0)
        os.chdir(project)
        os.environ.update(HOME=str(home), NO_COLOR="1")
        for _ in range(rounds):
            colour = "blue" if colour == "green" else "green"
            t0 = time.perf_counter()
            with contextlib.redirect_stderr(io.StringIO()), \
                    contextlib.redirect_stdout(io.StringIO()):
                try:
                    bluegreen.cli.main(["promote", colour], prog_name="bluegreen",
                                       standalone_mode=False)
                except SystemExit as exc:
                    if exc.code:
                        raise
            warm.append(time.perf_counter() - t0)
        if p.answer().colour != colour:
            raise AssertionError(f"the proxy does not answer {colour} after the warm runs")
        return statistics.median(cold), statistics.median(warm)
    finally:
        os.chdir(cwd)
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
    print("| host | `bluegreen promote` (new process) | same, imports done | start-up share |")
    print("|---|---|---|---|")
    for kind, cold, warm in rows:
        print(f"| {kind} | {cold:.3f} s | {warm:.3f} s | {cold - warm:.3f} s |")


if __name__ == "__main__":
    main()
