"""`--dry-run` on every command that changes hosts: the steps and the exact commands per
host, from the same code that runs them, and the host byte-for-byte unchanged afterwards
(files, links, modes, processes, the proxy's workers)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from conftest import Project, app_pids


def snapshot(p: Project) -> dict[str, object]:
    """Every file, dir and link under deploy_to and the proxy's dirs, with content hashes
    and modes; the app's processes; the proxy's processes."""
    tree: dict[str, str] = {}
    for root in (p.deploy_to, p.nginx.prefix):  # type: ignore[union-attr]
        for path in sorted(root.rglob("*")) if root.exists() else []:
            if "logs" in path.parts or path.name.endswith(".pid"):
                continue  # the proxy's own logs grow with the health checks
            st = os.lstat(path)
            if path.is_symlink():
                tree[str(path)] = "link " + os.readlink(path)
            elif path.is_file():
                tree[str(path)] = f"{st.st_mode:o} " + hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                tree[str(path)] = f"dir {st.st_mode:o}"
    workers = sorted(int(x) for x in os.popen(f"pgrep -P {p.nginx.pid()}").read().split())
    return {"tree": tree, "apps": app_pids(p), "proxy": (p.nginx.pid(), workers)}


def test_dry_run_prints_the_plan_and_changes_nothing(local_project: Project) -> None:
    p = local_project
    secret = "dry-Secret-5c2e"
    (p.dir / ".env.production").write_text(f"API_KEY={secret}\n")
    p.extra_run = {"env_file": ".env.production"}
    p.write_config()

    before = snapshot(p)
    out = p.bg("setup", "--dry-run")
    assert "would run: mkdir -p" in out.stderr and "dry run: nothing was changed" in out.stdout
    assert snapshot(p) == before and not p.deploy_to.exists()

    p.bg("setup")
    p.deploy("1.0.0")
    p.deploy("2.0.0", "--no-promote")
    p.artifact("3.0.0")
    plans = {}
    for args in (["deploy", "--version", "3.0.0"], ["promote"], ["stop", "green"], ["prune", "--keep", "1"], ["remove"]):
        before = snapshot(p)
        out = p.bg(*args, "--dry-run")
        assert snapshot(p) == before, args
        assert out.stdout.strip().endswith("dry run: nothing was changed on any host")
        assert secret not in out.stdout + out.stderr
        plans[args[0]] = out.stderr
    deploy = plans["deploy"]
    assert "would upload sample-3.0.0.tar.gz" in deploy
    # green's 2.0.0 (idle) would be drained and stopped, 3.0.0 started there, then switched
    assert "sh TERM" in deploy and "green would be stopped" in deploy
    assert "slots/green/env" in deploy and "bytes on stdin" in deploy
    assert "would wait up to health_timeout" in deploy and "green would be live" in deploy
    promote = plans["promote"]
    assert "ln -sfn" in promote and p.nginx.reload_command.split()[0] in promote
    assert "would verify that the proxy answers green" in promote
    assert 'rm -rf -- "$@"' in plans["remove"] and "rmdir" in plans["remove"]
    assert f"{p.deploy_to} {p.deploy_to}/releases {p.deploy_to}/slots" in plans["remove"]
    # Nothing ran for real: the live answer and the releases are as before.
    assert p.answer().version == "1.0.0"
    assert {d.name.split("-")[0] for d in (p.deploy_to / "releases").iterdir()
            if not d.name.startswith(".")} == {"1.0.0", "2.0.0"}
    assert Path(p.deploy_to / "lock").exists() is False
    # `rollback` only goes backward: with 2.0.0 staged after the live 1.0.0, a dry run
    # refuses as a real run would; once 2.0.0 is live, it plans the way back.
    before = snapshot(p)
    p.bg("rollback", "--dry-run", check=1)
    assert snapshot(p) == before
    p.bg("promote")
    before = snapshot(p)
    out = p.bg("rollback", "--dry-run")
    assert snapshot(p) == before and secret not in out.stdout + out.stderr
    assert "would verify that the proxy answers blue" in out.stderr


def test_dry_run_with_haproxy_sends_nothing_to_its_runtime_api(local_project_hx: Project) -> None:
    p = local_project_hx
    p.bg("setup")
    p.deploy("1.0.0")
    p.deploy("2.0.0", "--no-promote")
    before = snapshot(p)
    out = p.bg("promote", "--dry-run")
    assert snapshot(p) == before
    assert "would send to HAProxy's runtime API" in out.stderr and "live green" in out.stderr
    assert p.answer().version == "1.0.0"


def test_every_dry_run_summary_says_would(local_project: Project) -> None:
    """A dry run's summary never reads as done ("removed", "live is"): each line says
    what would happen."""
    p = local_project
    out = p.bg("setup", "--dry-run")
    assert "ready; live colour is" not in out.stderr and "would be ready" in out.stderr
    p.bg("setup")
    p.deploy("1.0.0")
    p.deploy("2.0.0", "--no-promote")
    p.deploy("3.0.0", "--no-promote")  # 1.0.0 live, 3.0.0 on green; 2.0.0 only on disk
    p.artifact("4.0.0")
    for args in (["deploy", "--version", "4.0.0"], ["deploy", "--version", "4.0.0",
                 "--no-promote"], ["promote"], ["promote", "blue"], ["stop", "green"],
                 ["prune", "--keep", "1"], ["remove"], ["rollback", "--to", "2.0.0"]):
        out = p.bg(*args, "--dry-run")
        lines = out.stdout.strip().splitlines()
        assert lines[-1] == "dry run: nothing was changed on any host", args
        assert lines[:-1] and all("would" in line for line in lines[:-1]), (args, lines)
    assert "would remove 1 release(s): 2.0.0-" in p.bg("prune", "--keep", "1",
                                                        "--dry-run").stdout
    p.bg("promote")
    out = p.bg("rollback", "--dry-run")
    assert out.stdout.splitlines()[0] == "web1: would roll back; live would be blue"
    assert p.answer().version == "3.0.0" and len(list((p.deploy_to / "releases").glob(
        "[0-9]*"))) == 3
