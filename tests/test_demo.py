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
    total = re.search(r"total: (\d+) requests, (\d+) failed", out)
    assert total and int(total.group(1)) > 100
    assert int(total.group(2)) == 0, out
    # Everything it started is gone.
    match = re.search(rf"private {kind} on 127\.0\.0\.1:(\d+) \(prefix (\S+)\)", proc.stderr)
    assert match
    assert not Path(match.group(2)).exists()
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", int(match.group(1)))) != 0
