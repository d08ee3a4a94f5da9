"""Benchmark: where the time of an Elixir release deploy goes, local and over SSH.

    .venv/bin/python bench/elixir_deploy.py [--rounds 3]

Builds the test suite's real `mix release` (tests/apps/elixir), then deploys it
`rounds` + 1 times per host kind (the first deploy, with nothing to stop, is left out)
and splits each deploy's wall time by the timestamps of its progress lines: upload,
unpack, drain+stop of the previous copy (until its BEAM has exited), boot to healthy,
migrate, switch (link + test + reload + verify through nginx), and the rest.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import Project, start_sshd  # noqa: E402
from test_elixir import _pids_under, build_elixir_release, elixir_artifact, elixir_config  # noqa: E402

from bluegreen.demo.nginx import PrivateNginx, free_port  # noqa: E402

MARKS = [("upload", "uploading "), ("unpack", "unpacking into"), ("drain+stop", "draining "),
         ("(between)", "stopped; port"), ("boot→healthy", "starting "), ("migrate", "migrate with"),
         ("(after migrate)", "  migrated"), ("switch", "switching "), ("done", "live is ")]


def split(stderr: str) -> dict[str, float]:
    """Seconds between consecutive progress lines, named by the phase they start."""
    times: list[tuple[str, float]] = []
    for line in stderr.splitlines():
        m = re.match(r"\s*([\d.]+)s (.*)", line)
        if not m:
            continue
        for name, needle in MARKS:
            if needle in m.group(2):
                times.append((name, float(m.group(1))))
                break
    phases: dict[str, float] = {}
    for (name, t0), (_, t1) in zip(times, times[1:]):
        phases[name] = phases.get(name, 0.0) + t1 - t0
    return phases


def measure(kind: str, base: Path, tree: Path, rounds: int, sshd: object) -> dict[str, float]:
    nginx = PrivateNginx(base / kind / "nginx", free_port())
    nginx.write_config()
    nginx.start()
    (base / kind / "home").mkdir(parents=True)
    (base / kind / "project").mkdir()
    p = Project(base / kind / "project", nginx, kind, free_port(), free_port(), sshd,  # type: ignore[arg-type]
                base / kind / "home")
    elixir_config(p)
    results: list[dict[str, float]] = []
    try:
        p.bg("setup")
        for i in range(rounds + 1):
            version = f"1.0.{i}"
            elixir_artifact(p, tree, version)
            t0 = time.perf_counter()
            out = p.bg("deploy", "--version", version)
            wall = time.perf_counter() - t0
            if i == 0:
                continue
            phases = split(out.stderr)
            phases["wall (CLI)"] = wall
            results.append(phases)
    finally:
        p.cleanup()
        nginx.stop()
        import os
        import signal

        for pid in _pids_under(p.deploy_to):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    keys = sorted({k for r in results for k in r})
    return {k: statistics.median(r.get(k, 0.0) for r in results) for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bluegreen-bench-ex-") as tmp:
        base = Path(tmp)
        tree = build_elixir_release(base / "build")
        size = sum(f.stat().st_size for f in tree.rglob("*") if f.is_file())
        sshd = start_sshd(base / "sshd")
        try:
            local = measure("local", base, tree, args.rounds, None)
            ssh = measure("ssh", base, tree, args.rounds, sshd)
        finally:
            sshd.stop()
    print(f"Elixir release, {size / 1e6:.1f} MB unpacked; median of {args.rounds} deploys")
    print("| phase | local | ssh (127.0.0.1) |\n|---|---|---|")
    for key in [name for name, _ in MARKS if name in local or name in ssh] + ["wall (CLI)"]:
        print(f"| {key} | {local.get(key, 0.0):.2f} s | {ssh.get(key, 0.0):.2f} s |")


if __name__ == "__main__":
    main()
