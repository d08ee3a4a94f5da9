"""Benchmark: what users see of a bad release (it fails 5 % of its requests with 500),
shipped with a canary against a full switch that someone notices and rolls back, for each
proxy kind, in one run.

    .venv/bin/python bench/canary.py [--kinds nginx,haproxy] [--step 10] [--notice 10]
        [--out bench/results]

Load: wrk (-t2 -c20) through a private proxy to the bundled sample app (1.0.0 live, ~5 ms
per request), during
  - `canary`: `bluegreen deploy --canary 10,50,100 --step STEP` of the bad 2.0.0: how
    many failed requests users got, and the seconds from the first step's start (its
    reload or runtime-API command) to the moment every request was back on 1.0.0 (the
    command's end);
  - `switch + rollback`: `bluegreen promote` of the same 2.0.0 (a full switch), then
    `bluegreen rollback` NOTICE seconds later: an optimistic stand-in for an alert or a
    person noticing (in practice minutes). Failed requests, and seconds from the start of
    `promote` to the end of the rollback.
Writes canary.json, canary.md and canary.png (per second: requests, failed requests, and
the new release's share of requests as bluegreen set it) to --out.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from conftest import BLUEGREEN, SERVER_NAME, Project, with_home  # noqa: E402
from zero_downtime import LUA, Proxy, project_behind  # noqa: E402
STEP_LINE = re.compile(r"canary step \d+/\d+ \((\d+)% to \w+\): (blue|green)=")


def wrk(port: int, seconds: float, lua: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["wrk", "-t2", "-c20", f"-d{seconds:.0f}s", "-s", str(lua), "-H",
         f"Host: {SERVER_NAME}", f"http://127.0.0.1:{port}/"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def per_second(output: str) -> dict[int, tuple[int, int]]:
    """wrk's per-second (2xx, other) counts from the Lua script's lines."""
    out: dict[int, list[int]] = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] in ("OK", "BAD"):
            row = out.setdefault(int(parts[1]), [0, 0])
            row[0 if parts[0] == "OK" else 1] += int(parts[2])
    return {s: (ok, bad) for s, (ok, bad) in out.items()}


def bluegreen(p: Project, args: list[str], marks: list[tuple[float, int]]
              ) -> tuple[int, float, float]:
    """Run bluegreen, noting when each canary step's share was set (stderr progress);
    returns (exit status, start, end)."""
    start = time.time()
    proc = subprocess.Popen(with_home(p.home, [*BLUEGREEN, *args]), cwd=p.dir,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        found = STEP_LINE.search(line)
        if found:
            marks.append((time.time(), int(found.group(1))))
    return proc.wait(), start, time.time()


def scenario(p: Project, proxy: Proxy, name: str, lua: Path, step: float,
             notice: float) -> dict[str, Any]:
    marks: list[tuple[float, int]] = []
    load = wrk(proxy.port, 60 if name == "canary" else notice + 20, lua)
    time.sleep(3)
    if name == "canary":
        status, start, end = bluegreen(p, ["deploy", "--version", "2.0.0", "--canary",
                                           "10,50,100", "--step", f"{step:g}s"], marks)
        exposed_from = marks[0][0] if marks else start
        aborted = status == 5
    else:
        status, switching, switched = bluegreen(p, ["promote"], marks)
        marks.append((switching, 100))
        time.sleep(notice)
        status, _, end = bluegreen(p, ["rollback"], marks)
        exposed_from = switching
        aborted = status == 0
    marks.append((end, 0))
    threading.Event().wait(2)
    load.send_signal(signal.SIGINT)  # wrk prints its report (the Lua counts) on SIGINT
    output, _ = load.communicate()
    seconds = per_second(output)
    window = [v for s, v in seconds.items() if int(exposed_from) <= s <= int(end) + 1]
    after = [v for s, v in seconds.items() if s > int(end) + 1]
    return {
        "proxy": proxy.kind, "scenario": name, "rolled_back": aborted,
        "failed_during": sum(bad for _, bad in window),
        "requests_during": sum(ok + bad for ok, bad in window),
        "failed_after": sum(bad for _, bad in after),
        "seconds_exposed": end - exposed_from,
        "timeline": sorted((s, ok, bad) for s, (ok, bad) in seconds.items()),
        "marks": marks,
    }


def bench_kind(kind: str, base: Path, lua: Path, step: float,
               notice: float) -> list[dict[str, Any]]:
    proxy, p = project_behind(kind, base)
    p.write_config(canary={"min_requests": 100})
    try:
        p.bg("setup")
        p.deploy("1.0.0", mode="delay=0.005")
        p.artifact("2.0.0", "delay=0.005 fail=0.05")
        results = [scenario(p, proxy, "canary", lua, step, notice)]
        results.append(scenario(p, proxy, "switch + rollback", lua, step, notice))
    finally:
        p.cleanup()
        proxy.stop()
    return results


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(10, 2.4 * len(results)))
    for ax, r in zip(axes, results):
        t0 = r["timeline"][0][0]
        xs = [s - t0 for s, _, _ in r["timeline"]]
        ax.plot(xs, [ok + bad for _, ok, bad in r["timeline"]], label="requests / s")
        ax.bar(xs, [bad * 20 for _, _, bad in r["timeline"]], color="red",
               label="failed / s (x20)")
        share = ax.twinx()
        times = [m - t0 for m, _ in r["marks"]]
        share.step([0, *times, xs[-1]], [0, *[pct for _, pct in r["marks"]], 0],
                   where="post", color="green", label="2.0.0's share (%)")
        share.set_ylim(0, 105)
        share.set_ylabel("% to 2.0.0", fontsize=7)
        ax.set_title(f"{r['proxy']} {r['scenario']}: {r['failed_during']} failed of "
                     f"{r['requests_during']}, {r['seconds_exposed']:.1f} s exposed",
                     fontsize=9)
        ax.legend(fontsize=7, loc="lower left")
        share.legend(fontsize=7, loc="lower right")
    axes[-1].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kinds", default="nginx,haproxy")
    parser.add_argument("--step", type=float, default=10)
    parser.add_argument("--notice", type=float, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bluegreen-bench-canary-") as tmp:
        lua = Path(tmp) / "count.lua"
        lua.write_text(LUA)
        for kind in args.kinds.split(","):
            (Path(tmp) / kind).mkdir()
            results += bench_kind(kind, Path(tmp) / kind, lua, args.step, args.notice)
    (args.out / "canary.json").write_text(json.dumps(results, indent=1))
    lines = ["| proxy | how | rolled back | failed requests | of requests in that time | "
             "failed after | seconds 2.0.0 got requests | failed vs canary |",
             "|---|---|---|---|---|---|---|---|"]
    canary = {r["proxy"]: r["failed_during"] for r in results if r["scenario"] == "canary"}
    for r in results:
        ratio = ("-" if r["scenario"] == "canary" else
                 f"{r['failed_during'] / canary[r['proxy']]:.0f}x" if canary[r["proxy"]]
                 else f"{r['failed_during']} vs 0")
        lines.append(f"| {r['proxy']} | {r['scenario']} | {'yes' if r['rolled_back'] else 'NO'} "
                     f"| {r['failed_during']} | {r['requests_during']} | {r['failed_after']} | "
                     f"{r['seconds_exposed']:.1f} | {ratio} |")
    lines.append(f"\n(--step {args.step:g}s; the manual rollback came {args.notice:g} s after "
                 "the switch)")
    table = "\n".join(lines)
    (args.out / "canary.md").write_text(table + "\n")
    try:
        plot(results, args.out / "canary.png")
    except ImportError:
        print("(matplotlib not installed: no canary.png)")
    print(table)


if __name__ == "__main__":
    main()
