"""Benchmark: a real systemd server (namespaces over an overlay of /, see
tests/systemd_host.py) loses power after two deploys and boots again.

    .venv/bin/python bench/reboot.py [--rounds 3] [--json out.json]

Measured from the moment the boot starts: until nginx answers on port 80 at all, until it
answers the live release through the proxy, and until `rollback` would succeed (the idle
slot answers its health check). Then, in the same run, `deploy` and `promote` wall time on
that systemd server (root's real .bashrc runs `pyenv init`: ~100 ms per SSH command) beside
the same on a namespaced sshd host with an empty home. Prints a Markdown table. Needs root.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from cluster import Cluster  # noqa: E402
from conftest import get  # noqa: E402
from systemd_host import Site, SystemdLab  # noqa: E402
from test_systemd_power import two_deploys  # noqa: E402
from test_multihost import Fleet  # noqa: E402


def idle_healthy(site: Site, port: int) -> bool:
    proc = site.host.exec("python3", "-c", f"import urllib.request as u; u.urlopen("
                          f"'http://127.0.0.1:{port}/health', timeout=1)", check=False)
    return proc.returncode == 0


def one_power_cut(site: Site) -> dict[str, float]:
    site.host.power_cut()
    started = time.monotonic()
    site.host.boot()
    marks: dict[str, float] = {}
    deadline = started + 30
    while time.monotonic() < deadline and len(marks) < 3:
        now = time.monotonic() - started
        answer = get(80, address=site.host.address, timeout=0.5)
        if answer.status and "nginx up" not in marks:
            marks["nginx up"] = now
        if answer.version == "2.0.0" and "live release answers" not in marks:
            marks["live release answers"] = now
        if "rollback possible" not in marks and idle_healthy(site, 4000):
            marks["rollback possible"] = time.monotonic() - started
        time.sleep(0.02)
    return marks


def timed(fn: object, *args: str) -> float:
    t0 = time.perf_counter()
    fn(*args)  # type: ignore[operator]
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "lab").mkdir()
        lab = SystemdLab(base / "lab")
        cluster = Cluster(base / "cluster", 1)
        (base / "cluster").mkdir()
        try:
            site = two_deploys(lab, base / "site")
            cuts = [one_power_cut(site) for _ in range(args.rounds)]
            results["power_cut"] = {k: statistics.median(c[k] for c in cuts if k in c)
                                    for k in cuts[0]}
            cluster.up()
            (base / "fleet").mkdir()
            fleet = Fleet(cluster, base / "fleet")
            fleet.bg("setup")
            fleet.deploy("1.0.0")
            speed: dict[str, dict[str, float]] = {}
            for name, target in (("systemd server", site), ("namespaced sshd host", fleet)):
                deploys, promotes = [], []
                for i in range(args.rounds):
                    deploys.append(timed(target.deploy, f"5.{i}.0"))
                    promotes.append(timed(target.bg, "rollback"))  # = promote the other colour
                    target.bg("promote")
                speed[name] = {"deploy": statistics.median(deploys),
                               "promote": statistics.median(promotes)}
            results["speed"] = speed
        finally:
            cluster.down()
            lab.down()
    pc = results["power_cut"]
    assert isinstance(pc, dict)
    print("| after a power cut, from the start of the boot | seconds (median of "
          f"{args.rounds}) |\n|---|---|")
    for key, value in pc.items():
        print(f"| {key} | {value:.2f} |")
    print("\n| host | deploy (s) | promote (s) |\n|---|---|---|")
    sp = results["speed"]
    assert isinstance(sp, dict)
    for name, row in sp.items():
        print(f"| {name} | {row['deploy']:.2f} | {row['promote']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
