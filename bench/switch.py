"""Benchmark: how long `bluegreen promote` takes, against the floor of a bare link swap +
`nginx -s reload` + polling until the new colour answers, measured in the same run; and
bluegreen's own overhead in a deploy (wall time minus the app's own time: the old copy's
exit, in the start's round trip, and the new one's boot to healthy). The promote again with
a warm process (`bluegreen warm`: imports done, the SSH connection kept), and, over SSH,
the seed's own `deploy.sh promote` (an `ssh` running `ln -sf` + reload, no check at all),
and the time until its new colour answered 3 times in a row.

    .venv/bin/python bench/switch.py [--rounds 10] [--proxy nginx|haproxy] [--json OUT]

With --proxy haproxy the floor is: write the map file, `set map` on the runtime socket,
poll until the new colour answers.

Runs a private nginx, a private sshd on 127.0.0.1 (so the SSH numbers include a real SSH
handshake, over loopback) and the bundled sample app; then the same with a second sshd
whose login user's .bashrc is `--bashrc` (default this machine's /root/.bashrc, which runs
`pyenv init`), to show what a heavy login costs. Needs root for the sshd.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import Project, start_sshd  # noqa: E402

from bluegreen.demo.haproxy import PrivateHAProxy  # noqa: E402
from bluegreen.demo.nginx import PrivateNginx, free_port  # noqa: E402


def answer(port: int) -> str:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/deployment_id",
                                 headers={"Host": "testapp.test"})
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:
            return str(resp.read().decode())
    except OSError:
        return ""


def bare_switch(nginx: PrivateNginx | PrivateHAProxy, colour: str) -> float:
    """The floor: what a hand-written script must do at least, timed."""
    start = time.perf_counter()
    if isinstance(nginx, PrivateHAProxy):
        map_file = nginx.conf_d / "testapp.map"
        tmp_map = nginx.conf_d / ".testapp.map.tmp"
        tmp_map.write_text(f"live {colour}\n")
        os.replace(tmp_map, map_file)
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(nginx.socket))
            sock.sendall(f"set map {map_file} live {colour}\n".encode())
            while sock.recv(4096):
                pass
    else:
        link = nginx.sites_enabled / "testapp"
        tmp = nginx.sites_enabled / ".testapp.tmp"
        os.symlink(nginx.sites_available / f"testapp-{colour}", tmp)
        os.replace(tmp, link)
        subprocess.run(nginx.command("-s", "reload"), check=True, capture_output=True)
    streak = 0
    while streak < 3:
        streak = streak + 1 if answer(nginx.port) == colour else 0
        if streak < 3:
            time.sleep(0.005)
    return time.perf_counter() - start


def seed_switch(nginx: PrivateNginx, sshd: Any, colour: str) -> tuple[float, float]:
    """The seed's `deploy.sh promote` over SSH, timed: one `ssh` (OpenSSH) running `ln -sf`
    and the reload, no check at all (it does not wait for the new colour to answer); and
    the time until the new colour answered 3 times in a row (as the floor polls)."""
    site = nginx.sites_available / f"testapp-{colour}"
    link = nginx.sites_enabled / "testapp"
    remote = (f"ln -sfn {shlex.quote(str(site))} {shlex.quote(str(link))} && "
              + shlex.join(nginx.command("-s", "reload")))
    start = time.perf_counter()
    subprocess.run(["ssh", "-F", "/dev/null", "-p", str(sshd.port), "-i", str(sshd.client_key),
                    "-o", f"UserKnownHostsFile={sshd.known_hosts}",
                    "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                    "root@127.0.0.1", remote], check=True, capture_output=True)
    returned = time.perf_counter() - start
    streak = 0
    while streak < 3:
        streak = streak + 1 if answer(nginx.port) == colour else 0
        if streak < 3:
            time.sleep(0.005)
    return returned, time.perf_counter() - start


def measure(kind: str, base: Path, rounds: int, sshd: object,
            proxy: str = "nginx") -> dict[str, object]:
    name, kind = kind, "local" if sshd is None else "ssh"
    base = base / name.replace(",", "").replace(" ", "-").replace(".", "")
    nginx: PrivateNginx | PrivateHAProxy
    if proxy == "haproxy":
        nginx = PrivateHAProxy(base / kind / "haproxy", free_port())
        nginx.write_config()
    else:
        nginx = PrivateNginx(base / kind / "nginx", free_port())
        nginx.write_config(workers=2)
    nginx.start()
    home = base / kind / "home"
    home.mkdir(parents=True)
    proj_dir = base / kind / "project"
    proj_dir.mkdir()
    project = Project(proj_dir, nginx, kind, free_port(), free_port(), sshd, home)  # type: ignore[arg-type]
    project.write_config()
    try:
        project.bg("setup")
        overheads, deploy_walls, boots = [], [], []
        deploy_trips: list[int] = []
        deploy_sessions: list[int] = []
        for i, version in enumerate(("1.0.0", "2.0.0", "3.0.0", "4.0.0")):
            t0 = time.perf_counter()
            out = project.deploy(version, "--json")
            trips = json.loads(out.stdout)["hosts"][0]["round_trips"]
            deploy_trips.append(trips["total"])
            deploy_sessions.append(trips.get("sessions", 0))
            wall = time.perf_counter() - t0
            # The app's own time: its boot, and (when a deploy replaces a running copy,
            # stopped in the same round trip as the start) the old copy's exit.
            boot = float(re.search(r"is healthy \(([\d.]+)s after ", out.stderr).group(1))  # type: ignore[union-attr]
            if i >= 1:  # the first deploy has nothing to drain/stop; keep like with like
                deploy_walls.append(wall)
                boots.append(boot)
                overheads.append(wall - boot)
        promote_times, floor_times = [], []
        promote_trips: list[int] = []
        colour = answer(nginx.port)
        for _ in range(rounds):
            colour = "green" if colour == "blue" else "blue"
            t0 = time.perf_counter()
            out = project.bg("promote", colour, "--json")
            promote_times.append(time.perf_counter() - t0)
            promote_trips.append(json.loads(out.stdout)["hosts"][0]["round_trips"]["total"])
        # The same with a warm process (`bluegreen warm`): imports done, the SSH connection
        # kept (opened by a `status` first).
        warm_times = []
        os.environ["BLUEGREEN_WARM_SOCKET"] = str(base / kind / "warm" / "warm.sock")
        project.bg("warm", "--idle", "60")
        try:
            project.bg("status")
            for _ in range(rounds):
                colour = "green" if colour == "blue" else "blue"
                t0 = time.perf_counter()
                project.bg("promote", colour)
                warm_times.append(time.perf_counter() - t0)
        finally:
            project.bg("warm", "--stop")
            del os.environ["BLUEGREEN_WARM_SOCKET"]
        seed_times, seed_live_times = [], []
        if sshd is not None and isinstance(nginx, PrivateNginx):
            for _ in range(rounds):
                colour = "green" if colour == "blue" else "blue"
                returned, live = seed_switch(nginx, sshd, colour)
                seed_times.append(returned)
                seed_live_times.append(live)
        for _ in range(rounds):
            colour = "green" if colour == "blue" else "blue"
            floor_times.append(bare_switch(nginx, colour))
        # The floor left the link where bluegreen expects it to be (same colour as answers).
        return {
            "kind": name,
            "promote_median_s": statistics.median(promote_times),
            "floor_median_s": statistics.median(floor_times),
            "promote_over_floor": statistics.median(promote_times) / statistics.median(floor_times),
            "warm_promote_median_s": statistics.median(warm_times),
            "seed_promote_median_s": statistics.median(seed_times) if seed_times else None,
            "seed_live_median_s": (statistics.median(seed_live_times) if seed_live_times
                                   else None),
            "deploy_median_s": statistics.median(deploy_walls),
            "app_boot_to_healthy_median_s": statistics.median(boots),
            "deploy_overhead_median_s": statistics.median(overheads),
            # remote commands + uploads + connections per host, as bluegreen counts them
            # (tests/test_round_trips.py checks the count against the sshd's log)
            "promote_round_trips": statistics.median(promote_trips),
            "deploy_round_trips": statistics.median(deploy_trips[1:]),
            # SSH sessions the server saw per deploy (each runs the login shell and .bashrc)
            "deploy_ssh_sessions": statistics.median(deploy_sessions[1:]),
            "rounds": rounds,
        }
    finally:
        project.cleanup()
        nginx.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--proxy", choices=["nginx", "haproxy"], default="nginx")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--bashrc", default="/root/.bashrc",
                        help="the login rc file of the third host (else `sleep 0.1`)")
    args = parser.parse_args()
    os.environ.pop("BLUEGREEN_WARM_SOCKET", None)  # (not a warm process the user may run)
    with tempfile.TemporaryDirectory(prefix="bluegreen-bench-") as tmp:
        base = Path(tmp)
        sshd = start_sshd(base / "sshd")
        heavy = start_sshd(base / "sshd-heavy")
        # This machine's root .bashrc runs `pyenv init` (~0.1 s, as rbenv/nvm/pyenv do on
        # many servers): the same lines in the second sshd's home ($HOME spelt out).
        rc = Path(args.bashrc)
        (heavy.dir / "root-home" / ".bashrc").write_text(
            rc.read_text().replace("$HOME", str(rc.parent)) if rc.is_file() else "sleep 0.1\n")
        try:
            results = [measure("local", base, args.rounds, None, args.proxy),
                       measure("ssh", base, args.rounds, sshd, args.proxy),
                       measure("ssh, heavy .bashrc", base, args.rounds, heavy, args.proxy)]
        finally:
            sshd.stop()
            heavy.stop()
    print(f"proxy: {args.proxy}")
    print("| host | promote (CLI, median) | floor: bare switch + poll | ratio | promote with "
          "`bluegreen warm` | ratio | the seed's `deploy.sh promote` (no checks) | its new "
          "colour live | deploy | app stop+boot→healthy | bluegreen overhead | round trips: "
          "promote | deploy | SSH sessions per deploy |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        warm, floor = float(r["warm_promote_median_s"]), float(r["floor_median_s"])
        seed, live = r["seed_promote_median_s"], r["seed_live_median_s"]
        print(f"| {r['kind']} | {r['promote_median_s']:.3f} s | {r['floor_median_s']:.3f} s | "
              f"{r['promote_over_floor']:.1f}x | {warm:.3f} s | {warm / floor:.1f}x | "
              f"{f'{seed:.3f} s' if seed else '-'} | "
              f"{f'{live:.3f} s' if live else '-'} | "
              f"{r['deploy_median_s']:.2f} s | "
              f"{r['app_boot_to_healthy_median_s']:.2f} s | {r['deploy_overhead_median_s']:.2f} s | "
              f"{r['promote_round_trips']:g} | {r['deploy_round_trips']:g} | "
              f"{r['deploy_ssh_sessions']:g} |")
    ssh, heavy_row = results[1], results[2]
    print(f"\nheavy .bashrc / empty home: deploy "
          f"{float(heavy_row['deploy_median_s']) / float(ssh['deploy_median_s']):.2f}x, promote "
          f"{float(heavy_row['promote_median_s']) / float(ssh['promote_median_s']):.2f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
