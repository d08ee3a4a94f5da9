"""`bluegreen demo`, as the README's first command runs it."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("kind", ["nginx", "haproxy"])
def test_demo_runs_the_cycle_under_load_and_cleans_up(kind: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "bluegreen", "demo", "--duration", "0.7",
                           "--proxy", kind],
                          capture_output=True, text=True, timeout=180,
                          env={"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
                               "COLUMNS": "160", "HOME": "/nonexistent"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for step in ("setup", "deploy 1.0.0", "deploy 2.0.0 --no-promote", "promote green",
                 "rollback"):
        assert step in out
    # After the promote, green 2.0.0 answers; after the rollback, blue 1.0.0 again.
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if "│" in line}
    promote = next(v for k, v in rows.items() if k.startswith("promote green"))
    assert "2.0.0 (green)" in promote
    rollback = next(v for k, v in rows.items() if k.startswith("rollback"))
    assert "1.0.0 (blue)" in rollback
    # The `live` column: the colour live after each step (it said blue on every row).
    live = {k: v.split("│")[3].strip() for k, v in rows.items()}
    assert [v for k, v in live.items() if k.startswith(("deploy 2.0.0", "promote green",
                                                         "rollback"))] == \
        ["blue", "green", "blue"], out
    total = re.search(r"total: (\d+) requests, (\d+) failed", out)
    assert total and int(total.group(1)) > 100
    assert int(total.group(2)) == 0, out
    # Everything it started is gone.
    match = re.search(rf"private {kind} on 127\.0\.0\.1:(\d+) \(prefix (\S+)\)", proc.stderr)
    assert match
    assert not Path(match.group(2)).exists()
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", int(match.group(1)))) != 0


def test_demo_keep_leaves_it_serving_and_drivable(tmp_path: Path) -> None:
    """--keep: the proxy and the app stay up, the printed curl works, and the kept demo
    has its bluegreen.toml: the printed commands drive it (status, a deploy, rollback
    --list), and `remove --yes` plus the printed stop clean it up."""
    import json
    import shlex
    import shutil
    import urllib.request

    env = {"PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
           "COLUMNS": "400", "HOME": "/nonexistent"}
    proc = subprocess.run([sys.executable, "-m", "bluegreen", "demo", "--duration", "0.5",
                           "--keep"], capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = " ".join(proc.stdout.split())
    curl = re.search(r"curl -H 'Host: (\S+)' http://127\.0\.0\.1:(\d+)/", out)
    config = re.search(r"its config in (\S+)/bluegreen\.toml", out)
    stop = re.search(r"then (.+?), and remove", out)
    assert curl and config and stop, proc.stdout
    base = Path(config.group(1))

    def bg(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "bluegreen", *args], cwd=base, env=env,
                              capture_output=True, text=True, timeout=180)
        assert not check or done.returncode == 0, done.stdout + done.stderr
        return done

    def answer() -> tuple[str, str]:
        req = urllib.request.Request(f"http://127.0.0.1:{curl.group(2)}/",
                                     headers={"Host": curl.group(1)})
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.headers["X-Deployment-Id"], resp.read().decode()

    try:
        assert answer()[0] == "blue"
        status = json.loads(bg("status", "--json").stdout)
        assert status["hosts"][0]["live"] == "blue"
        bg("deploy", "--version", "2.0.0")  # the command the note prints, without a canary
        colour, body = answer()
        assert colour == "green" and "2.0.0" in body
        listed = json.loads(bg("rollback", "--list", "--json").stdout)
        assert [r["version"] for r in listed["hosts"][0]["releases"]][:2] == ["2.0.0", "1.0.0"]
        bg("remove", "--yes")
    finally:
        bg("remove", "--yes", check=False)
        subprocess.run(shlex.split(stop.group(1).strip("`")), capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
