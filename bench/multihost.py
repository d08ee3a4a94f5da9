"""Benchmark: deploy and promote across 1, 5 and 20 real hosts (network namespaces, one
sshd and one nginx each), against the seed's "loop through the hosts" way.

    .venv/bin/python bench/multihost.py [--sizes 1,5,20]

For each size: the wall time of `bluegreen deploy` (parallel, one SSH connection per host)
and of `bluegreen promote`; the spread between the first and the last host answering the
new colour during that promote (polled from outside every host, over the bridge); and the
same deploy run host by host (`bluegreen deploy --host hN`, one after the other); and
bluegreen's own CPU time per host and round trips per host (its --json), which must not
grow with the fleet even where this machine's cores, shared by every server, make the wall
time grow. Then a deploy and a promote with a warm process (`bluegreen warm`: imports done,
the SSH connections kept from a `status` before). Needs root (namespaces).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import sys

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from cluster import Cluster  # noqa: E402
from test_multihost import Fleet  # noqa: E402

SERVER_NAME = "testapp.test"


def colour_of(address: str) -> str:
    req = urllib.request.Request(f"http://{address}/deployment_id", headers={"Host": SERVER_NAME})
    try:
        with urllib.request.urlopen(req, timeout=1) as resp:
            return str(resp.read().decode())
    except OSError:
        return ""


def watch_switch(addresses: list[str], colour: str, stop: threading.Event,
                 firsts: dict[str, float]) -> None:
    """Record when each host first answers ``colour``."""
    while not stop.is_set() and len(firsts) < len(addresses):
        for addr in addresses:
            if addr not in firsts and colour_of(addr) == colour:
                firsts[addr] = time.perf_counter()
        time.sleep(0.002)


def children_cpu() -> float:
    """CPU seconds (user + system) of the finished child processes: the bluegreen runs."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def warm_cpu(warm_pid: int) -> float:
    """CPU seconds of a warm process's work: its own, its finished children's (each
    command's keeper and command) and its SSH pool's (still running)."""
    def ticks(pid: int, fields: slice) -> int:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(x) for x in stat[fields])

    children = Path(f"/proc/{warm_pid}/task/{warm_pid}/children").read_text().split()
    pool = sum(ticks(int(c), slice(11, 13)) for c in children)  # utime, stime
    return (ticks(warm_pid, slice(11, 15)) + pool) / os.sysconf("SC_CLK_TCK")


def per_host_trips(stdout: str) -> list[int]:
    """Each app host's round trips, from a --json result."""
    return [int(h["round_trips"]["total"]) for h in json.loads(stdout)["hosts"]
            if "round_trips" in h]


def run_size(n: int, base: Path) -> dict[str, float]:
    cluster = Cluster(base / f"c{n}", n)
    (base / f"c{n}").mkdir(parents=True)
    try:
        t0 = time.perf_counter()
        cluster.up()
        up = time.perf_counter() - t0
        project = base / f"p{n}"
        project.mkdir()
        fleet = Fleet(cluster, project)
        fleet.bg("setup")
        fleet.deploy("1.0.0")
        t0, cpu0 = time.perf_counter(), children_cpu()
        out = fleet.deploy("2.0.0", "--no-promote", "--json")
        deploy, deploy_cpu = time.perf_counter() - t0, children_cpu() - cpu0
        deploy_trips = per_host_trips(out.stdout)
        addresses = [h.address for h in cluster.hosts]
        firsts: dict[str, float] = {}
        stop = threading.Event()
        watcher = threading.Thread(target=watch_switch, args=(addresses, "green", stop, firsts))
        watcher.start()
        t0, cpu0 = time.perf_counter(), children_cpu()
        out = fleet.bg("promote", "--json")
        promote, promote_cpu = time.perf_counter() - t0, children_cpu() - cpu0
        promote_trips = per_host_trips(out.stdout)
        time.sleep(0.2)
        stop.set()
        watcher.join()
        spread = (max(firsts.values()) - min(firsts.values())) if len(firsts) == n else float("nan")
        # The seed's way: one host after the other (each a full deploy with its own switch).
        t0 = time.perf_counter()
        for h in cluster.hosts:
            fleet.deploy("3.0.0", "--host", h.name)
        loop = time.perf_counter() - t0
        # With a warm process (`bluegreen warm`): imports done, SSH connections kept (the
        # first command, `status`, opens them). Its CPU: the warm process's, the client's.
        os.environ["BLUEGREEN_WARM_SOCKET"] = str(base / f"w{n}" / "warm.sock")
        out = fleet.bg("warm", "--idle", "60")
        warm_pid = int(out.stderr.split("pid ")[1].split(",")[0])
        try:
            fleet.bg("status")
            t0, cpu0 = time.perf_counter(), warm_cpu(warm_pid) + children_cpu()
            fleet.deploy("4.0.0", "--no-promote")
            warm_deploy = time.perf_counter() - t0
            warm_deploy_cpu = warm_cpu(warm_pid) + children_cpu() - cpu0
            t0, cpu0 = time.perf_counter(), warm_cpu(warm_pid) + children_cpu()
            fleet.bg("promote")
            warm_promote = time.perf_counter() - t0
            warm_promote_cpu = warm_cpu(warm_pid) + children_cpu() - cpu0
        finally:
            fleet.bg("warm", "--stop")
            del os.environ["BLUEGREEN_WARM_SOCKET"]
        return {"warm_deploy": warm_deploy, "warm_promote": warm_promote,
                "warm_deploy_cpu_per_host": warm_deploy_cpu / n,
                "warm_promote_cpu_per_host": warm_promote_cpu / n,
                "hosts": n, "cluster_up": up, "deploy": deploy, "promote": promote,
                "spread": spread, "loop": loop, "deploy_cpu_per_host": deploy_cpu / n,
                "promote_cpu_per_host": promote_cpu / n,
                "deploy_trips_per_host": max(deploy_trips),
                "promote_trips_per_host": max(promote_trips)}
    finally:
        cluster.down()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1,5,20")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    os.environ.pop("BLUEGREEN_WARM_SOCKET", None)  # (not a warm process the user may run)
    with tempfile.TemporaryDirectory(prefix="bluegreen-bench-mh-") as tmp:
        rows = [run_size(n, Path(tmp)) for n in sizes]
    one = rows[0]
    print("| hosts | deploy (parallel) | vs first size | promote | first→last host on new "
          "colour | deploy host by host | bluegreen CPU per host: deploy | promote | round "
          "trips per host: deploy | promote | with `bluegreen warm`: deploy | vs first size | "
          "promote | CPU per host: deploy | promote |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['hosts']:.0f} | {r['deploy']:.2f} s | {r['deploy'] / one['deploy']:.2f}x | "
              f"{r['promote']:.2f} s | {r['spread'] * 1000:.0f} ms | {r['loop']:.2f} s | "
              f"{r['deploy_cpu_per_host'] * 1000:.0f} ms | "
              f"{r['promote_cpu_per_host'] * 1000:.0f} ms | "
              f"{r['deploy_trips_per_host']:.0f} | {r['promote_trips_per_host']:.0f} | "
              f"{r['warm_deploy']:.2f} s | {r['warm_deploy'] / one['warm_deploy']:.2f}x | "
              f"{r['warm_promote']:.2f} s | {r['warm_deploy_cpu_per_host'] * 1000:.0f} ms | "
              f"{r['warm_promote_cpu_per_host'] * 1000:.0f} ms |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
