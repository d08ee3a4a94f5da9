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


def test_demo_keep_leaves_it_serving(tmp_path: Path) -> None:
    """--keep: the proxy and the app stay up, and the printed curl works; then the test
    cleans up as the printed note says."""
    import os
    import shlex
    import shutil
    import signal
    import time

    proc = subprocess.run([sys.executable, "-m", "bluegreen", "demo", "--duration", "0.5",
                           "--keep"], capture_output=True, text=True, timeout=180,
                          env={"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
                               "COLUMNS": "400", "HOME": "/nonexistent"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    curl = re.search(r"curl -H 'Host: (\S+)' http://127\.0\.0\.1:(\d+)/", proc.stdout)
    files = re.search(r"Files: (\S+)\s+nginx: (.+)", proc.stdout)
    assert curl and files, proc.stdout
    base = Path(files.group(1))
    try:
        import urllib.request

        req = urllib.request.Request(f"http://127.0.0.1:{curl.group(2)}/",
                                     headers={"Host": curl.group(1)})
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200 and resp.headers["X-Deployment-Id"] == "blue"
    finally:
        for pid_file in base.glob("srv/slots/*/pid"):
            try:
                os.killpg(int(pid_file.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        subprocess.run(shlex.split(files.group(2).strip()), capture_output=True)
        time.sleep(0.2)
        shutil.rmtree(base, ignore_errors=True)
